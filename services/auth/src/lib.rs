//! The auth service: owns credentials.
//!
//! On `UserRegistered` it creates the user's credentials with one
//! `INSERT ... ON CONFLICT (login) DO NOTHING`: the login's primary key decides between
//! concurrent registrations of one login, so exactly one wins. It answers with
//! `AuthCreated`, or `AuthCreationFailed` with the reason (the login is taken).
//!
//! # Layout
//! - [`api`]: `GET /credentials/{login}` (who holds a login; never the hash).
//! - [`saga`]: the reaction to `UserRegistered`.

pub mod api;
pub mod saga;

use saga_kit::config::ServiceConfig;
use saga_kit::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

/// The service name: the default consumer group and the log target.
pub const SERVICE: &str = "auth-service";
/// The credentials table.
pub const MIGRATION: &str = include_str!("../migrations/0001_credentials.sql");
/// Outbox routing: the answers go to topic `outbox.event.auth`.
pub const AGGREGATE: &str = "auth";
/// New registrations.
pub const TOPICS: [&str; 1] = ["outbox.event.user"];

/// Connects, migrates, and starts the API and the consumer.
pub async fn start(
    config: ServiceConfig,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    saga_kit::service::launch(
        &config,
        MIGRATION,
        &TOPICS,
        api::router,
        saga::AuthSaga,
        shutdown,
    )
    .await
}
