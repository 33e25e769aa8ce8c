use std::path::Path;

use super::*;

const MINIMAL: &str = r#"
[source]
url = "postgres://relay:${PGPASSWORD}@127.0.0.1:5432/orders"
slot = "outbox_relay"
publication = "outbox_relay"
tables = ["public.outbox"]
"#;

fn env(name: &str) -> Option<String> {
    (name == "PGPASSWORD").then(|| "pw".to_owned())
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("relay.toml"), env)
}

fn error_line(text: &str) -> String {
    let line = parse(text).unwrap_err().to_string();
    assert!(!line.contains('\n'), "error is not one line: {line}");
    line
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(
        config.source.url,
        "postgres://relay:pw@127.0.0.1:5432/orders"
    );
    assert!(config.source.create_slot);
    assert!(config.source.create_publication);
    assert_eq!(config.source.status_interval_ms, DEFAULT_STATUS_INTERVAL_MS);
    assert_eq!(
        config.source.wal_receiver_timeout_ms,
        DEFAULT_WAL_RECEIVER_TIMEOUT_MS
    );
    assert_eq!(config.source.max_batch_events, DEFAULT_MAX_BATCH_EVENTS);
    assert_eq!(config.source.on_new_system, OnNewSystem::Stop);
    assert_eq!(config.outbox.id_column.as_str(), "id");
    assert_eq!(config.outbox.key_column.as_str(), "aggregateid");
    assert_eq!(config.outbox.payload_column.as_str(), "payload");
    assert_eq!(config.outbox.route_by_field.as_str(), "aggregatetype");
    assert_eq!(config.outbox.topic, "outbox.event.${routedByValue}");
    assert_eq!(
        config
            .outbox
            .mapping_for(&"public.outbox".parse().unwrap())
            .required_columns(),
        ["id", "aggregateid", "payload", "aggregatetype"]
    );
}

#[test]
fn unknown_key_is_named() {
    let line = error_line(&format!("{MINIMAL}slott = \"x\"\n"));
    assert!(
        line.starts_with("relay.toml: source.slott: unknown key"),
        "{line}"
    );
}

#[test]
fn unknown_section_is_named() {
    let line = error_line(&format!("{MINIMAL}[sauce]\nurl = \"x\"\n"));
    assert!(line.starts_with("relay.toml: sauce: unknown key"), "{line}");
}

#[test]
fn missing_required_key_is_named() {
    let text = MINIMAL.replace("slot = \"outbox_relay\"\n", "");
    let line = error_line(&text);
    assert_eq!(
        line,
        "relay.toml: source.slot: required key is missing; add it"
    );
}

#[test]
fn unset_variable_is_named_with_its_key() {
    let text = MINIMAL.replace("PGPASSWORD", "RELAY_DB_PASSWORD");
    let line = error_line(&text);
    assert!(
        line.starts_with(
            "relay.toml: source.url: environment variable RELAY_DB_PASSWORD is not set"
        ),
        "{line}"
    );
}

#[test]
fn invalid_names_are_reported_with_their_key() {
    let line = error_line(&MINIMAL.replace("slot = \"outbox_relay\"", "slot = \"Outbox-Relay\""));
    assert!(
        line.starts_with("relay.toml: source.slot: slot name \"Outbox-Relay\""),
        "{line}"
    );
    let line = error_line(&MINIMAL.replace("public.outbox", "outbox"));
    assert!(
        line.starts_with(
            "relay.toml: source.tables[0]: table \"outbox\" must be written as schema.table"
        ),
        "{line}"
    );
    let line = error_line(&MINIMAL.replace(
        "publication = \"outbox_relay\"",
        "publication = \"x; drop\"",
    ));
    assert!(
        line.starts_with("relay.toml: source.publication:"),
        "{line}"
    );
}

#[test]
fn constraints_name_key_and_limit() {
    let line = error_line(&MINIMAL.replace("tables = [\"public.outbox\"]", "tables = []"));
    assert!(
        line.starts_with("relay.toml: source.tables: must list at least one"),
        "{line}"
    );
    let line = error_line(&format!("{MINIMAL}wal_receiver_timeout_ms = 1500\n"));
    assert!(
        line.starts_with("relay.toml: source.wal_receiver_timeout_ms: must be at least twice"),
        "{line}"
    );
    let line = error_line(&format!("{MINIMAL}status_interval_ms = 0\n"));
    assert!(
        line.starts_with("relay.toml: source.status_interval_ms: must be between"),
        "{line}"
    );
    let line = error_line(&MINIMAL.replace("127.0.0.1:5432", "127.0.0.1:notaport"));
    assert!(
        line.starts_with("relay.toml: source.url: not a valid PostgreSQL connection URL"),
        "{line}"
    );
}

#[test]
fn syntax_error_gives_the_line() {
    let line = error_line("[source]\nurl = \n");
    assert!(
        line.starts_with("relay.toml: TOML syntax error at line 2"),
        "{line}"
    );
}

#[test]
fn wrong_type_is_named() {
    let line = error_line(&format!("{MINIMAL}create_slot = \"yes\"\n"));
    assert!(
        line.starts_with("relay.toml: source.create_slot: invalid type"),
        "{line}"
    );
}

/// Every shipped example must load, so the docs can't drift from the code.
#[test]
fn every_file_in_config_dir_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            Config::from_toml(&text, &path, |_| Some("example".to_owned()))
                .unwrap_or_else(|e| panic!("{e}"));
            parsed += 1;
        }
    }
    assert!(parsed > 0, "no config files found in {}", dir.display());
}

#[test]
fn kafka_properties_that_weaken_guarantees_are_rejected_by_name() {
    let text = format!(
        "{MINIMAL}[kafka]\nbootstrap_servers = \"k:9092\"\n[kafka.properties]\n\"acks\" = \"1\"\n"
    );
    let line = error_line(&text);
    assert!(
        line.starts_with("relay.toml: kafka.properties: \"acks\" must stay all"),
        "{line}"
    );
    let text = format!(
        "{MINIMAL}[kafka]\nbootstrap_servers = \"k:9092\"\n[kafka.properties]\npartitioner = \"consistent_random\"\n"
    );
    let line = error_line(&text);
    assert!(
        line.starts_with(
            "relay.toml: kafka.properties: \"partitioner\" = \"consistent_random\" is refused: keys would not land"
        ) && line.ends_with("remove it (the relay uses murmur2_random) or set murmur2"),
        "{line}"
    );
    let text = format!(
        "{MINIMAL}[kafka]\nbootstrap_servers = \"k:9092\"\n[kafka.properties]\n\"queuing.strategy\" = \"lifo\"\n"
    );
    let line = error_line(&text);
    assert!(
        line.starts_with(
            "relay.toml: kafka.properties: \"queuing.strategy\" = \"lifo\" is refused"
        ),
        "{line}"
    );
    let text = format!(
        "{MINIMAL}[kafka]\nbootstrap_servers = \"k:9092\"\n[kafka.properties]\n\"delivery.report.only.error\" = \"true\"\n"
    );
    let line = error_line(&text);
    assert!(
        line.starts_with(
            "relay.toml: kafka.properties: \"delivery.report.only.error\" = \"true\" is refused"
        ),
        "{line}"
    );
    let text = format!("{MINIMAL}[kafka]\nbootstrap_servers = \"k:9092\"\ntopic_partitions = 0\n");
    assert!(error_line(&text).starts_with("relay.toml: kafka.topic_partitions: must be positive"));
}

#[test]
fn topic_template_keeps_its_placeholder_while_env_is_expanded() {
    let text = format!(
        "{MINIMAL}[outbox]\ntopic = \"${{PGPASSWORD}}.${{routedByValue}}\"\n[outbox.tables.\"public.outbox\"]\ntopic = \"$${{X}}\"\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.outbox.topic, "pw.${routedByValue}");
    assert_eq!(
        config.outbox.tables["public.outbox"].topic.as_deref(),
        Some("${X}")
    );
}

#[test]
fn override_for_an_unlisted_table_is_rejected() {
    let text = format!("{MINIMAL}[outbox.tables.\"public.other\"]\ntopic = \"t\"\n");
    let line = error_line(&text);
    assert!(
        line.contains("outbox.tables: overrides \"public.other\", which is not listed"),
        "{line}"
    );
}

#[test]
fn on_new_system_is_stop_or_follow() {
    let with = |value: &str| {
        MINIMAL.replace(
            "[source]\n",
            &format!("[source]\non_new_system = {value}\n"),
        )
    };
    assert_eq!(
        parse(&with("\"follow\"")).unwrap().source.on_new_system,
        OnNewSystem::Follow
    );
    assert_eq!(
        parse(&with("\"stop\"")).unwrap().source.on_new_system,
        OnNewSystem::Stop
    );
    let line = error_line(&with("\"ignore\""));
    assert!(
        line.contains("source.on_new_system") && line.contains("stop") && line.contains("follow"),
        "{line}"
    );
}

#[test]
fn exactly_once_is_a_switch_with_its_limits_checked() {
    let kafka = "[kafka]\nbootstrap_servers = \"k:9092\"\n";
    let config = parse(&format!("{MINIMAL}{kafka}")).unwrap();
    let k = config.kafka.as_ref().unwrap();
    assert_eq!(k.delivery, Delivery::AtLeastOnce);
    assert_eq!(config.transactional_id(), None);
    assert_eq!(k.transaction_max_events, DEFAULT_TRANSACTION_MAX_EVENTS);
    assert_eq!(k.transaction_max_ms, DEFAULT_TRANSACTION_MAX_MS);
    assert_eq!(k.progress_topic, DEFAULT_PROGRESS_TOPIC);

    let eos = format!("{MINIMAL}{kafka}delivery = \"exactly_once\"\n");
    let config = parse(&eos).unwrap();
    assert_eq!(
        config.transactional_id().as_deref(),
        Some("outbox-relay.orders.outbox_relay"),
        "one id per database and slot"
    );
    let named = parse(&format!("{eos}transactional_id = \"orders-relay\"\n")).unwrap();
    assert_eq!(named.transactional_id().as_deref(), Some("orders-relay"));

    let line = error_line(&format!("{MINIMAL}{kafka}delivery = \"exactly-once\"\n"));
    assert!(line.contains("kafka.delivery"), "{line}");
    let line = error_line(&format!("{eos}transaction_max_events = 0\n"));
    assert!(
        line.starts_with("relay.toml: kafka.transaction_max_events: must be at least 1"),
        "{line}"
    );
    let line = error_line(&format!(
        "{eos}transaction_max_ms = 60000\n[kafka.properties]\n\"transaction.timeout.ms\" = \"60000\"\n"
    ));
    assert!(
        line.starts_with("relay.toml: kafka.transaction_max_ms: must be well under"),
        "{line}"
    );
    let line = error_line(&format!(
        "{eos}[kafka.properties]\n\"message.timeout.ms\" = \"0\"\n"
    ));
    assert!(
        line.starts_with("relay.toml: kafka.properties: \"message.timeout.ms\" cannot be set here"),
        "{line}"
    );
    let line = error_line(&format!(
        "{MINIMAL}{kafka}[kafka.properties]\n\"transactional.id\" = \"x\"\n"
    ));
    assert!(
        line.contains("kafka.delivery = \\\"exactly_once\\\"") || line.contains("exactly_once"),
        "{line}"
    );
}
