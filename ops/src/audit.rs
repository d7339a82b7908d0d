//! Checks of the projection against the log that share no code with the fold: the log is read
//! and decoded here, and the live tables are read with plain queries, so a bug of the fold
//! cannot hide itself by being made twice.
//!
//! - every `MessageSent` of the log is one row of `messages` with the same fields (the first
//!   event of a `messageId` names the row: its offset is the row's `seq`), and no row is
//!   missing from the log;
//! - the number of messages of each conversation is the log's;
//! - each conversation's latest message is the last message of the log for it;
//! - no read marker points past that latest message.
//!
//! The log's messages are held in memory while the tables are read: about the size of their
//! contents (1 million messages of 100 characters ≈ 250 MB).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use events::{Envelope, Event};
use futures_util::StreamExt;
use sqlx::{PgConnection, Row};
use uuid::Uuid;
use writer::KafkaArgs;

use crate::log::{self, Span};

/// What the audit found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Distinct messages of the log checked.
    pub messages: u64,
    /// Differences, in words, at most the `max` asked for.
    pub differences: Vec<String>,
    /// Every difference, counted.
    pub count: u64,
}

impl Findings {
    fn say(&mut self, max: usize, line: String) {
        self.count += 1;
        if self.differences.len() < max {
            self.differences.push(line);
        }
    }
}

/// A message as the log has it (its first event).
struct Logged {
    conversation: Uuid,
    offset: i64,
    sender: String,
    content: String,
    sent_at: DateTime<Utc>,
    temp: String,
}

/// Per conversation, as the log has it.
#[derive(Default)]
struct Tally {
    messages: i64,
    /// The message last in log order, and its offset.
    latest: Option<(i64, Uuid)>,
}

/// Reads `spans` of the log and checks the tables `conn` sees (a snapshot at those positions).
pub async fn audit(
    kafka: &KafkaArgs,
    spans: Vec<Span>,
    conn: &mut PgConnection,
    max: usize,
) -> anyhow::Result<Findings> {
    let mut logged: HashMap<Uuid, Logged> = HashMap::new();
    let mut tallies: BTreeMap<Uuid, Tally> = BTreeMap::new();
    let mut batches = log::read(kafka, spans, 10_000);
    while let Some(batch) = batches.recv().await {
        for record in batch? {
            // Undecodable records are the dead letters' business (verify lists them).
            let Some(Ok(envelope)) = record.payload.as_deref().map(Envelope::decode) else {
                continue;
            };
            let Event::MessageSent(m) = envelope.event else {
                continue;
            };
            if logged.contains_key(&m.message_id) {
                continue; // the same message again: its first event names the row
            }
            let tally = tallies.entry(m.conversation_id).or_default();
            tally.messages += 1;
            if tally.latest.is_none_or(|(at, _)| at < record.offset) {
                tally.latest = Some((record.offset, m.message_id));
            }
            logged.insert(
                m.message_id,
                Logged {
                    conversation: m.conversation_id,
                    offset: record.offset,
                    sender: m.sender_id,
                    content: m.content,
                    sent_at: m.sent_at.as_datetime(),
                    temp: m.temp_message_id,
                },
            );
        }
    }
    let mut found = Findings {
        messages: logged.len() as u64,
        ..Findings::default()
    };

    // Every row against the log, then what the log has that no row has.
    let mut counted: BTreeMap<Uuid, i64> = BTreeMap::new();
    {
        let mut rows = sqlx::query(
            "SELECT conversation_id, seq, message_id, sender_id, content, sent_at, temp_message_id
               FROM messages ORDER BY conversation_id, seq",
        )
        .fetch(&mut *conn);
        while let Some(row) = rows.next().await {
            let row = row?;
            let conversation: Uuid = row.try_get("conversation_id")?;
            let seq: i64 = row.try_get("seq")?;
            let id: Uuid = row.try_get("message_id")?;
            *counted.entry(conversation).or_default() += 1;
            let Some(m) = logged.remove(&id) else {
                found.say(max, format!(
                    "message {id} (conversation {conversation}, log offset {seq}) is in the projection but no MessageSent of the log has it"
                ));
                continue;
            };
            let sender: String = row.try_get("sender_id")?;
            let content: String = row.try_get("content")?;
            let sent_at: DateTime<Utc> = row.try_get("sent_at")?;
            let temp: String = row.try_get("temp_message_id")?;
            let subject = format!("message {id}");
            let mut differs = |what: &str, in_log: String, in_projection: String| {
                if in_log != in_projection {
                    found.say(
                        max,
                        format!(
                            "{subject}: {what} is {in_log} in the log but {in_projection} in the projection"
                        ),
                    );
                }
            };
            differs(
                "its conversation",
                m.conversation.to_string(),
                conversation.to_string(),
            );
            differs("its log offset", m.offset.to_string(), seq.to_string());
            differs(
                "its sender",
                format!("{:?}", m.sender),
                format!("{sender:?}"),
            );
            differs(
                "its content",
                format!("{:?}", m.content),
                format!("{content:?}"),
            );
            differs(
                "its sentAt",
                events::Timestamp::from(m.sent_at).to_string(),
                events::Timestamp::from(sent_at).to_string(),
            );
            differs(
                "its tempMessageId",
                format!("{:?}", m.temp),
                format!("{temp:?}"),
            );
        }
    }
    let mut missing: Vec<(Uuid, Logged)> = logged.into_iter().collect();
    missing.sort_by_key(|(_, m)| (m.conversation, m.offset));
    for (id, m) in missing {
        found.say(max, format!(
            "message {id} (conversation {}, log offset {}) is in the log but missing from the projection",
            m.conversation, m.offset
        ));
    }

    // Counts per conversation.
    let conversations: Vec<Uuid> = tallies.keys().chain(counted.keys()).copied().collect();
    let mut said = std::collections::BTreeSet::new();
    for conversation in conversations {
        if !said.insert(conversation) {
            continue;
        }
        let in_log = tallies.get(&conversation).map_or(0, |t| t.messages);
        let in_projection = counted.get(&conversation).copied().unwrap_or(0);
        if in_log != in_projection {
            found.say(max, format!(
                "conversation {conversation} has {in_log} message(s) in the log but {in_projection} in the projection"
            ));
        }
    }

    // The latest message of each conversation, and the read markers against it.
    let rows = sqlx::query(
        "SELECT conversation_id, latest_seq, latest_message_id FROM conversations
          ORDER BY conversation_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let conversation: Uuid = row.try_get("conversation_id")?;
        let seq: Option<i64> = row.try_get("latest_seq")?;
        let id: Option<Uuid> = row.try_get("latest_message_id")?;
        let in_log = tallies.get(&conversation).and_then(|t| t.latest);
        let in_projection = seq.zip(id);
        if in_log != in_projection {
            found.say(
                max,
                format!(
                    "conversation {conversation}: its latest message is {} in the projection but {}, the last of the log",
                    describe(in_projection),
                    describe(in_log)
                ),
            );
        }
    }
    let markers = sqlx::query(
        "SELECT conversation_id, user_id, read_seq FROM read_markers
          ORDER BY conversation_id, user_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in markers {
        let conversation: Uuid = row.try_get("conversation_id")?;
        let user: String = row.try_get("user_id")?;
        let read: i64 = row.try_get("read_seq")?;
        let latest = tallies.get(&conversation).and_then(|t| t.latest);
        if latest.is_none_or(|(at, _)| read > at) {
            found.say(
                max,
                format!(
                    "conversation {conversation}: {user} has read up to log offset {read}, past its latest message ({})",
                    describe(latest)
                ),
            );
        }
    }
    Ok(found)
}

fn describe(message: Option<(i64, Uuid)>) -> String {
    match message {
        Some((offset, id)) => format!("message {id} at log offset {offset}"),
        None => "none".to_owned(),
    }
}
