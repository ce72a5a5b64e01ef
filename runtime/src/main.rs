//! `agentry-runtime`: parses arguments and hands over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = agentry_runtime::cli::Cli::parse();
    match agentry_runtime::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentry-runtime: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
