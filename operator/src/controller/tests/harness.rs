//! The mocked API server, the in-memory provisioner and scenario building blocks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentry_crds::tenant::OnDelete;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::controller::Context;
use crate::database::{
    DatabaseError, ExistingCredentials, Provisioned, Provisioner, RoleName, TenantRecord,
};
use crate::metrics::Metrics;
use crate::settings::Settings;

pub(crate) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The password the fake provisioner generates.
pub(crate) const GENERATED_PASSWORD: &str = "GeneratedPassword0123456789abcde";
/// The admin key the fake provisioner generates.
pub(crate) const GENERATED_KEY: &str =
    "agk_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

/// The database, in memory: answers like `PgProvisioner` and records what it was asked.
#[derive(Debug, Default)]
pub(crate) struct FakeProvisioner {
    /// `ensure <name> suspended=<bool>` and `remove <name> <onDelete>`, in order.
    pub calls: Mutex<Vec<String>>,
    /// Fail every call (an unreachable database).
    pub fail: bool,
    pub ids: Mutex<HashMap<String, Uuid>>,
}

impl FakeProvisioner {
    pub(crate) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Provisioner for FakeProvisioner {
    fn ensure<'a>(
        &'a self,
        tenant: &'a TenantRecord,
        existing: &'a ExistingCredentials,
    ) -> BoxFuture<'a, Result<Provisioned, DatabaseError>> {
        async move {
            self.calls.lock().unwrap().push(format!(
                "ensure {} suspended={}",
                tenant.name, tenant.suspended
            ));
            if self.fail {
                return Err(DatabaseError::Sql(sqlx::Error::PoolTimedOut));
            }
            let role = RoleName::for_tenant(&tenant.name)?;
            let tenant_id = *self
                .ids
                .lock()
                .unwrap()
                .entry(tenant.name.clone())
                .or_insert(Uuid::from_u128(0x42));
            Ok(Provisioned {
                tenant_id,
                role: role.as_str().to_owned(),
                password: existing
                    .password
                    .clone()
                    .unwrap_or_else(|| GENERATED_PASSWORD.to_owned()),
                admin_api_key: existing
                    .admin_api_key
                    .clone()
                    .unwrap_or_else(|| GENERATED_KEY.to_owned()),
                password_rotated: existing.password.is_none(),
                admin_key_created: existing.admin_api_key.is_none(),
            })
        }
        .boxed()
    }

    fn remove<'a>(
        &'a self,
        tenant: &'a str,
        on_delete: OnDelete,
    ) -> BoxFuture<'a, Result<(), DatabaseError>> {
        async move {
            self.calls
                .lock()
                .unwrap()
                .push(format!("remove {tenant} {on_delete:?}"));
            if self.fail {
                return Err(DatabaseError::Sql(sqlx::Error::PoolTimedOut));
            }
            Ok(())
        }
        .boxed()
    }
}

/// A controller context on a mocked API server, with a fixed clock.
pub(crate) fn context(
    settings: Settings,
    provisioner: Arc<FakeProvisioner>,
    now: Time,
) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let reporter = Reporter {
        controller: "agentry-operator".to_owned(),
        instance: None,
    };
    let ctx = Context::new(
        client,
        settings,
        provisioner,
        Arc::new(Metrics::new()),
        reporter,
    )
    .with_clock(Arc::new(move || now.clone()));
    (Arc::new(ctx), handle)
}

/// One request the controller made.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Call {
    async fn read(request: Request<Body>) -> Self {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Self {
            method,
            path,
            query,
            content_type,
            body,
        }
    }

    /// Whether this is a server-side apply by the operator's field manager.
    pub(crate) fn is_apply(&self) -> bool {
        self.method == "PATCH" && self.content_type == "application/apply-patch+yaml"
    }
}

/// What the mocked API server answers.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// 200 with the request body laid over `base`, then `extra` laid over that.
    Echo { base: Value, extra: Value },
    /// A fixed answer.
    Json(u16, Value),
}

impl Reply {
    pub(crate) fn echo() -> Self {
        Self::Echo {
            base: json!({}),
            extra: json!({}),
        }
    }

    pub(crate) fn status(code: u16, reason: &str) -> Self {
        Self::Json(
            code,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{} from the test API server", reason.to_lowercase()),
                "reason": reason, "code": code,
            }),
        )
    }

    fn render(&self, call: &Call) -> Response<Body> {
        let (code, value) = match self {
            Self::Json(code, value) => (*code, value.clone()),
            Self::Echo { base, extra } => {
                let mut out = base.clone();
                overlay(&mut out, &call.body);
                overlay(&mut out, extra);
                if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.entry("resourceVersion").or_insert(json!("1"));
                }
                (200, out)
            }
        };
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&value).unwrap()))
            .unwrap()
    }
}

fn overlay(target: &mut Value, top: &Value) {
    if let (Some(t), Some(o)) = (target.as_object_mut(), top.as_object()) {
        for (k, v) in o {
            t.insert(k.clone(), v.clone());
        }
    } else if !top.is_null() {
        *target = top.clone();
    }
}

/// One expected call.
#[derive(Debug, Clone)]
pub(crate) struct Expect {
    pub method: &'static str,
    pub path: String,
    /// A server-side apply by the operator (field manager, force, content type).
    pub apply: bool,
    /// `path` is a prefix (for names the client generates).
    pub prefix: bool,
    pub reply: Reply,
}

impl Expect {
    pub(crate) fn reply(mut self, reply: Reply) -> Self {
        self.reply = reply;
        self
    }
}

pub(crate) fn apply(path: impl Into<String>) -> Expect {
    Expect {
        method: "PATCH",
        path: path.into(),
        apply: true,
        prefix: false,
        reply: Reply::echo(),
    }
}

pub(crate) fn get(path: impl Into<String>, reply: Reply) -> Expect {
    Expect {
        method: "GET",
        path: path.into(),
        apply: false,
        prefix: false,
        reply,
    }
}

pub(crate) fn delete(path: impl Into<String>, reply: Reply) -> Expect {
    Expect {
        method: "DELETE",
        path: path.into(),
        apply: false,
        prefix: false,
        reply,
    }
}

pub(crate) fn patch(path: impl Into<String>, reply: Reply) -> Expect {
    Expect {
        method: "PATCH",
        path: path.into(),
        apply: false,
        prefix: false,
        reply,
    }
}

/// The Recorder's Event (a new one is created; repeats within minutes become a series).
pub(crate) fn event() -> Expect {
    Expect {
        method: "POST",
        path: "/apis/events.k8s.io/v1/namespaces/default/events".to_owned(),
        apply: false,
        prefix: false,
        reply: Reply::echo(),
    }
}

/// An Event about an object in the tenant namespace (a Tool).
pub(crate) fn namespaced_event() -> Expect {
    Expect {
        method: "POST",
        path: "/apis/events.k8s.io/v1/namespaces/tenant-acme/events".to_owned(),
        apply: false,
        prefix: false,
        reply: Reply::echo(),
    }
}

/// A repeated Event: the Recorder patches the first one into a series.
pub(crate) fn event_series() -> Expect {
    Expect {
        method: "PATCH",
        path: "/apis/events.k8s.io/v1/namespaces/default/events/".to_owned(),
        apply: false,
        prefix: true,
        reply: Reply::echo(),
    }
}

pub(crate) fn list(path: impl Into<String>, kind: &str, items: Vec<Value>) -> Expect {
    get(
        path,
        Reply::Json(
            200,
            json!({
                "apiVersion": "agentry.dev/v1alpha1", "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": "1"}, "items": items,
            }),
        ),
    )
}

/// Serves `scenario` in order and returns the calls; panics on a wrong, missing or extra call.
pub(crate) async fn serve(mut handle: Handle, scenario: Vec<Expect>) -> Vec<Call> {
    let mut calls = Vec::new();
    for (i, expect) in scenario.into_iter().enumerate() {
        let next = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
        let (request, respond) = match next {
            Ok(Some(pair)) => pair,
            Ok(None) => panic!(
                "the controller stopped before call {i}: {} {}",
                expect.method, expect.path
            ),
            Err(_) => panic!(
                "timed out waiting for call {i}: {} {} (the controller never made it)",
                expect.method, expect.path
            ),
        };
        let call = Call::read(request).await;
        let path_matches = if expect.prefix {
            call.path.starts_with(&expect.path)
        } else {
            call.path == expect.path
        };
        assert!(
            call.method == expect.method && path_matches,
            "call {i}: expected {} {}, got {} {}",
            expect.method,
            expect.path,
            call.method,
            call.path
        );
        if expect.apply {
            assert!(
                call.is_apply(),
                "call {i} {} is not an apply: {call:?}",
                call.path
            );
            assert!(
                call.query.contains("fieldManager=agentry-operator"),
                "call {i} {}: field manager missing from {:?}",
                call.path,
                call.query
            );
            assert!(
                call.query.contains("force=true"),
                "call {i}: {:?}",
                call.query
            );
        }
        respond.send_response(expect.reply.render(&call));
        calls.push(call);
    }
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await
    {
        panic!("unexpected call {} {}", request.method(), request.uri());
    }
    calls
}

/// Runs `reconcile` against `scenario`; a verifier panic is shown before the result.
pub(crate) async fn run_scenario<F, T>(
    handle: Handle,
    scenario: Vec<Expect>,
    reconcile: F,
) -> (T, Vec<Call>)
where
    F: std::future::Future<Output = T>,
{
    let verifier = tokio::spawn(serve(handle, scenario));
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile)
        .await
        .expect("reconcile hung: it waits for an answer the scenario does not give");
    let calls = match verifier.await {
        Ok(calls) => calls,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    (result, calls)
}
