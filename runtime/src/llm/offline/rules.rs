//! The offline provider's rules, applied in order; the first that fires decides the answer.
//! `docs/llm.md` describes them for users; each has a test in `runtime/tests/llm.rs`.

use std::collections::HashMap;

use parking_lot::Mutex;
use regex::Regex;
use serde_json::{Map, Value};

use super::text::{
    STOPWORDS, balanced_object, first_sentence, fnv1a, is_id_like, mentions, tokens, words,
};
use crate::llm::types::{ChatRequest, Message, Role, ToolCall, ToolDefinition};

/// The system-prompt line that lists the agents a transfer may target.
pub const HANDOFF_MARKER: &str = "You can transfer to:";

/// The system-prompt line that starts retrieved knowledge.
pub const KNOWLEDGE_MARKER: &str = "Knowledge:";

/// Required string properties with one of these names receive the whole user message.
const FREE_TEXT_PROPERTIES: &[&str] = &["query", "question", "text", "message", "reason"];

/// What the offline model answers.
#[derive(Debug, PartialEq)]
pub(super) enum Answer {
    /// Text.
    Text(String),
    /// A tool call.
    Call(ToolCall),
}

/// Compiled JSON-Schema `pattern`s, cached (a bounded cache: cleared when full).
#[derive(Debug, Default)]
pub(super) struct Patterns(Mutex<HashMap<String, Option<Regex>>>);

impl Patterns {
    fn matches(&self, pattern: &str, token: &str) -> bool {
        let mut cache = self.0.lock();
        if cache.len() > 256 {
            cache.clear();
        }
        cache
            .entry(pattern.to_owned())
            .or_insert_with(|| Regex::new(pattern).ok())
            .as_ref()
            // A pattern our engine cannot compile does not filter anything.
            .is_none_or(|re| re.is_match(token))
    }
}

/// Applies the rules to `request`.
pub(super) fn answer(request: &ChatRequest, patterns: &Patterns) -> Answer {
    let conversation = Conversation::new(request);
    // 1. Tool results are summarised.
    if let Some(summary) = conversation.tool_results() {
        return Answer::Text(summary);
    }
    // 2. JSON mode answers an object.
    if request.json_mode {
        return Answer::Text(conversation.json_answer());
    }
    // 3. An explicit request of an offered tool.
    if let Some(call) = conversation.explicit_call() {
        return Answer::Call(call);
    }
    // 4. A mention of an offered tool (or of an agent a transfer tool can reach).
    if let Some(answer) = conversation.keyword_call(patterns) {
        return answer;
    }
    // 5. Knowledge, then 6. a restatement.
    Answer::Text(conversation.text_answer())
}

struct Conversation<'a> {
    request: &'a ChatRequest,
    user: &'a str,
    user_words: Vec<String>,
    system: String,
}

impl<'a> Conversation<'a> {
    fn new(request: &'a ChatRequest) -> Self {
        let user = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str());
        let system = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        Self {
            request,
            user,
            user_words: words(user),
            system,
        }
    }

    /// Rule 1: the trailing tool messages, each as `<tool> returned: <content>`.
    fn tool_results(&self) -> Option<String> {
        let messages = &self.request.messages;
        let trailing = messages
            .iter()
            .rev()
            .take_while(|m| m.role == Role::Tool)
            .count();
        if trailing == 0 {
            return None;
        }
        let start = messages.len() - trailing;
        let lines: Vec<String> = messages[start..]
            .iter()
            .map(|result| {
                let name = result
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| tool_name_of(&messages[..start], id))
                    .unwrap_or("the tool");
                format!("{name} returned: {}", result.content.trim())
            })
            .collect();
        Some(lines.join("\n"))
    }

    /// JSON mode: `{"<key>": "<option>"}` when the system prompt lists options, else
    /// `{"answer": "<text answer>"}`.
    fn json_answer(&self) -> String {
        let mut object = Map::new();
        match options(&self.system) {
            Some((key, options)) => {
                let choice = options
                    .iter()
                    .find(|o| mentions(&self.user_words, o))
                    .or(options.first())
                    .cloned()
                    .unwrap_or_default();
                object.insert(key, Value::String(choice));
            }
            None => {
                object.insert("answer".to_owned(), Value::String(self.text_answer()));
            }
        }
        Value::Object(object).to_string()
    }

    /// Rule 3: `/<tool> {args}` or `call <tool> with {args}`, whichever comes first.
    fn explicit_call(&self) -> Option<ToolCall> {
        let text = self.user;
        let mut best: Option<(usize, &ToolDefinition, &str)> = None;
        for tool in &self.request.tools {
            for (at, rest) in explicit_positions(text, &tool.name) {
                if best.is_none_or(|(b, _, _)| at < b) {
                    best = Some((at, tool, rest));
                }
            }
        }
        let (_, tool, rest) = best?;
        let rest = rest.trim_start();
        let arguments = if rest.starts_with('{') {
            balanced_object(rest).to_owned()
        } else {
            "{}".to_owned()
        };
        Some(self.call(&tool.name, arguments))
    }

    /// Rule 4: for each offered tool in order, a transfer to a mentioned agent, or a tool
    /// whose name is mentioned (with its arguments filled, or a question for the missing ones).
    fn keyword_call(&self, patterns: &Patterns) -> Option<Answer> {
        for tool in &self.request.tools {
            if is_transfer(&tool.parameters) {
                let target = handoff_targets(&self.system)
                    .into_iter()
                    .find(|agent| mentions(&self.user_words, agent));
                if let Some(agent) = target {
                    let arguments = serde_json::json!({ "agent": agent }).to_string();
                    return Some(Answer::Call(self.call(&tool.name, arguments)));
                }
                continue;
            }
            if !mentions(&self.user_words, &tool.name) {
                continue;
            }
            return Some(match self.fill(&tool.parameters, patterns) {
                Ok(arguments) => Answer::Call(self.call(&tool.name, arguments.to_string())),
                Err(missing) => Answer::Text(format!(
                    "I can do that with {}, but I need the {} first.",
                    tool.name,
                    missing.join(" and ")
                )),
            });
        }
        None
    }

    /// Rules 5 and 6.
    fn text_answer(&self) -> String {
        if let Some(line) = self.knowledge() {
            return format!("From the knowledge base: {line}");
        }
        let sentence = first_sentence(self.user);
        if sentence.is_empty() {
            "Hello! How can I help you today?".to_owned()
        } else {
            format!("I can help with that: {sentence}")
        }
    }

    /// Rule 5: the knowledge line sharing the most words with the question.
    fn knowledge(&self) -> Option<&'a str> {
        let question: Vec<&String> = self
            .user_words
            .iter()
            .filter(|w| w.chars().count() >= 3 && !STOPWORDS.contains(&w.as_str()))
            .collect();
        let mut best: Option<(usize, &str)> = None;
        for line in knowledge_lines(self.request) {
            let line_words = words(line);
            let score = question
                .iter()
                .enumerate()
                .filter(|(i, w)| !question[..*i].contains(w) && line_words.contains(w))
                .count();
            if score > 0 && best.is_none_or(|(b, _)| score > b) {
                best = Some((score, line));
            }
        }
        best.map(|(_, line)| line)
    }

    /// Arguments from the schema's required properties, or the names of those it could not
    /// fill.
    fn fill(&self, schema: &Value, patterns: &Patterns) -> Result<Value, Vec<String>> {
        let mut arguments = Map::new();
        let mut missing = Vec::new();
        let mut used: Vec<&str> = Vec::new();
        let tokens = tokens(self.user);
        for name in required(schema) {
            let property = schema.pointer(&format!("/properties/{name}"));
            let kind = property
                .and_then(|p| p.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("string");
            let value = match kind {
                _ if property.and_then(|p| p.get("enum")).is_some() => property
                    .and_then(|p| p.get("enum"))
                    .and_then(Value::as_array)
                    .and_then(|values| {
                        values
                            .iter()
                            .find(|v| v.as_str().is_some_and(|s| mentions(&self.user_words, s)))
                            .cloned()
                    }),
                "string" if FREE_TEXT_PROPERTIES.contains(&name) => {
                    Some(Value::String(self.user.trim().to_owned()))
                }
                "string" => {
                    let pattern = property
                        .and_then(|p| p.get("pattern"))
                        .and_then(Value::as_str);
                    tokens
                        .iter()
                        .find(|t| {
                            is_id_like(t)
                                && !used.contains(t)
                                && pattern.is_none_or(|p| patterns.matches(p, t))
                        })
                        .map(|t| {
                            used.push(t);
                            Value::String((*t).to_owned())
                        })
                }
                "integer" => tokens
                    .iter()
                    .find_map(|t| t.parse::<i64>().ok())
                    .map(Value::from),
                "number" => tokens
                    .iter()
                    .find_map(|t| t.parse::<f64>().ok())
                    .and_then(|n| serde_json::Number::from_f64(n).map(Value::Number)),
                "boolean" => Some(Value::Bool(
                    self.user_words.iter().any(|w| w == "yes" || w == "true"),
                )),
                _ => None,
            };
            match value {
                Some(value) => {
                    arguments.insert(name.to_owned(), value);
                }
                None => missing.push(name.to_owned()),
            }
        }
        if missing.is_empty() {
            Ok(Value::Object(arguments))
        } else {
            Err(missing)
        }
    }

    /// A tool call with a deterministic id derived from the conversation and the call.
    fn call(&self, name: &str, arguments: String) -> ToolCall {
        let mut parts: Vec<&str> = Vec::with_capacity(self.request.messages.len() * 2 + 2);
        for message in &self.request.messages {
            parts.push(message.role.as_str());
            parts.push(&message.content);
        }
        parts.push(name);
        parts.push(&arguments);
        ToolCall {
            id: format!("call_{:016x}", fnv1a(&parts)),
            name: name.to_owned(),
            arguments,
        }
    }
}

/// The name of the tool call `id` in the latest assistant message that made it.
fn tool_name_of<'m>(messages: &'m [Message], id: &str) -> Option<&'m str> {
    messages
        .iter()
        .rev()
        .flat_map(|m| m.tool_calls.iter())
        .find(|c| c.id == id)
        .map(|c| c.name.as_str())
}

/// Where `text` requests `tool` explicitly, with the text after the tool name.
fn explicit_positions<'t>(text: &'t str, tool: &str) -> Vec<(usize, &'t str)> {
    let mut found = Vec::new();
    let boundary_before = |at: usize| at == 0 || text[..at].ends_with(char::is_whitespace);
    let ends_name = |rest: &str| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '{']);
    let slash = format!("/{tool}");
    for (at, _) in text.match_indices(&slash) {
        let rest = &text[at + slash.len()..];
        if boundary_before(at) && ends_name(rest) {
            found.push((at, rest));
        }
    }
    let lower = text.to_ascii_lowercase();
    let call = format!("call {tool}");
    for (at, _) in lower.match_indices(&call.to_ascii_lowercase()) {
        let rest = &text[at + call.len()..];
        // The tool name itself must match exactly (not only case-insensitively).
        if boundary_before(at) && text[at + 5..].starts_with(tool) && ends_name(rest) {
            let trimmed = rest.trim_start();
            let after_with = trimmed
                .strip_prefix("with")
                .filter(|r| r.is_empty() || r.starts_with([' ', '\t', '\n', '{']));
            found.push((at, after_with.unwrap_or(rest)));
        }
    }
    found
}

/// A transfer tool: its schema requires a string `agent`.
fn is_transfer(schema: &Value) -> bool {
    required(schema).contains(&"agent")
        && schema
            .pointer("/properties/agent/type")
            .and_then(Value::as_str)
            .is_none_or(|t| t == "string")
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The agents listed after [`HANDOFF_MARKER`] (comma-separated, to the end of the line).
fn handoff_targets(system: &str) -> Vec<String> {
    system
        .lines()
        .find_map(|line| {
            line.find(HANDOFF_MARKER)
                .map(|at| &line[at + HANDOFF_MARKER.len()..])
        })
        .map(|list| {
            list.split(',')
                .map(|a| a.trim().trim_end_matches('.').trim())
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The lines of knowledge: in each system message, what follows a line starting with
/// [`KNOWLEDGE_MARKER`] (the rest of that line too), bullets removed, blank lines skipped.
fn knowledge_lines(request: &ChatRequest) -> Vec<&str> {
    let mut lines = Vec::new();
    for message in request.messages.iter().filter(|m| m.role == Role::System) {
        let mut inside = false;
        for line in message.content.lines() {
            let line = line.trim();
            let line = if inside {
                line
            } else if let Some(rest) = line.strip_prefix(KNOWLEDGE_MARKER) {
                inside = true;
                rest.trim()
            } else {
                continue;
            };
            let line = line
                .strip_prefix("- ")
                .or_else(|| line.strip_prefix("* "))
                .unwrap_or(line)
                .trim();
            if !line.is_empty() {
                lines.push(line);
            }
        }
    }
    lines
}

/// The options a JSON answer chooses from: the first `"<key>": "<a>|<b>|…"` of the system
/// prompt, else the first bare `a|b|…` token (key `category`).
fn options(system: &str) -> Option<(String, Vec<String>)> {
    let quoted = quoted_strings(system);
    for pair in quoted.windows(2) {
        let ((_, key_end, key), (value_start, _, value)) = (pair[0], pair[1]);
        if value.contains('|') && system[key_end..value_start].trim() == ":" {
            let options = split_options(value);
            if options.len() >= 2 {
                return Some((key.to_owned(), options));
            }
        }
    }
    system.split_whitespace().find_map(|token| {
        let token = token.trim_matches(|c: char| !(c.is_alphanumeric() || c == '|'));
        let options = split_options(token);
        (token.contains('|')
            && options.len() >= 2
            && options.iter().all(|o| {
                o.chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
            }))
        .then(|| ("category".to_owned(), options))
    })
}

fn split_options(value: &str) -> Vec<String> {
    value
        .split('|')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `"..."` segments: (index after the opening quote, index after the closing quote, content).
fn quoted_strings(text: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut open: Option<usize> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match (open, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(start), '"') => {
                out.push((start - 1, i + 1, &text[start..i]));
                open = None;
            }
            (None, '"') => open = Some(i + 1),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_options() {
        let system = r#"Answer with JSON: {"category": "billing|general|urgent"}."#;
        assert_eq!(
            options(system),
            Some((
                "category".into(),
                vec!["billing".into(), "general".into(), "urgent".into()]
            ))
        );
        assert_eq!(
            options("Pick one of yes|no."),
            Some(("category".into(), vec!["yes".into(), "no".into()]))
        );
        assert_eq!(options("Answer in JSON."), None);
    }

    #[test]
    fn finds_handoff_targets() {
        let system = "Be kind.\nYou can transfer to: billing, general-help.\nThanks";
        assert_eq!(handoff_targets(system), ["billing", "general-help"]);
        assert!(handoff_targets("nothing").is_empty());
    }

    #[test]
    fn explicit_positions_need_boundaries() {
        assert_eq!(explicit_positions("x/lookup {}", "lookup").len(), 0);
        assert_eq!(explicit_positions("/lookupx", "lookup").len(), 0);
        assert_eq!(explicit_positions("/lookup{}", "lookup")[0].1, "{}");
        assert_eq!(
            explicit_positions("Call lookup with {\"a\":1}", "lookup")[0].1,
            " {\"a\":1}"
        );
        assert_eq!(explicit_positions("call Lookup", "lookup").len(), 0);
    }
}
