//! The whole saga on loopback: one PostgreSQL cluster with the three service databases,
//! one tansu broker, the three services (in this process, from their libraries) and their
//! three relays (the real `outbox-relay` binary, from the shipped `config/*-relay.toml`).
//!
//! Each test gets its own cluster and broker: slot names and topic names are fixed by the
//! shipped configs, so two environments cannot share either. Both come from the relay's
//! own test harness (`tests/common/`), watchdogs included.
#![allow(dead_code)]

pub mod http;
#[path = "../../../../tests/common/kafka.rs"]
pub mod kafka;
#[path = "../../../../tests/common/pg.rs"]
pub mod pg;
// `kafka` can start a broker behind the fault proxy; the saga tests do not use that.
#[path = "../../../../tests/common/proxy.rs"]
pub mod proxy;
pub mod relay;

use std::net::SocketAddr;
use std::time::Duration;

use saga_kit::config::ServiceConfig;
use saga_kit::service::{Running, ServiceError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use kafka::Broker;
use pg::{PgCluster, PgOptions};
use relay::Relay;

/// Addresses containing this fail delivery (the delivery service's rule in these tests).
pub const UNDELIVERABLE: &str = "nowhere";

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Order,
    Product,
    Delivery,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Order, Kind::Product, Kind::Delivery];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Product => "product",
            Kind::Delivery => "delivery",
        }
    }

    /// The service's database.
    pub fn db(self) -> &'static str {
        match self {
            Kind::Order => "orders",
            Kind::Product => "products",
            Kind::Delivery => "deliveries",
        }
    }
}

/// A service running in this process.
#[derive(Debug)]
pub struct Service {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl Service {
    /// Starts `kind` on database `db` with consumer group `group`.
    pub async fn start(kind: Kind, cluster: &PgCluster, bootstrap: &str, group: &str) -> Service {
        let config = ServiceConfig {
            database_url: cluster.url(kind.db()),
            kafka_bootstrap_servers: bootstrap.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            consumer_group: group.to_owned(),
            db_pool_size: 8,
        };
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let started: Result<Running, ServiceError> = match kind {
            Kind::Order => order_service::start(config, token).await,
            Kind::Product => product_service::start(config, token).await,
            Kind::Delivery => {
                let rule = delivery_service::rule::DeliveryRule::new(UNDELIVERABLE);
                delivery_service::start(config, rule, token).await
            }
        };
        let running = started.unwrap_or_else(|e| panic!("start {}: {e}", kind.name()));
        Service {
            addr: running.addr,
            shutdown,
            task: running.task,
        }
    }

    /// Stops it as SIGTERM would and expects a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("service task")
            .expect("service stopped cleanly");
    }
}

/// Everything a saga test runs against.
pub struct SagaEnv {
    pub cluster: PgCluster,
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    pub services: Vec<Service>,
    pub relays: Vec<Relay>,
    pub admin: tokio_postgres::Client,
}

impl SagaEnv {
    /// Databases, broker, services (default consumer groups), then relays, streaming.
    /// Services first: they create the outbox tables the relays publish.
    pub async fn start() -> SagaEnv {
        init_logging();
        let cluster = PgCluster::start(PgOptions::default());
        let broker = Broker::start();
        let admin = cluster.client("postgres").await;
        for kind in Kind::ALL {
            admin
                .batch_execute(&format!("CREATE DATABASE {}", kind.db()))
                .await
                .unwrap();
        }
        let mut services = Vec::new();
        for kind in Kind::ALL {
            let group = format!("{}-service", kind.name());
            services.push(Service::start(kind, &cluster, &broker.bootstrap(), &group).await);
        }
        let mut dir = tempfile::Builder::new().prefix("saga-").tempdir().unwrap();
        if std::env::var_os("KEEP_RELAY_LOGS").is_some() {
            dir.disable_cleanup(true);
            println!("relay logs in {}", dir.path().display());
        }
        let mut relays = Vec::new();
        for kind in Kind::ALL {
            let mut relay = Relay::new(
                kind.name(),
                cluster.port(),
                kind.db(),
                &broker.bootstrap(),
                dir.path(),
            );
            relay.start();
            relay.wait_streaming(&admin).await;
            relays.push(relay);
        }
        SagaEnv {
            cluster,
            broker,
            dir,
            services,
            relays,
            admin,
        }
    }

    pub fn addr(&self, kind: Kind) -> SocketAddr {
        self.services[kind as usize].addr
    }

    pub fn relay(&mut self, kind: Kind) -> &mut Relay {
        &mut self.relays[kind as usize]
    }

    /// Starts `kind`'s relay again and waits until it streams.
    pub async fn restart_relay(&mut self, kind: Kind) {
        let relay = &mut self.relays[kind as usize];
        relay.start();
        relay.wait_streaming(&self.admin).await;
    }

    pub async fn client(&self, kind: Kind) -> tokio_postgres::Client {
        self.cluster.client(kind.db()).await
    }

    /// Stops the services cleanly before the broker and databases go away.
    pub async fn stop(mut self) {
        for service in self.services.drain(..) {
            service.stop().await;
        }
    }

    /// Stops every service, then starts them again under consumer groups `prefix-<name>`.
    pub async fn restart_services(&mut self, group_prefix: &str) {
        for service in self.services.drain(..) {
            service.stop().await;
        }
        let bootstrap = self.broker.bootstrap();
        for kind in Kind::ALL {
            let group = format!("{group_prefix}-{}", kind.name());
            let service = Service::start(kind, &self.cluster, &bootstrap, &group).await;
            self.services.push(service);
        }
    }
}

/// Polls `probe` until it returns `Ok`, or panics with `what` and the last `Err` (what
/// was seen instead) after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match probe().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Logs to the test's captured output, filtered by `RUST_LOG` (warnings by default).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
