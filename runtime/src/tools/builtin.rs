//! Built-in tools. `current_time` answers by itself; the others need the conversation or
//! other modules, so they return a [`ControlAction`] for the caller to carry out.

use agentry_crds::tool::{BuiltinName, BuiltinTool};
use chrono::SecondsFormat;
use serde_json::Value;

use super::resilience::Clock;
use super::{ControlAction, ToolError, ToolOutcome, ToolOutput, ToolSettings};

/// Runs a built-in with arguments already validated against the tool's schema. The tool's
/// schema may be looser than what a built-in needs (a Tool can omit `inputSchema`), so the
/// fields it reads are checked here too.
pub(super) fn run(
    builtin: &BuiltinTool,
    args: &Value,
    clock: &dyn Clock,
    settings: &ToolSettings,
) -> Result<ToolOutcome, ToolError> {
    let action = match builtin.name {
        BuiltinName::CurrentTime => {
            let now = clock.utc().to_rfc3339_opts(SecondsFormat::Secs, true);
            return Ok(ToolOutcome::Output(ToolOutput::text(
                &now,
                settings.max_output_bytes,
            )));
        }
        BuiltinName::Handoff => ControlAction::Handoff {
            reason: optional_string(args, "reason")?,
        },
        BuiltinName::TransferToAgent => ControlAction::Transfer {
            agent: required_string(args, "agent")?,
            reason: optional_string(args, "reason")?,
        },
        BuiltinName::KnowledgeSearch => ControlAction::KnowledgeSearch {
            query: required_string(args, "query")?,
            collections: string_list(args, "collections")?,
            limit: optional_limit(args, "limit")?,
        },
        BuiltinName::RunWorkflow => ControlAction::RunWorkflow {
            workflow: builtin.workflow.clone().ok_or_else(|| {
                ToolError::misconfigured("run_workflow without spec.builtin.workflow")
            })?,
            input: args.clone(),
        },
    };
    Ok(ToolOutcome::Control(action))
}

fn invalid(details: String) -> ToolError {
    ToolError::InvalidArguments { details }
}

fn optional_string(args: &Value, field: &str) -> Result<Option<String>, ToolError> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("at /{field}: must be a string"))),
    }
}

fn required_string(args: &Value, field: &str) -> Result<String, ToolError> {
    match optional_string(args, field)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(invalid(format!(
            "at /{field}: a non-empty string is required"
        ))),
    }
}

fn string_list(args: &Value, field: &str) -> Result<Vec<String>, ToolError> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("at /{field}: must be a list of strings")))
            })
            .collect(),
        Some(_) => Err(invalid(format!("at /{field}: must be a list of strings"))),
    }
}

fn optional_limit(args: &Value, field: &str) -> Result<Option<u32>, ToolError> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=100).contains(n))
            .map(Some)
            .ok_or_else(|| invalid(format!("at /{field}: must be an integer from 1 to 100"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tools::ManualClock;

    fn builtin(name: BuiltinName) -> BuiltinTool {
        BuiltinTool {
            name,
            workflow: None,
        }
    }

    #[test]
    fn argument_shapes_are_checked() {
        let clock = ManualClock::new();
        let s = ToolSettings::default();
        let t = builtin(BuiltinName::TransferToAgent);
        assert!(run(&t, &json!({}), &clock, &s).is_err());
        assert!(run(&t, &json!({"agent": 3}), &clock, &s).is_err());
        let k = builtin(BuiltinName::KnowledgeSearch);
        assert_eq!(
            run(
                &k,
                &json!({"query": "refunds", "collections": ["faq"], "limit": 3}),
                &clock,
                &s
            )
            .unwrap(),
            ToolOutcome::Control(ControlAction::KnowledgeSearch {
                query: "refunds".into(),
                collections: vec!["faq".into()],
                limit: Some(3),
            })
        );
        assert!(run(&k, &json!({"query": "x", "limit": 0}), &clock, &s).is_err());
    }
}
