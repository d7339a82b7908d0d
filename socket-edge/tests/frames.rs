//! Property tests that hunt over the frame parser: any text a client can send is refused with a
//! code, or parsed into a command that follows the log's rule; nothing panics.

#[path = "../../events/tests/hostile/mod.rs"]
mod hostile;

use events::admission;
use hostile::{hostile_field, hostile_string};
use proptest::prelude::*;
use serde_json::{Value, json};
use socket_edge::frames::{Code, Command, parse};

/// A JSON value a client might put in a field: mostly strings, sometimes anything else.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => hostile_field(1000).prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(json!(["x"])),
        1 => Just(json!({"a": 1})),
        2 => Just(Value::from("5d9e1c3a-8f2b-4e7d-a1c6-0f3b9e2d4a51")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Arbitrary text: no panic, and a refusal always says why.
    #[test]
    fn any_text_is_parsed_or_refused(text in hostile_string(0..64)) {
        if let Err(rejection) = parse(&text) {
            prop_assert!(!rejection.message.is_empty());
            // The error frame is JSON, whatever the input was.
            let frame: Value = serde_json::from_str(&rejection.to_frame()).unwrap();
            prop_assert_eq!(&frame["type"], "error");
        }
    }

    /// Frame-shaped objects with hostile fields: a `send-message` is accepted exactly when its
    /// content and tempMessageId follow the log's rule, and a refusal carries the right code.
    #[test]
    fn frames_follow_the_rule(
        action in prop_oneof![
            Just(Value::from("send-message")),
            Just(Value::from("read-messages")),
            Just(Value::from("heartbeat")),
            field_value(),
        ],
        conversation_id in field_value(),
        content in prop::option::of(field_value()),
        temp in prop::option::of(field_value()),
    ) {
        let mut frame = json!({ "action": action, "conversationId": conversation_id });
        if let Some(content) = &content {
            frame["content"] = content.clone();
        }
        if let Some(temp) = &temp {
            frame["tempMessageId"] = temp.clone();
        }
        let text = frame.to_string();
        match parse(&text) {
            Ok(Command::SendMessage(send)) => {
                prop_assert_eq!(admission::content(&send.content), Ok(()));
                prop_assert_eq!(admission::temp_message_id(&send.temp_message_id), Ok(()));
                prop_assert_eq!(Some(&Value::from(send.content)), content.as_ref());
                prop_assert_eq!(Some(&Value::from(send.temp_message_id)), temp.as_ref());
            }
            Ok(Command::ReadMessages { conversation_id: id }) => {
                prop_assert_eq!(&action, "read-messages");
                let given = conversation_id.as_str().and_then(|s| s.parse::<uuid::Uuid>().ok());
                prop_assert_eq!(given, Some(id));
            }
            Ok(Command::Heartbeat) => prop_assert_eq!(&action, "heartbeat"),
            Ok(Command::CatchUp { .. }) => prop_assert_eq!(&action, "catch-up"),
            Err(rejection) => {
                if action == "send-message"
                    && let (Some(Value::String(c)), Some(Value::String(t))) = (&content, &temp)
                    && let Some(Ok(_)) = conversation_id.as_str().map(str::parse::<uuid::Uuid>)
                {
                    // A well-formed send is refused only by the rule, with its code.
                    let expected = if admission::temp_message_id(t).is_err() {
                        Code::InvalidField
                    } else {
                        prop_assert!(admission::content(c).is_err());
                        Code::InvalidContent
                    };
                    prop_assert_eq!(rejection.code, expected);
                }
            }
        }
    }
}
