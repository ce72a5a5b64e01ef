//! Secrets of a tenant namespace: the runtime's database credentials with the bootstrap
//! admin API key, and copies of the provider API keys the tenant declares.

use std::collections::BTreeMap;

use agentry_crds::common::SecretKeyRef;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{CREDENTIALS_SECRET, Owner, PROVIDER_KEYS_SECRET};
use crate::database::Provisioned;
use crate::settings::Settings;

/// Key of the runtime's database URL (with credentials).
pub const DATABASE_URL_KEY: &str = "database-url";
/// Key of the database role name.
pub const USERNAME_KEY: &str = "username";
/// Key of the database role's password.
pub const PASSWORD_KEY: &str = "password";
/// Key of the tenant's id in the database.
pub const TENANT_ID_KEY: &str = "tenant-id";
/// Key of the bootstrap admin API key (`agk_...`).
pub const ADMIN_API_KEY_KEY: &str = "admin-api-key";
/// Where the runtime finds provider API keys: the key `k` of Secret `s` (a provider's
/// `apiKeySecretRef`) is the file `<dir>/s/k` (the runtime's `AGENTRY_PROVIDER_SECRETS_DIR`).
pub const PROVIDER_KEYS_DIR: &str = "/etc/agentry/providers";

/// Key of a provider API key in the projected Secret: `<secret>_<key>`. Secret names never
/// contain `_`, so the first `_` separates the two and no two references share a key.
pub fn provider_key_name(reference: &SecretKeyRef) -> String {
    format!("{}_{}", reference.name, reference.key)
}

/// The database URL a runtime connects with.
pub fn database_url(settings: &Settings, db: &Provisioned) -> String {
    let mut url = settings.runtime_database_url.clone();
    // Role names and passwords are [a-z0-9_] and base62: nothing to escape, and both calls
    // succeed on any URL with a host.
    let _ = url.set_username(&db.role);
    let _ = url.set_password(Some(&db.password));
    url.to_string()
}

fn bytes(value: &str) -> ByteString {
    ByteString(value.as_bytes().to_vec())
}

/// The credentials Secret. Its data is applied from the provisioner's answer, which reuses
/// what an existing Secret holds, so applying it again changes nothing.
pub fn credentials(owner: &Owner, settings: &Settings, db: &Provisioned) -> Secret {
    Secret {
        metadata: owner.meta(CREDENTIALS_SECRET),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (
                DATABASE_URL_KEY.to_owned(),
                bytes(&database_url(settings, db)),
            ),
            (USERNAME_KEY.to_owned(), bytes(&db.role)),
            (PASSWORD_KEY.to_owned(), bytes(&db.password)),
            (TENANT_ID_KEY.to_owned(), bytes(&db.tenant_id.to_string())),
            (ADMIN_API_KEY_KEY.to_owned(), bytes(&db.admin_api_key)),
        ])),
        ..Secret::default()
    }
}

/// Copies of the provider API keys the tenant refers to, keyed by [`provider_key_name`].
/// Always applied (possibly empty) so that the runtime's volume always exists; keys that are
/// no longer referred to leave with the next apply.
pub fn provider_keys(owner: &Owner, keys: &BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: owner.meta(PROVIDER_KEYS_SECRET),
        type_: Some("Opaque".to_owned()),
        data: Some(keys.clone()),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::{provisioned, tenant};
    use crate::settings::tests::settings;

    fn text(secret: &Secret, key: &str) -> String {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    #[test]
    fn credentials_carry_url_role_password_tenant_and_admin_key() {
        let db = provisioned();
        let s = credentials(&Owner::of(&tenant()), &settings(), &db);
        assert_eq!(s.metadata.name.as_deref(), Some(CREDENTIALS_SECRET));
        assert_eq!(s.metadata.namespace.as_deref(), Some("tenant-acme"));
        assert_eq!(
            text(&s, DATABASE_URL_KEY),
            format!(
                "postgres://agentry_tenant_acme:{}@pg.agentry-system.svc:5432/agentry?sslmode=require",
                db.password
            )
        );
        assert_eq!(text(&s, USERNAME_KEY), "agentry_tenant_acme");
        assert_eq!(text(&s, PASSWORD_KEY), db.password);
        assert_eq!(text(&s, TENANT_ID_KEY), db.tenant_id.to_string());
        assert_eq!(text(&s, ADMIN_API_KEY_KEY), db.admin_api_key);
        // Data, not stringData: stringData would never read back equal, and every
        // reconcile would look like a change.
        assert!(s.string_data.is_none());
    }

    #[test]
    fn provider_keys_copy_exactly_what_is_given() {
        let owner = Owner::of(&tenant());
        let empty = provider_keys(&owner, &BTreeMap::new());
        assert_eq!(empty.data, Some(BTreeMap::new()));
        let reference = SecretKeyRef {
            name: "openai-key".to_owned(),
            key: "api_key".to_owned(),
        };
        assert_eq!(provider_key_name(&reference), "openai-key_api_key");
        let keys = BTreeMap::from([(provider_key_name(&reference), ByteString(b"sk-1".to_vec()))]);
        let s = provider_keys(&owner, &keys);
        assert_eq!(s.metadata.name.as_deref(), Some(PROVIDER_KEYS_SECRET));
        assert_eq!(s.data.unwrap()["openai-key_api_key"].0, b"sk-1");
    }
}
