//! `POST /orders` (202 + `Location`), `GET /orders/{id}` (the status to poll), `/healthz`.
//!
//! `POST /orders` takes an optional `Idempotency-Key` header (see
//! `saga_kit::idempotency`): a client retrying a request it got no answer to sends the
//! same key, and gets the first order's response back instead of a second order.

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
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(order_status))
        .route("/healthz", get(saga_kit::http::healthz))
        .with_state(pool)
}

/// The body of `POST /orders`. Every field is required; unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrder {
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub price: i64,
    pub address: String,
}

impl CreateOrder {
    /// The rules serde cannot express; the first broken one is the error.
    pub fn validate(&self) -> Result<(), ApiError> {
        let rule = |ok: bool, message: &str| {
            ok.then_some(())
                .ok_or_else(|| ApiError::Invalid(message.to_owned()))
        };
        rule(self.user_id > 0, "userId must be positive")?;
        rule(self.product_id > 0, "productId must be positive")?;
        rule(self.quantity > 0, "quantity must be at least 1")?;
        rule(self.price >= 0, "price must not be negative")?;
        rule(!self.address.trim().is_empty(), "address must not be empty")
    }
}

/// The idempotency scope of `POST /orders`.
pub const CREATE_SCOPE: &str = "POST /orders";

/// The body is taken as bytes, so an `Idempotency-Key` can be matched against its hash,
/// then parsed as `Json` would (a malformed body is refused before any key is stored).
async fn create_order(
    State(pool): State<Pool>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency::key(&headers)?;
    let Json(order) = Json::<CreateOrder>::from_bytes(&body)?;
    order.validate()?;
    let id = Uuid::new_v4();
    let span = tracing::info_span!("create_order", order_id = %id, correlation_id = %id);
    async {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        if let Some(key) = &key {
            if let Begin::Replay(stored) = idempotency::begin(&tx, CREATE_SCOPE, key, &body).await?
            {
                tracing::info!("repeated Idempotency-Key: the first response again");
                return Ok(stored);
            }
        }
        tx.execute(
            "INSERT INTO orders (id, user_id, product_id, quantity, price, address, status) \
             VALUES ($1, $2, $3, $4, $5, $6, 'PENDING')",
            &[
                &id,
                &order.user_id,
                &order.product_id,
                &order.quantity,
                &order.price,
                &order.address,
            ],
        )
        .await?;
        let correlation_id = id.to_string();
        let event = OutboxEvent {
            aggregate_type: crate::AGGREGATE,
            aggregate_id: correlation_id.clone(),
            event_type: "OrderCreated",
            correlation_id: &correlation_id,
            payload: json!({
                "orderId": id,
                "userId": order.user_id,
                "productId": order.product_id,
                "quantity": order.quantity,
                "price": order.price,
                "address": order.address,
            }),
        };
        outbox::write(&tx, &event).await?;
        let response = StoredResponse {
            status: StatusCode::ACCEPTED,
            body: json!({ "orderId": id, "status": "PENDING" }),
            location: Some(format!("/orders/{id}")),
        };
        if let Some(key) = &key {
            idempotency::finish(&tx, CREATE_SCOPE, key, &response).await?;
        }
        tx.commit().await?;
        tracing::info!("order accepted (PENDING)");
        Ok::<_, ApiError>(response)
    }
    .instrument(span)
    .await
    .map(IntoResponse::into_response)
}

async fn order_status(
    State(pool): State<Pool>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|e| ApiError::Invalid(format!("order id: {e}")))?;
    let client = pool.get().await?;
    let row = client
        .query_opt("SELECT status, reason FROM orders WHERE id = $1", &[&id])
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no order {id}")))?;
    let (status, reason): (String, Option<String>) = (row.get(0), row.get(1));
    Ok(Json(
        json!({ "orderId": id, "status": status, "reason": reason }),
    ))
}
