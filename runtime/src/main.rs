//! `agentry-runtime`: parses arguments and hands over to the library.

use clap::Parser;

/// jemalloc instead of the system allocator: less CPU per request on the hot path (see
/// docs/benchmarks.md); configured in `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = agentry_runtime::cli::Cli::parse();
    let runtime = match agentry_runtime::tokio_runtime(&cli) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("agentry-runtime: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agentry_runtime::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentry-runtime: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
