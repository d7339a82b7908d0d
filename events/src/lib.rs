//! The schema of the chat event log (topic `chat.events`).
//!
//! Every send or read action is one [`Envelope`] appended to Kafka, keyed by its conversation id
//! so that all events of a conversation share a partition and its order. Events are facts: they
//! are never rewritten. A type's schema evolves by adding fields under a new version; an old
//! event is upcast when it is read (see [`Envelope::decode`]).
//!
//! This crate knows nothing of Kafka, SQL or sockets; it only says what an event is, and what
//! may enter the log ([`admission`]: the one rule every appended event follows).

pub mod admission;
mod envelope;
pub mod schema;
mod time;
pub mod upcast;

pub use admission::{MAX_TEMP_MESSAGE_ID_CHARS, Refusal};
pub use envelope::{DecodeError, Envelope, Event};
pub use time::Timestamp;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest user id the contract allows, in Unicode characters.
pub const MAX_USER_ID_CHARS: usize = 50;
/// Longest message content, in Unicode characters.
pub const MAX_CONTENT_CHARS: usize = 1000;
/// Longest group title, in Unicode characters.
pub const MAX_TITLE_CHARS: usize = 300;

/// A conversation came into being with its participants, which never change afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConversationCreated {
    pub conversation_id: Uuid,
    /// The user who created it; also a participant.
    pub created_by: String,
    /// Every participant, the creator included, sorted and without repeats.
    pub participants: Vec<String>,
    pub is_group: bool,
    /// `""` for a direct conversation.
    pub title: String,
}

/// A participant sent a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageSent {
    pub conversation_id: Uuid,
    pub message_id: Uuid,
    pub sender_id: String,
    pub content: String,
    /// The sending client's own id for its optimistic copy, echoed in deliveries.
    pub temp_message_id: String,
    /// When the writer accepted the message (milliseconds); the `sentAt` every client sees.
    pub sent_at: Timestamp,
}

/// A participant read every message of a conversation that precedes this event in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessagesRead {
    pub conversation_id: Uuid,
    pub user_id: String,
}

/// The id of the one direct conversation between two users, whoever creates it first.
///
/// A UUIDv5 of the two sorted user ids: two concurrent creations produce the same id, so the
/// projection upserts once and no lock is needed. Each id is length-prefixed so that no pair of
/// ids can collide with another pair by concatenation.
pub fn direct_conversation_id(a: &str, b: &str) -> Uuid {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let name = format!("direct:{}:{first}:{}:{second}", first.len(), second.len());
    Uuid::new_v5(&DIRECT_NAMESPACE, name.as_bytes())
}

/// Namespace of direct conversation ids (fixed forever: changing it would fork every pair).
const DIRECT_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_37c2_8d4e_4b6a_9f0e_52c1_d3b7_a901);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_id_ignores_who_creates_it() {
        assert_eq!(
            direct_conversation_id("alice", "bob"),
            direct_conversation_id("bob", "alice")
        );
        assert_ne!(
            direct_conversation_id("alice", "bob"),
            direct_conversation_id("alice", "carol")
        );
    }

    #[test]
    fn direct_id_pairs_cannot_collide_by_concatenation() {
        assert_ne!(
            direct_conversation_id("ab", "c"),
            direct_conversation_id("a", "bc")
        );
    }
}
