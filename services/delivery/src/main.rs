//! `delivery-service`: settings from the environment (see `saga_kit::config`,
//! plus `UNDELIVERABLE_ADDRESS_CONTAINS`), runs until SIGTERM.

use std::process::ExitCode;

use saga_kit::config::ServiceConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    saga_kit::telemetry::init();
    let config = match ServiceConfig::from_env(delivery_service::SERVICE) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "bad configuration");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    saga_kit::service::cancel_on_signal(shutdown.clone());
    saga_kit::service::exit_code(
        delivery_service::start(
            config,
            delivery_service::rule::DeliveryRule::from_env(),
            shutdown,
        )
        .await,
    )
    .await
}
