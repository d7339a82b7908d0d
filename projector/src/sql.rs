//! The SQL of the fold: a batch of events pivoted into one column array per table field, and
//! the set-based statements (`UNNEST`) that write it into the projection.
//!
//! Every statement is idempotent (inserts ignore rows that exist, the latest message only moves
//! forward, read markers only grow), and the caller ([`crate::transaction`]) filters out
//! records below the stored positions in the same transaction: applying a batch twice changes
//! nothing.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use events::{Envelope, Event};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

/// An event with its place in the log.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub partition: i32,
    pub offset: i64,
    pub envelope: Envelope,
}

/// A batch, pivoted into one column array per table field, ready for `UNNEST`. Its text
/// borrows from the events.
#[derive(Default, Debug)]
pub struct Batch<'a> {
    conversations: ConversationColumns<'a>,
    participants: (Vec<Uuid>, Vec<&'a str>),
    /// (creator, Idempotency-Key, conversation) of conversations created under a key.
    keys: (Vec<&'a str>, Vec<&'a str>, Vec<Uuid>),
    messages: MessageColumns<'a>,
    message_ids: HashSet<Uuid>,
    /// Index in `messages` of each conversation's last message of the batch (log order).
    latest: HashMap<Uuid, usize>,
    /// Latest read event per (conversation, user).
    reads: HashMap<(Uuid, &'a str), Read>,
    /// Events per type name, for metrics.
    pub counts: HashMap<&'static str, u64>,
}

/// A `MessagesRead`: it covers every message of its conversation before it in the log.
#[derive(Debug, Clone, Copy)]
struct Read {
    /// The read event's offset: the messages it covers are below it.
    at: i64,
    /// The conversation's last message before the read in the batch itself, if any: then the
    /// read covers up to it, without a look-up (unless the message was there already and so
    /// not inserted now, see [`Batch::apply`]).
    last_in_batch: Option<i64>,
}

#[derive(Default, Debug)]
struct ConversationColumns<'a> {
    id: Vec<Uuid>,
    title: Vec<&'a str>,
    is_group: Vec<bool>,
    created_by: Vec<&'a str>,
    created_at: Vec<DateTime<Utc>>,
}

#[derive(Default, Debug)]
struct MessageColumns<'a> {
    conversation_id: Vec<Uuid>,
    seq: Vec<i64>,
    message_id: Vec<Uuid>,
    sender_id: Vec<&'a str>,
    content: Vec<&'a str>,
    sent_at: Vec<DateTime<Utc>>,
    temp_message_id: Vec<&'a str>,
}

impl MessageColumns<'_> {
    fn with_capacity(n: usize) -> Self {
        Self {
            conversation_id: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            message_id: Vec::with_capacity(n),
            sender_id: Vec::with_capacity(n),
            content: Vec::with_capacity(n),
            sent_at: Vec::with_capacity(n),
            temp_message_id: Vec::with_capacity(n),
        }
    }
}

impl<'a> Batch<'a> {
    /// Pivots events, which must be in log order within each partition.
    pub fn new(events: impl IntoIterator<Item = &'a Positioned>) -> Self {
        let events = events.into_iter();
        // Most events of a batch are messages: room for all of them up front, rather than
        // growing (and copying) each column again and again.
        let expected = events.size_hint().0;
        let mut batch = Batch {
            messages: MessageColumns::with_capacity(expected),
            message_ids: HashSet::with_capacity(expected),
            ..Batch::default()
        };
        for positioned in events {
            let envelope = &positioned.envelope;
            *batch.counts.entry(envelope.event.type_name()).or_default() += 1;
            match &envelope.event {
                Event::ConversationCreated(e) => {
                    let c = &mut batch.conversations;
                    c.id.push(e.conversation_id);
                    c.title.push(&e.title);
                    c.is_group.push(e.is_group);
                    c.created_by.push(&e.created_by);
                    c.created_at.push(envelope.accepted_at.as_datetime());
                    for user in &e.participants {
                        batch.participants.0.push(e.conversation_id);
                        batch.participants.1.push(user);
                    }
                    if let Some(key) = &e.idempotency_key {
                        batch.keys.0.push(&e.created_by);
                        batch.keys.1.push(key);
                        batch.keys.2.push(e.conversation_id);
                    }
                }
                Event::MessageSent(e) => {
                    // The first of the same message twice in a batch is the one kept.
                    if !batch.message_ids.insert(e.message_id) {
                        continue;
                    }
                    let m = &mut batch.messages;
                    let index = m.seq.len();
                    let latest = batch.latest.entry(e.conversation_id).or_insert(index);
                    if m.seq
                        .get(*latest)
                        .is_some_and(|seq| *seq < positioned.offset)
                    {
                        *latest = index;
                    }
                    m.conversation_id.push(e.conversation_id);
                    m.seq.push(positioned.offset);
                    m.message_id.push(e.message_id);
                    m.sender_id.push(&e.sender_id);
                    m.content.push(&e.content);
                    m.sent_at.push(e.sent_at.as_datetime());
                    m.temp_message_id.push(&e.temp_message_id);
                }
                Event::MessagesRead(e) => {
                    let read = Read {
                        at: positioned.offset,
                        last_in_batch: batch
                            .latest
                            .get(&e.conversation_id)
                            .map(|&i| batch.messages.seq[i]),
                    };
                    batch
                        .reads
                        .entry((e.conversation_id, e.user_id.as_str()))
                        .and_modify(|latest| {
                            if latest.at < read.at {
                                *latest = read;
                            }
                        })
                        .or_insert(read);
                }
            }
        }
        batch
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Applies the batch inside the caller's transaction.
    pub async fn apply(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let c = &self.conversations;
        if !c.id.is_empty() {
            // A direct conversation created twice (both users at once) has one id: the first
            // creation in the log wins, the second changes nothing.
            sqlx::query(
                "INSERT INTO conversations (conversation_id, title, is_group, created_by, created_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bool[], $4::text[], $5::timestamptz[])
                 ON CONFLICT (conversation_id) DO NOTHING",
            )
            .bind(&c.id)
            .bind(&c.title)
            .bind(&c.is_group)
            .bind(&c.created_by)
            .bind(&c.created_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO participants (conversation_id, user_id)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.participants.0)
            .bind(&self.participants.1)
            .execute(&mut *tx)
            .await?;
        }
        if !self.keys.0.is_empty() {
            // The first creation under a key wins (a batch may hold the same key twice: the
            // first in log order is kept).
            sqlx::query(
                "INSERT INTO idempotency_keys (created_by, idempotency_key, conversation_id)
                 SELECT DISTINCT ON (created_by, idempotency_key) created_by, idempotency_key, conversation_id
                   FROM UNNEST($1::text[], $2::text[], $3::uuid[]) WITH ORDINALITY
                        AS k(created_by, idempotency_key, conversation_id, n)
                  ORDER BY created_by, idempotency_key, n
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.keys.0)
            .bind(&self.keys.1)
            .bind(&self.keys.2)
            .execute(&mut *tx)
            .await?;
        }

        let m = &self.messages;
        let mut inserted = 0;
        if !m.seq.is_empty() {
            inserted = self.insert_messages(tx).await?;
            // Only messages inserted now move their conversation's latest message, and only
            // forward in log order.
            if inserted == m.seq.len() {
                // All of them (the usual case): each conversation's last message of the batch.
                let mut l = MessageColumns::default();
                for &i in self.latest.values() {
                    l.conversation_id.push(m.conversation_id[i]);
                    l.seq.push(m.seq[i]);
                    l.message_id.push(m.message_id[i]);
                    l.sender_id.push(m.sender_id[i]);
                    l.content.push(m.content[i]);
                    l.sent_at.push(m.sent_at[i]);
                }
                sqlx::query(
                    "UPDATE conversations c
                        SET latest_seq = l.seq, latest_message_id = l.message_id,
                            latest_sender_id = l.sender_id, latest_content = l.content,
                            latest_sent_at = l.sent_at
                       FROM UNNEST($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[])
                            AS l(conversation_id, seq, message_id, sender_id, content, sent_at)
                      WHERE c.conversation_id = l.conversation_id
                        AND (c.latest_seq IS NULL OR c.latest_seq < l.seq)",
                )
                .bind(&l.conversation_id)
                .bind(&l.seq)
                .bind(&l.message_id)
                .bind(&l.sender_id)
                .bind(&l.content)
                .bind(&l.sent_at)
                .execute(&mut *tx)
                .await?;
            } else {
                // Some were there already: the latest of those at this batch's positions.
                sqlx::query(
                    "UPDATE conversations c
                        SET latest_seq = l.seq, latest_message_id = l.message_id,
                            latest_sender_id = l.sender_id, latest_content = l.content,
                            latest_sent_at = l.sent_at
                       FROM (SELECT DISTINCT ON (m.conversation_id) m.*
                               FROM UNNEST($1::uuid[], $2::bigint[], $3::uuid[]) AS b(conversation_id, seq, message_id)
                               JOIN messages m USING (conversation_id, seq, message_id)
                              ORDER BY m.conversation_id, m.seq DESC) l
                      WHERE c.conversation_id = l.conversation_id
                        AND (c.latest_seq IS NULL OR c.latest_seq < l.seq)",
                )
                .bind(&m.conversation_id)
                .bind(&m.seq)
                .bind(&m.message_id)
                .execute(&mut *tx)
                .await?;
            }
        }

        // A read whose conversation has a message before it in the batch covers up to that one,
        // if every message of the batch was inserted now (one that was there already is not at
        // this position); the others look up the last message before them.
        let all_inserted = inserted == m.seq.len();
        let mut known = ReadColumns::default();
        let mut looked_up = ReadColumns::default();
        for ((conversation_id, user), read) in &self.reads {
            let (columns, seq) = match read.last_in_batch {
                Some(seq) if all_inserted => (&mut known, seq),
                _ => (&mut looked_up, read.at),
            };
            columns.conversation_id.push(*conversation_id);
            columns.user_id.push(*user);
            columns.seq.push(seq);
        }
        // Markers never move back.
        if !known.seq.is_empty() {
            sqlx::query(
                "INSERT INTO read_markers (conversation_id, user_id, read_seq)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[])
                 ON CONFLICT (conversation_id, user_id)
                 DO UPDATE SET read_seq = greatest(read_markers.read_seq, excluded.read_seq)",
            )
            .bind(&known.conversation_id)
            .bind(&known.user_id)
            .bind(&known.seq)
            .execute(&mut *tx)
            .await?;
        }
        if !looked_up.seq.is_empty() {
            sqlx::query(
                "INSERT INTO read_markers (conversation_id, user_id, read_seq)
                 SELECT r.conversation_id, r.user_id, m.seq
                   FROM UNNEST($1::uuid[], $2::text[], $3::bigint[]) AS r(conversation_id, user_id, at)
                   CROSS JOIN LATERAL (
                       SELECT max(seq) AS seq FROM messages
                        WHERE conversation_id = r.conversation_id AND seq < r.at) m
                  WHERE m.seq IS NOT NULL
                 ON CONFLICT (conversation_id, user_id)
                 DO UPDATE SET read_seq = greatest(read_markers.read_seq, excluded.read_seq)",
            )
            .bind(&looked_up.conversation_id)
            .bind(&looked_up.user_id)
            .bind(&looked_up.seq)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Inserts the batch's messages that are not there yet; returns how many.
    ///
    /// A message already there (a replay, or the same message appended twice) is left alone.
    /// NOT EXISTS rather than ON CONFLICT: a third cheaper in bulk, and a key conflict it misses
    /// (another conversation's message id) is a data error that the folder sets aside.
    async fn insert_messages(&self, tx: &mut PgConnection) -> Result<usize, sqlx::Error> {
        // `unnest` in the select list streams the arrays; `UNNEST(…)` in FROM would copy each
        // into a tuplestore first, which spills to disk for a replay's batch.
        if self.messages.seq.len() >= BULK_MESSAGES {
            // Usually none of them is there: insert them all without looking (looking is an
            // index probe per message, a sixth of the insert's cost), in a savepoint. If one
            // is there, the unique index refuses the insert, and it is done again, looking.
            sqlx::query("SAVEPOINT messages").execute(&mut *tx).await?;
            let all = self.bind_messages(sqlx::query(
                "INSERT INTO messages (conversation_id, seq, message_id, sender_id, content, sent_at, temp_message_id)
                 SELECT unnest($1::uuid[]), unnest($2::bigint[]), unnest($3::uuid[]), unnest($4::text[]),
                        unnest($5::text[]), unnest($6::timestamptz[]), unnest($7::text[])",
            ));
            match all.execute(&mut *tx).await {
                Ok(done) => {
                    sqlx::query("RELEASE SAVEPOINT messages")
                        .execute(&mut *tx)
                        .await?;
                    return Ok(done.rows_affected() as usize);
                }
                Err(e) if is_unique_violation(&e) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT messages")
                        .execute(&mut *tx)
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
        // OFFSET 0 keeps the look-up an index probe per message: pulled up into an anti-join,
        // the planner may hash the whole table instead, which grows with the log.
        let new = self.bind_messages(sqlx::query(
            "INSERT INTO messages (conversation_id, seq, message_id, sender_id, content, sent_at, temp_message_id)
             SELECT * FROM (
                 SELECT unnest($1::uuid[]), unnest($2::bigint[]), unnest($3::uuid[]) AS message_id,
                        unnest($4::text[]), unnest($5::text[]), unnest($6::timestamptz[]), unnest($7::text[])
             ) u
             WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.message_id = u.message_id OFFSET 0)",
        ));
        Ok(new.execute(&mut *tx).await?.rows_affected() as usize)
    }

    fn bind_messages<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        let m = &self.messages;
        query
            .bind(&m.conversation_id)
            .bind(&m.seq)
            .bind(&m.message_id)
            .bind(&m.sender_id)
            .bind(&m.content)
            .bind(&m.sent_at)
            .bind(&m.temp_message_id)
    }
}

/// Messages in a batch from which inserting them all at once, in a savepoint, pays off (see
/// [`Batch::insert_messages`]): below it, the savepoint's two round trips cost more than the
/// probes they save.
pub const BULK_MESSAGES: usize = 500;

/// Read markers to write, in columns.
#[derive(Default)]
struct ReadColumns<'a> {
    conversation_id: Vec<Uuid>,
    user_id: Vec<&'a str>,
    /// The last message read, or the read's offset when that is to be looked up.
    seq: Vec<i64>,
}

/// Whether the database refused a row because its key is there already (SQLSTATE 23505).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
