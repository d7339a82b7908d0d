//! The frames of the WebSocket contract: what a client may send (parsed and validated here,
//! with a precise [`Rejection`] for everything else) and what the edge sends back.

use events::admission::{self, Flaw};
use events::{MAX_CONTENT_CHARS, Timestamp};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Longest accepted `tempMessageId`, in Unicode characters: it is part of a Redis key.
pub use events::MAX_TEMP_MESSAGE_ID_CHARS;

/// A valid client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Heartbeat,
    SendMessage(SendMessage),
    ReadMessages {
        conversation_id: Uuid,
    },
    /// Replay what followed `cursor` (still opaque: it is read against the log's shape).
    CatchUp {
        cursor: String,
    },
}

/// A valid `send-message` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendMessage {
    pub conversation_id: Uuid,
    pub content: String,
    pub temp_message_id: String,
}

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The frame is not JSON.
    InvalidJson,
    /// The frame is JSON but not an object, or a binary frame.
    InvalidFrame,
    UnknownAction,
    MissingField,
    InvalidField,
    /// `content` breaks the log's rule: blank, longer than [`MAX_CONTENT_CHARS`], or holding
    /// U+0000.
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
            code: self.code.as_str(),
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

/// Every frame the edge sends.
#[derive(Serialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum ServerFrame<'a> {
    NewMessage {
        message_id: Uuid,
        temp_message_id: &'a str,
        conversation_id: Uuid,
        sender_id: &'a str,
        content: &'a str,
        sent_at: Timestamp,
        /// Where this frame stands in the log; always the last field (see `delivery::restamp`).
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
    },
    ReadMessages {
        conversation_id: Uuid,
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
    },
    /// The end of a catch-up: every frame before `cursor` has been sent.
    CaughtUp { cursor: &'a str },
    /// A catch-up refused because the gap is too large: read history over REST, then go on
    /// from `cursor`.
    CatchUpGap {
        reason: &'static str,
        cursor: &'a str,
    },
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        temp_message_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        conversation_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

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
}
