//! Errors of a reconcile, sorted into what waits for a change and what is retried.

use kube::runtime::finalizer;
use thiserror::Error;

use crate::database::DatabaseError;

/// Why a reconcile failed.
#[derive(Debug, Error)]
pub enum Error {
    /// The Tenant cannot be reconciled as written; its status says why. Retried when it
    /// changes, not before.
    #[error("{0}")]
    Invalid(String),
    /// A Kubernetes API call failed.
    #[error("{action} {object}: {}", describe(.source))]
    Kube {
        /// What was being done (`apply`, `get`, ...).
        action: &'static str,
        /// `Kind namespace/name`.
        object: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Provisioning in PostgreSQL failed.
    #[error("provisioning the database: {0}")]
    Database(#[from] DatabaseError),
    /// Adding or removing the finalizer failed, or apply/cleanup inside it.
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A Kubernetes error with what was being done to which object.
    pub fn kube(action: &'static str, object: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action,
            object: object.into(),
            source,
        }
    }

    /// Whether the error is the Tenant's own (retrying cannot help).
    pub fn is_invalid(&self) -> bool {
        match self {
            Self::Invalid(_) => true,
            Self::Finalizer(e) => matches!(
                e.as_ref(),
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner)
                    if inner.is_invalid()
            ),
            _ => false,
        }
    }

    /// The metric label of the error.
    pub fn metric_label(&self) -> &'static str {
        if self.is_invalid() {
            "invalid"
        } else {
            "error"
        }
    }
}

/// A short description of a client error: the API server's code and message rather than the
/// whole Status object.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!(
            "{} {}: {}",
            status.code,
            if status.reason.is_empty() {
                "Error"
            } else {
                &status.reason
            },
            status.message
        ),
        other => other.to_string(),
    }
}

/// Whether a client error is a 404.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            Status::failure("the object has been modified", reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn kube_errors_read_short_and_name_the_object() {
        let e = Error::kube(
            "apply",
            "Deployment tenant-acme/agentry-runtime",
            api(409, "Conflict"),
        );
        assert_eq!(
            e.to_string(),
            "apply Deployment tenant-acme/agentry-runtime: 409 Conflict: the object has been modified"
        );
        assert!(!e.is_invalid());
        assert!(is_not_found(&api(404, "NotFound")));
    }

    #[test]
    fn invalid_is_seen_through_the_finalizer() {
        let e = Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(Error::Invalid(
            "namespace taken".to_owned(),
        ))));
        assert!(e.is_invalid());
        assert_eq!(e.metric_label(), "invalid");
        let t = Error::Finalizer(Box::new(finalizer::Error::AddFinalizer(api(
            500,
            "InternalError",
        ))));
        assert!(!t.is_invalid());
    }
}
