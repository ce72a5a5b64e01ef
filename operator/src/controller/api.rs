//! The few ways the controller writes to the API server: server-side apply with the one field
//! manager, status by server-side apply, and deletes that tolerate absence.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::error::{Error, is_not_found};
use crate::builders::FIELD_MANAGER;

/// Parameters of every apply: the operator's field manager, forcing conflicts because the
/// operator is the one owner of what it declares.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// `Kind namespace/name` of an object, for messages.
pub fn describe<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{} {ns}/{}", K::kind(&()), obj.name_any()),
        None => format!("{} {}", K::kind(&()), obj.name_any()),
    }
}

/// Applies a namespaced object and returns what the server holds.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    api.patch(&obj.name_any(), &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(|e| Error::kube("apply", describe(obj), e))
}

/// Applies a cluster-scoped object and returns what the server holds.
pub async fn apply_cluster<K>(client: &Client, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::all(client.clone());
    api.patch(&obj.name_any(), &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(|e| Error::kube("apply", describe(obj), e))
}

/// Applies `status` to an object's status subresource.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    S: Serialize,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await
        .map(|_| ())
        .map_err(|e| Error::kube("apply status of", describe(obj), e))
}

/// Deletes a namespaced object; absence is success.
pub async fn delete<K>(client: &Client, namespace: &str, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube(
            "delete",
            format!("{} {namespace}/{name}", K::kind(&())),
            e,
        )),
    }
}
