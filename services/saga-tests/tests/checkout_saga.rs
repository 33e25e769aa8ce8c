//! The checkout saga end to end (issue 17's "Saga test"): order → stock ∥ coupon, joined
//! by the order service's aggregator, then payment, through four real relays and a real
//! broker, with two replicas of every service in its consumer group. 300 orders are
//! placed concurrently, with random pauses, random branch delays (`CHECKOUT_JITTER_MS`)
//! and inputs that decide each order's outcome; duplicates of the branch and payment
//! answers (new event ids) are published while the orders run and after they closed.
//! Mid-run the order relay is SIGKILLed (then restarted) and one replica of every service
//! is SIGKILLed. The seed is printed; `CHECKOUT_SEED=<n>` replays a run's inputs.

#[path = "support/checkout.rs"]
mod checkout;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use checkout::Rng;
use serde_json::{json, Value};
use support::http::request;
use support::{diagnose, group, try_wait_for, wait_for, Kind, SagaEnv, REPLICAS};
use uuid::Uuid;

const ORDERS: usize = 300;
/// Orders accepted before the order relay and one replica of each service are SIGKILLed.
const KILL_AFTER: usize = ORDERS / 2;
/// Order events that must pile up in its outbox while the order relay is down.
const WRITTEN_WHILE_DOWN: i64 = 30;
/// The branch handlers' random delay, 0..=N ms each.
const JITTER_MS: &str = "40";
/// Far beyond the run: no order may be cancelled by the deadline, whatever the kills did.
const DEADLINE_MS: &str = "600000";
const SETTLE: Duration = Duration::from_secs(150);
/// Products 1-3 have more stock than every order together takes; product 4 has none.
const AMPLE: [i64; 3] = [1, 2, 3];
const NO_STOCK: i64 = 4;
/// Users 1-4 can pay for every order together; users 5-6 have less than any order costs
/// (amount >= 1000 * 1 - 500).
const RICH: [i64; 4] = [1, 2, 3, 4];
const POOR: [i64; 2] = [5, 6];
const MAX_DISCOUNT: u64 = 500;

/// What an order's inputs decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Completed,
    OutOfStock,
    CouponUsed,
    CouponUnknown,
    PaymentRefused,
}

/// One order's inputs and what they decide.
#[derive(Debug, Clone)]
struct Plan {
    user: i64,
    product: i64,
    quantity: i64,
    unit_price: i64,
    /// The coupon and its discount (0 for a coupon that cannot apply).
    coupon: Option<(String, i64)>,
    outcome: Outcome,
    /// The pause before it is placed, ms.
    pause_ms: u64,
    /// Whether its answers are published twice.
    duplicated: bool,
}

impl Plan {
    fn amount(&self) -> i64 {
        let discount = self.coupon.as_ref().map_or(0, |(_, d)| *d);
        (self.unit_price * self.quantity - discount).max(0)
    }

    fn reaches_payment(&self) -> bool {
        matches!(self.outcome, Outcome::Completed | Outcome::PaymentRefused)
    }

    /// The coupon this order may hold: a fresh one (not the shared used one).
    fn fresh_coupon(&self) -> Option<&str> {
        match (&self.coupon, self.outcome) {
            (Some(_), Outcome::CouponUsed | Outcome::CouponUnknown) => None,
            (Some((code, _)), _) => Some(code),
            (None, _) => None,
        }
    }

    /// Whether the reason of a CANCELLED order is the one its inputs decide.
    fn reason_matches(&self, reason: &str) -> bool {
        let code = self.coupon.as_ref().map(|(c, _)| c.as_str()).unwrap_or("");
        match self.outcome {
            Outcome::Completed => false,
            Outcome::OutOfStock => {
                reason.contains(&format!("product {}", self.product))
                    && reason.contains("out of stock")
            }
            Outcome::CouponUsed => reason.contains(&format!("coupon {code} is already used")),
            Outcome::CouponUnknown => reason.contains(&format!("coupon {code} does not exist")),
            Outcome::PaymentRefused => reason.contains(&format!("below amount {}", self.amount())),
        }
    }
}

/// Per order id: the `state` column of `table` (one row per order) in `kind`'s database.
async fn states(env: &SagaEnv, kind: Kind, table: &str) -> BTreeMap<String, String> {
    env.client(kind)
        .await
        .query(&format!("SELECT order_id::text, state FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The coupon a setup order uses before the run, so the run's orders find it used.
fn used_coupon(seed: u64) -> String {
    format!("USED-{seed:x}")
}

/// The shop as the run starts: stock per product, coupon discounts, balances per user.
#[derive(Debug, Clone)]
struct Shop {
    stock: BTreeMap<i64, i64>,
    balance: BTreeMap<i64, i64>,
}

fn shop(rng: &mut Rng) -> Shop {
    let mut stock: BTreeMap<i64, i64> = AMPLE
        .iter()
        .map(|&p| (p, rng.range(2000, 5000) as i64))
        .collect();
    stock.insert(NO_STOCK, 0);
    let mut balance: BTreeMap<i64, i64> = RICH
        .iter()
        .map(|&u| (u, rng.range(50_000_000, 90_000_000) as i64))
        .collect();
    for u in POOR {
        balance.insert(u, rng.range(0, 400) as i64);
    }
    Shop { stock, balance }
}

/// [`ORDERS`] orders with random outcomes and the inputs that decide them.
fn plan(rng: &mut Rng, seed: u64) -> Vec<Plan> {
    (0..ORDERS)
        .map(|i| {
            let roll = rng.range(0, 99);
            let outcome = match roll {
                0..=39 => Outcome::Completed,
                40..=54 => Outcome::OutOfStock,
                55..=64 => Outcome::CouponUsed,
                65..=72 => Outcome::CouponUnknown,
                _ => Outcome::PaymentRefused,
            };
            let pick =
                |rng: &mut Rng, from: &[i64]| from[rng.range(0, from.len() as u64 - 1) as usize];
            let any_user = [RICH.as_slice(), POOR.as_slice()].concat();
            let user = match outcome {
                Outcome::Completed => pick(rng, &RICH),
                Outcome::PaymentRefused => pick(rng, &POOR),
                _ => pick(rng, &any_user),
            };
            let product = match outcome {
                Outcome::OutOfStock => NO_STOCK,
                _ => pick(rng, &AMPLE),
            };
            let fresh = (rng.next() % 2 == 0)
                .then(|| (format!("C{seed:x}-{i}"), rng.range(0, MAX_DISCOUNT) as i64));
            let coupon = match outcome {
                Outcome::CouponUsed => Some((used_coupon(seed), 0)),
                Outcome::CouponUnknown => Some((format!("NONE-{seed:x}-{i}"), 0)),
                _ => fresh,
            };
            Plan {
                user,
                product,
                quantity: rng.range(1, 3) as i64,
                unit_price: rng.range(1000, 5000) as i64,
                coupon,
                outcome,
                pause_ms: rng.range(0, 25),
                duplicated: i % 3 == 0,
            }
        })
        .collect()
}

/// The aggregate types (topics) each service consumes (the contract's subscriptions).
const CONSUMES: [(Kind, &[&str]); 4] = [
    (
        Kind::CheckoutOrder,
        &[
            "order.processing.stock.success",
            "order.processing.coupon.success",
            "order.processing.fail",
            "order.processing.success",
            "order.payment.success",
            "order.payment.fail",
        ],
    ),
    (
        Kind::CheckoutProduct,
        &[
            "order.processing",
            "order.processing.fail",
            "order.payment.fail",
        ],
    ),
    (
        Kind::CheckoutCoupon,
        &[
            "order.processing",
            "order.processing.fail",
            "order.payment.fail",
        ],
    ),
    (Kind::CheckoutUser, &["order.payment"]),
];

/// Outbox rows per aggregate type (all services) and inbox rows per service.
async fn messaging(env: &SagaEnv) -> (BTreeMap<String, i64>, BTreeMap<&'static str, i64>) {
    let (mut outbox, mut inbox) = (BTreeMap::new(), BTreeMap::new());
    for kind in Kind::CHECKOUT {
        let client = env.client(kind).await;
        for r in client
            .query("SELECT aggregatetype, count(*) FROM outbox GROUP BY 1", &[])
            .await
            .unwrap()
        {
            *outbox.entry(r.get::<_, String>(0)).or_insert(0) += r.get::<_, i64>(1);
        }
        let row = client
            .query_one("SELECT count(*) FROM inbox", &[])
            .await
            .unwrap();
        inbox.insert(kind.name(), row.get(0));
    }
    (outbox, inbox)
}

/// Every event published so far is in the inbox of each service consuming its topic:
/// nothing left in flight (compensations run after the order is already CANCELLED).
fn quiescent(outbox: &BTreeMap<String, i64>, inbox: &BTreeMap<&'static str, i64>) -> bool {
    CONSUMES.iter().all(|(kind, topics)| {
        let published: i64 = topics
            .iter()
            .map(|t| outbox.get(*t).copied().unwrap_or(0))
            .sum();
        inbox[kind.name()] == published
    })
}

/// Orders not yet COMPLETED or CANCELLED, by status.
async fn open_orders(env: &SagaEnv) -> BTreeMap<String, i64> {
    env.client(Kind::CheckoutOrder)
        .await
        .query(
            "SELECT status, count(*) FROM orders \
             WHERE status NOT IN ('COMPLETED', 'CANCELLED') GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until every order is final and every published event was applied.
async fn settle(env: &SagaEnv, what: &str) {
    let outcome = try_wait_for(what, SETTLE, || async {
        let open = open_orders(env).await;
        let (outbox, inbox) = messaging(env).await;
        if open.is_empty() && quiescent(&outbox, &inbox) {
            Ok(())
        } else {
            Err(format!(
                "open orders {open:?}, published {outbox:?}, applied {inbox:?}"
            ))
        }
    })
    .await;
    if let Err(timed_out) = outcome {
        panic!("{timed_out}\n{}", unsettled_evidence(env).await);
    }
}

/// Event ids in every service's outbox, by aggregate type.
async fn published(env: &SagaEnv) -> BTreeMap<String, BTreeSet<Uuid>> {
    let mut by_type: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
    for kind in Kind::CHECKOUT {
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

/// Where the events not applied are: missing from Kafka, or in Kafka but not applied.
async fn unsettled_evidence(env: &SagaEnv) -> String {
    let published = published(env).await;
    let mut applied = BTreeMap::new();
    for (kind, topics) in CONSUMES {
        let ids: BTreeSet<Uuid> = env
            .client(kind)
            .await
            .query("SELECT event_id FROM inbox", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        applied.insert(kind.name(), (topics.to_vec(), ids));
    }
    let broker = &env.broker;
    tokio::task::block_in_place(|| diagnose::report(broker, &published, &applied))
}

/// Each service's inbox holds exactly the events published to its topics, each once, and
/// no handler reacted twice to one saga step: apart from the duplicates the test itself
/// published (`copies`), every event type appears at most once per order in each outbox.
async fn assert_each_event_applied_once(env: &SagaEnv, copies: &BTreeSet<Uuid>) {
    let published = published(env).await;
    let copies: Vec<Uuid> = copies.iter().copied().collect();
    for (kind, topics) in CONSUMES {
        let service = kind.name();
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
            applied.symmetric_difference(&expected).count(),
            0,
            "{service}: inbox ({}) differs from the events of {topics:?} ({})",
            applied.len(),
            expected.len()
        );
        let repeated: Vec<(String, String, i64)> = client
            .query(
                "SELECT type, correlation_id, count(*) FROM outbox WHERE id <> ALL($1) \
                 GROUP BY 1, 2 HAVING count(*) > 1",
                &[&copies],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert!(repeated.is_empty(), "{service} reacted twice: {repeated:?}");
    }
}

/// Publishes a second copy, under a new event id, of every event the four services wrote
/// so far for the orders `ids` and not yet copied (`copied`: the originals copied,
/// `copies`: the copies' ids): the aggregator, the payment step, the branches and the
/// compensations must ignore them, while the order is still open as after it closed.
/// Returns how many.
async fn publish_duplicates(
    env: &SagaEnv,
    ids: &[String],
    copied: &mut BTreeSet<Uuid>,
    copies: &mut BTreeSet<Uuid>,
) -> usize {
    let mut n = 0;
    for kind in Kind::CHECKOUT {
        let client = env.client(kind).await;
        let skip: Vec<Uuid> = copied.union(copies).copied().collect();
        let originals: Vec<Uuid> = client
            .query(
                "SELECT id FROM outbox WHERE correlation_id = ANY($1) AND id <> ALL($2) \
                 AND aggregatetype NOT LIKE '%.DLT'",
                &[&ids, &skip],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for original in originals {
            let copy = Uuid::new_v4();
            client
                .execute(
                    "INSERT INTO outbox (id, aggregatetype, aggregateid, type, correlation_id, \
                     payload) SELECT $1, aggregatetype, aggregateid, type, correlation_id, \
                     payload FROM outbox WHERE id = $2",
                    &[&copy, &original],
                )
                .await
                .unwrap();
            copied.insert(original);
            copies.insert(copy);
            n += 1;
        }
    }
    n
}

/// How many of `records` are copies the test published itself.
fn copies_on(records: &[checkout::Record], copies: &BTreeSet<Uuid>) -> usize {
    records
        .iter()
        .filter(|r| {
            r.header("id")
                .and_then(|id| Uuid::parse_str(id).ok())
                .is_some_and(|id| copies.contains(&id))
        })
        .count()
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

async fn put(addr: SocketAddr, path: &str, body: Value) {
    let response = request(addr, "PUT", path, Some(&body.to_string())).await;
    assert!(
        (200..300).contains(&response.status),
        "PUT {path}: {} {}",
        response.status,
        response.body
    );
}

async fn get(addr: SocketAddr, path: &str) -> Value {
    let response = request(addr, "GET", path, None).await;
    assert_eq!(response.status, 200, "GET {path}: {}", response.body);
    response.json()
}

/// `POST /orders`; returns the order id.
async fn place(addr: SocketAddr, plan: &Plan) -> String {
    let body = json!({
        "userId": plan.user, "productId": plan.product, "quantity": plan.quantity,
        "unitPrice": plan.unit_price, "couponCode": plan.coupon.as_ref().map(|(c, _)| c),
    });
    let response = request(addr, "POST", "/orders", Some(&body.to_string())).await;
    assert_eq!(
        response.status, 202,
        "POST /orders {body}: {}",
        response.body
    );
    let reply = response.json();
    assert_eq!(reply["status"], "PROCESSING", "{reply}");
    let id = reply["id"].as_str().expect("id").to_owned();
    assert_eq!(
        response.header("location"),
        Some(format!("/orders/{id}").as_str())
    );
    id
}

async fn outbox_rows(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkout_orders_end_as_their_inputs_decide_and_reconcile_through_relay_and_replica_kills()
{
    let started = std::time::Instant::now();
    let seed = Rng::seed_from_env();
    println!("checkout saga seed {seed} (rerun with CHECKOUT_SEED={seed})");
    let mut rng = Rng::new(seed);
    let shop = shop(&mut rng);
    let plans = plan(&mut rng, seed);
    let mut env = SagaEnv::start_saga_with_env(
        &Kind::CHECKOUT,
        &[
            ("CHECKOUT_JITTER_MS", JITTER_MS),
            ("CHECKOUT_DEADLINE_MS", DEADLINE_MS),
        ],
    )
    .await;
    let product = env.addr(Kind::CheckoutProduct);
    let coupon = env.addr(Kind::CheckoutCoupon);
    let user = env.addr(Kind::CheckoutUser);
    let order = env.addr(Kind::CheckoutOrder);
    for (id, stock) in &shop.stock {
        put(
            product,
            &format!("/products/{id}"),
            json!({ "stock": stock }),
        )
        .await;
    }
    for (id, balance) in &shop.balance {
        put(
            user,
            &format!("/users/{id}/balance"),
            json!({ "balance": balance }),
        )
        .await;
    }
    let used = used_coupon(seed);
    put(
        coupon,
        &format!("/coupons/{used}"),
        json!({ "discount": 100 }),
    )
    .await;
    for plan in &plans {
        if let Some(code) = plan.fresh_coupon() {
            let discount = plan.coupon.as_ref().unwrap().1;
            put(
                coupon,
                &format!("/coupons/{code}"),
                json!({ "discount": discount }),
            )
            .await;
        }
    }

    // Before the run, one order uses the shared coupon (and creates the success topics).
    let setup = Plan {
        user: RICH[0],
        product: AMPLE[0],
        quantity: 1,
        unit_price: 1000,
        coupon: Some((used.clone(), 100)),
        outcome: Outcome::Completed,
        pause_ms: 0,
        duplicated: false,
    };
    let setup_id = place(order, &setup).await;
    wait_for(
        "the setup order COMPLETED",
        Duration::from_secs(60),
        || async {
            let o = get(order, &format!("/orders/{setup_id}")).await;
            (o["status"] == "COMPLETED")
                .then_some(())
                .ok_or(o.to_string())
        },
    )
    .await;

    // Placement: one task spawning each order after a random pause, each order in its
    // own task, all through the order replica that survives (kill_replica kills the last).
    let accepted = Arc::new(AtomicUsize::new(0));
    for kind in Kind::CHECKOUT {
        let group = SagaEnv::group(kind, "");
        wait_members(&env, &group, REPLICAS, Duration::from_secs(60)).await;
    }
    let placing = {
        let accepted = Arc::clone(&accepted);
        let plans = plans.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for (i, plan) in plans.into_iter().enumerate() {
                tokio::time::sleep(Duration::from_millis(plan.pause_ms)).await;
                let accepted = Arc::clone(&accepted);
                tasks.push(tokio::spawn(async move {
                    let id = place(order, &plan).await;
                    accepted.fetch_add(1, Ordering::Relaxed);
                    (i, id)
                }));
            }
            tasks
        })
    };
    let accepted_at_least = |n: usize| {
        let accepted = Arc::clone(&accepted);
        move || {
            let seen = accepted.load(Ordering::Relaxed);
            async move { (seen >= n).then_some(()).ok_or(format!("{seen} accepted")) }
        }
    };
    wait_for(
        "orders accepted before the kills",
        SETTLE,
        accepted_at_least(KILL_AFTER),
    )
    .await;
    let order_db = env.client(Kind::CheckoutOrder).await;
    let at_kill = outbox_rows(&order_db).await;
    env.relay(Kind::CheckoutOrder).kill9();
    let killed: Vec<String> = Kind::CHECKOUT.map(|kind| env.kill_replica(kind)).to_vec();
    let killed_at = std::time::Instant::now();

    let mut ids: Vec<Option<String>> = vec![None; ORDERS];
    for task in placing.await.expect("placing task") {
        let (i, id) = task.await.expect("order task");
        ids[i] = Some(id);
    }
    let ids: Vec<String> = ids.into_iter().map(|id| id.expect("placed")).collect();
    let duplicated: Vec<String> = ids
        .iter()
        .zip(&plans)
        .filter(|(_, p)| p.duplicated)
        .map(|(id, _)| id.clone())
        .collect();
    // The order service keeps writing events its relay cannot publish yet.
    let piled_up = wait_for(
        "order events written while its relay is down",
        SETTLE,
        || async {
            let n = outbox_rows(&order_db).await - at_kill;
            (n >= WRITTEN_WHILE_DOWN)
                .then_some(n)
                .ok_or(format!("{n} written"))
        },
    )
    .await;
    // Duplicates of what was written so far, the order's piling up behind its relay.
    let (mut copied, mut copies) = (BTreeSet::new(), BTreeSet::new());
    let mut duplicates = publish_duplicates(&env, &duplicated, &mut copied, &mut copies).await;
    env.restart_relay(Kind::CheckoutOrder).await;
    for group in &killed {
        wait_members(&env, group, REPLICAS - 1, Duration::from_secs(60)).await;
    }
    let takeover = killed_at.elapsed();
    duplicates += publish_duplicates(&env, &duplicated, &mut copied, &mut copies).await;
    settle(&env, "every order final and every event applied").await;
    // Late duplicates: the answers of the orders closed since, published again.
    duplicates += publish_duplicates(&env, &duplicated, &mut copied, &mut copies).await;
    settle(&env, "the late duplicates applied").await;
    let settled_after = started.elapsed();

    // Every order's final state, as GET /orders/{id} tells it.
    let mut all: Vec<(String, Plan)> = ids.iter().cloned().zip(plans.iter().cloned()).collect();
    all.push((setup_id.clone(), setup.clone()));
    let mut wrong = Vec::new();
    let mut by_outcome: BTreeMap<Outcome, usize> = BTreeMap::new();
    for (id, plan) in &all {
        let o = get(order, &format!("/orders/{id}")).await;
        let status = o["status"].as_str().unwrap_or("?");
        let reason = o["reason"].as_str().unwrap_or("");
        let ok = match plan.outcome {
            Outcome::Completed => {
                status == "COMPLETED"
                    && o["amount"].as_i64() == Some(plan.amount())
                    && o["discount"].as_i64() == Some(plan.coupon.as_ref().map_or(0, |c| c.1))
                    && o["stockReserved"] == true
                    && o["couponApplied"] == true
            }
            _ => status == "CANCELLED" && plan.reason_matches(reason),
        };
        if ok {
            *by_outcome.entry(plan.outcome).or_default() += 1;
        } else {
            wrong.push(format!(
                "{id} {plan:?} (amount {}) ended {o}",
                plan.amount()
            ));
        }
    }
    println!(
        "{} orders (and the setup order) by outcome {by_outcome:?}; {duplicates} duplicate \
         answers published; {piled_up} order events piled up while its relay was killed; one \
         of {REPLICAS} replicas of each service SIGKILLed, survivors owned every partition \
         {takeover:?} later; settled after {settled_after:?}",
        ORDERS
    );
    assert!(
        wrong.is_empty(),
        "{} orders did not end as their inputs decide:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    for outcome in [
        Outcome::Completed,
        Outcome::OutOfStock,
        Outcome::CouponUsed,
        Outcome::CouponUnknown,
        Outcome::PaymentRefused,
    ] {
        assert!(
            by_outcome.get(&outcome).is_some_and(|&n| n > 0),
            "no {outcome:?} order"
        );
    }
    let completed: Vec<&(String, Plan)> = all
        .iter()
        .filter(|(_, p)| p.outcome == Outcome::Completed)
        .collect();

    // Stock: the initial stock minus what the COMPLETED orders took, every other
    // reservation given back.
    let mut expected_stock = shop.stock.clone();
    for (_, p) in &completed {
        *expected_stock.get_mut(&p.product).unwrap() -= p.quantity;
    }
    let mut stock = BTreeMap::new();
    for id in shop.stock.keys() {
        stock.insert(
            *id,
            get(product, &format!("/products/{id}")).await["stock"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(stock, expected_stock, "stock (before: {:?})", shop.stock);

    // Balances: the initial balance minus the amounts of the COMPLETED orders.
    let mut expected_balance = shop.balance.clone();
    for (_, p) in &completed {
        *expected_balance.get_mut(&p.user).unwrap() -= p.amount();
    }
    let mut balance = BTreeMap::new();
    for id in shop.balance.keys() {
        balance.insert(
            *id,
            get(user, &format!("/users/{id}")).await["balance"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(
        balance, expected_balance,
        "balances (before: {:?})",
        shop.balance
    );

    // Coupons: each fresh coupon is used by its order exactly when the order COMPLETED
    // (released by every other outcome); the shared coupon stays the setup order's.
    let mut coupon_errors = Vec::new();
    for (id, p) in &all {
        let Some(code) = p.fresh_coupon() else {
            continue;
        };
        let c = get(coupon, &format!("/coupons/{code}")).await;
        let expected = if p.outcome == Outcome::Completed {
            json!(id)
        } else {
            Value::Null
        };
        if c["usedBy"] != expected {
            coupon_errors.push(format!("{code} ({:?} order {id}): {c}", p.outcome));
        }
    }
    let shared = get(coupon, &format!("/coupons/{used}")).await;
    if shared["usedBy"] != json!(setup_id) {
        coupon_errors.push(format!("shared {used} (setup order {setup_id}): {shared}"));
    }
    assert!(
        coupon_errors.is_empty(),
        "coupons: {}",
        coupon_errors.join("\n")
    );

    // Each branch's record of each order, as its outcome decides: a reservation kept only
    // by a COMPLETED order, a claim likewise, a charge only for the orders that reached
    // payment. A branch that heard of the failure before the order itself records VOID.
    let reservations = states(&env, Kind::CheckoutProduct, "stock_reservations").await;
    let claims = states(&env, Kind::CheckoutCoupon, "coupon_claims").await;
    let charges = states(&env, Kind::CheckoutUser, "charges").await;
    let mut branch_errors = Vec::new();
    for (id, p) in &all {
        let (stock, claim, charge): (&[&str], &[&str], &[&str]) = match p.outcome {
            Outcome::Completed => (&["RESERVED"], &["CLAIMED"], &["CHARGED"]),
            Outcome::OutOfStock => (&["REFUSED"], &["RELEASED", "VOID"], &[]),
            Outcome::CouponUsed | Outcome::CouponUnknown => {
                (&["RESTORED", "VOID"], &["REFUSED"], &[])
            }
            Outcome::PaymentRefused => (&["RESTORED"], &["RELEASED"], &["REFUSED"]),
        };
        for (what, seen, allowed) in [
            ("stock reservation", &reservations, stock),
            ("coupon claim", &claims, claim),
            ("charge", &charges, charge),
        ] {
            let state = seen.get(id).map(String::as_str);
            let ok = match state {
                Some(state) => allowed.contains(&state),
                None => allowed.is_empty(),
            };
            if !ok {
                branch_errors.push(format!(
                    "{id} ({:?}): {what} {state:?}, expected one of {allowed:?}",
                    p.outcome
                ));
            }
        }
    }
    assert!(
        branch_errors.is_empty(),
        "branch records:\n{}",
        branch_errors.join("\n")
    );

    // Exactly once: order.processing.success carries one event per order that reached
    // PAYING (COMPLETED or payment refused), and none for the others, duplicate answers
    // published or not. Per order, the distinct event ids (`id` header) on the topic are
    // exactly the one OrderProcessingSucceeded row the aggregator wrote, and it is on
    // the topic once: the order relay delivers exactly once
    // (config/checkout-order-relay.toml), so the SIGKILL above, with records published
    // but not acknowledged, repeats none of them for a read_committed reader. (With
    // at-least-once it would, with the same id, and the consumers' inbox would drop them.)
    let broker = &env.broker;
    let success_topic = checkout::topic("order.processing.success");
    let records = tokio::task::block_in_place(|| checkout::read_to_end(broker, &success_topic))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut on_kafka: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
    for r in &records {
        let id = r
            .header("id")
            .and_then(|id| Uuid::parse_str(id).ok())
            .unwrap_or_else(|| panic!("{success_topic} record without an event id: {r:?}"));
        // The copies the test published itself are not the aggregator's.
        if !copies.contains(&id) {
            on_kafka
                .entry(r.key.clone().unwrap_or_default())
                .or_default()
                .insert(id);
        }
    }
    let twice: Vec<(&String, &BTreeSet<Uuid>)> =
        on_kafka.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "order.processing.success emitted more than once (order → event ids): {twice:?}"
    );
    let copy_ids: Vec<Uuid> = copies.iter().copied().collect();
    let mut written: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
    for r in order_db
        .query(
            "SELECT aggregateid, id FROM outbox \
             WHERE aggregatetype = 'order.processing.success' AND id <> ALL($1)",
            &[&copy_ids],
        )
        .await
        .unwrap()
    {
        written.entry(r.get(0)).or_default().insert(r.get(1));
    }
    assert_eq!(
        on_kafka, written,
        "order.processing.success on Kafka vs the aggregator's outbox rows"
    );
    let paying: BTreeSet<String> = all
        .iter()
        .filter(|(_, p)| p.reaches_payment())
        .map(|(id, _)| id.clone())
        .collect();
    let emitted: BTreeSet<String> = on_kafka.keys().cloned().collect();
    assert_eq!(
        emitted,
        paying,
        "orders with order.processing.success vs orders that reached PAYING; only emitted: \
         {:?}, only paying: {:?}",
        emitted.difference(&paying).collect::<Vec<_>>(),
        paying.difference(&emitted).collect::<Vec<_>>()
    );
    let aggregator_records = records.len() - copies_on(&records, &copies);
    println!(
        "order.processing.success: {} events for {} orders that reached PAYING, \
         {aggregator_records} records",
        emitted.len(),
        paying.len(),
    );
    assert_eq!(
        aggregator_records,
        emitted.len(),
        "order.processing.success: an event was published more than once (exactly-once relay)"
    );

    assert_each_event_applied_once(&env, &copies).await;
    for kind in Kind::CHECKOUT {
        let dead: i64 = env
            .client(kind)
            .await
            .query_one(
                "SELECT count(*) FROM outbox WHERE aggregatetype LIKE '%.DLT'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(dead, 0, "{} dead-lettered records", kind.name());
    }
    let (outbox, inbox) = messaging(&env).await;
    println!("events published per topic {outbox:?}; applied per service {inbox:?}");
    println!("total {:?}", started.elapsed());
    env.stop().await;
}
