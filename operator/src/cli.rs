//! Command-line arguments; every flag of `run` can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The Agentry operator.
#[derive(Parser, Debug)]
#[command(name = "agentry-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the five CustomResourceDefinitions as one YAML stream.
    Crd,
    /// Write every generated file: CRDs, the Helm chart's copy of them, and the API reference.
    Generate(GenerateArgs),
    /// Run the controllers (in a cluster, or against the current kubeconfig).
    Run(Box<RunArgs>),
}

/// Where `generate` writes.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Directory for one YAML file per CRD.
    #[arg(long, env = "AGENTRY_CRDS_DIR", default_value = "manifests/crds")]
    pub crds_dir: PathBuf,
    /// Further directories that keep a copy of the CRDs (the Helm chart's `crds/`).
    #[arg(long = "copy-to", env = "AGENTRY_CRDS_COPIES", value_delimiter = ',')]
    pub copies: Vec<PathBuf>,
    /// The generated API reference.
    #[arg(long, env = "AGENTRY_API_DOC", default_value = "docs/api.md")]
    pub api_doc: PathBuf,
}

/// Settings of `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Image of the tenant runtime (a Tenant's `spec.runtime.image` overrides it).
    #[arg(
        long,
        env = "AGENTRY_RUNTIME_IMAGE",
        default_value = concat!("ghcr.io/agentry-dev/agentry-runtime:", env!("CARGO_PKG_VERSION"))
    )]
    pub runtime_image: String,
    /// Pull policy of the runtime image.
    #[arg(
        long,
        env = "AGENTRY_RUNTIME_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub runtime_image_pull_policy: String,
    /// PostgreSQL URL of an administrator (superuser, or CREATEROLE + BYPASSRLS with admin
    /// option on `agentry_app`) that provisions tenant rows and roles. Keep it in a Secret.
    #[arg(long, env = "AGENTRY_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Host tenant runtimes connect to PostgreSQL at (default: the administrator URL's).
    #[arg(long, env = "AGENTRY_TENANT_DATABASE_HOST")]
    pub tenant_database_host: Option<String>,
    /// Port tenant runtimes connect to (default: the administrator URL's).
    #[arg(long, env = "AGENTRY_TENANT_DATABASE_PORT")]
    pub tenant_database_port: Option<String>,
    /// Database tenant runtimes use (default: the administrator URL's).
    #[arg(long, env = "AGENTRY_TENANT_DATABASE_NAME")]
    pub tenant_database_name: Option<String>,
    /// libpq `sslmode` of tenant runtimes (default: the administrator URL's).
    #[arg(long, env = "AGENTRY_TENANT_DATABASE_SSLMODE")]
    pub tenant_database_sslmode: Option<String>,
    /// Most connections of the operator's administrator pool.
    #[arg(long, env = "AGENTRY_DB_MAX_CONNECTIONS", default_value_t = 4)]
    pub db_max_connections: u32,
    /// NATS URL handed to tenant runtimes.
    #[arg(
        long,
        env = "AGENTRY_NATS_URL",
        default_value = "nats://nats.agentry-system.svc:4222"
    )]
    pub nats_url: String,
    /// Base domain of tenant Ingresses (`<tenant>.<base domain>`); no Ingress when unset.
    #[arg(long, env = "AGENTRY_BASE_DOMAIN")]
    pub base_domain: Option<String>,
    /// IngressClass of tenant Ingresses (the cluster default when unset).
    #[arg(long, env = "AGENTRY_INGRESS_CLASS")]
    pub ingress_class: Option<String>,
    /// Serve tenant Ingresses over TLS from the Secret `agentry-runtime-tls` (for example
    /// issued by cert-manager through an annotation).
    #[arg(long, env = "AGENTRY_INGRESS_TLS", default_value_t = false)]
    pub ingress_tls: bool,
    /// Annotations of tenant Ingresses, as `key=value` pairs.
    #[arg(long, env = "AGENTRY_INGRESS_ANNOTATIONS", value_delimiter = ',')]
    pub ingress_annotations: Vec<String>,
    /// Namespaces whose pods may reach tenant runtimes (ingress controller, platform gateway,
    /// Prometheus).
    #[arg(
        long = "gateway-namespace",
        env = "AGENTRY_GATEWAY_NAMESPACE",
        value_delimiter = ',',
        default_value = "ingress-nginx"
    )]
    pub gateway_namespaces: Vec<String>,
    /// Where PostgreSQL is, for tenant egress policies: CIDRs (`10.0.4.0/24`) or namespace
    /// names. Empty allows the port to any destination.
    #[arg(
        long = "postgres-cidrs",
        env = "AGENTRY_POSTGRES_CIDRS",
        value_delimiter = ','
    )]
    pub postgres_egress: Vec<String>,
    /// PostgreSQL port for tenant egress policies.
    #[arg(long, env = "AGENTRY_POSTGRES_PORT", default_value_t = 5432)]
    pub postgres_port: u16,
    /// Where NATS is, for tenant egress policies: CIDRs or namespace names. Empty allows the
    /// port to any destination.
    #[arg(long = "nats-cidrs", env = "AGENTRY_NATS_CIDRS", value_delimiter = ',')]
    pub nats_egress: Vec<String>,
    /// NATS client port for tenant egress policies.
    #[arg(long, env = "AGENTRY_NATS_PORT", default_value_t = 4222)]
    pub nats_port: u16,
    /// Namespace the operator runs in, where provider API key Secrets are read from (default:
    /// the pod's namespace in a cluster, else the kubeconfig context's).
    #[arg(long, env = "AGENTRY_OPERATOR_NAMESPACE")]
    pub operator_namespace: Option<String>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "AGENTRY_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,
    /// Tenants reconciled at once.
    #[arg(long, env = "AGENTRY_RECONCILE_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Seconds between reconciles of a converged tenant (drift correction).
    #[arg(long, env = "AGENTRY_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,
    /// Elect a leader through a Lease; only the leader runs controllers.
    #[arg(
        long,
        env = "AGENTRY_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "AGENTRY_LEASE_NAME", default_value = "agentry-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: the operator's namespace).
    #[arg(long, env = "AGENTRY_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, env = "AGENTRY_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds before expiry at which the leader renews the Lease.
    #[arg(long, env = "AGENTRY_LEASE_GRACE_SECONDS", default_value_t = 5)]
    pub lease_grace_seconds: u64,
    /// Identity in the Lease and in Events (the pod name); defaults to the host name.
    #[arg(long, env = "AGENTRY_POD_NAME")]
    pub pod_name: Option<String>,
    /// Log JSON lines instead of text.
    #[arg(long, env = "AGENTRY_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}
