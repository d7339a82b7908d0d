//! The event schema as a product: the published JSON Schema may only grow, and every event
//! ever written stays readable.

use std::path::PathBuf;

use events::schema::{incompatibilities, schema, schema_text};
use serde_json::Value;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema/chat-events.schema.json")
}

/// Fails on an incompatible change of the published schema. A compatible one (a new type or
/// version, a reworded description) fails too, until the published copy is regenerated with
/// `UPDATE_GOLDEN=1 cargo test -p events --test schema`, which refuses incompatible changes.
#[test]
fn published_schema_only_grows() {
    let path = golden_path();
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let published: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let problems = incompatibilities(&published, &schema());
    assert!(
        problems.is_empty(),
        "incompatible change of the event schema:\n  {}",
        problems.join("\n  ")
    );
    if text != schema_text() {
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, schema_text()).expect("write the published schema");
        } else {
            panic!(
                "the event schema changed compatibly; publish it with \
                 UPDATE_GOLDEN=1 cargo test -p events --test schema"
            );
        }
    }
}

#[test]
fn incompatible_changes_are_named() {
    let published = schema();
    let data = "/$defs/MessageSent.v1/properties/data";

    let mut removed_field = published.clone();
    let props = removed_field
        .pointer_mut(&format!("{data}/properties"))
        .unwrap()
        .as_object_mut()
        .unwrap();
    props.remove("tempMessageId");
    let problems = incompatibilities(&published, &removed_field);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("MessageSent.v1 changed"));

    let mut retyped = published.clone();
    *retyped
        .pointer_mut(&format!("{data}/properties/content/type"))
        .unwrap() = "integer".into();
    assert_eq!(incompatibilities(&published, &retyped).len(), 1);

    let mut dropped_version = published.clone();
    dropped_version["$defs"]
        .as_object_mut()
        .unwrap()
        .remove("MessagesRead.v1");
    assert!(incompatibilities(&published, &dropped_version)[0].contains("is gone"));

    // Growing is fine: a new version next to the old one, or a reworded description.
    let mut grown = published.clone();
    let v1 = grown["$defs"]["MessagesRead.v1"].clone();
    grown["$defs"]["MessagesRead.v2"] = v1;
    *grown
        .pointer_mut(&format!("{data}/properties/content"))
        .unwrap()
        .as_object_mut()
        .unwrap()
        .entry("description")
        .or_insert(Value::Null) = "reworded".into();
    assert!(incompatibilities(&published, &grown).is_empty());
}

#[test]
fn schema_describes_every_type_strictly() {
    let schema = schema();
    let defs = schema["$defs"].as_object().unwrap();
    // Every version of every type: ConversationCreated has two.
    assert_eq!(defs.len(), 4);
    for (name, def) in defs {
        assert_eq!(def["additionalProperties"], false, "{name}");
        assert_eq!(
            def["properties"]["data"]["additionalProperties"], false,
            "{name}: data must be strict, readers are"
        );
    }
    let sent = &defs["MessageSent.v1"]["properties"]["data"];
    assert_eq!(sent["properties"]["sentAt"]["format"], "date-time");
    assert_eq!(sent["properties"]["messageId"]["format"], "uuid");
    let created = &defs["ConversationCreated.v2"]["properties"]["data"]["properties"];
    assert!(created["idempotencyKey"].is_object());
    let created_v1 = &defs["ConversationCreated.v1"]["properties"]["data"]["properties"];
    assert!(created_v1.get("idempotencyKey").is_none());
}
