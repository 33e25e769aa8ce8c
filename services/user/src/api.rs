//! `POST /users` (202 + `Location`), `GET /users/{id}` (the status to poll), `/healthz`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_kit::db::Pool;
use saga_kit::http::ApiError;
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

async fn register(
    State(pool): State<Pool>,
    body: Result<Json<Register>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(user) = body?;
    let login = user.validate()?;
    let id = Uuid::new_v4();
    // PBKDF2 is CPU work: off the async workers.
    let password = user.password;
    let password_hash = tokio::task::spawn_blocking(move || crate::password::hash(&password))
        .await
        .map_err(|e| ApiError::Invalid(format!("password hashing failed: {e}")))?;
    let span = tracing::info_span!("register", user_id = %id, correlation_id = %id);
    async {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
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
        tx.commit().await?;
        tracing::info!(%login, "registration accepted (PENDING)");
        Ok::<_, ApiError>(())
    }
    .instrument(span)
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/users/{id}"))],
        Json(json!({ "userId": id, "status": "PENDING" })),
    ))
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
