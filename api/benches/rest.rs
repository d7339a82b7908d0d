//! REST load benchmark: the conversation list, the unread poll and history pages under
//! concurrent load while messages are being ingested through the log.
//!
//! Needs the local stack (`scripts/stack infra-up`). Run:
//!
//! ```text
//! cargo bench -p api --bench rest
//! ```
//!
//! Knobs (environment): BENCH_CONVERSATIONS (10000), BENCH_MESSAGES (1000000), BENCH_USERS
//! (2000), BENCH_SECONDS per scenario (10), BENCH_CONCURRENCY (8), BENCH_INGEST_PER_SEC (200).
//!
//! The projection is seeded with SQL (a million messages through the log would take minutes and
//! measure the projector, not the reads); live ingestion during the measurements goes through
//! the real path: writer → Kafka → projector (in this process) → Postgres.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use events::{Envelope, Event, MessageSent, Timestamp};
use hdrhistogram::Histogram;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const SECRET: &str = "bench-secret";

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let conversations = knob("BENCH_CONVERSATIONS", 10_000);
    let messages = knob("BENCH_MESSAGES", 1_000_000);
    let users = knob("BENCH_USERS", 2_000);
    let seconds = knob("BENCH_SECONDS", 10);
    let concurrency = knob("BENCH_CONCURRENCY", 8) as usize;
    let ingest_per_sec = knob("BENCH_INGEST_PER_SEC", 200);
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://chat:chat@127.0.0.1:5432/chat".into());

    // A fresh database and topic of its own.
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await?;
    sqlx::query("DROP DATABASE IF EXISTS bench_rest WITH (FORCE)")
        .execute(&admin)
        .await?;
    sqlx::query("CREATE DATABASE bench_rest")
        .execute(&admin)
        .await?;
    let url = format!(
        "{}/bench_rest",
        admin_url.rsplit_once('/').map(|(p, _)| p).unwrap()
    );
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await?;
    store::MIGRATOR.run(&pool).await?;
    let topic = format!("bench.rest.{}", Uuid::new_v4().simple());
    writer::admin::ensure_topic(&brokers, &topic, 8).await?;

    println!("seeding {conversations} conversations, {messages} messages, {users} users ...");
    let started = Instant::now();
    seed(&pool, conversations, messages, users).await?;
    println!("seeded in {:.1} s", started.elapsed().as_secs_f64());
    let targets: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT conversation_id, created_by FROM conversations ORDER BY conversation_id",
    )
    .fetch_all(&pool)
    .await?;

    // The projector and the REST API, in this process, on the seeded database.
    let kafka = writer::KafkaArgs {
        brokers: brokers.clone(),
        topic: topic.clone(),
    };
    let projector_args = projector::ProjectorArgs {
        group: format!("{topic}-projector"),
        max_batch: 2000,
        gather_ms: 10,
    };
    let projector = projector::Projector::new(&kafka, &projector_args, pool.clone())?;
    tokio::spawn(projector.run(std::future::pending()));
    let writer = writer::Writer::new(&kafka)?;
    let auth = auth::AuthArgs {
        jwt_secret: Some(SECRET.to_owned().into()),
        jwks_url: None,
        jwt_issuer: None,
        jwt_audience: vec![],
        jwt_user_claim: "sub".into(),
    };
    let http = api::HttpArgs {
        base_path: Default::default(),
        cors_origins: vec![],
        projection_wait_ms: 10_000,
    };
    let store = store::Store::new(pool.clone());
    let readiness = api::readiness(store.clone(), writer.clone());
    let state = api::AppState::new(
        store,
        writer.clone(),
        auth::Verifier::new(&auth, ([127, 0, 0, 1], 0).into())?,
        &http,
    );
    let health = telemetry::health_routes(telemetry::init_metrics(), readiness);
    let app = api::app(state, &http, health);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let tokens: Arc<Vec<String>> =
        Arc::new((0..users).map(|u| token(&format!("user{u}"))).collect());
    let targets = Arc::new(targets);

    // Live ingestion through the log during every measurement.
    let ingesting = Arc::new(AtomicBool::new(true));
    let ingested = Arc::new(AtomicU64::new(0));
    {
        let (ingesting, ingested, targets, writer) = (
            ingesting.clone(),
            ingested.clone(),
            targets.clone(),
            writer.clone(),
        );
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / ingest_per_sec.max(1)));
            let mut rng = Rng(7);
            while ingesting.load(Ordering::Relaxed) {
                tick.tick().await;
                let (conversation_id, sender) = &targets[rng.below(targets.len())];
                let event = Event::MessageSent(MessageSent {
                    conversation_id: *conversation_id,
                    message_id: Uuid::new_v4(),
                    sender_id: sender.clone(),
                    content: "live message".into(),
                    temp_message_id: "bench".into(),
                    sent_at: Timestamp::now(),
                });
                let writer = writer.clone();
                let ingested = ingested.clone();
                tokio::spawn(async move {
                    if writer.append(&Envelope::new(event)).await.is_ok() {
                        ingested.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let duration = Duration::from_secs(seconds);
    println!(
        "\n{concurrency} concurrent clients, {seconds} s per scenario, ingesting {ingest_per_sec} messages/s\n"
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "scenario", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );

    // Floors measured in the same run: an HTTP round trip that touches nothing, and the list
    // query straight through sqlx without HTTP, JSON or auth.
    let floor_http = {
        let (client, base) = (client.clone(), base.clone());
        run(concurrency, duration, move |_| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                client
                    .get(format!("{base}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    };
    report("floor: HTTP GET /healthz", &floor_http);
    let floor_sql = {
        let pool = pool.clone();
        run(concurrency, duration, move |rng| {
            let pool = pool.clone();
            let user = format!("user{}", rng.below(users as usize));
            async move {
                sqlx::query(store::CONVERSATIONS_OF)
                    .bind(user)
                    .bind(Some(false))
                    .fetch_all(&pool)
                    .await
                    .is_ok()
            }
        })
        .await
    };
    report("floor: unread query via sqlx, no HTTP", &floor_sql);

    for (name, query) in [
        ("GET /conversations", ""),
        ("GET /conversations?isRead=false (poll)", "?isRead=false"),
    ] {
        let (client, base, tokens) = (client.clone(), base.clone(), tokens.clone());
        let result = run(concurrency, duration, move |rng| {
            let (client, base) = (client.clone(), base.clone());
            let token = tokens[rng.below(tokens.len())].clone();
            async move {
                client
                    .get(format!("{base}/conversations{query}"))
                    .header("Authorization", token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        report(name, &result);
    }
    let history = {
        let (client, base, targets) = (client.clone(), base.clone(), targets.clone());
        run(concurrency, duration, move |rng| {
            let (client, base) = (client.clone(), base.clone());
            let (conversation_id, user) = targets[rng.below(targets.len())].clone();
            let offset = 20 * rng.below(5);
            async move {
                client
                    .get(format!(
                        "{base}/conversations/{conversation_id}/messages?limit=20&offset={offset}"
                    ))
                    .header("Authorization", token(&user))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    };
    report("GET /conversations/{id}/messages (page)", &history);

    // The extension's real load is open: every signed-in user polls once a minute whatever the
    // latency. At a fixed arrival rate (BENCH_POLL_PER_SEC, 60 × that many users), latency is
    // measured from each request's scheduled start, so a stall counts against every request
    // that should have started during it.
    let poll_rate = knob("BENCH_POLL_PER_SEC", 500);
    let open = {
        let (client, base, tokens) = (client.clone(), base.clone(), tokens.clone());
        run_open(poll_rate, duration, move |rng| {
            let (client, base) = (client.clone(), base.clone());
            let token = tokens[rng.below(tokens.len())].clone();
            async move {
                client
                    .get(format!("{base}/conversations?isRead=false"))
                    .header("Authorization", token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    };
    report(&format!("poll at a fixed {poll_rate}/s (open loop)"), &open);
    ingesting.store(false, Ordering::Relaxed);
    let total_seconds = (seconds * 6) as f64;
    println!(
        "\ningested {} messages through the log during the run ({:.0}/s)",
        ingested.load(Ordering::Relaxed),
        ingested.load(Ordering::Relaxed) as f64 / total_seconds
    );

    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}",
        store::CONVERSATIONS_OF
            .replace("$1", "'user42'")
            .replace("$2", "false")
    ))
    .fetch_all(&pool)
    .await?;
    println!(
        "\nplan of the unread poll for one user:\n{}",
        plan.join("\n")
    );
    pool.close().await;
    sqlx::query("DROP DATABASE IF EXISTS bench_rest WITH (FORCE)")
        .execute(&admin)
        .await?;
    let _ = writer::admin::delete_topics(&brokers, &[&topic]).await;
    Ok(())
}

/// Seeds the projection: conversations between pseudo-random users (every fifth a group of
/// three), messages spread evenly, and read markers for half the participants.
async fn seed(pool: &PgPool, conversations: u64, messages: u64, users: u64) -> anyhow::Result<()> {
    let c = conversations as i64;
    let u = users as i64;
    sqlx::query(
        "INSERT INTO conversations (conversation_id, title, is_group, created_by, created_at)
         SELECT md5('c' || i)::uuid, CASE WHEN i % 5 = 0 THEN 'group ' || i ELSE '' END,
                i % 5 = 0, 'user' || (i % $2), now() - interval '30 days'
           FROM generate_series(0, $1 - 1) i",
    )
    .bind(c)
    .bind(u)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO participants (conversation_id, user_id)
         SELECT md5('c' || i)::uuid, 'user' || p
           FROM generate_series(0, $1 - 1) i,
                LATERAL (VALUES (i % $2), ((i % $2 + 1 + (i / $2) * 13) % $2),
                                (CASE WHEN i % 5 = 0 THEN (i % $2 + $2 / 2) % $2 END)) v(p)
          WHERE p IS NOT NULL
         ON CONFLICT DO NOTHING",
    )
    .bind(c)
    .bind(u)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, message_id, sender_id, content, sent_at, temp_message_id)
         SELECT md5('c' || (m % $1))::uuid, m, md5('m' || m)::uuid,
                'user' || CASE WHEN (m / $1) % 2 = 0 THEN (m % $1) % $3
                               ELSE ((m % $1) % $3 + 1 + ((m % $1) / $3) * 13) % $3 END,
                'message number ' || m || ' of the benchmark seed',
                now() - interval '1 day' + m * interval '1 ms', 'seed'
           FROM generate_series(0, $2 - 1) m",
    )
    .bind(c)
    .bind(messages as i64)
    .bind(u)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE conversations c SET latest_seq = l.seq, latest_message_id = l.message_id,
                latest_sender_id = l.sender_id, latest_content = l.content, latest_sent_at = l.sent_at
           FROM (SELECT DISTINCT ON (conversation_id) * FROM messages ORDER BY conversation_id, seq DESC) l
          WHERE c.conversation_id = l.conversation_id",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO read_markers (conversation_id, user_id, read_seq)
         SELECT p.conversation_id, p.user_id, c.latest_seq
           FROM participants p JOIN conversations c USING (conversation_id)
          WHERE hashtext(p.user_id || p.conversation_id::text) % 2 = 0 AND c.latest_seq IS NOT NULL",
    )
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign a token")
}

struct Outcome {
    histogram: Histogram<u64>,
    errors: u64,
    elapsed: Duration,
}

/// Runs `request` in `concurrency` closed loops for `duration`; latencies in microseconds.
async fn run<F, Fut>(concurrency: usize, duration: Duration, request: F) -> Outcome
where
    F: Fn(&mut Rng) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new(3).unwrap();
                let mut errors = 0;
                let mut rng = Rng(w as u64 * 7919 + 1);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = request(&mut rng).await;
                    histogram.record(t.elapsed().as_micros() as u64).unwrap();
                    errors += u64::from(!ok);
                }
                (histogram, errors)
            })
        })
        .collect();
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let mut errors = 0;
    for worker in workers {
        let (h, e) = worker.await.unwrap();
        histogram.add(h).unwrap();
        errors += e;
    }
    Outcome {
        histogram,
        errors,
        elapsed: started.elapsed(),
    }
}

/// Starts `request` at a fixed rate for `duration`, however long each takes; latencies in
/// microseconds from each request's scheduled start.
async fn run_open<F, Fut>(per_sec: u64, duration: Duration, request: F) -> Outcome
where
    F: Fn(&mut Rng) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let interval = Duration::from_nanos(1_000_000_000 / per_sec.max(1));
    let started = Instant::now();
    let mut rng = Rng(99);
    let mut in_flight = Vec::new();
    let mut scheduled = started;
    while scheduled < started + duration {
        tokio::time::sleep_until(scheduled.into()).await;
        let call = request(&mut rng);
        let at = scheduled;
        in_flight.push(tokio::spawn(async move { (call.await, at.elapsed()) }));
        scheduled += interval;
    }
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let mut errors = 0;
    for call in in_flight {
        let (ok, latency) = call.await.unwrap();
        histogram.record(latency.as_micros() as u64).unwrap();
        errors += u64::from(!ok);
    }
    Outcome {
        histogram,
        errors,
        elapsed: duration,
    }
}

fn report(name: &str, outcome: &Outcome) {
    let h = &outcome.histogram;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{:<44} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}{}",
        name,
        h.len() as f64 / outcome.elapsed.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
        if outcome.errors > 0 {
            format!("  ({} errors)", outcome.errors)
        } else {
            String::new()
        }
    );
}

/// A small xorshift generator: the bench needs spread, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
