//! The real node executor: tool calls through the tool runtime (with the step's idempotency
//! key and deadline), single model calls and agent turns through the same metering, limits
//! and budgets as chat, attributed to whoever started the run.
//!
//! The run's workflow is the snapshot it started with; the agents, tools and models it
//! names are looked up in the tenant's bundle in force when the step runs.

use std::sync::Arc;
use std::time::Instant;

use agentry_crds::RuntimeBundle;
use serde_json::{Value, json};
use uuid::Uuid;

use super::engine::{NodeExecutor, Work, WorkCall};
use crate::agents::store::{self, NewConversation, OpeningMessage};
use crate::agents::{Turn, meter};
use crate::gateway::Caller;
use crate::llm::{ChatRequest, Message, Role};
use crate::state::AppState;
use crate::tools::{ToolContext, ToolOutcome};

/// Executes `agent`, `llm`, `tool` and `retrieve` nodes for one run.
pub struct LiveExecutor {
    state: AppState,
    caller: Caller,
    bundle: Arc<RuntimeBundle>,
}

impl LiveExecutor {
    /// An executor acting as `caller` (the run's starter) with the tenant's current bundle.
    pub fn new(state: AppState, caller: Caller) -> Self {
        let bundle = caller.tenant.bundle();
        Self {
            state,
            caller,
            bundle,
        }
    }

    async fn tool(&self, call: &WorkCall, name: &str, args: Value) -> Result<Value, String> {
        let tool = self
            .bundle
            .tools
            .get(name)
            .ok_or_else(|| format!("tool {name:?} is not in the tenant's bundle"))?;
        let left = (call.deadline - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        let ctx = ToolContext::new(&self.bundle.tenant.name, self.state.tool_secrets.clone())
            .with_idempotency_key(call.idempotency_key.clone())
            .with_deadline(Instant::now() + left);
        match self.state.tools.call(&ctx, tool, args).await {
            Ok(ToolOutcome::Output(output)) => Ok(output.content),
            Ok(ToolOutcome::Control(action)) => Err(format!(
                "tool {name:?} asks the caller to act ({action:?}); in a workflow use a handoff node or call the workflow directly"
            )),
            Err(e) => Err(format!("tool {name:?} failed ({}): {e}", e.code())),
        }
    }

    async fn llm(&self, work: &Work) -> Result<Value, String> {
        let Work::Llm {
            model,
            system,
            prompt,
            temperature,
            max_tokens,
        } = work
        else {
            return Err("not a model call".to_owned());
        };
        if !self.bundle.tenant.models.contains_key(model) {
            return Err(format!("model {model:?} is not in the tenant's catalog"));
        }
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(Message::new(Role::System, system.clone()));
        }
        messages.push(Message::new(Role::User, prompt.clone()));
        let mut request = ChatRequest::new(messages);
        request.temperature = *temperature;
        request.max_tokens = *max_tokens;
        let plan = [model.clone()];
        let completion = meter::call(
            &self.state,
            &self.caller,
            &self.bundle,
            &plan,
            &request,
            None,
        )
        .await
        .map_err(|e| e.message)?;
        let mut tx = self
            .state
            .db
            .begin(self.caller.tenant.id)
            .await
            .map_err(|e| e.to_string())?;
        store::record_usage(&mut tx, &self.caller, None, &completion)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(Value::String(completion.content))
    }

    /// A turn of `agent` in a conversation of its own, recorded with the run and node.
    async fn agent(&self, call: &WorkCall, agent: &str, prompt: &str) -> Result<Value, String> {
        if !self.bundle.agents.contains_key(agent) {
            return Err(format!("agent {agent:?} is not in the tenant's bundle"));
        }
        let conversation = self
            .open_conversation(call, agent, prompt)
            .await
            .map_err(|e| format!("recording the agent's conversation failed: {e}"))?;
        let result = Turn::new(
            self.state.clone(),
            self.caller.clone(),
            conversation,
            agent.to_owned(),
            None,
        )
        .run()
        .await
        .map_err(|e| e.message)?;
        if let Some(approval) = result.approval {
            return Err(format!(
                "agent {agent:?} asked for tool {:?}, which needs approval {}; a workflow's agent step cannot wait for it (put an approval node before a tool node instead)",
                approval.tool, approval.approval_id
            ));
        }
        let text = result.message.map(|m| m.content).unwrap_or_default();
        if result.escalated {
            return Ok(json!({"text": text, "escalated": true, "conversationId": conversation}));
        }
        Ok(Value::String(text))
    }

    async fn open_conversation(
        &self,
        call: &WorkCall,
        agent: &str,
        prompt: &str,
    ) -> Result<Uuid, sqlx::Error> {
        let mut tx = self
            .state
            .db
            .begin(self.caller.tenant.id)
            .await
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        let metadata = json!({"workflowRunId": call.run_id, "node": call.node, "visit": call.visit,
                              "attempt": call.attempt});
        let conversation = store::create_conversation(
            &mut tx,
            &self.caller,
            &NewConversation {
                agent: Some(agent),
                title: Some(&format!("workflow run {} / {}", call.run_id, call.node)),
                metadata: Some(&metadata),
                event: Some(json!({"workflowRunId": call.run_id})),
                messages: &[OpeningMessage {
                    role: "user",
                    content: prompt,
                    agent: Some(agent),
                }],
                ..NewConversation::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(conversation.id)
    }
}

impl NodeExecutor for LiveExecutor {
    async fn execute(&self, call: WorkCall) -> Result<Value, String> {
        match &call.work {
            Work::Tool { tool, args } => self.tool(&call, tool, args.clone()).await,
            Work::Llm { .. } => self.llm(&call.work).await,
            Work::Agent { agent, prompt } => self.agent(&call, agent, prompt).await,
            Work::Retrieve { collection, .. } => Err(format!(
                "knowledge retrieval is not available in this runtime, so collection {collection:?} cannot be searched; give the node an onError edge or remove it"
            )),
        }
    }
}
