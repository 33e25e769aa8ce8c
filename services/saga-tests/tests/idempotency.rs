//! `POST /orders` with an `Idempotency-Key`: a repeat gets the first response and writes
//! nothing, a repeat with another body gets 422, and concurrent repeats create one order.
//! Against a real PostgreSQL; no broker is needed to take orders.

mod support;

use serde_json::json;
use support::http::{request_with, Response};
use support::pg::{PgCluster, PgOptions};
use support::{Kind, Service};

/// Orders, outbox rows and idempotency keys in the order database.
async fn counts(db: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox), \
             (SELECT count(*) FROM idempotency_keys)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

async fn post(service: &Service, key: Option<&str>, body: &serde_json::Value) -> Response {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    request_with(
        service.addr,
        "POST",
        "/orders",
        &headers,
        Some(&body.to_string()),
    )
    .await
}

/// What a client can compare of two responses.
fn seen(response: &Response) -> (u16, String, Option<String>) {
    (
        response.status,
        response.body.clone(),
        response.header("location").map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_idempotency_key_creates_one_order_and_replays_its_response() {
    support::init_logging();
    let cluster = PgCluster::start(PgOptions::default());
    let admin = cluster.client("postgres").await;
    admin.batch_execute("CREATE DATABASE orders").await.unwrap();
    let service = Service::start(Kind::Order, &cluster, "127.0.0.1:9", "order-service").await;
    let _stop = service.stop_on_drop();
    let db = cluster.client("orders").await;
    let order =
        json!({ "userId": 1, "productId": 1, "quantity": 2, "price": 500, "address": "Seoul" });

    // First use: created, and the key stored with it.
    let first = post(&service, Some("key-1"), &order).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert!(first.header("location").is_some());
    assert_eq!(counts(&db).await, (1, 1, 1));

    // A repeat, even with the body re-serialised in another key order: the same answer.
    let reordered = json!({ "address": "Seoul", "price": 500, "quantity": 2,
        "productId": 1, "userId": 1 });
    for body in [&order, &reordered] {
        let again = post(&service, Some("key-1"), body).await;
        assert_eq!(
            seen(&again),
            seen(&first),
            "a repeat replays the first response"
        );
    }
    assert_eq!(counts(&db).await, (1, 1, 1), "a repeat writes nothing");

    // The same key for another request: refused, nothing written.
    let mut other = order.clone();
    other["quantity"] = json!(3);
    let conflict = post(&service, Some("key-1"), &other).await;
    assert_eq!(conflict.status, 422, "{}", conflict.body);
    let error = conflict.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("different request body"), "{error}");
    assert_eq!(
        counts(&db).await,
        (1, 1, 1),
        "a conflicting repeat writes nothing"
    );

    // Bad keys are refused; no key behaves as before (a new order each time).
    let long = "k".repeat(256);
    let too_long = post(&service, Some(&long), &order).await;
    assert_eq!(too_long.status, 400, "{}", too_long.body);
    assert_eq!(counts(&db).await, (1, 1, 1));
    let plain = post(&service, None, &order).await;
    assert_eq!(plain.status, 202);
    assert_ne!(plain.body, first.body, "no key: a new order");
    assert_eq!(counts(&db).await, (2, 2, 1));

    // A refused body stores no key: the client may fix it and retry with the same key.
    let mut invalid = order.clone();
    invalid["quantity"] = json!(0);
    assert_eq!(post(&service, Some("key-2"), &invalid).await.status, 422);
    assert_eq!(counts(&db).await, (2, 2, 1));
    assert_eq!(post(&service, Some("key-2"), &order).await.status, 202);
    assert_eq!(counts(&db).await, (3, 3, 2));
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_repeats_of_one_key_create_exactly_one_order() {
    support::init_logging();
    let cluster = PgCluster::start(PgOptions::default());
    let admin = cluster.client("postgres").await;
    admin.batch_execute("CREATE DATABASE orders").await.unwrap();
    let service = Service::start(Kind::Order, &cluster, "127.0.0.1:9", "order-service").await;
    let _stop = service.stop_on_drop();
    let db = cluster.client("orders").await;
    let order =
        json!({ "userId": 7, "productId": 3, "quantity": 1, "price": 90, "address": "Busan" });

    let service = std::sync::Arc::new(service);
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let (service, start, order) = (service.clone(), start.clone(), order.clone());
            tokio::spawn(async move {
                start.wait().await;
                post(&service, Some("same-key"), &order).await
            })
        })
        .collect();
    let mut responses = Vec::new();
    for request in requests {
        responses.push(seen(&request.await.unwrap()));
    }
    assert_eq!(responses[0].0, 202, "{:?}", responses[0]);
    assert!(
        responses.iter().all(|r| *r == responses[0]),
        "every repeat got the first response: {responses:#?}"
    );
    assert_eq!(
        counts(&db).await,
        (1, 1, 1),
        "one order, one event, one key"
    );
    let service = std::sync::Arc::into_inner(service).expect("requests done");
    service.stop().await;
}

/// `POST /payments` and `POST /users` honour the key the same way: a repeat replays,
/// another body gets 422, and 20 concurrent repeats create exactly one resource.
#[tokio::test(flavor = "multi_thread")]
async fn payments_and_users_honour_the_key_too() {
    support::init_logging();
    let cluster = PgCluster::start(PgOptions::default());
    let admin = cluster.client("postgres").await;
    let cases = [
        (
            Kind::Payment,
            "/payments",
            "payments",
            json!({ "userId": 3, "reservationId": 9, "amount": 12000, "card": "4111" }),
            json!({ "userId": 3, "reservationId": 9, "amount": 13000, "card": "4111" }),
        ),
        (
            Kind::User,
            "/users",
            "users",
            json!({ "login": "kim", "name": "Kim", "password": "long enough" }),
            json!({ "login": "kim", "name": "Lee", "password": "long enough" }),
        ),
    ];
    for (kind, path, table, body, other) in cases {
        admin
            .batch_execute(&format!("CREATE DATABASE {}", kind.db()))
            .await
            .unwrap();
        let group = format!("{}-service", kind.name());
        let service = Service::start(kind, &cluster, "127.0.0.1:9", &group).await;
        let _stop = service.stop_on_drop();
        let db = cluster.client(kind.db()).await;
        let post_to = |key: &'static str, body: serde_json::Value| {
            let addr = service.addr;
            async move {
                request_with(
                    addr,
                    "POST",
                    path,
                    &[("Idempotency-Key", key)],
                    Some(&body.to_string()),
                )
                .await
            }
        };
        let first = post_to("one", body.clone()).await;
        assert_eq!(first.status, 202, "{path}: {}", first.body);
        assert_eq!(
            seen(&post_to("one", body.clone()).await),
            seen(&first),
            "{path}"
        );
        let conflict = post_to("one", other).await;
        assert_eq!(conflict.status, 422, "{path}: {}", conflict.body);
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(20));
        let requests: Vec<_> = (0..20)
            .map(|_| {
                let (start, request) = (start.clone(), post_to("two", body.clone()));
                tokio::spawn(async move {
                    start.wait().await;
                    seen(&request.await)
                })
            })
            .collect();
        let mut responses = Vec::new();
        for request in requests {
            responses.push(request.await.unwrap());
        }
        assert_eq!(responses[0].0, 202, "{path}: {:?}", responses[0]);
        assert!(
            responses.iter().all(|r| *r == responses[0]),
            "{path}: {responses:#?}"
        );
        let row = db
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {table}), (SELECT count(*) FROM outbox), \
                     (SELECT count(*) FROM idempotency_keys)"
                ),
                &[],
            )
            .await
            .unwrap();
        let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            counts,
            (2, 2, 2),
            "{path}: one resource per key, one event, one key"
        );
        service.stop().await;
    }
}
