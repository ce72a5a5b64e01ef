//! The HTTP adapter: template the request, send it through the vetting client, follow
//! redirects by hand (re-checking each target), and select what the model sees.

use std::sync::Arc;
use std::time::Duration;

use agentry_crds::tool::{HttpHeader, HttpMethod, HttpTool};
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::error::{scrub, scrub_json, truncate};
use super::resilience::{self, AttemptError, CircuitBreaker, Jitter, Retry, RetryPlan};
use super::ssrf::{self, EgressAllowlist};
use super::{
    MAX_REDIRECTS, SecretSource, ToolContext, ToolError, ToolOutput, ToolSettings, template,
};

/// Bytes of an error response kept for the message.
const ERROR_SNIPPET_BYTES: usize = 300;

/// Headers of one call: values, which ones came from Secrets, and the secret values (to scrub
/// them from anything the upstream sends back).
#[derive(Clone, Debug, Default)]
pub(super) struct ResolvedHeaders {
    pub map: HeaderMap,
    pub secret_names: Vec<HeaderName>,
    pub secret_values: Vec<String>,
}

/// Builds headers, reading Secrets now so a rotated Secret applies to the next call.
pub(super) fn resolve_headers(
    headers: &[HttpHeader],
    secrets: &dyn SecretSource,
) -> Result<ResolvedHeaders, ToolError> {
    let mut out = ResolvedHeaders::default();
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            ToolError::misconfigured(format!("{:?} is not a valid header name", h.name))
        })?;
        let (value, secret) = match (&h.value, &h.value_from) {
            (Some(v), _) => (v.clone(), false),
            (None, Some(from)) => {
                let r = &from.secret_key_ref;
                let v = secrets.get(&r.name, &r.key).ok_or_else(|| {
                    ToolError::misconfigured(format!(
                        "header {} needs key {:?} of Secret {:?}, which is not available",
                        h.name, r.key, r.name
                    ))
                })?;
                (v, true)
            }
            (None, None) => {
                return Err(ToolError::misconfigured(format!(
                    "header {} has neither value nor valueFrom",
                    h.name
                )));
            }
        };
        // The message never includes the value: it may be a secret.
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            ToolError::misconfigured(format!(
                "the value of header {} is not a valid header value",
                h.name
            ))
        })?;
        if secret {
            value.set_sensitive(true);
            out.secret_names.push(name.clone());
            if let Ok(v) = value.to_str() {
                out.secret_values.push(v.to_owned());
                // `Bearer <token>`: the bare token is as secret as the whole value.
                if let Some((_, token)) = v.split_once(' ') {
                    out.secret_values.push(token.to_owned());
                }
            }
        }
        out.map.insert(name, value);
    }
    Ok(out)
}

/// One call of an HTTP tool.
pub(super) struct HttpCall<'a> {
    pub ctx: &'a ToolContext,
    pub spec: &'a HttpTool,
    pub client: &'a reqwest::Client,
    pub allow: &'a Arc<EgressAllowlist>,
    pub settings: &'a ToolSettings,
}

/// The request as templated, before any redirect.
struct Prepared {
    method: Method,
    url: Url,
    headers: ResolvedHeaders,
    body: Option<Bytes>,
}

impl HttpCall<'_> {
    pub(super) async fn run(
        &self,
        args: &Value,
        plan: RetryPlan,
        breaker: &Arc<CircuitBreaker>,
        jitter: &dyn Jitter,
    ) -> Result<ToolOutput, ToolError> {
        let prepared = self.prepare(args)?;
        // Refuse what can be refused before the first attempt (and before the breaker hears
        // of it: a refused URL says nothing about the upstream).
        ssrf::check_url(&prepared.url, self.allow)?;
        resilience::run(plan, breaker, jitter, || self.attempt(&prepared)).await
    }

    fn prepare(&self, args: &Value) -> Result<Prepared, ToolError> {
        let url = template::render_url(&self.spec.url, args)
            .map_err(|e| ToolError::misconfigured(format!("spec.http.url: {e}")))?;
        let url = Url::parse(&url).map_err(|e| {
            ToolError::misconfigured(format!("spec.http.url rendered an invalid URL: {e}"))
        })?;
        let method = match self.spec.method {
            HttpMethod::GET => Method::GET,
            HttpMethod::POST => Method::POST,
            HttpMethod::PUT => Method::PUT,
            HttpMethod::PATCH => Method::PATCH,
            HttpMethod::DELETE => Method::DELETE,
        };
        let body = match (&self.spec.body, self.spec.method) {
            (Some(t), _) => Some(
                template::render_body(t, args)
                    .map_err(|e| ToolError::misconfigured(format!("spec.http.body: {e}")))?,
            ),
            (None, HttpMethod::POST | HttpMethod::PUT | HttpMethod::PATCH) => Some(args.clone()),
            (None, HttpMethod::GET | HttpMethod::DELETE) => None,
        };
        let mut headers = resolve_headers(&self.spec.headers, self.ctx.secrets.as_ref())?;
        if let Some(key) = &self.ctx.idempotency_key {
            let value = HeaderValue::from_str(key).map_err(|_| {
                ToolError::misconfigured("the idempotency key is not a valid header value")
            })?;
            headers.map.insert("idempotency-key", value);
        }
        let body = match body {
            Some(v) => {
                if !headers.map.contains_key(header::CONTENT_TYPE) {
                    headers.map.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                Some(Bytes::from(v.to_string()))
            }
            None => None,
        };
        Ok(Prepared {
            method,
            url,
            headers,
            body,
        })
    }

    async fn attempt(&self, p: &Prepared) -> Result<ToolOutput, AttemptError> {
        let mut method = p.method.clone();
        let mut url = p.url.clone();
        let mut headers = p.headers.map.clone();
        let mut body = p.body.clone();
        for hop in 0..=MAX_REDIRECTS {
            ssrf::check_url(&url, self.allow).map_err(|e| AttemptError::permanent(e.into()))?;
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(b) = &body {
                request = request.body(b.clone());
            }
            let response = request.send().await.map_err(transport_error)?;
            let status = response.status();
            let location = response.headers().get(header::LOCATION).cloned();
            match (is_redirect(status), location) {
                (true, Some(location)) => {
                    if hop == MAX_REDIRECTS {
                        return Err(AttemptError::permanent(ToolError::TooManyRedirects {
                            max: MAX_REDIRECTS,
                        }));
                    }
                    let next = location
                        .to_str()
                        .ok()
                        .and_then(|l| url.join(l).ok())
                        .ok_or_else(|| {
                            AttemptError::permanent(ToolError::invalid_response(
                                "a redirect with an invalid Location",
                            ))
                        })?;
                    if status == StatusCode::SEE_OTHER
                        || (method == Method::POST
                            && matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND))
                    {
                        method = Method::GET;
                        body = None;
                        headers.remove(header::CONTENT_TYPE);
                    }
                    if next.origin() != url.origin() {
                        // Credentials are for the configured endpoint, never for wherever it
                        // points us.
                        for name in &p.headers.secret_names {
                            headers.remove(name);
                        }
                    }
                    url = next;
                }
                _ => return self.read(response, &p.headers.secret_values).await,
            }
        }
        Err(AttemptError::permanent(ToolError::TooManyRedirects {
            max: MAX_REDIRECTS,
        }))
    }

    async fn read(
        &self,
        response: reqwest::Response,
        secrets: &[String],
    ) -> Result<ToolOutput, AttemptError> {
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        if status.as_u16() >= 400 {
            let retry_after = retry_after(response.headers());
            let (body, _) = read_capped(response, ERROR_SNIPPET_BYTES * 4)
                .await
                .unwrap_or_default();
            return Err(status_error(status, &body, secrets, retry_after));
        }
        let (body, complete) = read_capped(response, self.settings.max_response_bytes)
            .await
            .map_err(|e| transient(format!("reading the response failed: {e}")))?;
        select(
            &body,
            complete,
            content_type.as_deref(),
            self.spec.response_path.as_deref(),
            secrets,
            self.settings.max_output_bytes,
        )
        .map_err(AttemptError::permanent)
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

/// Reads at most `cap` bytes; the flag says whether the body ended within the cap.
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// Maps a client error: refused egress is final; a failed connect never reached the upstream,
/// so it may be repeated whatever the method; anything later may have had effects.
pub(super) fn transport_error(e: reqwest::Error) -> AttemptError {
    if let Some(egress) = ssrf::find_egress_error(&e) {
        return AttemptError::permanent(egress.into());
    }
    let message = describe(&e);
    AttemptError {
        error: ToolError::Unavailable { message },
        retry: if e.is_connect() {
            Retry::Always
        } else {
            Retry::IfIdempotent
        },
        upstream_failure: true,
        retry_after: None,
    }
}

/// The error chain without the URL (which may carry argument values the logs need not keep).
fn describe(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        let text = if let Some(r) = err.downcast_ref::<reqwest::Error>() {
            if r.is_connect() {
                "connection failed".to_owned()
            } else if r.is_timeout() {
                "timed out".to_owned()
            } else {
                "request failed".to_owned()
            }
        } else {
            err.to_string()
        };
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

pub(super) fn transient(message: String) -> AttemptError {
    AttemptError {
        error: ToolError::Unavailable { message },
        retry: Retry::IfIdempotent,
        upstream_failure: true,
        retry_after: None,
    }
}

/// An error status: 429 and 502/503/504 may be repeated; 5xx and 429 count against the
/// breaker; other 4xx are the caller's problem and count for nothing.
pub(super) fn status_error(
    status: StatusCode,
    body: &[u8],
    secrets: &[String],
    retry_after: Option<Duration>,
) -> AttemptError {
    let text = scrub(String::from_utf8_lossy(body).trim(), secrets);
    let (cut, more) = truncate(&text, ERROR_SNIPPET_BYTES);
    let body = if more {
        format!("{cut}…")
    } else {
        cut.to_owned()
    };
    let code = status.as_u16();
    AttemptError {
        error: ToolError::HttpStatus { status: code, body },
        retry: if matches!(code, 429 | 502 | 503 | 504) {
            Retry::IfIdempotent
        } else {
            Retry::Never
        },
        upstream_failure: code == 429 || code >= 500,
        retry_after,
    }
}

pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Turns a successful body into output: JSON (when the content type says so, or there is
/// none) with `responsePath` applied, otherwise text.
fn select(
    body: &[u8],
    complete: bool,
    content_type: Option<&str>,
    response_path: Option<&str>,
    secrets: &[String],
    max_output: usize,
) -> Result<ToolOutput, ToolError> {
    let looks_json = content_type.is_none_or(|ct| ct.contains("json"));
    let parsed = if complete && looks_json && !body.is_empty() {
        serde_json::from_slice::<Value>(body).ok()
    } else {
        None
    };
    match (parsed, response_path) {
        (Some(mut value), path) => {
            if let Some(path) = path {
                value =
                    value
                        .pointer(path)
                        .cloned()
                        .ok_or_else(|| ToolError::ResponsePathMissing {
                            path: path.to_owned(),
                        })?;
            }
            scrub_json(&mut value, secrets);
            Ok(ToolOutput::json(value, max_output))
        }
        (None, Some(path)) => Err(ToolError::invalid_response(if complete {
            format!("the response is not JSON, so responsePath {path} selects nothing")
        } else {
            format!("the response is larger than the {} bytes read", body.len())
        })),
        (None, None) if body.is_empty() => Ok(ToolOutput {
            content: Value::Null,
            truncated: false,
        }),
        (None, None) => {
            let text = scrub(&String::from_utf8_lossy(body), secrets);
            let mut out = ToolOutput::text(&text, max_output);
            out.truncated |= !complete;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn selection_rules() {
        let s: Vec<String> = vec!["s3cret-token".into()];
        let body = br#"{"order": {"id": "A-1", "note": "s3cret-token"}}"#;
        let out = select(
            body,
            true,
            Some("application/json"),
            Some("/order"),
            &s,
            1000,
        )
        .unwrap();
        assert_eq!(out.content, json!({"id": "A-1", "note": "[redacted]"}));
        let err = select(
            body,
            true,
            Some("application/json"),
            Some("/nope"),
            &s,
            1000,
        )
        .unwrap_err();
        assert_eq!(err.code(), "response_path_missing");
        let out = select(b"hello", true, Some("text/plain"), None, &s, 3).unwrap();
        assert_eq!((out.content, out.truncated), (json!("hel"), true));
        let out = select(b"[1,2]", true, None, None, &s, 1000).unwrap();
        assert_eq!(out.content, json!([1, 2]));
        let out = select(b"{\"a\": \"xxxxxxxx\"}", true, None, None, &s, 8).unwrap();
        assert!(out.truncated);
        assert!(select(b"<html>", true, Some("text/html"), Some("/a"), &s, 10).is_err());
        assert_eq!(
            select(b"", true, None, None, &s, 10).unwrap().content,
            Value::Null
        );
    }

    #[test]
    fn status_classes() {
        let e = status_error(StatusCode::SERVICE_UNAVAILABLE, b"down", &[], None);
        assert_eq!((e.retry, e.upstream_failure), (Retry::IfIdempotent, true));
        let e = status_error(StatusCode::NOT_FOUND, b"", &[], None);
        assert_eq!((e.retry, e.upstream_failure), (Retry::Never, false));
        let e = status_error(StatusCode::INTERNAL_SERVER_ERROR, b"", &[], None);
        assert_eq!((e.retry, e.upstream_failure), (Retry::Never, true));
    }
}
