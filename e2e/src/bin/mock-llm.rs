//! The mock OpenAI-compatible upstream as a process, for benchmarks and manual runs:
//! `cargo run -p agentry-e2e --bin mock-llm -- --listen 127.0.0.1:9999 --latency-ms 0`.

use std::net::SocketAddr;
use std::time::Duration;

use agentry_e2e::mock_llm::{MockConfig, MockLlm};
use clap::Parser;

/// Serves a mock OpenAI-compatible API until Ctrl-C or SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "mock-llm")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "MOCK_LLM_LISTEN", default_value = "127.0.0.1:9999")]
    listen: SocketAddr,
    /// Wait before every answer, in milliseconds.
    #[arg(long, env = "MOCK_LLM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Wait between streamed chunks, in milliseconds.
    #[arg(long, env = "MOCK_LLM_TOKEN_LATENCY_MS", default_value_t = 0)]
    token_latency_ms: u64,
    /// Bearer key to require.
    #[arg(long, env = "MOCK_LLM_API_KEY")]
    api_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mock = MockLlm::bind(
        args.listen,
        MockConfig {
            latency: Duration::from_millis(args.latency_ms),
            token_latency: Duration::from_millis(args.token_latency_ms),
            api_key: args.api_key,
            ..MockConfig::default()
        },
    )
    .await?;
    println!("mock-llm listening on {}", mock.base_url());
    mock.serve_until(shutdown()).await;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
