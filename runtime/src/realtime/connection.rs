//! One WebSocket connection: a reader that dispatches client messages, a writer that drains
//! the connection's bounded queue (and sends heartbeats), and one task per running turn whose
//! events are forwarded into that queue under the slow-consumer policy.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::RealtimeConfig;
use super::protocol::{self, ClientMessage, TurnRef};
use crate::agents::store::{self, NewMessage};
use crate::agents::{Turn, TurnEvent};
use crate::error::ApiError;
use crate::gateway::Caller;
use crate::gateway::limits::StreamPermit;
use crate::state::AppState;

/// Close code "try again later": the client could not keep up.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Close code "going away": idle timeout or server shutdown.
const CLOSE_GOING_AWAY: u16 = 1001;
/// Longest message, in bytes (as the REST API).
const MAX_CONTENT_BYTES: usize = 32 * 1024;

/// Why the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Slow,
    Idle,
    Shutdown,
    Gone,
}

/// Serves an upgraded socket until the client leaves, idles out or falls behind.
pub(super) async fn serve(
    socket: WebSocket,
    state: AppState,
    caller: Caller,
    config: RealtimeConfig,
    permit: StreamPermit,
) {
    // Held for the connection's life: the tenant's stream slot frees when the socket ends.
    let _permit = permit;
    let (sink, stream) = socket.split();
    let (out, out_rx) = mpsc::channel::<String>(config.queue_capacity);
    let slow = CancellationToken::new();
    let last_seen = std::sync::Arc::new(std::sync::Mutex::new(Instant::now()));
    let writer = tokio::spawn(write(
        sink,
        out_rx,
        config,
        slow.clone(),
        state.shutdown.clone(),
        last_seen.clone(),
    ));
    let reader = Reader {
        state,
        caller,
        config,
        out,
        slow: slow.clone(),
        turns: HashMap::new(),
        runs: HashMap::new(),
        last_seen,
    };
    let reading = reader.read(stream);
    tokio::pin!(reading);
    let writer_abort = writer.abort_handle();
    tokio::select! {
        () = &mut reading => {
            // The client left: stop writing. Running turns complete and are persisted.
            writer_abort.abort();
        }
        ending = writer => {
            tracing::debug!(?ending, "realtime connection closed by the server");
            // The close frame is out: give the client a moment to answer it (the closing
            // handshake), then drop the socket either way.
            let _ = timeout(Duration::from_secs(2), &mut reading).await;
        }
    }
}

struct Reader {
    state: AppState,
    caller: Caller,
    config: RealtimeConfig,
    out: mpsc::Sender<String>,
    slow: CancellationToken,
    turns: HashMap<Uuid, JoinHandle<()>>,
    /// Followed workflow runs.
    runs: HashMap<Uuid, JoinHandle<()>>,
    last_seen: std::sync::Arc<std::sync::Mutex<Instant>>,
}

impl Reader {
    async fn read(mut self, mut stream: SplitStream<WebSocket>) {
        while let Some(Ok(frame)) = stream.next().await {
            if let Ok(mut seen) = self.last_seen.lock() {
                *seen = Instant::now();
            }
            match frame {
                Message::Text(text) => self.handle(text.as_str()).await,
                Message::Binary(_) => {
                    self.reply(protocol::error("bad_message", "send JSON text frames"))
                        .await;
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        // Turns already started run to completion (and are persisted) like an SSE turn
        // whose client went away; their events are dropped with the queue.
        self.turns.clear();
        for (_, follower) in self.runs.drain() {
            follower.abort();
        }
    }

    /// Queues a reply; a queue that stays full is the slow-consumer case.
    async fn reply(&self, text: String) {
        if timeout(self.config.slow_consumer_timeout, self.out.send(text))
            .await
            .is_err()
        {
            self.slow.cancel();
        }
    }

    async fn handle(&mut self, text: &str) {
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .reply(protocol::error(
                        "bad_message",
                        &format!("invalid message: {e}"),
                    ))
                    .await;
            }
        };
        match message {
            ClientMessage::Ping { id } => self.reply(protocol::pong(id.as_deref())).await,
            ClientMessage::Subscribe { run_id } => {
                self.runs.retain(|_, t| !t.is_finished());
                if self.runs.contains_key(&run_id) {
                    return;
                }
                if self.runs.len() >= self.config.max_turns {
                    let text = "too many runs followed on this connection";
                    return self
                        .reply(protocol::run_event(
                            "run_error",
                            run_id,
                            serde_json::json!({"code": "too_many_runs", "message": text}),
                        ))
                        .await;
                }
                let follower = tokio::spawn(super::runs::follow(
                    self.state.clone(),
                    self.caller.clone(),
                    run_id,
                    self.out.clone(),
                    self.config,
                    self.slow.clone(),
                ));
                self.runs.insert(run_id, follower);
            }
            ClientMessage::Unsubscribe { run_id } => {
                if let Some(follower) = self.runs.remove(&run_id) {
                    follower.abort();
                }
            }
            ClientMessage::Cancel { conversation_id } => {
                let turn = TurnRef {
                    conversation: conversation_id,
                    id: None,
                };
                match self.turns.remove(&conversation_id) {
                    Some(task) if !task.is_finished() => {
                        task.abort();
                        // Waiting for the task guarantees no event of the turn follows the
                        // `done` that reports the cancellation.
                        let _ = task.await;
                        self.reply(turn.cancelled()).await;
                    }
                    _ => {
                        self.reply(turn.error("not_running", "no turn is running here"))
                            .await;
                    }
                }
            }
            ClientMessage::Message {
                conversation_id,
                content,
                id,
            } => {
                let turn = TurnRef {
                    conversation: conversation_id,
                    id,
                };
                self.turns.retain(|_, t| !t.is_finished());
                if self.turns.contains_key(&conversation_id) {
                    return self
                        .reply(turn.error(
                            "busy",
                            "a turn is already running in this conversation; cancel it or wait",
                        ))
                        .await;
                }
                if self.turns.len() >= self.config.max_turns {
                    return self
                        .reply(turn.error(
                            "too_many_turns",
                            "too many turns running on this connection",
                        ))
                        .await;
                }
                if content.trim().is_empty() || content.len() > MAX_CONTENT_BYTES {
                    return self
                        .reply(turn.error("invalid", "content must be 1 byte to 32 KiB of text"))
                        .await;
                }
                let task = tokio::spawn(run_turn(
                    self.state.clone(),
                    self.caller.clone(),
                    turn,
                    content,
                    self.out.clone(),
                    self.config,
                    self.slow.clone(),
                ));
                self.turns.insert(conversation_id, task);
            }
        }
    }
}

/// Stores the user message, runs the turn and forwards its events, then `done` or `error`.
async fn run_turn(
    state: AppState,
    caller: Caller,
    turn: TurnRef,
    content: String,
    out: mpsc::Sender<String>,
    config: RealtimeConfig,
    slow: CancellationToken,
) {
    let last = match start(&state, &caller, &turn, &content).await {
        Err(e) => turn.error(e.code, &e.message),
        Ok(agent) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let running =
                Box::pin(Turn::new(state, caller, turn.conversation, agent, Some(tx)).run());
            let forwarding = forward(rx, &out, &turn, &config, &slow);
            // The turn owns the sender, so forwarding ends once the turn has returned.
            let (result, ()) = tokio::join!(running, forwarding);
            match result {
                Ok(result) => turn.done(&result),
                Err(e) => turn.error(e.code, &e.message),
            }
        }
    };
    if timeout(config.slow_consumer_timeout, out.send(last))
        .await
        .is_err()
    {
        slow.cancel();
    }
}

/// Checks the conversation and stores the user message (as the REST API does); the agent.
async fn start(
    state: &AppState,
    caller: &Caller,
    turn: &TurnRef,
    content: &str,
) -> Result<String, ApiError> {
    let mut tx = state.db.begin(caller.tenant.id).await?;
    let conversation = store::conversation(&mut tx, caller, turn.conversation)
        .await?
        .ok_or_else(|| ApiError::not_found("no such conversation"))?;
    if conversation.escalated {
        return Err(ApiError::conflict(
            "this conversation was handed to a person; the agent no longer answers it",
        ));
    }
    store::ensure_no_pending_approval(&mut tx, caller.tenant.id, turn.conversation).await?;
    let agent = conversation
        .agent
        .clone()
        .or_else(|| caller.tenant.bundle().tenant.default_agent.clone())
        .ok_or_else(|| ApiError::invalid("the conversation has no agent"))?;
    store::insert_message(
        &mut tx,
        caller,
        turn.conversation,
        &NewMessage {
            role: "user",
            content,
            agent: Some(&agent),
            ..NewMessage::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(agent)
}

/// Forwards a turn's events into the connection queue. Token deltas that arrive while the
/// queue is full are coalesced into one pending delta (so a slow client costs at most the
/// answer's text, never a frame per token); once the client has stayed behind for
/// `slow_consumer_timeout`, or the pending text passes `max_pending_bytes`, `slow` is
/// cancelled and the writer closes the socket with 1013. Events are drained from the turn
/// even then, so the turn itself never waits on the client.
pub(super) async fn forward(
    mut events: mpsc::UnboundedReceiver<TurnEvent>,
    out: &mpsc::Sender<String>,
    turn: &TurnRef,
    config: &RealtimeConfig,
    slow: &CancellationToken,
) {
    let mut pending = String::new();
    let mut behind_since: Option<Instant> = None;
    let mut open = true;
    loop {
        let deadline = behind_since.map(|t| t + config.slow_consumer_timeout);
        tokio::select! {
            biased;
            permit = out.reserve(), if open && !pending.is_empty() => match permit {
                Ok(permit) => {
                    permit.send(turn.token(&std::mem::take(&mut pending)));
                    behind_since = None;
                }
                Err(_) => open = false,
            },
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if open && deadline.is_some() => {
                slow.cancel();
                open = false;
            }
            event = events.recv() => {
                let Some(event) = event else { break };
                if !open {
                    continue;
                }
                match event {
                    TurnEvent::Token { delta } => {
                        pending.push_str(&delta);
                        if pending.len() > config.max_pending_bytes {
                            slow.cancel();
                            open = false;
                        } else if let Ok(permit) = out.try_reserve() {
                            permit.send(turn.token(&std::mem::take(&mut pending)));
                            behind_since = None;
                        } else {
                            behind_since.get_or_insert_with(Instant::now);
                        }
                    }
                    other => {
                        // Order matters: the text before a tool call goes first.
                        for text in [
                            (!pending.is_empty()).then(|| turn.token(&std::mem::take(&mut pending))),
                            Some(turn.turn_event(&other)),
                        ]
                        .into_iter()
                        .flatten()
                        {
                            let budget = behind_since
                                .map(|t| (t + config.slow_consumer_timeout).saturating_duration_since(Instant::now()))
                                .unwrap_or(config.slow_consumer_timeout);
                            if !matches!(timeout(budget, out.send(text)).await, Ok(Ok(()))) {
                                slow.cancel();
                                open = false;
                                break;
                            }
                        }
                        behind_since = None;
                    }
                }
            }
        }
    }
    if open && !pending.is_empty() {
        let budget = behind_since
            .map(|t| (t + config.slow_consumer_timeout).saturating_duration_since(Instant::now()))
            .unwrap_or(config.slow_consumer_timeout);
        if timeout(budget, out.send(turn.token(&pending)))
            .await
            .is_err()
        {
            slow.cancel();
        }
    }
}

/// Drains the queue to the socket, pings every `heartbeat`, and closes on a slow consumer,
/// an idle client or shutdown.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<String>,
    config: RealtimeConfig,
    slow: CancellationToken,
    shutdown: CancellationToken,
    last_seen: std::sync::Arc<std::sync::Mutex<Instant>>,
) -> Ending {
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + config.heartbeat, config.heartbeat);
    let ending = loop {
        let seen = last_seen
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| Instant::now());
        let idle_at = seen + config.idle_timeout;
        let message = tokio::select! {
            biased;
            () = slow.cancelled() => break Ending::Slow,
            () = shutdown.cancelled() => break Ending::Shutdown,
            () = sleep_until(idle_at) => {
                let fresh = last_seen.lock().map(|t| *t).unwrap_or(seen);
                if fresh + config.idle_timeout <= Instant::now() {
                    break Ending::Idle;
                }
                continue;
            }
            _ = heartbeat.tick() => Message::Ping(Default::default()),
            text = queue.recv() => match text {
                Some(text) => Message::Text(Utf8Bytes::from(text)),
                None => break Ending::Gone,
            },
        };
        // A client that does not read fills the socket's buffers; the write then waits, the
        // queue fills behind it and the slow-consumer policy takes over.
        tokio::select! {
            biased;
            () = slow.cancelled() => break Ending::Slow,
            sent = sink.send(message) => if sent.is_err() { break Ending::Gone },
        }
    };
    let (code, reason) = match ending {
        Ending::Slow => {
            // Logged before the close is attempted: the attempt may take its whole bound.
            tracing::warn!(
                code = CLOSE_TRY_AGAIN_LATER,
                "slow consumer: closing the socket"
            );
            (
                CLOSE_TRY_AGAIN_LATER,
                "slow consumer: the client fell behind",
            )
        }
        Ending::Idle => (CLOSE_GOING_AWAY, "idle timeout"),
        Ending::Shutdown => (CLOSE_GOING_AWAY, "server shutting down"),
        Ending::Gone => return ending,
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }));
    // Bounded: a client that reads nothing may never take the close frame.
    let _ = timeout(Duration::from_secs(2), sink.send(close)).await;
    ending
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(timeout: Duration) -> RealtimeConfig {
        RealtimeConfig {
            queue_capacity: 2,
            slow_consumer_timeout: timeout,
            max_pending_bytes: 1024,
            ..RealtimeConfig::default()
        }
    }

    fn turn() -> TurnRef {
        TurnRef {
            conversation: Uuid::nil(),
            id: None,
        }
    }

    fn token(d: &str) -> TurnEvent {
        TurnEvent::Token {
            delta: d.to_owned(),
        }
    }

    #[tokio::test]
    async fn tokens_are_coalesced_while_the_queue_is_full() {
        let (out, mut queue) = mpsc::channel(2);
        let (tx, rx) = mpsc::unbounded_channel();
        for d in ["a", "b", "c", "d", "e"] {
            tx.send(token(d)).unwrap();
        }
        drop(tx);
        let slow = CancellationToken::new();
        let cfg = config(Duration::from_secs(5));
        let t = turn();
        let forwarding = forward(rx, &out, &t, &cfg, &slow);
        let reading = async {
            // Read only once the producer has run ahead of the 2-slot queue.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut deltas = Vec::new();
            while let Some(text) = queue.recv().await {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                deltas.push(v["delta"].as_str().unwrap().to_owned());
                if deltas.concat() == "abcde" {
                    break;
                }
            }
            deltas
        };
        let ((), deltas) = tokio::join!(forwarding, reading);
        assert_eq!(deltas, ["a", "b", "cde"]);
        assert!(!slow.is_cancelled());
    }

    #[tokio::test]
    async fn a_client_that_stays_behind_is_flagged_slow() {
        let (out, _queue) = mpsc::channel(2);
        let (tx, rx) = mpsc::unbounded_channel();
        let slow = CancellationToken::new();
        let cfg = config(Duration::from_millis(100));
        let t = turn();
        let producing = async move {
            for _ in 0..10 {
                tx.send(token("xy")).unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        };
        tokio::join!(forward(rx, &out, &t, &cfg, &slow), producing);
        assert!(slow.is_cancelled());
    }

    #[tokio::test]
    async fn pending_text_past_the_bound_is_flagged_slow() {
        let (out, _queue) = mpsc::channel(2);
        let (tx, rx) = mpsc::unbounded_channel();
        for _ in 0..100 {
            tx.send(token(&"z".repeat(100))).unwrap();
        }
        drop(tx);
        let slow = CancellationToken::new();
        let cfg = config(Duration::from_secs(60));
        forward(rx, &out, &turn(), &cfg, &slow).await;
        assert!(slow.is_cancelled());
    }
}
