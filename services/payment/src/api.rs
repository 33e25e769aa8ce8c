//! `POST /payments` (202 + `Location`), `GET /payments/{id}` (the status to poll),
//! `GET /payments?status=NEEDS_ATTENTION` (what an operator must look at), `/healthz`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
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

/// The statuses a payment can have.
pub const STATUSES: [&str; 4] = ["PENDING", "COMPLETED", "REFUNDED", "NEEDS_ATTENTION"];
/// The most payments one listing returns (oldest first).
pub const LIST_LIMIT: i64 = 1_000;

/// The routes, sharing `pool`.
pub fn router(pool: Pool) -> Router {
    Router::new()
        .route("/payments", post(create_payment).get(list_payments))
        .route("/payments/{id}", get(payment_status))
        .route("/healthz", get(saga_kit::http::healthz))
        .with_state(pool)
}

/// The body of `POST /payments`. Every field is required; unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreatePayment {
    pub user_id: i64,
    pub reservation_id: i64,
    pub amount: i64,
    /// The card charged (and refunded, should points be refused).
    pub card: String,
}

impl CreatePayment {
    /// The rules serde cannot express; the first broken one is the error.
    pub fn validate(&self) -> Result<(), ApiError> {
        let rule = |ok: bool, message: &str| {
            ok.then_some(())
                .ok_or_else(|| ApiError::Invalid(message.to_owned()))
        };
        rule(self.user_id > 0, "userId must be positive")?;
        rule(self.reservation_id > 0, "reservationId must be positive")?;
        rule(self.amount > 0, "amount must be positive")?;
        rule(!self.card.trim().is_empty(), "card must not be empty")
    }
}

/// The idempotency scope of `POST /payments`.
pub const CREATE_SCOPE: &str = "POST /payments";

/// The body is taken as bytes, so an `Idempotency-Key` can be matched against its hash
/// (see `saga_kit::idempotency`), then parsed as `Json` would.
async fn create_payment(
    State(pool): State<Pool>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency::key(&headers)?;
    let Json(payment) = Json::<CreatePayment>::from_bytes(&body)?;
    payment.validate()?;
    let id = Uuid::new_v4();
    let span = tracing::info_span!("create_payment", payment_id = %id, correlation_id = %id);
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
            "INSERT INTO payments (id, user_id, reservation_id, amount, card, status) \
             VALUES ($1, $2, $3, $4, $5, 'PENDING')",
            &[
                &id,
                &payment.user_id,
                &payment.reservation_id,
                &payment.amount,
                &payment.card,
            ],
        )
        .await?;
        let correlation_id = id.to_string();
        let event = OutboxEvent {
            aggregate_type: crate::AGGREGATE,
            aggregate_id: correlation_id.clone(),
            event_type: "ReservationCompleted",
            correlation_id: &correlation_id,
            payload: json!({
                "paymentId": id,
                "reservationId": payment.reservation_id,
                "userId": payment.user_id,
                "paidAmount": payment.amount,
            }),
        };
        outbox::write(&tx, &event).await?;
        let response = StoredResponse {
            status: StatusCode::ACCEPTED,
            body: json!({ "paymentId": id, "status": "PENDING" }),
            location: Some(format!("/payments/{id}")),
        };
        if let Some(key) = &key {
            idempotency::finish(&tx, CREATE_SCOPE, key, &response).await?;
        }
        tx.commit().await?;
        tracing::info!(amount = payment.amount, "payment taken (PENDING)");
        Ok::<_, ApiError>(response)
    }
    .instrument(span)
    .await
    .map(IntoResponse::into_response)
}

fn payment_json(row: &tokio_postgres::Row) -> serde_json::Value {
    json!({
        "paymentId": row.get::<_, Uuid>("id"),
        "userId": row.get::<_, i64>("user_id"),
        "reservationId": row.get::<_, i64>("reservation_id"),
        "amount": row.get::<_, i64>("amount"),
        "status": row.get::<_, String>("status"),
        "points": row.get::<_, Option<i64>>("points"),
        "reason": row.get::<_, Option<String>>("reason"),
    })
}

const COLUMNS: &str = "id, user_id, reservation_id, amount, status, points, reason";

async fn payment_status(
    State(pool): State<Pool>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|e| ApiError::Invalid(format!("payment id: {e}")))?;
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM payments WHERE id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no payment {id}")))?;
    Ok(Json(payment_json(&row)))
}

/// `?status=`: which payments to list.
#[derive(Debug, Deserialize)]
pub struct Listing {
    pub status: String,
}

async fn list_payments(
    State(pool): State<Pool>,
    Query(listing): Query<Listing>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !STATUSES.contains(&listing.status.as_str()) {
        return Err(ApiError::Invalid(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM payments WHERE status = $1 ORDER BY created_at, id LIMIT $2"
            ),
            &[&listing.status, &LIST_LIMIT],
        )
        .await?;
    let payments: Vec<_> = rows.iter().map(payment_json).collect();
    Ok(Json(
        json!({ "status": listing.status, "payments": payments }),
    ))
}
