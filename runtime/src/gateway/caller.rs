//! Who is calling: the tenant, the principal (API key or end user) and the scopes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::tenancy::TenantHandle;

/// A permission an API key or token carries.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Conversations and messages.
    Chat,
    /// Workflow runs.
    Workflows,
    /// Knowledge ingestion.
    Ingest,
    /// Analytics queries.
    Analytics,
    /// Usage and invoices.
    Billing,
    /// Keys, audit log, bundle; implies every other scope.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 6] = [
        Scope::Chat,
        Scope::Workflows,
        Scope::Ingest,
        Scope::Analytics,
        Scope::Billing,
        Scope::Admin,
    ];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::Workflows => "workflows",
            Scope::Ingest => "ingest",
            Scope::Analytics => "analytics",
            Scope::Billing => "billing",
            Scope::Admin => "admin",
        }
    }

    /// Parses a scope name.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// The authenticated principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An API key (its row id).
    ApiKey {
        /// `agentry.api_keys.id`.
        id: Uuid,
    },
    /// An end user with a JWT from the tenant's identity provider.
    User {
        /// The user claim (`sub` by default).
        subject: String,
    },
}

/// The caller of a request, set by the auth layer in the request's extensions.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The tenant the caller belongs to.
    pub tenant: Arc<TenantHandle>,
    /// Who.
    pub principal: Principal,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl Caller {
    /// Fails with 403 unless the caller has `scope` (or `admin`).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this credential lacks the {:?} scope",
                scope.as_str()
            )))
        }
    }

    /// `key:<id>` or `user:<subject>`, for audit events.
    pub fn actor(&self) -> String {
        match &self.principal {
            Principal::ApiKey { id } => format!("key:{id}"),
            Principal::User { subject } => format!("user:{subject}"),
        }
    }

    /// The API key's row id when the caller is one (what usage rows are charged to).
    pub fn key_id(&self) -> Option<Uuid> {
        match &self.principal {
            Principal::ApiKey { id } => Some(*id),
            Principal::User { .. } => None,
        }
    }

    /// The end user's id when the caller is one.
    pub fn user_id(&self) -> Option<&str> {
        match &self.principal {
            Principal::User { subject } => Some(subject),
            Principal::ApiKey { .. } => None,
        }
    }
}
