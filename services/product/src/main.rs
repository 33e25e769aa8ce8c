//! `product-service`: settings from the environment (see `saga_kit::config`), runs until SIGTERM.

use std::process::ExitCode;

use saga_kit::config::ServiceConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    saga_kit::telemetry::init();
    let config = match ServiceConfig::from_env(product_service::SERVICE) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "bad configuration");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    saga_kit::service::cancel_on_signal(shutdown.clone());
    saga_kit::service::exit_code(product_service::start(config, shutdown).await).await
}
