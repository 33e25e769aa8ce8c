//! `PUT /users/{id}/balance` `{"balance"}` creates a user or sets the balance;
//! `GET /users/{id}` → `{"id", "balance"}`; `/healthz`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use saga_kit::db::Pool;
use saga_kit::http::ApiError;
use serde::Deserialize;
use serde_json::json;

/// The routes, sharing `pool`.
pub fn router(pool: Pool) -> Router {
    Router::new()
        .route("/users/{id}", get(show))
        .route("/users/{id}/balance", put(set_balance))
        .route("/healthz", get(saga_kit::http::healthz))
        .with_state(pool)
}

/// The body of `PUT /users/{id}/balance`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBalance {
    balance: i64,
}

fn user_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|e| ApiError::Invalid(format!("user id {raw:?}: {e}")))
}

async fn show(
    State(pool): State<Pool>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = user_id(&id)?;
    let client = pool.get().await?;
    let row = client
        .query_opt("SELECT balance FROM users WHERE id = $1", &[&id])
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user {id}")))?;
    Ok(Json(json!({ "id": id, "balance": row.get::<_, i64>(0) })))
}

async fn set_balance(
    State(pool): State<Pool>,
    Path(id): Path<String>,
    body: Result<Json<PutBalance>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = user_id(&id)?;
    let Json(put) = body?;
    if put.balance < 0 {
        return Err(ApiError::Invalid("balance must not be negative".to_owned()));
    }
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO users (id, balance) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance",
            &[&id, &put.balance],
        )
        .await?;
    Ok(Json(json!({ "id": id, "balance": put.balance })))
}
