//! `agentry-runtime`: parses arguments and hands over to the library.

use clap::Parser;

/// jemalloc instead of the system allocator: less CPU per request on the hot path (see
/// docs/benchmarks.md); configured in `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
