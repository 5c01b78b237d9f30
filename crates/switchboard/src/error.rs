//! The one mapping from errors to HTTP: client faults carry a stable code and a message that
//! says what is wrong; anything unexpected is logged with its cause chain and answered as an
//! opaque 500. Body: `{"error":{"code":…,"message":…}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// The store cannot write now: 503 with `Retry-After`. Not logged per request (the store
    /// logs each episode of faults once).
    #[error("storage unavailable: {}", .0.describe())]
    Unavailable(crate::store::FaultKind),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The `Retry-After` of a 503 for a storage fault, in seconds.
pub const STORAGE_RETRY_AFTER_SECS: u32 = 5;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token in the Authorization header",
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Client { status, .. } => *status,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Unavailable(fault) => ApiError::Unavailable(fault.kind),
            StoreError::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<crate::channels::ChannelError> for ApiError {
    fn from(e: crate::channels::ChannelError) -> Self {
        use crate::channels::ChannelError;
        match e {
            ChannelError::Malformed(m) => ApiError::bad_request("malformed_request", m),
            ChannelError::UnsupportedMediaType(m) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
            ),
            ChannelError::BadSignature(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "invalid_signature", m)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            ApiError::Client {
                status,
                code,
                message,
            } => (*status, *code, message.clone()),
            ApiError::Unavailable(kind) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                format!(
                    "storage is unavailable ({}): nothing was stored; try again in {STORAGE_RETRY_AFTER_SECS} s",
                    kind.describe()
                ),
            ),
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the server log has the details".to_owned(),
                )
            }
        };
        let mut response = (
            status,
            axum::Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(STORAGE_RETRY_AFTER_SECS),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
