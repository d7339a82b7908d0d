//! docker-compose.yml is valid and safe as shipped, checked without a Docker engine: against the
//! compose-spec JSON Schema, and for what it publishes and what it requires from the operator.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn compose_text() -> String {
    std::fs::read_to_string(root().join("docker-compose.yml")).expect("read docker-compose.yml")
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&compose_text()).expect("docker-compose.yml is YAML")
}

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"].as_object().expect("a services mapping")
}

/// The variables the file requires (`${NAME:?message}` or `${NAME?message}`).
fn required_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("${") {
        let rest = &text[start + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = &rest[name.len()..];
        if after.starts_with(":?") || after.starts_with('?') {
            names.insert(name);
        }
    }
    names
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/compose-spec.json"))
            .expect("read the compose-spec schema"),
    )
    .expect("the schema is JSON");
    let validator = jsonschema::draft7::new(&schema).expect("the schema compiles");
    let document = compose();
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The check does catch mistakes.
    let mut broken = document.clone();
    broken["services"]["chat-api"]["ports"] = Value::String("8080".into());
    assert!(!validator.is_valid(&broken));
}

#[test]
fn only_the_rest_and_websocket_ports_are_published() {
    let document = compose();
    for (name, service) in services(&document) {
        let published = service.get("ports").cloned().unwrap_or(Value::Null);
        let expected = match name.as_str() {
            "chat-api" => serde_json::json!(["8080:8080"]),
            "socket-edge" => serde_json::json!(["8081:8081"]),
            // Kafka (no authentication: anyone reaching it could append forged events),
            // Postgres, Redis and the projector's metrics stay on the compose network.
            _ => Value::Null,
        };
        assert_eq!(published, expected, "{name}");
        assert!(service.get("network_mode").is_none(), "{name}");
        assert!(service.get("expose").is_none(), "{name}");
    }
    let kafka = &services(&document)["kafka"]["environment"];
    assert_eq!(
        kafka["KAFKA_ADVERTISED_LISTENERS"],
        "INTERNAL://kafka:19092"
    );
    assert_eq!(
        kafka["KAFKA_LISTENERS"],
        "INTERNAL://:19092,CONTROLLER://:9093"
    );
}

#[test]
fn it_refuses_to_start_without_passwords_and_a_way_to_verify_tokens() {
    let text = compose_text();
    let required = required_variables(&text);
    let expected: BTreeSet<String> = [
        "CHAT_JWKS_URL",
        "CHAT_JWT_SECRET",
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(required, expected);
    // Nothing forgeable or guessable ships in it.
    assert!(!text.contains("pagenow-dev-secret"));
    assert!(!text.contains("chat:chat@"));

    let document = compose();
    let env = &document["x-chat-env"];
    for name in ["CHAT_JWKS_URL", "CHAT_JWT_SECRET"] {
        let value = env[name].as_str().unwrap_or_default();
        assert!(value.starts_with(&format!("${{{name}?")), "{name}: {value}");
    }
    assert!(
        env["DATABASE_URL"]
            .as_str()
            .unwrap()
            .contains("${POSTGRES_PASSWORD:?")
    );
    assert!(
        env["REDIS_URL"]
            .as_str()
            .unwrap()
            .contains("${REDIS_PASSWORD:?")
    );
    // Every password in any service's environment comes from the operator's environment.
    for (name, service) in services(&document) {
        if let Some(environment) = service["environment"].as_object() {
            for (key, value) in environment {
                if key.contains("PASSWORD") || key.contains("SECRET") {
                    let value = value.as_str().unwrap_or_default();
                    assert!(
                        value.starts_with(&format!("${{{key}")),
                        "{name}: {key}={value}"
                    );
                }
            }
        }
    }
    // compose-go picks ":-" before ":?" when a '-' comes first in the value: keep the
    // required variables' messages free of hyphens.
    for line in text
        .lines()
        .filter(|l| l.contains(":?") || l.contains("?set"))
    {
        let expr = &line[line.find("${").unwrap_or(0)..];
        if let Some(question) = expr.find('?') {
            assert!(!expr[..question].contains('-'), "{line}");
        }
    }
}

#[test]
fn operational_endpoints_stay_on_the_compose_network() {
    let document = compose();
    let env = &document["x-chat-env"];
    let services = services(&document);
    for (service, ops_var, ops_port) in [
        ("chat-api", "CHAT_HTTP_OPS_ADDR", "9080"),
        ("socket-edge", "CHAT_WS_OPS_ADDR", "9081"),
    ] {
        assert_eq!(env[ops_var], format!("0.0.0.0:{ops_port}"));
        let probe = services[service]["healthcheck"]["test"].to_string();
        assert!(
            probe.contains(&format!("127.0.0.1:{ops_port}/readyz")),
            "{service}: {probe}"
        );
    }
}

#[test]
fn the_local_stack_ships_no_secret_either() {
    let stack = std::fs::read_to_string(root().join("scripts/stack")).expect("read scripts/stack");
    assert!(!stack.contains("pagenow-dev-secret"));
    assert!(!stack.contains("CHAT_JWT_SECRET:="));
}

/// docker-compose.replicated.yml, the three-node log as an override of docker-compose.yml:
/// valid, three KRaft voters, topics at replication factor 3 with `min.insync.replicas=2`, every
/// service pointed at the three brokers, and nothing more published.
#[test]
fn the_replicated_override_runs_three_nodes_and_publishes_nothing_more() {
    let text = std::fs::read_to_string(root().join("docker-compose.replicated.yml"))
        .expect("read docker-compose.replicated.yml");
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    yaml.apply_merge().expect("its merge keys resolve");
    let overlay: Value = serde_json::to_value(&yaml).expect("JSON-compatible YAML");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/compose-spec.json"))
            .expect("read the compose-spec schema"),
    )
    .expect("the schema is JSON");
    let validator = jsonschema::draft7::new(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&overlay)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    let services = services(&overlay);
    for (id, node) in ["kafka", "kafka-2", "kafka-3"].into_iter().enumerate() {
        let env = &services[node]["environment"];
        assert_eq!(env["KAFKA_NODE_ID"], id as u64 + 1, "{node}");
        assert_eq!(
            env["KAFKA_CONTROLLER_QUORUM_VOTERS"], "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093",
            "{node}"
        );
        assert_eq!(env["KAFKA_DEFAULT_REPLICATION_FACTOR"], 3, "{node}");
        assert_eq!(env["KAFKA_MIN_INSYNC_REPLICAS"], 2, "{node}");
        assert_eq!(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"], 3, "{node}");
        assert_eq!(
            env["KAFKA_LISTENERS"], "INTERNAL://:19092,CONTROLLER://:9093",
            "{node}: no listener beyond the compose network"
        );
    }
    for service in ["projector", "chat-api", "socket-edge"] {
        assert_eq!(
            services[service]["environment"]["KAFKA_BROKERS"],
            "kafka:19092,kafka-2:19092,kafka-3:19092",
            "{service}"
        );
    }
    let topics = services["topics"]["command"].to_string();
    assert!(topics.contains("--replication-factor 3"), "{topics}");
    assert!(topics.contains("min.insync.replicas=2"), "{topics}");
    for (name, service) in services {
        assert!(
            service.get("ports").is_none(),
            "the override publishes nothing: {name}"
        );
    }
    // Every service it names exists in the base file or is a new Kafka node.
    let base = compose();
    for name in services.keys() {
        assert!(
            base["services"].get(name).is_some() || name.starts_with("kafka-"),
            "{name} is not a service of docker-compose.yml"
        );
    }
}
