//! Fetch: everything reconcile reads before it decides anything.

use std::collections::{BTreeMap, BTreeSet};

use agentry_crds::bundle::BundleSources;
use agentry_crds::{Agent, FeatureFlag, Tenant, Tool, Workflow};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::ListParams;
use kube::{Api, Client};

use super::error::Error;
use crate::builders::CREDENTIALS_SECRET;
use crate::builders::secrets::{ADMIN_API_KEY_KEY, PASSWORD_KEY, provider_key_name};
use crate::builders::tool_secrets::SecretKeys;
use crate::database::ExistingCredentials;

/// What the cluster holds for one Tenant.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The tenant namespace, if it exists.
    pub namespace: Option<Namespace>,
    /// Agents in the namespace.
    pub agents: Vec<Agent>,
    /// Tools in the namespace.
    pub tools: Vec<Tool>,
    /// Workflows in the namespace.
    pub workflows: Vec<Workflow>,
    /// FeatureFlags in the namespace.
    pub flags: Vec<FeatureFlag>,
    /// The credentials Secret, if it exists.
    pub credentials: Option<Secret>,
    /// Provider key Secrets in the operator's namespace, by name (`None`: not found).
    pub provider_secrets: BTreeMap<String, Option<Secret>>,
}

impl Fetched {
    /// The compiler's inputs.
    pub fn sources(&self, tenant: &Tenant) -> BundleSources {
        BundleSources {
            tenant: tenant.clone(),
            agents: self.agents.clone(),
            tools: self.tools.clone(),
            workflows: self.workflows.clone(),
            flags: self.flags.clone(),
        }
    }

    /// What the credentials Secret already holds.
    pub fn existing_credentials(&self) -> ExistingCredentials {
        let read = |key: &str| {
            self.credentials
                .as_ref()
                .and_then(|s| s.data.as_ref())
                .and_then(|d| d.get(key))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|v| !v.is_empty())
        };
        ExistingCredentials {
            password: read(PASSWORD_KEY),
            admin_api_key: read(ADMIN_API_KEY_KEY),
        }
    }

    /// Provider API keys by projected key name, and a message for each key that cannot be
    /// found.
    pub fn provider_keys(
        &self,
        tenant: &Tenant,
        operator_namespace: &str,
    ) -> (BTreeMap<String, ByteString>, Vec<String>) {
        let mut keys = BTreeMap::new();
        let mut missing = Vec::new();
        for provider in &tenant.spec.providers {
            let Some(reference) = &provider.api_key_secret_ref else {
                continue;
            };
            let secret = self
                .provider_secrets
                .get(&reference.name)
                .cloned()
                .flatten();
            let value = secret
                .as_ref()
                .and_then(|s| s.data.as_ref())
                .and_then(|d| d.get(&reference.key));
            match (secret.is_some(), value) {
                (_, Some(value)) => {
                    keys.insert(provider_key_name(reference), value.clone());
                }
                (true, None) => missing.push(format!(
                    "provider {}: Secret {operator_namespace}/{} has no key {:?}",
                    provider.name, reference.name, reference.key
                )),
                (false, None) => missing.push(format!(
                    "provider {}: Secret {operator_namespace}/{} not found",
                    provider.name, reference.name
                )),
            }
        }
        (keys, missing)
    }
}

/// Names of the provider key Secrets a tenant refers to, sorted.
pub fn provider_secret_names(tenant: &Tenant) -> BTreeSet<String> {
    tenant
        .spec
        .providers
        .iter()
        .filter_map(|p| p.api_key_secret_ref.as_ref().map(|r| r.name.clone()))
        .collect()
}

async fn get_opt<K>(api: &Api<K>, what: String, name: &str) -> Result<Option<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(|e| Error::kube("get", what, e))
}

async fn list<K>(client: &Client, namespace: &str, kind: &str) -> Result<Vec<K>, Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| Error::kube("list", format!("{kind}s in {namespace}"), e))
}

/// Reads the tenant's namespace, its objects, its credentials Secret and the provider key
/// Secrets it refers to. Lists (not the watch caches) so that one reconcile sees one
/// consistent moment.
pub async fn fetch(
    client: &Client,
    tenant: &Tenant,
    operator_namespace: &str,
) -> Result<Fetched, Error> {
    let ns = tenant.namespace_name();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = get_opt(&namespaces, format!("Namespace {ns}"), &ns).await?;
    let agents = list(client, &ns, "Agent").await?;
    let tools = list(client, &ns, "Tool").await?;
    let workflows = list(client, &ns, "Workflow").await?;
    let flags = list(client, &ns, "FeatureFlag").await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let credentials = get_opt(
        &secrets,
        format!("Secret {ns}/{CREDENTIALS_SECRET}"),
        CREDENTIALS_SECRET,
    )
    .await?;
    let operator_secrets: Api<Secret> = Api::namespaced(client.clone(), operator_namespace);
    let mut provider_secrets = BTreeMap::new();
    for name in provider_secret_names(tenant) {
        let secret = get_opt(
            &operator_secrets,
            format!("Secret {operator_namespace}/{name}"),
            &name,
        )
        .await?;
        provider_secrets.insert(name, secret);
    }
    Ok(Fetched {
        namespace,
        agents,
        tools,
        workflows,
        flags,
        credentials,
        provider_secrets,
    })
}

/// Which keys each Secret named in `names` holds in the tenant namespace (`None`: not found).
/// Only the key names are kept: the values are for the kubelet, not for the operator.
pub async fn secret_keys<'a>(
    client: &Client,
    namespace: &str,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<SecretKeys, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut found = SecretKeys::new();
    for name in names {
        let secret = get_opt(&secrets, format!("Secret {namespace}/{name}"), name).await?;
        let keys = secret.map(|s| {
            let data = s.data.into_iter().flat_map(BTreeMap::into_keys);
            let string_data = s.string_data.into_iter().flat_map(BTreeMap::into_keys);
            data.chain(string_data).collect::<BTreeSet<_>>()
        });
        found.insert(name.clone(), keys);
    }
    Ok(found)
}
