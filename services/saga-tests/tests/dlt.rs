//! Records a service can never apply go to `<topic>.DLT` through its own outbox and relay,
//! with why in their headers, and the records after them are applied.
//!
//! Real PostgreSQL, a real broker, the order service in this process and its relay (the
//! real binary, from `config/order-relay.toml`). Poison records are produced straight to
//! `outbox.event.product`, one partition, between valid ones. On the code before dead
//! letters, the poison was logged and skipped: the statuses would still change, but no
//! `.DLT` record would ever appear (the consume below times out) and the counter would
//! not exist.

mod support;

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use support::http::request;
use support::kafka::{Broker, ReceivedRecord};
use support::pg::{PgCluster, PgOptions};
use support::relay::Relay;
use support::{wait_for, Kind, Service};
use uuid::Uuid;

const TOPIC: &str = "outbox.event.product";
const DLT: &str = "outbox.event.product.DLT";
const TIMEOUT: Duration = Duration::from_secs(60);

/// One record to produce to partition 0 of [`TOPIC`].
struct Produce<'a> {
    headers: &'a [(&'a str, &'a str)],
    value: Option<&'a [u8]>,
}

async fn produce(broker: &Broker, records: &[Produce<'_>]) {
    let producer: FutureProducer = broker.client_config().create().expect("producer");
    for record in records {
        let mut headers = OwnedHeaders::new();
        for (key, value) in record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut message = FutureRecord::<(), [u8]>::to(TOPIC)
            .partition(0)
            .headers(headers);
        if let Some(value) = record.value {
            message = message.payload(value);
        }
        producer
            .send(message, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
}

async fn create_order(service: &Service) -> Uuid {
    let body =
        json!({ "userId": 1, "productId": 1, "quantity": 1, "price": 10, "address": "Seoul" });
    let response = request(service.addr, "POST", "/orders", Some(&body.to_string())).await;
    assert_eq!(response.status, 202, "{}", response.body);
    response.json()["orderId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The value of `saga_consumer_dead_lettered_total{topic="<TOPIC>"}` on `/metrics`.
async fn dead_lettered(service: &Service) -> Result<f64, String> {
    let metrics = request(service.addr, "GET", "/metrics", None).await;
    let prefix = format!("saga_consumer_dead_lettered_total{{topic=\"{TOPIC}\"}} ");
    metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no {prefix:?} in /metrics:\n{}", metrics.body))
}

fn header<'a>(record: &'a ReceivedRecord, name: &str) -> Option<&'a str> {
    record.header_str(name)
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_go_to_the_dlt_with_their_reason_and_the_partition_moves_on() {
    support::init_logging();
    let cluster = PgCluster::start(PgOptions::default());
    let broker = Broker::start();
    let admin = cluster.client("postgres").await;
    admin.batch_execute("CREATE DATABASE orders").await.unwrap();
    let dir = tempfile::Builder::new().prefix("dlt-").tempdir().unwrap();
    let bootstrap = broker.bootstrap();
    let service = Service::start(Kind::Order, &cluster, &bootstrap, "order-service").await;
    let _stop = service.stop_on_drop();
    let mut relay = Relay::new("order", cluster.port(), "orders", &bootstrap, dir.path());
    relay.start();
    relay.wait_streaming(&admin).await;
    let db = cluster.client("orders").await;

    let (cancelled, completed) = (create_order(&service).await, create_order(&service).await);
    broker.create_topic(TOPIC, 1).await;
    let (a, b) = (cancelled.to_string(), completed.to_string());
    let refused_id = Uuid::new_v4().to_string();
    let ok_ids = [Uuid::new_v4().to_string(), Uuid::new_v4().to_string()];
    let outcome = |order: &str, success: bool| {
        json!({ "orderId": order, "success": success, "reason": "out of stock" }).to_string()
    };
    let (cancel, complete) = (outcome(&a, false), outcome(&b, true));
    produce(
        &broker,
        &[
            // Offset 0: not an event (no headers, a value that is not JSON).
            Produce {
                headers: &[],
                value: Some(b"not json"),
            },
            // Offset 1: an event whose payload the order service refuses.
            Produce {
                headers: &[
                    ("id", refused_id.as_str()),
                    ("eventType", "ProductDecreased"),
                    ("correlationId", a.as_str()),
                ],
                value: Some(br#"{"unexpected": true}"#),
            },
            // Offset 2: valid; cancels the first order.
            Produce {
                headers: &[
                    ("id", ok_ids[0].as_str()),
                    ("eventType", "ProductDecreased"),
                    ("correlationId", a.as_str()),
                ],
                value: Some(cancel.as_bytes()),
            },
            // Offset 3: not an event (a bad id, a tombstone).
            Produce {
                headers: &[("id", "not-a-uuid"), ("eventType", "ProductDecreased")],
                value: None,
            },
            // Offset 4: valid; completes the second order (a delivery outcome, same rules).
            Produce {
                headers: &[
                    ("id", ok_ids[1].as_str()),
                    ("eventType", "DeliveryCreated"),
                    ("correlationId", b.as_str()),
                ],
                value: Some(complete.as_bytes()),
            },
        ],
    )
    .await;

    // The records after the poison are applied.
    wait_for("both orders closed", TIMEOUT, || async {
        let rows = db
            .query(
                "SELECT id, status FROM orders WHERE id = ANY($1)",
                &[&vec![cancelled, completed]],
            )
            .await
            .map_err(|e| e.to_string())?;
        let status = |id: Uuid| {
            rows.iter()
                .find(|r| r.get::<_, Uuid>(0) == id)
                .map(|r| r.get::<_, String>(1))
        };
        match (status(cancelled).as_deref(), status(completed).as_deref()) {
            (Some("CANCELLED"), Some("COMPLETED")) => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await;

    // The poison is in the DLT, published by the relay, with why and where from.
    let letters = broker
        .consume_until(&[DLT], TIMEOUT, |records| records.len() >= 3)
        .await;
    let origin = |offset: i64| {
        let origin = format!("{TOPIC}/0/{offset}");
        letters
            .iter()
            .find(|r| header(r, "dltOrigin") == Some(origin.as_str()))
            .unwrap_or_else(|| panic!("no dead letter from {origin}: {letters:#?}"))
    };
    for (offset, class) in [(0, "not-an-event"), (1, "payload"), (3, "not-an-event")] {
        let letter = origin(offset);
        assert_eq!(header(letter, "dltErrorClass"), Some(class), "{letter:#?}");
        let reason = header(letter, "dltReason").unwrap_or_default();
        assert!(!reason.is_empty(), "offset {offset}: a reason");
        println!("offset {offset}: {class}: {reason}");
    }
    let not_json = origin(0);
    let value: serde_json::Value =
        serde_json::from_slice(not_json.payload.as_deref().unwrap()).expect("a JSON wrapper");
    assert_eq!(value, json!({ "raw": "not json" }));
    assert_eq!(
        not_json.key.as_deref(),
        Some(format!("{TOPIC}-0-0").as_bytes())
    );
    assert!(header(origin(0), "dltReason")
        .unwrap()
        .contains("no `id` header"));
    let refused = origin(1);
    assert_eq!(header(refused, "eventType"), Some("ProductDecreased"));
    assert_eq!(header(refused, "correlationId"), Some(a.as_str()));
    assert_eq!(
        refused.payload.as_deref(),
        Some(br#"{"unexpected": true}"#.as_slice()),
        "a JSON value is kept as it was"
    );
    assert!(header(refused, "dltReason")
        .unwrap()
        .contains("does not match its schema"));
    assert_eq!(
        header(origin(3), "id").map(str::len),
        Some(36),
        "its own id"
    );
    assert_eq!(
        letters.len(),
        3,
        "only the poison is dead-lettered: {letters:#?}"
    );

    // The refused event is in the inbox (a redelivery changes nothing), and counted.
    let refused_uuid: Uuid = refused_id.parse().unwrap();
    let seen = db
        .query_one(
            "SELECT count(*) FROM inbox WHERE event_id = $1",
            &[&refused_uuid],
        )
        .await
        .unwrap();
    assert_eq!(seen.get::<_, i64>(0), 1);
    let counted = wait_for("three dead letters counted", TIMEOUT, || async {
        match dead_lettered(&service).await? {
            n if n == 3.0 => Ok(n),
            n => Err(format!("{n}")),
        }
    })
    .await;
    assert_eq!(counted, 3.0);

    // Ordinary events carry none of the dead-letter headers.
    let created = broker
        .consume_count(&["outbox.event.order"], 2, TIMEOUT)
        .await;
    for event in &created {
        assert_eq!(header(event, "eventType"), Some("OrderCreated"));
        for name in ["dltReason", "dltOrigin", "dltErrorClass"] {
            assert!(event.header(name).is_none(), "{name} on {event:#?}");
        }
    }
    service.stop().await;
}
