//! Prometheus metrics of the runtime, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of HTTP request counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Tenant name, or `-` before authentication.
    pub tenant: String,
    /// Route template, such as `/api/v1/keys/{id}`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Status code.
    pub status: u16,
}

/// Labels of latency histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template.
    pub route: String,
}

/// Labels of limit rejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// Tenant name.
    pub tenant: String,
    /// Which limit: `tenant_rpm`, `key_rpm`, `user_rpm`, `tenant_tpm`, `key_tpm`,
    /// `user_tpm`, `streams`, `budget`.
    pub limit: String,
}

/// Labels carrying a tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// Tenant name.
    pub tenant: String,
}

/// Labels of bundle reloads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// Tenant name, or `-` for a folder that failed to compile as a whole.
    pub tenant: String,
    /// `applied`, `unchanged` or `rejected`.
    pub result: String,
}

/// Labels of a tenant's model provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Tenant name.
    pub tenant: String,
    /// Provider name in the tenant's catalog.
    pub provider: String,
}

/// Labels of per-tool gauges and histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantToolLabels {
    /// Tenant name.
    pub tenant: String,
    /// Tool name.
    pub tool: String,
}

/// Labels of tool call counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    /// Tenant name.
    pub tenant: String,
    /// Tool name.
    pub tool: String,
    /// `ok`, `control`, or the error code (`timeout`, `circuit_open`, ...).
    pub outcome: String,
}

/// Every metric family of the runtime.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by tenant, route, method and status.
    pub http_requests: Family<RequestLabels, Counter>,
    /// Request latency by route.
    pub http_latency: Family<RouteLabels, Histogram>,
    /// Requests refused by a limit or the budget.
    pub limit_rejections: Family<LimitLabels, Counter>,
    /// Events waiting in the outbox.
    pub outbox_pending: Family<TenantLabels, Gauge>,
    /// Age in seconds of the oldest event waiting in the outbox.
    pub outbox_lag_seconds: Family<TenantLabels, Gauge>,
    /// Events published to JetStream.
    pub events_published: Family<TenantLabels, Counter>,
    /// Seconds from a batched usage record's model call finishing to its batch committing:
    /// how long it was only in memory, which is what a crash would lose.
    pub usage_write_delay: Histogram,
    /// Batched usage records whose request waited for room in the writer's full queue.
    pub usage_queue_full: Counter,
    /// Bundle reloads by result.
    pub bundle_reloads: Family<ReloadLabels, Counter>,
    /// Circuit breaker state per provider: 0 closed, 1 open, 2 half-open.
    pub provider_circuit_state: Family<ProviderLabels, Gauge>,
    /// Tool circuit breaker state: 0 closed, 1 open, 2 half-open.
    pub tool_circuit_state: Family<TenantToolLabels, Gauge>,
    /// Tool calls by outcome.
    pub tool_calls: Family<ToolLabels, Counter>,
    /// Tool call latency, retries included.
    pub tool_latency: Family<TenantToolLabels, Histogram>,
    /// Workflow runs that ended, by workflow and outcome.
    pub workflow_runs: Family<WorkflowRunLabels, Counter>,
    /// Workflow step durations by workflow, node kind and status.
    pub workflow_step_latency: Family<WorkflowStepLabels, Histogram>,
}

/// Labels of ended workflow runs.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowRunLabels {
    /// Tenant name.
    pub tenant: String,
    /// Workflow name.
    pub workflow: String,
    /// Final status (`succeeded`, `failed`, `denied`, ...).
    pub outcome: String,
}

/// Labels of workflow steps.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowStepLabels {
    /// Tenant name.
    pub tenant: String,
    /// Workflow name.
    pub workflow: String,
    /// Node kind.
    pub kind: String,
    /// Step status.
    pub status: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agentry");
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        let limit_rejections = Family::<LimitLabels, Counter>::default();
        let outbox_pending = Family::<TenantLabels, Gauge>::default();
        let outbox_lag_seconds = Family::<TenantLabels, Gauge>::default();
        let events_published = Family::<TenantLabels, Counter>::default();
        // 5 ms to 41 s: the flush window (50 ms by default) up to a stalled database.
        let usage_write_delay = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let usage_queue_full = Counter::default();
        let bundle_reloads = Family::<ReloadLabels, Counter>::default();
        let provider_circuit_state = Family::<ProviderLabels, Gauge>::default();
        let tool_circuit_state = Family::<TenantToolLabels, Gauge>::default();
        let tool_calls = Family::<ToolLabels, Counter>::default();
        let tool_latency = Family::<TenantToolLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "http_requests",
            "HTTP requests by tenant, route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            http_latency.clone(),
        );
        registry.register(
            "limit_rejections",
            "Requests refused by a rate limit, stream cap or budget",
            limit_rejections.clone(),
        );
        registry.register(
            "outbox_pending_events",
            "Events written but not yet published to JetStream",
            outbox_pending.clone(),
        );
        registry.register(
            "outbox_lag_seconds",
            "Age of the oldest unpublished event",
            outbox_lag_seconds.clone(),
        );
        registry.register(
            "events_published",
            "Events published to JetStream",
            events_published.clone(),
        );
        registry.register(
            "usage_write_delay_seconds",
            "Time from a batched usage record's model call finishing to its batch committing",
            usage_write_delay.clone(),
        );
        registry.register(
            "usage_queue_full",
            "Batched usage records whose request waited for room in the writer's full queue",
            usage_queue_full.clone(),
        );
        registry.register(
            "bundle_reloads",
            "Bundle reloads by result",
            bundle_reloads.clone(),
        );
        registry.register(
            "provider_circuit_state",
            "Circuit breaker state per model provider: 0 closed, 1 open, 2 half-open",
            provider_circuit_state.clone(),
        );
        registry.register(
            "tool_circuit_state",
            "Tool circuit breaker state (0 closed, 1 open, 2 half-open)",
            tool_circuit_state.clone(),
        );
        registry.register("tool_calls", "Tool calls by outcome", tool_calls.clone());
        registry.register(
            "tool_call_duration_seconds",
            "Tool call latency, retries included",
            tool_latency.clone(),
        );
        let workflow_runs = Family::<WorkflowRunLabels, Counter>::default();
        let workflow_step_latency =
            Family::<WorkflowStepLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 20))
            });
        registry.register(
            "workflow_runs",
            "Workflow runs that ended, by workflow and outcome",
            workflow_runs.clone(),
        );
        registry.register(
            "workflow_step_duration_seconds",
            "Workflow step durations by workflow, node kind and status",
            workflow_step_latency.clone(),
        );
        Self {
            registry,
            http_requests,
            http_latency,
            limit_rejections,
            outbox_pending,
            outbox_lag_seconds,
            events_published,
            usage_write_delay,
            usage_queue_full,
            bundle_reloads,
            provider_circuit_state,
            tool_circuit_state,
            tool_calls,
            tool_latency,
            workflow_runs,
            workflow_step_latency,
        }
    }

    /// Counts a run that ended.
    pub fn workflow_run(&self, tenant: &str, workflow: &str, outcome: &str) {
        self.workflow_runs
            .get_or_create(&WorkflowRunLabels {
                tenant: tenant.to_owned(),
                workflow: workflow.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Observes one workflow step.
    pub fn workflow_step(
        &self,
        tenant: &str,
        workflow: &str,
        step: &crate::orchestrator::StepRecord,
    ) {
        let seconds = (step.finished_at - step.started_at)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        self.workflow_step_latency
            .get_or_create(&WorkflowStepLabels {
                tenant: tenant.to_owned(),
                workflow: workflow.to_owned(),
                kind: step.kind.clone(),
                status: step.status.as_str().to_owned(),
            })
            .observe(seconds);
    }

    /// Counts one tool call and its latency.
    pub fn tool_called(&self, labels: ToolLabels, elapsed: std::time::Duration) {
        self.tool_latency
            .get_or_create(&TenantToolLabels {
                tenant: labels.tenant.clone(),
                tool: labels.tool.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.tool_calls.get_or_create(&labels).inc();
    }

    /// Counts a rejection by `limit` for `tenant`.
    pub fn rejected(&self, tenant: &str, limit: &str) {
        self.limit_rejections
            .get_or_create(&LimitLabels {
                tenant: tenant.to_owned(),
                limit: limit.to_owned(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
