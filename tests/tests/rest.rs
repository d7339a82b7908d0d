//! The REST API over real HTTP against the real stack: every route, rule and error of the
//! contract that needs the projection or the log. What the API answers without them (bad
//! tokens, CORS, the OpenAPI document's routes, malformed ids) is tested in-process, in
//! api/tests/.

use std::collections::HashSet;
use std::time::Duration;

use chat_tests::{RestClient, Service, TestEnv};
use events::{Envelope, Event, MessageSent, MessagesRead, Timestamp};
use futures_util::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

struct Rest {
    env: TestEnv,
    _projector: Service,
    api: Service,
    base: String,
}

impl Rest {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let projector = env.spawn_projector().await;
        let api = env.spawn_api_with(extra).await;
        let base = api.url("");
        Self {
            env,
            _projector: projector,
            api,
            base,
        }
    }

    fn client(&self, user: &str) -> RestClient {
        RestClient::new(&self.base, self.env.token(user))
    }

    async fn direct(&self, from: &str, to: &str) -> Uuid {
        let (status, body) = self
            .client(from)
            .post(
                "/conversation",
                &json!({"recipientIdArr": [to], "isGroup": false}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["conversationId"].as_str().unwrap().parse().unwrap()
    }

    async fn group(&self, from: &str, to: &[&str], title: &str) -> Uuid {
        let (status, body) = self
            .client(from)
            .post(
                "/conversation",
                &json!({"recipientIdArr": to, "isGroup": true, "title": title}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["conversationId"].as_str().unwrap().parse().unwrap()
    }

    /// Appends messages through the writer (as the socket-edge does) and waits for the
    /// projection to hold them.
    async fn send(
        &self,
        conversation_id: Uuid,
        messages: &[(&str, &str)],
        sent_at: Option<Timestamp>,
    ) {
        let writer = self.env.writer();
        for (sender, content) in messages {
            let event = Event::MessageSent(MessageSent {
                conversation_id,
                message_id: Uuid::new_v4(),
                sender_id: sender.to_string(),
                content: content.to_string(),
                temp_message_id: format!("tmp-{content}"),
                sent_at: sent_at.unwrap_or_else(Timestamp::now),
            });
            writer.append(&Envelope::new(event)).await.unwrap();
        }
        let last = messages.last().unwrap().1;
        let reader = self.client(messages[0].0);
        self.eventually(|| async {
            let (_, body) = reader
                .get(&format!(
                    "/conversations/{conversation_id}/messages?limit=1"
                ))
                .await;
            body[0]["content"] == last
        })
        .await;
    }

    async fn read(&self, conversation_id: Uuid, user: &str) {
        let event = Event::MessagesRead(MessagesRead {
            conversation_id,
            user_id: user.to_owned(),
        });
        self.env
            .writer()
            .append(&Envelope::new(event))
            .await
            .unwrap();
    }

    async fn eventually<F, Fut>(&self, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..400 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("condition not met within 10 s");
    }
}

fn is_contract_timestamp(value: &Value) -> bool {
    let s = value.as_str().unwrap_or("");
    s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.' && chrono_like_parse(s)
}

fn chrono_like_parse(s: &str) -> bool {
    serde_json::from_value::<Timestamp>(Value::String(s.to_owned()))
        .is_ok_and(|t| t.to_string() == s)
}

fn assert_error(status: u16, body: &Value, want_status: u16, field: &str) {
    assert_eq!(status, want_status, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("'{field}'")),
        "{message} should name {field}"
    );
}

#[tokio::test]
async fn direct_conversations_are_unique_and_readable_at_once() {
    let rest = Rest::start().await;
    let id = rest.direct("alice", "bob").await;
    // The 200 arrived: both participants read it at once.
    for (user, other) in [("alice", "bob"), ("bob", "alice")] {
        let (status, body) = rest.client(user).get(&format!("/conversations/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"conversationId": id, "title": "", "isGroup": false, "participantId": other})
        );
        let (status, body) = rest
            .client(user)
            .get(&format!("/conversation/direct/{other}"))
            .await;
        assert_eq!((status, body), (200, json!({ "conversationId": id })));
    }
    // Creating it again, from either side, with a title or not, returns the same one.
    assert_eq!(rest.direct("bob", "alice").await, id);
    let (status, body) = rest
        .client("alice")
        .post(
            "/conversation",
            &json!({"recipientIdArr": ["bob"], "isGroup": false, "title": "ignored"}),
        )
        .await;
    assert_eq!(
        (status, body["conversationId"].as_str()),
        (200, Some(id.to_string().as_str()))
    );
    let (status, body) = rest
        .client("alice")
        .get(&format!("/conversations/{id}"))
        .await;
    assert_eq!((status, &body["title"]), (200, &json!("")));

    let (status, body) = rest.client("alice").get("/conversation/direct/carol").await;
    assert_eq!((status, body), (200, Value::Null));
    let (status, body) = rest.client("alice").get("/conversation/direct/alice").await;
    assert_error(status, &body, 400, "userId");
    let long = "x".repeat(51);
    let (status, body) = rest
        .client("alice")
        .get(&format!("/conversation/direct/{long}"))
        .await;
    assert_error(status, &body, 400, "userId");

    let (status, body) = rest
        .client("alice")
        .get(&format!("/conversations/{id}/participants"))
        .await;
    assert_eq!((status, body), (200, json!(["alice", "bob"])));
}

#[tokio::test]
async fn concurrent_direct_creation_makes_one_conversation() {
    let rest = Rest::start().await;
    let attempts = (0..16).map(|i| {
        let (from, to) = if i % 2 == 0 {
            ("dora", "emil")
        } else {
            ("emil", "dora")
        };
        let client = rest.client(from);
        async move {
            client
                .post(
                    "/conversation",
                    &json!({"recipientIdArr": [to], "isGroup": false}),
                )
                .await
        }
    });
    let ids: HashSet<String> = join_all(attempts)
        .await
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 200, "{body}");
            body["conversationId"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let pool = rest.env.pool().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let participants: i64 = sqlx::query_scalar("SELECT count(*) FROM participants")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((rows, participants), (1, 2));
}

#[tokio::test]
async fn groups_are_created_and_validated() {
    let rest = Rest::start().await;
    let title = "é".repeat(300);
    let first = rest.group("gus", &["hal", "ida"], &title).await;
    let second = rest.group("gus", &["hal", "ida"], &title).await;
    assert_ne!(first, second, "a group is always new");
    let (status, body) = rest
        .client("ida")
        .get(&format!("/conversations/{first}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["isGroup"], true);
    assert_eq!(body["title"], title.as_str());
    assert!(["gus", "hal"].contains(&body["participantId"].as_str().unwrap()));
    let (_, body) = rest
        .client("hal")
        .get(&format!("/conversations/{first}/participants"))
        .await;
    assert_eq!(body, json!(["gus", "hal", "ida"]));

    let gus = rest.client("gus");
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"recipientIdArr": ["a", "b"], "title": "t"}),
            "isGroup",
        ),
        (
            json!({"recipientIdArr": ["a", "b"], "isGroup": "yes", "title": "t"}),
            "isGroup",
        ),
        (json!({"isGroup": true, "title": "t"}), "recipientIdArr"),
        (
            json!({"recipientIdArr": "a", "isGroup": true, "title": "t"}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": ["a"], "isGroup": true, "title": "t"}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": ["a", "a"], "isGroup": true, "title": "t"}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": ["gus", "a"], "isGroup": true, "title": "t"}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": ["", "a"], "isGroup": true, "title": "t"}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": ["x".repeat(51), "a"], "isGroup": true, "title": "t"}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": [1, "a"], "isGroup": true, "title": "t"}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": [], "isGroup": false}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": ["a", "b"], "isGroup": false}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": ["gus"], "isGroup": false}),
            "recipientIdArr",
        ),
        (
            json!({"recipientIdArr": ["a", "b"], "isGroup": true}),
            "title",
        ),
        (
            json!({"recipientIdArr": ["a", "b"], "isGroup": true, "title": ""}),
            "title",
        ),
        (
            json!({"recipientIdArr": ["a", "b"], "isGroup": true, "title": "  \t "}),
            "title",
        ),
        (
            json!({"recipientIdArr": ["a", "b"], "isGroup": true, "title": "é".repeat(301)}),
            "title",
        ),
        (
            json!({"recipientIdArr": ["a", "b"], "isGroup": true, "title": 7}),
            "title",
        ),
        (json!(["not", "an", "object"]), "body"),
    ];
    for (body, field) in cases {
        let (status, answer) = gus.post("/conversation", &body).await;
        assert_error(status, &answer, 400, field);
    }
    assert_eq!(
        gus.post(
            "/conversation",
            &json!({"recipientIdArr": ["a", "b"], "title": "t"})
        )
        .await
        .1["message"],
        "Missing 'isGroup' in event body"
    );
    // A body that is not JSON at all.
    let response = reqwest::Client::new()
        .post(format!("{}/conversation", rest.base))
        .header("Authorization", rest.env.token("gus"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn conversation_list_and_read_state() {
    let rest = Rest::start().await;
    let with_bob = rest.direct("ann", "bob").await;
    let with_cid = rest.direct("ann", "cid").await;
    let group = rest.group("cid", &["ann", "bob"], "trio").await;
    let ann = rest.client("ann");

    // Conversations without messages are not listed.
    assert_eq!(ann.get("/conversations").await, (200, json!([])));

    rest.send(with_bob, &[("bob", "hi ann")], None).await;
    rest.send(with_cid, &[("ann", "hello cid")], None).await;
    rest.send(
        group,
        &[("bob", "group hello"), ("cid", "group latest")],
        None,
    )
    .await;

    let (status, list) = ann.get("/conversations").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversationId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            group.to_string(),
            with_cid.to_string(),
            with_bob.to_string()
        ],
        "newest first"
    );
    let first = &list[0];
    let keys: HashSet<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "conversationId",
            "title",
            "isGroup",
            "sentAt",
            "latestContent",
            "senderId",
            "participantId",
            "isRead"
        ])
    );
    assert_eq!(first["title"], "trio");
    assert_eq!(first["isGroup"], true);
    assert_eq!(first["latestContent"], "group latest");
    assert_eq!(first["senderId"], "cid");
    assert_ne!(first["participantId"], "ann");
    assert!(
        is_contract_timestamp(&first["sentAt"]),
        "{}",
        first["sentAt"]
    );
    // Unread: bob's and the group's latest; ann's own message counts as read.
    let read_states: Vec<bool> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["isRead"].as_bool().unwrap())
        .collect();
    assert_eq!(read_states, [false, true, false]);
    assert_eq!(list[1]["participantId"], "cid");
    assert_eq!(list[2]["participantId"], "bob");

    let (_, unread) = ann.get("/conversations?isRead=false").await;
    assert_eq!(unread.as_array().unwrap().len(), 2);
    let (_, read) = ann.get("/conversations?isRead=true").await;
    assert_eq!(read.as_array().unwrap().len(), 1);
    assert_eq!(read[0]["conversationId"], with_cid.to_string());

    // Reading moves the marker; a newer message from someone else makes it unread again.
    rest.read(group, "ann").await;
    rest.eventually(|| async {
        ann.get("/conversations?isRead=false")
            .await
            .1
            .as_array()
            .unwrap()
            .len()
            == 1
    })
    .await;
    rest.send(group, &[("bob", "one more")], None).await;
    let (_, unread) = ann.get("/conversations?isRead=false").await;
    assert_eq!(unread.as_array().unwrap().len(), 2);
    // Bob's own latest message is read for bob.
    let (_, bobs) = rest.client("bob").get("/conversations").await;
    assert_eq!(bobs[0]["conversationId"], group.to_string());
    assert_eq!(bobs[0]["isRead"], true);

    for bad in ["maybe", "TRUE", "1", ""] {
        let (status, body) = ann.get(&format!("/conversations?isRead={bad}")).await;
        assert_error(status, &body, 400, "isRead");
    }
}

#[tokio::test]
async fn history_pages_follow_the_log() {
    let rest = Rest::start().await;
    let id = rest.direct("web", "pal").await;
    // 40 messages that all share one sentAt: only the log orders them.
    let same_instant = Timestamp::now();
    let contents: Vec<String> = (1..=40).map(|i| format!("m{i}")).collect();
    let messages: Vec<(&str, &str)> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| (if i % 2 == 0 { "web" } else { "pal" }, c.as_str()))
        .collect();
    rest.send(id, &messages, Some(same_instant)).await;
    let web = rest.client("web");
    let page = |q: &'static str| {
        let web = web.clone();
        async move {
            let (status, body) = web.get(&format!("/conversations/{id}/messages?{q}")).await;
            assert_eq!(status, 200, "{body}");
            body.as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let names =
        |range: std::ops::RangeInclusive<usize>| range.map(|i| format!("m{i}")).collect::<Vec<_>>();
    // The web client's sequence.
    assert_eq!(page("limit=15&offset=0&order=asc").await, names(26..=40));
    assert_eq!(page("limit=20&offset=15&order=asc").await, names(6..=25));
    assert_eq!(page("limit=20&offset=35&order=asc").await, names(1..=5));
    // Defaults: 20 newest, newest first.
    let mut newest: Vec<String> = names(21..=40);
    newest.reverse();
    assert_eq!(page("").await, newest);
    assert_eq!(page("limit=20&offset=40").await, Vec::<String>::new());

    let (_, body) = web
        .get(&format!("/conversations/{id}/messages?limit=1"))
        .await;
    let message = &body[0];
    let keys: HashSet<&str> = message
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "messageId",
            "conversationId",
            "sentAt",
            "senderId",
            "content"
        ])
    );
    assert_eq!(message["sentAt"], same_instant.to_string());
    assert_eq!(message["senderId"], "pal");
    assert!(
        message["messageId"]
            .as_str()
            .unwrap()
            .parse::<Uuid>()
            .is_ok()
    );

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
        ("order=up", "order"),
    ] {
        let (status, body) = web
            .get(&format!("/conversations/{id}/messages?{query}"))
            .await;
        assert_error(status, &body, 400, field);
    }
}

#[tokio::test]
async fn scoped_reads_check_existence_and_participation() {
    let rest = Rest::start().await;
    let id = rest.direct("pia", "quinn").await;
    let outsider = rest.client("mallory");
    let unknown = Uuid::new_v4();
    for suffix in [
        "",
        "/messages",
        "/participants",
        "/messages?limit=5&order=asc",
    ] {
        // A stranger gets exactly the answer of a conversation that does not exist: direct ids
        // can be computed, so any difference would say who talks to whom.
        let theirs = outsider.get(&format!("/conversations/{id}{suffix}")).await;
        let missing = outsider
            .get(&format!("/conversations/{unknown}{suffix}"))
            .await;
        assert_eq!(theirs, missing, "{suffix}");
        let (status, body) = missing;
        assert_eq!(status, 404, "{suffix}: {body}");
        assert_eq!(body["error"], "conversation_not_found", "{suffix}");
    }
}

/// The refusals of bad tokens are checked in-process (api/tests/authentication.rs); that a
/// good one is accepted, raw or `Bearer`, needs the projection.
#[tokio::test]
async fn every_route_accepts_a_valid_token_raw_or_bearer() {
    let rest = Rest::start().await;
    let id = rest.direct("tess", "uma").await;
    let http = reqwest::Client::new();
    let routes = [
        ("POST", "/conversation".to_owned()),
        ("GET", "/conversation/direct/uma".to_owned()),
        ("GET", "/conversations".to_owned()),
        ("GET", format!("/conversations/{id}")),
        ("GET", format!("/conversations/{id}/messages")),
        ("GET", format!("/conversations/{id}/participants")),
    ];
    for (method, path) in &routes {
        // Raw and Bearer both work.
        for header in [
            rest.env.token("tess"),
            format!("Bearer {}", rest.env.token("tess")),
        ] {
            let mut request = http
                .request(method.parse().unwrap(), format!("{}{path}", rest.base))
                .header("Authorization", header);
            if *method == "POST" {
                request = request.json(&json!({"recipientIdArr": ["uma"], "isGroup": false}));
            }
            assert_eq!(
                request.send().await.unwrap().status(),
                200,
                "{method} {path}"
            );
        }
    }
}

/// Preflights, refusals and the base path are checked in-process (api/tests/cors.rs); a served
/// 200 needs the projection.
#[tokio::test]
async fn cors_headers_on_a_served_response_under_the_base_path() {
    let rest = Rest::start_with(&[
        ("CHAT_BASE_PATH", "/prod/"),
        (
            "CHAT_CORS_ORIGINS",
            "http://localhost:4200,https://chat.pagenow.example,chrome-extension://*",
        ),
    ])
    .await;
    let base = format!("{}/prod", rest.base);
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{base}/conversations"))
        .header("Origin", "http://localhost:4200")
        .header("Authorization", rest.env.token("vic"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://localhost:4200"
    );
    let _ = &rest.api;
}

/// That the document lists exactly the router's operations is checked in-process
/// (api/tests/openapi.rs); here every operation answers as documented.
#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let rest = Rest::start().await;
    let (status, doc) = RestClient::new(&rest.base, "").get("/openapi.json").await;
    assert_eq!(status, 200);
    let documented: HashSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();

    // Every documented operation answers with one of its documented statuses, and a 200 body
    // carries the documented required fields.
    let id = rest.direct("wes", "xia").await;
    rest.send(id, &[("xia", "hello")], None).await;
    let wes = rest.client("wes");
    for (method, path) in &documented {
        let concrete = path
            .replace("{conversationId}", &id.to_string())
            .replace("{userId}", "xia");
        let (status, body) = if method == "POST" {
            wes.post(
                &concrete,
                &json!({"recipientIdArr": ["xia"], "isGroup": false}),
            )
            .await
        } else {
            wes.get(&concrete).await
        };
        let operation = &doc["paths"][path][method.to_lowercase()];
        assert!(
            operation["responses"][status.to_string()].is_object(),
            "{method} {path} answered {status}"
        );
        let schema = &operation["responses"]["200"]["content"]["application/json"]["schema"];
        let schema = resolve(&doc, schema);
        let items = if schema["type"] == "array" {
            body.as_array().unwrap().clone()
        } else {
            vec![body.clone()]
        };
        let item_schema = if schema["type"] == "array" {
            resolve(&doc, &schema["items"])
        } else {
            schema.clone()
        };
        for item in items {
            for field in item_schema["required"].as_array().into_iter().flatten() {
                assert!(
                    item.get(field.as_str().unwrap()).is_some(),
                    "{method} {path}: {field} missing in {item}"
                );
            }
        }
    }
}

fn resolve(doc: &Value, schema: &Value) -> Value {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return doc["components"]["schemas"][name].clone();
    }
    if let Some(all) = schema["allOf"].as_array() {
        return resolve(doc, &all[0]);
    }
    schema.clone()
}

/// `POST /conversation` with `Idempotency-Key`: a retry answers with the first
/// conversation, the same key with another body is a 422, a keyed group's id is derived from
/// (creator, key), and requests without a key behave as before.
#[tokio::test]
async fn idempotency_key_makes_create_conversation_retryable() {
    let rest = Rest::start().await;
    let http = reqwest::Client::new();
    let post = |user: &str, key: Option<&str>, body: Value| {
        let mut request = http
            .post(format!("{}/conversation", rest.base))
            .header("Authorization", rest.env.token(user))
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        async move {
            let response = request.send().await.expect("POST");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let group = json!({"recipientIdArr": ["bob", "cy"], "isGroup": true, "title": "Trip"});

    let (status, first) = post("alice", Some("k-1"), group.clone()).await;
    assert_eq!(status, 200, "{first}");
    let id = first["conversationId"].as_str().unwrap().to_owned();
    assert_eq!(id, events::keyed_group_id("alice", "k-1").to_string());
    // Retries, one after another and several at once: the same group.
    let (status, again) = post("alice", Some("k-1"), group.clone()).await;
    assert_eq!((status, &again), (200, &first));
    let answers = join_all((0..4).map(|_| post("alice", Some("k-1"), group.clone()))).await;
    for (status, answer) in answers {
        assert_eq!((status, &answer), (200, &first));
    }
    // Quoted as the draft's examples write it: the same key.
    let (status, quoted) = post("alice", Some("\"k-1\""), group.clone()).await;
    assert_eq!((status, &quoted), (200, &first));

    // The same key with another body: 422 with a JSON error, nothing created.
    let other = json!({"recipientIdArr": ["bob", "cy"], "isGroup": true, "title": "Other"});
    let (status, error) = post("alice", Some("k-1"), other).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"], "idempotency_key_reused");
    let direct = json!({"recipientIdArr": ["bob"], "isGroup": false});
    let (status, _) = post("alice", Some("k-1"), direct.clone()).await;
    assert_eq!(status, 422);

    // The same key from another user is another request.
    let (status, bobs) = post(
        "bob",
        Some("k-1"),
        json!({"recipientIdArr": ["alice", "cy"], "isGroup": true, "title": "Trip"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(bobs, first);

    // A direct conversation under a key: the pair's id; the key then names that request.
    let (status, pair) = post("alice", Some("k-2"), direct.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        pair["conversationId"],
        events::direct_conversation_id("alice", "bob").to_string()
    );
    assert_eq!(
        post("alice", Some("k-2"), direct.clone()).await,
        (200, pair.clone())
    );
    let (status, _) = post(
        "alice",
        Some("k-2"),
        json!({"recipientIdArr": ["dee"], "isGroup": false}),
    )
    .await;
    assert_eq!(status, 422);

    // Without a key, as before: every group request is a new group.
    let (_, a) = post("alice", None, group.clone()).await;
    let (_, b) = post("alice", None, group.clone()).await;
    assert_ne!(a, b);
    assert_ne!(a, first);

    // Keys that are not keys.
    for bad in ["", &"k".repeat(256), "tab\there"] {
        let (status, error) = post("alice", Some(bad), group.clone()).await;
        assert_eq!(status, 400, "{bad:?}: {error}");
    }

    // Exactly one group under k-1, readable by its participants.
    let pool = rest.env.pool().await;
    let groups: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM conversations WHERE created_by = 'alice' AND title = 'Trip'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(groups, 3, "k-1's group and the two without a key");
    let (status, _) = rest.client("cy").get(&format!("/conversations/{id}")).await;
    assert_eq!(status, 200);
}
