//! `auth-service`: settings from the environment (see `saga_kit::config`), runs until SIGTERM.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    saga_kit::service::main(auth_service::SERVICE, auth_service::start).await
}
