//! The alert rules shipped in `docker/prometheus-alerts.yml`: Prometheus' own `promtool`
//! checks them and runs their unit tests (`docker/prometheus-alerts.test.yml`, series that
//! fire and do not fire each alert), and every metric they name is one the relay exports.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's `prometheus` package, installed by `scripts/lib/install.sh`.
const PROMTOOL: &str = "/usr/bin/promtool";
const RULES: &str = "docker/prometheus-alerts.yml";
const RULE_TESTS: &str = "docker/prometheus-alerts.test.yml";

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `promtool args file` in `docker/` (rule files name each other relative to it) and
/// panics with its output unless it succeeds. Returns its stdout.
fn promtool(args: &[&str], file: &str) -> String {
    assert!(
        Path::new(PROMTOOL).is_file(),
        "{PROMTOOL} is missing: install Debian's prometheus package (scripts/lib/install.sh)"
    );
    let path = repo_file(file);
    let out = Command::new(PROMTOOL)
        .args(args)
        .arg(path.file_name().expect("file name"))
        .current_dir(path.parent().expect("docker dir"))
        .output()
        .expect("run promtool");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "promtool {} {file} failed:\n{stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn alert_rules_pass_promtool_check() {
    let out = promtool(&["check", "rules"], RULES);
    println!("{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rule_unit_tests_pass() {
    let out = promtool(&["test", "rules"], RULE_TESTS);
    println!("{out}");
}

#[test]
fn prometheus_config_loads_the_alert_rules() {
    let out = promtool(&["check", "config"], "docker/prometheus.yml");
    assert!(out.contains("1 rule files found"), "{out}");
}

#[test]
fn every_alert_is_tested_and_names_exported_metrics() {
    use outbox_relay::metrics::*;
    let known = [
        EVENTS,
        EVENTS_DEAD_LETTERED,
        LAG_SECONDS,
        REPLICATION_LAG_BYTES,
        IN_FLIGHT_EVENTS,
        CONNECTED,
        STANDBY,
        TOPIC_BLOCKED,
        TABLE_BLOCKED,
        SLOT_INFO,
    ];
    let rules = std::fs::read_to_string(repo_file(RULES)).expect("read the alert rules");
    let tests = std::fs::read_to_string(repo_file(RULE_TESTS)).expect("read the rule tests");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 7, "alerts found: {alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no test in {RULE_TESTS}"
        );
    }
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for (start, _) in line.match_indices("outbox_relay_") {
            let rest = &line[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            // Names in descriptions are prose about other metrics; check those too.
            let exported =
                known.contains(&name) || [KAFKA_QUEUE_MESSAGES, DELIVERY_LATENCY].contains(&name);
            assert!(
                exported,
                "{RULES} names {name}, not a metric of src/metrics.rs"
            );
        }
    }
}
