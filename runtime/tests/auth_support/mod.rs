//! Test harness for authentication: a fresh database with the example tenants, login roles
//! per tenant (and a shared dev role), the real application over them, and token helpers.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: a failed setup step fails the test"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use agentry_crds::RuntimeBundle;
use agentry_crds::bundle::JwtConfig;
use agentry_crds::tenant::JwtAlgorithm;
use agentry_runtime::billing::Budgets;
use agentry_runtime::bundles::{TenantRegistry, compile_folder};
use agentry_runtime::db::Db;
use agentry_runtime::gateway::apikeys;
use agentry_runtime::gateway::auth::Authenticator;
use agentry_runtime::gateway::limits::Limiter;
use agentry_runtime::http::{HttpConfig, app};
use agentry_runtime::metrics::Metrics;
use agentry_runtime::state::{AppState, Shared};
use agentry_runtime::tenancy::TenantId;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use uuid::Uuid;

/// Signing key of the test issuer (kid `k1`).
pub const ISSUER_PEM: &str = include_str!("keys/rsa_issuer.pem");
/// Its public key, which an attacker would use as an HMAC secret.
pub const ISSUER_PUB_PEM: &str = include_str!("keys/rsa_issuer_pub.pem");
/// A key the issuer never published.
pub const OTHER_PEM: &str = include_str!("keys/rsa_other.pem");
/// Issuer of the test tokens.
pub const ISSUER: &str = "https://auth.acme.example";
/// Audience of the test tokens.
pub const AUDIENCE: &str = "agentry";

/// A test database with the example tenants and the roles made for this test.
pub struct Harness {
    /// The superuser pool of the test database (never used by the application).
    pub admin: PgPool,
    /// Compiled example bundles by tenant name.
    pub bundles: BTreeMap<String, RuntimeBundle>,
    /// Tenant ids by name.
    pub ids: BTreeMap<String, TenantId>,
    roles: Vec<String>,
    pools: Vec<Db>,
}

impl Harness {
    /// Compiles `manifests/examples`, creates a row per tenant, and trusts the test issuer
    /// (inline JWKS) in acme's bundle.
    pub async fn new(admin: PgPool) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
        let compiled = compile_folder(&examples).unwrap();
        let mut bundles = BTreeMap::new();
        let mut ids = BTreeMap::new();
        for (bundle, _diagnostics) in compiled.tenants {
            let id = Uuid::new_v4();
            sqlx::query("insert into agentry.tenants (id, name) values ($1, $2)")
                .bind(id)
                .bind(&bundle.tenant.name)
                .execute(&admin)
                .await
                .unwrap();
            ids.insert(bundle.tenant.name.clone(), TenantId(id));
            bundles.insert(bundle.tenant.name.clone(), bundle);
        }
        assert!(bundles.contains_key("acme") && bundles.contains_key("globex"));
        let mut harness = Self {
            admin,
            bundles,
            ids,
            roles: Vec::new(),
            pools: Vec::new(),
        };
        harness.set_jwt("acme", Some(inline_jwt_config()));
        harness
    }

    /// Replaces a tenant's JWT trust and rehashes its bundle.
    pub fn set_jwt(&mut self, tenant: &str, jwt: Option<JwtConfig>) {
        let bundle = self.bundles.get_mut(tenant).unwrap();
        bundle.tenant.auth.jwt = jwt;
        bundle.hash = bundle.content_hash();
    }

    /// The id of tenant `name`.
    pub fn id(&self, name: &str) -> TenantId {
        self.ids[name]
    }

    /// A connection pool as a new login role of tenant `name`, as the operator would make it.
    pub async fn tenant_db(&mut self, name: &str) -> Db {
        let tenant = self.id(name);
        self.role_db(Some(tenant)).await
    }

    /// A connection pool as a new shared (dev mode) role.
    pub async fn shared_db(&mut self) -> Db {
        self.role_db(None).await
    }

    async fn role_db(&mut self, tenant: Option<TenantId>) -> Db {
        let role = format!("agentry_t_{}", Uuid::new_v4().simple());
        let password = apikeys::generate().key_id;
        self.roles.push(role.clone());
        // Both are generated here (hex and base62), so quoting them literally is safe.
        for sql in [
            format!(
                "create role {role} login nosuperuser nobypassrls nocreatedb nocreaterole password '{password}'"
            ),
            format!("grant agentry_app to {role}"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&self.admin)
                .await
                .unwrap();
        }
        sqlx::query(
            "insert into agentry.tenant_roles (role_name, tenant_id, shared) values ($1, $2, $3)",
        )
        .bind(&role)
        .bind(tenant.map(|t| t.0))
        .bind(tenant.is_none())
        .execute(&self.admin)
        .await
        .unwrap();
        let options = (*self.admin.connect_options())
            .clone()
            .username(&role)
            .password(&password);
        let db = Db::connect_with(options, 4).await.unwrap();
        self.pools.push(db.clone());
        db
    }

    /// The application as one replica serving `tenants` through `db`.
    pub fn app(&self, db: Db, tenants: &[&str], dev_mode: bool) -> (Router, AppState) {
        let registry = Arc::new(TenantRegistry::new("test"));
        for name in tenants {
            registry.install(self.id(name), self.bundles[*name].clone());
        }
        let http = reqwest::Client::new();
        let state = AppState::new(Shared {
            auth: Authenticator::new(db.clone(), http.clone()),
            limiter: Limiter::new(1),
            budgets: Arc::new(Budgets::new(db.clone(), format!("test-{}", Uuid::new_v4()))),
            usage: agentry_runtime::billing::UsageWriter::spawn(db.clone(), Default::default()),
            metrics: Arc::new(Metrics::new()),
            llm: Arc::new(agentry_runtime::llm::LlmGateway::new(
                http.clone(),
                agentry_runtime::llm::LlmConfig::default(),
            )),
            tools: Arc::new(agentry_runtime::tools::ToolRuntime::new(
                agentry_runtime::tools::ToolSettings::default(),
                Arc::new(Metrics::new()),
            )),
            tool_secrets: Arc::new(agentry_runtime::tools::StaticSecrets::new()),
            nats: None,
            http,
            tenants: registry,
            db,
            shutdown: CancellationToken::new(),
            dev_mode,
            runs: Default::default(),
        });
        (app(state.clone(), HttpConfig::default()), state)
    }

    /// Stores a key for `tenant` directly (as the operator or dev bootstrap would) and
    /// returns its row id and plaintext.
    pub async fn insert_key(&self, tenant: &str, scopes: &[&str]) -> (Uuid, String) {
        let key = apikeys::generate();
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into agentry.api_keys (tenant_id, id, key_id, secret_hash, name, scopes)
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(self.id(tenant).0)
        .bind(id)
        .bind(&key.key_id)
        .bind(&key.secret_hash)
        .bind(format!("test {}", scopes.join(" ")))
        .bind(scopes)
        .execute(&self.admin)
        .await
        .unwrap();
        (id, key.plaintext)
    }

    /// Closes the pools and drops the roles this test created (roles are cluster-wide).
    /// A test that panics before calling this still drops them, in [`Drop`].
    pub async fn cleanup(mut self) {
        for db in &self.pools {
            db.pool().close().await;
        }
        let mut conn = self.admin.acquire().await.unwrap();
        drop_roles(&mut conn, &std::mem::take(&mut self.roles)).await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.roles.is_empty() {
            return;
        }
        // Unwinding from a failed assertion: no async context to rely on, so clean up on a
        // thread of its own with its own connection.
        let roles = std::mem::take(&mut self.roles);
        let options = (*self.admin.connect_options()).clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                use sqlx::Connection as _;
                if let Ok(mut conn) = sqlx::PgConnection::connect_with(&options).await {
                    drop_roles(&mut conn, &roles).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn drop_roles(conn: &mut sqlx::PgConnection, roles: &[String]) {
    for role in roles {
        let _ = sqlx::query(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = $1",
        )
        .bind(role)
        .execute(&mut *conn)
        .await;
        let _ = sqlx::query("delete from agentry.tenant_roles where role_name = $1")
            .bind(role)
            .execute(&mut *conn)
            .await;
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop role if exists {role}")))
            .execute(&mut *conn)
            .await
        {
            eprintln!("could not drop test role {role}: {e}");
        }
    }
}

/// The test issuer's key set: `k1` (RS256).
pub fn issuer_jwks() -> Value {
    let key = EncodingKey::from_rsa_pem(ISSUER_PEM.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    json!({ "keys": [jwk] })
}

/// Trust in the test issuer with its keys inline, RS256 pinned.
pub fn inline_jwt_config() -> JwtConfig {
    JwtConfig {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        jwks_url: None,
        jwks: Some(issuer_jwks().to_string()),
        algorithms: vec![JwtAlgorithm::RS256],
        user_claim: "sub".into(),
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a valid token for `sub`, valid for ten minutes.
pub fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 600})
}

/// Signs `claims` with an RSA key under `kid`.
pub fn sign_rs256(claims: &Value, kid: &str, pem: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A response: status and JSON body (`null` when empty).
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Body.
    pub body: Value,
}

impl Answer {
    /// Asserts the status and the `{"error":{"code","message"}}` shape, returning the message.
    pub fn error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.body);
        let obj = self.body.as_object().expect("error body is an object");
        assert_eq!(obj.len(), 1, "only `error` at the top: {}", self.body);
        let error = obj["error"].as_object().expect("`error` is an object");
        assert_eq!(error.len(), 2, "only code and message: {}", self.body);
        assert_eq!(error["code"], code, "{}", self.body);
        let message = error["message"].as_str().expect("message is a string");
        assert!(!message.is_empty());
        message.to_owned()
    }
}

/// Sends one request to `app`, with `body` as JSON.
pub async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    call_raw(app, method, uri, headers, body.map(|b| b.to_string())).await
}

/// Sends one request to `app`, with `body` as is (labelled JSON).
pub async fn call_raw(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body)),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    Answer { status, body }
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Serves `router` on a free loopback port.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Points the example order tools (`lookup-order`, `issue-refund`) of `bundle` at the order
/// service on `addr`, allowlisted the way a tenant allowlists an internal service. The caller
/// rehashes the bundle after its last change.
pub fn point_order_tools(bundle: &mut RuntimeBundle, addr: SocketAddr) {
    for (tool, path) in [
        ("lookup-order", "orders/{{ args.orderId }}"),
        ("issue-refund", "orders/{{ args.orderId }}/refunds"),
    ] {
        let t = bundle.tools.get_mut(tool).unwrap();
        let http = t.http.as_mut().unwrap();
        http.url = format!("http://{addr}/{path}");
        http.headers.clear();
        t.egress_allow_hosts = vec!["127.0.0.1".to_owned()];
    }
}
