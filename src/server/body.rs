//! `WS /ws/body`: the robot body's connection (`docs/body-protocol.md`). The brain sends
//! `tool_call` and `cancel`; the body answers `status`. A bearer token guards the door, one
//! body is attached at a time (the newest: a body that reconnects replaces its old session,
//! which is closed with 4001), the socket is pinged and closed when idle, and whatever a
//! body sends that is not a valid report (bad JSON, unknown tasks, states out of order,
//! floods) is answered with an error message on the socket and counted, while the ledger
//! and the brain carry on untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use creature_actors::ports::{BodyCommand, BodyReport, BodyState};
use creature_actors::tasks::{TaskError, TasksHandle};
use futures::{Sink, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::AppState;
use super::error::ApiError;
use super::ws::{
    CloseReason, LinkTiming, SessionEnd, finish, kicked_or_stopping, next_within, pinger,
    send_within,
};

/// Tool calls waiting to be written to the body's socket.
const OUTBOX: usize = 256;
/// Replies (errors) waiting for the writer.
const REPLIES: usize = 64;
/// Largest message a body may send.
const MAX_MESSAGE: usize = 64 * 1024;

/// What the body socket has seen, for `/api/state` and `/metrics`.
#[derive(Debug, Default)]
pub(super) struct BodyCounters {
    pub(super) sessions: AtomicU64,
    pub(super) refused_auth: AtomicU64,
    pub(super) bad_messages: AtomicU64,
    pub(super) rate_limited: AtomicU64,
}

pub(super) async fn body(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    State(state): State<AppState>,
) -> Response {
    let counters = Arc::clone(&state.inner.body);
    // The access token or `[body] token` (the guard's rule: not the development one while
    // auth is on), compared in constant time.
    let presented = super::guard::presented_tokens(&headers);
    match presented.first() {
        None => {
            counters.refused_auth.fetch_add(1, Ordering::Relaxed);
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send `Authorization: Bearer <token>` with the access token or [body] token from the brain's config",
            )
            .into_response();
        }
        Some(_) if !presented.iter().any(|t| state.inner.guard.body_token_ok(t)) => {
            counters.refused_auth.fetch_add(1, Ordering::Relaxed);
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong body token")
                .into_response();
        }
        Some(_) => {}
    }
    let tasks = state.brain().tasks.clone();
    let (outbox, commands) = mpsc::channel(OUTBOX);
    // The newest body takes the seat: a robot that reconnects after its Wi-Fi dropped is
    // not kept out by its own dead connection. The old session's outbox closes, so its
    // socket is closed with 4001, and this one gets every unfinished task again.
    let session = match tasks.attach_body(outbox).await {
        Ok(session) => session,
        Err(e) => return ApiError::from(e).into_response(),
    };
    counters.sessions.fetch_add(1, Ordering::Relaxed);
    // However the session ends (or if the upgrade never completes), the body is detached.
    let detach = DetachOnDrop {
        tasks: tasks.clone(),
        session,
    };
    let rate = state.config().body.max_messages_per_sec;
    let timing = LinkTiming::from_config(&state.config().server);
    ws.protocols(["creature"])
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _session = state.session();
            let _detach = detach;
            let (sink, stream) = socket.split();
            let stopping = kicked_or_stopping(std::future::pending(), state.stopping());
            body_session(
                sink, stream, commands, &tasks, session, rate, timing, &counters, stopping,
            )
            .await;
        })
}

struct DetachOnDrop {
    tasks: TasksHandle,
    session: u64,
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        self.tasks.detach_body(self.session);
    }
}

/// Messages a body may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum FromBody {
    Status {
        id: String,
        state: BodyState,
        #[serde(default)]
        detail: Option<String>,
        #[serde(default)]
        progress: Option<f32>,
    },
    /// Optional introduction; logged.
    Hello {
        #[serde(default)]
        name: Option<String>,
    },
}

/// A token bucket over the body's messages: `rate` a second, bursts of twice that. A body
/// past the rate is slowed, not dropped: the session stops reading its socket until the
/// next token is due, so the body's own writes back up (TCP backpressure) and every report
/// it sent still arrives, in order.
struct RateLimit {
    rate: f64,
    tokens: f64,
    /// When `tokens` was last brought up to date; while the body is over the rate, the
    /// moment its next message is due, which is in the future.
    last: Instant,
    /// Messages in a row that had to wait for their token.
    throttled_in_a_row: u64,
}

/// What the rate limit makes of one message.
#[derive(Debug, PartialEq)]
enum Admit {
    /// Within the rate: read on.
    Free,
    /// Past the rate: handle it, then read nothing more until `paused_until`.
    Throttled,
    /// Past the rate for ten seconds without a break: disconnect the body.
    Flooding,
}

impl RateLimit {
    fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimit {
            rate,
            tokens: 2.0 * rate,
            last: now,
            throttled_in_a_row: 0,
        }
    }

    /// Account for one message read at `now`.
    fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(2.0 * self.rate);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.throttled_in_a_row = 0;
            return Admit::Free;
        }
        self.throttled_in_a_row += 1;
        if self.throttled_in_a_row as f64 > 10.0 * self.rate {
            return Admit::Flooding;
        }
        // This message spends the token that is due next; nothing is read until then.
        self.last += Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
        self.tokens = 0.0;
        Admit::Throttled
    }

    /// While the body is over the rate: when its next message may be read.
    fn paused_until(&self, now: Instant) -> Option<Instant> {
        (self.last > now).then_some(self.last)
    }
}

fn error_message(error: &str, detail: String, id: Option<&str>) -> String {
    let mut v = json!({"type": "error", "error": error, "detail": detail});
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    v.to_string()
}

fn text(s: String) -> Message {
    Message::Text(s.into())
}

/// Run one body's session until either side goes away, the body goes idle, a newer body
/// replaces it (the tasks actor drops `commands`: the socket is closed with 4001), or
/// `kick` ends it with its reason (the brain stopping: 1001).
/// The writer sends tool calls, replies and pings; the reader applies reports.
#[allow(clippy::too_many_arguments)]
pub(super) async fn body_session<Si, St, E, K>(
    mut sink: Si,
    mut stream: St,
    mut commands: mpsc::Receiver<BodyCommand>,
    tasks: &TasksHandle,
    session: u64,
    rate: u32,
    timing: LinkTiming,
    counters: &BodyCounters,
    kick: K,
) -> SessionEnd
where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
    K: std::future::Future<Output = CloseReason>,
{
    let (replies_tx, mut replies) = mpsc::channel::<String>(REPLIES);
    let end = {
        let writer = async {
            let hello = json!({"type": "hello", "session": session, "protocol": 1});
            if !send_within(&mut sink, text(hello.to_string()), timing.send_within).await {
                return SessionEnd::Stalled;
            }
            let mut ping = pinger(timing);
            loop {
                let msg = tokio::select! {
                    command = commands.recv() => match command {
                        Some(command) => text(serde_json::to_string(&command).unwrap_or_default()),
                        None => return SessionEnd::Closed(CloseReason::Replaced),
                    },
                    Some(reply) = replies.recv() => text(reply),
                    _ = ping.tick() => Message::Ping(Default::default()),
                };
                if !send_within(&mut sink, msg, timing.send_within).await {
                    return SessionEnd::Stalled;
                }
            }
        };
        let reader = async {
            let mut limit = RateLimit::new(rate, Instant::now());
            loop {
                // Over the rate, the body's socket is not read until its next message is due.
                if let Some(due) = limit.paused_until(Instant::now()) {
                    tokio::time::sleep_until(due.into()).await;
                }
                let msg = match next_within(&mut stream, timing.idle_after).await {
                    Ok(msg) => msg,
                    Err(end) => return end,
                };
                // A full reply queue waits for the writer, which gives up within the send
                // timeout: replies are not dropped, and the body's reports stay in order.
                let handled = read_one(msg, &mut limit, tasks, session, rate, counters).await;
                for reply in handled.replies {
                    if replies_tx.send(reply).await.is_err() {
                        return SessionEnd::Stalled;
                    }
                }
                if handled.flooding {
                    return SessionEnd::Closed(CloseReason::Flooding);
                }
            }
        };
        tokio::select! {
            end = writer => end,
            end = reader => end,
            reason = kick => SessionEnd::Closed(reason),
        }
    };
    if let SessionEnd::Closed(_) = end {
        // Say what is still queued (the flooding notice, say) before the close frame.
        while let Ok(reply) = replies.try_recv() {
            if !send_within(&mut sink, text(reply), timing.send_within).await {
                break;
            }
        }
    }
    finish(&mut sink, &mut stream, end, timing).await;
    tracing::info!(session, end = ?end, "body session ended");
    end
}

/// What one message from the body asks of the session.
#[derive(Debug, Default)]
struct Handled {
    /// Sent back to the body, in order.
    replies: Vec<String>,
    /// The body is flooding: the session ends after the replies.
    flooding: bool,
}

/// Handle one message from the body.
async fn read_one(
    msg: Message,
    limit: &mut RateLimit,
    tasks: &TasksHandle,
    session: u64,
    rate: u32,
    counters: &BodyCounters,
) -> Handled {
    let mut out = Handled::default();
    let text = match msg {
        Message::Text(text) => text,
        Message::Binary(_) => {
            counters.bad_messages.fetch_add(1, Ordering::Relaxed);
            out.replies.push(error_message(
                "malformed_message",
                "binary messages are not part of the body protocol; send JSON text".into(),
                None,
            ));
            return out;
        }
        _ => return out, // ping, pong
    };
    match limit.admit(Instant::now()) {
        Admit::Free => {}
        Admit::Throttled => {
            counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            // Say so once per burst: answering every message would double it.
            if limit.throttled_in_a_row == 1 {
                out.replies.push(error_message(
                    "rate_limited",
                    format!("more than {rate} messages a second; reading them at that rate (none are dropped)"),
                    None,
                ));
            }
        }
        Admit::Flooding => {
            tracing::warn!(session, "body kept flooding; disconnecting it");
            out.replies.push(error_message(
                "flooding",
                "over the message rate for ten seconds without a break; disconnected (unfinished tasks are sent again when you reconnect)".into(),
                None,
            ));
            out.flooding = true;
            return out;
        }
    }
    out.replies
        .extend(apply(&text, tasks, session, counters).await);
    out
}

/// Apply one text message (a report, a hello); the error to send back, if any.
async fn apply(
    text: &str,
    tasks: &TasksHandle,
    session: u64,
    counters: &BodyCounters,
) -> Option<String> {
    match serde_json::from_str::<FromBody>(text) {
        Err(e) => {
            counters.bad_messages.fetch_add(1, Ordering::Relaxed);
            Some(error_message(
                "malformed_message",
                format!("{e}; expected {{\"type\":\"status\",\"id\":...,\"state\":...}}"),
                None,
            ))
        }
        Ok(FromBody::Hello { name }) => {
            tracing::info!(
                session,
                name = name.as_deref().unwrap_or("unnamed"),
                "body said hello"
            );
            None
        }
        Ok(FromBody::Status {
            id,
            state,
            detail,
            progress,
        }) => {
            let report = BodyReport {
                id: id.clone(),
                state,
                detail,
                progress,
            };
            match tasks.body_report(session, report).await {
                Ok(_) => None,
                Err(e) => {
                    counters.bad_messages.fetch_add(1, Ordering::Relaxed);
                    let code = match &e {
                        TaskError::NotFound(_) => "unknown_task",
                        TaskError::Lifecycle(_) => "out_of_order",
                        TaskError::Invalid(_) => "invalid_status",
                        TaskError::Detached => "detached",
                        _ => "unavailable",
                    };
                    tracing::debug!(session, id = %creature_actors::text::printable(&id), cause = %e, "body report refused");
                    Some(error_message(code, e.to_string(), Some(&id)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_passes_a_burst_then_paces_and_never_drops() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10, t0);
        // A burst of twice the rate goes straight through.
        for _ in 0..20 {
            assert_eq!(limit.admit(t0), Admit::Free);
        }
        assert_eq!(limit.paused_until(t0), None);
        // Then each message waits for its token: a tenth of a second apiece.
        let mut now = t0;
        for n in 1..=5 {
            assert_eq!(limit.admit(now), Admit::Throttled, "message {n}");
            let next = limit.paused_until(now).expect("paused");
            assert!(
                ((next - now).as_secs_f64() - 0.1).abs() < 1e-6,
                "{:?}",
                next - now
            );
            assert_eq!(limit.throttled_in_a_row, n);
            now = next;
        }
        assert_eq!(limit.paused_until(now), None, "due now");
        // A body that slows down to the rate is free again.
        now += Duration::from_millis(150);
        assert_eq!(limit.admit(now), Admit::Free);
        assert_eq!(limit.throttled_in_a_row, 0);
    }

    #[test]
    fn ten_seconds_over_the_rate_without_a_break_is_a_flood() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10, t0);
        let mut now = t0;
        let mut read = 0;
        loop {
            read += 1;
            match limit.admit(now) {
                Admit::Free => {}
                Admit::Throttled => now = limit.paused_until(now).expect("paused"),
                Admit::Flooding => break,
            }
            assert!(read < 1_000, "never called a flood");
        }
        // The burst, then 100 paced messages (ten seconds at 10/s), then the one too many.
        assert_eq!(read, 20 + 100 + 1);
        assert!((now - t0).as_secs_f64() > 9.9, "{:?}", now - t0);
    }
}
