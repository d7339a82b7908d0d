//! `chatctl import-pagenow`: the old PageNow database (its `db_init.sql` schema) brought into
//! the log, so that the projection answers the old data through the same contract.
//!
//! The old rows become events, conversation by conversation, in an order the projection reads
//! the old answers back from:
//!
//! - `ConversationCreated`, accepted at the old `created_at` (the projection's `created_at`
//!   comes from `acceptedAt`). Groups keep their ids; direct conversations move to
//!   [`events::direct_conversation_id`], and the duplicates the old check-then-insert race made
//!   for one pair become one conversation with all their messages.
//! - `MessageSent` per message, keeping its id and its `sent_at` to the millisecond (the
//!   projection takes `sentAt` from the event), `tempMessageId` = the old message id; in time
//!   order, messages sharing a `sent_at` by message id (the log order is the history order).
//! - `MessagesRead` per participant, right after the newest message that user had read (their
//!   own messages count as read): a read covers what precedes it in the log, so it becomes the
//!   user's read marker.
//!
//! Rows that break the contract ([`events::admission`], plus messages of unknown conversations
//! and of non-participants) are refused whole and listed with their ids; nothing of them enters
//! the log.
//!
//! Every event's id is derived from the old ids ([`event_id`]). Before appending, the import
//! reads the event ids the log already holds and appends only the others: an import interrupted
//! at any point and run again appends nothing twice, and a second full run appends nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, NaiveDateTime, Utc};
use events::{ConversationCreated, Envelope, Event, MessageSent, MessagesRead, Timestamp};
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use uuid::Uuid;
use writer::{KafkaArgs, Writer};

use crate::log::{self, Span};

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// Postgres URL of the old PageNow database (read only).
    #[arg(long = "from", value_name = "POSTGRES_URL", hide_env_values = true)]
    pub from: SecretString,
    /// Print the events that would be appended (JSON lines) and the counts; append nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Appends awaiting Kafka's acknowledgement at once. Kept well under the producer's queue
    /// (100,000 records), so no append waits for room and each partition keeps its order.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=50_000))]
    pub in_flight: u64,
}

/// Namespace of the ids of imported events (fixed forever: a later run must derive the same
/// ids to recognise what an earlier run appended).
const IMPORT_NAMESPACE: Uuid = Uuid::from_u128(0x3f9a_c1d2_7b64_4e08_a5f1_2c8d_90e3_b617);

/// The id of an imported event, derived from the old rows it comes from.
pub fn event_id(name: &str) -> Uuid {
    Uuid::new_v5(&IMPORT_NAMESPACE, name.as_bytes())
}

/// One old conversation row with its participants.
#[derive(Debug, Clone)]
struct OldConversation {
    id: Uuid,
    created_by: String,
    created_at: Option<DateTime<Utc>>,
    title: Option<String>,
    is_group: Option<bool>,
    participants: Vec<String>,
}

/// One old message row.
#[derive(Debug, Clone)]
struct OldMessage {
    id: Uuid,
    conversation_id: Option<Uuid>,
    sent_at: DateTime<Utc>,
    sender_id: String,
    content: String,
}

/// The newest message a user had marked read in an old conversation.
#[derive(Debug, Clone)]
struct OldRead {
    conversation_id: Uuid,
    user_id: String,
    sent_at: DateTime<Utc>,
    message_id: Uuid,
}

/// What the old database holds, as the import needs it.
#[derive(Debug, Default)]
pub struct OldData {
    conversations: Vec<OldConversation>,
    messages: Vec<OldMessage>,
    reads: Vec<OldRead>,
}

impl OldData {
    pub fn message_rows(&self) -> usize {
        self.messages.len()
    }
}

/// Reads the old database (a consistent snapshot: one repeatable-read transaction).
pub async fn load(pool: &PgPool) -> anyhow::Result<OldData> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let mut participants: HashMap<Uuid, Vec<String>> = HashMap::new();
    let rows = sqlx::query("SELECT conversation_id, user_id FROM participant_table")
        .fetch_all(&mut *tx)
        .await
        .context("read participant_table")?;
    for row in rows {
        let conversation: Option<Uuid> = row.try_get(0)?;
        if let Some(conversation) = conversation {
            participants
                .entry(conversation)
                .or_default()
                .push(row.try_get(1)?);
        }
    }
    let rows = sqlx::query(
        "SELECT conversation_id, created_by, created_at, title, is_group FROM conversation_table",
    )
    .fetch_all(&mut *tx)
    .await
    .context("read conversation_table")?;
    let mut conversations = Vec::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get(0)?;
        let created_at: Option<NaiveDateTime> = row.try_get(2)?;
        conversations.push(OldConversation {
            id,
            created_by: row.try_get(1)?,
            created_at: created_at.map(|t| t.and_utc()),
            title: row.try_get(3)?,
            is_group: row.try_get(4)?,
            participants: participants.remove(&id).unwrap_or_default(),
        });
    }
    let messages = sqlx::query(
        "SELECT message_id, conversation_id, sent_at, sender_id, content FROM message_table",
    )
    .fetch(&mut *tx)
    .map(|row| {
        let row = row?;
        Ok::<_, sqlx::Error>(OldMessage {
            id: row.try_get(0)?,
            conversation_id: row.try_get(1)?,
            sent_at: row.try_get(2)?,
            sender_id: row.try_get(3)?,
            content: row.try_get(4)?,
        })
    })
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .context("read message_table")?;
    // Per (conversation, user), only the newest message marked read matters.
    let reads = sqlx::query(
        "SELECT DISTINCT ON (m.conversation_id, r.user_id)
                m.conversation_id, r.user_id, m.sent_at, m.message_id
           FROM message_is_read_table r JOIN message_table m USING (message_id)
          WHERE r.is_read AND m.conversation_id IS NOT NULL
          ORDER BY m.conversation_id, r.user_id, m.sent_at DESC, m.message_id DESC",
    )
    .fetch_all(&mut *tx)
    .await
    .context("read message_is_read_table")?
    .into_iter()
    .map(|row| {
        Ok(OldRead {
            conversation_id: row.try_get(0)?,
            user_id: row.try_get(1)?,
            sent_at: row.try_get(2)?,
            message_id: row.try_get(3)?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    tx.commit().await?;
    Ok(OldData {
        conversations,
        messages,
        reads,
    })
}

/// An old row the import refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `conversation` or `message`.
    pub table: &'static str,
    pub id: Uuid,
    pub reason: String,
}

/// The events of one conversation, in the order they go into the log.
#[derive(Debug, Clone)]
pub struct ConversationPlan {
    pub conversation_id: Uuid,
    /// The old conversations it comes from (more than one: merged duplicates of a direct pair).
    pub sources: Vec<Uuid>,
    pub events: Vec<Envelope>,
}

/// Everything the import would append, and what it refuses.
#[derive(Debug, Default)]
pub struct Plan {
    pub conversations: Vec<ConversationPlan>,
    pub refused: Vec<Refused>,
}

/// How many of each kind a plan (or a part of one) holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub conversations: u64,
    pub messages: u64,
    pub reads: u64,
}

impl Counts {
    fn add(&mut self, event: &Event) {
        match event {
            Event::ConversationCreated(_) => self.conversations += 1,
            Event::MessageSent(_) => self.messages += 1,
            Event::MessagesRead(_) => self.reads += 1,
        }
    }

    pub fn events(&self) -> u64 {
        self.conversations + self.messages + self.reads
    }

    pub fn of<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Self {
        let mut counts = Counts::default();
        for e in events {
            counts.add(&e.event);
        }
        counts
    }
}

impl Plan {
    pub fn counts(&self) -> Counts {
        Counts::of(self.conversations.iter().flat_map(|c| &c.events))
    }

    /// Every event, conversation by conversation.
    pub fn events(&self) -> impl Iterator<Item = &Envelope> {
        self.conversations.iter().flat_map(|c| &c.events)
    }
}

/// A conversation of the new log, gathered from one or more old ones.
struct Target {
    created: ConversationCreated,
    created_at: Option<DateTime<Utc>>,
    sources: Vec<Uuid>,
    /// (sent_at, message id, sender, content), accepted messages only.
    messages: Vec<(DateTime<Utc>, Uuid, String, String)>,
    /// Newest (sent_at, message id) each user had read, refused messages included.
    read_up_to: HashMap<String, (DateTime<Utc>, Uuid)>,
}

/// Why an old conversation cannot be imported, or the conversation it becomes.
fn conversation_event(old: &OldConversation) -> Result<ConversationCreated, String> {
    let mut participants = old.participants.clone();
    participants.sort();
    participants.dedup();
    let is_group = old.is_group.unwrap_or(false);
    let (conversation_id, title) = if is_group {
        (old.id, old.title.clone().unwrap_or_default())
    } else {
        let [a, b] = participants.as_slice() else {
            return Err(format!(
                "a direct conversation with {} participant(s), not 2",
                participants.len()
            ));
        };
        (events::direct_conversation_id(a, b), String::new())
    };
    let created = ConversationCreated {
        conversation_id,
        created_by: old.created_by.clone(),
        participants,
        is_group,
        title,
        idempotency_key: None,
    };
    Event::ConversationCreated(created.clone())
        .admit()
        .map_err(|refusal| refusal.to_string())?;
    Ok(created)
}

/// Turns the old rows into the events to append, refusing the rows that break the contract.
pub fn plan(old: &OldData) -> Plan {
    let mut refused = Vec::new();
    let mut targets: BTreeMap<Uuid, Target> = BTreeMap::new();
    // Old conversation id → its target id.
    let mut moved: HashMap<Uuid, Uuid> = HashMap::new();
    let mut olds: Vec<&OldConversation> = old.conversations.iter().collect();
    // The earliest of duplicates is the one whose creator and creation time are kept.
    olds.sort_by_key(|c| (c.created_at.is_none(), c.created_at, c.id));
    for conversation in olds {
        match conversation_event(conversation) {
            Ok(created) => {
                let id = created.conversation_id;
                moved.insert(conversation.id, id);
                let target = targets.entry(id).or_insert_with(|| Target {
                    created,
                    created_at: conversation.created_at,
                    sources: Vec::new(),
                    messages: Vec::new(),
                    read_up_to: HashMap::new(),
                });
                target.sources.push(conversation.id);
            }
            Err(reason) => refused.push(Refused {
                table: "conversation",
                id: conversation.id,
                reason,
            }),
        }
    }
    let known: HashSet<Uuid> = old.conversations.iter().map(|c| c.id).collect();
    for message in &old.messages {
        let refuse = |reason: String| Refused {
            table: "message",
            id: message.id,
            reason,
        };
        let Some(target_id) = message.conversation_id.and_then(|c| moved.get(&c)) else {
            let reason = match message.conversation_id {
                Some(c) if known.contains(&c) => {
                    format!("its conversation {c} is refused")
                }
                Some(c) => format!("unknown conversation {c}"),
                None => "no conversation".to_owned(),
            };
            refused.push(refuse(reason));
            continue;
        };
        let target = targets
            .get_mut(target_id)
            .expect("every moved id has a target");
        if target
            .created
            .participants
            .binary_search(&message.sender_id)
            .is_err()
        {
            refused.push(refuse(format!(
                "sender {:?} is not a participant of conversation {}",
                message.sender_id,
                message.conversation_id.expect("known conversation")
            )));
            continue;
        }
        let event = Event::MessageSent(MessageSent {
            conversation_id: *target_id,
            message_id: message.id,
            sender_id: message.sender_id.clone(),
            content: message.content.clone(),
            temp_message_id: message.id.to_string(),
            sent_at: Timestamp::from(message.sent_at),
        });
        if let Err(refusal) = event.admit() {
            refused.push(refuse(refusal.to_string()));
            continue;
        }
        target.messages.push((
            message.sent_at,
            message.id,
            message.sender_id.clone(),
            message.content.clone(),
        ));
    }
    for read in &old.reads {
        let Some(target) = moved
            .get(&read.conversation_id)
            .and_then(|id| targets.get_mut(id))
        else {
            continue;
        };
        if target
            .created
            .participants
            .binary_search(&read.user_id)
            .is_err()
        {
            continue; // read state of someone who is not in the conversation: nothing to mark
        }
        let newest = target
            .read_up_to
            .entry(read.user_id.clone())
            .or_insert((read.sent_at, read.message_id));
        *newest = (*newest).max((read.sent_at, read.message_id));
    }

    let conversations = targets
        .into_iter()
        .map(|(id, mut target)| {
            target.messages.sort_by_key(|m| (m.0, m.1));
            // Each participant's read, anchored after the newest message read (their own count).
            let mut reads_after: BTreeMap<usize, Vec<String>> = BTreeMap::new();
            for user in &target.created.participants {
                let read_key = target.read_up_to.get(user).copied();
                let by_key = read_key.map(|key| {
                    target
                        .messages
                        .partition_point(|m| (m.0, m.1) <= key)
                        .checked_sub(1)
                });
                let own = target.messages.iter().rposition(|m| &m.2 == user);
                if let Some(anchor) = by_key.flatten().max(own).or(own) {
                    reads_after.entry(anchor).or_default().push(user.clone());
                }
            }
            let created_at = target
                .created_at
                .or(target.messages.first().map(|m| m.0))
                .unwrap_or(DateTime::UNIX_EPOCH);
            let mut events = Vec::with_capacity(1 + target.messages.len() + reads_after.len());
            events.push(Envelope {
                event_id: event_id(&format!("created:{id}")),
                accepted_at: Timestamp::from(created_at),
                event: Event::ConversationCreated(target.created.clone()),
            });
            for (i, (sent_at, message_id, sender, content)) in
                target.messages.into_iter().enumerate()
            {
                events.push(Envelope {
                    event_id: event_id(&format!("message:{message_id}")),
                    accepted_at: Timestamp::from(sent_at),
                    event: Event::MessageSent(MessageSent {
                        conversation_id: id,
                        message_id,
                        sender_id: sender,
                        content,
                        temp_message_id: message_id.to_string(),
                        sent_at: Timestamp::from(sent_at),
                    }),
                });
                for user in reads_after.remove(&i).unwrap_or_default() {
                    events.push(Envelope {
                        event_id: event_id(&format!(
                            "read:{id}:{message_id}:{}:{user}",
                            user.len()
                        )),
                        accepted_at: Timestamp::from(sent_at),
                        event: Event::MessagesRead(MessagesRead {
                            conversation_id: id,
                            user_id: user,
                        }),
                    });
                }
            }
            ConversationPlan {
                conversation_id: id,
                sources: target.sources,
                events,
            }
        })
        .collect();
    refused.sort_by(|a, b| (a.table, a.id).cmp(&(b.table, b.id)));
    Plan {
        conversations,
        refused,
    }
}

/// The ids of every event the log holds (read once, to the end).
pub async fn event_ids_in_log(kafka: &KafkaArgs) -> anyhow::Result<HashSet<Uuid>> {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(rename = "eventId")]
        event_id: Uuid,
    }
    let brokers = kafka.brokers.clone();
    let topic = kafka.topic.clone();
    let marks = tokio::task::spawn_blocking(move || {
        let consumer = log::reader(&brokers)?;
        log::watermarks(&consumer, &topic)
    })
    .await??;
    let spans: Vec<Span> = marks
        .into_iter()
        .map(|(partition, (start, end))| Span {
            partition,
            start,
            end,
        })
        .collect();
    let mut ids = HashSet::new();
    if log::total(&spans) == 0 {
        return Ok(ids);
    }
    let mut batches = log::read(kafka, spans, 10_000);
    while let Some(batch) = batches.recv().await {
        for record in batch? {
            // Records that are no envelope are the projector's concern, not the import's.
            if let Some(id) = record
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_slice::<Id>(p).ok())
            {
                ids.insert(id.event_id);
            }
        }
    }
    Ok(ids)
}

/// What is left to append of a plan, given the event ids the log holds.
pub struct Remaining<'a> {
    pub events: Vec<&'a Envelope>,
    /// Events of the plan the log holds already.
    pub held: u64,
    /// Events to append that the log holds later events of the same conversation for (only an
    /// append lost in the middle of a run would do that): they go in after them.
    pub out_of_order: u64,
}

pub fn remaining<'a>(plan: &'a Plan, held: &HashSet<Uuid>) -> Remaining<'a> {
    let mut out = Remaining {
        events: Vec::new(),
        held: 0,
        out_of_order: 0,
    };
    for conversation in &plan.conversations {
        let last_held = conversation
            .events
            .iter()
            .rposition(|e| held.contains(&e.event_id));
        for (i, event) in conversation.events.iter().enumerate() {
            if held.contains(&event.event_id) {
                out.held += 1;
            } else {
                if last_held.is_some_and(|last| i < last) {
                    out.out_of_order += 1;
                }
                out.events.push(event);
            }
        }
    }
    out
}

/// Appends `events` through the writer, many in flight, in order within each conversation.
///
/// The appends are started in order and each is queued by librdkafka on its first poll (never
/// waiting for room: `in_flight` stays under the queue's size), and the idempotent producer
/// keeps a partition's records in the order they were queued.
pub async fn append(
    writer: &Writer,
    events: &[&Envelope],
    in_flight: usize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let mut appended = 0;
    let mut acks = futures_util::stream::iter(events.iter().map(|e| writer.append(e)))
        .buffered(in_flight.max(1));
    while let Some(ack) = acks.next().await {
        ack.context("append an imported event (run the import again: it appends nothing twice)")?;
        appended += 1;
        bar.inc(1);
    }
    Ok(appended)
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub old_conversations: u64,
    pub old_messages: u64,
    pub merged: Vec<(Uuid, Vec<Uuid>)>,
    pub planned: Counts,
    pub appended: Counts,
    pub held: u64,
    pub out_of_order: u64,
    pub refused: Vec<Refused>,
    pub elapsed: Duration,
}

impl Outcome {
    /// The counts as an operator reads them, and checks with `chatctl verify` and REST.
    pub fn render(&self, dry_run: bool) -> String {
        let mut out = String::new();
        for r in &self.refused {
            let _ = writeln!(out, "refused {} {}: {}", r.table, r.id, r.reason);
        }
        let refused = |table| self.refused.iter().filter(|r| r.table == table).count();
        let _ = writeln!(
            out,
            "old database: {} conversation(s), {} message(s); refused: {} conversation(s), {} message(s)",
            self.old_conversations,
            self.old_messages,
            refused("conversation"),
            refused("message"),
        );
        for (target, sources) in &self.merged {
            let names: Vec<String> = sources.iter().map(Uuid::to_string).collect();
            let _ = writeln!(
                out,
                "merged direct conversation {target} from {}",
                names.join(", ")
            );
        }
        let p = self.planned;
        let _ = writeln!(
            out,
            "imported data: {} conversation(s), {} message(s), {} read marker(s) ({} events)",
            p.conversations,
            p.messages,
            p.reads,
            p.events()
        );
        let a = self.appended;
        let _ = writeln!(
            out,
            "{}: {} event(s) ({} ConversationCreated, {} MessageSent, {} MessagesRead); already in the log: {}",
            if dry_run {
                "would append"
            } else {
                "appended now"
            },
            a.events(),
            a.conversations,
            a.messages,
            a.reads,
            self.held
        );
        if self.out_of_order > 0 {
            let _ = writeln!(
                out,
                "warning: {} event(s) were missing between events the log holds and were appended after them",
                self.out_of_order
            );
        }
        if !dry_run {
            let _ = writeln!(
                out,
                "done in {:.1} s; once the projector has caught up, `chatctl verify` counts the log's messages and GET /conversations lists each participant's conversations",
                self.elapsed.as_secs_f64()
            );
        }
        out
    }
}

/// Reads the old database, plans, and appends what the log does not hold yet (or, with
/// `--dry-run`, prints it).
pub async fn run(kafka: &KafkaArgs, args: &ImportArgs) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(args.from.expose_secret())
        .await
        .context("connect to the old database (--from)")?;
    let old = load(&pool).await?;
    pool.close().await;
    let plan = plan(&old);
    let held = event_ids_in_log(kafka)
        .await
        .context("read what the log holds already")?;
    let rest = remaining(&plan, &held);
    let mut outcome = Outcome {
        old_conversations: old.conversations.len() as u64,
        old_messages: old.messages.len() as u64,
        merged: plan
            .conversations
            .iter()
            .filter(|c| c.sources.len() > 1)
            .map(|c| (c.conversation_id, c.sources.clone()))
            .collect(),
        planned: plan.counts(),
        appended: Counts::of(rest.events.iter().copied()),
        held: rest.held,
        out_of_order: rest.out_of_order,
        refused: plan.refused.clone(),
        elapsed: Duration::ZERO,
    };
    if args.dry_run {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        for event in &rest.events {
            stdout.write_all(&event.encode())?;
            stdout.write_all(b"\n")?;
        }
    } else if !rest.events.is_empty() {
        let writer = Writer::new(kafka).context("create the writer")?;
        let bar = crate::replay::progress(rest.events.len() as u64, "import");
        append(&writer, &rest.events, args.in_flight as usize, &bar).await?;
        bar.finish();
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_620_000_000 + i64::from(second), 0).unwrap()
    }

    fn conversation(id: u128, by: &str, group: bool, users: &[&str]) -> OldConversation {
        OldConversation {
            id: Uuid::from_u128(id),
            created_by: by.into(),
            created_at: Some(at(id as u32)),
            title: group.then(|| "g".to_owned()),
            is_group: Some(group),
            participants: users.iter().map(|u| u.to_string()).collect(),
        }
    }

    fn message(id: u128, conversation: u128, second: u32, sender: &str) -> OldMessage {
        OldMessage {
            id: Uuid::from_u128(id),
            conversation_id: Some(Uuid::from_u128(conversation)),
            sent_at: at(second),
            sender_id: sender.into(),
            content: format!("m{id}"),
        }
    }

    fn types(plan: &ConversationPlan) -> Vec<String> {
        plan.events
            .iter()
            .map(|e| match &e.event {
                Event::ConversationCreated(_) => "created".to_owned(),
                Event::MessageSent(m) => format!("m{}", m.message_id.as_u128()),
                Event::MessagesRead(r) => format!("read:{}", r.user_id),
            })
            .collect()
    }

    #[test]
    fn duplicates_merge_in_time_order_with_reads_after_the_newest_read_message() {
        let old = OldData {
            conversations: vec![
                conversation(2, "bob", false, &["bob", "amy"]),
                conversation(1, "amy", false, &["amy", "bob"]),
            ],
            messages: vec![
                message(10, 1, 10, "amy"),
                message(30, 2, 10, "bob"), // the same instant: message id order
                message(20, 2, 20, "bob"),
                message(40, 1, 30, "amy"),
            ],
            reads: vec![OldRead {
                conversation_id: Uuid::from_u128(2),
                user_id: "amy".into(),
                sent_at: at(10),
                message_id: Uuid::from_u128(30),
            }],
        };
        let plan = plan(&old);
        assert!(plan.refused.is_empty());
        let [only] = plan.conversations.as_slice() else {
            panic!("one conversation: {plan:?}")
        };
        assert_eq!(
            only.conversation_id,
            events::direct_conversation_id("amy", "bob")
        );
        assert_eq!(only.sources, [Uuid::from_u128(1), Uuid::from_u128(2)]);
        // amy read m30 and sent m40 herself; bob never read anything but sent m20.
        assert_eq!(
            types(only),
            [
                "created", "m10", "m30", "m20", "read:bob", "m40", "read:amy"
            ]
        );
        let Event::ConversationCreated(created) = &only.events[0].event else {
            unreachable!()
        };
        assert_eq!(
            created.created_by, "amy",
            "the earliest duplicate's creator"
        );
        assert_eq!(only.events[0].accepted_at, Timestamp::from(at(1)));
        // Ids are derived: planning again gives the same events.
        let again = super::plan(&old);
        assert_eq!(again.conversations[0].events, only.events);
    }

    #[test]
    fn what_the_log_holds_is_skipped_and_the_rest_kept_in_order() {
        let old = OldData {
            conversations: vec![conversation(1, "amy", true, &["amy", "bob", "cy"])],
            messages: (0..5)
                .map(|i| message(10 + i, 1, i as u32, "bob"))
                .collect(),
            reads: Vec::new(),
        };
        let plan = plan(&old);
        let events: Vec<Uuid> = plan.events().map(|e| e.event_id).collect();
        let held: HashSet<Uuid> = events[..3].iter().copied().collect();
        let rest = remaining(&plan, &held);
        assert_eq!((rest.held, rest.out_of_order), (3, 0));
        assert_eq!(
            rest.events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            events[3..]
        );
        // A hole before a held event is filled, and said to be out of order.
        let held: HashSet<Uuid> = [events[0], events[2]].into();
        let rest = remaining(&plan, &held);
        assert_eq!((rest.held, rest.out_of_order), (2, 1));
    }

    #[test]
    fn rows_that_break_the_contract_are_refused_whole() {
        let old = OldData {
            conversations: vec![
                conversation(1, "amy", true, &["amy", "bob"]),
                conversation(2, "amy", false, &["amy", ""]),
                conversation(3, "amy", false, &["amy"]),
                conversation(4, "zed", true, &["amy", "bob"]),
            ],
            messages: vec![
                message(10, 1, 1, "amy"),
                message(11, 1, 2, "cy"),
                OldMessage {
                    content: "a\0b".into(),
                    ..message(12, 1, 3, "amy")
                },
                OldMessage {
                    content: "é".repeat(1001),
                    ..message(13, 1, 4, "amy")
                },
                message(14, 2, 1, "amy"),
                message(15, 9, 1, "amy"),
                OldMessage {
                    conversation_id: None,
                    ..message(16, 1, 1, "amy")
                },
            ],
            reads: Vec::new(),
        };
        let plan = plan(&old);
        let refused: Vec<(&str, u128)> = plan
            .refused
            .iter()
            .map(|r| (r.table, r.id.as_u128()))
            .collect();
        assert_eq!(
            refused,
            [
                ("conversation", 2),
                ("conversation", 3),
                ("conversation", 4),
                ("message", 11),
                ("message", 12),
                ("message", 13),
                ("message", 14),
                ("message", 15),
                ("message", 16),
            ]
        );
        assert_eq!(
            plan.counts(),
            Counts {
                conversations: 1,
                messages: 1,
                reads: 1
            }
        );
    }
}
