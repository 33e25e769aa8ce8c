//! Test-only package: see `tests/`, and `src/bin/saga-service.rs` (the services as
//! separate processes, for the saga test's replicas).
