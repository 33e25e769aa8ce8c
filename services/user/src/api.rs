//! `POST /users` (202 + `Location`), `GET /users/{id}` (the status to poll), `/healthz`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_kit::db::Pool;
use saga_kit::http::ApiError;
use saga_kit::idempotency::{self, Begin, StoredResponse};
use saga_kit::outbox::{self, OutboxEvent};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

/// The routes, sharing `pool`.
pub fn router(pool: Pool) -> Router {
    Router::new()
        .route("/users", post(register))
        .route("/users/{id}", get(user_status))
        .route("/healthz", get(saga_kit::http::healthz))
        .with_state(pool)
}

/// Logins are 3 to 64 of `a-z`, `0-9`, `.`, `_`, `-`, compared lowercased.
pub const LOGIN_MAX: usize = 64;
/// Passwords are at least this long, at most [`PASSWORD_MAX`] bytes.
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 1_024;

/// The body of `POST /users`. Every field is required; unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Register {
    pub login: String,
    pub name: String,
    pub password: String,
}

impl Register {
    /// The rules serde cannot express; the first broken one is the error. Returns the
    /// login as stored (lowercased).
    pub fn validate(&self) -> Result<String, ApiError> {
        let rule = |ok: bool, message: &str| {
            ok.then_some(())
                .ok_or_else(|| ApiError::Invalid(message.to_owned()))
        };
        let login = self.login.trim().to_lowercase();
        rule(
            (3..=LOGIN_MAX).contains(&login.len())
                && login
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)),
            "login must be 3 to 64 of a-z, 0-9, '.', '_' and '-'",
        )?;
        rule(!self.name.trim().is_empty(), "name must not be empty")?;
        rule(
            (PASSWORD_MIN..=PASSWORD_MAX).contains(&self.password.len()),
            "password must be 8 to 1024 bytes",
        )?;
        Ok(login)
    }
}

/// The idempotency scope of `POST /users`.
pub const CREATE_SCOPE: &str = "POST /users";

/// The body is taken as bytes, so an `Idempotency-Key` can be matched against its hash
/// (see `saga_kit::idempotency`), then parsed as `Json` would.
async fn register(
    State(pool): State<Pool>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency::key(&headers)?;
    let Json(user) = Json::<Register>::from_bytes(&body)?;
    let login = user.validate()?;
    let id = Uuid::new_v4();
    // PBKDF2 is CPU work: off the async workers.
    let password = user.password;
    let password_hash = tokio::task::spawn_blocking(move || crate::password::hash(&password))
        .await
        .map_err(|e| ApiError::Invalid(format!("password hashing failed: {e}")))?;
    // What a repeat must match: the body without its password, so that no deterministic
    // function of the password is stored (a repeat with another password replays too).
    let fingerprint =
        serde_json::to_vec(&json!({ "login": login, "name": user.name })).expect("JSON of strings");
    let span = tracing::info_span!("register", user_id = %id, correlation_id = %id);
    async {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        if let Some(key) = &key {
            if let Begin::Replay(stored) =
                idempotency::begin(&tx, CREATE_SCOPE, key, &fingerprint).await?
            {
                tracing::info!("repeated Idempotency-Key: the first response again");
                return Ok(stored);
            }
        }
        tx.execute(
            "INSERT INTO users (id, login, name, status) VALUES ($1, $2, $3, 'PENDING')",
            &[&id, &login, &user.name],
        )
        .await?;
        let correlation_id = id.to_string();
        let event = OutboxEvent {
            aggregate_type: crate::AGGREGATE,
            aggregate_id: correlation_id.clone(),
            event_type: "UserRegistered",
            correlation_id: &correlation_id,
            payload: json!({
                "userId": id,
                "login": login,
                "passwordHash": password_hash,
            }),
        };
        outbox::write(&tx, &event).await?;
        let response = StoredResponse {
            status: StatusCode::ACCEPTED,
            body: json!({ "userId": id, "status": "PENDING" }),
            location: Some(format!("/users/{id}")),
        };
        if let Some(key) = &key {
            idempotency::finish(&tx, CREATE_SCOPE, key, &response).await?;
        }
        tx.commit().await?;
        tracing::info!(%login, "registration accepted (PENDING)");
        Ok::<_, ApiError>(response)
    }
    .instrument(span)
    .await
    .map(IntoResponse::into_response)
}

async fn user_status(
    State(pool): State<Pool>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|e| ApiError::Invalid(format!("user id: {e}")))?;
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT login, name, status, reason FROM users WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user {id}")))?;
    Ok(Json(json!({
        "userId": id,
        "login": row.get::<_, String>(0),
        "name": row.get::<_, String>(1),
        "status": row.get::<_, String>(2),
        "reason": row.get::<_, Option<String>>(3),
    })))
}
