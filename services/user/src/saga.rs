//! How the user service closes a registration when the auth service answers.
//!
//! A registration leaves PENDING once, and only from PENDING, so a late or repeated answer
//! is harmless even beyond the inbox's guarantee.

use saga_kit::consumer::{Event, HandleError, Handler};
use serde::Deserialize;
use tokio_postgres::Transaction;
use uuid::Uuid;

/// `AuthCreated` (`{"userId"}`) and `AuthCreationFailed` (`{"userId", "reason"}`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    user_id: Uuid,
    reason: Option<String>,
}

/// The user service's [`Handler`].
#[derive(Debug, Clone, Copy)]
pub struct UserSaga;

impl Handler for UserSaga {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandleError> {
        let (status, answer) = match event.event_type.as_str() {
            "AuthCreated" => ("COMPLETED", event.parse::<Answer>()?),
            "AuthCreationFailed" => {
                let mut answer: Answer = event.parse()?;
                answer
                    .reason
                    .get_or_insert_with(|| "no reason given".into());
                ("FAILED", answer)
            }
            other => {
                return Err(HandleError::permanent(format!(
                    "unknown event type {other:?} on {}: the user service handles AuthCreated and AuthCreationFailed",
                    event.topic
                )))
            }
        };
        let reason = if status == "FAILED" {
            answer.reason
        } else {
            None
        };
        let changed = tx
            .execute(
                "UPDATE users SET status = $2, reason = $3, updated_at = now() \
                 WHERE id = $1 AND status = 'PENDING'",
                &[&answer.user_id, &status, &reason],
            )
            .await?;
        if changed == 1 {
            tracing::info!(status, reason = ?reason, "registration closed");
        } else {
            tracing::warn!(
                status,
                "registration not pending (unknown or closed); nothing to do"
            );
        }
        Ok(())
    }
}
