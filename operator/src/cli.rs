//! Command-line arguments.

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
