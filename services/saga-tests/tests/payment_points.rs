//! The payment → points saga end to end, with its compensation and its compensation's
//! failure: the Rust payment service (two replicas) and the Spring Boot points service,
//! each with its own database and its own real relay, one real broker. The payment relay
//! is SIGKILLed mid-run and started again; at the end every topic is replayed from the
//! beginning to fresh consumer groups, which must change nothing. A poison record on the
//! points service's topic goes to its dead-letter topic and the partition moves on.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use support::http::request;
use support::points::PointsProcess;
use support::relay::Relay;
use support::{wait_for, Kind, SagaEnv, REFUND_DECLINED};

const PAYMENTS: usize = 200;
/// Payments accepted before the payment relay is SIGKILLed; more are taken while it is down.
const KILL_AFTER: usize = 100;
const WHILE_DOWN: usize = 20;
const USERS: i64 = 20;
/// Users whose rewards the points service refuses.
const BLOCKED: [i64; 2] = [7, 14];
/// The largest reward the points service grants.
const MAX_REWARD: i64 = 5_000;
const SETTLE: Duration = Duration::from_secs(180);
const POINTS_DB: &str = "points";
const POINTS_GROUP: &str = "points-service";

/// One payment as placed, and what its inputs decide.
#[derive(Debug, Clone)]
struct Placed {
    id: String,
    user: i64,
    amount: i64,
    declined_card: bool,
}

impl Placed {
    /// The seed's rule: 10 %, rounded down to 100.
    fn reward(&self) -> i64 {
        self.amount / 1_000 * 100
    }

    fn refused(&self) -> bool {
        BLOCKED.contains(&self.user) || self.reward() > MAX_REWARD
    }

    fn expected(&self) -> &'static str {
        match (self.refused(), self.declined_card) {
            (false, _) => "COMPLETED",
            (true, false) => "REFUNDED",
            (true, true) => "NEEDS_ATTENTION",
        }
    }
}

/// Payment `i`: user, amount and card vary so that every outcome occurs many times.
fn plan(i: usize) -> (i64, i64, String) {
    let user = (i as i64 % USERS) + 1;
    let amount = 1_000 + (i as i64 * 7_919) % 70_000; // rewards 100 … 7,000
    let card = if i % 4 == 0 {
        format!("4111-{REFUND_DECLINED}-{i}")
    } else {
        format!("4111-0000-{i}")
    };
    (user, amount, card)
}

async fn place(env: &SagaEnv, from: usize, to: usize) -> Vec<Placed> {
    let addr = env.addr(Kind::Payment);
    let tasks: Vec<_> = (from..to)
        .map(|i| {
            let (user, amount, card) = plan(i);
            tokio::spawn(async move {
                let body = json!({
                    "userId": user, "reservationId": 10_000 + i, "amount": amount, "card": card,
                })
                .to_string();
                let response = request(addr, "POST", "/payments", Some(&body)).await;
                assert_eq!(response.status, 202, "{}", response.body);
                Placed {
                    id: response.json()["paymentId"].as_str().unwrap().to_owned(),
                    user,
                    amount,
                    declined_card: card.contains(REFUND_DECLINED),
                }
            })
        })
        .collect();
    let mut placed = Vec::new();
    for task in tasks {
        placed.push(task.await.expect("payment request"));
    }
    placed
}

/// Everything the saga changed, in both databases.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    payments: BTreeMap<String, (String, Option<i64>)>,
    balances: BTreeMap<i64, i64>,
    rewards: i64,
    outbox: BTreeMap<&'static str, i64>,
    inbox: BTreeMap<&'static str, i64>,
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn state(env: &SagaEnv) -> State {
    let payment = env.client(Kind::Payment).await;
    let points = env.cluster.client(POINTS_DB).await;
    let payments = payment
        .query("SELECT id::text, status, points FROM payments", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let balances = points
        .query("SELECT user_id, balance FROM point_balances", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    State {
        payments,
        balances,
        rewards: count(&points, "SELECT count(*) FROM point_rewards").await,
        outbox: BTreeMap::from([
            (
                "payment",
                count(&payment, "SELECT count(*) FROM outbox").await,
            ),
            (
                "points",
                count(&points, "SELECT count(*) FROM outbox").await,
            ),
        ]),
        inbox: BTreeMap::from([
            (
                "payment",
                count(&payment, "SELECT count(*) FROM inbox").await,
            ),
            ("points", count(&points, "SELECT count(*) FROM inbox").await),
        ]),
    }
}

/// Per partition of `topic`: the offset `group` committed to Kafka, and the end of the log.
fn committed_and_end(env: &SagaEnv, group: &str, topic: &str) -> Result<Vec<(i64, i64)>, String> {
    let consumer: BaseConsumer = env
        .broker
        .client_config()
        .set("group.id", group)
        .create()
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(5);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| e.to_string())?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(list, timeout)
        .map_err(|e| e.to_string())?;
    partitions
        .iter()
        .map(|&p| {
            let (_, end) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| e.to_string())?;
            let at = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            Ok((at, end))
        })
        .collect()
}

/// `group` has read `topic` to its end (Kafka's committed offsets).
fn caught_up(env: &SagaEnv, group: &str, topic: &str) -> Result<(), String> {
    let seen = committed_and_end(env, group, topic)?;
    if !seen.is_empty() && seen.iter().all(|(at, end)| at >= end) {
        Ok(())
    } else {
        Err(format!("{group} on {topic}: (committed, end) {seen:?}"))
    }
}

async fn metric_total(addr: std::net::SocketAddr, name: &str) -> f64 {
    let page = request(addr, "GET", "/metrics", None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    page.body
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn start_points(env: &SagaEnv, group: &str) -> PointsProcess {
    let bootstrap = env.broker.bootstrap();
    PointsProcess::start(
        &env.cluster,
        POINTS_DB,
        &bootstrap,
        group,
        &BLOCKED,
        MAX_REWARD,
        env.dir.path(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_end_completed_refunded_or_needing_attention_through_a_relay_kill_and_a_replay() {
    let mut env = SagaEnv::start_saga(&[Kind::Payment]).await;
    env.admin
        .batch_execute(&format!("CREATE DATABASE {POINTS_DB}"))
        .await
        .unwrap();
    let bootstrap = env.broker.bootstrap();
    let points = start_points(&env, POINTS_GROUP).await;
    let mut points_relay = Relay::new(
        "points",
        env.cluster.port(),
        POINTS_DB,
        &bootstrap,
        env.dir.path(),
    );
    points_relay.start();
    points_relay.wait_streaming(&env.admin).await;

    // Payments flow; the payment relay is SIGKILLed while they do, more are taken while
    // it is down (their events wait in the outbox), and it starts again.
    let mut placed = place(&env, 0, KILL_AFTER).await;
    env.relay(Kind::Payment).kill9();
    placed.extend(place(&env, KILL_AFTER, KILL_AFTER + WHILE_DOWN).await);
    env.restart_relay(Kind::Payment).await;
    placed.extend(place(&env, KILL_AFTER + WHILE_DOWN, PAYMENTS).await);

    let settled = wait_for("every payment to leave PENDING", SETTLE, || async {
        let state = state(&env).await;
        let pending = state
            .payments
            .values()
            .filter(|(s, _)| s == "PENDING")
            .count();
        // Final, and every event either side wrote has been read by the other (the
        // refunds' events too, which the points service only marks as seen).
        let drained = state.inbox["points"] == state.outbox["payment"]
            && state.inbox["payment"] == state.outbox["points"];
        if pending == 0 && state.payments.len() == PAYMENTS && drained {
            Ok(state)
        } else {
            Err(format!(
                "{pending} of {} pending; outbox {:?} inbox {:?}",
                state.payments.len(),
                state.outbox,
                state.inbox
            ))
        }
    })
    .await;

    // Each payment ends as its inputs decide.
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut balances: BTreeMap<i64, i64> = BTreeMap::new();
    for p in &placed {
        let (status, points) = &settled.payments[&p.id];
        assert_eq!(status, p.expected(), "payment {p:?}: {status}");
        *tally.entry(p.expected()).or_default() += 1;
        if !p.refused() {
            assert_eq!(*points, Some(p.reward()), "payment {p:?}");
            *balances.entry(p.user).or_default() += p.reward();
        }
    }
    assert!(
        ["COMPLETED", "REFUNDED", "NEEDS_ATTENTION"]
            .iter()
            .all(|s| tally.get(s).copied().unwrap_or(0) >= 10),
        "every outcome occurs: {tally:?}"
    );
    // Points balances are the sum of the rewarded payments (a refused one adds nothing).
    let granted: BTreeMap<i64, i64> = settled
        .balances
        .iter()
        .filter(|(_, &b)| b != 0)
        .map(|(&u, &b)| (u, b))
        .collect();
    assert_eq!(granted, balances, "points balances");
    assert_eq!(
        settled.rewards as usize, tally["COMPLETED"],
        "point rewards"
    );
    let user = placed.iter().find(|p| !p.refused()).unwrap().user;
    let api = request(points.addr, "GET", &format!("/points/{user}"), None)
        .await
        .json();
    assert_eq!(api["balance"], balances[&user], "{api}");

    // The failed compensations are where an operator looks, and counted.
    let listed = request(
        env.addr(Kind::Payment),
        "GET",
        "/payments?status=NEEDS_ATTENTION",
        None,
    )
    .await
    .json();
    let listed: Vec<&str> = listed["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["paymentId"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), tally["NEEDS_ATTENTION"], "{listed:?}");
    let mut counted = 0.0;
    for replica in env.running(Kind::Payment) {
        counted += metric_total(replica.addr, "saga_compensation_failed_total").await;
    }
    assert_eq!(
        counted as usize, tally["NEEDS_ATTENTION"],
        "saga_compensation_failed_total"
    );

    // A poison record on the points service's topic goes to `<topic>.DLT` through its
    // outbox, with the reason; the payments placed after it are still rewarded.
    let poison_id = uuid::Uuid::new_v4().to_string();
    let producer: FutureProducer = env.broker.client_config().create().expect("producer");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "id",
            value: Some(poison_id.as_bytes()),
        })
        .insert(Header {
            key: "eventType",
            value: Some(b"ReservationCompleted".as_slice()),
        });
    producer
        .send(
            FutureRecord::<str, [u8]>::to("outbox.event.payment")
                .key("poison")
                .payload(b"{not json".as_slice())
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce the poison record: {e}"));
    let after_poison = place(&env, PAYMENTS, PAYMENTS + 4).await;
    let letters = env
        .broker
        .consume_until(&["outbox.event.payment.DLT"], SETTLE, |records| {
            !records.is_empty()
        })
        .await;
    let reason = letters[0]
        .header_str("dltReason")
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("JSON"),
        "the dead letter says why: {:#?}",
        letters[0]
    );
    assert!(
        letters[0]
            .header_str("dltOrigin")
            .is_some_and(|o| o.starts_with("outbox.event.payment/")),
        "{:#?}",
        letters[0]
    );
    placed.extend(after_poison);
    let settled = wait_for(
        "the payments after the poison record to end",
        SETTLE,
        || async {
            let state = state(&env).await;
            let done = placed.iter().all(|p| {
                state
                    .payments
                    .get(&p.id)
                    .is_some_and(|(s, _)| s == p.expected())
            });
            // The points outbox also holds the dead letter, which the payment service never reads.
            // And the points service has read every payment event, and the poison record
            // (its inbox row is written with its dead letter).
            let drained = state.inbox["payment"] + 1 == state.outbox["points"]
                && state.inbox["points"] == state.outbox["payment"] + 1;
            if done && drained {
                Ok(state)
            } else {
                Err(format!("outbox {:?} inbox {:?}", state.outbox, state.inbox))
            }
        },
    )
    .await;

    // Replaying every topic from the beginning to fresh consumer groups changes nothing
    // (the poison record's dead letter included).
    points.stop().await;
    env.restart_services("replay").await;
    let replay_points = start_points(&env, "replay-points").await;
    wait_for(
        "the replay to reach the end of every topic",
        SETTLE,
        || async {
            caught_up(&env, "replay-points", "outbox.event.payment")?;
            caught_up(&env, "replay-payment", "outbox.event.points")
        },
    )
    .await;
    let after = state(&env).await;
    assert_eq!(after, settled, "a replay changed the saga's state");
    println!(
        "payment-points: {PAYMENTS} payments {tally:?}, payment relay SIGKILLed after {KILL_AFTER}; \
         {} users hold {} points; replay changed nothing",
        balances.len(),
        balances.values().sum::<i64>()
    );
    replay_points.stop().await;
    env.stop().await;
}
