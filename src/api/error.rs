//! The API's one error type: every failure becomes `{error: {code, message, details}}` with the
//! right status. Internal errors are logged and hidden from clients.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { message: String },
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: serde_json::Value,
    },
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        details: serde_json::Value,
    },
    #[error("{message}")]
    Unauthorized { message: String },
    #[error("{message}")]
    Forbidden { message: String },
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable reason code, e.g. `validation_failed`, `batch_conflict`.
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &str, serde_json::Value) {
        use serde_json::Value;
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code, Value::Null),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found", Value::Null),
            ApiError::Unauthorized { .. } => {
                (StatusCode::UNAUTHORIZED, "unauthorized", Value::Null)
            }
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden", Value::Null),
            ApiError::Conflict { code, details, .. } => {
                (StatusCode::CONFLICT, code, details.clone())
            }
            ApiError::Unprocessable { code, details, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, code, details.clone())
            }
            ApiError::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Value::Null,
            ),
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Value::Null)
            }
            ApiError::Store(_) | ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                Value::Null,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, details) = self.parts();
        let message = match &self {
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store error");
                "internal error; see the server log".to_string()
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message,
                details,
            },
        };
        (status, Json(body)).into_response()
    }
}
