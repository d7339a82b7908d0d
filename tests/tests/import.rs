//! `chatctl import-pagenow` against a real Postgres database in the old PageNow schema
//! (tests/fixtures/pagenow_old_schema.sql): the projection answers the old data through the
//! contract, bad rows are refused and listed, and no run appends anything twice.

use std::time::Duration;

use chat_tests::fixtures::{POSITIONS_TOTAL, wait_for_count};
use chat_tests::{RestClient, TestEnv, binary_path, eventually_every};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const SCHEMA: &str = include_str!("../fixtures/pagenow_old_schema.sql");

/// The old direct conversation ann made with ben, and the duplicate ben made at the same time.
const DIRECT_1: &str = "d1000000-0000-4000-8000-000000000001";
const DIRECT_2: &str = "d2000000-0000-4000-8000-000000000002";
const GROUP: &str = "9a000000-0000-4000-8000-00000000000a";
/// A direct conversation with an empty user id: refused with its messages.
const BROKEN: &str = "bb000000-0000-4000-8000-00000000000b";
const NOWHERE: &str = "ee000000-0000-4000-8000-00000000000e";

fn m(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Creates the old database next to the test's own and seeds it.
async fn old_database(env: &TestEnv) -> (String, PgPool) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&env.database_url)
        .await
        .unwrap();
    let name = format!("{}_old", env.name);
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = format!(
        "{}/{name}",
        env.database_url.rsplit_once('/').expect("a database url").0
    );
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
    (url, pool)
}

async fn seed(pool: &PgPool) {
    let mut script = String::new();
    let conversation = |id: &str, by: &str, at: &str, title: &str, group: bool, users: &[&str]| {
        let mut s = format!(
            "INSERT INTO conversation_table VALUES ('{id}', '{by}', '{at}', {title}, {group});\n"
        );
        for u in users {
            s += &format!("INSERT INTO participant_table VALUES ('{u}', '{id}');\n");
        }
        s
    };
    script += &conversation(
        DIRECT_1,
        "ann",
        "2021-05-01 10:00:00",
        "NULL",
        false,
        &["ann", "ben"],
    );
    // The old race: ben's check ran before ann's insert, so the pair has two conversations.
    script += &conversation(
        DIRECT_2,
        "ben",
        "2021-05-01 10:00:00.4",
        "''",
        false,
        &["ben", "ann"],
    );
    script += &conversation(
        GROUP,
        "ann",
        "2021-06-01 09:00:00",
        "'Trip'",
        true,
        &["ann", "ben", "cat"],
    );
    script += &conversation(
        BROKEN,
        "ann",
        "2021-07-01 09:00:00",
        "NULL",
        false,
        &["ann", ""],
    );
    // message(id, conversation, sent_at, sender, content, readers: (user, is_read)…)
    let message = |id: &str,
                   c: &str,
                   at: &str,
                   sender: &str,
                   content: &str,
                   reads: &[(&str, bool)]| {
        let mut s = format!(
            "INSERT INTO message_table VALUES ('{id}', '{c}', '{at}', '{sender}', '{content}');\n"
        );
        for (u, read) in reads {
            s += &format!("INSERT INTO message_is_read_table VALUES ('{id}', '{u}', {read});\n");
        }
        s
    };
    // The direct pair: messages in both duplicates, interleaved in time. ben read everything up
    // to m3; ann read m2 and not m4.
    script += &message(
        &m(1),
        DIRECT_1,
        "2021-05-01 10:01:00.000+00",
        "ann",
        "hi ben",
        &[("ann", true), ("ben", true)],
    );
    script += &message(
        &m(2),
        DIRECT_2,
        "2021-05-01 10:02:00.000+00",
        "ben",
        "hi ann",
        &[("ben", true), ("ann", true)],
    );
    script += &message(
        &m(3),
        DIRECT_1,
        "2021-05-01 10:03:00.000+00",
        "ann",
        "how are you?",
        &[("ann", true), ("ben", true)],
    );
    script += &message(
        &m(4),
        DIRECT_2,
        "2021-05-01 10:04:00.987654+00",
        "ben",
        "fine",
        &[("ben", true), ("ann", false)],
    );
    // The group: five messages at one instant, inserted out of id order; cat read the first three.
    for (n, sender) in [
        (0x13, "ben"),
        (0x11, "ann"),
        (0x15, "cat"),
        (0x12, "cat"),
        (0x14, "ben"),
    ] {
        let cat_read = n <= 0x13 || sender == "cat";
        script += &message(
            &m(n),
            GROUP,
            "2021-06-01 09:30:00.123456+00",
            sender,
            &format!("g{n:x}"),
            &[("ann", true), ("ben", true), ("cat", cat_read)],
        );
    }
    script += &message(
        &m(0x16),
        GROUP,
        "2021-06-01 09:31:00+00",
        "ann",
        "last",
        &[("ann", true), ("ben", true), ("cat", false)],
    );
    // Bad rows.
    script += &message(&m(0x21), GROUP, "2021-06-01 09:32:00+00", "ben", "   ", &[]);
    script += &message(
        &m(0x22),
        GROUP,
        "2021-06-01 09:33:00+00",
        "dan",
        "not a participant",
        &[],
    );
    script += &message(
        &m(0x23),
        GROUP,
        "2021-06-01 09:34:00+00",
        "",
        "empty sender",
        &[],
    );
    script += &message(
        &m(0x24),
        BROKEN,
        "2021-07-01 09:01:00+00",
        "ann",
        "in a refused conversation",
        &[],
    );
    sqlx::raw_sql(&script).execute(pool).await.unwrap();
    // Rows the old constraints should have stopped, as a damaged copy may still hold them:
    // a message of a conversation that does not exist, content over 1,000 characters.
    sqlx::raw_sql(&format!(
        "ALTER TABLE message_table DROP CONSTRAINT message_table_conversation_id_fkey;
         INSERT INTO message_table VALUES ('{}', '{NOWHERE}', '2021-06-01 09:35:00+00', 'ann', 'lost');
         ALTER TABLE message_table ALTER COLUMN content TYPE text;
         INSERT INTO message_table VALUES ('{}', '{GROUP}', '2021-06-01 09:36:00+00', 'ann', '{}');",
        m(0x25),
        m(0x26),
        "x".repeat(1001)
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// Every event id of the log, in no particular order.
async fn log_event_ids(env: &TestEnv) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = ops::import::event_ids_in_log(&env.kafka_args())
        .await
        .unwrap()
        .into_iter()
        .collect();
    ids.sort();
    ids
}

/// Records in the log (duplicates included).
async fn log_records(env: &TestEnv) -> i64 {
    let consumer = ops::log::reader(&env.brokers).unwrap();
    ops::log::watermarks(&consumer, &env.topic)
        .unwrap()
        .values()
        .map(|(low, high)| high - low)
        .sum()
}

fn ids(page: &Value) -> Vec<String> {
    page.as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_old_database_is_imported_once_and_answers_through_the_contract() {
    let env = TestEnv::new().await;
    let (url, old) = old_database(&env).await;
    seed(&old).await;

    // Planned: 2 conversations (the pair merged), 4 + 6 messages, and the reads.
    let plan = ops::import::plan(&ops::import::load(&old).await.unwrap());
    let counts = plan.counts();
    assert_eq!((counts.conversations, counts.messages), (2, 10));

    // --dry-run prints the events and appends nothing.
    let (code, out, err) = env
        .chatctl(&["import-pagenow", "--from", &url, "--dry-run"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count() as u64, counts.events(), "{out}");
    assert!(out.lines().all(|l| l.starts_with('{')), "{out}");
    assert!(
        err.contains(&format!("would append: {} event(s)", counts.events())),
        "{err}"
    );
    assert_eq!(log_records(&env).await, 0);

    // An interrupted run: each conversation's events got into the log up to some point.
    let writer = env.writer();
    let mut prefix = 0;
    for (i, conversation) in plan.conversations.iter().enumerate() {
        let cut = conversation.events.len() * (i + 1) / (plan.conversations.len() + 1);
        for event in &conversation.events[..cut] {
            writer.append(event).await.unwrap();
            prefix += 1;
        }
    }
    assert!(prefix > 0);

    let (code, out, err) = env.chatctl(&["import-pagenow", "--from", &url]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "appended now: {} event(s)",
            counts.events() - prefix
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("already in the log: {prefix}")),
        "{out}"
    );
    // Every refused row, by id, with the reason; the counts of both tables.
    for (id, reason) in [
        (m(0x21), "all whitespace"),
        (m(0x22), "not a participant"),
        (m(0x23), "not a participant"),
        (m(0x24), "refused"),
        (m(0x25), "unknown conversation"),
        (m(0x26), "longer than 1000"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("refused message {id}")) && l.contains(reason)),
            "{id} {reason}: {out}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("refused conversation {BROKEN}"))),
        "{out}"
    );
    assert!(
        out.contains("refused: 1 conversation(s), 6 message(s)"),
        "{out}"
    );
    assert!(
        out.contains("imported data: 2 conversation(s), 10 message(s)"),
        "{out}"
    );
    let direct = events::direct_conversation_id("ann", "ben");
    assert!(
        out.contains(&format!(
            "merged direct conversation {direct} from {DIRECT_1}, {DIRECT_2}"
        )),
        "{out}"
    );
    let after_import = log_event_ids(&env).await;
    assert_eq!(after_import.len() as u64, counts.events());
    assert_eq!(log_records(&env).await as u64, counts.events());

    // A second full run appends nothing.
    let (code, out, err) = env.chatctl(&["import-pagenow", "--from", &url]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("appended now: 0 event(s)"), "{out}");
    assert_eq!(log_records(&env).await as u64, counts.events());

    // The projection, through verify and REST.
    let _projector = env.spawn_projector().await;
    let api = env.spawn_api().await;
    let pool = env.pool().await;
    wait_for_count(
        &pool,
        POSITIONS_TOTAL,
        counts.events() as i64,
        Duration::from_secs(30),
    )
    .await;
    let (code, out, err) = env.chatctl(&["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the log's 10 message(s)"), "{out}");
    let projected: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(projected, 10);

    let client = |user: &str| RestClient::new(api.url(""), env.token(user));
    let (ann, ben, cat) = (client("ann"), client("ben"), client("cat"));

    // The pair's duplicates are one conversation at the deterministic id, messages in time order.
    let (status, body) = ann.get("/conversation/direct/ben").await;
    assert_eq!(status, 200);
    assert_eq!(body["conversationId"], direct.to_string());
    let (_, page) = ben
        .get(&format!("/conversations/{direct}/messages?order=asc"))
        .await;
    assert_eq!(ids(&page), [m(1), m(2), m(3), m(4)]);
    assert_eq!(page[3]["sentAt"], "2021-05-01T10:04:00.987Z");
    assert_eq!(page[0]["content"], "hi ben");

    // The group keeps its id; equal timestamps are in message id order; milliseconds kept.
    let (status, group) = cat.get(&format!("/conversations/{GROUP}")).await;
    assert_eq!(status, 200, "{group}");
    assert_eq!(
        (group["isGroup"].as_bool(), group["title"].as_str()),
        (Some(true), Some("Trip"))
    );
    let (_, page) = cat
        .get(&format!("/conversations/{GROUP}/messages?order=asc"))
        .await;
    assert_eq!(
        ids(&page),
        [m(0x11), m(0x12), m(0x13), m(0x14), m(0x15), m(0x16)]
    );
    assert_eq!(page[0]["sentAt"], "2021-06-01T09:30:00.123Z");

    // Read state: ann has not read ben's "fine"; ben has; cat read part of the group only;
    // ann sent the group's last message herself.
    let is_read = |list: &Value, id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["conversationId"] == id)
            .map(|c| c["isRead"].as_bool().unwrap())
    };
    let (_, list) = ann.get("/conversations").await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(is_read(&list, &direct.to_string()), Some(false));
    assert_eq!(is_read(&list, GROUP), Some(true));
    let (_, list) = ben.get("/conversations").await;
    assert_eq!(is_read(&list, &direct.to_string()), Some(true));
    assert_eq!(is_read(&list, GROUP), Some(true));
    let (_, list) = cat.get("/conversations?isRead=false").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // The read marker sits after the newest message cat had read (or sent): 0x15.
    let marker: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read_markers r JOIN messages m
             ON m.conversation_id = r.conversation_id AND m.seq = r.read_seq
          WHERE r.user_id = 'cat' AND m.message_id = $1",
    )
    .bind(Uuid::parse_str(&m(0x15)).unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(marker, 1);
    // The creation time is the old one.
    let created: String = sqlx::query_scalar(
        "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')
           FROM conversations WHERE conversation_id = $1",
    )
    .bind(direct)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(created, "2021-05-01 10:00:00.000");
}

/// An import killed (SIGKILL) while appending, then run again: every planned event is in the
/// log exactly once, each conversation's in the planned order.
#[tokio::test]
async fn an_import_killed_mid_append_and_run_again_appends_nothing_twice() {
    let env = TestEnv::new().await;
    let (url, old) = old_database(&env).await;
    sqlx::raw_sql(
        "CREATE TEMP TABLE members AS
           SELECT c, ('00000000-0000-4000-8000-' || lpad(to_hex(c), 12, '0'))::uuid AS id,
                  ARRAY['user' || c % 50, 'user' || (c % 50 + 1 + c / 50) % 50] AS users
             FROM generate_series(1, 300) c;
         INSERT INTO conversation_table
           SELECT id, users[1], timestamp '2021-01-01' + c * interval '1 second', NULL, false
             FROM members;
         INSERT INTO participant_table SELECT unnest(users), id FROM members;
         CREATE TEMP TABLE generated AS
           SELECT gen_random_uuid() AS message_id, id AS conversation_id,
                  timestamptz '2021-02-01 00:00:00+00' + (n / 3) * interval '10 ms' AS sent_at,
                  users[1 + (n / 300) % 2] AS sender_id, 'message ' || n AS content, users
             FROM generate_series(1, 30000) n JOIN members ON members.c = 1 + n % 300;
         INSERT INTO message_table
           SELECT message_id, conversation_id, sent_at, sender_id, content FROM generated;
         INSERT INTO message_is_read_table
           SELECT message_id, r, r = sender_id FROM generated, unnest(users) r;",
    )
    .execute(&old)
    .await
    .unwrap();
    let plan = ops::import::plan(&ops::import::load(&old).await.unwrap());
    let planned = plan.counts().events() as i64;
    assert!(plan.refused.is_empty());

    let mut import = tokio::process::Command::new(binary_path("chatctl"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.service_env())
        .args(["import-pagenow", "--from", &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chatctl");
    // Polled often, to kill it in the middle of appending.
    let poll = Duration::from_millis(5);
    let what = "the import appended 1,000 records";
    let at_kill = eventually_every(poll, what, Duration::from_secs(60), || async {
        let records = log_records(&env).await;
        (records > 1_000).then_some(records)
    })
    .await;
    import.start_kill().unwrap();
    import.wait().await.unwrap();
    let after_kill = log_records(&env).await;
    assert!(
        after_kill < planned,
        "killed too late to test anything ({at_kill}, then {after_kill} of {planned})"
    );

    let (code, out, err) = env.chatctl(&["import-pagenow", "--from", &url]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("already in the log: {after_kill}")),
        "{out}"
    );
    assert!(!out.contains("warning"), "{out}");
    assert_eq!(log_records(&env).await, planned);
    assert_eq!(log_event_ids(&env).await.len() as i64, planned);

    // Each conversation's events are in the log in the planned order.
    let consumer = ops::log::reader(&env.brokers).unwrap();
    let spans = ops::log::watermarks(&consumer, &env.topic)
        .unwrap()
        .into_iter()
        .map(|(partition, (start, end))| ops::log::Span {
            partition,
            start,
            end,
        })
        .collect();
    let mut in_log: std::collections::HashMap<Uuid, Vec<Uuid>> = Default::default();
    let mut batches = ops::log::read(&env.kafka_args(), spans, 5_000);
    while let Some(batch) = batches.recv().await {
        let mut batch = batch.unwrap();
        batch.sort_by_key(|r| (r.partition, r.offset));
        for record in batch {
            let envelope = events::Envelope::decode(record.payload.as_deref().unwrap()).unwrap();
            in_log
                .entry(envelope.event.conversation_id())
                .or_default()
                .push(envelope.event_id);
        }
    }
    for conversation in &plan.conversations {
        let want: Vec<Uuid> = conversation.events.iter().map(|e| e.event_id).collect();
        assert_eq!(in_log[&conversation.conversation_id], want);
    }
}
