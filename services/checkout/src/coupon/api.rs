//! `PUT /coupons/{code}` `{"discount"}` creates an unused coupon (or changes the discount
//! of one nobody holds); `GET /coupons/{code}` → `{"code", "discount", "usedBy"}`;
//! `/healthz`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use saga_kit::db::Pool;
use saga_kit::http::ApiError;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

/// The routes, sharing `pool`.
pub fn router(pool: Pool) -> Router {
    Router::new()
        .route("/coupons/{code}", get(show).put(put))
        .route("/healthz", get(saga_kit::http::healthz))
        .with_state(pool)
}

/// The body of `PUT /coupons/{code}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutCoupon {
    discount: i64,
}

async fn show(
    State(pool): State<Pool>,
    Path(code): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT discount, used_by FROM coupons WHERE code = $1",
            &[&code],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no coupon {code}")))?;
    let (discount, used_by): (i64, Option<Uuid>) = (row.get(0), row.get(1));
    Ok(Json(
        json!({ "code": code, "discount": discount, "usedBy": used_by }),
    ))
}

/// Creating a coupon that an order holds would hand it out twice, so that is a 409.
async fn put(
    State(pool): State<Pool>,
    Path(code): Path<String>,
    body: Result<Json<PutCoupon>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(coupon) = body?;
    if coupon.discount < 0 {
        return Err(ApiError::Invalid(
            "discount must not be negative".to_owned(),
        ));
    }
    if code.trim().is_empty() {
        return Err(ApiError::Invalid(
            "the coupon code must not be empty".to_owned(),
        ));
    }
    let client = pool.get().await?;
    let written = client
        .execute(
            "INSERT INTO coupons (code, discount) VALUES ($1, $2) \
             ON CONFLICT (code) DO UPDATE SET discount = EXCLUDED.discount \
             WHERE coupons.used_by IS NULL",
            &[&code, &coupon.discount],
        )
        .await?;
    if written == 0 {
        return Err(ApiError::Rejected {
            status: StatusCode::CONFLICT,
            message: format!("coupon {code} is in use"),
        });
    }
    Ok(Json(
        json!({ "code": code, "discount": coupon.discount, "usedBy": null }),
    ))
}
