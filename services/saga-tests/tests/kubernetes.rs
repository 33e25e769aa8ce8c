//! deploy/kubernetes, checked offline (no cluster runs on the development machines or in
//! CI): every manifest validates against the Kubernetes schemas (kubernetes-validate,
//! strict, for the oldest Kubernetes with native sidecars on by default and the newest it
//! bundles), and the wiring holds — the relay is a sidecar with a /healthz liveness probe
//! and nothing of it in the pod's readiness, its password comes from the Secret, its
//! config from the ConfigMap loads as the relay would load it and is
//! config/order-relay.toml, it reaches the service's database, Prometheus finds its
//! metrics port, and the alert rules on `outbox_relay_standby` pass their promtool tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use outbox_relay::config::Config;
use saga_kit::config::ServiceConfig;
use serde_norway::Value;

/// Where the relay's admin endpoint listens in the container, and so its metrics port.
const ADMIN_PORT: i64 = 9488;
/// The config path of the relay image (Dockerfile).
const CONFIG_PATH: &str = "/etc/outbox-relay/relay.toml";
/// Schemas to validate against: native sidecars (initContainers with restartPolicy
/// Always) are on by default from 1.29; the newest the pinned validator bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];
const PROMTOOL: &str = "/usr/bin/promtool";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document of `path`.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|doc| {
            serde_norway::from_str::<Value>(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], |s| s.as_slice())
}

/// The manifests kustomization.yaml applies, which must be every other YAML file in
/// deploy/kubernetes (so none is left out of validation or of `kubectl apply -k`).
fn manifest_files() -> Vec<PathBuf> {
    let dir = kubernetes_dir();
    let kustomization = &documents(&dir.join("kustomization.yaml"))[0];
    let listed: Vec<String> = seq(&kustomization["resources"])
        .iter()
        .map(|r| str_of(r, "resource").to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed.iter().cloned().collect::<BTreeSet<_>>(),
        present,
        "kustomization.yaml resources vs the manifests in {}",
        dir.display()
    );
    listed.iter().map(|n| dir.join(n)).collect()
}

fn manifests() -> Vec<Value> {
    manifest_files().iter().flat_map(|f| documents(f)).collect()
}

fn find<'a>(manifests: &'a [Value], kind: &str, name: &str) -> &'a Value {
    manifests
        .iter()
        .find(|m| m["kind"].as_str() == Some(kind) && m["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn only<'a>(manifests: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = manifests
        .iter()
        .filter(|m| m["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

/// The version scripts/lib/install.sh pins.
fn pinned_validator_version() -> String {
    read(&repo().join("scripts/lib/install.sh"))
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VALIDATE_VERSION="))
        .expect("KUBERNETES_VALIDATE_VERSION in scripts/lib/install.sh")
        .trim()
        .to_owned()
}

/// The validator scripts/lib/install.sh installs (or `$KUBERNETES_VALIDATE`); a missing
/// one fails the test: it is part of the test dependencies, never a reason to skip.
fn validator() -> PathBuf {
    let path = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("OUTBOX_RELAY_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                        .join(".cache/outbox-relay")
                });
            cache.join("venv/bin/kubernetes-validate")
        });
    let pinned = pinned_validator_version();
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match version {
        Some(v) if v == pinned => path,
        found => panic!(
            "kubernetes-validate {pinned} is not installed at {} (found: {found:?}); \
             run scripts/test.sh, which installs the test dependencies",
            path.display()
        ),
    }
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let validator = validator();
    let files = manifest_files();
    assert!(files.len() >= 4, "{files:?}");
    for version in KUBERNETES_VERSIONS {
        let output = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .expect("run kubernetes-validate");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // A warning is a failure too: e.g. a kind without a schema is not validated at all.
        assert!(
            output.status.success() && !stdout.contains("WARN") && !stderr.contains("WARN"),
            "kubernetes-validate --strict -k {version}: {}\n{stdout}{stderr}",
            output.status
        );
        let passed = stdout.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(
            passed,
            manifests().len(),
            "one 'passed' per resource against {version}:\n{stdout}"
        );
    }
}

/// The pod's containers: (name, container, is a native sidecar).
fn pod_containers(pod: &Value) -> Vec<(&str, &Value, bool)> {
    let init = seq(&pod["initContainers"]).iter().map(|c| (c, true));
    let main = seq(&pod["containers"]).iter().map(|c| (c, false));
    init.chain(main)
        .map(|(c, init)| {
            let sidecar = init && c["restartPolicy"].as_str() == Some("Always");
            assert!(
                !init || sidecar,
                "{:?}: an init container that is not a sidecar would block the pod",
                c["name"]
            );
            (str_of(&c["name"], "container name"), c, sidecar)
        })
        .collect()
}

fn relay_container(pod: &Value) -> (&Value, bool) {
    let relays: Vec<_> = pod_containers(pod)
        .into_iter()
        .filter(|(_, c, _)| str_of(&c["image"], "image").contains("outbox-relay"))
        .collect();
    assert_eq!(relays.len(), 1, "one relay container in the pod");
    (relays[0].1, relays[0].2)
}

/// A probe's or Service's port: a number, or the name of one of `container`'s ports.
fn port_number(container: &Value, port: &Value) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = str_of(port, "port");
    seq(&container["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("{:?} has no port named {name}", container["name"]))
}

/// Secret values by (secret, key), from the manifests' `stringData`.
fn secret_values(manifests: &[Value]) -> BTreeMap<(String, String), String> {
    manifests
        .iter()
        .filter(|m| m["kind"].as_str() == Some("Secret"))
        .flat_map(|s| {
            let name = str_of(&s["metadata"]["name"], "secret name").to_owned();
            s["stringData"]
                .as_mapping()
                .into_iter()
                .flatten()
                .map(move |(k, v)| {
                    (
                        (name.clone(), str_of(k, "key").to_owned()),
                        str_of(v, "value").to_owned(),
                    )
                })
        })
        .collect()
}

/// A container's environment as the kubelet gives it: `value`s with `$(VAR)` expanded
/// from the variables above them, and `secretKeyRef`s resolved from the Secrets here
/// (each must exist). Returns the variables and the names that came from a Secret.
fn container_env(
    container: &Value,
    secrets: &BTreeMap<(String, String), String>,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut env = BTreeMap::new();
    let mut from_secrets = BTreeSet::new();
    for var in seq(&container["env"]) {
        let name = str_of(&var["name"], "env name").to_owned();
        let value = if let Some(reference) = var["valueFrom"].get("secretKeyRef") {
            let key = (
                str_of(&reference["name"], "secret").to_owned(),
                str_of(&reference["key"], "key").to_owned(),
            );
            from_secrets.insert(name.clone());
            secrets
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: no Secret {key:?} in deploy/kubernetes"))
                .clone()
        } else {
            expand(str_of(&var["value"], &name), &env)
        };
        env.insert(name, value);
    }
    (env, from_secrets)
}

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a `$`; an
/// undefined one stays as written, which is always a mistake here.
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = rest.strip_prefix("$(").and_then(|r| r.split_once(')'))
        {
            let value = env
                .get(name)
                .unwrap_or_else(|| panic!("$({name}) is not defined above its use in {value}"));
            out.push_str(value);
            rest = after;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

fn http_probe_path<'a>(container: &'a Value, probe: &str) -> Option<&'a str> {
    container[probe]["httpGet"]["path"].as_str()
}

#[test]
fn relay_is_a_sidecar_live_on_healthz_and_kept_out_of_pod_readiness() {
    let manifests = manifests();
    let deployment = only(&manifests, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let (relay, sidecar) = relay_container(pod);
    assert!(
        sidecar || seq(&pod["containers"]).len() >= 2,
        "the relay runs beside the service"
    );

    // Liveness: /healthz on the admin port, which answers while the relay waits for its
    // database or stands by.
    assert_eq!(
        http_probe_path(relay, "livenessProbe"),
        Some("/healthz"),
        "relay livenessProbe"
    );
    assert_eq!(
        port_number(relay, &relay["livenessProbe"]["httpGet"]["port"]),
        ADMIN_PORT
    );

    // Readiness: a standby relay answers 503 on /readyz; no probe of the pod may use it,
    // or a standby would take its pod's service out of rotation (a startupProbe on it
    // would even hold a standby pod's service container back for good).
    assert!(
        relay.get("readinessProbe").is_none(),
        "the relay has no readinessProbe: {:?}",
        relay["readinessProbe"]
    );
    for (name, container, _) in pod_containers(pod) {
        for probe in ["readinessProbe", "startupProbe", "livenessProbe"] {
            assert_ne!(
                http_probe_path(container, probe),
                Some("/readyz"),
                "{name}: {probe} on /readyz"
            );
        }
    }

    // The service keeps its own readiness and liveness.
    let service = seq(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("order"))
        .expect("the order container");
    assert_eq!(http_probe_path(service, "readinessProbe"), Some("/healthz"));
    assert_eq!(http_probe_path(service, "livenessProbe"), Some("/healthz"));
}

#[test]
fn relay_config_comes_from_the_configmap_and_loads_as_the_relay_would() {
    let manifests = manifests();
    let secrets = secret_values(&manifests);
    let deployment = only(&manifests, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let (relay, _) = relay_container(pod);

    // The command reads /etc/outbox-relay/relay.toml, mounted from a ConfigMap key.
    let args: Vec<&str> = seq(&relay["args"])
        .iter()
        .map(|a| str_of(a, "argument"))
        .collect();
    assert_eq!(args, ["run", "--config", CONFIG_PATH]);
    let (mount_dir, file) = CONFIG_PATH.rsplit_once('/').unwrap();
    let mount = seq(&relay["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(mount_dir))
        .unwrap_or_else(|| panic!("relay: nothing mounted at {mount_dir}"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let configmap_name = str_of(&volume["configMap"]["name"], "configMap volume");
    let key = match volume["configMap"]["items"].as_sequence() {
        Some(items) => {
            let item = items
                .iter()
                .find(|i| i["path"].as_str() == Some(file))
                .unwrap_or_else(|| panic!("no item at {file}"));
            str_of(&item["key"], "key")
        }
        None => file,
    };
    let configmap = find(&manifests, "ConfigMap", configmap_name);
    let text = str_of(&configmap["data"][key], "relay.toml");

    // The password comes from a Secret, through the environment; nothing secret is in
    // the ConfigMap.
    let (env, from_secrets) = container_env(relay, &secrets);
    assert!(
        from_secrets.contains("DB_PASSWORD"),
        "relay DB_PASSWORD from a secretKeyRef"
    );
    assert!(
        text.contains("${DB_PASSWORD}"),
        "the url takes the password"
    );
    let password = &env["DB_PASSWORD"];
    assert!(
        !text.contains(password.as_str()),
        "a password in the ConfigMap"
    );

    // It loads with the container's environment as the relay loads it (every ${VAR}
    // set), and is config/order-relay.toml: the same relay as in compose and the demo.
    let path = Path::new(CONFIG_PATH);
    let lookup = |var: &str| env.get(var).cloned();
    let config = Config::from_toml(text, path, lookup)
        .unwrap_or_else(|e| panic!("the ConfigMap's relay.toml: {e}"));
    let reference = repo().join("config/order-relay.toml");
    let expected = Config::from_toml(&read(&reference), path, lookup)
        .unwrap_or_else(|e| panic!("{}: {e}", reference.display()));
    let (got, want) = (format!("{config:#?}"), format!("{expected:#?}"));
    let differences: Vec<String> = got
        .lines()
        .zip(want.lines())
        .filter(|(g, w)| g != w)
        .map(|(g, w)| {
            format!(
                "ConfigMap: {}  config/order-relay.toml: {}",
                g.trim(),
                w.trim()
            )
        })
        .collect();
    assert!(
        got == want,
        "the ConfigMap's relay.toml differs from config/order-relay.toml:\n{}",
        differences.join("\n")
    );
    assert_eq!(config.source.slot.as_str(), "order_outbox");
    let pg = config.postgres_config();
    assert_eq!(
        String::from_utf8_lossy(pg.get_password().expect("password")),
        *password
    );

    // The admin endpoint is the container's metrics port, which Prometheus is told of.
    let admin_port: i64 = config
        .admin
        .listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("admin.listen port");
    assert_eq!(admin_port, ADMIN_PORT);
    assert_eq!(port_number(relay, &Value::from("metrics")), ADMIN_PORT);
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(ADMIN_PORT.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    // The relay streams the database the service writes its outbox to, and both reach
    // the same brokers.
    let service = seq(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("order"))
        .expect("the order container");
    let (service_env, service_secrets) = container_env(service, &secrets);
    assert!(service_secrets.contains("DB_PASSWORD"));
    let settings = ServiceConfig::from_lookup("order", |v| service_env.get(v).cloned())
        .unwrap_or_else(|e| panic!("order container environment: {e}"));
    let service_db: tokio_postgres::Config = settings.database_url.parse().expect("DATABASE_URL");
    assert_eq!(service_db.get_dbname(), pg.get_dbname());
    assert_eq!(service_db.get_hosts(), pg.get_hosts());
    assert_eq!(service_db.get_ports(), pg.get_ports());
    assert_eq!(
        settings.kafka_bootstrap_servers,
        config.kafka.as_ref().expect("[kafka]").bootstrap_servers
    );
}

#[test]
fn pod_runs_as_non_root_with_resources_and_its_service_reaches_the_api() {
    let manifests = manifests();
    let deployment = only(&manifests, "Deployment");
    let template = &deployment["spec"]["template"];
    let pod = &template["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    // The images' user (Dockerfile: USER 10001).
    assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(10001));
    assert!(
        deployment["spec"]["replicas"].as_i64().unwrap_or(1) >= 2,
        "a standby relay to take over"
    );
    for (name, container, _) in pod_containers(pod) {
        let security = &container["securityContext"];
        assert_eq!(
            security["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            security["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{name}"
        );
        assert!(
            seq(&security["capabilities"]["drop"]).contains(&Value::from("ALL")),
            "{name} drops all capabilities"
        );
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    container["resources"][kind].get(resource).is_some(),
                    "{name}: resources.{kind}.{resource}"
                );
            }
        }
    }

    // The Service selects the pods and targets the order container's HTTP port.
    let service = only(&manifests, "Service");
    let labels = template["metadata"]["labels"].as_mapping().expect("labels");
    let selector = service["spec"]["selector"].as_mapping().expect("selector");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "selector {k:?}");
    }
    let order = seq(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("order"))
        .expect("the order container");
    let (env, _) = container_env(order, &secret_values(&manifests));
    let listen: std::net::SocketAddr = env["LISTEN_ADDR"].parse().unwrap();
    for port in seq(&service["spec"]["ports"]) {
        assert_eq!(
            port_number(order, &port["targetPort"]),
            i64::from(listen.port())
        );
    }
    assert_eq!(
        port_number(order, &order["readinessProbe"]["httpGet"]["port"]),
        i64::from(listen.port())
    );
}

#[test]
fn standby_alert_rules_pass_their_promtool_tests_and_name_relay_metrics() {
    let alerts = kubernetes_dir().join("alerts");
    let output = Command::new(PROMTOOL)
        .current_dir(&alerts)
        .args(["test", "rules", "outbox-relay.rules.test.yml"])
        .output()
        .unwrap_or_else(|e| panic!("{PROMTOOL}: {e}; run scripts/test.sh"));
    assert!(
        output.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let metrics = read(&repo().join("src/metrics.rs"));
    let rules = &documents(&alerts.join("outbox-relay.rules.yml"))[0];
    let mut names = BTreeSet::new();
    for rule in seq(&rules["groups"][0]["rules"]) {
        let expr = str_of(&rule["expr"], "expr");
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("outbox_relay_") {
                assert!(
                    metrics.contains(&format!("\"{word}\"")),
                    "{word} is not a metric of src/metrics.rs"
                );
                names.insert(word.to_owned());
            }
        }
        names.insert(str_of(&rule["alert"], "alert").to_owned());
    }
    assert!(names.contains("outbox_relay_standby"), "{names:?}");
}
