//! Database provisioning: each Tenant gets a row in `agentry.tenants`, a LOGIN role that is a
//! member of `agentry_app`, and a row in `agentry.tenant_roles` that maps the role to the
//! tenant, so row-level security shows the role only its own tenant's rows (see
//! `runtime/migrations/0001_tenancy.sql` and docs/data.md).
//!
//! Reconcile talks to the database only through [`Provisioner`], so that controller tests use
//! an in-memory stand-in while [`PgProvisioner`] is tested against real PostgreSQL.

mod credentials;
mod postgres;

pub use credentials::{
    API_KEY_PREFIX, GeneratedKey, generate_api_key, generate_password, hash_secret, parse_api_key,
};
pub use postgres::{BOOTSTRAP_KEY_NAME, PgProvisioner};

use agentry_crds::Tenant;
use agentry_crds::tenant::{MAX_TENANT_NAME, OnDelete};
use futures::future::BoxFuture;
use kube::ResourceExt as _;
use thiserror::Error;
use uuid::Uuid;

/// Why provisioning failed.
#[derive(Debug, Error)]
pub enum DatabaseError {
    /// A name that cannot become a role name (the CRD refuses such names; checked again
    /// because the name is put into SQL).
    #[error("tenant name {0:?} is not a DNS label of at most 40 characters starting with a letter")]
    InvalidName(String),
    /// PostgreSQL failed or is unreachable.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
}

/// The tenant row as the operator keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    /// Tenant name (unique).
    pub name: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Plan.
    pub plan: Option<String>,
    /// Suspended tenants are refused by the runtime.
    pub suspended: bool,
}

impl TenantRecord {
    /// The row of a Tenant.
    pub fn of(tenant: &Tenant) -> Self {
        Self {
            name: tenant.name_any(),
            display_name: tenant.spec.display_name.clone(),
            plan: tenant.spec.plan.clone(),
            suspended: tenant.spec.suspended,
        }
    }
}

/// What the tenant's credentials Secret already holds; kept so that credentials are
/// generated once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingCredentials {
    /// The role's password.
    pub password: Option<String>,
    /// The bootstrap admin API key.
    pub admin_api_key: Option<String>,
}

/// The provisioned role and the credentials to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The tenant's id.
    pub tenant_id: Uuid,
    /// The login role.
    pub role: String,
    /// Its password.
    pub password: String,
    /// The bootstrap admin API key.
    pub admin_api_key: String,
    /// The password was (re)generated in this call.
    pub password_rotated: bool,
    /// A new admin key was created in this call.
    pub admin_key_created: bool,
}

/// Creates and removes tenants in the database. Every method is idempotent.
pub trait Provisioner: Send + Sync {
    /// Makes sure the tenant's row, role, membership, mapping and bootstrap key exist, reusing
    /// `existing` credentials and generating what is missing.
    fn ensure<'a>(
        &'a self,
        tenant: &'a TenantRecord,
        existing: &'a ExistingCredentials,
    ) -> BoxFuture<'a, Result<Provisioned, DatabaseError>>;

    /// Ends the role's sessions and drops the role and its mapping; with
    /// [`OnDelete::Delete`] also deletes the tenant's rows.
    fn remove<'a>(
        &'a self,
        tenant: &'a str,
        on_delete: OnDelete,
    ) -> BoxFuture<'a, Result<(), DatabaseError>>;
}

/// A checked role name: `agentry_tenant_<name>` with `-` replaced by `_`, so it contains only
/// `[a-z0-9_]` and is safe to put between double quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    /// The role of a tenant; refuses names the CRD would refuse.
    pub fn for_tenant(tenant: &str) -> Result<Self, DatabaseError> {
        if !is_tenant_name(tenant) {
            return Err(DatabaseError::InvalidName(tenant.to_owned()));
        }
        Ok(Self(format!("agentry_tenant_{}", tenant.replace('-', "_"))))
    }

    /// The bare name (for binding as a value).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

/// Whether `name` is a valid Tenant name: a DNS label of at most 40 characters that starts
/// with a letter.
pub fn is_tenant_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TENANT_NAME
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.last() != Some(&b'-')
}

/// A string as an SQL literal (standard-conforming strings: only `'` needs doubling).
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_checked_and_quoted() {
        let role = RoleName::for_tenant("acme-eu-1").unwrap();
        assert_eq!(role.as_str(), "agentry_tenant_acme_eu_1");
        assert_eq!(role.quoted(), "\"agentry_tenant_acme_eu_1\"");
        let longest = format!("a{}", "b".repeat(39));
        assert!(RoleName::for_tenant(&longest).unwrap().as_str().len() <= 63);
        for bad in [
            "",
            "1acme",
            "acme-",
            "Acme",
            "acme\"; drop role postgres; --",
            "a_b",
            &format!("a{}", "b".repeat(40)),
        ] {
            assert!(RoleName::for_tenant(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn literals_double_single_quotes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("plain"), "'plain'");
    }
}
