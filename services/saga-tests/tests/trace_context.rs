//! One W3C trace runs from an HTTP request through the outbox, the relay and Kafka into
//! the next service's handler, and on through that handler's own outbox row: the trace
//! context is data (`outbox.traceparent` → header `traceparent`), and each consumer's span
//! continues it (saga_kit::trace).
//!
//! Real PostgreSQL, a real broker, the order and product services in this process (their
//! logs captured, formatted as `saga_kit::telemetry::init` formats them) and both relays
//! (the real binary, from the shipped `config/{order,product}-relay.toml`). The chain:
//! `POST /orders` with a caller's `traceparent` → the order's `OrderCreated` row → the
//! product service's handler → its `ProductDecreased` row → the order service's handler.
//! Every row and record of it must carry the caller's trace id, each with a span id of
//! its own, and every log line about the order must show `trace_id`. Without the consumer
//! adopting the header, the product's row would start a new trace and its log lines would
//! carry another id (or none); without the relay mapping, the record would have no header.
//!
//! A record dead-lettered by a consumer keeps the trace of the record it came from.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use saga_kit::telemetry::{self, LogFormat};
use saga_kit::trace;
use serde_json::json;
use support::http::request_with;
use support::kafka::Broker;
use support::pg::{PgCluster, PgOptions};
use support::relay::Relay;
use support::{wait_for, Kind, Service};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The log lines of this process (both services), kept for the assertions.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buffer.extend_from_slice(bytes);
        std::io::stderr().write_all(bytes)?; // Shown by the test harness on failure.
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for Captured {
    type Writer = Captured;
    fn make_writer(&'w self) -> Captured {
        self.clone()
    }
}

/// A caller's root `traceparent` with random ids.
fn caller_traceparent() -> String {
    let trace = Uuid::new_v4().simple().to_string();
    let span = &Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// (trace id, span id) of a stored or received `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let context =
        trace::parse(traceparent).unwrap_or_else(|e| panic!("{traceparent:?} is not one: {e}"));
    (
        context.trace_id().to_string(),
        context.span_id().to_string(),
    )
}

/// The `traceparent` of the outbox row of `event_type` for `order` in `db`, once written.
async fn row_traceparent(db: &tokio_postgres::Client, event_type: &str, order: Uuid) -> String {
    let what = format!("the {event_type} row of order {order}");
    wait_for(&what, TIMEOUT, || async {
        let row = db
            .query_opt(
                "SELECT traceparent FROM outbox WHERE type = $1 AND correlation_id = $2",
                &[&event_type, &order.to_string()],
            )
            .await
            .map_err(|e| e.to_string())?;
        match row.map(|r| r.get::<_, Option<String>>(0)) {
            Some(Some(traceparent)) => Ok(traceparent),
            Some(None) => Err("a row with traceparent NULL".to_owned()),
            None => Err("no row yet".to_owned()),
        }
    })
    .await
}

/// Waits until a captured line contains every one of `parts`; returns it.
async fn logged(captured: &Captured, parts: &[&str]) -> String {
    let what = format!("a log line with {parts:?}");
    wait_for(&what, TIMEOUT, || async {
        captured
            .lines()
            .into_iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .ok_or_else(|| "none".to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumers_span_continues_the_producers_trace_through_the_relay() {
    let captured = Captured::default();
    telemetry::subscriber(
        LogFormat::Text,
        EnvFilter::new("info,rdkafka=warn"),
        captured.clone(),
    )
    .try_init()
    .expect("the only subscriber of this test binary");

    let cluster = PgCluster::start(PgOptions::default());
    let broker = Broker::start();
    let admin = cluster.client("postgres").await;
    for db in ["orders", "products"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
    }
    let dir = tempfile::Builder::new().prefix("trace-").tempdir().unwrap();
    let bootstrap = broker.bootstrap();
    let order_service = Service::start(Kind::Order, &cluster, &bootstrap, "order-service").await;
    let _stop_order = order_service.stop_on_drop();
    let product_service =
        Service::start(Kind::Product, &cluster, &bootstrap, "product-service").await;
    let _stop_product = product_service.stop_on_drop();
    let mut relays = Vec::new();
    for (service, db) in [("order", "orders"), ("product", "products")] {
        let mut relay = Relay::new(service, cluster.port(), db, &bootstrap, dir.path());
        relay.start();
        relay.wait_streaming(&admin).await;
        relays.push(relay);
    }
    let (orders, products) = (
        cluster.client("orders").await,
        cluster.client("products").await,
    );

    // The caller's trace enters over HTTP (product 404 does not exist: the product
    // service answers, refusing, and the order service closes the order).
    let caller = caller_traceparent();
    let (trace_id, caller_span) = ids(&caller);
    let body = json!({ "userId": 1, "productId": 404, "quantity": 1, "price": 10,
        "address": "Seoul" });
    let response = request_with(
        order_service.addr,
        "POST",
        "/orders",
        &[("traceparent", caller.as_str())],
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.body);
    let order: Uuid = response.json()["orderId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The order's row: the caller's trace, the request handler's own span.
    let created = row_traceparent(&orders, "OrderCreated", order).await;
    let (created_trace, created_span) = ids(&created);
    assert_eq!(created_trace, trace_id, "OrderCreated row: {created}");
    assert_ne!(
        created_span, caller_span,
        "written in the service's own span"
    );

    // The relay maps the column to the record's header, unchanged.
    let records = broker
        .consume_until(&["outbox.event.order"], TIMEOUT, |records| {
            records
                .iter()
                .any(|r| r.key.as_deref() == Some(order.to_string().as_bytes()))
        })
        .await;
    let record = records
        .iter()
        .find(|r| r.key.as_deref() == Some(order.to_string().as_bytes()))
        .unwrap();
    assert_eq!(
        record.header_str("traceparent"),
        Some(created.as_str()),
        "{record:#?}"
    );

    // The product service handled it in the same trace, in a span of its own: the row
    // its handler wrote continues the trace.
    let decreased = row_traceparent(&products, "ProductDecreased", order).await;
    let (decreased_trace, decreased_span) = ids(&decreased);
    assert_eq!(
        decreased_trace, trace_id,
        "the consumer's ProductDecreased row ({decreased}) continues OrderCreated's ({created})"
    );
    assert_ne!(decreased_span, created_span, "the consumer's own span");

    // Its handler's log lines carry the trace id, and so do the order service's when the
    // answer comes back through the product relay.
    let trace_field = format!("trace_id={trace_id}");
    let correlation = format!("correlation_id={order}");
    let product_line = logged(
        &captured,
        &[
            "event{",
            "event_type=OrderCreated",
            &correlation,
            "stock not reserved",
        ],
    )
    .await;
    assert!(product_line.contains(&trace_field), "{product_line}");
    let order_line = logged(
        &captured,
        &[
            "event{",
            "event_type=ProductDecreased",
            &correlation,
            "order closed",
        ],
    )
    .await;
    assert!(order_line.contains(&trace_field), "{order_line}");
    let about_the_order: Vec<String> = captured
        .lines()
        .into_iter()
        .filter(|l| l.contains(&order.to_string()))
        .collect();
    assert!(about_the_order.len() >= 4, "{about_the_order:#?}");
    for line in &about_the_order {
        assert!(line.contains(&trace_field), "no {trace_field} in: {line}");
    }

    // A record the order service dead-letters keeps the trace it came with.
    let poison = caller_traceparent();
    let poison_id = Uuid::new_v4();
    let producer: FutureProducer = broker.client_config().create().expect("producer");
    let headers = [
        ("id", poison_id.to_string()),
        ("eventType", "ProductDecreased".to_owned()),
        ("correlationId", order.to_string()),
        ("traceparent", poison.clone()),
    ]
    .iter()
    .fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    });
    producer
        .send(
            FutureRecord::<(), [u8]>::to("outbox.event.product")
                .headers(headers)
                .payload(br#"{"unexpected": true}"#.as_slice()),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    let letter = wait_for("the dead letter's row", TIMEOUT, || async {
        let row = orders
            .query_opt(
                "SELECT traceparent FROM outbox WHERE aggregatetype = 'product.DLT' \
                 AND correlation_id = $1",
                &[&order.to_string()],
            )
            .await
            .map_err(|e| e.to_string())?;
        row.and_then(|r| r.get::<_, Option<String>>(0))
            .ok_or_else(|| "no dead letter with a traceparent yet".to_owned())
    })
    .await;
    assert_eq!(
        ids(&letter).0,
        ids(&poison).0,
        "dead letter {letter} of {poison}"
    );

    order_service.stop().await;
    product_service.stop().await;
}
