//! The Postgres projection of the event log: its schema, embedded from `migrations/`, the
//! catalog of its tables and positions ([`projection`]), and the queries that read it. The
//! projector is the only writer of these tables.

pub mod projection;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::Timestamp;
use quick_cache::sync::Cache;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// The projection's schema, applied by the projector at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The development database of `scripts/stack`: the one default every binary, bench and test uses.
pub const DEFAULT_DATABASE_URL: &str = "postgres://chat:chat@127.0.0.1:5432/chat";

/// Where the projection lives; flattened into every service's configuration.
#[derive(clap::Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// Postgres connection URL.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_default_value = true,
        hide_env_values = true
    )]
    pub database_url: SecretString,
    /// Connections in this process's pool.
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,
}

impl DatabaseArgs {
    /// A pool that connects lazily: a database that is down makes the service not-ready and
    /// its requests fail, it does not stop the process from starting.
    pub fn pool(&self) -> Result<PgPool, sqlx::Error> {
        let options: PgConnectOptions = self.database_url.expose_secret().parse()?;
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options))
    }
}

/// Applies the migrations, waiting for the database to answer (bounded by `patience`).
pub async fn migrate(pool: &PgPool, patience: Duration) -> Result<(), sqlx::migrate::MigrateError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e))
                if is_unavailable(&e) && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %e, "database not answering yet; retrying migrations");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
    )
}

/// Whether the database answers (readiness).
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

/// One row of a user's conversation list: the conversation and its latest message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationSummary {
    pub conversation_id: Uuid,
    pub title: String,
    pub is_group: bool,
    pub sent_at: Timestamp,
    pub latest_content: String,
    pub sender_id: String,
    /// Some participant other than the caller.
    pub participant_id: Option<String>,
    /// Whether the caller has read the latest message (their own messages count as read).
    pub is_read: bool,
}

/// A conversation as one of its participants sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    pub conversation_id: Uuid,
    pub title: String,
    pub is_group: bool,
    /// Some participant other than the caller.
    pub participant_id: Option<String>,
}

/// A message of a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub sent_at: Timestamp,
    pub sender_id: String,
    pub content: String,
}

/// Which way a history page is listed; the page itself is always "the newest after skipping".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// A page of history: the `limit` newest messages after skipping the `offset` newest.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
    pub order: Order,
}

/// Reads of the projection, with the participants of each conversation cached: they never
/// change after the conversation is created, so a cached answer is never stale.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    participants: Arc<Cache<Uuid, Arc<[String]>>>,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            participants: Arc::new(Cache::new(100_000)),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The participants of a conversation, sorted, or `None` if the projection does not hold it
    /// (yet). Only known conversations are cached.
    pub async fn participants(
        &self,
        conversation_id: Uuid,
    ) -> Result<Option<Arc<[String]>>, sqlx::Error> {
        if let Some(found) = self.participants.get(&conversation_id) {
            return Ok(Some(found));
        }
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM participants WHERE conversation_id = $1 ORDER BY user_id",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await?;
        if users.is_empty() {
            return Ok(None);
        }
        let users: Arc<[String]> = users.into();
        self.participants.insert(conversation_id, users.clone());
        Ok(Some(users))
    }

    /// Whether the projection holds the conversation.
    pub async fn conversation_exists(&self, conversation_id: Uuid) -> Result<bool, sqlx::Error> {
        Ok(self.participants(conversation_id).await?.is_some())
    }

    /// The conversation `creator` created under an `Idempotency-Key`, if the projection holds
    /// one (the first creation in the log under that key).
    pub async fn keyed_conversation(
        &self,
        creator: &str,
        idempotency_key: &str,
    ) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT conversation_id FROM idempotency_keys
              WHERE created_by = $1 AND idempotency_key = $2",
        )
        .bind(creator)
        .bind(idempotency_key)
        .fetch_optional(&self.pool)
        .await
    }

    /// A conversation's header as `viewer` sees it (the caller checks participation).
    pub async fn conversation(
        &self,
        conversation_id: Uuid,
        viewer: &str,
    ) -> Result<Option<ConversationView>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT c.conversation_id, c.title, c.is_group,
                    (SELECT o.user_id FROM participants o
                      WHERE o.conversation_id = c.conversation_id AND o.user_id <> $2
                      ORDER BY o.user_id LIMIT 1) AS participant_id
               FROM conversations c WHERE c.conversation_id = $1",
        )
        .bind(conversation_id)
        .bind(viewer)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ConversationView {
                conversation_id: row.try_get("conversation_id")?,
                title: row.try_get("title")?,
                is_group: row.try_get("is_group")?,
                participant_id: row.try_get("participant_id")?,
            })
        })
        .transpose()
    }

    /// The conversations of `user` that have at least one message, newest latest message
    /// first, optionally only the read (`Some(true)`) or unread (`Some(false)`) ones.
    ///
    /// One indexed query: `participants_by_user` finds the user's conversations, whose rows
    /// carry their latest message; the read marker is one primary-key probe.
    pub async fn conversations_of(
        &self,
        user: &str,
        is_read: Option<bool>,
    ) -> Result<Vec<ConversationSummary>, sqlx::Error> {
        let rows = sqlx::query(CONVERSATIONS_OF)
            .bind(user)
            .bind(is_read)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(ConversationSummary {
                    conversation_id: row.try_get("conversation_id")?,
                    title: row.try_get("title")?,
                    is_group: row.try_get("is_group")?,
                    sent_at: row.try_get::<DateTime<Utc>, _>("latest_sent_at")?.into(),
                    latest_content: row.try_get("latest_content")?,
                    sender_id: row.try_get("latest_sender_id")?,
                    participant_id: row.try_get("participant_id")?,
                    is_read: row.try_get("is_read")?,
                })
            })
            .collect()
    }

    /// One page of a conversation's history, in log order.
    pub async fn messages(
        &self,
        conversation_id: Uuid,
        page: Page,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT message_id, conversation_id, sent_at, sender_id, content
               FROM messages WHERE conversation_id = $1
              ORDER BY seq DESC LIMIT $2 OFFSET $3",
        )
        .bind(conversation_id)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        let mut messages = rows
            .into_iter()
            .map(|row| {
                Ok(Message {
                    message_id: row.try_get("message_id")?,
                    conversation_id: row.try_get("conversation_id")?,
                    sent_at: row.try_get::<DateTime<Utc>, _>("sent_at")?.into(),
                    sender_id: row.try_get("sender_id")?,
                    content: row.try_get("content")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        if page.order == Order::Asc {
            messages.reverse();
        }
        Ok(messages)
    }
}

/// The conversation list (see [`Store::conversations_of`]). `$1` the user, `$2` the optional
/// read filter. Public so that tests and docs can show its plan.
pub const CONVERSATIONS_OF: &str = "
    SELECT c.conversation_id, c.title, c.is_group, c.latest_sent_at, c.latest_content,
           c.latest_sender_id,
           (SELECT o.user_id FROM participants o
             WHERE o.conversation_id = c.conversation_id AND o.user_id <> $1
             ORDER BY o.user_id LIMIT 1) AS participant_id,
           (c.latest_sender_id = $1 OR coalesce(r.read_seq >= c.latest_seq, false)) AS is_read
      FROM participants p
      JOIN conversations c ON c.conversation_id = p.conversation_id
      LEFT JOIN read_markers r ON r.conversation_id = p.conversation_id AND r.user_id = p.user_id
     WHERE p.user_id = $1
       AND c.latest_seq IS NOT NULL
       AND ($2::boolean IS NULL
            OR (c.latest_sender_id = $1 OR coalesce(r.read_seq >= c.latest_seq, false)) = $2)
     ORDER BY c.latest_sent_at DESC, c.conversation_id";
