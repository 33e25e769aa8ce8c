//! The example saga end to end: order → product → delivery (→ compensation) → order,
//! through three real relays and a real broker, with two replicas of every service in
//! its consumer group, one of each SIGKILLed mid-run.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::http::request;
use support::{diagnose, group, try_wait_for, wait_for, Kind, SagaEnv, REPLICAS, UNDELIVERABLE};
use uuid::Uuid;

const ORDERS: usize = 300;
/// Product id and initial stock; product 5 has none, so its orders fail for stock.
const PRODUCTS: [(i64, i32); 5] = [(1, 100), (2, 100), (3, 100), (4, 100), (5, 0)];
/// Orders placed before the second wave waits for both replicas of every service to own
/// partitions (the groups split once the first events have created their topics).
const FIRST_WAVE: usize = ORDERS / 2;
/// Orders accepted before the product relay and one replica of each service are SIGKILLed.
const KILL_AFTER: usize = FIRST_WAVE + ORDERS / 10;
/// Product events that must pile up in the outbox while its relay is down.
const WRITTEN_WHILE_DOWN: i64 = 20;
const SETTLE: Duration = Duration::from_secs(150);

/// One order as placed.
#[derive(Debug, Clone)]
struct Placed {
    id: String,
    product: i64,
    quantity: i32,
    undeliverable: bool,
}

/// The saga's observable state across the three databases.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    /// Order id → (status, reason).
    orders: BTreeMap<String, (String, Option<String>)>,
    /// Product id → stock.
    stock: BTreeMap<i64, i32>,
    /// Order ids with a delivery.
    deliveries: BTreeSet<String>,
    /// Order ids whose reservation was given back.
    released: BTreeSet<String>,
    /// Outbox rows, by aggregate type (= topic `outbox.event.<type>`).
    outbox: BTreeMap<String, i64>,
    /// Inbox rows (events applied), per service.
    inbox: BTreeMap<&'static str, i64>,
}

/// The aggregate types (topics) each service consumes.
const CONSUMES: [(&str, [&str; 2]); 3] = [
    ("order", ["delivery", "product"]),
    ("product", ["order", "product-command"]),
    ("delivery", ["order", "product"]),
];

async fn state(env: &SagaEnv) -> State {
    let order = env.client(Kind::Order).await;
    let product = env.client(Kind::Product).await;
    let delivery = env.client(Kind::Delivery).await;
    let orders = order
        .query("SELECT id::text, status, reason FROM orders", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let stock = product
        .query("SELECT id, stock FROM products", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let deliveries = delivery
        .query("SELECT order_id::text FROM deliveries", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let released = product
        .query(
            "SELECT order_id::text FROM reservations WHERE released",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (mut outbox, mut inbox) = (BTreeMap::new(), BTreeMap::new());
    for (kind, client) in [
        (Kind::Order, &order),
        (Kind::Product, &product),
        (Kind::Delivery, &delivery),
    ] {
        let by_type = client
            .query("SELECT aggregatetype, count(*) FROM outbox GROUP BY 1", &[])
            .await
            .unwrap();
        outbox.extend(by_type.iter().map(|r| (r.get(0), r.get(1))));
        let row = client
            .query_one("SELECT count(*) FROM inbox", &[])
            .await
            .unwrap();
        inbox.insert(kind.name(), row.get(0));
    }
    State {
        orders,
        stock,
        deliveries,
        released,
        outbox,
        inbox,
    }
}

impl State {
    fn count(&self, status: &str) -> usize {
        self.orders.values().filter(|(s, _)| s == status).count()
    }

    fn cancelled_because(&self, reason: &str) -> usize {
        self.orders
            .values()
            .filter(|(s, r)| s == "CANCELLED" && r.as_deref().is_some_and(|r| r.contains(reason)))
            .count()
    }

    /// Initial stock minus what COMPLETED orders took, per product.
    fn expected_stock(&self, placed: &[Placed]) -> BTreeMap<i64, i32> {
        let mut expected: BTreeMap<i64, i32> = PRODUCTS.into_iter().collect();
        for order in placed {
            if self.orders[&order.id].0 == "COMPLETED" {
                *expected.get_mut(&order.product).unwrap() -= order.quantity;
            }
        }
        expected
    }

    /// Counts that tell why the saga has not settled.
    fn summary(&self, placed: &[Placed]) -> String {
        format!(
            "{} orders ({} PENDING), stock {:?} (expected {:?}), published {:?}, applied {:?}",
            self.orders.len(),
            self.count("PENDING"),
            self.stock,
            self.expected_stock(placed),
            self.outbox,
            self.inbox
        )
    }

    /// Every event published so far is in the inbox of each service consuming its topic,
    /// once: no event lost, none applied twice, nothing left in flight.
    fn quiescent(&self) -> bool {
        CONSUMES.iter().all(|(service, topics)| {
            let published: i64 = topics
                .iter()
                .map(|t| self.outbox.get(*t).copied().unwrap_or(0))
                .sum();
            self.inbox[service] == published
        })
    }

    /// Every order placed is final, the stock matches the completed orders and every
    /// event has been consumed.
    fn settled(&self, placed: &[Placed]) -> bool {
        self.orders.len() == placed.len()
            && self.count("PENDING") == 0
            && self.stock == self.expected_stock(placed)
            && self.quiescent()
    }
}

/// 300 deterministic orders: a tenth for the product without stock, a seventh to an
/// undeliverable address, quantities 1–3 (more than the stock of products 1–4 holds).
fn plan() -> Vec<(i64, i32, String)> {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..ORDERS)
        .map(|i| {
            let product = if i % 10 == 0 {
                5
            } else {
                1 + (next() % 4) as i64
            };
            let quantity = 1 + (next() % 3) as i32;
            let address = if i % 7 == 3 {
                format!("{i} {UNDELIVERABLE} street")
            } else {
                format!("Seoul, Gangnam-gu {i}")
            };
            (product, quantity, address)
        })
        .collect()
}

async fn outbox_rows(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0)
}

/// Per (topic, partition) of `like`: the offset Kafka holds for consumer group `group`.
fn kafka_group_offsets(
    env: &SagaEnv,
    group: &str,
    like: &BTreeMap<(String, i32), i64>,
) -> BTreeMap<(String, i32), i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = env
        .broker
        .client_config()
        .set("group.id", group)
        .create()
        .expect("offsets client");
    let mut partitions = rdkafka::TopicPartitionList::new();
    for (topic, partition) in like.keys() {
        partitions.add_partition(topic, *partition);
    }
    let Ok(committed) = consumer.committed_offsets(partitions, Duration::from_secs(5)) else {
        return BTreeMap::new();
    };
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// Per (topic, partition): the next offset consumer group `group` stored.
async fn positions(env: &SagaEnv, kind: Kind, group: &str) -> BTreeMap<(String, i32), i64> {
    env.client(kind)
        .await
        .query(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
            &[&group],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

/// Waits until consumer group `group` has `members` members, each owning a partition.
async fn wait_members(env: &SagaEnv, group: &str, members: usize, timeout: Duration) {
    wait_for(
        &format!("{members} member(s) of {group}, each owning partitions"),
        timeout,
        || {
            let seen = group::assignments(&env.broker, group);
            async move {
                let seen = seen?;
                (seen.len() == members && seen.iter().all(|(_, owned)| *owned > 0))
                    .then_some(())
                    .ok_or(format!("{seen:?}"))
            }
        },
    )
    .await;
}

/// Event ids in every service's outbox, by aggregate type (= topic `outbox.event.<type>`).
async fn published(env: &SagaEnv) -> BTreeMap<String, BTreeSet<Uuid>> {
    let mut by_type: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
    for kind in Kind::ALL {
        for row in env
            .client(kind)
            .await
            .query("SELECT aggregatetype, id FROM outbox", &[])
            .await
            .unwrap()
        {
            by_type.entry(row.get(0)).or_default().insert(row.get(1));
        }
    }
    by_type
}

/// No event was lost or applied twice, by any replica: each service's inbox holds exactly
/// the events published to its topics, and no handler reacted twice to one saga step
/// (every event a handler wrote is the only one of its type for its order).
async fn assert_each_event_applied_once(env: &SagaEnv) {
    let published = published(env).await;
    for (kind, (service, topics)) in Kind::ALL.into_iter().zip(CONSUMES) {
        assert_eq!(kind.name(), service);
        let client = env.client(kind).await;
        let inbox: Vec<Uuid> = client
            .query("SELECT event_id FROM inbox", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let applied: BTreeSet<Uuid> = inbox.iter().copied().collect();
        let expected: BTreeSet<Uuid> = topics
            .iter()
            .flat_map(|t| published.get(*t).into_iter().flatten().copied())
            .collect();
        assert_eq!(applied.len(), inbox.len(), "{service}: an inbox id twice");
        assert_eq!(
            applied.difference(&expected).count() + expected.difference(&applied).count(),
            0,
            "{service}: inbox ({}) differs from the events of {topics:?} ({})",
            applied.len(),
            expected.len()
        );
        let repeated: Vec<(String, String, i64)> = client
            .query(
                "SELECT type, correlation_id, count(*) FROM outbox GROUP BY 1, 2 \
                 HAVING count(*) > 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert!(repeated.is_empty(), "{service} reacted twice: {repeated:?}");
    }
}

/// Where the events that were not applied are: missing from Kafka, or in Kafka at a
/// (partition, offset) a service never applied.
async fn unsettled_evidence(env: &SagaEnv) -> String {
    let published = published(env).await;
    let mut applied = BTreeMap::new();
    for (kind, (service, topics)) in Kind::ALL.into_iter().zip(CONSUMES) {
        let ids: BTreeSet<Uuid> = env
            .client(kind)
            .await
            .query("SELECT event_id FROM inbox", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        applied.insert(service, (topics.to_vec(), ids));
    }
    // An event absent from Kafka with its relay's slot past it was acknowledged without
    // being delivered (a loss); with the slot behind it, the relay still holds it (a stall).
    let mut slots = String::new();
    for kind in Kind::ALL {
        let slot = format!("{}_outbox", kind.name());
        let row = env
            .client(kind)
            .await
            .query_opt(
                "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text, active \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        let state = row.map_or("no slot".to_owned(), |r| {
            let (confirmed, current, active): (Option<String>, String, bool) =
                (r.get(0), r.get(1), r.get(2));
            format!("confirmed {confirmed:?}, server WAL {current}, active {active}")
        });
        slots += &format!("\nslot {slot}: {state}");
    }
    let broker = &env.broker;
    let report = tokio::task::block_in_place(|| diagnose::report(broker, &published, &applied));
    // A row the relay dead-lettered is acknowledged too: the DLQ topics tell it from a loss.
    let mut dead = String::new();
    for kind in Kind::ALL {
        let topic = format!("outbox.dlq.{}", kind.name());
        let found = tokio::task::block_in_place(|| diagnose::records(broker, &topic));
        dead += &match found {
            Ok((records, _)) => {
                format!("\n{topic}: {} records {:?}", records.len(), records.keys())
            }
            Err(e) => format!("\n{topic}: {e}"),
        };
    }
    // The relays' warnings and errors, every run of each.
    let mut relay_lines = String::new();
    if let Ok(entries) = std::fs::read_dir(env.dir.path()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("relay-") && name.ends_with(".log")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .take(40)
            {
                relay_lines += &format!("\n{name}: {line}");
            }
        }
    }
    format!("{report}{slots}{dead}{relay_lines}")
}

/// Places `orders` at once, each in its own task, counting acceptances in `accepted`.
fn place(
    order_addr: std::net::SocketAddr,
    orders: Vec<(i64, i32, String)>,
    accepted: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Placed>> {
    orders
        .into_iter()
        .map(|(product, quantity, address)| {
            let accepted = Arc::clone(accepted);
            tokio::spawn(async move {
                let body = json!({ "userId": 7, "productId": product, "quantity": quantity,
                                   "price": 1000, "address": address });
                let response =
                    request(order_addr, "POST", "/orders", Some(&body.to_string())).await;
                assert_eq!(response.status, 202, "{}", response.body);
                let reply = response.json();
                assert_eq!(reply["status"], "PENDING");
                let id = reply["orderId"].as_str().expect("orderId").to_owned();
                assert_eq!(
                    response.header("location"),
                    Some(format!("/orders/{id}").as_str())
                );
                accepted.fetch_add(1, Ordering::Relaxed);
                Placed {
                    id,
                    product,
                    quantity,
                    undeliverable: address.contains(UNDELIVERABLE),
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sagas_end_terminal_with_stock_intact_through_relay_and_replica_kills_and_a_replay(
) {
    let started = std::time::Instant::now();
    let mut env = SagaEnv::start().await;
    for (id, stock) in PRODUCTS {
        let body = json!({ "name": format!("product {id}"), "stock": stock }).to_string();
        let response = request(
            env.addr(Kind::Product),
            "PUT",
            &format!("/products/{id}"),
            Some(&body),
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.body);
    }

    // Place the orders in two concurrent waves, all through the order replica that
    // survives (a request in flight to a killed replica would fail, and a client retry
    // would place a second order). Once both replicas of every service own partitions,
    // the second wave starts, and while it is in flight the product relay and one replica
    // of each service are SIGKILLed.
    let accepted = Arc::new(AtomicUsize::new(0));
    let order_addr = env.addr(Kind::Order);
    let mut orders = plan();
    let second_wave = orders.split_off(FIRST_WAVE);
    let mut tasks = place(order_addr, orders, &accepted);
    for kind in Kind::ALL {
        let group = SagaEnv::group(kind, "");
        wait_members(&env, &group, REPLICAS, Duration::from_secs(60)).await;
    }
    tasks.extend(place(order_addr, second_wave, &accepted));
    wait_for(
        "orders accepted before the kills",
        Duration::from_secs(60),
        || {
            let n = accepted.load(Ordering::Relaxed);
            async move {
                (n >= KILL_AFTER)
                    .then_some(())
                    .ok_or(format!("{n} accepted"))
            }
        },
    )
    .await;
    let product_db = env.client(Kind::Product).await;
    let at_kill = outbox_rows(&product_db).await;
    env.relay(Kind::Product).kill9();
    let killed: Vec<String> = Kind::ALL.map(|kind| env.kill_replica(kind)).to_vec();
    let killed_at = std::time::Instant::now();
    let mut placed = Vec::new();
    for task in tasks {
        placed.push(task.await.expect("order task"));
    }
    // The product service keeps writing events its relay cannot publish yet.
    let piled_up = wait_for(
        "product events written while its relay is down",
        SETTLE,
        || async {
            let n = outbox_rows(&product_db).await - at_kill;
            (n >= WRITTEN_WHILE_DOWN)
                .then_some(n)
                .ok_or(format!("{n} written"))
        },
    )
    .await;
    env.restart_relay(Kind::Product).await;
    // The killed replicas never left their groups: the coordinator drops them after the
    // session timeout and the survivors take their partitions, from the stored positions.
    for group in &killed {
        wait_members(&env, group, REPLICAS - 1, Duration::from_secs(60)).await;
    }
    let takeover = killed_at.elapsed();

    let settled = try_wait_for("every saga final and the stock settled", SETTLE, || async {
        let s = state(&env).await;
        if s.settled(&placed) {
            Ok(s)
        } else {
            Err(s.summary(&placed))
        }
    })
    .await;
    let settled = match settled {
        Ok(settled) => settled,
        Err(timed_out) => panic!("{timed_out}\n{}", unsettled_evidence(&env).await),
    };

    let s = &settled;
    let completed = s.count("COMPLETED");
    let no_stock = s.cancelled_because("out of stock");
    let undeliverable = s.cancelled_because("address not deliverable");
    println!(
        "{ORDERS} orders: {completed} completed, {no_stock} cancelled out of stock, \
         {undeliverable} cancelled undeliverable (stock given back); stock {:?} -> {:?}; \
         {piled_up} product events piled up while its relay was killed; one of {REPLICAS} \
         replicas of each service SIGKILLed, survivors owned every partition {takeover:?} \
         later; settled after {:?}",
        PRODUCTS,
        s.stock,
        started.elapsed()
    );
    println!(
        "events published per topic {:?}; applied per service (inbox) {:?}",
        s.outbox, s.inbox
    );
    assert_eq!(s.orders.len(), ORDERS);
    assert_eq!(
        completed + no_stock + undeliverable,
        ORDERS,
        "every cancellation has a known reason"
    );
    assert!(
        completed > 0 && no_stock > 0 && undeliverable > 0,
        "a real mix of outcomes"
    );
    let completed_ids: BTreeSet<String> = s
        .orders
        .iter()
        .filter(|(_, (status, _))| status == "COMPLETED")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        completed_ids, s.deliveries,
        "COMPLETED orders are exactly the deliveries"
    );
    assert!(
        s.stock.values().all(|&stock| stock >= 0),
        "no negative stock: {:?}",
        s.stock
    );
    assert_eq!(s.stock, s.expected_stock(&placed));
    for order in &placed {
        let (status, _) = &s.orders[&order.id];
        if order.product == 5 || order.undeliverable {
            assert_eq!(status, "CANCELLED", "{order:?}");
        }
        if order.undeliverable {
            assert!(!s.deliveries.contains(&order.id), "{order:?} was delivered");
        } else {
            assert!(!s.released.contains(&order.id), "{order:?} was compensated");
        }
    }
    assert_eq!(
        s.released.len(),
        undeliverable,
        "one compensation per failed delivery"
    );
    let events = |n: usize| i64::try_from(n).unwrap();
    let expected_events: BTreeMap<String, i64> = [
        ("order", events(ORDERS)),
        ("product", events(ORDERS)),
        ("delivery", events(ORDERS - no_stock)),
        ("product-command", events(undeliverable)),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_owned(), n))
    .collect();
    assert_eq!(s.outbox, expected_events, "one event per saga step");
    assert_each_event_applied_once(&env).await;

    // Each service also committed its positions to its Kafka consumer group (after the
    // database transaction), so broker tooling sees the same offsets.
    for kind in Kind::ALL {
        let group = SagaEnv::group(kind, "");
        let stored = positions(&env, kind, &group).await;
        wait_for(
            "the Kafka group offsets to match the stored positions",
            Duration::from_secs(30),
            || {
                let committed = kafka_group_offsets(&env, &group, &stored);
                let outcome = if committed == stored {
                    Ok(())
                } else {
                    Err(format!("{group}: kafka {committed:?}, stored {stored:?}"))
                };
                async move { outcome }
            },
        )
        .await;
    }

    // Redelivery: every service (two replicas again) reads every topic again from the
    // beginning under a new consumer group. Each record is seen a second time and nothing
    // changes.
    env.restart_services("replay").await;
    for kind in Kind::ALL {
        let original = positions(&env, kind, &SagaEnv::group(kind, "")).await;
        assert!(!original.is_empty(), "{} consumed something", kind.name());
        wait_for(
            "the replay to reach the original positions",
            SETTLE,
            || async {
                let replay = positions(&env, kind, &SagaEnv::group(kind, "replay")).await;
                original
                    .iter()
                    .all(|(partition, &next)| replay.get(partition).is_some_and(|&r| r >= next))
                    .then_some(())
                    .ok_or(format!("{replay:?} of {original:?}"))
            },
        )
        .await;
    }
    let after = state(&env).await;
    // Field by field, so a failure shows the difference rather than 300 orders.
    assert_eq!(
        after.inbox, settled.inbox,
        "replayed events were applied again"
    );
    assert_eq!(
        after.outbox, settled.outbox,
        "replayed events caused new events"
    );
    assert_eq!(after.stock, settled.stock, "a replay changed stock");
    assert_eq!(after.released, settled.released, "a replay released stock");
    assert_eq!(
        after.deliveries, settled.deliveries,
        "a replay changed deliveries"
    );
    let changed = settled
        .orders
        .iter()
        .filter(|(id, o)| after.orders.get(*id) != Some(o))
        .count();
    assert_eq!(changed, 0, "a replay changed {changed} orders");
    assert_each_event_applied_once(&env).await;
    println!(
        "replay of every topic to fresh consumer groups changed nothing; total {:?}",
        started.elapsed()
    );
    env.stop().await;
}
