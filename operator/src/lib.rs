//! The Agentry operator: reconciles Tenants into namespaces, database roles, bundles and
//! runtime pods.

pub mod builders;
pub mod cli;
pub mod controller;
pub mod database;
pub mod generate;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod run;
pub mod server;
pub mod settings;
pub mod status;

#[cfg(test)]
pub(crate) mod fixtures;

use cli::{Cli, Command};

/// Runs one subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd => {
            print!("{}", agentry_crds::crdgen::all_yaml()?);
            Ok(())
        }
        Command::Generate(args) => generate::write_all(&args),
        Command::Run(args) => run::run(*args).await,
    }
}
