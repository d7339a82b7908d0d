//! The AsyncAPI document as a product: the published copy is exactly what the Rust types say,
//! and every example in it is a frame or record the code itself writes and reads.

use std::path::PathBuf;

use serde_json::Value;
use socket_edge::asyncapi::{CLOSE_CODES, PUBLISHED, document, document_text};
use socket_edge::catch_up::Gap;
use socket_edge::frames::{self, Code};

fn published_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asyncapi.json")
}

/// Fails when the published document differs from the generated one; regenerate it with
/// `UPDATE_GOLDEN=1 cargo test -p socket-edge --test asyncapi`. The event payloads come from
/// `events::schema`, whose own test keeps published versions frozen.
#[test]
fn published_document_is_the_generated_one() {
    let text = std::fs::read_to_string(published_path()).unwrap_or_default();
    if text != document_text() {
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(published_path(), document_text()).expect("write asyncapi.json");
        } else {
            panic!(
                "socket-edge/asyncapi.json is not the generated document; regenerate it with \
                 UPDATE_GOLDEN=1 cargo test -p socket-edge --test asyncapi (and rebuild the edge, \
                 which serves the copy it was built with)"
            );
        }
    }
    assert_eq!(PUBLISHED, text, "the edge serves the published copy");
}

fn messages(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["components"]["messages"].as_object().unwrap()
}

#[test]
fn every_example_is_valid_against_its_payload_and_parsed_by_the_edge() {
    let doc = document();
    for (name, message) in messages(&doc) {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&message["payload"])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let examples = message["examples"].as_array().cloned().unwrap_or_default();
        assert!(
            !examples.is_empty()
                || name.ends_with(".v1") && name.starts_with("ConversationCreated"),
            "{name} has no example"
        );
        for example in &examples {
            let payload = &example["payload"];
            if let Err(e) = validator.validate(payload) {
                panic!("{name}: example {payload} is invalid: {e}");
            }
            if let Some(cursor) = payload.get("cursor") {
                let tag = socket_edge::cursor::topic_tag("chat.events");
                socket_edge::cursor::Cursor::decode(cursor.as_str().unwrap(), tag, 4)
                    .unwrap_or_else(|e| panic!("{name}: the edge cannot read its cursor: {e}"));
            }
            if name.starts_with("action.") {
                frames::parse(&payload.to_string())
                    .unwrap_or_else(|r| panic!("{name}: the edge refuses its example: {r:?}"));
            }
            if !name.contains('.') || name.contains(".v") {
                events::Envelope::decode(payload.to_string().as_bytes())
                    .unwrap_or_else(|e| panic!("{name}: not a readable record: {e}"));
            }
        }
    }
}

#[test]
fn the_socket_is_described_completely() {
    let doc = document();
    let names: Vec<&str> = messages(&doc).keys().map(String::as_str).collect();
    for name in [
        "action.heartbeat",
        "action.send-message",
        "action.read-messages",
        "action.catch-up",
        "frame.new-message",
        "frame.read-messages",
        "frame.caught-up",
        "frame.catch-up-gap",
        "frame.error",
        "ConversationCreated.v1",
        "ConversationCreated.v2",
        "MessageSent.v1",
        "MessagesRead.v1",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert_eq!(names.len(), 13, "{names:?}");

    // Every error code, each with its meaning.
    let code = &doc["components"]["messages"]["frame.error"]["payload"]["properties"]["code"];
    let documented: Vec<&str> = code["oneOf"]
        .as_array()
        .expect("codes as a oneOf of constants")
        .iter()
        .map(|c| {
            assert!(c["description"].is_string(), "{c} has no description");
            c["const"].as_str().or(c["enum"][0].as_str()).unwrap()
        })
        .collect();
    let all: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, all);
    for code in Code::ALL {
        let json = serde_json::to_value(code).unwrap();
        assert_eq!(json, code.as_str(), "the wire name is the metric's name");
    }

    // Every cursor the edge sends is described, and every reason of a gap.
    for name in [
        "frame.new-message",
        "frame.read-messages",
        "frame.caught-up",
        "frame.catch-up-gap",
    ] {
        let cursor = &doc["components"]["messages"][name]["payload"]["properties"]["cursor"];
        assert_eq!(cursor["pattern"], frames::CURSOR_PATTERN, "{name}");
    }
    let reasons: Vec<&str> = doc["components"]["messages"]["frame.catch-up-gap"]["payload"]
        ["properties"]["reason"]["oneOf"]
        .as_array()
        .expect("reasons as a oneOf of constants")
        .iter()
        .map(|r| {
            assert!(r["description"].is_string(), "{r} has no description");
            r["const"].as_str().or(r["enum"][0].as_str()).unwrap()
        })
        .collect();
    let all: Vec<&str> = Gap::ALL.iter().map(|g| g.as_str()).collect();
    assert_eq!(reasons, all);
    for gap in Gap::ALL {
        assert_eq!(serde_json::to_value(gap).unwrap(), gap.as_str());
    }
    let client = &doc["components"]["messages"]["action.catch-up"]["payload"];
    assert_eq!(client["required"], serde_json::json!(["action", "cursor"]));

    // Every close code.
    let closes: Vec<u64> = doc["channels"]["socket"]["x-close-codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_u64().unwrap())
        .collect();
    assert_eq!(closes, [1001, 1009, 1011, 4001, 4008]);
    assert_eq!(CLOSE_CODES.len(), closes.len());
    let description = doc["channels"]["socket"]["description"].as_str().unwrap();
    for code in closes {
        assert!(description.contains(&format!("- {code}:")), "{code}");
    }

    // The topic: key and ordering.
    for name in [
        "ConversationCreated.v2",
        "MessageSent.v1",
        "MessagesRead.v1",
    ] {
        let key = &doc["components"]["messages"][name]["bindings"]["kafka"]["key"];
        assert_eq!(key["format"], "uuid", "{name}");
    }
    let topic = doc["channels"]["chatEvents"]["description"]
        .as_str()
        .unwrap();
    assert!(topic.contains("per-conversation order is the log order"));
}
