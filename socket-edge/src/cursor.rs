//! The catch-up cursor: where a client stands in the log, as one position per partition.
//!
//! Per-partition log order is exact (and per-conversation order is per-partition order), so
//! "every frame before these positions has been handed to you" is exact too, whatever the
//! clocks say and however many messages share a millisecond. A vector, not a single offset,
//! because a user's conversations live in several partitions.
//!
//! Wire form (opaque to clients): `c1.` then base64url (no padding) of
//! `tag (6 bytes) · partition count (varint) · next offset of each partition (varint)`.
//! The tag is the first 6 bytes of UUIDv5(URL namespace, topic name): a cursor of another
//! deployment's topic (or a made-up one) is refused instead of being read as offsets here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

/// The version prefix of the cursor's text form.
const PREFIX: &str = "c1.";
/// Longest cursor text accepted (about 4,000 partitions of large offsets).
pub const MAX_CURSOR_CHARS: usize = 48 * 1024;

/// Positions in the log: for each partition, the offset of the next record not yet handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub next: Vec<i64>,
}

/// Why a cursor text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorFlaw {
    #[error("not a cursor")]
    Malformed,
    #[error("a cursor of another log")]
    Foreign,
}

/// The tag of a topic's cursors.
pub fn topic_tag(topic: &str) -> [u8; 6] {
    let id = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("chat-log:{topic}").as_bytes());
    let mut tag = [0; 6];
    tag.copy_from_slice(&id.as_bytes()[..6]);
    tag
}

impl Cursor {
    pub fn encode(&self, tag: [u8; 6]) -> String {
        encode(tag, &self.next)
    }

    /// Reads a cursor of the topic tagged `tag` with `partitions` partitions.
    pub fn decode(text: &str, tag: [u8; 6], partitions: usize) -> Result<Self, CursorFlaw> {
        if text.len() > MAX_CURSOR_CHARS {
            return Err(CursorFlaw::Malformed);
        }
        let body = text.strip_prefix(PREFIX).ok_or(CursorFlaw::Malformed)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CursorFlaw::Malformed)?;
        if bytes.len() < 6 {
            return Err(CursorFlaw::Malformed);
        }
        let (found, mut rest) = bytes.split_at(6);
        let count = read_varint(&mut rest).ok_or(CursorFlaw::Malformed)?;
        let mut next = Vec::new();
        for _ in 0..count {
            let offset = read_varint(&mut rest).ok_or(CursorFlaw::Malformed)?;
            next.push(i64::try_from(offset).map_err(|_| CursorFlaw::Malformed)?);
        }
        if !rest.is_empty() {
            return Err(CursorFlaw::Malformed);
        }
        // A well-formed cursor of another topic, or of this topic before partitions were added.
        if found != tag || next.len() != partitions {
            return Err(CursorFlaw::Foreign);
        }
        Ok(Self { next })
    }
}

/// The text form of `next` (each position ≥ 0) under `tag`.
pub fn encode(tag: [u8; 6], next: &[i64]) -> String {
    let mut bytes = Vec::with_capacity(8 + next.len() * 4);
    bytes.extend_from_slice(&tag);
    write_varint(&mut bytes, next.len() as u64);
    for &offset in next {
        write_varint(&mut bytes, offset.max(0) as u64);
    }
    let mut text = String::with_capacity(PREFIX.len() + bytes.len() * 4 / 3 + 4);
    text.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(&bytes, &mut text);
    text
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(next in proptest::collection::vec(0i64..=i64::MAX, 0..64)) {
            let tag = topic_tag("chat.events");
            let text = encode(tag, &next);
            prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
            prop_assert_eq!(Cursor::decode(&text, tag, next.len()), Ok(Cursor { next }));
        }

        #[test]
        fn any_text_is_a_cursor_or_refused(text in ".{0,80}") {
            let _ = Cursor::decode(&text, topic_tag("t"), 3);
        }

        #[test]
        fn any_bytes_are_a_cursor_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
            let _ = Cursor::decode(&text, topic_tag("t"), 3);
        }
    }

    #[test]
    fn refuses_foreign_and_malformed_cursors() {
        let tag = topic_tag("chat.events");
        let text = encode(tag, &[3, 0, 70_000]);
        assert_eq!(
            Cursor::decode(&text, topic_tag("other"), 3),
            Err(CursorFlaw::Foreign)
        );
        assert_eq!(Cursor::decode(&text, tag, 4), Err(CursorFlaw::Foreign));
        for bad in [
            "",
            "c1.",
            "c1.!!",
            "c2.AAAA",
            "hello",
            &text[..text.len() - 1],
        ] {
            assert!(Cursor::decode(bad, tag, 3).is_err(), "{bad:?}");
        }
        let mut trailing = text.clone();
        trailing.push('A');
        assert!(Cursor::decode(&trailing, tag, 3).is_err());
    }
}
