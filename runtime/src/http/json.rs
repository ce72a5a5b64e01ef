//! A JSON body extractor whose rejections are our JSON errors (axum's default answers text).

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `Json<T>` for request bodies, rejecting with `{"error": {...}}`: 415 without a JSON content
/// type, 413 over the body limit, 400 for malformed JSON, 422 naming the field for a body of
/// the wrong shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(missing_json_content_type());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| rejection_to_error(JsonRejection::BytesRejection(e)))?;
        // A body is parsed without tracking its path (axum's `Json` tracks it for every body,
        // about 1 % of a chat completion's CPU); only a body that fails is parsed again with
        // it, so that the error names the field.
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(Self(value)),
            Err(_) => match axum::Json::<T>::from_bytes(&bytes) {
                Ok(axum::Json(value)) => Ok(Self(value)),
                Err(rejection) => Err(rejection_to_error(rejection)),
            },
        }
    }
}

/// `application/json` or any `application/*+json`, as axum's `Json` accepts.
fn json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == "application"
                && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        })
}

fn missing_json_content_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with Content-Type: application/json",
    )
}

fn rejection_to_error(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            ApiError::invalid(format!("invalid request body: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => missing_json_content_type(),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is too large",
            )
        }
        other => ApiError::bad_request(other.body_text()),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Chat {
        model: String,
        messages: Vec<Message>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Message {
        role: String,
    }

    async fn extract(content_type: Option<&str>, body: &str) -> Result<Chat, ApiError> {
        let mut request = Request::builder().method("POST").uri("/");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::from(body.to_owned())).unwrap();
        ApiJson::<Chat>::from_request(request, &())
            .await
            .map(|j| j.0)
    }

    const GOOD: &str = r#"{"model":"m","messages":[{"role":"user"}]}"#;

    #[tokio::test]
    async fn a_good_body_of_any_json_content_type_is_read() {
        for content_type in [
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.api+json",
        ] {
            let chat = extract(Some(content_type), GOOD).await.unwrap();
            assert_eq!(
                chat.messages,
                [Message {
                    role: "user".into()
                }],
                "{content_type}"
            );
        }
    }

    #[tokio::test]
    async fn a_body_without_a_json_content_type_is_415() {
        for content_type in [None, Some("text/plain"), Some("application/xml")] {
            let err = extract(content_type, GOOD).await.unwrap_err();
            assert_eq!(
                err.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}"
            );
            assert_eq!(err.code, "unsupported_media_type");
        }
    }

    #[tokio::test]
    async fn malformed_json_is_400_and_trailing_bytes_count() {
        for body in ["{", r#"{"model":"m","messages":[]} x"#, ""] {
            let err = extract(Some("application/json"), body).await.unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{body:?}");
            assert!(err.message.starts_with("malformed JSON"), "{}", err.message);
        }
    }

    #[tokio::test]
    async fn a_body_of_the_wrong_shape_is_422_naming_the_field() {
        for (body, named) in [
            (
                r#"{"model":"m","messages":[{"role":1}]}"#,
                "messages[0].role",
            ),
            (r#"{"model":"m","messages":[],"x":1}"#, "unknown field `x`"),
        ] {
            let err = extract(Some("application/json"), body).await.unwrap_err();
            assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert!(err.message.contains(named), "{}", err.message);
        }
    }
}
