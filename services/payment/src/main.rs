//! `payment-service`: settings from the environment (see `saga_kit::config` and
//! [`payment_service::gateway`]), runs until SIGTERM.

use std::process::ExitCode;

use payment_service::gateway::CardGateway;

#[tokio::main]
async fn main() -> ExitCode {
    saga_kit::service::main(payment_service::SERVICE, |config, shutdown| {
        payment_service::start(config, CardGateway::from_env(), shutdown)
    })
    .await
}
