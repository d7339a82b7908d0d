//! The AsyncAPI 3.0 document of the event API: the WebSocket protocol (the client frames of
//! [`Command`], the server frames of [`ServerFrame`], the error and close codes) and the Kafka
//! topic (the envelope and every version of every event type of `events::schema`, the key, the
//! ordering). Every schema in it is generated from the Rust types that read and write the wire,
//! with schemars, as the log's JSON Schema is.
//!
//! `socket-edge/asyncapi.json` is its published copy, served at `<base>/asyncapi.json`; a test
//! fails when it differs from [`document_text`] (`UPDATE_GOLDEN=1` rewrites it).

use events::{ConversationCreated, Envelope, Event, MessageSent, MessagesRead, Timestamp};
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::catch_up::Gap;
use crate::cursor::{self, CursorFlaw};
use crate::delivery::{new_message_frame, read_messages_frame};
use crate::frames::{Code, Command, Rejection, SendMessage, ServerFrame};
use crate::{
    CLOSE_DELIVERY_LOST, CLOSE_GOING_AWAY, CLOSE_TOO_BIG, CLOSE_TOO_SLOW, CLOSE_UNRESPONSIVE,
};

/// The published copy, as served by the edge.
pub const PUBLISHED: &str = include_str!("../asyncapi.json");

/// The close codes the edge sends, with when (the constants of the crate root).
pub const CLOSE_CODES: [(u16, &str); 5] = [
    (
        CLOSE_GOING_AWAY,
        "going away: the edge is shutting down (SIGTERM); reconnect",
    ),
    (
        CLOSE_TOO_BIG,
        "message too big: a client frame over CHAT_WS_MAX_FRAME_BYTES (16384 by default)",
    ),
    (
        CLOSE_DELIVERY_LOST,
        "internal error: a delivery this connection may have been owed was lost; reconnect and read history over REST",
    ),
    (
        CLOSE_UNRESPONSIVE,
        "unresponsive: CHAT_WS_MAX_MISSED_PONGS pings in a row unanswered",
    ),
    (
        CLOSE_TOO_SLOW,
        "too slow: the connection's outbound queue (CHAT_WS_OUTBOUND_QUEUE frames) overflowed",
    ),
];

/// The Kafka bindings' version (asyncapi/bindings, kafka).
const KAFKA_BINDING: &str = "0.5.0";
/// The WebSocket bindings' version (asyncapi/bindings, websockets).
const WS_BINDING: &str = "0.1.0";

/// The whole document.
pub fn document() -> Value {
    let mut messages = Map::new();
    let mut socket_messages = Map::new();
    let mut client_refs = Vec::new();
    let mut server_refs = Vec::new();

    for (action, schema) in variants::<Command>("action") {
        let name = format!("action.{action}");
        let example = client_example(&action);
        messages.insert(name.clone(), message(&action, schema, vec![example]));
        socket_messages.insert(name.clone(), reference("components/messages", &name));
        client_refs.push((action, reference("channels/socket/messages", &name)));
    }
    for (kind, schema) in variants::<ServerFrame>("type") {
        let name = format!("frame.{kind}");
        let examples = server_examples(&kind);
        messages.insert(name.clone(), message(&kind, schema, examples));
        socket_messages.insert(name.clone(), reference("components/messages", &name));
        server_refs.push((kind, reference("channels/socket/messages", &name)));
    }

    let mut event_messages = Map::new();
    let mut event_refs = Vec::new();
    let log = events::schema::schema();
    for (name, payload) in log["$defs"].as_object().expect("the log's $defs") {
        let type_name = payload["properties"]["type"]["const"].clone();
        let version = payload["properties"]["version"]["const"].clone();
        let mut message = json!({
            "name": name,
            "title": format!("{} (version {version})", type_name.as_str().unwrap_or_default()),
            "summary": payload["properties"]["data"]["description"],
            "payload": payload,
            "bindings": { "kafka": {
                "key": {
                    "type": "string",
                    "format": "uuid",
                    "description": "The event's data.conversationId, as UTF-8 text: every event of a conversation is in one partition, in log order.",
                },
                "bindingVersion": KAFKA_BINDING,
            }},
        });
        if let Some(example) = event_example(name) {
            message["examples"] = json!([{ "name": "example", "payload": example }]);
        }
        messages.insert(name.clone(), message);
        event_messages.insert(name.clone(), reference("components/messages", name));
        event_refs.push(reference("channels/chatEvents/messages", name));
    }

    let pick = |refs: &[(String, Value)], name: &str| -> Value {
        refs.iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no frame {name}"))
    };
    let socket = reference("channels", "socket");
    let events_channel = reference("channels", "chatEvents");
    let error = pick(&server_refs, "error");
    let operations = json!({
        "heartbeat": {
            "action": "receive",
            "channel": socket,
            "title": "A client keeps its connection alive",
            "summary": "Nothing is answered; the connection's registration is refreshed.",
            "messages": [pick(&client_refs, "heartbeat")],
        },
        "sendMessage": {
            "action": "receive",
            "channel": socket,
            "title": "A client sends a message",
            "description": "Frames of one connection are handled one at a time, in the order sent. The message is appended to the log (a MessageSent event); its new-message frame comes from the log to every connection of every participant, the sender's included. A retry with the same tempMessageId is the same message (same messageId and sentAt).",
            "messages": [pick(&client_refs, "send-message")],
            "reply": {
                "channel": socket,
                "messages": [pick(&server_refs, "new-message"), error.clone()],
            },
        },
        "readMessages": {
            "action": "receive",
            "channel": socket,
            "title": "A client marks a conversation read",
            "description": "Appends a MessagesRead event; its read-messages frame comes from the log to every connection of the reader, even when nothing was unread.",
            "messages": [pick(&client_refs, "read-messages")],
            "reply": {
                "channel": socket,
                "messages": [pick(&server_refs, "read-messages"), error.clone()],
            },
        },
        "catchUp": {
            "action": "receive",
            "channel": socket,
            "title": "A reconnecting client catches up",
            "description": "Only as the connection's first frame, within CHAT_WS_CATCH_UP_GRACE_MS (2000 by default) of the connection opening; live frames are held back meanwhile. The edge reads the log back from the client's cursor to where this connection joined the log, sends the new-message and read-messages frames the user is owed after the cursor (in log order, each with its cursor), then the live frames held back, then caught-up; nothing is lost or repeated at the seam. When more than CHAT_WS_CATCH_UP_MAX_EVENTS (10000) events followed the cursor, one of them is older than CHAT_WS_CATCH_UP_MAX_AGE_SECS (86400), or the log no longer holds them, nothing is replayed and catch-up-gap says why: read history over REST. Either way the connection is live afterwards. Refusals (an error frame): invalid_cursor (not a cursor, or one of another log), catch_up_too_late (not the first frame, or after the grace), rate_limited (CHAT_RATE_CATCH_UP_PER_MINUTE, CHAT_RATE_CATCH_UP_BURST, per user across edges), unavailable.",
            "messages": [pick(&client_refs, "catch-up")],
            "reply": {
                "channel": socket,
                "messages": [
                    pick(&server_refs, "new-message"),
                    pick(&server_refs, "read-messages"),
                    pick(&server_refs, "caught-up"),
                    pick(&server_refs, "catch-up-gap"),
                    error.clone(),
                ],
            },
        },
        "endCatchUp": {
            "action": "send",
            "channel": socket,
            "title": "The edge ends a catch-up",
            "description": "caught-up after the replayed frames, or catch-up-gap instead of them; live frames follow, each with its cursor.",
            "messages": [pick(&server_refs, "caught-up"), pick(&server_refs, "catch-up-gap")],
        },
        "deliverNewMessage": {
            "action": "send",
            "channel": socket,
            "title": "The edge delivers a message from the log",
            "messages": [pick(&server_refs, "new-message")],
        },
        "deliverReadMessages": {
            "action": "send",
            "channel": socket,
            "title": "The edge tells a reader's connections that a conversation was read",
            "messages": [pick(&server_refs, "read-messages")],
        },
        "rejectFrame": {
            "action": "send",
            "channel": socket,
            "title": "The edge refuses a client frame",
            "description": "To the connection that sent the frame only; the connection stays open.",
            "messages": [error],
        },
        "appendEvent": {
            "action": "send",
            "channel": events_channel,
            "title": "The writer appends an event",
            "description": "The writer (inside chat-api and socket-edge) is the only producer: idempotent, acks=all; a command is acknowledged only after Kafka acknowledged its event. It writes the current version of each type.",
            "messages": event_refs.iter().filter(|r| is_current(r)).cloned().collect::<Vec<_>>(),
        },
        "readEvents": {
            "action": "receive",
            "channel": events_channel,
            "title": "Consumers fold the log",
            "description": "The projector, every socket-edge and analytics consumers read the topic. A reader must read every version of every type: older versions are upcast when read (docs/events.md), a version newer than the reader knows is an error, never a guess.",
            "messages": event_refs,
        },
    });

    json!({
        "asyncapi": "3.0.0",
        "id": "urn:pagenow:chat",
        "info": {
            "title": "PageNow chat: WebSocket protocol and event log",
            "version": "1.0.0",
            "description": "The asynchronous side of the chat backend. The WebSocket edge (socket-edge) is what the extension speaks; the Kafka topic chat.events is the source of truth, read by the projector, the edges and analytics consumers. The REST side is api/openapi.json. Prose: docs/websocket.md and docs/events.md.",
            "license": { "name": "MIT" },
        },
        "defaultContentType": "application/json",
        "servers": {
            "edge": {
                "host": "{host}",
                "protocol": "ws",
                "description": "A socket-edge (CHAT_WS_ADDR), behind TLS (wss) in production. Connect with GET <CHAT_BASE_PATH>/?Authorization=<jwt> (the raw JWT, not URL-encoded; with or without the slash before '?'); a missing or invalid token gets HTTP 401 before the upgrade, a user over CHAT_WS_MAX_CONNECTIONS_PER_USER gets 429. This document is served by the same listener at <CHAT_BASE_PATH>/asyncapi.json.",
                "variables": { "host": {
                    "default": "127.0.0.1:8081",
                    "description": "CHAT_WS_ADDR, or the load balancer in front of the edges",
                }},
            },
            "kafka": {
                "host": "{brokers}",
                "protocol": "kafka",
                "description": "The Kafka cluster (KAFKA_BROKERS).",
                "variables": { "brokers": {
                    "default": "127.0.0.1:9092",
                    "description": "KAFKA_BROKERS",
                }},
            },
        },
        "channels": {
            "socket": {
                "address": "/",
                "title": "The WebSocket connection",
                "servers": [reference("servers", "edge")],
                "description": socket_description(),
                "messages": socket_messages,
                "bindings": { "ws": {
                    "method": "GET",
                    "query": {
                        "type": "object",
                        "properties": { "Authorization": {
                            "type": "string",
                            "description": "The raw JWT (an Authorization header is accepted too). Checked at connect time only.",
                        }},
                    },
                    "bindingVersion": WS_BINDING,
                }},
                "x-close-codes": CLOSE_CODES.iter().map(|(code, when)| json!({"code": code, "when": when})).collect::<Vec<_>>(),
            },
            "chatEvents": {
                "address": "chat.events",
                "title": "The event log",
                "servers": [reference("servers", "kafka")],
                "description": "One topic (CHAT_EVENTS_TOPIC, default chat.events), the source of truth. Record key: the event's conversationId as UTF-8 text, partitioned by murmur2 (Java client compatible), so all events of a conversation are in one partition, in the order the writer appended them: per-conversation order is the log order, and there is no order across conversations. Record value: one JSON envelope {type, version, eventId, acceptedAt, data}; no headers. Events are never rewritten or deleted (unlimited retention); types evolve by adding fields under a new version, and every published version stays readable. Records a reader cannot decode are copied to <topic>.dlq. See docs/events.md.",
                "messages": event_messages,
                "bindings": { "kafka": {
                    "topic": "chat.events",
                    "topicConfiguration": { "retention.ms": -1 },
                    "bindingVersion": KAFKA_BINDING,
                }},
            },
        },
        "operations": operations,
        "components": { "messages": messages },
    })
}

/// [`document`] as the text of the published file.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("the document serialises");
    text.push('\n');
    text
}

fn socket_description() -> String {
    let mut text = String::from(
        "Frames are text, one JSON object each. A client sends frames with an `action`; the edge sends frames with a `type`. Frames of one connection are handled in the order sent. A rejected frame gets an `error` frame on that connection only, which stays open. Clients must ignore frame types and fields they do not know.\n\nEvery new-message and read-messages frame from the log carries a `cursor`, an opaque position in the log. A client that reconnects sends the last cursor it received in a `catch-up` frame, as its first frame, to get what it missed (see the catchUp operation).\n\nClose codes the edge sends:\n",
    );
    for (code, when) in CLOSE_CODES {
        text.push_str(&format!("- {code}: {when}\n"));
    }
    text
}

/// `#/<section>/<name>` as a reference object (`/` and `~` escaped in `name`).
fn reference(section: &str, name: &str) -> Value {
    let name = name.replace('~', "~0").replace('/', "~1");
    json!({ "$ref": format!("#/{section}/{name}") })
}

fn is_current(reference: &Value) -> bool {
    let Some(path) = reference["$ref"].as_str() else {
        return false;
    };
    let name = path.rsplit('/').next().unwrap_or_default();
    let Some((type_name, version)) = name.split_once(".v") else {
        return false;
    };
    events::upcast::LOG
        .current(type_name)
        .map(|v| v.to_string())
        == Some(version.to_owned())
}

fn message(name: &str, payload: Value, examples: Vec<Value>) -> Value {
    let mut message = json!({
        "name": name,
        "title": name,
        "payload": payload,
        "examples": examples
            .into_iter()
            .enumerate()
            .map(|(i, payload)| json!({ "name": format!("example{}", i + 1), "payload": payload }))
            .collect::<Vec<_>>(),
    });
    if let Some(description) = message["payload"]
        .as_object_mut()
        .and_then(|p| p.remove("description"))
    {
        message["summary"] = description;
    }
    message
}

/// The variants of an internally tagged enum's schema, each with the value of its tag.
fn variants<T: JsonSchema>(tag: &str) -> Vec<(String, Value)> {
    let generator = SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let schema = generator.into_root_schema_for::<T>().to_value();
    let variants = schema["oneOf"]
        .as_array()
        .or_else(|| schema["anyOf"].as_array())
        .expect("a tagged enum's schema is a oneOf");
    variants
        .iter()
        .map(|variant| {
            let name = variant["properties"][tag]["const"]
                .as_str()
                .or_else(|| variant["properties"][tag]["enum"][0].as_str())
                .expect("each variant's tag is a constant")
                .to_owned();
            (name, variant.clone())
        })
        .collect()
}

fn example_id(n: u128) -> Uuid {
    Uuid::from_u128(0x5d9e_1c3a_8f2b_4e7d_a1c6_0f3b_9e2d_4a50 + n)
}

fn example_time(text: &str) -> Timestamp {
    serde_json::from_value(json!(text)).expect("an example timestamp")
}

/// The topic of the examples.
const EXAMPLE_TOPIC: &str = "chat.events";

/// A cursor of the example topic (4 partitions), by the real encoder.
fn example_cursor(next: &[i64]) -> String {
    cursor::encode(cursor::topic_tag(EXAMPLE_TOPIC), next)
}

fn client_example(action: &str) -> Value {
    let conversation_id = example_id(1);
    let command = match action {
        "heartbeat" => Command::Heartbeat,
        "send-message" => Command::SendMessage(SendMessage {
            conversation_id,
            content: "Hello 👋".into(),
            temp_message_id: "7b0c3c8e-2f0e-4a5e-9a43-7f1c2d3e4f50".into(),
        }),
        "read-messages" => Command::ReadMessages { conversation_id },
        "catch-up" => Command::CatchUp {
            cursor: example_cursor(&[1041, 977, 1210, 1003]),
        },
        other => panic!("no example of {other}"),
    };
    serde_json::to_value(command).expect("a frame serialises")
}

fn server_examples(kind: &str) -> Vec<Value> {
    let conversation_id = example_id(1);
    let frames = match kind {
        "new-message" => {
            let temp = "7b0c3c8e-2f0e-4a5e-9a43-7f1c2d3e4f50";
            let sent_at = example_time("2021-09-26T10:33:11.123Z");
            let message = MessageSent {
                conversation_id,
                message_id: events::message_id("alice", conversation_id, temp),
                sender_id: "alice".into(),
                content: "Hello 👋".into(),
                temp_message_id: temp.into(),
                sent_at,
            };
            vec![new_message_frame(
                &message,
                sent_at,
                &example_cursor(&[1042, 977, 1210, 1003]),
            )]
        }
        "read-messages" => vec![read_messages_frame(
            &MessagesRead {
                conversation_id,
                user_id: "bob".into(),
            },
            &example_cursor(&[1042, 978, 1210, 1003]),
        )],
        "caught-up" => vec![
            ServerFrame::CaughtUp {
                cursor: &example_cursor(&[1042, 978, 1210, 1003]),
            }
            .to_json(),
        ],
        "catch-up-gap" => Gap::ALL
            .iter()
            .map(|gap| {
                ServerFrame::CatchUpGap {
                    reason: gap.as_str(),
                    cursor: &example_cursor(&[25_730, 24_911, 26_102, 25_377]),
                }
                .to_json()
            })
            .collect(),
        "error" => {
            let mut unknown = Rejection::new(Code::UnknownConversation, "no such conversation");
            unknown.temp_message_id = Some("t1".into());
            unknown.conversation_id = Some(conversation_id.to_string());
            vec![
                unknown.to_frame(),
                Rejection::rate_limited(std::time::Duration::from_millis(480)).to_frame(),
                Rejection::new(Code::InvalidJson, "the frame is not valid JSON").to_frame(),
                Rejection::invalid_cursor(CursorFlaw::Malformed).to_frame(),
                Rejection::catch_up_too_late().to_frame(),
            ]
        }
        other => panic!("no example of {other}"),
    };
    frames
        .iter()
        .map(|frame| serde_json::from_str(frame).expect("frames are JSON"))
        .collect()
}

/// An example record value of the current version of a type (none for older versions).
fn event_example(name: &str) -> Option<Value> {
    let conversation_id = example_id(1);
    let event = match name {
        "ConversationCreated.v2" => Event::ConversationCreated(ConversationCreated {
            conversation_id: events::direct_conversation_id("alice", "bob"),
            created_by: "alice".into(),
            participants: vec!["alice".into(), "bob".into()],
            is_group: false,
            title: String::new(),
            idempotency_key: None,
        }),
        "MessageSent.v1" => Event::MessageSent(MessageSent {
            conversation_id,
            message_id: events::message_id("alice", conversation_id, "t1"),
            sender_id: "alice".into(),
            content: "Hello 👋".into(),
            temp_message_id: "t1".into(),
            sent_at: example_time("2021-09-26T10:33:11.123Z"),
        }),
        "MessagesRead.v1" => Event::MessagesRead(MessagesRead {
            conversation_id,
            user_id: "bob".into(),
        }),
        _ => return None,
    };
    let envelope = Envelope {
        event_id: example_id(100),
        accepted_at: example_time("2021-09-26T10:33:11.123Z"),
        event,
    };
    Some(serde_json::from_slice(&envelope.encode()).expect("an envelope is JSON"))
}
