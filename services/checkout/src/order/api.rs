//! `POST /orders` (202 + `Location`), `GET /orders/{id}` (the status to poll), `/healthz`.
//!
//! `POST /orders` writes the order (PROCESSING, with its deadline and the request's
//! `traceparent`) and `OrderProcessing` in one transaction, and takes an optional
//! `Idempotency-Key` (see `saga_kit::idempotency`): a retried request gets the first
//! order's response back instead of a second order.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_kit::db::Pool;
use saga_kit::http::ApiError;
use saga_kit::idempotency::{self, Begin, StoredResponse};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use crate::events::{self, aggregate, kind, OrderProcessing};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub pool: Pool,
    /// How long the branches may take (`CHECKOUT_DEADLINE_MS`).
    pub deadline: Duration,
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(order_status))
        .route("/healthz", get(saga_kit::http::healthz))
        .with_state(state)
}

/// The body of `POST /orders`; unknown fields are refused, `couponCode` may be omitted.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrder {
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub unit_price: i64,
    #[serde(default)]
    pub coupon_code: Option<String>,
}

impl CreateOrder {
    /// The rules serde cannot express; the first broken one is the error.
    pub fn validate(&self) -> Result<(), ApiError> {
        let rule = |ok: bool, message: &str| {
            ok.then_some(())
                .ok_or_else(|| ApiError::Invalid(message.to_owned()))
        };
        rule(self.quantity > 0, "quantity must be at least 1")?;
        rule(self.unit_price >= 0, "unitPrice must not be negative")?;
        rule(
            self.coupon_code
                .as_deref()
                .is_none_or(|c| !c.trim().is_empty()),
            "couponCode must be null or not empty",
        )
    }
}

/// The idempotency scope of `POST /orders`.
pub const CREATE_SCOPE: &str = "POST /orders";

/// The trace id (32 hex digits) in a W3C `traceparent`, if it is one.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then_some(id)
}

async fn create_order(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency::key(&headers)?;
    let Json(order) = Json::<CreateOrder>::from_bytes(&body)?;
    order.validate()?;
    let id = Uuid::new_v4();
    let span = tracing::info_span!("create_order", order_id = %id, correlation_id = %id);
    let deadline_ms = i64::try_from(state.deadline.as_millis()).unwrap_or(i64::MAX);
    async {
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        if let Some(key) = &key {
            if let Begin::Replay(stored) = idempotency::begin(&tx, CREATE_SCOPE, key, &body).await?
            {
                tracing::info!("repeated Idempotency-Key: the first response again");
                return Ok(stored);
            }
        }
        let traceparent = saga_kit::trace::current_traceparent();
        tx.execute(
            "INSERT INTO orders (id, user_id, product_id, quantity, unit_price, coupon_code, \
               status, deadline_at, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, 'PROCESSING', \
               now() + $7::float8 * interval '1 millisecond', $8)",
            &[
                &id,
                &order.user_id,
                &order.product_id,
                &order.quantity,
                &order.unit_price,
                &order.coupon_code,
                &(deadline_ms as f64),
                &traceparent,
            ],
        )
        .await?;
        let processing = OrderProcessing {
            order_id: id,
            user_id: order.user_id,
            product_id: order.product_id,
            quantity: order.quantity,
            unit_price: order.unit_price,
            coupon_code: order.coupon_code.clone(),
        };
        events::emit(
            &tx,
            aggregate::PROCESSING,
            kind::ORDER_PROCESSING,
            id,
            &processing,
        )
        .await?;
        let response = StoredResponse {
            status: StatusCode::ACCEPTED,
            body: json!({ "id": id, "status": "PROCESSING" }),
            location: Some(format!("/orders/{id}")),
        };
        if let Some(key) = &key {
            idempotency::finish(&tx, CREATE_SCOPE, key, &response).await?;
        }
        tx.commit().await?;
        tracing::info!("order accepted (PROCESSING)");
        Ok::<_, ApiError>(response)
    }
    .instrument(span)
    .await
    .map(IntoResponse::into_response)
}

async fn order_status(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|e| ApiError::Invalid(format!("order id: {e}")))?;
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            "SELECT status, reason, stock_reserved, coupon_applied, discount, unit_price, \
               quantity, traceparent FROM orders WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no order {id}")))?;
    let (status, reason): (String, Option<String>) = (row.get(0), row.get(1));
    let (discount, unit_price, quantity): (i64, i64, i32) = (row.get(4), row.get(5), row.get(6));
    let traceparent: Option<String> = row.get(7);
    Ok(Json(json!({
        "id": id,
        "status": status,
        "reason": reason,
        "stockReserved": row.get::<_, bool>(2),
        "couponApplied": row.get::<_, bool>(3),
        "discount": discount,
        "amount": events::amount(unit_price, quantity, discount),
        "traceId": traceparent.as_deref().and_then(trace_id),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<CreateOrder, String> {
        serde_json::from_str(body).map_err(|e| e.to_string())
    }

    #[test]
    fn orders_are_validated() {
        let ok =
            parse(r#"{"userId":1,"productId":2,"quantity":1,"unitPrice":0,"couponCode":null}"#)
                .unwrap();
        assert!(ok.validate().is_ok());
        let no_coupon = parse(r#"{"userId":1,"productId":2,"quantity":1,"unitPrice":5}"#).unwrap();
        assert_eq!(no_coupon.coupon_code, None);
        for bad in [
            r#"{"userId":1,"productId":2,"quantity":0,"unitPrice":5}"#,
            r#"{"userId":1,"productId":2,"quantity":1,"unitPrice":-1}"#,
            r#"{"userId":1,"productId":2,"quantity":1,"unitPrice":1,"couponCode":" "}"#,
        ] {
            assert!(parse(bad).unwrap().validate().is_err(), "{bad}");
        }
        assert!(parse(r#"{"userId":1,"productId":2,"quantity":1,"unitPrice":1,"x":1}"#).is_err());
    }

    #[test]
    fn the_trace_id_is_the_second_field_of_a_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("garbage"), None);
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
    }
}
