//! The frames of the WebSocket contract: what a client may send (parsed and validated here,
//! with a precise [`Rejection`] for everything else) and what the edge sends back.

use events::admission::{self, Flaw};
use events::{MAX_CONTENT_CHARS, Timestamp};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Longest accepted `tempMessageId`, in Unicode characters: it is part of a Redis key.
pub use events::MAX_TEMP_MESSAGE_ID_CHARS;

/// A valid client frame. Its serialisation is the frame on the wire, and its JSON Schema is
/// what the AsyncAPI document says a client may send ([`parse`] is the reader: it names the
/// field of a refusal precisely). Fields it does not know are ignored, so they are allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(
    tag = "action",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum Command {
    /// Keeps the connection's registration alive; nothing is answered. The extension sends one
    /// every 5 minutes.
    Heartbeat,
    /// Appends a message to a conversation of which the sender is a participant. Answered by
    /// the `new-message` frame of the message (from the log, to every connection of every
    /// participant, this one included), or by an `error` frame.
    SendMessage(SendMessage),
    /// Marks every message of the conversation read for the sender. Answered by a
    /// `read-messages` frame to every connection of the reader (even when nothing was unread),
    /// or by an `error` frame.
    ReadMessages { conversation_id: Uuid },
    /// Only as the connection's first frame, within the catch-up grace
    /// (`CHAT_WS_CATCH_UP_GRACE_MS`) after it opened: replays the `new-message` and
    /// `read-messages` frames the user is owed after `cursor`, then the live frames held back
    /// meanwhile, then a `caught-up` frame; or a `catch-up-gap` frame when the gap is too large.
    /// Refused with `invalid_cursor`, `catch_up_too_late`, `rate_limited` or `unavailable`.
    CatchUp {
        /// The `cursor` of the last `new-message`, `read-messages`, `caught-up` or
        /// `catch-up-gap` frame the client received, exactly as received (opaque).
        cursor: String,
    },
}

/// A valid `send-message` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    pub conversation_id: Uuid,
    /// 1 to 1000 Unicode characters, not all whitespace (Unicode `White_Space`), no U+0000;
    /// every other character is stored and delivered exactly as sent.
    #[schemars(length(min = 1, max = MAX_CONTENT_CHARS), pattern(CONTENT_PATTERN))]
    pub content: String,
    /// The client's own id of its optimistic copy, echoed in the `new-message` frame. A retry
    /// with the same `tempMessageId` is the same message.
    #[schemars(length(min = 1, max = MAX_TEMP_MESSAGE_ID_CHARS), pattern(NO_NUL_PATTERN))]
    pub temp_message_id: String,
}

/// `content` as a regular expression (ECMA-262, as JSON Schema's `pattern`): no U+0000, and at
/// least one character outside Unicode `White_Space` (what `str::trim` removes: U+0009..U+000D,
/// U+0020, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000).
/// The unit tests hold it to `events::admission::content` for every character.
pub const CONTENT_PATTERN: &str = r"^[^\u0000]*[^\u0000\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000]*$";

/// Any text of the log: no U+0000.
pub const NO_NUL_PATTERN: &str = r"^[^\u0000]*$";

/// Why a client frame was refused: becomes an `error` frame on that connection only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: Code,
    pub message: String,
    /// Echoed when the rejected frame had one, so the client can match its optimistic copy.
    pub temp_message_id: Option<String>,
    pub conversation_id: Option<String>,
    /// With `rate_limited`: how long to wait before the next frame of this kind fits.
    pub retry_after_ms: Option<u64>,
}

/// The stable `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The frame is not JSON.
    InvalidJson,
    /// The frame is JSON but not an object, or a binary frame.
    InvalidFrame,
    /// `action` is none of `heartbeat`, `send-message`, `read-messages`, `catch-up`.
    UnknownAction,
    /// `action`, `conversationId`, `content`, `tempMessageId` or `cursor` is missing (the
    /// message names it).
    MissingField,
    /// A field has the wrong type, `conversationId` is not a UUID, or `tempMessageId` is empty,
    /// over 200 characters or holds U+0000.
    InvalidField,
    /// `content` breaks the log's rule: blank, over 1000 characters, or holding U+0000.
    InvalidContent,
    /// No such conversation, or the sender is not one of its participants: one answer for both,
    /// so that a stranger cannot tell who talks to whom.
    UnknownConversation,
    /// The same `tempMessageId` is being sent right now (on another connection).
    SendInProgress,
    /// The event log, the projection or Redis did not answer: nothing happened, retry later.
    Unavailable,
    /// The user's budget for this action is spent (`retryAfterMs` says for how long).
    RateLimited,
    /// A `catch-up` cursor that is not one, or one of another log.
    InvalidCursor,
    /// A `catch-up` that is not the connection's first frame, or comes after the catch-up
    /// grace: live frames have been sent already; reconnect to catch up.
    CatchUpTooLate,
}

impl Code {
    /// Every code, for the document and the tests.
    pub const ALL: [Code; 12] = [
        Code::InvalidJson,
        Code::InvalidFrame,
        Code::UnknownAction,
        Code::MissingField,
        Code::InvalidField,
        Code::InvalidContent,
        Code::UnknownConversation,
        Code::SendInProgress,
        Code::Unavailable,
        Code::RateLimited,
        Code::InvalidCursor,
        Code::CatchUpTooLate,
    ];
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidJson => "invalid_json",
            Code::InvalidFrame => "invalid_frame",
            Code::UnknownAction => "unknown_action",
            Code::MissingField => "missing_field",
            Code::InvalidField => "invalid_field",
            Code::InvalidContent => "invalid_content",
            Code::UnknownConversation => "unknown_conversation",
            Code::SendInProgress => "send_in_progress",
            Code::Unavailable => "unavailable",
            Code::RateLimited => "rate_limited",
            Code::InvalidCursor => "invalid_cursor",
            Code::CatchUpTooLate => "catch_up_too_late",
        }
    }
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            temp_message_id: None,
            conversation_id: None,
            retry_after_ms: None,
        }
    }

    /// `rate_limited`, saying how long to wait.
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        let retry_after_ms = u64::try_from(retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            retry_after_ms: Some(retry_after_ms),
            ..Self::new(
                Code::RateLimited,
                format!("too many frames of this kind; retry in {retry_after_ms} ms"),
            )
        }
    }

    /// `invalid_cursor`: a `catch-up` cursor this edge cannot read.
    pub fn invalid_cursor(flaw: crate::cursor::CursorFlaw) -> Self {
        Self::new(Code::InvalidCursor, format!("Invalid 'cursor': {flaw}"))
    }

    /// `catch_up_too_late`: a `catch-up` that is not the connection's first frame, or came
    /// after the catch-up grace.
    pub fn catch_up_too_late() -> Self {
        Self::new(
            Code::CatchUpTooLate,
            "catch-up must be the first frame of a connection, sent within the catch-up grace; reconnect to catch up",
        )
    }

    /// Echoes the identifying fields of the rejected frame, when it had them as strings.
    fn echoing(mut self, frame: &Map<String, Value>) -> Self {
        self.temp_message_id = frame
            .get("tempMessageId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.conversation_id = frame
            .get("conversationId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self
    }

    /// The `error` frame sent back.
    pub fn to_frame(&self) -> String {
        to_json(&ServerFrame::Error {
            code: self.code,
            message: &self.message,
            temp_message_id: self.temp_message_id.as_deref(),
            conversation_id: self.conversation_id.as_deref(),
            retry_after_ms: self.retry_after_ms,
        })
    }
}

/// Parses and validates one text frame.
pub fn parse(text: &str) -> Result<Command, Rejection> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| Rejection::new(Code::InvalidJson, "the frame is not valid JSON"))?;
    let Value::Object(frame) = value else {
        return Err(Rejection::new(
            Code::InvalidFrame,
            "the frame is not a JSON object",
        ));
    };
    parse_object(&frame).map_err(|rejection| rejection.echoing(&frame))
}

fn parse_object(frame: &Map<String, Value>) -> Result<Command, Rejection> {
    let action = string_field(frame, "action")?;
    match action {
        "heartbeat" => Ok(Command::Heartbeat),
        "send-message" => {
            let conversation_id = uuid_field(frame, "conversationId")?;
            let temp_message_id = string_field(frame, "tempMessageId")?;
            admission::temp_message_id(temp_message_id).map_err(|flaw| {
                let why = match flaw {
                    Flaw::Nul => flaw.to_string(),
                    _ => format!("1 to {MAX_TEMP_MESSAGE_ID_CHARS} characters"),
                };
                Rejection::new(
                    Code::InvalidField,
                    format!("Invalid 'tempMessageId': {why}"),
                )
            })?;
            let content = string_field(frame, "content")?;
            admission::content(content).map_err(|flaw| {
                let why = match flaw {
                    Flaw::Empty | Flaw::Blank => "it is empty or blank".to_owned(),
                    Flaw::TooLong { .. } => format!("longer than {MAX_CONTENT_CHARS} characters"),
                    _ => flaw.to_string(),
                };
                Rejection::new(Code::InvalidContent, format!("Invalid 'content': {why}"))
            })?;
            Ok(Command::SendMessage(SendMessage {
                conversation_id,
                content: content.to_owned(),
                temp_message_id: temp_message_id.to_owned(),
            }))
        }
        "read-messages" => Ok(Command::ReadMessages {
            conversation_id: uuid_field(frame, "conversationId")?,
        }),
        "catch-up" => Ok(Command::CatchUp {
            cursor: string_field(frame, "cursor")?.to_owned(),
        }),
        other => {
            let shown: String = other.chars().take(50).collect();
            Err(Rejection::new(
                Code::UnknownAction,
                format!("Unknown action '{shown}'"),
            ))
        }
    }
}

fn string_field<'a>(frame: &'a Map<String, Value>, name: &str) -> Result<&'a str, Rejection> {
    match frame.get(name) {
        None | Some(Value::Null) => Err(Rejection::new(
            Code::MissingField,
            format!("Missing '{name}'"),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Rejection::new(
            Code::InvalidField,
            format!("Invalid '{name}': not a string"),
        )),
    }
}

fn uuid_field(frame: &Map<String, Value>, name: &str) -> Result<Uuid, Rejection> {
    string_field(frame, name)?
        .parse()
        .map_err(|_| Rejection::new(Code::InvalidField, format!("Invalid '{name}': not a UUID")))
}

/// Every frame the edge sends. Its JSON Schema is what the AsyncAPI document says a client
/// receives; old clients ignore frame types and fields they do not know.
#[derive(Serialize, JsonSchema)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
#[schemars(deny_unknown_fields)]
pub enum ServerFrame<'a> {
    /// A message of a conversation, from the log: to every open connection of every
    /// participant, the sender's own connections included (the sender's tab matches
    /// `tempMessageId` to replace its optimistic copy). Each connection gets a message once.
    NewMessage {
        /// A UUIDv5 of (sender, conversation, `tempMessageId`): a retried send is the same
        /// message.
        message_id: Uuid,
        temp_message_id: &'a str,
        conversation_id: Uuid,
        sender_id: &'a str,
        content: &'a str,
        /// The same string in every frame and REST response of the message.
        sent_at: Timestamp,
        /// Where this frame stands in the log, for a later `catch-up`. Always the last field
        /// (see `delivery::restamp`).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        #[schemars(with = "CursorText")]
        cursor: Option<&'a str>,
    },
    /// The user read the conversation: to every open connection of the reader and no one
    /// else's, always, even when nothing was unread.
    ReadMessages {
        conversation_id: Uuid,
        user_id: &'a str,
        /// Where this frame stands in the log, for a later `catch-up`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        #[schemars(with = "CursorText")]
        cursor: Option<&'a str>,
    },
    /// The end of a catch-up: every frame the user was owed before `cursor` has been sent;
    /// live frames follow.
    CaughtUp {
        /// Where the connection now stands in the log.
        #[schemars(with = "CursorText")]
        cursor: &'a str,
    },
    /// A catch-up refused because the gap is too large: nothing was replayed; read history
    /// over REST, then go on from `cursor` (live frames follow).
    CatchUpGap {
        /// Why nothing was replayed.
        #[schemars(with = "crate::catch_up::Gap")]
        reason: &'static str,
        /// Where the connection now stands in the log.
        #[schemars(with = "CursorText")]
        cursor: &'a str,
    },
    /// A client frame was refused: to the connection that sent it only, which stays open.
    Error {
        code: Code,
        /// For people; its wording may change.
        message: &'a str,
        /// The rejected frame's, when it had one as a string.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        #[schemars(with = "String")]
        temp_message_id: Option<&'a str>,
        /// The rejected frame's (not necessarily a UUID), when it had one as a string.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        #[schemars(with = "String")]
        conversation_id: Option<&'a str>,
        /// With `rate_limited`: milliseconds until the next frame of this kind fits.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        #[schemars(with = "u64")]
        retry_after_ms: Option<u64>,
    },
}

/// The schema of a cursor the edge sends: opaque to clients, who send it back as it is.
pub struct CursorText;

impl JsonSchema for CursorText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cursor".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": CURSOR_PATTERN,
            "maxLength": crate::cursor::MAX_CURSOR_CHARS,
            "description": "Opaque: a position in the log, to send back in a `catch-up` frame exactly as received."
        })
    }
}

/// The text form of a cursor the edge writes (`cursor::encode`).
pub const CURSOR_PATTERN: &str = r"^c1\.[A-Za-z0-9_-]+$";

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

fn to_json<T: Serialize>(frame: &T) -> String {
    serde_json::to_string(frame).expect("frames serialise to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> Code {
        parse(text).unwrap_err().code
    }

    #[test]
    fn parses_the_three_actions() {
        assert_eq!(parse(r#"{"action":"heartbeat"}"#), Ok(Command::Heartbeat));
        let id = Uuid::new_v4();
        let sent = parse(&format!(
            r#"{{"action":"send-message","conversationId":"{id}","content":" hi ","tempMessageId":"t1"}}"#
        ))
        .unwrap();
        assert_eq!(
            sent,
            Command::SendMessage(SendMessage {
                conversation_id: id,
                content: " hi ".into(),
                temp_message_id: "t1".into()
            })
        );
        assert_eq!(
            parse(&format!(
                r#"{{"action":"read-messages","conversationId":"{id}"}}"#
            )),
            Ok(Command::ReadMessages {
                conversation_id: id
            })
        );
    }

    #[test]
    fn refuses_with_precise_codes() {
        let id = Uuid::new_v4();
        assert_eq!(code("{"), Code::InvalidJson);
        assert_eq!(code("[1]"), Code::InvalidFrame);
        assert_eq!(code("{}"), Code::MissingField);
        assert_eq!(code(r#"{"action":7}"#), Code::InvalidField);
        assert_eq!(code(r#"{"action":"dance"}"#), Code::UnknownAction);
        assert_eq!(
            code(
                r#"{"action":"send-message","conversationId":"nope","content":"x","tempMessageId":"t"}"#
            ),
            Code::InvalidField
        );
        let send = |content: &str| {
            format!(
                r#"{{"action":"send-message","conversationId":"{id}","content":{},"tempMessageId":"t9"}}"#,
                serde_json::to_string(content).unwrap()
            )
        };
        assert_eq!(code(&send(" \n\t ")), Code::InvalidContent);
        assert_eq!(code(&send("hi\u{0}there")), Code::InvalidContent);
        let nul_temp = format!(
            r#"{{"action":"send-message","conversationId":"{id}","content":"x","tempMessageId":"t\u0000"}}"#
        );
        assert_eq!(code(&nul_temp), Code::InvalidField);
        // A lone surrogate is no Unicode scalar: JSON that holds one is refused as JSON.
        assert_eq!(
            code(r#"{"action":"send-message","content":"\ud800","tempMessageId":"t"}"#),
            Code::InvalidJson
        );
        assert_eq!(code(&send("")), Code::InvalidContent);
        assert_eq!(code(&send(&"é".repeat(1001))), Code::InvalidContent);
        assert!(
            parse(&send(&"👋".repeat(1000))).is_ok(),
            "characters, not bytes"
        );
        let rejection = parse(&send("")).unwrap_err();
        assert_eq!(rejection.temp_message_id.as_deref(), Some("t9"));
        assert_eq!(rejection.conversation_id, Some(id.to_string()));
        assert_eq!(
            code(&format!(
                r#"{{"action":"send-message","conversationId":"{id}","content":"x"}}"#
            )),
            Code::MissingField
        );
    }

    #[test]
    fn error_frames_omit_absent_fields() {
        let frame = Rejection::new(Code::InvalidJson, "bad").to_frame();
        assert_eq!(
            frame,
            r#"{"type":"error","code":"invalid_json","message":"bad"}"#
        );
        let limited = Rejection::rate_limited(std::time::Duration::from_millis(480)).to_frame();
        let limited: Value = serde_json::from_str(&limited).unwrap();
        assert_eq!(limited["code"], "rate_limited");
        assert_eq!(limited["retryAfterMs"], 480);
    }

    #[test]
    fn new_message_frame_has_the_contract_fields() {
        let id = Uuid::nil();
        let sent_at: Timestamp = serde_json::from_str("\"2021-09-26T10:33:11.123Z\"").unwrap();
        let frame = ServerFrame::NewMessage {
            message_id: id,
            temp_message_id: "t1",
            conversation_id: id,
            sender_id: "alice",
            content: "hi",
            sent_at,
            cursor: None,
        }
        .to_json();
        let value: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["type"], "new-message");
        assert_eq!(value["tempMessageId"], "t1");
        assert_eq!(value["senderId"], "alice");
        assert_eq!(value["sentAt"], "2021-09-26T10:33:11.123Z");
        let read = ServerFrame::ReadMessages {
            conversation_id: id,
            user_id: "bob",
            cursor: None,
        }
        .to_json();
        assert_eq!(
            read,
            format!(r#"{{"type":"read-messages","conversationId":"{id}","userId":"bob"}}"#)
        );
    }

    #[test]
    fn every_command_is_read_back_from_its_serialisation() {
        let conversation_id = Uuid::new_v4();
        for command in [
            Command::Heartbeat,
            Command::SendMessage(SendMessage {
                conversation_id,
                content: "hi 👋".into(),
                temp_message_id: "t1".into(),
            }),
            Command::ReadMessages { conversation_id },
            Command::CatchUp {
                cursor: "c1.uQq78lndBJII0ge6CesH".into(),
            },
        ] {
            let frame = serde_json::to_string(&command).unwrap();
            assert_eq!(parse(&frame), Ok(command), "{frame}");
        }
    }

    /// The document's patterns say what `events::admission` says, character for character
    /// (every character a blank could be made of, U+0000, and a sample of the rest).
    #[test]
    fn the_documented_patterns_are_the_log_rule() {
        let content = jsonschema::validator_for(&serde_json::json!({
            "type": "string", "pattern": CONTENT_PATTERN
        }))
        .unwrap();
        let temp = jsonschema::validator_for(&serde_json::json!({
            "type": "string", "pattern": NO_NUL_PATTERN
        }))
        .unwrap();
        let sample = (0..=0x3100u32).chain((0x3100..=0x10FFFF).step_by(97));
        let mut whitespace = 0;
        for c in sample.filter_map(char::from_u32) {
            whitespace += usize::from(c.is_whitespace());
            for text in [
                c.to_string(),
                format!("{c}{c}"),
                format!(" {c}\t"),
                format!("x{c}"),
            ] {
                let value = Value::String(text.clone());
                assert_eq!(
                    content.is_valid(&value),
                    admission::content(&text).is_ok(),
                    "content {text:?} (U+{:04X})",
                    c as u32
                );
                assert_eq!(
                    temp.is_valid(&value),
                    admission::temp_message_id(&text).is_ok(),
                    "tempMessageId {text:?}"
                );
            }
        }
        assert_eq!(whitespace, 25, "every White_Space character was tried");
    }
}
