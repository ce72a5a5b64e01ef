//! End-to-end harness: starts the real `agentry-runtime` binary against the local PostgreSQL
//! and NATS, each run with its own database, dev role and state folder so that runs never
//! interfere with each other or with a developer's `make dev`.

pub mod mock_llm;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sqlx::Connection as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// Administrator URL of the local PostgreSQL (override with `AGENTRY_E2E_POSTGRES`).
pub fn postgres_admin_url() -> String {
    std::env::var("AGENTRY_E2E_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of a workspace binary built next to the running test executable.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no parent")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not built: run `cargo build -p agentry-runtime` (cargo test --workspace builds it)",
            path.display()
        );
    }
    Ok(path)
}

/// A running `agentry-runtime dev`.
#[derive(Debug)]
pub struct DevRuntime {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Admin API key of each tenant.
    pub keys: BTreeMap<String, String>,
    /// Folder of YAML it serves.
    pub manifests: PathBuf,
    database: String,
    role: String,
    state: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Lines the process printed (stdout), for diagnostics.
    pub output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl DevRuntime {
    /// Starts dev mode over `manifests` with a fresh database and role.
    pub async fn start(manifests: &Path) -> anyhow::Result<Self> {
        Self::start_with_env(manifests, &[]).await
    }

    /// Like [`Self::start`], with extra environment variables for the process (settings such
    /// as `AGENTRY_LLM_BREAKER_OPEN_MS`), kept for every later [`Self::launch`].
    pub async fn start_with_env(manifests: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let mut runtime = Self {
            child: None,
            base_url: String::new(),
            keys: BTreeMap::new(),
            manifests: manifests.to_path_buf(),
            database: format!("agentry_e2e_{}", &suffix[..12]),
            role: format!("agentry_e2e_{}", &suffix[..12]),
            state: tempfile::tempdir()?,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            output: Default::default(),
        };
        runtime.launch().await?;
        Ok(runtime)
    }

    /// Starts the process (again) on the same database and state.
    pub async fn launch(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(binary("agentry-runtime")?)
            .arg("dev")
            .arg("--manifests")
            .arg(&self.manifests)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-json",
                "--shutdown-grace-seconds",
                "5",
            ])
            .env(
                "AGENTRY_DATABASE_URL",
                format!("{}/{}", postgres_admin_url(), self.database),
            )
            .env("AGENTRY_DEV_ROLE", &self.role)
            .env("AGENTRY_STATE_DIR", self.state.path())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting agentry-runtime dev")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let output = self.output.clone();
        let address = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                output.lock().map(|mut o| o.push(line.clone())).ok();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v.pointer("/fields/message").and_then(|m| m.as_str()) == Some("serving")
                    && let Some(a) = v.pointer("/fields/address").and_then(|a| a.as_str())
                {
                    return Ok::<_, anyhow::Error>(a.to_owned());
                }
            }
            bail!("agentry-runtime exited before serving")
        })
        .await
        .context("agentry-runtime did not start within 60 s")??;
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                output.lock().map(|mut o| o.push(line)).ok();
            }
        });
        self.base_url = format!("http://{address}");
        let keys: BTreeMap<String, serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(self.state.path().join("keys.json"))?,
        )?;
        self.keys = keys
            .into_iter()
            .filter_map(|(k, v)| {
                v.get("key")
                    .and_then(|k| k.as_str())
                    .map(|key| (k, key.to_owned()))
            })
            .collect();
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(r) = client.get(format!("{}/readyz", self.base_url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{} never became ready", self.base_url)
    }

    /// Whether the process printed a line containing `needle` (its JSON logs included).
    pub fn printed(&self, needle: &str) -> bool {
        self.output
            .lock()
            .map(|lines| lines.iter().any(|l| l.contains(needle)))
            .unwrap_or(false)
    }

    /// The admin key of `tenant`.
    pub fn key(&self, tenant: &str) -> &str {
        self.keys.get(tenant).map_or("", String::as_str)
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("not running")
        };
        if let Some(pid) = child.id() {
            Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await?;
        }
        Ok(tokio::time::timeout(Duration::from_secs(30), child.wait()).await??)
    }

    /// Kills the process with SIGKILL (a crash).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Stops the process and drops its database and role.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        let _ = self.kill().await;
        let mut conn =
            sqlx::PgConnection::connect(&format!("{}/postgres", postgres_admin_url())).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "drop database if exists {} with (force)",
            self.database
        )))
        .execute(&mut conn)
        .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "drop role if exists {}",
            self.role
        )))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// Copies the example manifests into a fresh folder the test may edit.
pub fn copy_examples() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(repo_root().join("manifests/examples"))? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, dir.path().join(name))?;
        }
    }
    Ok(dir)
}

/// Serves `router` on a free loopback port: a service for the runtime's tools to call.
pub async fn serve_loopback(router: axum::Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// Whether `response` is a server-sent event stream (its content type says so).
pub fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// The frames of a server-sent event stream that have both an event name and data, as
/// (name, data parsed as JSON).
pub fn sse_events(body: &str) -> anyhow::Result<Vec<(&str, serde_json::Value)>> {
    let mut events = Vec::new();
    for frame in body.split("\n\n") {
        let name = frame.lines().find_map(|l| l.strip_prefix("event: "));
        let data = frame.lines().find_map(|l| l.strip_prefix("data: "));
        if let (Some(name), Some(data)) = (name, data) {
            let data = serde_json::from_str(data)
                .with_context(|| format!("event {name}: data is not JSON: {data}"))?;
            events.push((name, data));
        }
    }
    Ok(events)
}
