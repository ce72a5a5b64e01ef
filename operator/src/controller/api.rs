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

/// Applies an object and returns the server's answer unparsed: most applies need nothing
/// of it, and parsing whole objects (managed fields included) for each of a reconcile's
/// sixteen applies was a tenth of its CPU time.
async fn apply_text<K>(client: &Client, namespace: Option<&str>, obj: &K) -> Result<String, Error>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let mut request = kube::core::Request::new(K::url_path(&(), namespace))
        .patch(&obj.name_any(), &apply_params(), &Patch::Apply(obj))
        .map_err(|e| Error::kube("apply", describe(obj), kube::Error::BuildRequest(e)))?;
    // The verb kube's tracing layer names the span by, as `Api::patch` sets it.
    request.extensions_mut().insert("patch");
    client
        .request_text(request)
        .await
        .map_err(|e| Error::kube("apply", describe(obj), e))
}

/// Applies a namespaced object.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Serialize,
{
    apply_text(client, obj.meta().namespace.as_deref(), obj)
        .await
        .map(drop)
}

/// Applies a cluster-scoped object.
pub async fn apply_cluster<K>(client: &Client, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    apply_text(client, None, obj).await.map(drop)
}

/// Applies a namespaced object and reads `R`, the part of the server's answer the caller
/// needs (serde skips the rest without building it).
pub async fn apply_and_read<K, R>(client: &Client, obj: &K) -> Result<R, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Serialize,
    R: DeserializeOwned,
{
    let text = apply_text(client, obj.meta().namespace.as_deref(), obj).await?;
    serde_json::from_str(&text)
        .map_err(|e| Error::kube("apply", describe(obj), kube::Error::SerdeError(e)))
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
