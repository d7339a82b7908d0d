//! Events and checks that several test files build on.

use std::time::Duration;

use events::{ConversationCreated, Envelope, Event, MessageSent, MessagesRead, Timestamp};
use futures_util::future::join_all;
use sqlx::PgPool;
use store::projection::{self, Table};
use uuid::Uuid;

use crate::{TestEnv, eventually};

/// `ConversationCreated` by `users[0]`; more than two users make a group titled "group".
pub fn created(conversation_id: Uuid, users: &[&str]) -> Envelope {
    let mut participants: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    participants.sort();
    let is_group = users.len() > 2;
    Envelope::new(Event::ConversationCreated(ConversationCreated {
        conversation_id,
        created_by: users[0].to_owned(),
        participants,
        is_group,
        title: if is_group {
            "group".into()
        } else {
            String::new()
        },
        idempotency_key: None,
    }))
}

/// Appends [`created`] for a fresh conversation of `users` and waits (10 s at most) until the
/// projection, and so the edge's participant look-up, knows it.
pub async fn projected_conversation(env: &TestEnv, users: &[&str]) -> Uuid {
    let id = Uuid::new_v4();
    env.writer()
        .append(&created(id, users))
        .await
        .expect("append ConversationCreated");
    let pool = env.pool().await;
    wait_for_count(
        &pool,
        &format!("SELECT count(*) FROM participants WHERE conversation_id = '{id}'"),
        users.len() as i64,
        Duration::from_secs(10),
    )
    .await;
    id
}

/// `MessageSent` now, with a fresh message id and `tmp-<content>` as its temp id.
pub fn message(conversation_id: Uuid, sender: &str, content: &str) -> Envelope {
    Envelope::new(Event::MessageSent(MessageSent {
        conversation_id,
        message_id: Uuid::new_v4(),
        sender_id: sender.to_owned(),
        content: content.to_owned(),
        temp_message_id: format!("tmp-{content}"),
        sent_at: Timestamp::now(),
    }))
}

/// `MessagesRead` by `user`.
pub fn read(conversation_id: Uuid, user: &str) -> Envelope {
    Envelope::new(Event::MessagesRead(MessagesRead {
        conversation_id,
        user_id: user.to_owned(),
    }))
}

/// Appends every event concurrently through the test's writer; panics on any failure.
pub async fn append_all(env: &TestEnv, events: &[Envelope]) {
    let writer = env.writer();
    for result in join_all(events.iter().map(|e| writer.append(e))).await {
        result.expect("append");
    }
}

/// Waits until `query` (a single bigint) reaches `want`, and asserts it does not overshoot.
pub async fn wait_for_count(pool: &PgPool, query: &str, want: i64, patience: Duration) {
    let what = format!("{query} reaches {want}");
    eventually(&what, patience, || async {
        let got: i64 = sqlx::query_scalar(query).fetch_one(pool).await.unwrap();
        if got >= want {
            assert_eq!(got, want, "{query}");
            Ok(())
        } else {
            Err(format!("{got} of {want}"))
        }
    })
    .await;
}

/// The tables folded from the log, as the projection's catalog names them.
pub const PROJECTION_TABLES: [Table; 5] = projection::ROWS;

/// The stored positions of every partition summed: how many records of the log the projection
/// has applied (or set aside).
pub const POSITIONS_TOTAL: &str =
    "SELECT coalesce(sum(next_offset), 0)::bigint FROM projector_positions";

/// A digest of each table (row count and md5 of its rows in key order), to compare two
/// projections row for row.
pub async fn table_digest(pool: &PgPool, tables: &[Table]) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for table in tables {
        let (count, digest): (i64, Option<String>) = sqlx::query_as(&format!(
            "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY {order})) FROM {name} t",
            order = table.key_list(),
            name = table.name
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push((table.name.to_string(), count, digest.unwrap_or_default()));
    }
    out
}
