//! A Kubernetes API server for the benchmark. It answers what the controller asks (get,
//! list, server-side apply, JSON patch, delete, events, watches) and counts every request by
//! kind. The reconcile runs serve it in process on its own thread ([`spawn`]), so that the
//! operator's thread CPU time holds only the operator's work; the memory run serves it over
//! HTTP from a process of its own ([`serve_http`]), so that none of its memory is counted
//! as the operator's.
//!
//! Two ways to answer:
//! - [`Store`]: holds objects and applies writes, like the API server (reconcile runs);
//! - [`Replica`]: serves any number of tenants from one converged tenant's objects by
//!   replacing its name (the memory run, where holding 10,000 tenants' objects here would
//!   be counted against the operator's RSS).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::response::IntoResponse as _;
use http::{Request, Response};
use kube::client::Body;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// Requests seen, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub gets: u64,
    pub lists: u64,
    pub watches: u64,
    pub applies: u64,
    pub status_writes: u64,
    pub json_patches: u64,
    pub deletes: u64,
    pub events: u64,
}

impl Counts {
    /// `self - before`, field by field.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            requests: self.requests - before.requests,
            gets: self.gets - before.gets,
            lists: self.lists - before.lists,
            watches: self.watches - before.watches,
            applies: self.applies - before.applies,
            status_writes: self.status_writes - before.status_writes,
            json_patches: self.json_patches - before.json_patches,
            deletes: self.deletes - before.deletes,
            events: self.events - before.events,
        }
    }
}

/// One request, read.
#[derive(Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub accept: String,
    pub body: Value,
}

impl Call {
    fn is_watch(&self) -> bool {
        self.query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1")
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
    }
}

/// What to answer.
#[derive(Debug)]
pub enum Reply {
    Json(u16, Value),
    /// Pre-serialized JSON (large list pages).
    Raw(u16, String),
    /// Never answer: an open watch with nothing to report.
    Hold,
}

fn status(code: u16, reason: &str) -> Reply {
    Reply::Json(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "code": code, "message": reason}),
    )
}

/// Something that answers requests.
pub trait Server: Send + 'static {
    fn answer(&mut self, call: &Call, counts: &mut Counts) -> Reply;
}

/// The shared state of a running API server.
pub struct Shared<S> {
    pub server: S,
    pub counts: Counts,
}

/// A running API server's state, shared with its thread.
pub type SharedServer<S> = Arc<Mutex<Shared<S>>>;

/// Locks, surviving a panicked holder (the counts stay meaningful).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves `handle` on a new thread until the client side is dropped.
pub fn spawn<S: Server>(mut handle: Handle, shared: Arc<Mutex<Shared<S>>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("fake-api-server".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let mut held: Vec<Responder> = Vec::new();
                while let Some((request, respond)) = handle.next_request().await {
                    let call = match read(request).await {
                        Ok(call) => call,
                        Err(e) => {
                            respond.send_error(e);
                            continue;
                        }
                    };
                    let reply = {
                        let mut guard = lock(&shared);
                        let Shared { server, counts } = &mut *guard;
                        counts.requests += 1;
                        server.answer(&call, counts)
                    };
                    match reply {
                        Reply::Json(code, value) => respond.send_response(response(
                            code,
                            Body::from(serde_json::to_vec(&value).unwrap_or_default()),
                        )),
                        Reply::Raw(code, text) => {
                            respond.send_response(response(code, Body::from(text.into_bytes())))
                        }
                        Reply::Hold => held.push(respond),
                    }
                }
                drop(held);
            });
        })?;
    Ok(())
}

/// Where the HTTP server answers how far the run has come ([`Progress`]).
pub const PROGRESS_PATH: &str = "/bench/progress";

/// The requests seen so far and the tenants reconciled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub counts: Counts,
    pub reconciled: usize,
}

/// Serves `shared` over HTTP on `listener` until the process ends.
pub async fn serve_http(
    shared: SharedServer<Replica>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route(PROGRESS_PATH, axum::routing::get(progress))
        .fallback(answer_http)
        .with_state(shared);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn progress(State(shared): State<SharedServer<Replica>>) -> axum::Json<Progress> {
    let guard = lock(&shared);
    axum::Json(Progress {
        counts: guard.counts.clone(),
        reconciled: guard.server.reconciled,
    })
}

async fn answer_http(
    State(shared): State<SharedServer<Replica>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let call = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => call_of(&parts, &bytes),
        Err(e) => Err(e.into()),
    };
    let call = match call {
        Ok(call) => call,
        Err(e) => return (http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let reply = {
        let mut guard = lock(&shared);
        let Shared { server, counts } = &mut *guard;
        counts.requests += 1;
        server.answer(&call, counts)
    };
    let body = match reply {
        Reply::Json(code, value) => {
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            return response(code, axum::body::Body::from(bytes));
        }
        Reply::Raw(code, text) => return response(code, axum::body::Body::from(text)),
        // Headers now, then nothing until the client hangs up: a watch with no news.
        Reply::Hold => axum::body::Body::from_stream(futures::stream::pending::<
            Result<Vec<u8>, std::convert::Infallible>,
        >()),
    };
    response(200, body)
}

fn response<B>(code: u16, body: B) -> Response<B> {
    let mut r = Response::new(body);
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn read(request: Request<Body>) -> anyhow::Result<Call> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await?;
    call_of(&parts, &bytes)
}

fn call_of(parts: &http::request::Parts, bytes: &[u8]) -> anyhow::Result<Call> {
    let header = |name: http::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header(http::header::CONTENT_TYPE);
    let accept = header(http::header::ACCEPT);
    let method = parts.method.to_string();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes)?
    };
    Ok(Call {
        method,
        path,
        query,
        content_type,
        accept,
        body,
    })
}

/// How a path addresses the API: a collection (all namespaces or one) or one object.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Collection,
    Object,
    Subresource,
}

fn target(path: &str) -> Target {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        _ => segments.get(3..),
    }
    .unwrap_or_default();
    match rest {
        [_] | ["namespaces", _, _] => Target::Collection,
        [_, _] | ["namespaces", _, _, _] => Target::Object,
        _ => Target::Subresource,
    }
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// Lays `top` over `base` (objects key by key, anything else replaced).
fn overlay(base: &mut Value, top: &Value) {
    match (base.as_object_mut(), top.as_object()) {
        (Some(b), Some(t)) => {
            for (k, v) in t {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => overlay(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *base = top.clone(),
    }
}

/// An API server that holds objects by path.
#[derive(Debug, Default)]
pub struct Store {
    pub objects: BTreeMap<String, Value>,
    /// Server-side apply bodies in arrival order, for comparing two reconciles.
    pub applied: Vec<(String, Value)>,
    version: u64,
}

impl Store {
    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn apply(&mut self, call: &Call, counts: &mut Counts) -> Reply {
        if let Some(object_path) = call.path.strip_suffix("/status") {
            counts.status_writes += 1;
            let version = self.next_version();
            let Some(object) = self.objects.get_mut(object_path) else {
                return status(404, "NotFound");
            };
            object["status"] = call.body["status"].clone();
            object["metadata"]["resourceVersion"] = json!(version);
            return Reply::Json(200, object.clone());
        }
        counts.applies += 1;
        self.applied.push((call.path.clone(), call.body.clone()));
        let version = self.next_version();
        let mut object = self.objects.get(&call.path).cloned().unwrap_or(json!({}));
        let kept_status = object.get("status").cloned();
        overlay(&mut object, &call.body);
        if let Some(s) = kept_status {
            object["status"] = s;
        }
        object["metadata"]["resourceVersion"] = json!(version);
        if call.path.contains("/deployments/") {
            // Its pods start at once: the replicas it asks for are available.
            let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
            object["status"] = json!({"replicas": replicas, "availableReplicas": replicas});
        }
        self.objects.insert(call.path.clone(), object.clone());
        Reply::Json(200, object)
    }

    /// The JSON patch of kube-runtime's `finalizer()`: test, then add or remove.
    fn json_patch(&mut self, call: &Call) -> Reply {
        let Some(object) = self.objects.get_mut(&call.path) else {
            return status(404, "NotFound");
        };
        for op in call.body.as_array().into_iter().flatten() {
            let path = op["path"].as_str().unwrap_or_default();
            match (op["op"].as_str(), path) {
                (Some("add"), "/metadata/finalizers") => {
                    object["metadata"]["finalizers"] = op["value"].clone();
                }
                (Some("add"), "/metadata/finalizers/-") => {
                    if let Some(list) = object["metadata"]["finalizers"].as_array_mut() {
                        list.push(op["value"].clone());
                    }
                }
                (Some("remove"), p) if p.starts_with("/metadata/finalizers/") => {
                    let index = p.rsplit('/').next().and_then(|i| i.parse::<usize>().ok());
                    if let (Some(list), Some(i)) =
                        (object["metadata"]["finalizers"].as_array_mut(), index)
                        && i < list.len()
                    {
                        list.remove(i);
                    }
                }
                _ => {}
            }
        }
        Reply::Json(200, object.clone())
    }
}

impl Server for Store {
    fn answer(&mut self, call: &Call, counts: &mut Counts) -> Reply {
        match call.method.as_str() {
            "GET" if call.is_watch() => {
                counts.watches += 1;
                Reply::Hold
            }
            "GET" if target(&call.path) == Target::Collection => {
                counts.lists += 1;
                let prefix = format!("{}/", call.path);
                let items = self
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(p, _)| p.starts_with(&prefix))
                    .filter(|(p, _)| !p[prefix.len()..].contains('/'))
                    .map(|(_, v)| v.clone())
                    .collect();
                Reply::Json(200, list(items))
            }
            "GET" => {
                counts.gets += 1;
                match self.objects.get(&call.path) {
                    Some(v) => Reply::Json(200, v.clone()),
                    None => status(404, "NotFound"),
                }
            }
            "PATCH" if call.content_type.starts_with("application/apply-patch") => {
                self.apply(call, counts)
            }
            "PATCH" if call.content_type.starts_with("application/json-patch") => {
                counts.json_patches += 1;
                self.json_patch(call)
            }
            "DELETE" => {
                counts.deletes += 1;
                match self.objects.remove(&call.path) {
                    Some(v) => Reply::Json(200, v),
                    None => status(404, "NotFound"),
                }
            }
            "POST" if call.path.ends_with("/events") => {
                counts.events += 1;
                Reply::Json(200, call.body.clone())
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }
}

/// Length of a tenant name (`t00042`).
const NAME_LEN: usize = 6;

/// Finds a tenant name (`t` and five digits after `-` or `/`) in `s`.
fn tenant_in(s: &str) -> Option<&str> {
    let bytes = s.as_bytes();
    (1..bytes.len().saturating_sub(NAME_LEN - 1)).find_map(|i| {
        let candidate = &bytes[i..i + NAME_LEN];
        let boundary = matches!(bytes[i - 1], b'-' | b'/');
        let after = bytes.get(i + NAME_LEN).is_none_or(|b| !b.is_ascii_digit());
        (boundary && after && candidate[0] == b't' && candidate[1..].iter().all(u8::is_ascii_digit))
            .then(|| &s[i..i + NAME_LEN])
    })
}

/// One converged tenant's objects, served as tenant `i` for every `i < tenants`.
#[derive(Debug)]
pub struct Replica {
    /// Path (of tenant `t00000`) → object JSON.
    objects: BTreeMap<String, String>,
    /// Path → metadata-only JSON (a `PartialObjectMetadata`).
    metadata: BTreeMap<String, String>,
    /// Paths by cluster-wide collection (`/apis/apps/v1/deployments`).
    by_collection: HashMap<String, Vec<String>>,
    tenants: usize,
    /// Bundle hash of each tenant (it covers the tenant's name, so it is not a copy of
    /// tenant 0's), replacing tenant 0's wherever it appears.
    hashes: Vec<String>,
    /// Reads of a tenant namespace: each reconcile makes one.
    pub reconciled: usize,
}

const MANAGED: &str = "app.kubernetes.io/managed-by";

impl Replica {
    /// From the objects of tenant `t00000` in `store`; `hashes` holds each tenant's bundle
    /// hash.
    pub fn new(store: &Store, hashes: Vec<String>) -> anyhow::Result<Self> {
        let tenants = hashes.len();
        let mut objects = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        let mut by_collection: HashMap<String, Vec<String>> = HashMap::new();
        for (path, value) in &store.objects {
            objects.insert(path.clone(), serde_json::to_string(value)?);
            let meta = json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": value["metadata"],
            });
            metadata.insert(path.clone(), serde_json::to_string(&meta)?);
            by_collection
                .entry(cluster_collection(path))
                .or_default()
                .push(path.clone());
        }
        Ok(Self {
            objects,
            metadata,
            by_collection,
            tenants,
            hashes,
            reconciled: 0,
        })
    }

    fn for_tenant(&self, text: &str, name: &str) -> String {
        let renamed = text.replace(&crate::world::tenant_name(0), name);
        let index = name.get(1..).and_then(|i| i.parse::<usize>().ok());
        match (self.hashes.first(), index.and_then(|i| self.hashes.get(i))) {
            (Some(first), Some(hash)) if first != hash => renamed.replace(first, hash),
            _ => renamed,
        }
    }

    /// One page of a cluster-wide list: whole tenants from `continue` until `limit` items.
    fn page(&self, call: &Call) -> Reply {
        let paths = self
            .by_collection
            .get(&call.path)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let managed_only = call
            .param("labelSelector")
            .is_some_and(|s| s.contains("managed-by"));
        let metadata_only = call.accept.contains("PartialObjectMetadata");
        let source = if metadata_only {
            &self.metadata
        } else {
            &self.objects
        };
        let selected: Vec<&String> = paths
            .iter()
            .filter(|p| !managed_only || self.is_managed(p))
            .filter_map(|p| source.get(p))
            .collect();
        let limit = call
            .param("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        let mut next = call
            .param("continue")
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(0);
        let mut items = Vec::new();
        while next < self.tenants && (items.is_empty() || items.len() < limit) {
            let name = crate::world::tenant_name(next);
            items.extend(selected.iter().map(|t| self.for_tenant(t, &name)));
            next += 1;
            if selected.is_empty() {
                next = self.tenants;
            }
        }
        let more = if next < self.tenants {
            format!(",\"continue\":\"{next}\"")
        } else {
            String::new()
        };
        Reply::Raw(
            200,
            format!(
                "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"metadata\":{{\"resourceVersion\":\"1\"{more}}},\"items\":[{}]}}",
                items.join(",")
            ),
        )
    }

    fn is_managed(&self, path: &str) -> bool {
        self.objects
            .get(path)
            .and_then(|o| serde_json::from_str::<Value>(o).ok())
            .is_some_and(|v| v["metadata"]["labels"][MANAGED] == "agentry-operator")
    }
}

/// The cluster-wide collection of an object path: `/api/v1/namespaces/ns/secrets/x` →
/// `/api/v1/secrets`, `/api/v1/namespaces/ns` → `/api/v1/namespaces`.
fn cluster_collection(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let prefix_len = if segments.first() == Some(&"api") {
        2
    } else {
        3
    };
    let (prefix, rest) = segments.split_at(prefix_len.min(segments.len()));
    let resource = match rest {
        ["namespaces", _, resource, ..] => *resource,
        [resource, ..] => *resource,
        [] => "",
    };
    format!("/{}/{resource}", prefix.join("/"))
}

impl Server for Replica {
    fn answer(&mut self, call: &Call, counts: &mut Counts) -> Reply {
        let name = tenant_in(&call.path).map(str::to_owned);
        let path = match &name {
            Some(n) => call
                .path
                .replacen(n.as_str(), &crate::world::tenant_name(0), 1),
            None => call.path.clone(),
        };
        let tenant = name.unwrap_or_else(|| crate::world::tenant_name(0));
        let namespace = format!("/api/v1/namespaces/tenant-{}", crate::world::tenant_name(0));
        if call.method == "GET" && path == namespace {
            self.reconciled += 1;
        }
        let stored = |p: &str| self.objects.get(p).map(|o| self.for_tenant(o, &tenant));
        match call.method.as_str() {
            "GET" if call.is_watch() => {
                counts.watches += 1;
                Reply::Hold
            }
            "GET"
                if target(&call.path) == Target::Collection && tenant_in(&call.path).is_none() =>
            {
                counts.lists += 1;
                self.page(call)
            }
            "GET" if target(&call.path) == Target::Collection => {
                counts.lists += 1;
                let prefix = format!("{path}/");
                let items: Vec<String> = self
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(p, _)| p.starts_with(&prefix))
                    .filter(|(p, _)| !p[prefix.len()..].contains('/'))
                    .map(|(_, o)| self.for_tenant(o, &tenant))
                    .collect();
                Reply::Raw(
                    200,
                    format!(
                        "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"metadata\":{{\"resourceVersion\":\"1\"}},\"items\":[{}]}}",
                        items.join(",")
                    ),
                )
            }
            "GET" => {
                counts.gets += 1;
                stored(&path).map_or_else(|| status(404, "NotFound"), |o| Reply::Raw(200, o))
            }
            "PATCH" if call.content_type.starts_with("application/apply-patch") => {
                // Converged: the server already holds what is applied.
                let object_path = match path.strip_suffix("/status") {
                    Some(p) => {
                        counts.status_writes += 1;
                        p.to_owned()
                    }
                    None => {
                        counts.applies += 1;
                        path.clone()
                    }
                };
                stored(&object_path).map_or_else(
                    || Reply::Json(200, call.body.clone()),
                    |o| Reply::Raw(200, o),
                )
            }
            "PATCH" => {
                counts.json_patches += 1;
                stored(&path).map_or_else(|| status(404, "NotFound"), |o| Reply::Raw(200, o))
            }
            "DELETE" => {
                counts.deletes += 1;
                status(404, "NotFound")
            }
            "POST" if call.path.ends_with("/events") => {
                counts.events += 1;
                Reply::Json(200, call.body.clone())
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_found_in_paths() {
        assert_eq!(
            tenant_in("/api/v1/namespaces/tenant-t00042/secrets/x"),
            Some("t00042")
        );
        assert_eq!(
            tenant_in("/apis/agentry.dev/v1alpha1/tenants/t00042/status"),
            Some("t00042")
        );
        assert_eq!(tenant_in("/api/v1/namespaces"), None);
        assert_eq!(
            cluster_collection("/api/v1/namespaces/tenant-t00000/secrets/x"),
            "/api/v1/secrets"
        );
        assert_eq!(
            cluster_collection("/api/v1/namespaces/tenant-t00000"),
            "/api/v1/namespaces"
        );
        assert_eq!(
            cluster_collection("/apis/apps/v1/namespaces/n/deployments/d"),
            "/apis/apps/v1/deployments"
        );
        assert_eq!(
            cluster_collection("/apis/agentry.dev/v1alpha1/tenants/t00000"),
            "/apis/agentry.dev/v1alpha1/tenants"
        );
        assert_eq!(target("/api/v1/namespaces"), Target::Collection);
        assert_eq!(target("/api/v1/namespaces/x"), Target::Object);
        assert_eq!(
            target("/apis/agentry.dev/v1alpha1/namespaces/x/agents"),
            Target::Collection
        );
        assert_eq!(
            target("/apis/agentry.dev/v1alpha1/tenants/t/status"),
            Target::Subresource
        );
    }
}
