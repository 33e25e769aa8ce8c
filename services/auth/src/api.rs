//! `GET /credentials/{login}` (who holds a login, never its hash), `/healthz`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use saga_kit::db::Pool;
use saga_kit::http::ApiError;
use serde_json::json;
use uuid::Uuid;

/// The routes, sharing `pool`.
pub fn router(pool: Pool) -> Router {
    Router::new()
        .route("/credentials/{login}", get(credentials))
        .route("/healthz", get(saga_kit::http::healthz))
        .with_state(pool)
}

async fn credentials(
    State(pool): State<Pool>,
    Path(login): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let login = login.to_lowercase();
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT user_id FROM credentials WHERE login = $1",
            &[&login],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no credentials for {login}")))?;
    Ok(Json(
        json!({ "login": login, "userId": row.get::<_, Uuid>(0) }),
    ))
}
