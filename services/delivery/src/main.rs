//! `delivery-service`: settings from the environment (see `saga_kit::config`,
//! plus `UNDELIVERABLE_ADDRESS_CONTAINS`), runs until SIGTERM.

use std::process::ExitCode;

use delivery_service::rule::DeliveryRule;

#[tokio::main]
async fn main() -> ExitCode {
    saga_kit::service::main(delivery_service::SERVICE, |config, shutdown| {
        delivery_service::start(config, DeliveryRule::from_env(), shutdown)
    })
    .await
}
