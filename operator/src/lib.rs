//! The Agentry operator: reconciles Tenants and their resources.

pub mod cli;
pub mod generate;

use cli::{Cli, Command};

/// Runs one subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd => {
            print!("{}", agentry_crds::crdgen::all_yaml()?);
            Ok(())
        }
        Command::Generate(args) => generate::write_all(&args),
    }
}
