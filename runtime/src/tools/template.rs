//! Templates of HTTP tools: the URL and the body, minijinja over `args`.
//!
//! Interpolated values are escaped for where they land, so a model choosing arguments cannot
//! change the shape of the request: in a URL every value is percent-encoded as one component
//! (a `/`, `?` or `#` in an argument stays inside its segment); in a body every value is
//! written as a JSON value (a string gets its quotes and escapes), so `{"q": {{ args.q }}}` is
//! always one JSON member whatever `q` holds. Output the template author marks `| safe` (and
//! the output of `tojson`) is written as is: that is the author's decision, not the model's.

use std::sync::LazyLock;

use minijinja::value::{Value as JinjaValue, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State};
use serde_json::Value;

/// A template that failed to render, or rendered something unusable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

static URL_ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_formatter(url_formatter);
    env
});

static BODY_ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Json);
    env
});

/// Renders a URL template; every interpolated value is percent-encoded.
pub fn render_url(template: &str, args: &Value) -> Result<String, TemplateError> {
    render(&URL_ENV, template, args)
}

/// Renders a body template and parses the result as JSON.
pub fn render_body(template: &str, args: &Value) -> Result<Value, TemplateError> {
    let text = render(&BODY_ENV, template, args)?;
    serde_json::from_str(&text).map_err(|e| {
        TemplateError(format!(
            "the body template did not render valid JSON ({e}); interpolations render JSON values, so write {{\"name\": {{{{ args.name }}}}}} without quotes around the placeholder"
        ))
    })
}

fn render(
    env: &Environment<'static>,
    template: &str,
    args: &Value,
) -> Result<String, TemplateError> {
    let ctx = minijinja::context! { args => JinjaValue::from(minijinja::value::Serde(args)) };
    env.render_str(template, ctx)
        .map_err(|e| TemplateError(one_line(&e)))
}

fn one_line(e: &Error) -> String {
    let mut msg = e.kind().to_string();
    if let Some(detail) = e.detail() {
        msg.push_str(": ");
        msg.push_str(detail);
    }
    msg
}

fn url_formatter(out: &mut Output, _state: &mut State, value: &JinjaValue) -> Result<(), Error> {
    if value.is_safe()
        && let Some(s) = value.as_str()
    {
        return out.write_str(s).map_err(Error::from);
    }
    if value.is_undefined() || value.is_none() {
        return Ok(());
    }
    // JSON spellings (`true`, `[1,2]`) rather than the template language's (`True`).
    let text = match (value.as_str(), value.kind()) {
        (Some(s), _) => s.to_owned(),
        (None, ValueKind::Bool | ValueKind::Seq | ValueKind::Map) => serde_json::to_string(value)
            .map_err(|e| {
            Error::new(ErrorKind::BadSerialization, "unable to format for a URL").with_source(e)
        })?,
        (None, _) => value.to_string(),
    };
    out.write_str(&encode_component(&text)).map_err(Error::from)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn url_values_are_one_component() {
        let args = json!({"id": "a/b?c=d#e f", "n": 7, "ok": true, "l": [1, 2]});
        let url = render_url(
            "https://x.example/o/{{ args.id }}/{{ args.n }}?v={{ args.ok }}",
            &args,
        )
        .unwrap();
        assert_eq!(url, "https://x.example/o/a%2Fb%3Fc%3Dd%23e%20f/7?v=true");
        assert_eq!(
            render_url("https://x.example/{{ args.missing }}", &args).unwrap(),
            "https://x.example/"
        );
        assert_eq!(
            render_url("https://x.example/{{ '../x' | safe }}", &args).unwrap(),
            "https://x.example/../x"
        );
        assert_eq!(encode_component("é"), "%C3%A9");
        assert_eq!(render_url("{{ args.l }}", &args).unwrap(), "%5B1%2C2%5D");
    }

    #[test]
    fn body_values_are_json_values() {
        let args = json!({"q": "x\", \"admin\": true, \"y\": \"", "n": 3, "tags": ["a", "b"]});
        let body = render_body(
            r#"{"q": {{ args.q }}, "n": {{ args.n }}, "t": {{ args.tags }}}"#,
            &args,
        )
        .unwrap();
        assert_eq!(body["q"], args["q"]);
        assert_eq!(body.as_object().unwrap().len(), 3, "no member was injected");
        assert_eq!(body["t"], json!(["a", "b"]));
        let body = render_body(
            r#"{"reason": {{ args.reason | default("customer request") | tojson }}}"#,
            &args,
        )
        .unwrap();
        assert_eq!(body, json!({"reason": "customer request"}));
        assert_eq!(
            render_body(r#"{"m": {{ args.missing }}}"#, &args).unwrap(),
            json!({"m": null})
        );
        // Quoting a placeholder doubles the quotes: refused rather than sent broken.
        assert!(render_body(r#"{"q": "{{ args.q }}"}"#, &args).is_err());
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(render_url("https://x/{{ args.id", &json!({})).is_err());
    }
}
