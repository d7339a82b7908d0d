//! One WebSocket connection: authenticate and register before the upgrade, then read frames
//! one at a time (in order) while a writer task drains the connection's bounded outbox.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use events::{Envelope, Event, MessageSent, MessagesRead, Timestamp};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rate_limit::Verdict;
use telemetry::error_response;
use uuid::Uuid;

use crate::catch_up::{self, Replay};
use crate::cursor::{self, Cursor};
use crate::delivery::Gate;
use crate::frames::{self, Code, Command, Rejection, SendMessage, ServerFrame};
use crate::outbox::{Ending, Outbox, Work};
use crate::recent_sends::{Budget, Claim};
use crate::{
    CLOSE_DELIVERY_LOST, CLOSE_GOING_AWAY, CLOSE_TOO_BIG, CLOSE_TOO_SLOW, CLOSE_UNRESPONSIVE, Edge,
};

/// `GET <base>/?Authorization=<jwt>`: 401 without a valid token, 429 over the per-user limit,
/// otherwise the upgrade.
pub async fn upgrade(
    State(edge): State<Arc<Edge>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = token_from_query(query.as_deref()).or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(Cow::Borrowed)
    });
    let Some(token) = token else {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing 'Authorization'",
        );
    };
    // One deadline for authenticating and registering (CHAT_WS_UPGRADE_TIMEOUT_SECS); the
    // request head itself is bounded by the listener's header timeout.
    let deadline = tokio::time::Instant::now() + edge.limits.upgrade_timeout;
    let Ok(verified) = tokio::time::timeout_at(deadline, edge.verifier.verify(&token)).await else {
        return upgrade_timed_out();
    };
    let user = match verified {
        Ok(user) => user.into_string(),
        Err(e) if e.is_server_fault() => {
            tracing::error!(error = %e, "cannot verify tokens");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "cannot verify the token now",
            );
        }
        Err(e) => {
            metrics::counter!("chat_ws_refused_total", "reason" => "unauthorized").increment(1);
            return error_response(StatusCode::UNAUTHORIZED, e.code(), "invalid token");
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return error_response(rejection.status(), "bad_upgrade", &rejection.body_text());
        }
    };
    if *edge.shutdown.borrow() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this edge is shutting down",
        );
    }
    let connection = Uuid::new_v4();
    let registered = tokio::time::timeout_at(
        deadline,
        edge.presence
            .register(&user, connection, edge.limits.max_connections_per_user),
    )
    .await;
    let Ok(registered) = registered else {
        // The registration may have landed: take it back (it would expire within one TTL).
        let edge = edge.clone();
        tokio::spawn(async move {
            let _ = edge.presence.unregister(&user, connection).await;
        });
        return upgrade_timed_out();
    };
    match registered {
        Ok(true) => {}
        Ok(false) => {
            metrics::counter!("chat_ws_refused_total", "reason" => "too_many_connections")
                .increment(1);
            return error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "this user has too many open connections",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot register a connection in Redis");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "cannot register the connection now",
            );
        }
    }
    let failed = (edge.clone(), user.clone());
    upgrade
        .max_message_size(edge.limits.max_frame_bytes)
        .max_frame_size(edge.limits.max_frame_bytes)
        // Small buffers keep an idle connection cheap (tungstenite fills its read buffer on
        // the first poll); frames are small, and a larger one is read in several calls.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .on_failed_upgrade(move |e| {
            tracing::debug!(error = %e, "upgrade failed");
            let (edge, user) = failed;
            tokio::spawn(async move {
                let _ = edge.presence.unregister(&user, connection).await;
            });
        })
        .on_upgrade(move |socket| Handler::new(edge, user, connection).run(socket))
}

/// Bytes tungstenite reads at once into each connection's buffer, which every connection keeps
/// (a `send-message` frame is a few hundred bytes).
const READ_BUFFER_BYTES: usize = 512;

/// The raw token of `?Authorization=<jwt>`: the client does not URL-encode it (a JWT needs no
/// encoding), but a percent-encoded one is decoded too.
fn token_from_query(query: Option<&str>) -> Option<Cow<'_, str>> {
    query?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.eq_ignore_ascii_case("Authorization")
            .then(|| percent_encoding::percent_decode_str(value).decode_utf8_lossy())
    })
}

fn upgrade_timed_out() -> Response {
    metrics::counter!("chat_ws_refused_total", "reason" => "upgrade_timeout").increment(1);
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the connection could not be authenticated and registered in time",
    )
}

/// One connection's reader: frames are handled one after another, so they are appended in the
/// order they were sent.
pub struct Handler {
    edge: Arc<Edge>,
    user: String,
    connection: Uuid,
    /// Where this connection's frames (deliveries and answers) queue for the writer.
    outbox: Outbox,
    /// The log positions from which this connection has every live delivery (`None` if the
    /// edge had not positioned on the log yet).
    join: Option<Vec<i64>>,
    /// Live deliveries are held back: no frame came yet, and the catch-up grace is running.
    holding: bool,
}

impl Handler {
    fn new(edge: Arc<Edge>, user: String, connection: Uuid) -> Self {
        let holding = !edge.limits.catch_up_grace.is_zero();
        let tag = cursor::topic_tag(&edge.kafka.topic);
        let gate = if holding {
            Gate::holding(tag, edge.limits.outbound_queue)
        } else {
            Gate {
                tag,
                ..Gate::default()
            }
        };
        let outbox = Outbox::new(connection, edge.limits.outbound_queue, gate);
        Self {
            edge,
            user,
            connection,
            outbox,
            join: None,
            holding,
        }
    }
}

impl Handler {
    async fn run(mut self, socket: WebSocket) {
        let (sink, mut stream) = socket.split();
        self.join = self.edge.held.insert(&self.user, self.outbox.clone());
        let grace = tokio::time::sleep(self.edge.limits.catch_up_grace);
        tokio::pin!(grace);
        metrics::gauge!("chat_open_connections").increment(1.0);
        tracing::debug!(user = %self.user, connection = %self.connection, "connected");

        let mut writer = tokio::spawn(write_frames(
            sink,
            self.outbox.clone(),
            self.edge.limits.close_grace,
        ));
        let mut shutdown = self.edge.shutdown.clone();
        let every = self.edge.limits.ping_interval;
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Pings sent since the client was last heard from (any frame counts as an answer).
        let mut unanswered = 0u32;
        let ending = loop {
            tokio::select! {
                _ = crate::stopping(&mut shutdown) => break Some(Ending::GoingAway),
                _ = &mut writer => break None,
                () = &mut grace, if self.holding => self.release(),
                _ = pings.tick() => {
                    if unanswered >= self.edge.limits.max_missed_pongs {
                        metrics::counter!("chat_ws_unresponsive_disconnects_total").increment(1);
                        break Some(Ending::Unresponsive);
                    }
                    unanswered += 1;
                    self.outbox.ping();
                }
                frame = stream.next() => {
                    if matches!(frame, Some(Ok(_))) {
                        unanswered = 0;
                    }
                    match frame {
                    // Boxed: the handling of a frame (an append, a catch-up) is a large future,
                    // and an idle connection should not carry its room.
                    Some(Ok(Message::Text(text))) => Box::pin(self.handle(&text)).await,
                    Some(Ok(Message::Binary(_))) => self.reject(Rejection::new(
                        Code::InvalidFrame,
                        "binary frames are not supported; send JSON text",
                    )),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break Some(Ending::ClientGone),
                    Some(Err(e)) => break Some(if is_too_big(e) { Ending::TooBig } else { Ending::ClientGone }),
                    }
                }
            }
        };

        // No more deliveries, then the writer closes the socket; the registration goes last but
        // before the socket is dropped, so a graceful shutdown leaves nothing behind in Redis.
        self.edge.held.remove(&self.user, self.connection);
        if let Some(ending) = ending {
            self.outbox.close(ending);
            let _ = tokio::time::timeout(self.edge.limits.close_grace * 2, &mut writer).await;
        }
        // A writer still blocked on a peer that reads nothing must not keep the socket open.
        writer.abort();
        if let Err(e) = self
            .edge
            .presence
            .unregister(&self.user, self.connection)
            .await
        {
            tracing::warn!(error = %e, connection = %self.connection, "cannot unregister; it will expire");
        }
        metrics::gauge!("chat_open_connections").decrement(1.0);
        tracing::debug!(user = %self.user, connection = %self.connection, "disconnected");
        drop(stream);
    }

    async fn handle(&mut self, text: &str) {
        let command = frames::parse(text);
        if self.holding && !matches!(command, Ok(Command::CatchUp { .. })) {
            self.release();
        }
        let command = match command {
            Ok(command) => command,
            Err(rejection) => return self.reject(rejection),
        };
        let result = match command {
            Command::CatchUp { cursor } => {
                metrics::counter!("chat_ws_frames_total", "action" => "catch-up").increment(1);
                self.catch_up(&cursor).await
            }
            Command::Heartbeat => {
                metrics::counter!("chat_ws_frames_total", "action" => "heartbeat").increment(1);
                match self
                    .limit("heartbeat", self.edge.limits.rates.heartbeat)
                    .await
                {
                    Ok(()) => {
                        let me = [(self.user.clone(), self.connection)];
                        if let Err(e) = self.edge.presence.refresh(&me).await {
                            tracing::warn!(error = %e, "cannot refresh a registration");
                        }
                        Ok(())
                    }
                    Err(rejection) => Err(rejection),
                }
            }
            Command::SendMessage(send) => {
                metrics::counter!("chat_ws_frames_total", "action" => "send-message").increment(1);
                let echo = |r: Rejection| Rejection {
                    temp_message_id: Some(send.temp_message_id.clone()),
                    conversation_id: Some(send.conversation_id.to_string()),
                    ..r
                };
                self.send_message(&send).await.map_err(echo)
            }
            Command::ReadMessages { conversation_id } => {
                metrics::counter!("chat_ws_frames_total", "action" => "read-messages").increment(1);
                self.read_messages(conversation_id)
                    .await
                    .map_err(|r| Rejection {
                        conversation_id: Some(conversation_id.to_string()),
                        ..r
                    })
            }
        };
        if let Err(rejection) = result {
            self.reject(rejection);
        }
    }

    async fn check_participant(&self, conversation: Uuid) -> Result<(), Rejection> {
        match self.edge.store.participants(conversation).await {
            Ok(Some(participants)) if participants.contains(&self.user) => Ok(()),
            // Not a participant: the very answer of a missing conversation (no oracle).
            Ok(_) => Err(Rejection::new(
                Code::UnknownConversation,
                "no such conversation",
            )),
            Err(e) => {
                tracing::error!(error = %e, "cannot read participants");
                Err(unavailable("the conversation cannot be checked now"))
            }
        }
    }

    /// Spends one frame of this user's budget for `action`, or refuses with `rate_limited`.
    async fn limit(&self, action: &'static str, rate: rate_limit::Rate) -> Result<(), Rejection> {
        match self.edge.limiter.check(action, &self.user, rate).await {
            Verdict::Allowed => Ok(()),
            Verdict::Limited { retry_after } => Err(Rejection::rate_limited(retry_after)),
        }
    }

    async fn send_message(&self, send: &SendMessage) -> Result<(), Rejection> {
        let sent = &self.edge.recent_sends;
        let (user, conversation, temp) = (&self.user, send.conversation_id, &send.temp_message_id);
        // Named by what names it: every attempt of this message has this id.
        let message_id = events::message_id(user, conversation, temp);
        let lease = Uuid::new_v4();
        // One round trip spends the send budget and claims the tempMessageId.
        let budget = Budget {
            action: "send-message",
            key: self.edge.limiter.key("send-message", user),
            rate: self.edge.limits.rates.send_message,
        };
        let began = std::time::Instant::now();
        let claim = sent
            .claim(user, conversation, temp, Timestamp::now(), lease, &budget)
            .await;
        metrics::histogram!("chat_ws_send_claim_seconds").record(began.elapsed().as_secs_f64());
        let sent_at = match claim {
            Ok(Claim::Append(sent_at)) => sent_at,
            Ok(Claim::Limited(retry_after)) => return Err(Rejection::rate_limited(retry_after)),
            Ok(Claim::Sent(frame)) => {
                // A retry: answer with the original, append nothing.
                self.outbox.push(frame.into());
                return Ok(());
            }
            Ok(Claim::InFlight) => {
                return Err(Rejection::new(
                    Code::SendInProgress,
                    "a message with this tempMessageId is being sent",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot claim a tempMessageId in Redis");
                return Err(unavailable("the message cannot be sent now; retry"));
            }
        };
        self.edge.send_clock.start(message_id, began);
        // From the claim to the append's outcome, the lease is held.
        let work = async {
            self.check_participant(conversation).await?;
            let event = MessageSent {
                conversation_id: conversation,
                message_id,
                sender_id: self.user.clone(),
                content: send.content.clone(),
                temp_message_id: temp.clone(),
                sent_at,
            };
            let frame = ServerFrame::NewMessage {
                message_id,
                temp_message_id: temp,
                conversation_id: conversation,
                sender_id: &self.user,
                content: &send.content,
                sent_at,
                cursor: None,
            }
            .to_json();
            let envelope = Envelope::new(Event::MessageSent(event));
            match self.edge.writer.append(&envelope).await {
                Ok(_) => Ok(frame),
                Err(e) => {
                    tracing::warn!(error = %e, "send-message not appended");
                    Err(unavailable(
                        "the event log did not acknowledge the message; retry with the same tempMessageId",
                    ))
                }
            }
        };
        match sent.holding(user, conversation, temp, lease, work).await {
            Ok(frame) => {
                // Written with others shortly; its outcome is logged there.
                drop(sent.confirm(user, conversation, temp, &frame));
                Ok(())
            }
            Err(rejection) => {
                self.edge.send_clock.stop(message_id);
                // Refused by the check, or not appended: a retry may append at once.
                if let Err(e) = sent.abandon(user, conversation, temp, lease).await {
                    tracing::warn!(error = %e, "cannot release a tempMessageId lease");
                }
                Err(rejection)
            }
        }
    }

    async fn read_messages(&self, conversation: Uuid) -> Result<(), Rejection> {
        self.limit("read-messages", self.edge.limits.rates.read_messages)
            .await?;
        self.check_participant(conversation).await?;
        let envelope = Envelope::new(Event::MessagesRead(MessagesRead {
            conversation_id: conversation,
            user_id: self.user.clone(),
        }));
        self.edge
            .writer
            .append(&envelope)
            .await
            .map(drop)
            .map_err(|e| {
                tracing::warn!(error = %e, "read-messages not appended");
                unavailable("the event log is unavailable; nothing was marked read")
            })
    }

    /// Lets the held live deliveries through, with no catch-up.
    fn release(&mut self) {
        self.holding = false;
        self.edge.held.release(&self.outbox);
    }

    /// Replays what followed `cursor`, then the held live deliveries, then `caught-up`. Only
    /// as the connection's first frame: whatever happens, the connection is live after it.
    async fn catch_up(&mut self, cursor: &str) -> Result<(), Rejection> {
        if !self.holding {
            return Err(Rejection::catch_up_too_late());
        }
        self.holding = false;
        let replayed = self.replay(cursor).await;
        if replayed.is_err() {
            self.edge.held.release(&self.outbox);
        }
        replayed
    }

    async fn replay(&self, text: &str) -> Result<(), Rejection> {
        self.limit("catch-up", self.edge.limits.rates.catch_up)
            .await?;
        let Some(join) = self.join.as_deref() else {
            return Err(unavailable(
                "this edge is not reading the log yet; reconnect",
            ));
        };
        let tag = cursor::topic_tag(&self.edge.kafka.topic);
        let from = Cursor::decode(text, tag, join.len()).map_err(Rejection::invalid_cursor)?;
        let limits = self.edge.limits.catch_up;
        let replay = catch_up::replay(
            &self.edge.kafka,
            &self.edge.store,
            &self.user,
            &from.next,
            join,
            limits,
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot read the log back for a catch-up");
            unavailable("the log cannot be read back now; retry")
        })?;
        // The client already has everything before its cursor: where it is ahead of this edge
        // (it came from an edge that had read further), live frames below it are dropped.
        let floor: Option<Arc<[i64]>> = from
            .next
            .iter()
            .zip(join)
            .any(|(f, j)| f > j)
            .then(|| from.next.clone().into());
        let gap = match replay {
            Replay::Frames(frames) => {
                metrics::counter!("chat_ws_catch_ups_total", "outcome" => "caught_up").increment(1);
                metrics::counter!("chat_ws_catch_up_frames_total").increment(frames.len() as u64);
                for frame in frames {
                    self.send_waiting(frame).await;
                }
                None
            }
            Replay::BeyondTheEnd => {
                return Err(Rejection::invalid_cursor(cursor::CursorFlaw::Foreign));
            }
            Replay::Gap(gap) => {
                metrics::counter!("chat_ws_catch_ups_total", "outcome" => gap.as_str())
                    .increment(1);
                Some(gap)
            }
        };
        // What was held meanwhile, a queue's worth at a time, then the rest and the last frame
        // at once, before any new live delivery.
        loop {
            let held = self.edge.held.take_held(&self.outbox, floor.clone());
            if held.len() < self.outbox.room() / 2 {
                for frame in held {
                    self.outbox.push(frame);
                }
                break;
            }
            for frame in held {
                self.send_waiting(frame).await;
            }
        }
        self.edge.held.open(&self.outbox, floor, |now| {
            let now = cursor::encode(tag, now);
            Some(match gap {
                None => ServerFrame::CaughtUp { cursor: &now }.to_json(),
                Some(gap) => ServerFrame::CatchUpGap {
                    reason: gap.as_str(),
                    cursor: &now,
                }
                .to_json(),
            })
        });
        Ok(())
    }

    /// Queues a frame, waiting for room; a client that reads nothing for long is too slow.
    async fn send_waiting(&self, frame: Utf8Bytes) {
        self.outbox
            .push_waiting(frame, self.edge.limits.catch_up.patience)
            .await;
    }

    fn reject(&self, rejection: Rejection) {
        metrics::counter!("chat_ws_rejections_total", "code" => rejection.code.as_str())
            .increment(1);
        self.outbox.push(rejection.to_frame().into());
    }
}

fn unavailable(message: &str) -> Rejection {
    Rejection::new(Code::Unavailable, message)
}

fn is_too_big(error: axum::Error) -> bool {
    matches!(
        error
            .into_inner()
            .downcast::<tungstenite::Error>()
            .map(|e| *e),
        Ok(tungstenite::Error::Capacity(_))
    )
}

/// The writer task: drains the outbox into the socket until the connection must close. Every
/// write races the outbox's end (a full queue closes it as too slow), so a client that stopped
/// reading cannot pin this task.
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Outbox,
    close_grace: std::time::Duration,
) {
    let mut batch = VecDeque::new();
    let ending = loop {
        match outbox.next(&mut batch).await {
            Work::End(ending) => break ending,
            Work::Write { ping } => {
                let write = async {
                    if ping {
                        sink.feed(Message::Ping(Default::default())).await?;
                    }
                    // Everything queued so far, in one flush.
                    for frame in batch.drain(..) {
                        sink.feed(Message::Text(frame)).await?;
                    }
                    sink.flush().await
                };
                tokio::select! {
                    biased;
                    ending = outbox.ended() => break ending,
                    written = write => if written.is_err() { return },
                }
            }
        }
    };
    let (code, reason) = match ending {
        Ending::ClientGone => {
            let _ = tokio::time::timeout(close_grace, sink.close()).await;
            return;
        }
        Ending::GoingAway => (CLOSE_GOING_AWAY, "server shutting down"),
        Ending::TooBig => (CLOSE_TOO_BIG, "frame too large"),
        Ending::Unresponsive => (CLOSE_UNRESPONSIVE, "pings unanswered"),
        Ending::TooSlow => (CLOSE_TOO_SLOW, "too slow: outbound queue full"),
        Ending::DeliveryLost => (
            CLOSE_DELIVERY_LOST,
            "a delivery was lost: reconnect and read history",
        ),
    };
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(close_grace, sink.send(Message::Close(Some(frame)))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_raw_token() {
        assert_eq!(
            token_from_query(Some("Authorization=a.b-c_d.e")).as_deref(),
            Some("a.b-c_d.e")
        );
        assert_eq!(
            token_from_query(Some("x=1&authorization=Bearer%20t")).as_deref(),
            Some("Bearer t")
        );
        assert_eq!(token_from_query(Some("x=1")), None);
        assert_eq!(token_from_query(None), None);
    }
}
