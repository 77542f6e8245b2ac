//! API errors: a status code and a one-line message for a person (docs/api.md).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use refreshd_client::types::{ErrorBody, ErrorKind};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        // One line, always: multi-line library messages are folded, and what is left that
        // could drive a terminal (a name or path a user chose, text from the store) escaped.
        let message: String = message.into();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        let message = refreshd_snap::text::printable(&message).into_owned();
        ApiError {
            body: ErrorBody::new(kind, message),
        }
    }

    pub fn with_change(mut self, change: u64) -> ApiError {
        self.body = self.body.with_change(change);
        self
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!("request failed: {e}");
        ApiError::new(
            ErrorKind::Internal,
            format!("refreshd failed: {e}; see its log for more"),
        )
    }

    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::BadRequest, msg)
    }
}

impl From<refreshd_state::Error> for ApiError {
    fn from(e: refreshd_state::Error) -> ApiError {
        match e {
            refreshd_state::Error::Conflict { snap, change } => ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "snap {snap:?} has change {change} in progress; wait for it (refreshctl watch {change}) or abort it (refreshctl abort {change})"
                ),
            )
            .with_change(change),
            refreshd_state::Error::KeyReused { key, request } => ApiError::new(
                ErrorKind::Conflict,
                format!("Idempotency-Key {key:?} was already used for a {request} request; use a fresh key"),
            ),
            e if e.is_storage_failure() => {
                tracing::error!("request failed: state database: {e}");
                ApiError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "refreshd cannot use its state database var/lib/refreshd/state.db ({e}): the filesystem holding it is full, failing or read-only; free space or repair it, then try again (after an I/O error, restart refreshd)"
                    ),
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::ops::OpError> for ApiError {
    fn from(e: crate::ops::OpError) -> ApiError {
        use crate::ops::OpError;
        match e {
            OpError::State(e) => e.into(),
            OpError::Internal(m) => ApiError::internal(m),
            e => ApiError::new(e.kind(), e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.body.error.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body)).into_response()
    }
}

pub use refreshd_snap::text::quote;
