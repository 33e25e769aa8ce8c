//! `POST /orders` refuses bad requests with a JSON 4xx and writes nothing; a good one
//! answers 202 with a `Location` to poll.

mod support;

use serde_json::json;
use support::http::request;
use support::pg::{PgCluster, PgOptions};
use support::{Kind, Service};

#[tokio::test(flavor = "multi_thread")]
async fn bad_order_requests_get_a_json_4xx_and_write_nothing() {
    support::init_logging();
    let cluster = PgCluster::start(PgOptions::default());
    let admin = cluster.client("postgres").await;
    admin.batch_execute("CREATE DATABASE orders").await.unwrap();
    // No broker is needed to take orders; the consumer just waits for one.
    let service = Service::start(Kind::Order, &cluster, "127.0.0.1:9", "order-service").await;
    let db = cluster.client("orders").await;
    let counts = || async {
        let row = db
            .query_one(
                "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox)",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };

    let valid =
        json!({ "userId": 1, "productId": 1, "quantity": 2, "price": 500, "address": "Seoul" });
    let with = |key: &str, value: serde_json::Value| {
        let mut body = valid.clone();
        body[key] = value;
        body.to_string()
    };
    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("address");
    let cases = [
        (
            "malformed JSON",
            r#"{"userId": 1, "productId": "#.to_owned(),
        ),
        ("empty body", String::new()),
        ("missing field", missing.to_string()),
        ("negative quantity", with("quantity", json!(-1))),
        ("zero quantity", with("quantity", json!(0))),
        ("quantity of the wrong type", with("quantity", json!("two"))),
        ("negative price", with("price", json!(-5))),
        ("blank address", with("address", json!("  "))),
        ("unknown field", with("coupon", json!("FREE"))),
    ];
    for (what, body) in &cases {
        let response = request(service.addr, "POST", "/orders", Some(body)).await;
        assert!(
            (400..500).contains(&response.status),
            "{what}: {} {}",
            response.status,
            response.body
        );
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let error = response.json()["error"].as_str().map(str::to_owned);
        assert!(
            error.is_some_and(|e| !e.is_empty()),
            "{what}: {}",
            response.body
        );
        println!("{what}: {} {}", response.status, response.body);
    }
    assert_eq!(counts().await, (0, 0), "a refused request wrote nothing");

    let response = request(service.addr, "POST", "/orders", Some(&valid.to_string())).await;
    assert_eq!(response.status, 202, "{}", response.body);
    assert_eq!(
        counts().await,
        (1, 1),
        "an accepted order writes the order and its event"
    );
    let location = response.header("location").expect("Location").to_owned();
    let status = request(service.addr, "GET", &location, None).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["status"], "PENDING");
    let unknown = format!("/orders/{}", uuid::Uuid::new_v4());
    assert_eq!(
        request(service.addr, "GET", &unknown, None).await.status,
        404
    );
    assert_eq!(
        request(service.addr, "GET", "/orders/not-a-uuid", None)
            .await
            .status,
        422
    );
    service.stop().await;
}
