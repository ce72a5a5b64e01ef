//! Rendering of answers in the OpenAI wire format: a JSON completion, or SSE frames with
//! the text word by word, tool-call arguments in two fragments, and the usage chunk.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{Script, tokens};

/// One answer to render.
pub(super) struct Answer<'a> {
    pub(super) model: &'a str,
    pub(super) content: &'a str,
    pub(super) tools: &'a [(String, String)],
    pub(super) prompt_tokens: u64,
    pub(super) usage: bool,
}

fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

impl Answer<'_> {
    fn completion_tokens(&self) -> u64 {
        tokens(self.content)
            + self
                .tools
                .iter()
                .map(|(name, args)| tokens(name) + tokens(args))
                .sum::<u64>()
    }

    fn finish_reason(&self) -> &'static str {
        if self.tools.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }
    }

    fn usage(&self) -> String {
        let completion = self.completion_tokens();
        format!(
            r#"{{"prompt_tokens":{},"completion_tokens":{completion},"total_tokens":{}}}"#,
            self.prompt_tokens,
            self.prompt_tokens + completion
        )
    }

    pub(super) fn json(&self) -> Response {
        let mut body = String::with_capacity(256 + self.content.len());
        body.push_str(r#"{"id":"chatcmpl-mock","object":"chat.completion","created":0,"model":"#);
        body.push_str(&quote(self.model));
        body.push_str(r#","choices":[{"index":0,"message":{"role":"assistant","content":"#);
        if self.content.is_empty() && !self.tools.is_empty() {
            body.push_str("null");
        } else {
            body.push_str(&quote(self.content));
        }
        if !self.tools.is_empty() {
            body.push_str(",\"tool_calls\":[");
            for (i, (name, args)) in self.tools.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&format!(
                    r#"{{"id":"call_mock_{i}","type":"function","function":{{"name":{},"arguments":{}}}}}"#,
                    quote(name),
                    quote(args)
                ));
            }
            body.push(']');
        }
        body.push_str(r#"},"finish_reason":""#);
        body.push_str(self.finish_reason());
        body.push_str("\"}]");
        if self.usage {
            body.push_str(",\"usage\":");
            body.push_str(&self.usage());
        }
        body.push('}');
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }

    /// The SSE events, each a complete `data: ...\n\n` frame.
    fn events(&self, include_usage: bool) -> Vec<String> {
        let head = format!(
            r#"data: {{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":0,"model":{},"choices":"#,
            quote(self.model)
        );
        let choice = |delta: &str, finish: &str| {
            format!(r#"{head}[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#) + "\n\n"
        };
        let mut events = vec![choice(r#"{"role":"assistant","content":""}"#, "null")];
        for word in pieces(self.content) {
            events.push(choice(&format!(r#"{{"content":{}}}"#, quote(word)), "null"));
        }
        for (i, (name, args)) in self.tools.iter().enumerate() {
            // Arguments in two fragments, as real providers split them.
            let cut = (0..=args.len() / 2)
                .rev()
                .find(|c| args.is_char_boundary(*c))
                .unwrap_or(0);
            events.push(choice(
                &format!(
                    r#"{{"tool_calls":[{{"index":{i},"id":"call_mock_{i}","type":"function","function":{{"name":{},"arguments":{}}}}}]}}"#,
                    quote(name),
                    quote(&args[..cut])
                ),
                "null",
            ));
            events.push(choice(
                &format!(
                    r#"{{"tool_calls":[{{"index":{i},"function":{{"arguments":{}}}}}]}}"#,
                    quote(&args[cut..])
                ),
                "null",
            ));
        }
        events.push(choice("{}", &quote(self.finish_reason())));
        if include_usage && self.usage {
            events.push(format!(r#"{head}[],"usage":{}}}"#, self.usage()) + "\n\n");
        }
        events.push("data: [DONE]\n\n".to_owned());
        events
    }

    pub(super) fn stream(
        &self,
        include_usage: bool,
        token_latency: Duration,
        script: &Script,
    ) -> Response {
        let mut events = self.events(include_usage);
        let (pause, cut) = (script.pause, script.cut);
        if cut {
            // The role chunk and the first content chunk, then the connection breaks.
            events.truncate(2);
        }
        let body = if token_latency.is_zero() && pause.is_zero() && !cut {
            Body::from(events.concat())
        } else {
            let frames = events.into_iter().enumerate().map(move |(i, frame)| {
                // The role chunk goes at once, every later one waits a token's time, and the
                // one after the first content chunk the scripted pause too.
                let wait = match i {
                    0 => Duration::ZERO,
                    2 => token_latency + pause,
                    _ => token_latency,
                };
                (wait, Some(frame))
            });
            // The break waits a little so that what came before is flushed to the client.
            let frames = frames.chain(cut.then_some((Duration::from_millis(50), None)));
            let stream = futures::stream::unfold(frames, |mut frames| async move {
                let (wait, frame) = frames.next()?;
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let item = match frame {
                    Some(frame) => Ok(Bytes::from(frame)),
                    None => Err(std::io::Error::other("cut by #cut")),
                };
                Some((item, frames))
            });
            Body::from_stream(stream)
        };
        (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response()
    }
}

/// Words, each with the whitespace after it.
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reassemble() {
        let answer = Answer {
            model: "m",
            content: "a b",
            tools: &[],
            prompt_tokens: 3,
            usage: true,
        };
        let events = answer.events(true);
        assert_eq!(events.len(), 6);
        assert!(events[4].contains(r#""usage":{"prompt_tokens":3"#));
        for frame in &events[..5] {
            let data = frame.strip_prefix("data: ").unwrap().trim();
            serde_json::from_str::<serde_json::Value>(data).unwrap();
        }
    }
}
