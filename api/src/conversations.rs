//! The contract's routes: conversations, their history and their participants.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use events::admission::{self, Flaw};
use events::{
    ConversationCreated, Envelope, Event, MAX_TITLE_CHARS, MAX_USER_ID_CHARS,
    direct_conversation_id, keyed_group_id,
};
use serde::Serialize;
use serde_json::Value;
use store::{ConversationSummary, ConversationView, Message, Order, Page};
use uuid::Uuid;

use crate::extract::{Caller, conversation_id};
use crate::{ApiError, AppState};

/// Most recipients of one group, so that one request cannot fan out without bound.
const MAX_RECIPIENTS: usize = 100;

type Shared = State<Arc<AppState>>;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRef {
    conversation_id: Uuid,
}

/// `POST /conversation`: answers once the projection holds the conversation, so every
/// participant's next read sees it.
///
/// With an `Idempotency-Key` (the IETF httpapi draft's header), the request is named by
/// (caller, key) for as long as the log keeps its event: a retry with the same body answers with
/// the first conversation, one with another body is a 422. A group created under a key has an
/// id derived from (caller, key), so even a retry after a timed-out append cannot make two.
pub async fn create_conversation(
    State(state): Shared,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ConversationRef>, ApiError> {
    state.limit_create_conversation(caller.as_str()).await?;
    let key = idempotency_key(&headers)?;
    let body = body.map_err(|e| ApiError::invalid("body", &e.body_text()))?;
    let request = NewConversation::parse(&body, caller.as_str())?;
    if let Some(key) = &key
        && let Some(first) = state.store.keyed_conversation(caller.as_str(), key).await?
    {
        return same_request(&state, first, &request, caller.as_str()).await;
    }
    let conversation_id = match (&request, &key) {
        (NewConversation::Direct { recipient }, _) => {
            direct_conversation_id(caller.as_str(), recipient)
        }
        (NewConversation::Group { .. }, Some(key)) => keyed_group_id(caller.as_str(), key),
        (NewConversation::Group { .. }, None) => Uuid::new_v4(),
    };
    // A direct conversation that exists already is returned as it is, with no new event
    // (unless a key is to be recorded with it).
    if key.is_none()
        && matches!(request, NewConversation::Direct { .. })
        && state.store.conversation_exists(conversation_id).await?
    {
        return Ok(Json(ConversationRef { conversation_id }));
    }
    let (is_group, title, recipients) = match &request {
        NewConversation::Direct { recipient } => (false, String::new(), vec![recipient.clone()]),
        NewConversation::Group { title, recipients } => (true, title.clone(), recipients.clone()),
    };
    let mut participants: Vec<String> = recipients;
    participants.push(caller.as_str().to_owned());
    participants.sort();
    let event = Event::ConversationCreated(ConversationCreated {
        conversation_id,
        created_by: caller.as_str().to_owned(),
        participants,
        is_group,
        title,
        idempotency_key: key.clone(),
    });
    state.writer.append(&Envelope::new(event)).await?;
    match &key {
        None => {
            wait_for_projection(&state, || async {
                let exists = state.store.conversation_exists(conversation_id).await?;
                Ok(exists.then_some(()))
            })
            .await?;
            Ok(Json(ConversationRef { conversation_id }))
        }
        Some(key) => {
            // The first request under the key in the log wins (a concurrent one may have).
            let first = wait_for_projection(&state, || {
                state.store.keyed_conversation(caller.as_str(), key)
            })
            .await?;
            same_request(&state, first, &request, caller.as_str()).await
        }
    }
}

/// The answer to a request under a key already used: the first conversation if `request` is
/// the request that created it, a 422 otherwise.
async fn same_request(
    state: &AppState,
    first: Uuid,
    request: &NewConversation,
    caller: &str,
) -> Result<Json<ConversationRef>, ApiError> {
    let view = state.store.conversation(first, caller).await?;
    let participants = state.store.participants(first).await?;
    let (Some(view), Some(participants)) = (view, participants) else {
        return Err(ApiError::ProjectionLagging);
    };
    let same = match request {
        NewConversation::Direct { recipient } => {
            !view.is_group && first == direct_conversation_id(caller, recipient)
        }
        NewConversation::Group { title, recipients } => {
            let mut asked: Vec<&str> = recipients.iter().map(String::as_str).collect();
            asked.push(caller);
            asked.sort_unstable();
            view.is_group
                && view.title == *title
                && asked
                    .iter()
                    .copied()
                    .eq(participants.iter().map(String::as_str))
        }
    };
    if same {
        Ok(Json(ConversationRef {
            conversation_id: first,
        }))
    } else {
        Err(ApiError::IdempotencyKeyReused(first))
    }
}

/// The `Idempotency-Key` header: 1 to 255 printable ASCII characters, or absent.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || ApiError::BadRequest {
        code: "invalid_header",
        message: format!(
            "Invalid header 'Idempotency-Key': 1 to {} printable ASCII characters",
            events::MAX_IDEMPOTENCY_KEY_CHARS
        ),
    };
    let key = value.to_str().map_err(|_| invalid())?;
    // The draft's examples quote the key (a structured-field string); the quotes are not part of it.
    let key = match key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
        Some(inner) if !inner.is_empty() => inner,
        _ => key,
    };
    let printable = key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if key.is_empty() || key.len() > events::MAX_IDEMPOTENCY_KEY_CHARS || !printable {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// Polls the projection until `projected` finds what was appended, with a short backoff.
async fn wait_for_projection<T, F, Fut>(state: &AppState, projected: F) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + state.projection_wait;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(found) = projected().await? {
            return Ok(found);
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("projection did not catch up in time");
            return Err(ApiError::ProjectionLagging);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// A validated `POST /conversation` body.
#[derive(Debug, PartialEq, Eq)]
enum NewConversation {
    Direct {
        recipient: String,
    },
    Group {
        title: String,
        recipients: Vec<String>,
    },
}

impl NewConversation {
    fn parse(body: &[u8], caller: &str) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|_| ApiError::invalid("body", "must be a JSON object"))?;
        let Value::Object(fields) = value else {
            return Err(ApiError::invalid("body", "must be a JSON object"));
        };
        let is_group = match fields.get("isGroup") {
            None | Some(Value::Null) => return Err(ApiError::missing("isGroup")),
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::invalid("isGroup", "must be a boolean")),
        };
        let recipients = match fields.get("recipientIdArr") {
            None | Some(Value::Null) => return Err(ApiError::missing("recipientIdArr")),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(ApiError::invalid(
                    "recipientIdArr",
                    "must be an array of user ids",
                ));
            }
        };
        let mut seen = BTreeSet::new();
        let mut ids = Vec::with_capacity(recipients.len());
        for item in recipients {
            let Value::String(id) = item else {
                return Err(ApiError::invalid(
                    "recipientIdArr",
                    "every recipient must be a user id string",
                ));
            };
            user_id("recipientIdArr", id)?;
            if id == caller {
                return Err(ApiError::invalid(
                    "recipientIdArr",
                    "the creator may not list themself",
                ));
            }
            if !seen.insert(id.as_str()) {
                return Err(ApiError::invalid(
                    "recipientIdArr",
                    "recipients may not repeat",
                ));
            }
            ids.push(id.clone());
        }
        if !is_group {
            // A direct conversation's title is always "": a title sent for it is ignored.
            return match <[String; 1]>::try_from(ids) {
                Ok([recipient]) => Ok(Self::Direct { recipient }),
                Err(_) => Err(ApiError::invalid(
                    "recipientIdArr",
                    "a direct conversation has exactly one recipient",
                )),
            };
        }
        if ids.len() < 2 {
            return Err(ApiError::invalid(
                "recipientIdArr",
                "a group has at least two recipients",
            ));
        }
        if ids.len() > MAX_RECIPIENTS {
            return Err(ApiError::invalid(
                "recipientIdArr",
                &format!("a group has at most {MAX_RECIPIENTS} recipients"),
            ));
        }
        let title = match fields.get("title") {
            None | Some(Value::Null) => return Err(ApiError::missing("title")),
            Some(Value::String(t)) => t,
            Some(_) => return Err(ApiError::invalid("title", "must be a string")),
        };
        admission::title(title).map_err(|flaw| match flaw {
            Flaw::Nul => ApiError::invalid("title", &flaw.to_string()),
            _ => ApiError::invalid(
                "title",
                &format!("a group title has 1 to {MAX_TITLE_CHARS} characters, not all whitespace"),
            ),
        })?;
        Ok(Self::Group {
            title: title.clone(),
            recipients: ids,
        })
    }
}

/// A user id in `field` by the log's rule ([`admission::user_id`]): a 400 naming the field.
fn user_id(field: &str, id: &str) -> Result<(), ApiError> {
    admission::user_id(id).map_err(|flaw| match flaw {
        Flaw::Nul => ApiError::invalid(field, &format!("a user id {flaw}")),
        _ => ApiError::invalid(
            field,
            &format!("a user id has 1 to {MAX_USER_ID_CHARS} characters"),
        ),
    })
}

/// `GET /conversation/direct/{userId}`: the caller's direct conversation with a user, or `null`.
pub async fn direct_conversation(
    State(state): Shared,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Option<ConversationRef>>, ApiError> {
    let Path(other) = path.map_err(|_| ApiError::invalid("userId", "must be a user id"))?;
    user_id("userId", &other)?;
    if other == caller.as_str() {
        return Err(ApiError::invalid(
            "userId",
            "a user has no direct conversation with themself",
        ));
    }
    let conversation_id = direct_conversation_id(caller.as_str(), &other);
    let exists = state.store.conversation_exists(conversation_id).await?;
    Ok(Json(exists.then_some(ConversationRef { conversation_id })))
}

/// `GET /conversations[?isRead=true|false]`: the hottest route (the extension's unread poll).
pub async fn list_conversations(
    State(state): Shared,
    Caller(caller): Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Vec<ConversationSummary>>, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::invalid("query", "is not a valid query string"))?;
    let is_read = match query.get("isRead").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(ApiError::invalid("isRead", "must be true or false")),
    };
    Ok(Json(
        state
            .store
            .conversations_of(caller.as_str(), is_read)
            .await?,
    ))
}

/// Checks that the conversation exists and that the caller takes part in it: both fail with the
/// same 404, so a stranger cannot tell an existing conversation from a missing one.
async fn participants_as(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    caller: &auth::UserId,
) -> Result<(Uuid, Arc<[String]>), ApiError> {
    let id = conversation_id(path)?;
    match state.store.participants(id).await? {
        Some(participants) if participants.iter().any(|p| p == caller.as_str()) => {
            Ok((id, participants))
        }
        _ => Err(ApiError::ConversationNotFound),
    }
}

/// `GET /conversations/{conversationId}`.
pub async fn get_conversation(
    State(state): Shared,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ConversationView>, ApiError> {
    let (id, _) = participants_as(&state, path, &caller).await?;
    let view = state
        .store
        .conversation(id, caller.as_str())
        .await?
        .ok_or(ApiError::ConversationNotFound)?;
    Ok(Json(view))
}

/// `GET /conversations/{conversationId}/messages?limit&offset&order`.
pub async fn list_messages(
    State(state): Shared,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Vec<Message>>, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::invalid("query", "is not a valid query string"))?;
    let page = page(&query)?;
    let (id, _) = participants_as(&state, path, &caller).await?;
    Ok(Json(state.store.messages(id, page).await?))
}

/// Paging parameters: `limit` 1..=100 (20), `offset` >= 0 (0), `order` asc|desc (desc).
fn page(query: &HashMap<String, String>) -> Result<Page, ApiError> {
    let limit = match query.get("limit") {
        None => 20,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::invalid("limit", "must be an integer from 1 to 100"))?,
    };
    let offset = match query.get("offset") {
        None => 0,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| ApiError::invalid("offset", "must be an integer of at least 0"))?,
    };
    let order = match query.get("order").map(String::as_str) {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(_) => return Err(ApiError::invalid("order", "must be asc or desc")),
    };
    Ok(Page {
        limit,
        offset,
        order,
    })
}

/// `GET /conversations/{conversationId}/participants`: every participant, the caller included.
pub async fn list_participants(
    State(state): Shared,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<String>>, ApiError> {
    let (_, participants) = participants_as(&state, path, &caller).await?;
    Ok(Json(participants.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<NewConversation, String> {
        NewConversation::parse(body.as_bytes(), "me").map_err(|e| e.to_string())
    }

    #[test]
    fn direct_ignores_title_and_needs_one_recipient() {
        assert_eq!(
            parse(r#"{"recipientIdArr":["bob"],"isGroup":false,"title":"x"}"#),
            Ok(NewConversation::Direct {
                recipient: "bob".into()
            })
        );
        assert_eq!(
            parse(r#"{"recipientIdArr":["bob"],"isGroup":false}"#),
            Ok(NewConversation::Direct {
                recipient: "bob".into()
            })
        );
        assert!(
            parse(r#"{"recipientIdArr":["a","b"],"isGroup":false}"#)
                .unwrap_err()
                .contains("'recipientIdArr'")
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(
            parse(r#"{"recipientIdArr":["a","b"]}"#).unwrap_err(),
            "Missing 'isGroup' in event body"
        );
        assert!(
            parse(r#"{"recipientIdArr":["a","b"],"isGroup":"true"}"#)
                .unwrap_err()
                .contains("'isGroup'")
        );
        assert_eq!(
            parse(r#"{"isGroup":true}"#).unwrap_err(),
            "Missing 'recipientIdArr' in event body"
        );
        assert_eq!(
            parse(r#"{"recipientIdArr":["a","b"],"isGroup":true}"#).unwrap_err(),
            "Missing 'title' in event body"
        );
        for bad_title in [
            r#""""#,
            r#""   ""#,
            r#""a\u0000b""#,
            "5",
            &format!("\"{}\"", "é".repeat(301)),
        ] {
            let body =
                format!(r#"{{"recipientIdArr":["a","b"],"isGroup":true,"title":{bad_title}}}"#);
            assert!(parse(&body).unwrap_err().contains("'title'"), "{body}");
        }
        for bad in [
            r#"["a\u0000","b"]"#,
            r#"["a"]"#,
            r#"["a","a"]"#,
            r#"["me","a"]"#,
            r#"["","a"]"#,
            r#"[1,"a"]"#,
            r#""a""#,
        ] {
            let body = format!(r#"{{"recipientIdArr":{bad},"isGroup":true,"title":"t"}}"#);
            assert!(
                parse(&body).unwrap_err().contains("'recipientIdArr'"),
                "{body}"
            );
        }
        assert!(parse("[]").unwrap_err().contains("'body'"));
        assert!(parse("nope").unwrap_err().contains("'body'"));
    }

    #[test]
    fn group_title_counts_characters_not_bytes() {
        let title = "é".repeat(300);
        let body = format!(r#"{{"recipientIdArr":["a","b"],"isGroup":true,"title":"{title}"}}"#);
        assert!(parse(&body).is_ok());
    }

    #[test]
    fn paging_defaults_and_limits() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let p = page(&q(&[])).unwrap();
        assert_eq!((p.limit, p.offset, p.order), (20, 0, Order::Desc));
        for (k, v) in [
            ("limit", "0"),
            ("limit", "101"),
            ("limit", "x"),
            ("offset", "-1"),
            ("order", "up"),
        ] {
            let err = page(&q(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(&format!("'{k}'")), "{err}");
        }
    }
}
