//! The user registration saga end to end: user → auth → user, through two real relays
//! and a real broker, two replicas of each service in its consumer group. Registrations
//! arrive concurrently, several of them for the same login: exactly one per login gets
//! the credentials, every user ends COMPLETED or FAILED with the reason, never PENDING.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use support::http::request;
use support::{wait_for, Kind, SagaEnv};
use uuid::Uuid;

/// Distinct logins; login `i` is registered `1 + i % 3` times at once.
const LOGINS: usize = 30;
const SETTLE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_end_completed_or_failed_with_one_owner_per_login() {
    let env = SagaEnv::start_saga(&Kind::REGISTRATION).await;
    let user = env.addr(Kind::User);

    // What the API refuses at once is never a PENDING user.
    let refused = request(
        user,
        "POST",
        "/users",
        Some(r#"{"login":"x","name":"n","password":"longenough"}"#),
    )
    .await;
    assert_eq!(refused.status, 422, "{}", refused.body);

    let mut requests = Vec::new();
    for i in 0..LOGINS {
        for attempt in 0..1 + i % 3 {
            let body = json!({
                "login": format!("User.{i}"),
                "name": format!("user {i} attempt {attempt}"),
                "password": format!("secret-{i}-{attempt}"),
            })
            .to_string();
            requests.push(tokio::spawn(async move {
                let response = request(user, "POST", "/users", Some(&body)).await;
                assert_eq!(response.status, 202, "{}", response.body);
                let location = response.header("location").expect("Location").to_owned();
                assert_eq!(response.json()["status"], "PENDING");
                (format!("user.{i}"), location)
            }));
        }
    }
    let mut placed: Vec<(String, String)> = Vec::new();
    for task in requests {
        placed.push(task.await.expect("request task"));
    }

    // Poll the API, as a client would, until no registration is PENDING.
    let outcomes: Vec<(String, serde_json::Value)> =
        wait_for("every registration to leave PENDING", SETTLE, || {
            let placed = placed.clone();
            async move {
                let mut outcomes = Vec::new();
                let mut pending = 0;
                for (login, location) in &placed {
                    let body = request(user, "GET", location, None).await.json();
                    if body["status"] == "PENDING" {
                        pending += 1;
                    }
                    outcomes.push((login.clone(), body));
                }
                if pending == 0 {
                    Ok(outcomes)
                } else {
                    Err(format!("{pending} of {} pending", placed.len()))
                }
            }
        })
        .await;

    let mut completed: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for (login, body) in &outcomes {
        let id: Uuid = body["userId"].as_str().unwrap().parse().unwrap();
        match body["status"].as_str().unwrap() {
            "COMPLETED" => {
                assert!(body["reason"].is_null(), "{body}");
                completed.entry(login.clone()).or_default().push(id);
            }
            "FAILED" => {
                let reason = body["reason"].as_str().unwrap_or_default();
                assert_eq!(reason, format!("login {login} is already taken"), "{body}");
            }
            other => panic!("registration ended {other}: {body}"),
        }
    }
    // Exactly one registration per login won, and the credentials are that user's.
    assert_eq!(
        completed.len(),
        LOGINS,
        "a login got no owner: {completed:?}"
    );
    assert!(
        completed.values().all(|ids| ids.len() == 1),
        "a login got two owners: {completed:?}"
    );
    let credentials: BTreeMap<String, Uuid> = env
        .client(Kind::Auth)
        .await
        .query("SELECT login, user_id FROM credentials", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let owners: BTreeMap<String, Uuid> = completed
        .into_iter()
        .map(|(login, ids)| (login, ids[0]))
        .collect();
    assert_eq!(credentials, owners, "credentials are not the winners'");
    // The clear password is in no table and no event: only its hash travelled.
    let hashes: BTreeSet<String> = env
        .client(Kind::Auth)
        .await
        .query("SELECT password_hash FROM credentials", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        hashes
            .iter()
            .all(|h| h.starts_with("pbkdf2-sha256$") && !h.contains("secret-")),
        "{hashes:?}"
    );
    let failed = outcomes.len() - LOGINS;
    println!(
        "registration: {} registrations for {LOGINS} logins: {LOGINS} COMPLETED, {failed} FAILED (login taken)",
        outcomes.len()
    );
    env.stop().await;
}
