//! TLS to PostgreSQL: `sslmode=verify-full` against a server whose certificate comes from
//! a CA the test makes with openssl; a host the certificate does not name is refused.

mod common;

use std::path::Path;
use std::process::Command;

use common::openssl;
use common::pg::{PgCluster, PgOptions};
use outbox_relay::replication::ReplicationConnection;
use outbox_relay::tls::split_url;

/// A CA, and a server certificate for `localhost` only (not 127.0.0.1).
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=outbox-relay test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    // PostgreSQL wants its key private to the user it runs as.
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
    {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&key)
            .arg(dir.join("server.pem"))
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn tls_cluster(dir: &Path) -> PgCluster {
    let path = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    PgCluster::start(PgOptions {
        extra_conf: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), path("server.pem")),
            ("ssl_key_file".into(), path("server.key")),
        ],
        // Only TLS connections are let in over TCP.
        hba_lines: vec![
            "hostnossl all all 127.0.0.1/32 reject".into(),
            "hostssl all all 127.0.0.1/32 trust".into(),
            "hostssl replication all 127.0.0.1/32 trust".into(),
        ],
        ..PgOptions::default()
    })
}

async fn replication_connect(url: &str) -> Result<(), String> {
    let (rest, tls) = split_url(url).unwrap();
    let config: tokio_postgres::Config = rest.parse().unwrap();
    let mut connection = ReplicationConnection::connect_tls(&config, &tls)
        .await
        .map_err(|e| e.to_string())?;
    connection
        .identify_system()
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_to_the_named_host_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    make_certificates(dir.path());
    let cluster = tls_cluster(dir.path());
    let ca = dir.path().join("ca.pem");
    let url = |host: &str, mode: &str| {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode={mode}&sslrootcert={}",
            cluster.port(),
            ca.display()
        )
    };

    replication_connect(&url("localhost", "verify-full"))
        .await
        .expect("verify-full to the named host");
    let refused = replication_connect(&url("127.0.0.1", "verify-full"))
        .await
        .expect_err("host not in the certificate");
    assert!(
        refused.contains("does not match host \"127.0.0.1\""),
        "{refused}"
    );
    replication_connect(&url("127.0.0.1", "verify-ca"))
        .await
        .expect("verify-ca skips the host name");
    let plain = replication_connect(&url("127.0.0.1", "disable"))
        .await
        .expect_err("plain TCP is rejected by pg_hba");
    assert!(
        plain.contains("no encryption") || plain.contains("pg_hba.conf"),
        "{plain}"
    );

    // The admin connection (tokio-postgres) goes through the same settings: `check` passes.
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!("[source]\nurl = \"{}\"\nslot = \"tls_slot\"\npublication = \"tls_pub\"\ntables = [\"public.outbox\"]\n", url("localhost", "verify-full")),
    )
    .unwrap();
    cluster.psql("postgres", common::OUTBOX_DDL);
    let out = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
