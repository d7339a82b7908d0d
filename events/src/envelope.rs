use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{ConversationCreated, MessageSent, MessagesRead, Timestamp};

/// One fact of the log, as appended by the writer.
///
/// On the wire (the Kafka record's value) it is one JSON object:
/// `{"type":"MessageSent","version":1,"eventId":"…","acceptedAt":"…","data":{…}}`;
/// the record's key is the conversation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique per event; lets consumers recognise an event they already handled.
    pub event_id: Uuid,
    /// When the writer accepted the command that became this event.
    pub accepted_at: Timestamp,
    pub event: Event,
}

/// Every event type of the log, at its current schema version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ConversationCreated(ConversationCreated),
    MessageSent(MessageSent),
    MessagesRead(MessagesRead),
}

impl Event {
    /// The type's name on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::ConversationCreated(_) => "ConversationCreated",
            Event::MessageSent(_) => "MessageSent",
            Event::MessagesRead(_) => "MessagesRead",
        }
    }

    /// The schema version this code writes for the type: its current version.
    pub fn version(&self) -> u32 {
        crate::upcast::LOG
            .current(self.type_name())
            .expect("every event type is in the log's history")
    }

    /// Reads the `data` of the current version of `type_name` (a type [`crate::upcast::LOG`]
    /// knows).
    fn from_data(type_name: &str, data: &str) -> Result<Self, serde_json::Error> {
        Ok(match type_name {
            "ConversationCreated" => Event::ConversationCreated(serde_json::from_str(data)?),
            "MessageSent" => Event::MessageSent(serde_json::from_str(data)?),
            "MessagesRead" => Event::MessagesRead(serde_json::from_str(data)?),
            other => unreachable!("{other} is in the log's history but not in Event"),
        })
    }

    /// [`Event::from_data`] from upcast data.
    fn from_value(type_name: &str, data: serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(match type_name {
            "ConversationCreated" => Event::ConversationCreated(serde_json::from_value(data)?),
            "MessageSent" => Event::MessageSent(serde_json::from_value(data)?),
            "MessagesRead" => Event::MessagesRead(serde_json::from_value(data)?),
            other => unreachable!("{other} is in the log's history but not in Event"),
        })
    }

    /// The conversation the event belongs to: the partition key.
    pub fn conversation_id(&self) -> Uuid {
        match self {
            Event::ConversationCreated(e) => e.conversation_id,
            Event::MessageSent(e) => e.conversation_id,
            Event::MessagesRead(e) => e.conversation_id,
        }
    }
}

/// Why a record of the log could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the record is not an event envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{type_name} has no schema version {version}")]
    UnknownVersion { type_name: String, version: u32 },
    /// Written by a newer build: not malformed, only unknown here. A reader must wait for a
    /// build that knows it rather than set it aside.
    #[error(
        "{type_name} v{version} is newer than this build knows (v{known}): run a build that knows it"
    )]
    NewerVersion {
        type_name: String,
        version: u32,
        known: u32,
    },
    #[error("{type_name} v{version} has an invalid body: {source}")]
    Body {
        type_name: String,
        version: u32,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireOut<'a, T: Serialize> {
    #[serde(rename = "type")]
    type_name: &'static str,
    version: u32,
    event_id: Uuid,
    accepted_at: Timestamp,
    data: &'a T,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireIn<'a> {
    #[serde(rename = "type")]
    type_name: String,
    version: u32,
    event_id: Uuid,
    accepted_at: Timestamp,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Envelope {
    /// A new event accepted now, with a fresh id.
    pub fn new(event: Event) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            accepted_at: Timestamp::now(),
            event,
        }
    }

    /// The partition key: all events of a conversation share a partition and its order.
    pub fn key(&self) -> String {
        self.event.conversation_id().to_string()
    }

    /// The record value, at the current schema version of the event's type.
    pub fn encode(&self) -> Vec<u8> {
        fn wire<T: Serialize>(envelope: &Envelope, data: &T) -> Vec<u8> {
            let out = WireOut {
                type_name: envelope.event.type_name(),
                version: envelope.event.version(),
                event_id: envelope.event_id,
                accepted_at: envelope.accepted_at,
                data,
            };
            serde_json::to_vec(&out).expect("events serialise to JSON")
        }
        match &self.event {
            Event::ConversationCreated(e) => wire(self, e),
            Event::MessageSent(e) => wire(self, e),
            Event::MessagesRead(e) => wire(self, e),
        }
    }

    /// Reads a record value written by any past version of this crate, upcasting old schema
    /// versions to the current one.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: WireIn<'_> = serde_json::from_slice(bytes).map_err(DecodeError::Envelope)?;
        let body = |source| DecodeError::Body {
            type_name: wire.type_name.clone(),
            version: wire.version,
            source,
        };
        let current = crate::upcast::LOG
            .current(&wire.type_name)
            .ok_or_else(|| DecodeError::UnknownType(wire.type_name.clone()))?;
        let event = if wire.version == current {
            Event::from_data(&wire.type_name, wire.data.get()).map_err(body)?
        } else {
            // An older version: upcast its data step by step, then read it as the current one.
            let data: serde_json::Value = serde_json::from_str(wire.data.get()).map_err(body)?;
            let data = crate::upcast::LOG.upcast(&wire.type_name, wire.version, data)?;
            Event::from_value(&wire.type_name, data).map_err(body)?
        };
        Ok(Self {
            event_id: wire.event_id,
            accepted_at: wire.accepted_at,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct_conversation_id;

    fn samples() -> Vec<Envelope> {
        let conversation_id = direct_conversation_id("alice", "bob");
        vec![
            Envelope::new(Event::ConversationCreated(ConversationCreated {
                conversation_id,
                created_by: "alice".into(),
                participants: vec!["alice".into(), "bob".into()],
                is_group: false,
                title: String::new(),
                idempotency_key: Some("k-1".into()),
            })),
            Envelope::new(Event::MessageSent(MessageSent {
                conversation_id,
                message_id: Uuid::new_v4(),
                sender_id: "alice".into(),
                content: "héllo 👋 \"quoted\"".into(),
                temp_message_id: "t1".into(),
                sent_at: Timestamp::now(),
            })),
            Envelope::new(Event::MessagesRead(MessagesRead {
                conversation_id,
                user_id: "bob".into(),
            })),
        ]
    }

    #[test]
    fn every_type_round_trips() {
        for envelope in samples() {
            let back = Envelope::decode(&envelope.encode()).unwrap();
            assert_eq!(back, envelope);
            assert_eq!(back.key(), envelope.event.conversation_id().to_string());
        }
    }

    #[test]
    fn wire_shape_is_stable() {
        let envelope = &samples()[2];
        let value: serde_json::Value = serde_json::from_slice(&envelope.encode()).unwrap();
        assert_eq!(value["type"], "MessagesRead");
        assert_eq!(value["version"], 1);
        assert_eq!(value["data"]["userId"], "bob");
        assert!(value["acceptedAt"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn unknown_types_versions_and_bodies_are_named() {
        let id = Uuid::nil();
        let at = "2021-09-26T10:33:11.123Z";
        let record = |t: &str, v: u32, data: &str| {
            format!(
                r#"{{"type":"{t}","version":{v},"eventId":"{id}","acceptedAt":"{at}","data":{data}}}"#
            )
        };
        let err = Envelope::decode(record("Nope", 1, "{}").as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownType(t) if t == "Nope"));
        let err = Envelope::decode(record("MessagesRead", 9, "{}").as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::NewerVersion {
                version: 9,
                known: 1,
                ..
            }
        ));
        let err = Envelope::decode(record("MessagesRead", 0, "{}").as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::UnknownVersion { version: 0, .. }
        ));
        let err = Envelope::decode(record("MessagesRead", 1, "{}").as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::Body { .. }));
        assert!(matches!(
            Envelope::decode(b"not json"),
            Err(DecodeError::Envelope(_))
        ));
    }
}
