//! Idle WebSockets: opens `n` authenticated `/ws/chat` sockets, keeps them open and idle (each
//! read by a task of its own, so that the server's pings are answered), and reports how much
//! the server's resident memory grew per socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Handshakes in progress at once.
const CONNECTING: usize = 64;
/// Pause after the last socket opened before memory is read again (the server finishes
/// setting the connections up).
const SETTLE: Duration = Duration::from_secs(2);

/// `base` is the runtime's URL (`http://host:port[/v1]`); `pid` its process id.
pub async fn run(base: &str, key: &str, n: usize, pid: u32) -> anyhow::Result<Value> {
    let host = base
        .strip_prefix("http://")
        .context("--url must start with http://")?
        .split('/')
        .next()
        .unwrap_or_default();
    let url = format!("ws://{host}/ws/chat");
    let before = super::server_cpu::rss_kib(pid)?;
    let open = Arc::new(AtomicU64::new(0));
    let closed_early = Arc::new(AtomicU64::new(0));
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut handshakes = tokio::task::JoinSet::new();
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = connecting.clone().acquire_owned().await?;
        let mut request = url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {key}"))?,
        );
        handshakes.spawn(async move {
            let result = tokio_tungstenite::connect_async(request).await;
            drop(permit);
            result.map(|(socket, _)| socket)
        });
        while let Some(done) = handshakes.try_join_next() {
            keep(done?, &mut readers, &open, &closed_early, &stop)?;
        }
    }
    while let Some(done) = handshakes.join_next().await {
        keep(done?, &mut readers, &open, &closed_early, &stop)?;
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let after = super::server_cpu::rss_kib(pid)?;
    let still_open = open.load(Ordering::SeqCst) - closed_early.load(Ordering::SeqCst);
    let _ = stop_tx.send(true);
    readers.shutdown().await;
    let grown = after.saturating_sub(before);
    Ok(json!({
        "mode": "ws-idle",
        "url": url,
        "sockets": n,
        "open_at_measurement": still_open,
        "connect_seconds": connect_seconds,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_per_socket_kib": grown as f64 / n.max(1) as f64,
    }))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Keeps an opened socket read (pings answered) until `stop`; a failed handshake fails the run.
fn keep(
    socket: Result<Socket, tokio_tungstenite::tungstenite::Error>,
    readers: &mut tokio::task::JoinSet<()>,
    open: &Arc<AtomicU64>,
    closed_early: &Arc<AtomicU64>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut socket = match socket {
        Ok(s) => s,
        Err(e) => bail!("WebSocket handshake failed: {e}"),
    };
    open.fetch_add(1, Ordering::SeqCst);
    let (closed_early, mut stop) = (closed_early.clone(), stop.clone());
    readers.spawn(async move {
        loop {
            tokio::select! {
                frame = socket.next() => match frame {
                    Some(Ok(_)) => {}
                    _ => {
                        closed_early.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    });
    Ok(())
}
