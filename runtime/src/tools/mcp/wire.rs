//! JSON-RPC framing of the streamable HTTP transport: finding the response to a request in a
//! JSON body, a batch or an SSE stream, and turning `content` items into text.

use serde_json::Value;

use super::super::ToolError;
use super::super::http::transient;
use super::super::resilience::AttemptError;

/// Text of the `content` items; non-text items are named, not inlined.
pub(super) fn content_text(result: &Value) -> String {
    let items = result.get("content").and_then(Value::as_array);
    let parts: Vec<String> = items
        .into_iter()
        .flatten()
        .map(|item| {
            let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
            let mime = item.get("mimeType").and_then(Value::as_str).unwrap_or("?");
            match kind {
                "text" => item
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                "resource" => {
                    let r = item.get("resource").cloned().unwrap_or(Value::Null);
                    match r.get("text").and_then(Value::as_str) {
                        Some(t) => t.to_owned(),
                        None => format!(
                            "[resource {}]",
                            r.get("uri").and_then(Value::as_str).unwrap_or("?")
                        ),
                    }
                }
                "resource_link" => format!(
                    "[resource {}]",
                    item.get("uri").and_then(Value::as_str).unwrap_or("?")
                ),
                other => format!("[{other} content ({mime}) omitted]"),
            }
        })
        .collect();
    parts.join("\n")
}

/// The message with `id` that is a response (has `result` or `error`), in a single message
/// or a batch.
pub(super) fn find_response(value: Value, id: u64) -> Option<Value> {
    let matches = |v: &Value| {
        v.get("id").and_then(Value::as_u64) == Some(id)
            && (v.get("result").is_some() || v.get("error").is_some())
    };
    match value {
        Value::Array(items) => items.into_iter().find(|v| matches(v)),
        v if matches(&v) => Some(v),
        _ => None,
    }
}

/// Reads SSE events until one carries the response to `id`; other messages (progress,
/// logging, server requests) are skipped.
pub(super) async fn read_sse(
    mut response: reqwest::Response,
    id: u64,
    cap: usize,
) -> Result<Value, AttemptError> {
    let mut buffer = String::new();
    let mut read = 0usize;
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|e| transient(format!("reading the event stream failed: {e}")))?;
        let Some(chunk) = chunk else {
            break;
        };
        read += chunk.len();
        if read > cap {
            return Err(AttemptError::permanent(ToolError::invalid_response(
                "the MCP event stream grew too large without a response",
            )));
        }
        buffer.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(found) = sse_data(&event)
                .and_then(|d| serde_json::from_str::<Value>(&d).ok())
                .and_then(|v| find_response(v, id))
            {
                return Ok(found);
            }
        }
    }
    if let Some(found) = sse_data(&buffer)
        .and_then(|d| serde_json::from_str::<Value>(&d).ok())
        .and_then(|v| find_response(v, id))
    {
        return Ok(found);
    }
    Err(transient(
        "the MCP event stream ended without a response".to_owned(),
    ))
}

/// The `data` of one event (lines joined with newlines), if it has any.
fn sse_data(event: &str) -> Option<String> {
    let lines: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sse_events_and_batches() {
        assert_eq!(
            sse_data("event: message\ndata: {\"a\":\ndata: 1}\n\n").as_deref(),
            Some("{\"a\":\n1}")
        );
        assert_eq!(sse_data(": keep-alive\n\n"), None);
        let batch =
            json!([{"jsonrpc": "2.0", "method": "x"}, {"jsonrpc": "2.0", "id": 7, "result": {}}]);
        assert!(find_response(batch, 7).is_some());
        assert!(find_response(json!({"id": 8, "result": {}}), 7).is_none());
    }

    #[test]
    fn content_items_become_text() {
        let r = json!({"content": [
            {"type": "text", "text": "one"},
            {"type": "image", "data": "AAAA", "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///a", "text": "two"}},
        ]});
        assert_eq!(
            content_text(&r),
            "one\n[image content (image/png) omitted]\ntwo"
        );
    }
}
