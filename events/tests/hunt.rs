//! Property tests that hunt: the log's rule ([`events::admission`]) and the event decoder, fed
//! hostile strings and arbitrary bytes.

mod hostile;

use events::admission::{self, Flaw};
use events::{
    ConversationCreated, Envelope, Event, MAX_CONTENT_CHARS, MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_TEMP_MESSAGE_ID_CHARS, MAX_TITLE_CHARS, MAX_USER_ID_CHARS, MessageSent, MessagesRead,
    Timestamp,
};
use hostile::{follows_rule, hostile_field, hostile_string};
use proptest::prelude::*;
use uuid::Uuid;

fn any_uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Any event whose text fields are hostile strings.
fn hostile_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (
            any_uuid(),
            hostile_field(MAX_USER_ID_CHARS),
            prop::collection::vec(hostile_field(MAX_USER_ID_CHARS), 0..4),
            any::<bool>(),
            hostile_field(MAX_TITLE_CHARS),
            prop::option::of(hostile_field(MAX_IDEMPOTENCY_KEY_CHARS)),
        )
            .prop_map(
                |(conversation_id, created_by, mut others, is_group, title, idempotency_key)| {
                    others.push(created_by.clone());
                    others.sort();
                    others.dedup();
                    Event::ConversationCreated(ConversationCreated {
                        conversation_id,
                        created_by,
                        participants: others,
                        is_group,
                        title: if is_group { title } else { String::new() },
                        idempotency_key,
                    })
                }
            ),
        (
            any_uuid(),
            any_uuid(),
            hostile_field(MAX_USER_ID_CHARS),
            hostile_field(MAX_CONTENT_CHARS),
            hostile_field(MAX_TEMP_MESSAGE_ID_CHARS),
            0i64..4_102_444_800_000,
        )
            .prop_map(
                |(conversation_id, message_id, sender_id, content, temp, ms)| {
                    Event::MessageSent(MessageSent {
                        conversation_id,
                        message_id,
                        sender_id,
                        content,
                        temp_message_id: temp,
                        sent_at: Timestamp::from(
                            chrono::DateTime::from_timestamp_millis(ms).expect("a time"),
                        ),
                    })
                }
            ),
        (any_uuid(), hostile_field(MAX_USER_ID_CHARS)).prop_map(|(conversation_id, user_id)| {
            Event::MessagesRead(MessagesRead {
                conversation_id,
                user_id,
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Each field check is the documented rule, for every string.
    #[test]
    fn field_checks_are_the_documented_rule(value in hostile_field(MAX_CONTENT_CHARS)) {
        prop_assert_eq!(admission::user_id(&value).is_ok(), follows_rule(&value, MAX_USER_ID_CHARS, false));
        prop_assert_eq!(admission::content(&value).is_ok(), follows_rule(&value, MAX_CONTENT_CHARS, true));
        prop_assert_eq!(admission::title(&value).is_ok(), follows_rule(&value, MAX_TITLE_CHARS, true));
        prop_assert_eq!(
            admission::temp_message_id(&value).is_ok(),
            follows_rule(&value, MAX_TEMP_MESSAGE_ID_CHARS, false)
        );
        // U+0000 is always the reason given when it is there.
        if value.contains('\0') {
            prop_assert_eq!(admission::content(&value), Err(Flaw::Nul));
        }
    }

    /// An event is admitted exactly when each of its text fields follows its rule; whatever the
    /// verdict, the event survives the wire unchanged (JSON carries every scalar).
    #[test]
    fn events_are_admitted_by_their_fields_and_round_trip(event in hostile_event()) {
        let expected = match &event {
            Event::ConversationCreated(e) => {
                e.participants.iter().all(|p| follows_rule(p, MAX_USER_ID_CHARS, false))
                    && (!e.is_group || follows_rule(&e.title, MAX_TITLE_CHARS, true))
                    && (e.is_group && e.participants.len() >= 2 || !e.is_group && e.participants.len() == 2)
                    && e.idempotency_key.as_ref().is_none_or(|k| follows_rule(k, MAX_IDEMPOTENCY_KEY_CHARS, false))
            }
            Event::MessageSent(e) => {
                follows_rule(&e.sender_id, MAX_USER_ID_CHARS, false)
                    && follows_rule(&e.content, MAX_CONTENT_CHARS, true)
                    && follows_rule(&e.temp_message_id, MAX_TEMP_MESSAGE_ID_CHARS, false)
            }
            Event::MessagesRead(e) => follows_rule(&e.user_id, MAX_USER_ID_CHARS, false),
        };
        prop_assert_eq!(event.admit().is_ok(), expected, "{:?}", event.admit());
        let envelope = Envelope::new(event);
        let back = Envelope::decode(&envelope.encode()).expect("our own records decode");
        prop_assert_eq!(back, envelope);
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn decoder_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Envelope::decode(&bytes);
    }

    /// Records that look like envelopes, with hostile types, versions and bodies: the decoder
    /// refuses them or returns an event that encodes back to an equivalent record.
    #[test]
    fn decoder_refuses_or_round_trips_envelope_like_records(
        type_name in prop_oneof![
            Just("MessageSent".to_owned()),
            Just("MessagesRead".to_owned()),
            Just("ConversationCreated".to_owned()),
            hostile_string(0..12),
        ],
        version in prop_oneof![Just(1u64), any::<u64>()],
        user in hostile_string(0..8),
        content in hostile_string(0..8),
        extra in prop::option::of(hostile_string(0..6)),
        is_group in any::<bool>(),
    ) {
        let id = Uuid::from_u128(7);
        let mut data = serde_json::json!({
            "conversationId": id,
            "messageId": id,
            "senderId": user,
            "userId": user,
            "createdBy": user,
            "participants": [user],
            "isGroup": is_group,
            "title": content,
            "content": content,
            "tempMessageId": content,
            "sentAt": "2021-09-26T10:33:11.123Z",
        });
        // Only the fields of the type, sometimes with one it does not know.
        let keep: &[&str] = match type_name.as_str() {
            "MessageSent" => &["conversationId", "messageId", "senderId", "content", "tempMessageId", "sentAt"],
            "MessagesRead" => &["conversationId", "userId"],
            _ => &["conversationId", "createdBy", "participants", "isGroup", "title"],
        };
        data.as_object_mut().unwrap().retain(|k, _| keep.contains(&k.as_str()));
        if let Some(extra) = extra {
            data[extra] = serde_json::json!(1);
        }
        let record = serde_json::json!({
            "type": type_name,
            "version": version,
            "eventId": id,
            "acceptedAt": "2021-09-26T10:33:11.123Z",
            "data": data,
        });
        let bytes = serde_json::to_vec(&record).unwrap();
        if let Ok(envelope) = Envelope::decode(&bytes) {
            prop_assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
        }
    }
}
