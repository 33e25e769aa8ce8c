//! The JSON error every HTTP handler returns: `{"error": "..."}` with a fitting status.
//!
//! axum's own extractor rejections answer in plain text; services wrap them here so a
//! client always gets JSON, whether the body was malformed, a field was missing or a
//! value was out of range.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::db::DbError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body was not the JSON the endpoint takes (malformed, wrong type, missing field).
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
    /// Well-formed, but a value breaks a rule (e.g. a quantity below 1).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Pool(#[from] DbError),
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::Rejected {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ApiError::Rejected { status, message } => (*status, message.clone()),
            ApiError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, m.clone()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            ApiError::Db(_) | ApiError::Pool(_) => {
                tracing::error!(error = %self, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// `/healthz`: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}
