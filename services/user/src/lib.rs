//! The user service: the registration saga's entry point and the place its outcome is read.
//!
//! `POST /users` stores the user (PENDING) and a `UserRegistered` event in one transaction
//! and answers `202 Accepted` with a `Location`: the credentials are the auth service's,
//! so whether the registration succeeds is not known yet, and the client polls
//! `GET /users/{id}`. The auth service answers on `outbox.event.auth`: `AuthCreated` →
//! COMPLETED, `AuthCreationFailed` → FAILED with its reason (e.g. the login is taken).
//!
//! The password never leaves this service in clear: the event carries a salted PBKDF2
//! hash ([`password`]), which is all the auth service stores.
//!
//! # Layout
//! - [`api`]: the HTTP endpoints and request validation.
//! - [`saga`]: the reactions to the auth service's events.
//! - [`password`]: the password hash the event carries.

pub mod api;
pub mod password;
pub mod saga;

use saga_kit::config::ServiceConfig;
use saga_kit::service::{Running, ServiceError};
use tokio_util::sync::CancellationToken;

/// The service name: the default consumer group and the log target.
pub const SERVICE: &str = "user-service";
/// The users table.
pub const MIGRATION: &str = include_str!("../migrations/0001_users.sql");
/// Outbox routing: `UserRegistered` goes to topic `outbox.event.user`.
pub const AGGREGATE: &str = "user";
/// The auth service's answers.
pub const TOPICS: [&str; 1] = ["outbox.event.auth"];

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
        saga::UserSaga,
        shutdown,
    )
    .await
}
