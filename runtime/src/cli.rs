//! Command-line arguments; every flag can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The Agentry runtime.
#[derive(Parser, Debug)]
#[command(name = "agentry-runtime", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve one tenant (cluster mode): its bundle file, its database role, NATS.
    Serve(ServeArgs),
    /// Serve every tenant found in a folder of YAML (local development).
    Dev(DevArgs),
    /// Apply database migrations (run as the schema owner).
    Migrate(MigrateArgs),
}

impl Command {
    /// The options of a subcommand that serves (`serve`, `dev`).
    pub fn common(&self) -> Option<&CommonArgs> {
        match self {
            Command::Serve(args) => Some(&args.common),
            Command::Dev(args) => Some(&args.common),
            Command::Migrate(_) => None,
        }
    }
}

/// Options shared by `serve` and `dev`.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Address to listen on.
    #[arg(long, env = "AGENTRY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// NATS server URL (JetStream enabled).
    #[arg(
        long,
        env = "AGENTRY_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Most database connections in the pool.
    #[arg(long, env = "AGENTRY_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Log JSON lines instead of text.
    #[arg(long, env = "AGENTRY_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Seconds to wait for in-flight requests on shutdown.
    #[arg(long, env = "AGENTRY_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
    /// Timeout of one non-streaming request, in seconds.
    #[arg(long, env = "AGENTRY_REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
    pub request_timeout_seconds: u64,
    /// Seconds between WebSocket heartbeat pings (`/ws/chat`).
    #[arg(long, env = "AGENTRY_WS_HEARTBEAT_SECONDS", default_value_t = 20)]
    pub ws_heartbeat_seconds: u64,
    /// Seconds without any frame from a WebSocket client (pongs included) before it is closed.
    #[arg(long, env = "AGENTRY_WS_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub ws_idle_timeout_seconds: u64,
    /// Most API requests in progress at once; past it a request is answered 503 `overloaded`
    /// at once instead of queueing (0: no cap). See docs/limits.md.
    #[arg(long, env = "AGENTRY_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Serve connections from a thread of their own, which hands admitted requests to the
    /// worker threads: refusals stay fast when the worker threads are saturated, for a
    /// hand-off per admitted request. See docs/limits.md.
    #[arg(long, env = "AGENTRY_HTTP_FRONT_THREAD", default_value_t = false)]
    pub http_front_thread: bool,
    /// With `--http-front-thread`: how many nice levels below the front thread the worker
    /// threads run, so that the kernel runs the front thread first when both are ready (0-19;
    /// 0 leaves them equal). See docs/limits.md.
    #[arg(long, env = "AGENTRY_WORKER_NICE", default_value_t = 5,
          value_parser = clap::value_parser!(u8).range(0..=19))]
    pub worker_nice: u8,
    /// Write usage records and relay events from a thread of their own, `--background-nice`
    /// levels below the threads that serve requests, with a database pool of its own (on by
    /// default; `--background-thread=false` runs that work as tasks among the requests). See
    /// docs/limits.md, "The background thread".
    #[arg(long, env = "AGENTRY_BACKGROUND_THREAD", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub background_thread: bool,
    /// How many nice levels below the request path the background thread runs (0-19; the
    /// kernel stops at 19, the lowest priority).
    #[arg(long, env = "AGENTRY_BACKGROUND_NICE", default_value_t = 19,
          value_parser = clap::value_parser!(u8).range(0..=19))]
    pub background_nice: u8,
    /// Largest request body in bytes.
    #[arg(long, env = "AGENTRY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Replicas sharing the tenant's rate limits; each replica enforces its share.
    #[arg(long, env = "AGENTRY_RATE_LIMIT_SHARDS", default_value_t = 1)]
    pub rate_limit_shards: u32,
    /// Name of this replica (budget leases, logs). Defaults to the host name.
    #[arg(long, env = "AGENTRY_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Longest a usage record waits in memory before it is written, in milliseconds: the
    /// most usage a crash can lose (docs/limits.md).
    #[arg(long, env = "AGENTRY_USAGE_FLUSH_MS", default_value_t = 50)]
    pub usage_flush_ms: u64,
    /// Most usage records queued for writing; past it, requests wait for room.
    #[arg(long, env = "AGENTRY_USAGE_QUEUE", default_value_t = 8192)]
    pub usage_queue: usize,
    /// Workflow runs this replica drives at once.
    #[arg(long, env = "AGENTRY_WORKFLOW_CONCURRENCY", default_value_t = 16)]
    pub workflow_concurrency: usize,
    /// Seconds a workflow run stays leased to a replica that stopped renewing it (a crashed
    /// replica's runs continue elsewhere after this).
    #[arg(long, env = "AGENTRY_WORKFLOW_LEASE_SECONDS", default_value_t = 15)]
    pub workflow_lease_seconds: u64,
}

impl CommonArgs {
    /// Tuning of the usage writer.
    pub fn usage_config(&self) -> crate::billing::UsageConfig {
        crate::billing::UsageConfig {
            flush_interval: std::time::Duration::from_millis(self.usage_flush_ms.max(1)),
            queue: self.usage_queue.max(1),
            ..crate::billing::UsageConfig::default()
        }
    }
}

/// `serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The tenant's compiled bundle (a mounted ConfigMap); reloaded when it changes.
    #[arg(
        long,
        env = "AGENTRY_BUNDLE",
        default_value = "/etc/agentry/bundle/bundle.json"
    )]
    pub bundle: PathBuf,
    /// Database URL with the tenant's login role.
    #[arg(long, env = "AGENTRY_DATABASE_URL")]
    pub database_url: String,
}

/// `dev`.
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Folder of YAML resources (Tenants and their objects); recompiled when it changes.
    #[arg(long, env = "AGENTRY_MANIFESTS", default_value = "manifests/examples")]
    pub manifests: PathBuf,
    /// Database URL of an administrator (superuser or schema owner): dev mode migrates, creates
    /// its shared role and the example tenants, then serves as the shared role.
    #[arg(
        long,
        env = "AGENTRY_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/agentry_dev"
    )]
    pub database_url: String,
    /// Folder for local state: the shared role's password and the tenants' admin keys.
    #[arg(long, env = "AGENTRY_STATE_DIR", default_value = ".dev")]
    pub state_dir: PathBuf,
    /// Name of the shared database role dev mode creates and serves as.
    #[arg(long, env = "AGENTRY_DEV_ROLE", default_value = "agentry_dev")]
    pub dev_role: String,
}

/// `migrate`.
#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Database URL of the schema owner.
    #[arg(long, env = "AGENTRY_DATABASE_URL")]
    pub database_url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `args` with `AGENTRY_BACKGROUND_THREAD` ignored, so that the default is what is
    /// tested whatever the environment says.
    fn background_thread(args: &[&str]) -> bool {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let command = Cli::command().mut_subcommand("dev", |dev| {
            dev.mut_arg("background_thread", |arg| arg.env(None))
        });
        let matches = command.try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        cli.command.common().unwrap().background_thread
    }

    #[test]
    fn the_background_thread_is_on_unless_turned_off() {
        assert!(background_thread(&["agentry-runtime", "dev"]));
        assert!(background_thread(&[
            "agentry-runtime",
            "dev",
            "--background-thread"
        ]));
        assert!(!background_thread(&[
            "agentry-runtime",
            "dev",
            "--background-thread=false"
        ]));
        assert!(!background_thread(&[
            "agentry-runtime",
            "dev",
            "--background-thread",
            "false"
        ]));
        assert!(
            Cli::try_parse_from(["agentry-runtime", "dev", "--background-thread=maybe"]).is_err()
        );
    }
}
