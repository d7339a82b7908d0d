//! The machine-readable schema of the log: a JSON Schema (draft 2020-12) of a record's value,
//! generated from the Rust types. `events/schema/chat-events.schema.json` is its published
//! copy; a test fails when a change would stop old events or old readers from working.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{ConversationCreated, MessageSent, MessagesRead, Timestamp};

/// The JSON Schema of a record value: one `$defs` entry per type and version, named
/// `<type>.v<version>`, each self-contained.
pub fn schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let uuid = generator.subschema_for::<Uuid>().to_value();
    let timestamp = generator.subschema_for::<Timestamp>().to_value();
    let types = [
        (
            "ConversationCreated",
            1,
            generator.subschema_for::<crate::v1::ConversationCreated>(),
        ),
        (
            "ConversationCreated",
            2,
            generator.subschema_for::<ConversationCreated>(),
        ),
        ("MessageSent", 1, generator.subschema_for::<MessageSent>()),
        ("MessagesRead", 1, generator.subschema_for::<MessagesRead>()),
    ];
    let mut defs = Map::new();
    let mut one_of = Vec::new();
    for (type_name, version, data) in types {
        debug_assert!(crate::upcast::LOG.current(type_name) >= Some(version));
        let name = format!("{type_name}.v{version}");
        one_of.push(json!({ "$ref": format!("#/$defs/{name}") }));
        defs.insert(
            name,
            json!({
                "type": "object",
                "properties": {
                    "type": { "const": type_name },
                    "version": { "const": version },
                    "eventId": uuid,
                    "acceptedAt": timestamp,
                    "data": data.to_value(),
                },
                "required": ["type", "version", "eventId", "acceptedAt", "data"],
                "additionalProperties": false,
            }),
        );
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "chat.events record value",
        "description": "One event of the chat log. The record key is the event's conversationId (UTF-8 text); all events of a conversation are in one partition, in log order. See docs/events.md.",
        "oneOf": one_of,
        "$defs": defs,
    })
}

/// [`schema`] as the text of the published file.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).expect("a schema serialises");
    text.push('\n');
    text
}

/// Why `new` cannot replace `old`: every published type version must stay, unchanged (its
/// descriptions aside), because the log holds events of it forever and readers rely on it.
/// Adding a type or a version is compatible.
pub fn incompatibilities(old: &Value, new: &Value) -> Vec<String> {
    let empty = Map::new();
    let old_defs = old["$defs"].as_object().unwrap_or(&empty);
    let new_defs = new["$defs"].as_object().unwrap_or(&empty);
    let mut problems = Vec::new();
    for (name, old_def) in old_defs {
        match new_defs.get(name) {
            None => problems.push(format!(
                "{name} is gone: the log still holds events of it, and readers must keep reading them"
            )),
            Some(new_def) if without_descriptions(new_def) != without_descriptions(old_def) => {
                problems.push(format!(
                    "{name} changed: a published version is frozen; add the next version of the type and an upcast step (see docs/events.md)"
                ))
            }
            Some(_) => {}
        }
    }
    problems
}

fn without_descriptions(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "description")
                .map(|(k, v)| (k.clone(), without_descriptions(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_descriptions).collect()),
        other => other.clone(),
    }
}
