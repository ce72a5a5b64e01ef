//! `agentry-operator`: parses arguments and hands over to the library.

use clap::Parser;

/// jemalloc, configured in `.cargo/config.toml` to return freed pages to the system within
/// a second: with glibc's allocator the process stayed 5.4 MiB larger after the start-up of
/// 10,000 Tenants (listed and reconciled at once), see docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
