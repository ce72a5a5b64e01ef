//! Prometheus metrics of the operator, served at `/metrics`.
//!
//! kube-runtime keeps its scheduling queue private, so the queue is seen from the outside:
//! reconciles in flight, and how many Tenants the controller knows.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of reconcile counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// Kind reconciled (`Tenant`).
    pub kind: String,
    /// `success`, `invalid` or `error`.
    pub result: String,
}

/// Labels carrying a kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Kind.
    pub kind: String,
}

/// Labels of bundle counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleLabels {
    /// `compiled`, or `reused` when the inputs were unchanged and the ConfigMap still held
    /// the bundle published last.
    pub outcome: String,
}

/// Every metric family of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by kind and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile duration by kind.
    pub reconcile_duration: Family<KindLabels, Histogram>,
    /// Reconciles running now.
    pub in_flight: Gauge,
    /// Tenants in the controller's cache.
    pub tenants: Gauge,
    /// Status writes by kind (a converged cluster writes none).
    pub status_writes: Family<KindLabels, Counter>,
    /// 1 while this process holds the leader Lease (or runs without leader election).
    pub leader: Gauge,
    /// Bundles a reconcile compiled or reused.
    pub bundles: Family<BundleLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agentry_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by kind and result",
            reconciles.clone(),
        );
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by kind",
            reconcile_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "reconcile_in_flight",
            "Reconciles running now",
            in_flight.clone(),
        );
        let tenants = Gauge::default();
        registry.register("tenants", "Tenants the controller knows", tenants.clone());
        let status_writes = Family::<KindLabels, Counter>::default();
        registry.register(
            "status_writes",
            "Status writes by kind",
            status_writes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process runs the controllers",
            leader.clone(),
        );
        let bundles = Family::<BundleLabels, Counter>::default();
        registry.register(
            "bundles",
            "Bundles reconciles compiled, or reused because their inputs were unchanged",
            bundles.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_duration,
            in_flight,
            tenants,
            status_writes,
            leader,
            bundles,
        }
    }

    /// Records one reconcile.
    pub fn reconciled(&self, kind: &str, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts one status write.
    pub fn status_written(&self, kind: &str) {
        self.status_writes
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts one bundle compiled (`reused: false`) or reused.
    pub fn bundle(&self, reused: bool) {
        let outcome = if reused { "reused" } else { "compiled" };
        self.bundles
            .get_or_create(&BundleLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Marks one reconcile as running until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Decrements the in-flight gauge when dropped (also when a reconcile is cancelled).
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_by_kind_and_result() {
        let m = Metrics::new();
        m.reconciled("Tenant", "success", Duration::from_millis(20));
        m.reconciled("Tenant", "error", Duration::from_millis(20));
        m.status_written("Agent");
        {
            let _guard = m.in_flight();
            assert!(
                m.encode()
                    .contains("agentry_operator_reconcile_in_flight 1")
            );
        }
        let text = m.encode();
        assert!(
            text.contains(r#"agentry_operator_reconciles_total{kind="Tenant",result="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"agentry_operator_reconciles_total{kind="Tenant",result="error"} 1"#)
        );
        assert!(text.contains("agentry_operator_reconcile_duration_seconds_bucket"));
        assert!(text.contains(r#"agentry_operator_status_writes_total{kind="Agent"} 1"#));
        assert!(text.contains("agentry_operator_reconcile_in_flight 0"));
    }
}
