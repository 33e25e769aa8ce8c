//! Runs one service: its HTTP API and its consumer, side by side, until shutdown.
//!
//! Either half ending ends the service (an HTTP server that cannot serve or a consumer
//! that cannot consume is a broken service, better restarted by its supervisor than left
//! half alive). SIGTERM/SIGINT stop both: the server finishes its in-flight requests, the
//! consumer stops between transactions, so nothing is half applied.
//!
//! Both halves continue the caller's trace: a request its `traceparent` header, an event
//! its record's (see [`crate::trace`]), so whatever a service writes belongs to the trace
//! that caused it.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ServiceConfig;
use crate::consumer::{self, ConsumerError, ConsumerSettings, Handler};
use crate::db::{DbError, Pool};

/// Why a service stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error(transparent)]
    Db(#[from] DbError),
    /// A setting a service reads in its own `start` (beyond [`ServiceConfig`]) is bad;
    /// the message names the variable.
    #[error("bad configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// A started service: where it listens and the task that ends when it stops.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub task: JoinHandle<Result<(), ServiceError>>,
}

/// Everything a service's `main` does: logging, settings from the environment (for
/// `service`, the default consumer group), signals, `start`, and the exit code.
pub async fn main<F, Fut>(service: &str, start: F) -> ExitCode
where
    F: FnOnce(ServiceConfig, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<Running, ServiceError>>,
{
    crate::telemetry::init();
    let config = match ServiceConfig::from_env(service) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "bad configuration");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let code = exit_code(start(config, shutdown).await).await;
    crate::telemetry::shutdown();
    code
}

/// Connects to the service's database, applies the shared messaging tables and
/// `migration`, then [`start`]s the routes `routes` builds and a consumer of `topics`
/// applying events with `saga`.
pub async fn launch<H: Handler>(
    config: &ServiceConfig,
    migration: &str,
    topics: &[&str],
    routes: impl FnOnce(Pool) -> Router,
    saga: H,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    let pool = Pool::connect(&config.database_url, config.db_pool_size).await?;
    pool.migrate(&[crate::MESSAGING_MIGRATION, migration])
        .await?;
    let settings = ConsumerSettings {
        bootstrap_servers: config.kafka_bootstrap_servers.clone(),
        group: config.consumer_group.clone(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
    };
    start(
        config.listen,
        routes(pool.clone()),
        settings,
        pool,
        saga,
        shutdown,
    )
    .await
}

/// Binds `listen`, then serves `router` (plus `GET /metrics`), each request in a span
/// continuing its `traceparent` header ([`crate::trace::continue_request`]), and consumes
/// with `handler` until `shutdown`.
pub async fn start<H: Handler>(
    listen: SocketAddr,
    router: Router,
    consumer_settings: ConsumerSettings,
    pool: Pool,
    handler: H,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServiceError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServiceError::Bind {
        addr: listen,
        source,
    })?;
    // Every service serves its metrics on its own port (see `prometheus`).
    crate::prometheus::install();
    // Every request runs in a span continuing its caller's `traceparent` (see `trace`).
    let router = router
        .merge(crate::prometheus::route())
        .layer(axum::middleware::from_fn(crate::trace::continue_request));
    let stop = shutdown.child_token();
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
            .map_err(ServiceError::Serve)
    });
    let consumer = tokio::spawn(consumer::run(
        consumer_settings,
        pool,
        handler,
        stop.clone(),
    ));
    // Whichever half ends first stops the other; the service ends when both have.
    let task = tokio::spawn(async move {
        let (server, consumer) = tokio::join!(
            async {
                let result = flatten(server.await);
                stop.cancel();
                result
            },
            async {
                let result = flatten(consumer.await.map(|r| r.map_err(ServiceError::from)));
                stop.cancel();
                result
            },
        );
        server.and(consumer)
    });
    tracing::info!(%addr, "listening");
    Ok(Running { addr, task })
}

fn flatten(
    joined: Result<Result<(), ServiceError>, tokio::task::JoinError>,
) -> Result<(), ServiceError> {
    joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Cancels `shutdown` at the first SIGTERM or SIGINT.
pub fn cancel_on_signal(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    });
}

/// Waits for a started service and turns its outcome into the process exit code.
pub async fn exit_code(started: Result<Running, impl std::fmt::Display>) -> ExitCode {
    let running = match started {
        Ok(running) => running,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    match flatten(running.task.await) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    }
}
