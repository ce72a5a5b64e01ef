//! `agentry-operator`: parses arguments and hands over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = agentry_operator::cli::Cli::parse();
    match agentry_operator::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentry-operator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
