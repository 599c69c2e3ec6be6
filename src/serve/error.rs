//! One error type for every HTTP answer that is not a success, one status table, one renderer
//! (the OpenAI envelope `{"error":{"message","type","param","code"}}`).

use hyper::StatusCode;
use serde_json::json;

use crate::pipeline::request::RequestError;

/// Everything an endpoint can answer with besides success.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A bad field (400); `param` names it.
    #[error("{message}")]
    Invalid {
        param: Option<String>,
        message: String,
    },
    /// The request names another model (400).
    #[error("Model mismatch: request specifies '{requested}' but server is running '{served}'.")]
    ModelMismatch { requested: String, served: String },
    /// No valid bearer key (401).
    #[error("Invalid or missing API key; send `Authorization: Bearer <key>`.")]
    Unauthorized,
    /// Unknown route, id or file (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists, the method does not (405, with `Allow`: the methods it takes).
    #[error("Method {method} is not allowed here; use {allow}.")]
    MethodNotAllowed { method: String, allow: &'static str },
    /// A `Range` outside the file (416, with `Content-Range: bytes */{0}`).
    #[error("The requested range is not satisfiable; the file is {0} bytes.")]
    RangeNotSatisfiable(u64),
    /// The job failed, so there is no content (422).
    #[error("Video generation failed. Check job status for error details.")]
    JobFailed,
    /// The body is over the configured limit (413).
    #[error("Request body exceeds the {0}-byte limit.")]
    TooLarge(usize),
    /// A reference file (`input_reference` upload, data URL, base64) over `max_upload_bytes` (413).
    #[error("`{param}` is {size} bytes, over the {max}-byte upload limit.")]
    UploadTooLarge {
        param: String,
        size: usize,
        max: usize,
    },
    /// The body's content type is not one we parse (415).
    #[error(
        "Unsupported content type '{0}'; send application/json, multipart/form-data or application/x-www-form-urlencoded."
    )]
    UnsupportedMediaType(String),
    /// The job queue is full (429, `Retry-After`).
    #[error("The job queue is full ({0} jobs waiting); retry later.")]
    QueueFull(usize),
    /// The sync request ran past its timeout (504).
    #[error("Generation did not finish within {0} s.")]
    Timeout(u64),
    /// The model is not loaded (yet) or the worker is gone (503).
    #[error("{0}")]
    Unavailable(String),
    /// The job could not be stored (507): nothing was queued.
    #[error("{0}")]
    InsufficientStorage(String),
    /// A server-side failure; the message is safe to show (500).
    #[error("{0}")]
    Internal(String),
    /// An endpoint of the OpenAI API that omni does not implement (501); the message says
    /// what to use instead.
    #[error("{0}")]
    NotImplemented(String),
}

impl ApiError {
    /// A 400 naming `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = match message.contains(&format!("`{param}`")) {
            true => message,
            false => format!("Invalid `{param}`: {message}"),
        };
        ApiError::Invalid {
            param: Some(param.to_string()),
            message,
        }
    }

    /// The status table.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } | ApiError::ModelMismatch { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::JobFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge(_) | ApiError::UploadTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// OpenAI's `error.type`.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::Invalid { .. }
            | ApiError::ModelMismatch { .. }
            | ApiError::MethodNotAllowed { .. }
            | ApiError::RangeNotSatisfiable(_)
            | ApiError::JobFailed
            | ApiError::TooLarge(_)
            | ApiError::UploadTooLarge { .. }
            | ApiError::UnsupportedMediaType(_)
            | ApiError::NotImplemented(_) => "invalid_request_error",
            ApiError::Unauthorized => "authentication_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::QueueFull(_) => "rate_limit_error",
            ApiError::Timeout(_)
            | ApiError::Unavailable(_)
            | ApiError::Internal(_)
            | ApiError::InsufficientStorage(_) => "server_error",
        }
    }

    /// OpenAI's string `error.code`.
    fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid { .. } => "invalid_request",
            ApiError::ModelMismatch { .. } => "model_mismatch",
            ApiError::Unauthorized => "invalid_api_key",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            ApiError::JobFailed => "generation_failed",
            ApiError::TooLarge(_) => "request_too_large",
            ApiError::UploadTooLarge { .. } => "file_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::QueueFull(_) => "queue_full",
            ApiError::Timeout(_) => "timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal_error",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::NotImplemented(_) => "not_implemented",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::Invalid { param, .. } => param.as_deref(),
            ApiError::ModelMismatch { .. } => Some("model"),
            ApiError::UploadTooLarge { param, .. } => Some(param),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.to_string(),
            "type": self.kind(),
            "param": self.param(),
            "code": self.code(),
        }})
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::invalid(e.param, e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_carry_param_and_400() {
        let e = ApiError::invalid("size", "bad");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let b = e.body();
        assert_eq!(b["error"]["param"], "size");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["code"], "invalid_request");
        assert_eq!(b["error"]["message"], "Invalid `size`: bad");
    }

    #[test]
    fn model_mismatch_names_model() {
        let e = ApiError::ModelMismatch {
            requested: "a".into(),
            served: "b".into(),
        };
        assert_eq!(e.body()["error"]["param"], "model");
        assert!(e.to_string().starts_with("Model mismatch"));
    }
}
