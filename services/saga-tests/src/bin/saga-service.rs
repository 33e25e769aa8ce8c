//! `saga-service order|product|delivery|payment|user|auth|checkout-order|checkout-product|
//! checkout-coupon|checkout-user`: one example service, run exactly as its own
//! binary runs it (the same `saga_kit::service::main` and library `start`, settings from
//! the environment), so the saga test can run replicas as separate processes and SIGKILL
//! them. It lives here rather than the tests spawning `target/*/order-service` because
//! `cargo test -p saga-tests` builds this package's binaries, always from current code,
//! and never another package's.

use std::process::ExitCode;

use checkout_services as checkout;
use delivery_service::rule::DeliveryRule;
use payment_service::gateway::CardGateway;

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
        Some("payment") => {
            saga_kit::service::main(payment_service::SERVICE, |config, shutdown| {
                payment_service::start(config, CardGateway::from_env(), shutdown)
            })
            .await
        }
        Some("user") => saga_kit::service::main(user_service::SERVICE, user_service::start).await,
        Some("auth") => saga_kit::service::main(auth_service::SERVICE, auth_service::start).await,
        // The checkout saga (issue 17); each reads its CHECKOUT_* settings in `start`.
        Some("checkout-order") => {
            saga_kit::service::main(checkout::order::SERVICE, checkout::order::start).await
        }
        Some("checkout-product") => {
            saga_kit::service::main(checkout::product::SERVICE, checkout::product::start).await
        }
        Some("checkout-coupon") => {
            saga_kit::service::main(checkout::coupon::SERVICE, checkout::coupon::start).await
        }
        Some("checkout-user") => {
            saga_kit::service::main(checkout::user::SERVICE, checkout::user::start).await
        }
        other => {
            eprintln!(
                "usage: saga-service order|product|delivery|payment|user|auth|checkout-order|\
                 checkout-product|checkout-coupon|checkout-user (got {other:?})"
            );
            ExitCode::FAILURE
        }
    }
}
