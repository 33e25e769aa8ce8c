//! The checkout aggregator's join (issue 17, "Join order test"): `StockReserved` and
//! `CouponApplied` in either order, duplicated, a failure after a success, and answers
//! after the deadline cancelled the order. Each case checks the order's final status and
//! that its `OrderProcessingSucceeded` exists exactly once (or not at all), both as an
//! outbox row and as a Kafka record on `outbox.event.order.processing.success`.
//!
//! Real PostgreSQL, a real broker, **two** replicas of the checkout order service in this
//! process (one consumer group, so the stock and coupon topics' partitions are split
//! between them and two answers of one order are applied concurrently by different
//! replicas, two deadline sweepers race for the same overdue order) and its relay (the real
//! binary, from `config/checkout-order-relay.toml`).
//!
//! # Why the branch answers are produced by the test
//! The answers are produced straight to `outbox.event.order.processing.stock.success`,
//! `….coupon.success` and `….fail`, exactly as the product and coupon relays publish them
//! (key = order id, headers `id`, `eventType`, `correlationId`, camelCase JSON), rather
//! than by running the product and coupon services: the join's cases are about *which*
//! answers arrive in *what* order, and the real branches answer each order once, in an
//! order nobody controls. Producing them lets a case redeliver the very same record (same
//! `id`), send a second distinct `StockReserved`, send a success and then a failure, or
//! answer after the deadline, deterministically. The branches' own rules are unit-tested
//! in `checkout_services::{product, coupon}::saga`; the whole saga with the real services
//! is the saga test's.
//!
//! # Two replicas at the same instant, deterministically
//! Two answers consumed by two replicas rarely meet inside the few microseconds between
//! reading the order and writing it, so the end-to-end case alone would pass even without
//! the row lock. [`concurrent_answers_take_turns_on_the_order_row`] therefore calls the
//! aggregator itself (`checkout_services::order::aggregator::apply`, as each replica's
//! consumer does) in two transactions on two connections and holds the first open until
//! the second is seen waiting for a lock, then commits: the second must decide on what the
//! first committed. Without `FOR UPDATE` it would decide on a stale read and the pair would
//! never complete. The same holds the deadline sweeper off an order the aggregator holds
//! (`SKIP LOCKED`).
//!
//! # Synchronisation
//! No sleeps: a produced record's (partition, offset) is known, and the test waits until
//! the order service's stored position for that partition (`consumer_offsets`, committed
//! in the same transaction as the record's effect) has passed it. The deadline is made to
//! pass by moving the order's `deadline_at` to now, instead of waiting for it; the
//! service's deadline is otherwise far away, so no other case can time out.

#[path = "support/checkout.rs"]
mod checkout;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use checkout_services::events::topic;
use checkout_services::order::aggregator::{self, Answer, Step};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use support::http::request;
use support::kafka::Broker;
use support::pg::{PgCluster, PgOptions};
use support::relay::Relay;
use support::{wait_for, Kind, Service};
use tokio_postgres::Client;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(90);
const GROUP: &str = "checkout-order-service";
const UNIT_PRICE: i64 = 1000;
const QUANTITY: i32 = 2;
const DISCOUNT: i64 = 300;
/// Orders whose two answers are produced back to back, to be applied concurrently.
const CONCURRENT_ORDERS: usize = 20;

struct Env {
    broker: Broker,
    db: Client,
    producer: FutureProducer,
    addr: SocketAddr,
}

/// One produced record: where it landed.
#[derive(Debug, Clone, Copy)]
struct Sent {
    topic: &'static str,
    partition: i32,
    offset: i64,
}

impl Env {
    /// `POST /orders` with a coupon; the order id.
    async fn create_order(&self) -> Uuid {
        let body = json!({
            "userId": 7, "productId": 3, "quantity": QUANTITY, "unitPrice": UNIT_PRICE,
            "couponCode": "WELCOME",
        });
        let response = request(self.addr, "POST", "/orders", Some(&body.to_string())).await;
        assert_eq!(response.status, 202, "{}", response.body);
        let id: Uuid = response.json()["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            response.header("location"),
            Some(format!("/orders/{id}").as_str())
        );
        id
    }

    /// Produces an event as a branch's relay would, with event id `id`.
    async fn produce(
        &self,
        topic: &'static str,
        event_type: &str,
        order: Uuid,
        id: Uuid,
        payload: Value,
    ) -> Sent {
        let (order, id) = (order.to_string(), id.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "id",
                value: Some(id.as_bytes()),
            })
            .insert(Header {
                key: "eventType",
                value: Some(event_type.as_bytes()),
            })
            .insert(Header {
                key: "correlationId",
                value: Some(order.as_bytes()),
            });
        let value = payload.to_string();
        let record = FutureRecord::to(topic)
            .key(&order)
            .payload(&value)
            .headers(headers);
        let delivery = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        Sent {
            topic,
            partition: delivery.partition,
            offset: delivery.offset,
        }
    }

    async fn stock(&self, order: Uuid, id: Uuid) -> Sent {
        let payload = json!({ "orderId": order, "productId": 3, "quantity": QUANTITY });
        self.produce(topic::STOCK_SUCCESS, "StockReserved", order, id, payload)
            .await
    }

    async fn coupon(&self, order: Uuid, id: Uuid) -> Sent {
        let payload = json!({ "orderId": order, "couponCode": "WELCOME", "discount": DISCOUNT });
        self.produce(topic::COUPON_SUCCESS, "CouponApplied", order, id, payload)
            .await
    }

    async fn coupon_failed(&self, order: Uuid, reason: &str) -> Sent {
        let payload = json!({ "orderId": order, "branch": "coupon", "reason": reason });
        let id = Uuid::new_v4();
        self.produce(
            topic::PROCESSING_FAIL,
            "OrderProcessingFailed",
            order,
            id,
            payload,
        )
        .await
    }

    /// Waits until the order service has applied (or ignored) every record of `sent`:
    /// its stored position of each record's partition is past the record.
    async fn consumed(&self, sent: &[Sent]) {
        for s in sent {
            wait_for(&format!("{s:?} consumed"), TIMEOUT, || async {
                let row = self
                    .db
                    .query_opt(
                        "SELECT next_offset FROM consumer_offsets \
                         WHERE group_id = $1 AND topic = $2 AND partition = $3",
                        &[&GROUP, &s.topic, &s.partition],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                match row.map(|r| r.get::<_, i64>(0)) {
                    Some(next) if next > s.offset => Ok(()),
                    seen => Err(format!("stored position {seen:?}")),
                }
            })
            .await;
        }
    }

    /// `GET /orders/{id}`.
    async fn order(&self, id: Uuid) -> Value {
        let response = request(self.addr, "GET", &format!("/orders/{id}"), None).await;
        assert_eq!(response.status, 200, "{}", response.body);
        response.json()
    }

    /// Waits until the order's status is `status`; the order as `GET /orders/{id}` shows it.
    async fn status(&self, id: Uuid, status: &str) -> Value {
        wait_for(&format!("order {id} {status}"), TIMEOUT, || async {
            let order = self.order(id).await;
            if order["status"] == status {
                Ok(order)
            } else {
                Err(order.to_string())
            }
        })
        .await
    }

    /// The order's outbox rows of aggregate type `aggregate`, payloads.
    async fn outbox(&self, id: Uuid, aggregate: &str) -> Vec<Value> {
        self.db
            .query(
                "SELECT payload FROM outbox WHERE aggregateid = $1 AND aggregatetype = $2",
                &[&id.to_string(), &aggregate],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Asserts the order has exactly `n` `OrderProcessingSucceeded` rows, and that each
    /// says what the user pays.
    async fn successes(&self, id: Uuid, n: usize, case: &str) {
        let rows = self.outbox(id, "order.processing.success").await;
        assert_eq!(rows.len(), n, "{case}: success rows of {id}: {rows:?}");
        let amount = UNIT_PRICE * i64::from(QUANTITY) - DISCOUNT;
        for row in rows {
            assert_eq!(
                row,
                json!({ "orderId": id, "userId": 7, "amount": amount }),
                "{case}"
            );
        }
    }
}

/// Stock first, then coupon.
async fn stock_before_coupon(env: &Env) -> Uuid {
    let id = env.create_order().await;
    let first = env.stock(id, Uuid::new_v4()).await;
    env.consumed(&[first]).await;
    let half = env.order(id).await;
    assert_eq!(
        (
            &half["status"],
            &half["stockReserved"],
            &half["couponApplied"]
        ),
        (&json!("PROCESSING"), &json!(true), &json!(false)),
        "stock before coupon: one answer in: {half}"
    );
    let second = env.coupon(id, Uuid::new_v4()).await;
    env.consumed(&[second]).await;
    let order = env.status(id, "PAYING").await;
    assert_eq!(order["amount"], UNIT_PRICE * 2 - DISCOUNT, "{order}");
    env.successes(id, 1, "stock before coupon").await;
    id
}

/// Coupon first, then stock.
async fn coupon_before_stock(env: &Env) -> Uuid {
    let id = env.create_order().await;
    let first = env.coupon(id, Uuid::new_v4()).await;
    env.consumed(&[first]).await;
    let half = env.order(id).await;
    assert_eq!(
        (
            &half["status"],
            &half["stockReserved"],
            &half["couponApplied"]
        ),
        (&json!("PROCESSING"), &json!(false), &json!(true)),
        "coupon before stock: one answer in: {half}"
    );
    let second = env.stock(id, Uuid::new_v4()).await;
    env.consumed(&[second]).await;
    env.status(id, "PAYING").await;
    env.successes(id, 1, "coupon before stock").await;
    id
}

/// Duplicates before and after the pair completes: the same `StockReserved` record
/// redelivered (same event id), a second `StockReserved` with another id, and both
/// answers again (new ids) once the order is PAYING.
async fn duplicated(env: &Env) -> Uuid {
    let id = env.create_order().await;
    let stock_id = Uuid::new_v4();
    let before = [
        env.stock(id, stock_id).await,
        env.stock(id, stock_id).await,
        env.stock(id, Uuid::new_v4()).await,
    ];
    env.consumed(&before).await;
    let half = env.order(id).await;
    assert_eq!(half["status"], "PROCESSING", "duplicated stock: {half}");
    let coupon_id = Uuid::new_v4();
    let completing = env.coupon(id, coupon_id).await;
    env.consumed(&[completing]).await;
    env.status(id, "PAYING").await;
    let after = [
        env.coupon(id, coupon_id).await,
        env.coupon(id, Uuid::new_v4()).await,
        env.stock(id, stock_id).await,
        env.stock(id, Uuid::new_v4()).await,
    ];
    env.consumed(&after).await;
    let order = env.order(id).await;
    assert_eq!(order["status"], "PAYING", "duplicated: {order}");
    env.successes(id, 1, "duplicated").await;
    id
}

/// A branch fails after the other succeeded: CANCELLED with the failure's reason, and a
/// late success of the failed branch does not revive the order.
async fn fail_after_success(env: &Env) -> Uuid {
    let id = env.create_order().await;
    let stock = env.stock(id, Uuid::new_v4()).await;
    env.consumed(&[stock]).await;
    let failed = env
        .coupon_failed(id, "coupon WELCOME is already used")
        .await;
    env.consumed(&[failed]).await;
    let order = env.status(id, "CANCELLED").await;
    assert_eq!(order["reason"], "coupon WELCOME is already used", "{order}");
    let late = env.coupon(id, Uuid::new_v4()).await;
    env.consumed(&[late]).await;
    let order = env.order(id).await;
    assert_eq!(order["status"], "CANCELLED", "fail after success: {order}");
    env.successes(id, 0, "fail after success").await;
    id
}

/// Only stock answers; the deadline passes (both replicas' sweepers race for it): the
/// order is cancelled once, with the deadline's `OrderProcessingFailed`, and the coupon
/// answering late changes nothing.
async fn late_after_deadline(env: &Env) -> Uuid {
    let id = env.create_order().await;
    let stock = env.stock(id, Uuid::new_v4()).await;
    env.consumed(&[stock]).await;
    env.db
        .execute(
            "UPDATE orders SET deadline_at = now() WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let order = env.status(id, "CANCELLED").await;
    let reason = "deadline: no answer from coupon";
    assert_eq!(order["reason"], reason, "{order}");
    let failures = env.outbox(id, "order.processing.fail").await;
    assert_eq!(
        failures,
        [json!({ "orderId": id, "branch": "deadline", "reason": reason })],
        "one deadline failure, however many sweepers"
    );
    let late = [
        env.coupon(id, Uuid::new_v4()).await,
        env.stock(id, Uuid::new_v4()).await,
    ];
    env.consumed(&late).await;
    let order = env.order(id).await;
    assert_eq!(order["status"], "CANCELLED", "late after deadline: {order}");
    env.successes(id, 0, "late after deadline").await;
    id
}

/// Both answers of each order produced back to back: with the two topics' partitions
/// split over two replicas, the answers of one order are applied at the same moment.
async fn concurrent(env: &Env) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..CONCURRENT_ORDERS {
        ids.push(env.create_order().await);
    }
    let mut sent = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        // Alternate which answer is produced first.
        if i % 2 == 0 {
            sent.push(env.stock(id, Uuid::new_v4()).await);
            sent.push(env.coupon(id, Uuid::new_v4()).await);
        } else {
            sent.push(env.coupon(id, Uuid::new_v4()).await);
            sent.push(env.stock(id, Uuid::new_v4()).await);
        }
    }
    env.consumed(&sent).await;
    for &id in &ids {
        env.status(id, "PAYING").await;
        env.successes(id, 1, "concurrent").await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aggregator_emits_processing_success_exactly_once_in_every_join_order() {
    support::init_logging();
    let cluster = PgCluster::start(PgOptions::default());
    let broker = Broker::start();
    let admin = cluster.client("postgres").await;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", Kind::CheckoutOrder.db()))
        .await
        .unwrap();
    let bootstrap = broker.bootstrap();
    // The consumed topics exist from the start, so the group assigns them at once.
    for topic in checkout_services::order::TOPICS {
        broker.create_topic(topic, 3).await;
    }
    // A deadline no case waits for; the deadline case moves its order's deadline instead.
    let settings = [
        ("CHECKOUT_DEADLINE_MS", "600000"),
        ("CHECKOUT_SWEEP_MS", "100"),
    ];
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let service =
            Service::start_with_env(Kind::CheckoutOrder, &cluster, &bootstrap, GROUP, &settings)
                .await;
        replicas.push(service);
    }
    let _stop: Vec<_> = replicas.iter().map(Service::stop_on_drop).collect();
    let dir = tempfile::Builder::new()
        .prefix("checkout-join-")
        .tempdir()
        .unwrap();
    let mut relay = Relay::new(
        Kind::CheckoutOrder.name(),
        cluster.port(),
        Kind::CheckoutOrder.db(),
        &bootstrap,
        dir.path(),
    );
    relay.start();
    relay.wait_streaming(&admin).await;
    wait_for("both replicas own partitions", TIMEOUT, || async {
        let members = support::group::assignments(&broker, GROUP)?;
        if members.len() == 2 && members.iter().all(|(_, owned)| *owned > 0) {
            Ok(())
        } else {
            Err(format!("{members:?}"))
        }
    })
    .await;
    let env = Env {
        db: cluster.client(Kind::CheckoutOrder.db()).await,
        producer: broker.client_config().create().expect("producer"),
        addr: replicas[0].addr,
        broker,
    };

    let (a, b, c, d, e, many) = tokio::join!(
        stock_before_coupon(&env),
        coupon_before_stock(&env),
        duplicated(&env),
        fail_after_success(&env),
        late_after_deadline(&env),
        concurrent(&env),
    );
    let mut expected: BTreeMap<String, usize> = [(a, 1), (b, 1), (c, 1), (d, 0), (e, 0)]
        .into_iter()
        .chain(many.into_iter().map(|id| (id, 1)))
        .map(|(id, n)| (id.to_string(), n))
        .collect();

    // Kafka: every success row published, then the topic read to its end.
    let rows: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM outbox WHERE aggregatetype = 'order.processing.success'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let total: usize = expected.values().sum();
    assert_eq!(rows, total as i64, "success rows in the outbox");
    env.broker
        .consume_count(&[topic::PROCESSING_SUCCESS], total, TIMEOUT)
        .await;
    // Read to the high watermarks, by position: the order relay is exactly-once, so the
    // last offsets of a partition are transaction markers, not records.
    let records = tokio::task::block_in_place(|| {
        checkout::read_to_end(&env.broker, topic::PROCESSING_SUCCESS)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records {
        assert_eq!(record.header("eventType"), Some("OrderProcessingSucceeded"));
        let order = record.header("correlationId").unwrap().to_owned();
        assert_eq!(
            record.key.as_deref(),
            Some(order.as_str()),
            "keyed by order"
        );
        *seen.entry(order).or_default() += 1;
    }
    expected.retain(|_, n| *n > 0);
    assert_eq!(
        seen, expected,
        "exactly one order.processing.success record per succeeded order, none for the others"
    );

    drop(relay);
    for service in replicas {
        service.stop().await;
    }
}

/// Waits until a session of `db` waits for a lock.
async fn someone_waits_for_a_lock(admin: &Client, db: &str) {
    wait_for(
        "a transaction waiting for the order's lock",
        TIMEOUT,
        || async {
            let waiting: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND wait_event_type = 'Lock'",
                    &[&db],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if waiting > 0 {
                Ok(())
            } else {
                Err("nobody waits".to_owned())
            }
        },
    )
    .await;
}

/// Inserts a PROCESSING order whose deadline has passed (`overdue`: the sweeper would
/// take it) or is an hour away.
async fn insert_order(db: &Client, overdue: bool) -> Uuid {
    let id = Uuid::new_v4();
    db.execute(
        "INSERT INTO orders (id, user_id, product_id, quantity, unit_price, coupon_code, \
           status, deadline_at) VALUES ($1, 7, 3, $2, $3, 'WELCOME', 'PROCESSING', \
           CASE WHEN $4 THEN now() ELSE now() + interval '1 hour' END)",
        &[&id, &QUANTITY, &UNIT_PRICE, &overdue],
    )
    .await
    .unwrap();
    id
}

/// `first` is applied and held uncommitted; `second` is applied on another connection
/// meanwhile (it must wait), then `first` commits; both steps, and the order's
/// `OrderProcessingSucceeded` rows.
async fn race(
    cluster: &PgCluster,
    admin: &Client,
    first: Answer,
    second: Answer,
) -> (Step, Step, i64) {
    let db_name = Kind::CheckoutOrder.db();
    let mut one = cluster.client(db_name).await;
    let mut two = cluster.client(db_name).await;
    let id = insert_order(&one, false).await;
    let t1 = one.transaction().await.unwrap();
    let step1 = aggregator::apply(&t1, id, first).await.unwrap();
    let late = tokio::spawn(async move {
        let t2 = two.transaction().await.unwrap();
        let step = aggregator::apply(&t2, id, second).await.unwrap();
        t2.commit().await.unwrap();
        step
    });
    someone_waits_for_a_lock(admin, db_name).await;
    assert!(!late.is_finished(), "the second answer waits for the first");
    t1.commit().await.unwrap();
    let step2 = late.await.unwrap();
    let rows: i64 = one
        .query_one(
            "SELECT count(*) FROM outbox WHERE aggregateid = $1 \
             AND aggregatetype = 'order.processing.success'",
            &[&id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    (step1, step2, rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_answers_take_turns_on_the_order_row() {
    support::init_logging();
    let cluster = PgCluster::start(PgOptions::default());
    let admin = cluster.client("postgres").await;
    let db_name = Kind::CheckoutOrder.db();
    admin
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await
        .unwrap();
    let pool = saga_kit::db::Pool::connect(&cluster.url(db_name), 2)
        .await
        .unwrap();
    pool.migrate(&[
        saga_kit::MESSAGING_MIGRATION,
        checkout_services::order::MIGRATION,
    ])
    .await
    .unwrap();
    let coupon = Answer::Coupon { discount: DISCOUNT };

    // The two answers at once, in either order: the second completes the pair, once.
    for (first, second) in [(Answer::Stock, coupon), (coupon, Answer::Stock)] {
        let (step1, step2, rows) = race(&cluster, &admin, first, second).await;
        assert_eq!(
            (step1, step2, rows),
            (Step::Record, Step::Complete, 1),
            "{first:?} held while {second:?} is applied"
        );
    }
    // The same answer twice at once (two event ids): the second is a duplicate.
    let (step1, step2, rows) = race(&cluster, &admin, Answer::Stock, Answer::Stock).await;
    assert_eq!((step1, step2, rows), (Step::Record, Step::Duplicate, 0));

    // The sweeper skips an overdue order the aggregator holds, and the pair then
    // completing takes it out of the sweeper's reach.
    let mut one = cluster.client(db_name).await;
    let id = insert_order(&one, true).await;
    let held = one.transaction().await.unwrap();
    assert_eq!(
        aggregator::apply(&held, id, Answer::Stock).await.unwrap(),
        Step::Record
    );
    let swept = checkout_services::order::deadline::sweep(&pool)
        .await
        .unwrap();
    assert_eq!(swept, 0, "the held order is skipped, not waited for");
    assert_eq!(
        aggregator::apply(&held, id, coupon).await.unwrap(),
        Step::Complete
    );
    held.commit().await.unwrap();
    assert_eq!(
        checkout_services::order::deadline::sweep(&pool)
            .await
            .unwrap(),
        0
    );
    let status: String = one
        .query_one("SELECT status FROM orders WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "PAYING");

    // An overdue order nobody holds is cancelled once, however many sweeps run.
    let overdue = insert_order(&one, true).await;
    let (a, b) = tokio::join!(
        checkout_services::order::deadline::sweep(&pool),
        checkout_services::order::deadline::sweep(&pool)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 1, "one of two sweeps cancels it");
    let failures: i64 = one
        .query_one(
            "SELECT count(*) FROM outbox WHERE aggregateid = $1 \
             AND aggregatetype = 'order.processing.fail'",
            &[&overdue.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failures, 1);
}

/// The four checkout relay configs load as the relay loads them (the join test runs only
/// the order service's relay): each its own slot, publication, dead-letter topic and
/// admin port, the trace header, and the others' headers unchanged.
#[test]
fn the_checkout_relay_configs_load_with_their_own_slot_and_the_trace_header() {
    let mut ports = Vec::new();
    for kind in Kind::CHECKOUT {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../config")
            .join(format!("{}-relay.toml", kind.name()));
        let text = std::fs::read_to_string(&path).unwrap();
        let env = |var: &str| {
            Some(match var {
                "DB_NAME" => kind.db().to_owned(),
                "DB_ADDR" => "127.0.0.1:5432".to_owned(),
                "KAFKA_BOOTSTRAP_SERVERS" => "127.0.0.1:9092".to_owned(),
                _ => "postgres".to_owned(),
            })
        };
        let config = outbox_relay::config::Config::from_toml(&text, &path, env)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let slot = format!("{}_outbox", kind.name().replace('-', "_"));
        assert_eq!(config.source.slot.as_str(), slot);
        assert_eq!(config.source.publication.as_str(), slot);
        assert_eq!(
            config.postgres_config().get_dbname(),
            Some(kind.db()),
            "{}",
            path.display()
        );
        assert_eq!(config.dlq.topic, format!("outbox.dlq.{}", kind.name()));
        let headers: Vec<(&str, &str)> = config
            .outbox
            .additional_headers
            .iter()
            .map(|h| (h.column.as_str(), h.header_name()))
            .collect();
        for expected in [
            ("type", "eventType"),
            ("correlation_id", "correlationId"),
            ("traceparent", "traceparent"),
            ("dlt_reason", "dltReason"),
        ] {
            assert!(
                headers.contains(&expected),
                "{}: {headers:?}",
                path.display()
            );
        }
        ports.push(config.admin.listen.clone());
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4, "each relay its own admin port: {ports:?}");
}
