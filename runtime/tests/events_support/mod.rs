//! Shared by the outbox and audit tests: a throwaway database with application roles and
//! tenants, JetStream helpers, and a TCP proxy that can cut NATS off from the relay.
//!
//! Everything global gets a unique name (database, roles, tenants, streams, subjects), so that
//! concurrent test runs on the same PostgreSQL and NATS never see each other.

#![allow(
    dead_code,
    reason = "each test crate uses a different part of this module"
)]
#![allow(
    clippy::expect_used,
    reason = "test support: a failed setup step fails the test with its message"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agentry_crds::RuntimeBundle;
use agentry_runtime::bundles::TenantRegistry;
use agentry_runtime::db::{Db, MIGRATOR};
use agentry_runtime::events::{self, Envelope, NewEvent};
use agentry_runtime::tenancy::TenantId;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use parking_lot::Mutex;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// PostgreSQL server to create test databases on (a superuser).
pub fn admin_url() -> String {
    std::env::var("AGENTRY_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// NATS server with JetStream.
pub fn nats_url() -> String {
    std::env::var("AGENTRY_TEST_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned())
}

/// A short random lowercase hex string.
pub fn unique() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Runs `work` to completion on a runtime of its own, from synchronous code such as `Drop`
/// (also while a failed test unwinds).
fn run_detached<F: Future<Output = ()> + Send + 'static>(work: F) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    })
    .join();
}

/// A database of its own, migrated, with the roles a test created; the database and the
/// roles are dropped when this is dropped, even by a failing test.
pub struct TestDb {
    /// Superuser pool on the test database (bypasses RLS: for setup and inspection only).
    pub admin: PgPool,
    name: String,
    server: PgConnectOptions,
    roles: Vec<String>,
    apps: Vec<Db>,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> Self {
        let server = PgConnectOptions::from_str(&admin_url()).expect("database URL");
        let name = format!("agentry_evtest_{}", unique());
        let mut conn = server.connect().await.expect("connect to PostgreSQL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        conn.close().await.ok();
        let admin = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(server.clone().database(&name))
            .await
            .expect("connect to the test database");
        MIGRATOR.run(&admin).await.expect("migrate");
        Self {
            admin,
            name,
            server,
            roles: Vec::new(),
            apps: Vec::new(),
        }
    }

    /// Adds a tenant row; returns its id.
    pub async fn tenant(&self, name: &str) -> TenantId {
        let id = Uuid::new_v4();
        sqlx::query("insert into agentry.tenants (id, name) values ($1, $2)")
            .bind(id)
            .bind(name)
            .execute(&self.admin)
            .await
            .expect("insert tenant");
        TenantId(id)
    }

    /// Connects as a new application role: a tenant role for `tenant`, or a shared role (dev
    /// mode) for `None`.
    pub async fn app(&mut self, tenant: Option<TenantId>) -> Db {
        let role = format!("agentry_evtest_{}", unique());
        let password = unique();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "create role {role} login password '{password}'; grant agentry_app to {role}"
        )))
        .execute(&self.admin)
        .await
        .expect("create role");
        self.roles.push(role.clone());
        sqlx::query(
            "insert into agentry.tenant_roles (role_name, tenant_id, shared) values ($1, $2, $3)",
        )
        .bind(&role)
        .bind(tenant.map(|t| t.0))
        .bind(tenant.is_none())
        .execute(&self.admin)
        .await
        .expect("map role");
        let options = self
            .server
            .clone()
            .database(&self.name)
            .username(&role)
            .password(&password);
        let db = Db::connect_with(options, 8)
            .await
            .expect("connect as the app role");
        self.apps.push(db.clone());
        db
    }

    /// Rows left in the outbox of every tenant.
    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("select count(*) from agentry.event_outbox")
            .fetch_one(&self.admin)
            .await
            .expect("count outbox")
    }

    /// Closes the pools, then drops the database and the roles.
    pub async fn cleanup(self) {
        for db in &self.apps {
            db.pool().close().await;
        }
        self.admin.close().await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name, roles) = (
            self.server.clone(),
            self.name.clone(),
            std::mem::take(&mut self.roles),
        );
        run_detached(async move {
            let Ok(mut conn) = server.connect().await else {
                return;
            };
            // `force` ends the sessions of a test that failed with its pools open.
            let drop_db = format!("drop database if exists {name} with (force)");
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(drop_db))
                .execute(&mut conn)
                .await
            {
                eprintln!("dropping test database {name}: {e}");
            }
            for role in roles {
                let drop_role = format!("drop role if exists {role}");
                if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(drop_role))
                    .execute(&mut conn)
                    .await
                {
                    eprintln!("dropping test role {role}: {e}");
                }
            }
            conn.close().await.ok();
        });
    }
}

/// A minimal bundle for tenant `name`.
pub fn bundle(name: &str) -> RuntimeBundle {
    serde_json::from_value(json!({
        "schemaVersion": 1,
        "hash": format!("test-{name}"),
        "tenant": {
            "name": name,
            "namespace": format!("tenant-{name}"),
            "suspended": false,
            "onDelete": "Retain",
            "limits": {"budgetAction": "Block"},
            "providers": {},
            "models": {},
            "auth": {"apiKeys": true},
            "egressAllowlist": []
        },
        "agents": {},
        "tools": {},
        "workflows": {},
        "flags": {}
    }))
    .expect("bundle")
}

/// A registry serving `tenants`.
pub fn registry(tenants: &[(TenantId, &str)]) -> Arc<TenantRegistry> {
    let registry = Arc::new(TenantRegistry::new("test"));
    for (id, name) in tenants {
        registry.install(*id, bundle(name));
    }
    registry
}

/// Emits `count` events of `type_` for `tenant` in one transaction, committed or rolled back;
/// returns their ids.
pub async fn emit_batch(
    db: &Db,
    tenant: TenantId,
    type_: &'static str,
    count: usize,
    commit: bool,
) -> Vec<Uuid> {
    let mut tx = db.begin(tenant).await.expect("begin");
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let event = NewEvent::new(type_, json!({"n": i}))
            .subject(format!("thing-{i}"))
            .actor("system");
        ids.push(events::emit(&mut tx, tenant, event).await.expect("emit"));
    }
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
    ids
}

/// A stream and subject prefix of a test's own; the stream is deleted when this is dropped.
pub struct TestStream {
    /// Stream name.
    pub name: String,
    /// First subject token.
    pub prefix: String,
}

impl TestStream {
    /// Unique names.
    pub fn unique() -> Self {
        let id = unique();
        Self {
            name: format!("AGENTRY_EVTEST_{}", id.to_uppercase()),
            prefix: format!("agentryevtest{id}"),
        }
    }

    /// Relay configuration for this stream, with `batch_size`.
    pub fn relay_config(&self, batch_size: u32) -> events::RelayConfig {
        events::RelayConfig {
            stream: self.name.clone(),
            subject_prefix: self.prefix.clone(),
            batch_size,
            poll_interval: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            metrics_interval: Duration::from_millis(100),
            ..events::RelayConfig::default()
        }
    }

    /// Messages stored, 0 when the stream does not exist yet.
    pub async fn stored(&self, js: &jetstream::Context) -> u64 {
        match js.get_stream(&self.name).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        run_detached(async move {
            if let Ok(client) = async_nats::connect(nats_url()).await {
                jetstream::new(client).delete_stream(&name).await.ok();
            }
        });
    }
}

/// A message read back from the stream.
#[derive(Debug)]
pub struct Received {
    /// Subject.
    pub subject: String,
    /// `Nats-Msg-Id`.
    pub msg_id: String,
    /// Every header, names lowercased.
    pub headers: BTreeMap<String, String>,
    /// Decoded body.
    pub envelope: Envelope,
    /// Raw NATS headers.
    pub raw_headers: Option<async_nats::HeaderMap>,
}

/// Connects to NATS directly (not through a proxy).
pub async fn jetstream() -> jetstream::Context {
    let client = async_nats::connect(nats_url())
        .await
        .expect("connect to NATS");
    jetstream::new(client)
}

/// Every message of the stream, in stream order, read with an ephemeral pull consumer the
/// way an event consumer would.
pub async fn read_stream(js: &jetstream::Context, stream: &str) -> Vec<Received> {
    let mut stream = js.get_stream(stream).await.expect("stream");
    let total = stream.info().await.expect("stream info").state.messages as usize;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut out = Vec::with_capacity(total);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reading the stream timed out"
        );
        let mut batch = consumer
            .fetch()
            .max_messages(total - out.len())
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = batch.next().await {
            let message = message.expect("message");
            let headers: BTreeMap<String, String> = message
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .filter_map(|(k, v)| {
                    Some((k.to_string().to_ascii_lowercase(), v.first()?.to_string()))
                })
                .collect();
            out.push(Received {
                subject: message.subject.to_string(),
                msg_id: headers.get("nats-msg-id").cloned().unwrap_or_default(),
                envelope: serde_json::from_slice(&message.payload).expect("envelope"),
                headers,
                raw_headers: message.headers.clone(),
            });
        }
    }
    out
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of NATS that a test can cut (drop every connection and refuse new
/// ones) and restore on the same address.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    upstream: String,
    run: Mutex<Option<(JoinHandle<()>, CancellationToken)>>,
    publishes: AtomicUsize,
    cut_after: AtomicUsize,
    cut: AtomicBool,
}

impl Proxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: String) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = Arc::new(Self {
            addr: listener.local_addr().expect("proxy address"),
            upstream,
            run: Mutex::new(None),
            publishes: AtomicUsize::new(0),
            cut_after: AtomicUsize::new(usize::MAX),
            cut: AtomicBool::new(false),
        });
        proxy.serve(listener);
        proxy
    }

    /// Cuts the connection right after forwarding the chunk that holds the `n`th JetStream
    /// publish (`HPUB`) from the client: the server stores those messages, their acks are lost.
    pub fn cut_after_publishes(&self, n: usize) {
        self.cut_after.store(n, Ordering::SeqCst);
    }

    /// Whether the proxy is cut now.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Publishes forwarded so far.
    pub fn publishes(&self) -> usize {
        self.publishes.load(Ordering::SeqCst)
    }

    /// Drops every connection and stops accepting.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Some((accept, conns)) = self.run.lock().take() {
            accept.abort();
            conns.cancel();
        }
    }

    /// Accepts again on the same address.
    pub async fn restore(self: &Arc<Self>) {
        self.cut_after.store(usize::MAX, Ordering::SeqCst);
        let listener = TcpListener::bind(self.addr).await.expect("rebind proxy");
        self.cut.store(false, Ordering::SeqCst);
        self.serve(listener);
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let conns = CancellationToken::new();
        let proxy = self.clone();
        let token = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&proxy.upstream).await else {
                    continue;
                };
                tokio::spawn(proxy.clone().pipe(client, server, token.clone()));
            }
        });
        *self.run.lock() = Some((accept, conns));
    }

    async fn pipe(self: Arc<Self>, client: TcpStream, server: TcpStream, stop: CancellationToken) {
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let up = async {
            let mut buf = vec![0_u8; 64 * 1024];
            loop {
                let n = client_read.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                let chunk = &buf[..n];
                let hpubs = chunk.windows(5).filter(|w| *w == b"HPUB ").count();
                if server_write.write_all(chunk).await.is_err() {
                    return;
                }
                let total = self.publishes.fetch_add(hpubs, Ordering::SeqCst) + hpubs;
                if hpubs > 0 && total >= self.cut_after.load(Ordering::SeqCst) {
                    let _ = server_write.flush().await;
                    self.cut();
                    return;
                }
            }
        };
        let down = async {
            let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        };
        tokio::select! {
            () = stop.cancelled() => {}
            () = up => {}
            () = down => {}
        }
    }
}
