//! What may enter the log: one rule, checked before every append.
//!
//! Whatever the writer accepts, the projection must store and return byte for byte. The rule for
//! every text field of every event is therefore:
//!
//! - **U+0000 is refused.** It is the one Unicode scalar a Postgres `text` value cannot hold.
//! - **Every other Unicode scalar value is stored and returned exactly as sent**: control
//!   characters (U+0001..U+001F, U+007F..U+009F), bidi overrides and isolates (U+202A..U+202E,
//!   U+2066..U+2069), noncharacters (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF), astral characters
//!   (emoji, U+10FFFF), combining marks (even leading ones, or hundreds in a row), the BOM and
//!   other format characters. Nothing is normalised, trimmed or replaced. (Lone surrogates are no
//!   Unicode scalars: a JSON `\uD800` alone is refused as invalid JSON before any rule runs.)
//! - Lengths count Unicode scalar values ("characters"), as Postgres `varchar(n)` does, never
//!   bytes or UTF-16 units.
//!
//! and for each field:
//!
//! | field | rule |
//! |---|---|
//! | user ids (`createdBy`, `participants[]`, `senderId`, `userId`) | 1..=[`MAX_USER_ID_CHARS`] characters |
//! | `content` | 1..=[`MAX_CONTENT_CHARS`] characters, not all whitespace (Unicode `White_Space`) |
//! | `title` of a group | 1..=[`MAX_TITLE_CHARS`] characters, not all whitespace |
//! | `title` of a direct conversation | `""` |
//! | `tempMessageId` | 1..=[`MAX_TEMP_MESSAGE_ID_CHARS`] characters |
//! | `participants` | sorted, without repeats, the creator included; exactly two for a direct conversation, at least two for a group |
//!
//! The field checks ([`user_id`], [`content`], [`title`], [`temp_message_id`]) let a boundary
//! refuse bad input early, naming the field as its client knows it; [`Event::admit`] checks a
//! whole event, and the writer runs it before every append.

use crate::{
    ConversationCreated, Event, MAX_CONTENT_CHARS, MAX_IDEMPOTENCY_KEY_CHARS, MAX_TITLE_CHARS,
    MAX_USER_ID_CHARS, MessageSent, MessagesRead,
};

/// Longest `tempMessageId`, in characters (the socket-edge keeps it in a Redis key).
pub const MAX_TEMP_MESSAGE_ID_CHARS: usize = 200;

/// What is wrong with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Flaw {
    #[error("contains U+0000 (NUL), which no text field may hold")]
    Nul,
    #[error("is empty")]
    Empty,
    #[error("is all whitespace")]
    Blank,
    #[error("is longer than {max} characters")]
    TooLong { max: usize },
    #[error("must be empty for a direct conversation")]
    NotEmpty,
    #[error("must be sorted, without repeats")]
    Unsorted,
    #[error("must include the creator")]
    MissingCreator,
    #[error("must hold exactly two users for a direct conversation, at least two for a group")]
    WrongCount,
}

/// An event that may not enter the log: which field (as named on the wire) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid '{field}': {flaw}")]
pub struct Refusal {
    pub field: &'static str,
    pub flaw: Flaw,
}

/// Any text field: U+0000 refused, everything else kept as it is.
fn text(value: &str) -> Result<(), Flaw> {
    if value.contains('\0') {
        Err(Flaw::Nul)
    } else {
        Ok(())
    }
}

/// 1..=`max` characters, no U+0000.
fn bounded(value: &str, max: usize) -> Result<(), Flaw> {
    text(value)?;
    if value.is_empty() {
        return Err(Flaw::Empty);
    }
    // Counting stops early: a megabyte of text costs no more than `max` steps.
    if value.chars().nth(max).is_some() {
        return Err(Flaw::TooLong { max });
    }
    Ok(())
}

/// A user id: 1..=[`MAX_USER_ID_CHARS`] characters, no U+0000.
pub fn user_id(value: &str) -> Result<(), Flaw> {
    bounded(value, MAX_USER_ID_CHARS)
}

/// A message's content: 1..=[`MAX_CONTENT_CHARS`] characters, not all whitespace, no U+0000.
pub fn content(value: &str) -> Result<(), Flaw> {
    bounded(value, MAX_CONTENT_CHARS)?;
    not_blank(value)
}

/// A group's title: 1..=[`MAX_TITLE_CHARS`] characters, not all whitespace, no U+0000.
pub fn title(value: &str) -> Result<(), Flaw> {
    bounded(value, MAX_TITLE_CHARS)?;
    not_blank(value)
}

/// A client's `tempMessageId`: 1..=[`MAX_TEMP_MESSAGE_ID_CHARS`] characters, no U+0000.
pub fn temp_message_id(value: &str) -> Result<(), Flaw> {
    bounded(value, MAX_TEMP_MESSAGE_ID_CHARS)
}

/// The `Idempotency-Key` a group was created under: 1..=[`MAX_IDEMPOTENCY_KEY_CHARS`]
/// characters, no U+0000 (the API takes printable ASCII only, a stricter rule of its own).
pub fn idempotency_key(value: &str) -> Result<(), Flaw> {
    bounded(value, MAX_IDEMPOTENCY_KEY_CHARS)
}

fn not_blank(value: &str) -> Result<(), Flaw> {
    if value.trim().is_empty() {
        Err(Flaw::Blank)
    } else {
        Ok(())
    }
}

fn field(field: &'static str, check: Result<(), Flaw>) -> Result<(), Refusal> {
    check.map_err(|flaw| Refusal { field, flaw })
}

impl Event {
    /// Whether the event may enter the log: every field follows the rule of this module. The
    /// writer refuses to append an event that does not; the projector sets one aside unread.
    pub fn admit(&self) -> Result<(), Refusal> {
        match self {
            Event::ConversationCreated(e) => admit_created(e),
            Event::MessageSent(MessageSent {
                sender_id,
                content: body,
                temp_message_id: temp,
                ..
            }) => {
                field("senderId", user_id(sender_id))?;
                field("tempMessageId", temp_message_id(temp))?;
                field("content", content(body))
            }
            Event::MessagesRead(MessagesRead {
                user_id: reader, ..
            }) => field("userId", user_id(reader)),
        }
    }
}

fn admit_created(e: &ConversationCreated) -> Result<(), Refusal> {
    field("createdBy", user_id(&e.created_by))?;
    if let Some(key) = &e.idempotency_key {
        field("idempotencyKey", idempotency_key(key))?;
    }
    for participant in &e.participants {
        field("participants", user_id(participant))?;
    }
    let participants = |flaw| Refusal {
        field: "participants",
        flaw,
    };
    if !e.participants.windows(2).all(|w| w[0] < w[1]) {
        return Err(participants(Flaw::Unsorted));
    }
    if e.participants.binary_search(&e.created_by).is_err() {
        return Err(participants(Flaw::MissingCreator));
    }
    let count_ok = if e.is_group {
        e.participants.len() >= 2
    } else {
        e.participants.len() == 2
    };
    if !count_ok {
        return Err(participants(Flaw::WrongCount));
    }
    if e.is_group {
        field("title", title(&e.title))
    } else if e.title.is_empty() {
        Ok(())
    } else {
        Err(Refusal {
            field: "title",
            flaw: Flaw::NotEmpty,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use uuid::Uuid;

    fn message(content: &str, temp: &str) -> Event {
        Event::MessageSent(MessageSent {
            conversation_id: Uuid::nil(),
            message_id: Uuid::nil(),
            sender_id: "ann".into(),
            content: content.into(),
            temp_message_id: temp.into(),
            sent_at: Timestamp::now(),
        })
    }

    fn created(participants: &[&str], is_group: bool, title: &str) -> Event {
        Event::ConversationCreated(ConversationCreated {
            conversation_id: Uuid::nil(),
            created_by: "ann".into(),
            participants: participants.iter().map(|p| p.to_string()).collect(),
            is_group,
            title: title.into(),
            idempotency_key: None,
        })
    }

    #[test]
    fn nul_is_refused_in_every_text_field() {
        let refused = |e: Event| e.admit().unwrap_err();
        assert_eq!(
            refused(message("hi\0there", "t1")),
            Refusal {
                field: "content",
                flaw: Flaw::Nul
            }
        );
        assert_eq!(refused(message("hi", "t\0")).field, "tempMessageId");
        assert_eq!(
            refused(created(&["\0", "ann", "bob"], true, "g")).field,
            "participants"
        );
        assert_eq!(
            refused(created(&["ann", "bob", "cat"], true, "a\0b")),
            Refusal {
                field: "title",
                flaw: Flaw::Nul
            }
        );
        let read = Event::MessagesRead(MessagesRead {
            conversation_id: Uuid::nil(),
            user_id: "a\0".into(),
        });
        assert_eq!(refused(read).field, "userId");
    }

    #[test]
    fn every_other_scalar_is_admitted() {
        for odd in [
            "\u{1}\u{1f}\u{7f}\u{9f}",
            "\u{202e}evil\u{202c}\u{2066}x\u{2069}",
            "\u{fdd0}\u{fffe}\u{ffff}\u{10ffff}",
            "👋🏽\u{1f600}",
            "\u{301}\u{301}\u{301}a",
            "\u{feff}\u{200b}",
        ] {
            assert_eq!(message(odd, odd).admit(), Ok(()), "{odd:?}");
            assert_eq!(user_id(odd), Ok(()), "{odd:?}");
        }
    }

    #[test]
    fn lengths_count_characters() {
        assert_eq!(content(&"👋".repeat(1000)), Ok(()));
        assert_eq!(content(&"é".repeat(1001)), Err(Flaw::TooLong { max: 1000 }));
        assert_eq!(content(" \n\u{3000}"), Err(Flaw::Blank));
        assert_eq!(content(""), Err(Flaw::Empty));
        assert_eq!(user_id(&"é".repeat(50)), Ok(()));
        assert_eq!(user_id(&"x".repeat(51)), Err(Flaw::TooLong { max: 50 }));
        assert_eq!(
            temp_message_id(&"t".repeat(201)).unwrap_err(),
            Flaw::TooLong { max: 200 }
        );
        assert_eq!(title(&"é".repeat(300)), Ok(()));
    }

    #[test]
    fn conversations_have_their_shape() {
        assert_eq!(created(&["ann", "bob"], false, "").admit(), Ok(()));
        assert_eq!(created(&["ann", "bob", "cat"], true, "g").admit(), Ok(()));
        let flaw = |e: Event| e.admit().unwrap_err().flaw;
        assert_eq!(flaw(created(&["bob", "ann"], false, "")), Flaw::Unsorted);
        assert_eq!(flaw(created(&["ann", "ann"], false, "")), Flaw::Unsorted);
        assert_eq!(
            flaw(created(&["bob", "cat"], false, "")),
            Flaw::MissingCreator
        );
        assert_eq!(flaw(created(&["ann", "bob"], false, "t")), Flaw::NotEmpty);
        assert_eq!(
            flaw(created(&["ann", "bob", "cat"], false, "")),
            Flaw::WrongCount
        );
        assert_eq!(flaw(created(&["ann"], true, "g")), Flaw::WrongCount);
        assert_eq!(
            flaw(created(&["ann", "bob", "cat"], true, " ")),
            Flaw::Blank
        );
    }
}
