//! The agent loop: one *turn* answers the conversation's last user message. It calls the
//! agent's model with the memory window and its tools, runs the tools the model asks for
//! (concurrently), feeds the results back and calls again, up to `max_tool_iterations`.
//! Transfers switch the agent mid-turn, a handoff escalates the conversation to a person, and
//! a tool that needs approval stops the turn until `resume` is called with the decision.
//!
//! Every model call reserves budget and tokens first and settles them after; every message,
//! usage row and event is persisted as it happens (see `store`).

pub mod meter;
pub mod models;
pub mod prompt;
pub mod store;

use std::sync::Arc;
use std::time::Instant;

use agentry_crds::RuntimeBundle;
use agentry_crds::bundle::CompiledAgent;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;
use uuid::Uuid;

use crate::error::ApiError;
use crate::events::{self, NewEvent};
use crate::gateway::Caller;
use crate::llm::{Completion, Message, ToolCall};
use crate::state::AppState;
use crate::tools::{ControlAction, ToolContext, ToolOutcome};
use store::NewMessage;
pub use store::StoredMessage;

/// How long a `run_workflow` tool call waits for the run to end or pause; a run still going
/// after that continues in the background and the model is told its id and status.
pub const WORKFLOW_TOOL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The answer when a conversation is handed to a person.
pub const ESCALATED_REPLY: &str =
    "I've passed this conversation to a member of our team. A person will reply here.";

/// What a turn reports as it goes (the SSE events of the chat API).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "event", content = "data")]
pub enum TurnEvent {
    /// A piece of the model's text.
    Token {
        /// The text.
        delta: String,
    },
    /// The model asked for a tool.
    ToolCall(ToolCallInfo),
    /// A tool answered.
    ToolResult {
        /// Call id.
        id: String,
        /// Tool.
        name: String,
        /// The text given to the model.
        content: String,
        /// Whether the call failed.
        error: bool,
    },
    /// The conversation moved to another agent.
    Handoff {
        /// Previous agent.
        from: String,
        /// New agent.
        to: String,
    },
    /// The turn waits for a person's decision.
    ApprovalRequired(Approval),
}

/// A tool call as reported to the client.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallInfo {
    /// Call id.
    pub id: String,
    /// Tool.
    pub name: String,
    /// Arguments (JSON, or the model's text when it was not JSON).
    #[schema(value_type = Object)]
    pub arguments: Value,
    /// Result text given to the model, once known.
    pub result: Option<String>,
    /// Whether the call failed.
    pub error: bool,
}

/// A pending approval.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// `POST /api/v1/chat/approvals/{approvalId}` decides it.
    pub approval_id: Uuid,
    /// Tool.
    pub tool: String,
    /// Arguments of the call.
    #[schema(value_type = Object)]
    pub arguments: Value,
}

/// Tokens and cost of a turn.
#[derive(Clone, Copy, Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnUsage {
    /// Input tokens, all model calls.
    pub input_tokens: u64,
    /// Output tokens, all model calls.
    pub output_tokens: u64,
    /// Cost in micro-dollars.
    pub cost_micros: i64,
    /// Model calls made.
    pub model_calls: u32,
}

/// How a turn ended.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnResult {
    /// The final assistant message (none while an approval is pending).
    pub message: Option<StoredMessage>,
    /// Every tool call of the turn.
    pub tool_calls: Vec<ToolCallInfo>,
    /// Tokens and cost.
    pub usage: TurnUsage,
    /// The agent serving the conversation at the end.
    pub agent: String,
    /// The approval the turn waits for.
    pub approval: Option<Approval>,
    /// The conversation was handed to a person.
    pub escalated: bool,
}

/// One turn of one conversation.
pub struct Turn {
    state: AppState,
    caller: Caller,
    bundle: Arc<RuntimeBundle>,
    conversation: Uuid,
    events: Option<UnboundedSender<TurnEvent>>,
    result: TurnResult,
    /// The assistant message whose tool calls are being run (an approval points at it).
    asked_in: Uuid,
    /// The conversation as the caller just stored it, for the first model call instead of
    /// reading it back (see [`Turn::with_history`]).
    history: Option<Vec<Message>>,
}

enum Next {
    Continue,
    Stop,
}

impl Turn {
    /// A turn of `conversation`, served by `agent`; `events` receives progress (and makes
    /// model calls stream).
    pub fn new(
        state: AppState,
        caller: Caller,
        conversation: Uuid,
        agent: String,
        events: Option<UnboundedSender<TurnEvent>>,
    ) -> Self {
        let bundle = caller.tenant.bundle();
        Self {
            state,
            caller,
            bundle,
            conversation,
            events,
            result: TurnResult {
                agent,
                ..TurnResult::default()
            },
            asked_in: Uuid::nil(),
            history: None,
        }
    }

    /// Starts from `history`, the messages the caller has just stored as the whole
    /// conversation (oldest first, no tool messages), instead of reading the memory window
    /// back for the first model call: one round trip less for a conversation opened by this
    /// request.
    pub fn with_history(mut self, history: Vec<Message>) -> Self {
        self.history = Some(history);
        self
    }

    fn send(&self, event: TurnEvent) {
        if let Some(tx) = &self.events {
            // A client that went away does not stop the turn: it is persisted anyway.
            let _ = tx.send(event);
        }
    }

    fn agent(&self) -> Result<CompiledAgent, ApiError> {
        self.bundle
            .agents
            .get(&self.result.agent)
            .cloned()
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "agent {:?} is not in the tenant's bundle",
                    self.result.agent
                ))
            })
    }

    /// Runs the loop until the model answers in text, an approval is needed, or the
    /// conversation is escalated.
    pub async fn run(mut self) -> Result<TurnResult, ApiError> {
        let mut iterations = 0u32;
        loop {
            let agent = self.agent()?;
            let history = match self.history.take() {
                Some(mut stored) => {
                    let window = usize::try_from(agent.memory_window.max(1)).unwrap_or(usize::MAX);
                    stored.drain(..stored.len().saturating_sub(window));
                    stored
                }
                None => store::window(
                    &self.state,
                    self.caller.tenant.id,
                    self.conversation,
                    agent.memory_window,
                )
                .await?
                .iter()
                .map(StoredMessage::to_llm)
                .collect(),
            };
            let with_tools = iterations < agent.max_tool_iterations;
            let request = prompt::request(&self.bundle, &agent, &self.caller, history, with_tools);
            let started = Instant::now();
            let completion = self.call_model(&agent, &request).await?;
            let latency = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
            let message = self
                .persist(NewMessage {
                    role: "assistant",
                    content: &completion.content,
                    agent: Some(&agent.name),
                    tool_calls: Some(&completion.tool_calls),
                    completion: Some(&completion),
                    latency_ms: Some(latency),
                    ..NewMessage::default()
                })
                .await?;
            self.asked_in = message.id;
            if completion.tool_calls.is_empty() {
                self.result.message = Some(message);
                return Ok(self.result);
            }
            iterations += 1;
            match self.run_tools(&agent, &completion.tool_calls).await? {
                Next::Continue => {}
                Next::Stop => return Ok(self.result),
            }
        }
    }

    /// Decides a pending approval: runs the call (or records the denial) and continues.
    pub async fn resume(
        mut self,
        approval: store::PendingApproval,
        approve: bool,
        comment: Option<String>,
    ) -> Result<TurnResult, ApiError> {
        let args = approval.arguments.clone();
        let call = ToolCall {
            id: approval.tool_call_id.clone(),
            name: approval.tool.clone(),
            arguments: args.to_string(),
        };
        let (content, error) = if approve {
            let agent = self.agent()?;
            let outcome = self.call_tool(&agent, &call, args.clone()).await;
            self.outcome_text(outcome)
        } else {
            let why = comment.as_deref().unwrap_or("no reason given");
            (
                format!("A person denied this call of {}: {why}", approval.tool),
                true,
            )
        };
        self.tool_result(&call, args, content, error).await?;
        self.run().await
    }

    async fn call_model(
        &mut self,
        agent: &CompiledAgent,
        request: &crate::llm::ChatRequest,
    ) -> Result<Completion, ApiError> {
        let plan = models::plan(&self.bundle, agent, &self.caller);
        let events = self.events.clone();
        let on_token = events.as_ref().map(|tx| {
            move |delta: String| {
                let _ = tx.send(TurnEvent::Token { delta });
            }
        });
        let completion = meter::call(
            &self.state,
            &self.caller,
            &self.bundle,
            &plan,
            request,
            on_token.as_ref().map(|f| f as &(dyn Fn(String) + Sync)),
        )
        .await?;
        let u = &mut self.result.usage;
        u.input_tokens += u64::from(completion.usage.input_tokens);
        u.output_tokens += u64::from(completion.usage.output_tokens);
        u.cost_micros += completion.cost_micros;
        u.model_calls += 1;
        Ok(completion)
    }

    async fn persist(&mut self, m: NewMessage<'_>) -> Result<StoredMessage, ApiError> {
        let mut statement = self.state.db.statement(self.caller.tenant.id).await?;
        let stored =
            store::insert_message(statement.conn(), &self.caller, self.conversation, &m).await?;
        statement.finish().await?;
        Ok(stored)
    }

    async fn call_tool(
        &self,
        agent: &CompiledAgent,
        call: &ToolCall,
        args: Value,
    ) -> Result<ToolOutcome, String> {
        let tool = agent
            .tools
            .iter()
            .find(|t| **t == call.name)
            .and_then(|t| self.bundle.tools.get(t))
            .ok_or_else(|| format!("unknown tool {:?}", call.name))?;
        let ctx = ToolContext::new(&self.bundle.tenant.name, self.state.tool_secrets.clone())
            .with_idempotency_key(call.id.clone());
        self.state
            .tools
            .call(&ctx, tool, args)
            .await
            .map_err(|e| format!("error ({}): {e}", e.code()))
    }

    fn outcome_text(&self, outcome: Result<ToolOutcome, String>) -> (String, bool) {
        match outcome {
            Ok(ToolOutcome::Output(o)) => (o.to_model_text(), false),
            Ok(ToolOutcome::Control(action)) => (
                format!("{action:?} is not available from an approval"),
                true,
            ),
            Err(e) => (e, true),
        }
    }

    async fn tool_result(
        &mut self,
        call: &ToolCall,
        arguments: Value,
        content: String,
        error: bool,
    ) -> Result<(), ApiError> {
        let agent = self.result.agent.clone();
        self.persist(NewMessage {
            role: "tool",
            content: &content,
            agent: Some(&agent),
            tool_call_id: Some(&call.id),
            ..NewMessage::default()
        })
        .await?;
        self.send(TurnEvent::ToolResult {
            id: call.id.clone(),
            name: call.name.clone(),
            content: content.clone(),
            error,
        });
        self.result.tool_calls.push(ToolCallInfo {
            id: call.id.clone(),
            name: call.name.clone(),
            arguments,
            result: Some(content),
            error,
        });
        Ok(())
    }

    async fn run_tools(
        &mut self,
        agent: &CompiledAgent,
        calls: &[ToolCall],
    ) -> Result<Next, ApiError> {
        let mut parsed = Vec::with_capacity(calls.len());
        for call in calls {
            let args = serde_json::from_str::<Value>(&call.arguments);
            let shown = args
                .as_ref()
                .map_or_else(|_| Value::String(call.arguments.clone()), Clone::clone);
            self.send(TurnEvent::ToolCall(ToolCallInfo {
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: shown.clone(),
                result: None,
                error: false,
            }));
            let needs_approval = self
                .bundle
                .tools
                .get(&call.name)
                .is_some_and(|t| t.require_approval && agent.tools.contains(&t.name));
            parsed.push((call, args, shown, needs_approval));
        }
        // Calls that need no approval run now, concurrently.
        let this = &*self;
        let runs = parsed
            .iter()
            .map(|(call, args, _, needs_approval)| async move {
                match (args, needs_approval) {
                    (_, true) => None,
                    (Err(e), false) => Some(Err(format!("the arguments are not valid JSON: {e}"))),
                    (Ok(args), false) => Some(this.call_tool(agent, call, args.clone()).await),
                }
            });
        let outcomes = futures::future::join_all(runs).await;
        let mut next = Next::Continue;
        let mut approval: Option<Approval> = None;
        for ((call, _, shown, _), outcome) in parsed.iter().zip(outcomes) {
            let Some(outcome) = outcome else {
                if approval.is_some() {
                    let text = "another call of this turn is waiting for approval; ask again later";
                    self.tool_result(call, shown.clone(), text.to_owned(), true)
                        .await?;
                } else {
                    approval = Some(self.request_approval(call, shown.clone()).await?);
                }
                continue;
            };
            match outcome {
                Ok(ToolOutcome::Control(ControlAction::Transfer { agent: to, .. })) => {
                    let (text, error) = self.transfer(agent, &to).await?;
                    self.tool_result(call, shown.clone(), text, error).await?;
                }
                Ok(ToolOutcome::Control(ControlAction::Handoff { reason })) => {
                    self.tool_result(call, shown.clone(), "escalated to a person".into(), false)
                        .await?;
                    self.escalate(reason).await?;
                    next = Next::Stop;
                }
                Ok(ToolOutcome::Control(ControlAction::RunWorkflow { workflow, input })) => {
                    let (text, error) = self.run_workflow(&workflow, input).await;
                    self.tool_result(call, shown.clone(), text, error).await?;
                }
                other => {
                    let (text, error) = self.outcome_text(other);
                    self.tool_result(call, shown.clone(), text, error).await?;
                }
            }
        }
        if let Some(approval) = approval {
            self.send(TurnEvent::ApprovalRequired(approval.clone()));
            self.result.approval = Some(approval);
            return Ok(Next::Stop);
        }
        Ok(next)
    }

    async fn request_approval(
        &mut self,
        call: &ToolCall,
        arguments: Value,
    ) -> Result<Approval, ApiError> {
        let id = Uuid::now_v7();
        let tenant = self.caller.tenant.id;
        let mut tx = self.state.db.begin(tenant).await?;
        sqlx::query(
            "insert into agentry.tool_approvals
               (tenant_id, id, conversation_id, message_id, tool_call_id, tool, arguments, agent)
             values ($1, $2, $3, $8, $4, $5, $6, $7)",
        )
        .bind(tenant.0)
        .bind(id)
        .bind(self.conversation)
        .bind(&call.id)
        .bind(&call.name)
        .bind(&arguments)
        .bind(&self.result.agent)
        .bind(self.asked_in)
        .execute(&mut *tx)
        .await?;
        events::emit(
            &mut tx,
            tenant,
            NewEvent::new(
                "tool.approval_requested",
                json!({"approvalId": id, "conversationId": self.conversation, "tool": call.name,
                       "arguments": arguments, "agent": self.result.agent}),
            )
            .subject(self.conversation.to_string())
            .actor(self.caller.actor()),
        )
        .await?;
        tx.commit().await?;
        Ok(Approval {
            approval_id: id,
            tool: call.name.clone(),
            arguments,
        })
    }

    /// A `run_workflow` tool: starts the workflow for this caller and waits (at most
    /// [`WORKFLOW_TOOL_WAIT`]) until it ends or pauses; the model sees the run's outcome.
    async fn run_workflow(&self, workflow: &str, input: Value) -> (String, bool) {
        let run = match crate::orchestrator::api::start(
            &self.state,
            &self.caller,
            workflow,
            input,
            Some(self.conversation),
        )
        .await
        {
            Ok(run) => run,
            Err(e) => {
                return (
                    format!("workflow {workflow:?} was not started: {}", e.message),
                    true,
                );
            }
        };
        let settled = crate::orchestrator::follow::settle(
            &self.state,
            self.caller.tenant.id,
            run.id,
            WORKFLOW_TOOL_WAIT,
        )
        .await;
        match settled {
            Ok(row) => {
                let view = crate::orchestrator::api::RunView::from_row(&row);
                let failed = matches!(
                    view.status,
                    crate::orchestrator::RunStatus::Failed
                        | crate::orchestrator::RunStatus::TimedOut
                        | crate::orchestrator::RunStatus::Cancelled
                );
                let text = json!({"runId": view.id, "status": view.status, "result": view.result,
                                  "error": view.error, "wait": view.wait});
                (text.to_string(), failed)
            }
            Err(e) => (format!("workflow run {}: {}", run.id, e.message), true),
        }
    }

    /// Switches the conversation to `to` when the current agent may hand off to it.
    async fn transfer(
        &mut self,
        agent: &CompiledAgent,
        to: &str,
    ) -> Result<(String, bool), ApiError> {
        if !agent.handoffs.iter().any(|h| h == to) || !self.bundle.agents.contains_key(to) {
            return Ok((
                format!(
                    "cannot transfer to {to:?}: this agent can transfer to {}",
                    agent.handoffs.join(", ")
                ),
                true,
            ));
        }
        let tenant = self.caller.tenant.id;
        let mut tx = self.state.db.begin(tenant).await?;
        sqlx::query(
            "update agentry.conversations set agent = $3, updated_at = now()
             where tenant_id = $1 and id = $2",
        )
        .bind(tenant.0)
        .bind(self.conversation)
        .bind(to)
        .execute(&mut *tx)
        .await?;
        events::emit(
            &mut tx,
            tenant,
            NewEvent::new(
                "conversation.handoff",
                json!({"conversationId": self.conversation, "from": agent.name, "to": to}),
            )
            .subject(self.conversation.to_string())
            .actor(self.caller.actor()),
        )
        .await?;
        tx.commit().await?;
        self.send(TurnEvent::Handoff {
            from: agent.name.clone(),
            to: to.to_owned(),
        });
        self.result.agent = to.to_owned();
        Ok((format!("transferred to {to}"), false))
    }

    async fn escalate(&mut self, reason: Option<String>) -> Result<(), ApiError> {
        let tenant = self.caller.tenant.id;
        let agent = self.result.agent.clone();
        let mut tx = self.state.db.begin(tenant).await?;
        sqlx::query(
            "update agentry.conversations set escalated = true, status = 'escalated',
               updated_at = now() where tenant_id = $1 and id = $2",
        )
        .bind(tenant.0)
        .bind(self.conversation)
        .execute(&mut *tx)
        .await?;
        events::emit(
            &mut tx,
            tenant,
            NewEvent::new(
                "conversation.escalated",
                json!({"conversationId": self.conversation, "agent": agent, "reason": reason}),
            )
            .subject(self.conversation.to_string())
            .actor(self.caller.actor()),
        )
        .await?;
        let message = store::insert_message(
            &mut tx,
            &self.caller,
            self.conversation,
            &NewMessage {
                role: "assistant",
                content: ESCALATED_REPLY,
                agent: Some(&agent),
                ..NewMessage::default()
            },
        )
        .await?;
        tx.commit().await?;
        self.send(TurnEvent::Token {
            delta: ESCALATED_REPLY.to_owned(),
        });
        self.result.message = Some(message);
        self.result.escalated = true;
        Ok(())
    }
}
