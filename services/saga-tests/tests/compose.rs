//! docker/compose.yaml, checked without a Docker engine (none runs on the development
//! machines or in CI): it parses, everything it builds or mounts exists, and the wiring
//! holds — PostgreSQL with wal_level=logical, Kafka in KRaft mode, each relay's config
//! loads with the environment compose gives it and points at a database that is created,
//! and Prometheus scrapes the relays where they serve metrics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use outbox_relay::config::Config;
use serde_norway::Value;

fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value: Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    value.apply_merge().expect("merge keys");
    value
}

fn compose() -> Value {
    yaml(&docker_dir().join("compose.yaml"))
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

/// The services, by name.
fn services(compose: &Value) -> Vec<(String, &Value)> {
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (str_of(k, "service name").to_owned(), v))
        .collect()
}

/// A service's `environment` map as (name, value) pairs (mapping form).
fn environment(service: &Value) -> Vec<(String, String)> {
    service["environment"]
        .as_mapping()
        .map_or_else(Vec::new, |env| {
            env.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        other => serde_norway::to_string(other).unwrap().trim().to_owned(),
                    };
                    (str_of(k, "variable").to_owned(), value)
                })
                .collect()
        })
}

fn env_var(service: &Value, name: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `source:target[:mode]` bind mounts with a relative source, as (host path, target).
fn bind_mounts(service: &Value) -> Vec<(PathBuf, String)> {
    service["volumes"]
        .as_sequence()
        .map_or_else(Vec::new, |volumes| {
            volumes
                .iter()
                .map(|v| str_of(v, "volume"))
                .filter(|v| v.starts_with('.'))
                .map(|v| {
                    let mut parts = v.split(':');
                    let source = docker_dir().join(parts.next().unwrap());
                    (source, parts.next().expect("mount target").to_owned())
                })
                .collect()
        })
}

/// Databases `docker/postgres/init.sql` creates.
fn created_databases() -> BTreeSet<String> {
    let sql = std::fs::read_to_string(docker_dir().join("postgres/init.sql")).unwrap();
    sql.lines()
        .filter_map(|l| l.trim().strip_prefix("CREATE DATABASE "))
        .map(|rest| rest.trim_end_matches(';').trim().to_owned())
        .collect()
}

#[test]
fn compose_has_every_part_of_the_saga() {
    let compose = compose();
    let names: BTreeSet<String> = services(&compose).into_iter().map(|(n, _)| n).collect();
    let expected = [
        "postgres",
        "kafka",
        "order",
        "product",
        "delivery",
        "order-relay",
        "product-relay",
        "delivery-relay",
        "prometheus",
        "grafana",
    ];
    assert_eq!(names, expected.iter().map(|s| s.to_string()).collect());

    let postgres = &compose["services"]["postgres"];
    assert!(str_of(&postgres["image"], "image").starts_with("postgres:16"));
    let command: Vec<&str> = postgres["command"]
        .as_sequence()
        .expect("postgres command")
        .iter()
        .map(|v| str_of(v, "argument"))
        .collect();
    assert!(
        command.windows(2).any(|w| w == ["-c", "wal_level=logical"]),
        "{command:?}"
    );

    let kafka = &compose["services"]["kafka"];
    assert!(str_of(&kafka["image"], "image").starts_with("apache/kafka:"));
    let roles = env_var(kafka, "KAFKA_PROCESS_ROLES").expect("KRaft roles");
    assert!(
        roles.contains("controller") && roles.contains("broker"),
        "KRaft: {roles}"
    );
    assert!(!names.iter().any(|n| n.contains("zookeeper")));
}

#[test]
fn everything_compose_builds_mounts_or_depends_on_exists() {
    let compose = compose();
    let names: BTreeSet<String> = services(&compose).into_iter().map(|(n, _)| n).collect();
    let mut checked = 0;
    for (name, service) in services(&compose) {
        if let Some(build) = service.get("build") {
            let context = docker_dir().join(str_of(&build["context"], "context"));
            let dockerfile = context.join(str_of(&build["dockerfile"], "dockerfile"));
            let text = std::fs::read_to_string(&dockerfile)
                .unwrap_or_else(|e| panic!("{name}: {}: {e}", dockerfile.display()));
            let target = str_of(&build["target"], "target");
            assert!(
                text.lines()
                    .any(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {target}"))),
                "{name}: no stage {target} in {}",
                dockerfile.display()
            );
            checked += 1;
        }
        for (source, target) in bind_mounts(service) {
            assert!(
                source.is_file(),
                "{name}: mounts missing {} at {target}",
                source.display()
            );
            checked += 1;
        }
        let depends: Vec<String> = match &service["depends_on"] {
            Value::Sequence(list) => list
                .iter()
                .map(|v| str_of(v, "dependency").to_owned())
                .collect(),
            Value::Mapping(map) => map
                .keys()
                .map(|k| str_of(k, "dependency").to_owned())
                .collect(),
            _ => Vec::new(),
        };
        for dependency in depends {
            assert!(
                names.contains(&dependency),
                "{name} depends on unknown {dependency}"
            );
        }
    }
    assert!(checked >= 12, "only {checked} builds and mounts checked");
}

#[test]
fn each_relay_config_loads_with_its_compose_environment_and_reaches_its_database() {
    let compose = compose();
    let databases = created_databases();
    let relays: Vec<_> = services(&compose)
        .into_iter()
        .filter(|(n, _)| n.ends_with("-relay"))
        .collect();
    assert_eq!(relays.len(), 3);
    for (name, relay) in relays {
        let (config_path, _) = bind_mounts(relay)
            .into_iter()
            .find(|(_, target)| target == "/etc/outbox-relay/relay.toml")
            .unwrap_or_else(|| panic!("{name}: no config mounted"));
        let text = std::fs::read_to_string(&config_path).unwrap();
        let env = environment(relay);
        let lookup = |var: &str| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone());
        let config = Config::from_toml(&text, &config_path, lookup)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let db = config
            .postgres_config()
            .get_dbname()
            .expect("dbname")
            .to_owned();
        assert!(
            databases.contains(&db),
            "{name}: database {db} is not created by init.sql"
        );

        // Its service writes that database's outbox, and starts first.
        let service_name = name.trim_end_matches("-relay");
        let service = &compose["services"][service_name];
        let url = env_var(service, "DATABASE_URL").expect("service DATABASE_URL");
        assert!(
            url.ends_with(&format!("@postgres:5432/{db}")),
            "{name}: {url}"
        );
        assert!(
            relay["depends_on"].get(service_name).is_some(),
            "{name} waits for {service_name}"
        );

        let kafka = config.kafka.as_ref().expect("[kafka]");
        assert_eq!(kafka.bootstrap_servers, "kafka:9092");
        assert_eq!(
            env_var(service, "KAFKA_BOOTSTRAP_SERVERS").as_deref(),
            Some("kafka:9092")
        );
        assert_eq!(
            config.admin.listen, "0.0.0.0:9488",
            "{name}: the image's HEALTHCHECK port"
        );
        let headers: Vec<&str> = config
            .outbox
            .additional_headers
            .iter()
            .map(|h| h.header_name())
            .collect();
        assert_eq!(
            headers,
            [
                "eventType",
                "correlationId",
                // Dead letters only (saga_kit::consumer::dead_letter); NULL otherwise.
                "dltReason",
                "dltOrigin",
                "dltErrorClass",
                // The writing span's W3C trace context (saga_kit::trace); NULL outside one.
                "traceparent"
            ],
            "{name}: what the services read and dead letters carry"
        );
    }
}

#[test]
fn prometheus_scrapes_every_relay_and_the_images_run_as_non_root_with_healthchecks() {
    let compose = compose();
    let prometheus = yaml(&docker_dir().join("prometheus.yml"));
    let targets: BTreeSet<String> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .expect("targets")
        .iter()
        .map(|t| str_of(t, "target").to_owned())
        .collect();
    let relays: BTreeSet<String> = services(&compose)
        .into_iter()
        .filter(|(n, _)| n.ends_with("-relay"))
        .map(|(n, _)| format!("{n}:9488"))
        .collect();
    assert_eq!(targets, relays);

    let dockerfile = std::fs::read_to_string(docker_dir().join("../Dockerfile")).unwrap();
    for stage in ["services", "relay"] {
        let body: String = dockerfile
            .split("\nFROM ")
            .find(|s| {
                s.lines()
                    .next()
                    .is_some_and(|l| l.ends_with(&format!(" AS {stage}")))
            })
            .unwrap_or_else(|| panic!("no stage {stage}"))
            .to_owned();
        assert!(
            body.contains("HEALTHCHECK") && body.contains("/healthz"),
            "{stage}: {body}"
        );
        assert!(
            body.starts_with("runtime AS"),
            "{stage} builds on the non-root runtime stage"
        );
    }
    assert!(
        dockerfile.contains("\nUSER 10001\n"),
        "runtime runs as non-root"
    );
}

/// `key=value` lines of the server.properties that scripts/kafka/broker.sh writes.
fn test_broker_properties() -> Vec<(String, String)> {
    let script = std::fs::read_to_string(docker_dir().join("../scripts/kafka/broker.sh")).unwrap();
    script
        .split("<<PROPS\n")
        .nth(1)
        .and_then(|rest| rest.split("\nPROPS\n").next())
        .expect("broker.sh writes server.properties in a <<PROPS heredoc")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn compose_kafka_is_the_tested_version_set_up_like_the_test_broker() {
    let compose = compose();
    let kafka = &compose["services"]["kafka"];
    let version_sh =
        std::fs::read_to_string(docker_dir().join("../scripts/kafka/version.sh")).unwrap();
    let version = version_sh
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION="))
        .expect("KAFKA_VERSION in scripts/kafka/version.sh");
    assert_eq!(
        str_of(&kafka["image"], "image"),
        format!("apache/kafka:{version}"),
        "the broker version the tests run"
    );

    // The settings the relays and services depend on, as the apache/kafka image takes
    // them: KAFKA_ and the property in upper case with `_` for `.`.
    let properties = test_broker_properties();
    for key in [
        "auto.create.topics.enable",
        "num.partitions",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
        "group.initial.rebalance.delay.ms",
    ] {
        let (_, expected) = properties
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("scripts/kafka/broker.sh does not set {key}"));
        let var = format!("KAFKA_{}", key.to_uppercase().replace('.', "_"));
        assert_eq!(
            env_var(kafka, &var).as_deref(),
            Some(expected.as_str()),
            "compose kafka {var} vs broker.sh {key}"
        );
    }
}
