//! The AsyncAPI document (`socket-edge/asyncapi.json`) as a checker: every frame a test sends
//! or receives and every record of a test's log must be one of the messages the document
//! declares for that direction, as `openapi_document_matches_the_routes` holds the REST API to
//! `api/openapi.json`.

use std::sync::LazyLock;
use std::time::Duration;

use jsonschema::Validator;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

use crate::TestEnv;

/// The published document, read from the repository.
pub fn document() -> &'static Value {
    &CONTRACT.document
}

/// Checks a frame a client sends: `Ok(the message's name)` when exactly one of the socket's
/// client messages (the `receive` operations') accepts it.
pub fn check_client_frame(frame: &Value) -> Result<&'static str, String> {
    matching(&CONTRACT.client, frame)
}

/// Checks a frame the edge sends (the socket's `send` operations' messages).
pub fn check_server_frame(frame: &Value) -> Result<&'static str, String> {
    matching(&CONTRACT.server, frame)
}

/// Checks one record of the topic: its value is exactly one of the topic's messages, and its
/// key is what that message's Kafka binding says (the event's conversation id).
pub fn check_record(key: Option<&[u8]>, value: &[u8]) -> Result<&'static str, String> {
    let value: Value =
        serde_json::from_slice(value).map_err(|e| format!("the record value is not JSON: {e}"))?;
    let name = matching(&CONTRACT.events, &value)?;
    let key = key.ok_or_else(|| format!("{name}: a record without a key"))?;
    let key = std::str::from_utf8(key).map_err(|_| format!("{name}: the key is not UTF-8"))?;
    let key_schema = &CONTRACT
        .keys
        .iter()
        .find(|(n, _)| *n == name)
        .expect("every event message has a key")
        .1;
    if let Err(e) = key_schema.validate(&Value::String(key.to_owned())) {
        return Err(format!("{name}: key {key:?}: {e}"));
    }
    if value["data"]["conversationId"] != key {
        return Err(format!(
            "{name}: key {key:?} is not the event's conversationId"
        ));
    }
    Ok(name)
}

/// Reads the whole log of `env` (every partition up to its end) and checks every record;
/// returns how many there were. Panics naming the first record the document does not describe.
pub fn assert_log_conforms(env: &TestEnv) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", format!("{}-asyncapi", env.name))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let metadata = consumer
        .fetch_metadata(Some(&env.topic), Duration::from_secs(10))
        .expect("the topic's metadata");
    let mut assignment = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for partition in metadata.topics()[0].partitions() {
        let id = partition.id();
        let (low, high) = consumer
            .fetch_watermarks(&env.topic, id, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            ends.insert(id, high);
            assignment
                .add_partition_offset(&env.topic, id, rdkafka::Offset::Offset(low))
                .unwrap();
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut checked = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not read to its end"
        );
        let Some(record) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let record = record.expect("a record");
        if let Err(e) = check_record(record.key(), record.payload().unwrap_or_default()) {
            panic!(
                "partition {} offset {}: the AsyncAPI document does not describe this record: {e}\n{}",
                record.partition(),
                record.offset(),
                String::from_utf8_lossy(record.payload().unwrap_or_default())
            );
        }
        checked += 1;
        if ends.get(&record.partition()) == Some(&(record.offset() + 1)) {
            ends.remove(&record.partition());
        }
    }
    checked
}

struct Contract {
    document: Value,
    client: Vec<(&'static str, Validator)>,
    server: Vec<(&'static str, Validator)>,
    events: Vec<(&'static str, Validator)>,
    keys: Vec<(&'static str, Validator)>,
}

static CONTRACT: LazyLock<Contract> = LazyLock::new(|| {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../socket-edge/asyncapi.json");
    let text = std::fs::read_to_string(&path).expect("read socket-edge/asyncapi.json");
    let document: Value = serde_json::from_str(&text).expect("the document is JSON");
    let socket = "#/channels/socket";
    let events_channel = "#/channels/chatEvents";
    let client = operation_messages(&document, socket, "receive");
    let server = operation_messages(&document, socket, "send");
    let events = operation_messages(&document, events_channel, "receive");
    assert!(!client.is_empty() && !server.is_empty() && !events.is_empty());
    let keys = events
        .iter()
        .map(|name| {
            let message = &document["components"]["messages"][name];
            (leak(name), compile(&message["bindings"]["kafka"]["key"]))
        })
        .collect();
    let compiled = |names: Vec<String>| {
        names
            .iter()
            .map(|name| {
                let payload = &document["components"]["messages"][name]["payload"];
                (leak(name), compile(payload))
            })
            .collect()
    };
    Contract {
        client: compiled(client),
        server: compiled(server),
        events: compiled(events),
        keys,
        document,
    }
});

fn leak(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}

fn compile(schema: &Value) -> Validator {
    // AsyncAPI's default schema format is JSON Schema draft 7 with extensions; the document
    // uses no keyword whose meaning changed since, and draft 2020-12 knows the `uuid` format,
    // which draft 7 would skip.
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("a schema of the document does not compile: {e}\n{schema}"))
}

/// The names (under `components/messages`) of the messages of every `action` operation on
/// `channel`.
fn operation_messages(document: &Value, channel: &str, action: &str) -> Vec<String> {
    let mut names = Vec::new();
    for operation in document["operations"].as_object().unwrap().values() {
        if operation["action"] != action || operation["channel"]["$ref"] != channel {
            continue;
        }
        for message in operation["messages"].as_array().unwrap() {
            let name = component_name(document, message);
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Follows `$ref`s to a message under `components/messages` and returns its name there.
fn component_name(document: &Value, reference: &Value) -> String {
    let mut reference = reference.clone();
    loop {
        let path = reference["$ref"].as_str().expect("a message reference");
        if let Some(name) = path.strip_prefix("#/components/messages/") {
            return name.replace("~1", "/").replace("~0", "~");
        }
        reference = document
            .pointer(path.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{path} does not resolve"))
            .clone();
    }
}

fn matching(
    candidates: &[(&'static str, Validator)],
    value: &Value,
) -> Result<&'static str, String> {
    let matched: Vec<&'static str> = candidates
        .iter()
        .filter(|(_, v)| v.is_valid(value))
        .map(|(n, _)| *n)
        .collect();
    match matched.as_slice() {
        [one] => Ok(one),
        [] => Err(candidates
            .iter()
            .map(|(name, v)| {
                let errors: Vec<String> = v
                    .iter_errors(value)
                    .take(3)
                    .map(|e| e.to_string())
                    .collect();
                format!("not {name}: {}", errors.join("; "))
            })
            .collect::<Vec<_>>()
            .join("\n")),
        many => Err(format!("ambiguous: {many:?} all accept it")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_checker_tells_frames_apart_and_refuses_strays() {
        let id = "5d9e1c3a-8f2b-4e7d-a1c6-0f3b9e2d4a51";
        assert_eq!(
            check_client_frame(&json!({"action": "heartbeat"})),
            Ok("action.heartbeat")
        );
        assert_eq!(
            check_client_frame(
                &json!({"action": "read-messages", "conversationId": id, "extra": 1})
            ),
            Ok("action.read-messages"),
            "unknown fields are ignored by the edge"
        );
        assert!(
            check_client_frame(&json!({"action": "read-messages", "conversationId": "x"})).is_err()
        );
        assert!(
            check_client_frame(&json!({"action": "send-message", "conversationId": id,
            "content": " \n", "tempMessageId": "t"}))
            .is_err()
        );
        assert_eq!(
            check_server_frame(
                &json!({"type": "read-messages", "conversationId": id, "userId": "bob"})
            ),
            Ok("frame.read-messages")
        );
        assert!(
            check_server_frame(&json!({"type": "read-messages", "conversationId": id,
            "userId": "bob", "undocumented": true}))
            .is_err()
        );
        assert!(
            check_server_frame(&json!({"type": "error", "code": "nope", "message": "m"})).is_err()
        );
        let cursor = "c1.uQq78lndBJII0ge6CesH";
        assert_eq!(
            check_client_frame(&json!({"action": "catch-up", "cursor": cursor})),
            Ok("action.catch-up")
        );
        assert!(check_client_frame(&json!({"action": "catch-up"})).is_err());
        assert_eq!(
            check_server_frame(&json!({"type": "read-messages", "conversationId": id,
                "userId": "bob", "cursor": cursor})),
            Ok("frame.read-messages")
        );
        assert_eq!(
            check_server_frame(&json!({"type": "caught-up", "cursor": cursor})),
            Ok("frame.caught-up")
        );
        assert_eq!(
            check_server_frame(
                &json!({"type": "catch-up-gap", "reason": "too_old", "cursor": cursor})
            ),
            Ok("frame.catch-up-gap")
        );
        assert!(
            check_server_frame(
                &json!({"type": "catch-up-gap", "reason": "bored", "cursor": cursor})
            )
            .is_err()
        );
        assert!(check_server_frame(&json!({"type": "caught-up", "cursor": "not one"})).is_err());
        assert_eq!(
            check_server_frame(&json!({"type": "error", "code": "invalid_cursor", "message": "m"})),
            Ok("frame.error")
        );
        let record = json!({"type": "MessagesRead", "version": 1, "eventId": id,
            "acceptedAt": "2021-09-26T10:33:11.123Z", "data": {"conversationId": id, "userId": "bob"}});
        let bytes = record.to_string().into_bytes();
        assert_eq!(
            check_record(Some(id.as_bytes()), &bytes),
            Ok("MessagesRead.v1")
        );
        assert!(check_record(Some(b"another-key"), &bytes).is_err());
        assert!(check_record(None, &bytes).is_err());
        let newer = record.to_string().replace("\"version\":1", "\"version\":9");
        assert!(check_record(Some(id.as_bytes()), newer.as_bytes()).is_err());
    }
}
