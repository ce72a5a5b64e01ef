//! The Tenant controller.
//!
//! One controller reconciles Tenants. It owns every object it creates (owner references),
//! watches Agents, Tools, Workflows and FeatureFlags in tenant namespaces and the provider key
//! Secrets in the operator's namespace, and maps each change back to its Tenant. Reconcile is
//! a pipeline: fetch → validate → provision the database → build (pure) → apply (server-side
//! apply, one field manager) → status. [`finalizer`] is the only top-level action.

mod api;
mod children;
mod compiled;
mod error;
mod fetch;
mod index;
mod tenant;
mod watch;

#[cfg(test)]
mod tests;

pub use error::{Error, describe, is_not_found};
pub use index::TenantIndex;
pub use watch::{WATCHED, run};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentry_crds::Tenant;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Api, Client, Resource as _, ResourceExt as _};

use crate::database::Provisioner;
use crate::metrics::Metrics;
use crate::settings::Settings;

/// Finalizer that holds a deleted Tenant until its database role is gone.
pub const FINALIZER: &str = "agentry.dev/cleanup";
/// First retry delay after a transient error.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Current time, a parameter so that tests control it.
pub type Clock = Arc<dyn Fn() -> Time + Send + Sync>;

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Operator settings.
    pub settings: Settings,
    /// Database provisioning.
    pub provisioner: Arc<dyn Provisioner>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time source of condition timestamps.
    pub clock: Clock,
    /// Requeue interval of a converged tenant.
    pub resync: Duration,
    /// What each tenant's bundle was last compiled from (see [`compiled`]).
    compiled: compiled::Memo,
    /// Namespace and provider key Secrets of each Tenant (see [`index`]).
    pub index: TenantIndex,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context with the system clock and a five-minute resync.
    pub fn new(
        client: Client,
        settings: Settings,
        provisioner: Arc<dyn Provisioner>,
        metrics: Arc<Metrics>,
        reporter: Reporter,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            provisioner,
            metrics,
            clock: Arc::new(|| Time(Timestamp::now())),
            resync: Duration::from_secs(300),
            compiled: compiled::Memo::default(),
            index: TenantIndex::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the resync interval.
    pub fn with_resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    fn now(&self) -> Time {
        (self.clock)()
    }

    fn note_failure(&self, tenant: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(tenant.to_owned()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn clear_failures(&self, tenant: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
    }

    /// Publishes an Event about a Tenant; a failure to publish is logged, never fatal.
    async fn publish(&self, tenant: &Tenant, type_: EventType, reason: &str, note: String) {
        self.publish_about(&tenant.object_ref(&()), type_, reason, note)
            .await;
    }

    /// Publishes an Event about any object (it lands in the object's namespace); a failure
    /// to publish is logged, never fatal.
    async fn publish_about(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let mut note = note;
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(
                kind = regarding.kind.as_deref().unwrap_or_default(),
                name = regarding.name.as_deref().unwrap_or_default(),
                error = %describe(&e),
                "publishing an event failed"
            );
        }
    }
}

/// Delay before retry number `attempt` (1-based): 5s, 10s, 20s, ... up to five minutes.
pub fn backoff(attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

/// The controller's reconcile. Its cache holds Tenants as metadata only (see
/// [`watch::run`]), so it reads the Tenant first and hands it to [`reconcile`]; a Tenant gone
/// meanwhile has nothing left to do (its cleanup ran before its finalizer was removed).
pub async fn reconcile_cached(
    cached: Arc<PartialObjectMeta<Tenant>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let name = cached.name_any();
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    match api.get_opt(&name).await {
        Ok(Some(tenant)) => reconcile(Arc::new(tenant), ctx).await,
        Ok(None) => {
            // Its cleanup has already forgotten it, unless its finalizer was removed by hand.
            ctx.index.forget(&name);
            ctx.compiled.forget(&name);
            Ok(Action::await_change())
        }
        Err(e) => {
            ctx.metrics.reconciled("Tenant", "error", started.elapsed());
            Err(Error::kube("get", format!("Tenant {name}"), e))
        }
    }
}

/// Reconciles one Tenant: the finalizer decides between apply and cleanup; the result is
/// counted, logged, and (when it is a failure) published as an Event.
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let _running = ctx.metrics.in_flight();
    let name = tenant.name_any();
    // Before anything is read, so that the watches map every later change to this Tenant.
    ctx.index.record(&tenant);
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, tenant.clone(), |event| async {
        match event {
            finalizer::Event::Apply(t) => tenant::apply(&t, &ctx).await,
            finalizer::Event::Cleanup(t) => tenant::cleanup(&t, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let took = started.elapsed();
    match &result {
        Ok(action) => {
            ctx.clear_failures(&name);
            ctx.metrics.reconciled("Tenant", "success", took);
            tracing::info!(tenant = %name, ?action, took_ms = took.as_millis(), "reconciled");
        }
        Err(e) => {
            ctx.metrics.reconciled("Tenant", e.metric_label(), took);
            tracing::warn!(tenant = %name, error = %e, took_ms = took.as_millis(), "reconcile failed");
            // An invalid Tenant is reported by its status and the event of that transition.
            if !e.is_invalid() {
                ctx.publish(
                    &tenant,
                    EventType::Warning,
                    "ReconcileFailed",
                    e.to_string(),
                )
                .await;
            }
        }
    }
    result
}

/// What to do after a failed reconcile: an invalid Tenant waits for a change; anything else
/// is retried with exponential backoff.
pub fn error_policy<K: kube::Resource>(tenant: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_invalid() {
        return Action::await_change();
    }
    let attempt = ctx.note_failure(&tenant.name_any());
    Action::requeue(backoff(attempt))
}
