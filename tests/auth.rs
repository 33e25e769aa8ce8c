//! The replication connection authenticates with every method a production server uses.

mod common;

use common::pg::{PgCluster, PgOptions};
use outbox_relay::replication::{ReplicationConnection, ReplicationError};

fn cluster() -> PgCluster {
    let cluster = PgCluster::start(PgOptions {
        hba_lines: vec![
            "host all scram_user 127.0.0.1/32 scram-sha-256".into(),
            "host replication scram_user 127.0.0.1/32 scram-sha-256".into(),
            "host all md5_user 127.0.0.1/32 md5".into(),
            "host replication md5_user 127.0.0.1/32 md5".into(),
            "host all clear_user 127.0.0.1/32 password".into(),
            "host replication clear_user 127.0.0.1/32 password".into(),
        ],
        ..PgOptions::default()
    });
    cluster.psql(
        "postgres",
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scrampw1';
         CREATE ROLE clear_user LOGIN REPLICATION PASSWORD 'clearpw1';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5pw1';",
    );
    cluster
}

async fn identify(url: &str) -> Result<(), ReplicationError> {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let mut connection = ReplicationConnection::connect(&config).await?;
    let identity = connection.identify_system().await?;
    assert_eq!(identity.database.as_deref(), Some("postgres"));
    assert!(identity.timeline >= 1);
    Ok(())
}

#[tokio::test]
async fn trust_cleartext_md5_and_scram_all_authenticate() {
    let cluster = cluster();
    identify(&cluster.url("postgres")).await.expect("trust");
    identify(&cluster.url_as("clear_user", "clearpw1", "postgres"))
        .await
        .expect("cleartext");
    identify(&cluster.url_as("md5_user", "md5pw1", "postgres"))
        .await
        .expect("md5");
    identify(&cluster.url_as("scram_user", "scrampw1", "postgres"))
        .await
        .expect("scram-sha-256");

    for (user, method) in [
        ("clear_user", "password"),
        ("md5_user", "md5"),
        ("scram_user", "scram"),
    ] {
        let err = identify(&cluster.url_as(user, "wrong", "postgres"))
            .await
            .expect_err(method);
        assert_eq!(err.sqlstate(), Some("28P01"), "{method}: {err}");
        assert!(
            !err.is_retryable(),
            "{method}: a wrong password needs an operator"
        );
    }
    let err = identify(&format!(
        "postgres://scram_user@127.0.0.1:{}/postgres",
        cluster.port()
    ))
    .await
    .expect_err("no password");
    assert!(err.to_string().contains("source.url has none"), "{err}");
}
