//! Every event ever written stays readable: the version-1 records in `tests/golden/v1.jsonl`
//! (written by the first release, frozen) decode with today's code, and keep decoding after a
//! type moves to version 2.

use events::upcast::{History, LOG, Step};
use events::{DecodeError, Envelope, Event};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

const GOLDEN_V1: &str = include_str!("golden/v1.jsonl");

fn golden() -> impl Iterator<Item = &'static str> {
    GOLDEN_V1.lines().filter(|l| !l.trim().is_empty())
}

#[test]
fn version_1_records_decode_today() {
    let mut types = Vec::new();
    for line in golden() {
        let envelope = Envelope::decode(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
        types.push(envelope.event.type_name());
        if let Event::MessageSent(m) = &envelope.event {
            assert_eq!(m.content, "héllo 👋 \"quoted\"");
            assert_eq!(m.sent_at.to_string(), "2021-09-26T10:35:12.456Z");
        }
    }
    assert_eq!(
        types,
        [
            "ConversationCreated",
            "ConversationCreated",
            "MessageSent",
            "MessagesRead"
        ]
    );
}

/// `MessagesRead` as it would be at version 2: it gains an optional field, the last message
/// the reader's client had on screen.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MessagesReadV2 {
    conversation_id: Uuid,
    user_id: String,
    last_seen_message_id: Option<Uuid>,
}

fn messages_read_v1_to_v2(mut data: Value) -> Value {
    data["lastSeenMessageId"] = Value::Null;
    data
}

/// The log's history after that change: exactly what `upcast::LOG` would become.
const AFTER_V2: History<'static> = History {
    current: &[
        ("ConversationCreated", 1),
        ("MessageSent", 1),
        ("MessagesRead", 2),
    ],
    steps: &[Step {
        type_name: "MessagesRead",
        from: 1,
        upcast: messages_read_v1_to_v2,
    }],
};

#[test]
fn version_1_records_read_after_a_version_2_change() {
    let line = golden().find(|l| l.contains("\"MessagesRead\"")).unwrap();
    let record: Value = serde_json::from_str(line).unwrap();
    let data = AFTER_V2
        .upcast("MessagesRead", 1, record["data"].clone())
        .unwrap();
    let read: MessagesReadV2 = serde_json::from_value(data).unwrap();
    assert_eq!(
        read,
        MessagesReadV2 {
            conversation_id: "5d9e1c3a-8f2b-4e7d-a1c6-0f3b9e2d4a51".parse().unwrap(),
            user_id: "bob".into(),
            last_seen_message_id: None,
        }
    );

    // A version-2 record is read as it is; untouched types keep their version 1.
    let v2 =
        json!({"conversationId": Uuid::nil(), "userId": "bob", "lastSeenMessageId": Uuid::nil()});
    let same = AFTER_V2.upcast("MessagesRead", 2, v2.clone()).unwrap();
    assert_eq!(same, v2);
    for line in golden().filter(|l| !l.contains("\"MessagesRead\"")) {
        let record: Value = serde_json::from_str(line).unwrap();
        let type_name = record["type"].as_str().unwrap();
        let data = AFTER_V2
            .upcast(type_name, 1, record["data"].clone())
            .unwrap();
        assert_eq!(data, record["data"]);
    }

    // A version from the future, or one without a step to today, is named, not guessed.
    assert!(matches!(
        AFTER_V2.upcast("MessagesRead", 3, json!({})),
        Err(DecodeError::NewerVersion {
            version: 3,
            known: 2,
            ..
        })
    ));
    let gap = History {
        current: &[("MessagesRead", 3)],
        steps: AFTER_V2.steps,
    };
    assert!(matches!(
        gap.upcast("MessagesRead", 1, json!({})),
        Err(DecodeError::UnknownVersion { version: 1, .. })
    ));
}

/// `ConversationCreated` is at version 2 (it gained `idempotencyKey`): its version-1 records go
/// through the upcast step in `Envelope::decode`, and are written back as version 2.
#[test]
fn conversation_created_v1_is_upcast_to_v2() {
    assert_eq!(LOG.current("ConversationCreated"), Some(2));
    let line = golden()
        .find(|l| l.contains("\"ConversationCreated\""))
        .unwrap();
    let envelope = Envelope::decode(line.as_bytes()).unwrap();
    let Event::ConversationCreated(created) = &envelope.event else {
        panic!("not a ConversationCreated: {envelope:?}");
    };
    assert_eq!(created.idempotency_key, None);
    assert_eq!(created.created_by, "alice");
    let written: Value = serde_json::from_slice(&envelope.encode()).unwrap();
    assert_eq!(written["version"], 2);
    assert_eq!(written["data"]["idempotencyKey"], Value::Null);
    let v1: Value = serde_json::from_str(line).unwrap();
    for field in [
        "conversationId",
        "createdBy",
        "participants",
        "isGroup",
        "title",
    ] {
        assert_eq!(written["data"][field], v1["data"][field], "{field}");
    }
    // Version 2 itself, with a key, round-trips; a version from the future is named as such.
    let mut v2 = written.clone();
    v2["data"]["idempotencyKey"] = "key-1".into();
    let back = Envelope::decode(v2.to_string().as_bytes()).unwrap();
    let Event::ConversationCreated(created) = &back.event else {
        panic!("not a ConversationCreated");
    };
    assert_eq!(created.idempotency_key.as_deref(), Some("key-1"));
    let mut v3 = written;
    v3["version"] = 3.into();
    assert!(matches!(
        Envelope::decode(v3.to_string().as_bytes()),
        Err(DecodeError::NewerVersion {
            version: 3,
            known: 2,
            ..
        })
    ));
}

#[test]
fn the_log_history_matches_what_is_written() {
    for line in golden() {
        let envelope = Envelope::decode(line.as_bytes()).unwrap();
        let written: Value = serde_json::from_slice(&envelope.encode()).unwrap();
        let version = LOG.current(envelope.event.type_name()).unwrap();
        assert_eq!(written["version"], version);
        // While a type is at version 1, re-encoding a golden record gives it back unchanged.
        if version == 1 {
            assert_eq!(written, serde_json::from_str::<Value>(line).unwrap());
        }
    }
}
