//! Condition types, reasons and helpers shared by the operator and the status types.
//!
//! Conditions follow the `metav1.Condition` shape; the list is a map keyed by `type`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod types {
    /// The object (or the tenant as a whole) is serving as specified.
    pub const READY: &str = "Ready";
    /// The tenant namespace and its guard rails exist.
    pub const NAMESPACE_READY: &str = "NamespaceReady";
    /// The tenant's database role and mapping exist.
    pub const DATABASE_READY: &str = "DatabaseReady";
    /// The tenant's bundle compiled and is published.
    pub const BUNDLE_READY: &str = "BundleReady";
    /// The runtime Deployment has available replicas.
    pub const RUNTIME_READY: &str = "RuntimeReady";
}

/// Condition reasons (CamelCase, as Kubernetes requires).
pub mod reasons {
    /// Everything converged.
    pub const RECONCILED: &str = "Reconciled";
    /// The object compiled into the bundle.
    pub const COMPILED: &str = "Compiled";
    /// The object failed validation or compilation and is left out of the bundle.
    pub const INVALID: &str = "Invalid";
    /// Work is in progress.
    pub const PROGRESSING: &str = "Progressing";
    /// The tenant is suspended.
    pub const SUSPENDED: &str = "Suspended";
    /// A dependency is not ready yet.
    pub const WAITING: &str = "Waiting";
    /// A transient error; the operator retries.
    pub const ERROR: &str = "Error";
    /// No Tenant owns the namespace the object lives in.
    pub const NO_TENANT: &str = "NoTenant";
}

/// Builds a condition; `status` is `"True"` when `ok`.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Inserts or replaces `new` in `conditions` by type, keeping `lastTransitionTime` when the
/// status did not change (so a converged object produces an identical status).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Returns the condition of the given type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let mut list = vec![condition(
            types::READY,
            true,
            reasons::RECONCILED,
            "ok",
            Some(1),
            at(10),
        )];
        set_condition(
            &mut list,
            condition(
                types::READY,
                true,
                reasons::RECONCILED,
                "ok",
                Some(2),
                at(20),
            ),
        );
        assert_eq!(list[0].last_transition_time, at(10));
        assert_eq!(list[0].observed_generation, Some(2));
        set_condition(
            &mut list,
            condition(
                types::READY,
                false,
                reasons::INVALID,
                "bad",
                Some(3),
                at(30),
            ),
        );
        assert_eq!(list[0].last_transition_time, at(30));
        assert!(!is_true(&list, types::READY));
    }
}
