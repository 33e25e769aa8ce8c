//! `saga-service order|product|delivery`: one example service, run exactly as its own
//! binary runs it (the same `saga_kit::service::main` and library `start`, settings from
//! the environment), so the saga test can run replicas as separate processes and SIGKILL
//! them. It lives here rather than the tests spawning `target/*/order-service` because
//! `cargo test -p saga-tests` builds this package's binaries, always from current code,
//! and never another package's.

use std::process::ExitCode;

use delivery_service::rule::DeliveryRule;

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("order") => {
            saga_kit::service::main(order_service::SERVICE, order_service::start).await
        }
        Some("product") => {
            saga_kit::service::main(product_service::SERVICE, product_service::start).await
        }
        Some("delivery") => {
            saga_kit::service::main(delivery_service::SERVICE, |config, shutdown| {
                delivery_service::start(config, DeliveryRule::from_env(), shutdown)
            })
            .await
        }
        other => {
            eprintln!("usage: saga-service order|product|delivery (got {other:?})");
            ExitCode::FAILURE
        }
    }
}
