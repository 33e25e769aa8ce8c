//! `PUT /products/{id}` `{"stock"}` creates a product or sets its stock (how tests and the
//! demo stock the shop); `GET /products/{id}` → `{"id", "stock"}`; `/healthz`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use saga_kit::db::Pool;
use saga_kit::http::ApiError;
use serde::Deserialize;
use serde_json::json;

/// The routes, sharing `pool`.
pub fn router(pool: Pool) -> Router {
    Router::new()
        .route("/products/{id}", get(show).put(put))
        .route("/healthz", get(saga_kit::http::healthz))
        .with_state(pool)
}

/// The body of `PUT /products/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutProduct {
    stock: i32,
}

fn product_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|e| ApiError::Invalid(format!("product id {raw:?}: {e}")))
}

async fn show(
    State(pool): State<Pool>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = product_id(&id)?;
    let client = pool.get().await?;
    let row = client
        .query_opt("SELECT stock FROM products WHERE id = $1", &[&id])
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no product {id}")))?;
    Ok(Json(json!({ "id": id, "stock": row.get::<_, i32>(0) })))
}

async fn put(
    State(pool): State<Pool>,
    Path(id): Path<String>,
    body: Result<Json<PutProduct>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = product_id(&id)?;
    let Json(product) = body?;
    if product.stock < 0 {
        return Err(ApiError::Invalid("stock must not be negative".to_owned()));
    }
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO products (id, stock) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET stock = EXCLUDED.stock",
            &[&id, &product.stock],
        )
        .await?;
    Ok(Json(json!({ "id": id, "stock": product.stock })))
}
