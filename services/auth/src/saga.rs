//! How the auth service reacts to a registration: create the credentials, or say why not.

use saga_kit::consumer::{Event, HandleError, Handler};
use saga_kit::outbox::{self, OutboxEvent};
use serde::Deserialize;
use serde_json::json;
use tokio_postgres::Transaction;
use uuid::Uuid;

/// `UserRegistered`: `{"userId", "login", "passwordHash"}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Registered {
    user_id: Uuid,
    login: String,
    password_hash: String,
}

/// The auth service's [`Handler`].
#[derive(Debug, Clone, Copy)]
pub struct AuthSaga;

impl Handler for AuthSaga {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandleError> {
        match event.event_type.as_str() {
            "UserRegistered" => create(tx, &event.parse()?, &event.correlation_id).await,
            other => Err(HandleError::permanent(format!(
                "unknown event type {other:?} on {}: the auth service handles UserRegistered",
                event.topic
            ))),
        }
    }
}

async fn create(
    tx: &Transaction<'_>,
    user: &Registered,
    correlation_id: &str,
) -> Result<(), HandleError> {
    let created = tx
        .execute(
            "INSERT INTO credentials (login, user_id, password_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (login) DO NOTHING",
            &[&user.login, &user.user_id, &user.password_hash],
        )
        .await?
        == 1;
    let (event_type, payload) = if created {
        tracing::info!(login = %user.login, "credentials created");
        ("AuthCreated", json!({ "userId": user.user_id }))
    } else {
        let reason = format!("login {} is already taken", user.login);
        tracing::info!(%reason, "credentials not created");
        (
            "AuthCreationFailed",
            json!({ "userId": user.user_id, "reason": reason }),
        )
    };
    let event = OutboxEvent {
        aggregate_type: crate::AGGREGATE,
        aggregate_id: user.user_id.to_string(),
        event_type,
        correlation_id,
        payload,
    };
    outbox::write(tx, &event).await?;
    Ok(())
}
