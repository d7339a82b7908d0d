//! The catalog of the projection: every table the migrations make, the key that identifies a
//! row of each, and the consumer positions stored beside the rows.
//!
//! Invariants:
//! - [`TABLES`] names every table of the projection, [`POSITIONS`] first: the order in which the
//!   projector's transaction locks them (it locks its positions before it writes a row), so
//!   anything that locks them all (the rebuild's switch) takes them in the same order and never
//!   deadlocks with it. A migration that adds a table adds it here, and nothing else has to
//!   change: rebuild, verify, the tests' digests and the benchmarks' floors read this list.
//! - [`ROWS`] are the tables folded from the log; [`POSITIONS`] says how far the fold got. Two
//!   projections of the same positions hold the same rows.
//! - Positions only move forward, and are written only inside the transaction that writes the
//!   rows they cover ([`lock_positions`], then [`advance_positions`]).

use std::collections::HashMap;

use sqlx::{PgConnection, PgExecutor};

/// A table of the projection and the key of its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// The columns that identify a row (its primary key), in sort order.
    pub key: &'static [&'static str],
    /// The same key as one text that sorts the same in Postgres (`COLLATE "C"`) and in Rust
    /// (bytes), so two copies of the table can be merged row by row in key order.
    pub sort_key: &'static str,
}

impl Table {
    /// The key columns as an SQL list, for `ORDER BY`.
    pub fn key_list(&self) -> String {
        self.key.join(", ")
    }
}

/// Where the projection stands in the log: the next offset to apply of each partition.
pub const POSITIONS: Table = Table {
    name: "projector_positions",
    key: &["topic", "partition"],
    sort_key: "topic || ' ' || lpad(partition::text, 10, '0')",
};

pub const CONVERSATIONS: Table = Table {
    name: "conversations",
    key: &["conversation_id"],
    sort_key: "conversation_id::text",
};

pub const PARTICIPANTS: Table = Table {
    name: "participants",
    key: &["conversation_id", "user_id"],
    sort_key: "conversation_id::text || ' ' || user_id",
};

/// `seq` is the message's offset in its partition: the conversation's log order.
pub const MESSAGES: Table = Table {
    name: "messages",
    key: &["conversation_id", "seq"],
    sort_key: "conversation_id::text || ' ' || lpad(seq::text, 20, '0')",
};

pub const READ_MARKERS: Table = Table {
    name: "read_markers",
    key: &["conversation_id", "user_id"],
    sort_key: "conversation_id::text || ' ' || user_id",
};

pub const IDEMPOTENCY_KEYS: Table = Table {
    name: "idempotency_keys",
    key: &["created_by", "idempotency_key"],
    sort_key: "created_by || ' ' || idempotency_key",
};

/// The tables folded from the log.
pub const ROWS: [Table; 5] = [
    CONVERSATIONS,
    PARTICIPANTS,
    MESSAGES,
    READ_MARKERS,
    IDEMPOTENCY_KEYS,
];

/// Every table of the projection, in the order the projector locks them.
pub const TABLES: [Table; 6] = [
    POSITIONS,
    CONVERSATIONS,
    PARTICIPANTS,
    MESSAGES,
    READ_MARKERS,
    IDEMPOTENCY_KEYS,
];

/// The stored positions of `topic` in the projection the connection's `search_path` names: the
/// next offset to apply of each partition seen.
pub async fn positions<'e>(
    db: impl PgExecutor<'e>,
    topic: &str,
) -> Result<HashMap<i32, i64>, sqlx::Error> {
    positions_in(db, None, topic).await
}

/// [`positions`] of the projection in `schema` (`None`: the `search_path`'s).
pub async fn positions_in<'e>(
    db: impl PgExecutor<'e>,
    schema: Option<&str>,
    topic: &str,
) -> Result<HashMap<i32, i64>, sqlx::Error> {
    let table = match schema {
        Some(schema) => format!("{schema}.{}", POSITIONS.name),
        None => POSITIONS.name.to_owned(),
    };
    let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "SELECT partition, next_offset FROM {table} WHERE topic = $1"
    ))
    .bind(topic)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The stored positions of some `partitions` of `topic` (a partition never applied is absent).
pub async fn positions_of<'e>(
    db: impl PgExecutor<'e>,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM projector_positions
          WHERE topic = $1 AND partition = ANY($2)",
    )
    .bind(topic)
    .bind(partitions)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Locks the stored positions of `partitions` for the rest of the transaction and returns
/// them (0 for a partition never seen): the next offset to apply of each.
pub async fn lock_positions(
    tx: &mut PgConnection,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO projector_positions (topic, partition, next_offset)
         SELECT $1, p, 0 FROM UNNEST($2::int[]) AS p
         ON CONFLICT DO NOTHING",
    )
    .bind(topic)
    .bind(partitions)
    .execute(&mut *tx)
    .await?;
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM projector_positions
          WHERE topic = $1 AND partition = ANY($2) FOR UPDATE",
    )
    .bind(topic)
    .bind(partitions)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Stores the next offset to apply of each partition, in the transaction that wrote the rows
/// up to it; positions only move forward.
pub async fn advance_positions(
    tx: &mut PgConnection,
    topic: &str,
    next: &HashMap<i32, i64>,
) -> Result<(), sqlx::Error> {
    let (partitions, offsets): (Vec<i32>, Vec<i64>) = next.iter().map(|(p, o)| (*p, *o)).unzip();
    sqlx::query(
        "UPDATE projector_positions s SET next_offset = v.next_offset
           FROM UNNEST($2::int[], $3::bigint[]) AS v(partition, next_offset)
          WHERE s.topic = $1 AND s.partition = v.partition AND s.next_offset < v.next_offset",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_once_positions_first() {
        assert_eq!(TABLES[0], POSITIONS);
        assert_eq!(&TABLES[1..], &ROWS);
        let mut names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TABLES.len());
    }

    /// Every table the migrations create is in the catalog, and nothing else is.
    #[test]
    fn the_catalog_names_what_the_migrations_create() {
        let mut created: Vec<String> = crate::MIGRATOR
            .iter()
            .flat_map(|m| {
                m.sql
                    .split("CREATE TABLE ")
                    .skip(1)
                    .filter_map(|rest| rest.split_whitespace().next())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        created.sort();
        let mut named: Vec<String> = TABLES.iter().map(|t| t.name.to_owned()).collect();
        named.sort();
        assert_eq!(created, named);
    }
}
