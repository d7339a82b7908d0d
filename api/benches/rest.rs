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
//! The projection is seeded through the real fold: the seed's events are appended to the
//! benchmark's topic and folded with the rebuild's engine (`ops::replay`, the live projector's
//! own `Folder`), so the seeded rows are exactly what the projector makes of them. Live
//! ingestion during the measurements then goes through the whole path: writer → Kafka →
//! projector (in this process, continuing from the seed's positions) → Postgres.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use events::{ConversationCreated, Envelope, Event, MessageSent, MessagesRead, Timestamp};
use hdrhistogram::Histogram;
use ops::bench;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const SECRET: &str = "bench-secret";
/// The database the benchmark makes anew, and drops at the end.
const DATABASE: &str = "bench_rest";

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
    let target = bench::Target::from_env();
    let brokers = target.brokers.clone();

    // A fresh database and topic of its own.
    let url = target.fresh_database(DATABASE).await?;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await?;
    store::MIGRATOR.run(&pool).await?;
    let topic = format!("bench.rest.{}", Uuid::new_v4().simple());
    writer::admin::ensure_topic(&brokers, &topic, 8).await?;

    let kafka = writer::KafkaArgs::new(brokers.clone(), topic.clone());
    println!("seeding {conversations} conversations, {messages} messages, {users} users ...");
    let seed = Seed {
        conversations,
        messages,
        users,
    };
    seed.fold(&pool, &kafka).await?;
    let targets: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT conversation_id, created_by FROM conversations ORDER BY conversation_id",
    )
    .fetch_all(&pool)
    .await?;

    // The projector and the REST API, in this process, on the seeded database.
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
    target.forget_database(DATABASE).await?;
    let _ = writer::admin::delete_topics(&brokers, &[&topic]).await;
    Ok(())
}

/// The seeded history: conversations between pseudo-random users (every fifth a group of
/// three), messages spread evenly over them, then a read by half the participants of each
/// conversation, after its last message.
struct Seed {
    conversations: u64,
    messages: u64,
    users: u64,
}

impl Seed {
    /// Appends the history to the topic of `kafka` and folds it into the projection `pool`
    /// points at, with the projector's own fold; the positions it stores are where the live
    /// projector goes on.
    async fn fold(&self, pool: &PgPool, kafka: &writer::KafkaArgs) -> anyhow::Result<()> {
        let started = Instant::now();
        let events = self.events();
        let count = events.len() as u64;
        let (brokers, topic) = (kafka.brokers.clone(), kafka.topic.clone());
        tokio::task::spawn_blocking(move || {
            bench::produce(&brokers, &topic, events.into_iter(), count)
        })
        .await??;
        let produced = started.elapsed();
        let spans = ops::log::spans_to_end(kafka, &HashMap::new()).await?;
        let bar = ops::replay::progress(ops::log::total(&spans), "seed");
        let folder = projector::Folder::new(&kafka.topic, None);
        let replayed = ops::replay::replay(
            pool,
            &folder,
            kafka,
            spans,
            ops::replay::DEFAULT_BATCH,
            &bar,
        )
        .await?;
        bar.finish_and_clear();
        anyhow::ensure!(
            replayed.poison.is_empty(),
            "the seed has events the projector sets aside: {:?}",
            &replayed.poison[..1]
        );
        // The fold leaves a dead version of a conversation row per batch that moved its latest
        // message; a running projection has had autovacuum through them.
        sqlx::query("VACUUM ANALYZE").execute(pool).await?;
        println!(
            "seeded {count} events in {:.1} s (appended in {:.1} s, folded at {:.0} events/s)",
            started.elapsed().as_secs_f64(),
            produced.as_secs_f64(),
            replayed.per_second()
        );
        Ok(())
    }

    /// The users of conversation `i`, its creator first.
    fn members(&self, i: u64) -> Vec<u64> {
        let u = self.users;
        let first = i % u;
        let mut members = vec![first, (first + 1 + (i / u) * 13) % u];
        if i.is_multiple_of(5) {
            members.push((first + u / 2) % u);
        }
        members.dedup();
        members
    }

    fn events(&self) -> Vec<Envelope> {
        let user = |n: u64| format!("user{n}");
        let base = Timestamp::now().as_datetime() - chrono::Duration::days(1);
        let mut n = 0u128;
        let mut envelope = |event: Event, at: chrono::DateTime<chrono::Utc>| {
            n += 1;
            Envelope {
                event_id: Uuid::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0000 | n),
                accepted_at: Timestamp::from(at),
                event,
            }
        };
        let mut out = Vec::with_capacity((self.conversations * 3 + self.messages) as usize);
        let mut ids = Vec::with_capacity(self.conversations as usize);
        for i in 0..self.conversations {
            let members = self.members(i);
            let is_group = members.len() > 2;
            let id = if is_group {
                Uuid::from_u128(0xc0c0_0000_0000_0000_0000_0000_0000_0000 | u128::from(i))
            } else {
                events::direct_conversation_id(&user(members[0]), &user(members[1]))
            };
            let mut participants: Vec<String> = members.iter().map(|m| user(*m)).collect();
            participants.sort();
            ids.push(id);
            out.push(envelope(
                Event::ConversationCreated(ConversationCreated {
                    conversation_id: id,
                    created_by: user(members[0]),
                    participants,
                    is_group,
                    title: if is_group {
                        format!("group {i}")
                    } else {
                        String::new()
                    },
                    idempotency_key: None,
                }),
                base,
            ));
        }
        for m in 0..self.messages {
            let i = m % self.conversations;
            let members = self.members(i);
            // The creator and the first other member take turns, a round of the conversations
            // each.
            let sender = user(members[((m / self.conversations) % 2) as usize]);
            let temp_message_id = format!("seed-{m}");
            let sent_at = base + chrono::Duration::milliseconds(m as i64);
            out.push(envelope(
                Event::MessageSent(MessageSent {
                    conversation_id: ids[i as usize],
                    message_id: events::message_id(&sender, ids[i as usize], &temp_message_id),
                    sender_id: sender,
                    content: format!("message number {m} of the benchmark seed"),
                    temp_message_id,
                    sent_at: Timestamp::from(sent_at),
                }),
                sent_at,
            ));
        }
        let last = base + chrono::Duration::milliseconds(self.messages as i64);
        for (i, id) in ids.iter().enumerate() {
            for member in self.members(i as u64) {
                if (member + i as u64).is_multiple_of(2) {
                    out.push(envelope(
                        Event::MessagesRead(MessagesRead {
                            conversation_id: *id,
                            user_id: user(member),
                        }),
                        last,
                    ));
                }
            }
        }
        out
    }
}

fn token(user: &str) -> String {
    auth::mint::hs256(SECRET, &auth::mint::claims_for(user))
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
