//! The whole saga on loopback: one PostgreSQL cluster with the three service databases,
//! one Kafka broker, [`REPLICAS`] replicas of each service (separate processes, see
//! [`process`], each service's replicas in one consumer group) and the three relays (the
//! real `outbox-relay` binary, from the shipped `config/*-relay.toml`). [`Service`] runs a
//! service in this process instead, for tests that need no broker.
//!
//! Each test gets its own cluster and broker: slot names and topic names are fixed by the
//! shipped configs, so two environments cannot share either. Both come from the relay's
//! own test harness (`tests/common/`), watchdogs included.
#![allow(dead_code)]

pub mod diagnose;
pub mod group;
pub mod http;
#[path = "../../../../tests/common/kafka.rs"]
pub mod kafka;
#[path = "../../../../tests/common/pg.rs"]
pub mod pg;
pub mod points;
// `kafka` can start a broker behind the fault proxy; the saga tests do not use that.
pub mod process;
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
use process::ServiceProcess;
use relay::Relay;

/// Addresses containing this fail delivery (the delivery service's rule in these tests).
pub const UNDELIVERABLE: &str = "nowhere";
/// Cards containing this have their refunds declined (the payment service's gateway here).
pub const REFUND_DECLINED: &str = "refund-declined";
/// Replicas per service in a [`SagaEnv`], sharing the service's consumer group.
pub const REPLICAS: usize = 2;

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Order,
    Product,
    Delivery,
    Payment,
    User,
    Auth,
    /// The checkout saga's services (`checkout_services`, issue 17).
    CheckoutOrder,
    CheckoutProduct,
    CheckoutCoupon,
    CheckoutUser,
}

impl Kind {
    /// The order → product → delivery saga's services (what [`SagaEnv::start`] runs).
    pub const ALL: [Kind; 3] = [Kind::Order, Kind::Product, Kind::Delivery];
    /// The user registration saga's services.
    pub const REGISTRATION: [Kind; 2] = [Kind::User, Kind::Auth];
    /// The checkout saga's services: order → stock ∥ coupon → payment.
    pub const CHECKOUT: [Kind; 4] = [
        Kind::CheckoutOrder,
        Kind::CheckoutProduct,
        Kind::CheckoutCoupon,
        Kind::CheckoutUser,
    ];

    /// The service's name: the `saga-service` argument, `config/<name>-relay.toml`, and
    /// (with `-service`) its default consumer group.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Product => "product",
            Kind::Delivery => "delivery",
            Kind::Payment => "payment",
            Kind::User => "user",
            Kind::Auth => "auth",
            Kind::CheckoutOrder => "checkout-order",
            Kind::CheckoutProduct => "checkout-product",
            Kind::CheckoutCoupon => "checkout-coupon",
            Kind::CheckoutUser => "checkout-user",
        }
    }

    /// The service's database.
    pub fn db(self) -> &'static str {
        match self {
            Kind::Order => "orders",
            Kind::Product => "products",
            Kind::Delivery => "deliveries",
            Kind::Payment => "payments",
            Kind::User => "users",
            Kind::Auth => "auth",
            Kind::CheckoutOrder => "checkout_orders",
            Kind::CheckoutProduct => "checkout_products",
            Kind::CheckoutCoupon => "checkout_coupons",
            Kind::CheckoutUser => "checkout_users",
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
        Service::start_with_env(kind, cluster, bootstrap, group, &[]).await
    }

    /// [`Service::start`] with settings `env` (name, value) that the service would read
    /// from its environment beyond `ServiceConfig` (e.g. `CHECKOUT_DEADLINE_MS`), passed
    /// without touching this process's environment. Only the checkout services read any.
    pub async fn start_with_env(
        kind: Kind,
        cluster: &PgCluster,
        bootstrap: &str,
        group: &str,
        env: &[(&str, &str)],
    ) -> Service {
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
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
            Kind::Payment => {
                let gateway = payment_service::gateway::CardGateway::new(REFUND_DECLINED);
                payment_service::start(config, gateway, token).await
            }
            Kind::User => user_service::start(config, token).await,
            Kind::Auth => auth_service::start(config, token).await,
            Kind::CheckoutOrder => {
                let settings = checkout_services::settings::OrderSettings::from_lookup(lookup)
                    .expect("checkout order settings");
                checkout_services::order::start_with(config, settings, token).await
            }
            Kind::CheckoutProduct => {
                let settings = checkout_services::settings::BranchSettings::from_lookup(lookup)
                    .expect("checkout product settings");
                checkout_services::product::start_with(config, settings, token).await
            }
            Kind::CheckoutCoupon => {
                let settings = checkout_services::settings::BranchSettings::from_lookup(lookup)
                    .expect("checkout coupon settings");
                checkout_services::coupon::start_with(config, settings, token).await
            }
            Kind::CheckoutUser => checkout_services::user::start(config, token).await,
        };
        let running = started.unwrap_or_else(|e| panic!("start {}: {e}", kind.name()));
        Service {
            addr: running.addr,
            shutdown,
            task: running.task,
        }
    }

    /// A guard that cancels the service when dropped, e.g. as a failed assertion
    /// unwinds: the consumer runs on a blocking thread until cancelled, and the test's
    /// runtime waits for it on shutdown, so a failing test would hang instead of failing.
    pub fn stop_on_drop(&self) -> tokio_util::sync::DropGuard {
        self.shutdown.clone().drop_guard()
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
    /// The services of this saga, in start order; [`SagaEnv::relays`] follows it.
    pub kinds: Vec<Kind>,
    pub cluster: PgCluster,
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    /// Every replica started, killed ones included, in start order.
    pub replicas: Vec<ServiceProcess>,
    pub relays: Vec<Relay>,
    pub admin: tokio_postgres::Client,
    /// Extra environment (name, value) every replica is started with, restarts included
    /// (see [`SagaEnv::start_saga_with_env`]).
    pub env: Vec<(String, String)>,
}

impl SagaEnv {
    /// Databases, broker, services ([`REPLICAS`] each, default consumer groups), then
    /// relays, streaming. Services first: they create the outbox tables the relays publish.
    pub async fn start() -> SagaEnv {
        SagaEnv::start_saga(&Kind::ALL).await
    }

    /// [`SagaEnv::start`] for the services `kinds` (and their relays).
    pub async fn start_saga(kinds: &[Kind]) -> SagaEnv {
        SagaEnv::start_saga_with_env(kinds, &[]).await
    }

    /// [`SagaEnv::start_saga`] with extra environment `env` for every replica, e.g.
    /// `[("CHECKOUT_DEADLINE_MS", "5000"), ("CHECKOUT_JITTER_MS", "50")]` (a service
    /// ignores settings it does not read).
    pub async fn start_saga_with_env(kinds: &[Kind], env: &[(&str, &str)]) -> SagaEnv {
        init_logging();
        let cluster = PgCluster::start(PgOptions::default());
        let broker = Broker::start();
        let admin = cluster.client("postgres").await;
        for kind in kinds {
            admin
                .batch_execute(&format!("CREATE DATABASE {}", kind.db()))
                .await
                .unwrap();
        }
        let mut dir = tempfile::Builder::new().prefix("saga-").tempdir().unwrap();
        if std::env::var_os("KEEP_RELAY_LOGS").is_some() {
            dir.disable_cleanup(true);
            println!("service and relay logs in {}", dir.path().display());
        }
        let mut env = SagaEnv {
            kinds: kinds.to_vec(),
            cluster,
            broker,
            dir,
            replicas: Vec::new(),
            relays: Vec::new(),
            admin,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        env.start_services("").await;
        for kind in kinds.iter().copied() {
            let mut relay = Relay::new(
                kind.name(),
                env.cluster.port(),
                kind.db(),
                &env.broker.bootstrap(),
                env.dir.path(),
            );
            relay.start();
            relay.wait_streaming(&env.admin).await;
            env.relays.push(relay);
        }
        env
    }

    /// The consumer group of `kind` under `prefix` (`order-service` for the default
    /// prefix "", `replay-order` for "replay").
    pub fn group(kind: Kind, prefix: &str) -> String {
        if prefix.is_empty() {
            format!("{}-service", kind.name())
        } else {
            format!("{prefix}-{}", kind.name())
        }
    }

    /// The running replicas of `kind`.
    pub fn running(&self, kind: Kind) -> impl Iterator<Item = &ServiceProcess> {
        self.replicas
            .iter()
            .filter(move |r| r.kind == kind && r.is_running())
    }

    /// The HTTP address of `kind`'s first running replica.
    pub fn addr(&self, kind: Kind) -> SocketAddr {
        self.running(kind)
            .next()
            .unwrap_or_else(|| panic!("no {} replica running", kind.name()))
            .addr
    }

    /// SIGKILLs `kind`'s last running replica and returns its consumer group.
    pub fn kill_replica(&mut self, kind: Kind) -> String {
        let replica = self
            .replicas
            .iter_mut()
            .rev()
            .find(|r| r.kind == kind && r.is_running())
            .unwrap_or_else(|| panic!("no {} replica running", kind.name()));
        replica.kill9();
        replica.group.clone()
    }

    pub fn relay(&mut self, kind: Kind) -> &mut Relay {
        let at = self.index(kind);
        &mut self.relays[at]
    }

    fn index(&self, kind: Kind) -> usize {
        self.kinds
            .iter()
            .position(|&k| k == kind)
            .unwrap_or_else(|| panic!("{} is not in this saga", kind.name()))
    }

    /// Starts `kind`'s relay again and waits until it streams.
    pub async fn restart_relay(&mut self, kind: Kind) {
        let at = self.index(kind);
        let relay = &mut self.relays[at];
        relay.start();
        relay.wait_streaming(&self.admin).await;
    }

    pub async fn client(&self, kind: Kind) -> tokio_postgres::Client {
        self.cluster.client(kind.db()).await
    }

    /// Stops the running replicas cleanly (SIGTERM) before the broker and databases go away.
    pub async fn stop(mut self) {
        self.stop_services().await;
    }

    /// Stops every running replica, then starts [`REPLICAS`] of each service again under
    /// consumer groups `prefix-<name>`.
    pub async fn restart_services(&mut self, group_prefix: &str) {
        self.stop_services().await;
        self.start_services(group_prefix).await;
    }

    async fn start_services(&mut self, group_prefix: &str) {
        let bootstrap = self.broker.bootstrap();
        for kind in self.kinds.clone() {
            let group = SagaEnv::group(kind, group_prefix);
            for replica in 0..REPLICAS {
                let process = ServiceProcess::start_with_env(
                    kind,
                    &self.cluster,
                    &bootstrap,
                    &group,
                    replica,
                    self.dir.path(),
                    &self.env,
                )
                .await;
                self.replicas.push(process);
            }
        }
    }

    async fn stop_services(&mut self) {
        for replica in std::mem::take(&mut self.replicas) {
            if replica.is_running() {
                replica.stop().await;
            }
        }
    }
}

/// Polls `probe` until it returns `Ok`, or panics with `what` and the last `Err` (what
/// was seen instead) after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    try_wait_for(what, timeout, probe)
        .await
        .unwrap_or_else(|timed_out| panic!("{timed_out}"))
}

/// [`wait_for`] that returns the timeout (what was awaited and last seen) instead of
/// panicking, for a caller that gathers more evidence first.
pub async fn try_wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match probe().await {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}; last seen: {seen}"
            ));
        }
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
