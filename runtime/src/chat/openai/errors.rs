//! Errors of the OpenAI-compatible surface in OpenAI's shape,
//! `{"error": {"message", "type", "param", "code"}}`, with the statuses OpenAI's API uses, so
//! that OpenAI client libraries raise their usual exceptions (`AuthenticationError`,
//! `NotFoundError`, `BadRequestError`, `RateLimitError`, ...).
//!
//! Handlers, the authentication middleware and the limiter all answer [`ApiError`]s; its
//! response carries the error as an extension, and [`rewrite`] (a layer over the `/v1` routes)
//! renders it again in this shape.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;

/// Code of an unknown `model` (status 404, `param: "model"`), as OpenAI names it.
pub const MODEL_NOT_FOUND: &str = "model_not_found";

/// A `model` that is neither `agent/<name>` of an existing agent nor a catalog model.
pub fn unknown_model(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        MODEL_NOT_FOUND,
        format!("The model `{model}` does not exist or you do not have access to it."),
    )
    .with_param("model")
}

/// The status and body OpenAI's API would answer for `error`.
pub fn render(error: &ApiError) -> (StatusCode, Value) {
    let (status, kind, code) = match (error.status, error.code) {
        (StatusCode::UNAUTHORIZED, _) => (error.status, "invalid_request_error", "invalid_api_key"),
        // OpenAI answers a spent quota with 429 `insufficient_quota`.
        (_, "budget_exhausted") => (
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
        ),
        (StatusCode::TOO_MANY_REQUESTS, _) => {
            // OpenAI's type says which limit: "tokens" (per minute) or "requests".
            let kind = if error.message.contains("tokens per minute") {
                "tokens"
            } else {
                "requests"
            };
            (error.status, kind, "rate_limit_exceeded")
        }
        // OpenAI reports every invalid body as 400.
        (StatusCode::UNPROCESSABLE_ENTITY, code) => {
            (StatusCode::BAD_REQUEST, "invalid_request_error", code)
        }
        (status, code) if status.is_client_error() => (status, "invalid_request_error", code),
        (status, code) => (status, "server_error", code),
    };
    let body = json!({"error": {
        "message": error.message,
        "type": kind,
        "param": error.param,
        "code": code,
    }});
    (status, body)
}

/// `error` as an OpenAI error response (with `Retry-After` when it has one).
pub fn response(error: &ApiError) -> Response {
    let (status, body) = render(error);
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Re-renders an [`ApiError`] response in OpenAI's shape; other responses pass unchanged.
/// Headers set on the error response (request id, `Retry-After`) are kept.
pub async fn rewrite(response: Response) -> Response {
    let Some(error) = response.extensions().get::<ApiError>() else {
        return response;
    };
    let mut rewritten = self::response(error);
    let (parts, _) = response.into_parts();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(error: &ApiError) -> (u16, Value) {
        let (status, body) = render(error);
        (status.as_u16(), body["error"].clone())
    }

    #[test]
    fn statuses_types_and_codes_follow_openai() {
        let (status, e) = rendered(&ApiError::unauthorized("invalid API key"));
        assert_eq!(status, 401);
        assert_eq!(
            e,
            json!({"message": "invalid API key", "type": "invalid_request_error",
                   "param": null, "code": "invalid_api_key"})
        );
        let (status, e) = rendered(&unknown_model("agent/nobody"));
        assert_eq!(status, 404);
        assert_eq!(
            (e["type"].as_str(), e["param"].as_str(), e["code"].as_str()),
            (
                Some("invalid_request_error"),
                Some("model"),
                Some("model_not_found")
            )
        );
        let (status, e) = rendered(&ApiError::invalid("messages must hold a user message"));
        assert_eq!((status, e["code"].as_str()), (400, Some("invalid_request")));
        let (status, e) = rendered(&ApiError::budget_exhausted("spent"));
        assert_eq!(
            (status, e["type"].as_str(), e["code"].as_str()),
            (429, Some("insufficient_quota"), Some("insufficient_quota"))
        );
        let (status, e) = rendered(&ApiError::rate_limited(
            "rate limit tenant_tpm reached: 10 tokens per minute for this tenant",
            3,
        ));
        assert_eq!(
            (status, e["type"].as_str(), e["code"].as_str()),
            (429, Some("tokens"), Some("rate_limit_exceeded"))
        );
        let (_, e) = rendered(&ApiError::rate_limited("10 requests per minute", 3));
        assert_eq!(e["type"], "requests");
        let (status, e) = rendered(&ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the model call failed",
        ));
        assert_eq!(
            (status, e["type"].as_str(), e["code"].as_str()),
            (502, Some("server_error"), Some("upstream_error"))
        );
    }

    #[tokio::test]
    async fn rewrite_keeps_headers_and_leaves_successes_alone() {
        let mut original = ApiError::rate_limited("10 requests per minute", 7).into_response();
        original
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("r-1"));
        let rewritten = rewrite(original).await;
        assert_eq!(rewritten.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(rewritten.headers()[header::RETRY_AFTER], "7");
        assert_eq!(rewritten.headers()["x-request-id"], "r-1");
        let body = axum::body::to_bytes(rewritten.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        let ok = rewrite(Json(json!({"ok": true})).into_response()).await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
