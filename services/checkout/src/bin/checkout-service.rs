//! `checkout-service order|product|coupon|user`: one checkout service, settings from the
//! environment (`saga_kit::config` and `checkout_services::settings`), until SIGTERM.
//! One binary for the four: they are one crate, and each deployment runs one of them
//! with its own database and relay.

use std::process::ExitCode;

use checkout_services::{coupon, order, product, user};

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("order") => saga_kit::service::main(order::SERVICE, order::start).await,
        Some("product") => saga_kit::service::main(product::SERVICE, product::start).await,
        Some("coupon") => saga_kit::service::main(coupon::SERVICE, coupon::start).await,
        Some("user") => saga_kit::service::main(user::SERVICE, user::start).await,
        other => {
            eprintln!("usage: checkout-service order|product|coupon|user (got {other:?})");
            ExitCode::FAILURE
        }
    }
}
