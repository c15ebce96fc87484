//! API errors: a status code and a JSON body that says what was wrong. Internal errors are logged
//! with their cause and answered with a generic message, so nothing secret leaks. A store that
//! cannot write for now (a full disk, a read-only database, a lock held elsewhere, an I/O error)
//! is 503 with `Retry-After`, and says which fault, never more.

use airlock_broker::{BrokerError, ErrorKind};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::ErrorBody;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    kind: ErrorKind,
    message: String,
}

impl ApiError {
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::BadInput, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::NotFound, message: message.into() }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Forbidden, message: message.into() }
    }

    pub fn unauthenticated() -> Self {
        Self::from(BrokerError::Unauthenticated)
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        let kind = error.kind();
        let message = match kind {
            ErrorKind::Internal => {
                tracing::error!(error = %error, "request failed");
                "internal error; the broker's log has the details".to_owned()
            }
            ErrorKind::Unavailable => {
                tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "request failed; retry later");
                error.to_string()
            }
            _ => error.to_string(),
        };
        Self { kind, message }
    }
}

fn status_and_code(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::BadInput => (StatusCode::BAD_REQUEST, "bad_input"),
        ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ErrorKind::MfaRequired => (StatusCode::FORBIDDEN, "mfa_required"),
        ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// Seconds a client is asked to wait before trying again while the store cannot write.
pub const RETRY_AFTER_SECONDS: u64 = 2;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = status_and_code(self.kind);
        let mut response = (status, Json(ErrorBody { code: code.to_owned(), error: self.message })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", "Bearer".parse().expect("a static header value"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert("retry-after", RETRY_AFTER_SECONDS.into());
        }
        response
    }
}
