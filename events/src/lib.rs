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
pub mod v1;

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
    /// The `Idempotency-Key` the creator sent with the request, if any: a retry with the same
    /// key answers with this conversation. Added in version 2 (`null` when upcast from 1).
    pub idempotency_key: Option<String>,
}

/// Longest `Idempotency-Key`, in bytes (printable ASCII).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

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

/// The id of the message `sender` sent to `conversation` under the client's `tempMessageId`.
///
/// The clients make every `tempMessageId` a fresh UUIDv4, so the three name one message: a
/// retry after any failure (a timed-out append, a crashed edge) gets the same id, and a second
/// event of the same message can never become a second message. A UUIDv5, length-prefixed like
/// [`direct_conversation_id`].
pub fn message_id(sender: &str, conversation: Uuid, temp_message_id: &str) -> Uuid {
    let name = format!(
        "message:{}:{sender}:{conversation}:{}:{temp_message_id}",
        sender.len(),
        temp_message_id.len()
    );
    Uuid::new_v5(&MESSAGE_NAMESPACE, name.as_bytes())
}

/// Namespace of message ids (fixed forever: changing it would give a retry a new id).
const MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x1c0b_5e7a_42d9_4f31_8a6e_d40f_93b2_7c15);

/// The id of the group `creator` created under an `Idempotency-Key`: a retry of the request,
/// even after a timed-out append, names the same group and cannot make a second one.
pub fn keyed_group_id(creator: &str, idempotency_key: &str) -> Uuid {
    let name = format!(
        "group:{}:{creator}:{}:{idempotency_key}",
        creator.len(),
        idempotency_key.len()
    );
    Uuid::new_v5(&GROUP_NAMESPACE, name.as_bytes())
}

/// Namespace of keyed group ids (fixed forever).
const GROUP_NAMESPACE: Uuid = Uuid::from_u128(0x8e4d_21f6_0b3a_4c57_9d12_6fa8_e5c3_0b94);

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
    fn message_id_is_named_by_sender_conversation_and_temp_id() {
        let c = direct_conversation_id("alice", "bob");
        let id = message_id("alice", c, "t1");
        assert_eq!(id, message_id("alice", c, "t1"));
        assert_eq!(id.get_version_num(), 5);
        assert_ne!(id, message_id("bob", c, "t1"));
        assert_ne!(id, message_id("alice", c, "t2"));
        assert_ne!(id, message_id("alice", Uuid::nil(), "t1"));
        // Length prefixes: moving characters between sender and temp id changes the name.
        assert_ne!(message_id("ab", c, "c"), message_id("a", c, "bc"));
        assert_ne!(keyed_group_id("ab", "c"), keyed_group_id("a", "bc"));
        assert_ne!(keyed_group_id("alice", "k"), keyed_group_id("bob", "k"));
    }

    #[test]
    fn direct_id_pairs_cannot_collide_by_concatenation() {
        assert_ne!(
            direct_conversation_id("ab", "c"),
            direct_conversation_id("a", "bc")
        );
    }
}
