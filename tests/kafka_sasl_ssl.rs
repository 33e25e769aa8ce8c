//! Kafka over `SASL_SSL` with SCRAM-SHA-512, as production clusters are reached: a broker
//! whose certificate comes from a CA the test makes with openssl (PEM key store, no Java
//! key tool), and a relay configured only through `[kafka.properties]`, its password from
//! the environment (`"sasl.password" = "${KAFKA_PASSWORD}"`).
//!
//! * The right password: rows arrive, and the password appears in no log line, even at
//!   debug level.
//! * A wrong password: the relay stops (bad credentials are a stop, see `src/policy.rs`)
//!   with one error line that says what to fix, and the password appears nowhere either.

mod common;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use common::chaos::{Figures, Stage};
use common::kafka::{Broker, BrokerOptions};
use common::pg::PgCluster;
use common::relay::RelayProcess;
use common::workload::write_seq;
use common::{confirmed_flush, openssl};

/// Long and unusual, so a match in a log cannot be a coincidence.
const PASSWORD: &str = "s3cret-Scram-512-pw-7f1c2e";

/// A CA (`ca.pem`) and, signed by it, the broker's key and certificate for 127.0.0.1 in
/// one PEM file (`broker.pem`, unencrypted PKCS#8 key first), as `ssl.keystore.type=PEM`
/// reads it.
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
            "/CN=outbox-relay test Kafka CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
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
            "/CN=127.0.0.1",
            "-keyout",
            "broker.key",
            "-out",
            "broker.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "broker.csr",
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
            "broker.crt",
        ],
    );
    let key = std::fs::read_to_string(dir.join("broker.key")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    let cert = std::fs::read_to_string(dir.join("broker.crt")).unwrap();
    std::fs::write(dir.join("broker.pem"), format!("{key}{cert}")).unwrap();
}

/// This binary's broker: PLAINTEXT for the harness, `SASL_SSL` (SCRAM-SHA-512, user
/// `relay`) for the relay; and the directory with its certificates.
fn sasl_ssl_broker() -> &'static (Broker, tempfile::TempDir) {
    static BROKER: OnceLock<(Broker, tempfile::TempDir)> = OnceLock::new();
    BROKER.get_or_init(|| {
        let certs = tempfile::tempdir().unwrap();
        make_certificates(certs.path());
        let keystore = certs.path().join("broker.pem");
        let broker = Broker::start_with_options(BrokerOptions {
            properties: format!(
                "sasl.enabled.mechanisms=SCRAM-SHA-512\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
                 org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 listener.name.sasl_ssl.ssl.keystore.type=PEM\n\
                 listener.name.sasl_ssl.ssl.keystore.location={}\n",
                keystore.display()
            ),
            format_args: format!("--add-scram SCRAM-SHA-512=[name=relay,password={PASSWORD}]"),
            listeners: vec!["SASL_SSL://127.0.0.1:{port}".into()],
            ..BrokerOptions::default()
        });
        (broker, certs)
    })
}

/// A relay config for `stage` that reaches the broker only over `SASL_SSL`.
fn sasl_ssl_config(stage: &Stage, cluster: &PgCluster) -> std::path::PathBuf {
    let (broker, certs) = sasl_ssl_broker();
    let bootstrap = format!("127.0.0.1:{}", broker.listener_port(0));
    let config = stage.config(
        "relay.toml",
        &format!("127.0.0.1:{}", cluster.port()),
        &bootstrap,
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!(
        "\n[kafka.properties]\n\
         \"security.protocol\" = \"SASL_SSL\"\n\
         \"ssl.ca.location\" = \"{}\"\n\
         \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"relay\"\n\
         \"sasl.password\" = \"${{KAFKA_PASSWORD}}\"\n",
        certs.path().join("ca.pem").display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn assert_no_password(relay: &RelayProcess, password: &str) {
    let log = relay.log();
    assert!(!log.is_empty(), "the relay logged something");
    for line in log.lines() {
        assert!(
            !line.contains(password),
            "the password is in a log line: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_with_scram_delivers_and_logs_no_password() {
    let cluster = PgCluster::shared();
    let (broker, _) = tokio::task::block_in_place(sasl_ssl_broker);
    let stage = Stage::new(cluster, "saslssl").await;
    let config = sasl_ssl_config(&stage, cluster);
    let mut relay = RelayProcess::start_with_env(
        &config,
        stage.dir.path(),
        "debug",
        &[("KAFKA_PASSWORD", PASSWORD)],
    );
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    let mut figures = Figures::default();
    write_seq(&stage.admin, 0, 500).await;
    stage.tally(&mut figures, broker, 500).await;
    figures.sample_rss(&relay);
    let (status, _) = relay.admin_get("/readyz");
    assert_eq!(status, 200);
    let (_, metrics) = relay.admin_get("/metrics");
    assert!(
        metrics.contains("broker=\"sasl_ssl://127.0.0.1:"),
        "the relay's broker connection is SASL_SSL:\n{metrics}"
    );
    assert_no_password(&relay, PASSWORD);
    figures.extra = "SCRAM-SHA-512 over TLS, password in no log line (debug level)".into();
    figures.report("SASL_SSL + SCRAM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_stops_the_relay_with_the_fix_and_no_password() {
    let cluster = PgCluster::shared();
    tokio::task::block_in_place(sasl_ssl_broker);
    let stage = Stage::new(cluster, "saslbad").await;
    let config = sasl_ssl_config(&stage, cluster);
    let wrong = "not-the-Scram-password-91d3";
    let mut relay = RelayProcess::start_with_env(
        &config,
        stage.dir.path(),
        "debug",
        &[("KAFKA_PASSWORD", wrong)],
    );
    relay.wait_streaming(&stage.admin, &stage.slot).await;
    write_seq(&stage.admin, 0, 10).await;
    let status = relay.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        status.code(),
        Some(1),
        "bad credentials stop the relay:\n{}",
        relay.log()
    );
    let log = relay.log();
    let error = log
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_default();
    println!("wrong password: {error}");
    assert!(
        error.contains("authentication") && error.contains("sasl.password"),
        "the last line says what to fix: {error}\n{log}"
    );
    assert!(
        error.contains("User:relay") || error.contains("sasl.username relay"),
        "names the user: {error}"
    );
    assert_no_password(&relay, wrong);
    assert_no_password(&relay, PASSWORD);
    assert!(
        confirmed_flush(&stage.admin, &stage.slot).await < common::insert_lsn(&stage.admin).await,
        "nothing was acknowledged"
    );
    println!("chaos: SASL_SSL wrong password            exit 1 naming sasl.password and the user, nothing acknowledged, password in no log line");
}
