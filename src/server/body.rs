//! `WS /ws/body`: the robot body's connection (`docs/body-protocol.md`). The brain sends
//! `tool_call` and `cancel`; the body answers `status`. A bearer token guards the door, one
//! body is attached at a time, and whatever a body sends that is not a valid report (bad
//! JSON, unknown tasks, states out of order, floods) is answered with an error message on
//! the socket and counted, while the ledger and the brain carry on untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use creature_actors::ports::{BodyCommand, BodyReport, BodyState};
use creature_actors::tasks::{TaskError, TasksHandle};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::AppState;
use super::error::ApiError;

/// Tool calls waiting to be written to the body's socket.
const OUTBOX: usize = 256;
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

/// Compare without leaking, through timing, how much of a guess was right.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

pub(super) async fn body(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    State(state): State<AppState>,
) -> Response {
    let counters = Arc::clone(&state.inner.body);
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match presented {
        None => {
            counters.refused_auth.fetch_add(1, Ordering::Relaxed);
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send `Authorization: Bearer <token>` with the token from [body] token in the brain's config",
            )
            .into_response();
        }
        Some(token) if !same_secret(token.trim(), &state.config().body.token) => {
            counters.refused_auth.fetch_add(1, Ordering::Relaxed);
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong body token")
                .into_response();
        }
        Some(_) => {}
    }
    let tasks = state.brain().tasks.clone();
    let (outbox, commands) = mpsc::channel(OUTBOX);
    let session = match tasks.attach_body(outbox).await {
        Ok(session) => session,
        Err(TaskError::BodyBusy) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "body_busy",
                "a body is already connected; one body at a time",
            )
            .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    counters.sessions.fetch_add(1, Ordering::Relaxed);
    // However the session ends (or if the upgrade never completes), the body is detached.
    let detach = DetachOnDrop {
        tasks: tasks.clone(),
        session,
    };
    let rate = state.config().body.max_messages_per_sec;
    ws.max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _detach = detach;
            let (sink, stream) = socket.split();
            body_session(sink, stream, commands, &tasks, session, rate, &counters).await;
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

async fn send<Si: Sink<Message> + Unpin>(sink: &mut Si, text: String) -> bool {
    sink.send(Message::Text(text.into())).await.is_ok()
}

/// Run one body's session until either side goes away.
pub(super) async fn body_session<Si, St, E>(
    mut sink: Si,
    mut stream: St,
    mut commands: mpsc::Receiver<BodyCommand>,
    tasks: &TasksHandle,
    session: u64,
    rate: u32,
    counters: &BodyCounters,
) where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
{
    let hello = json!({"type": "hello", "session": session, "protocol": 1});
    if !send(&mut sink, hello.to_string()).await {
        return;
    }
    let mut limit = RateLimit::new(rate, Instant::now());
    loop {
        // Over the rate, the body's socket is not read until its next message is due.
        let paused_until = limit.paused_until(Instant::now());
        let resume = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now).into());
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                let text = serde_json::to_string(&command).unwrap_or_default();
                if !send(&mut sink, text).await {
                    break;
                }
            }
            () = resume, if paused_until.is_some() => {}
            incoming = stream.next(), if paused_until.is_none() => {
                let text = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        counters.bad_messages.fetch_add(1, Ordering::Relaxed);
                        if !send(&mut sink, error_message("malformed_message", "binary messages are not part of the body protocol; send JSON text".into(), None)).await {
                            break;
                        }
                        continue;
                    }
                    Some(Ok(_)) => continue, // ping/pong
                };
                match limit.admit(Instant::now()) {
                    Admit::Free => {}
                    Admit::Throttled => {
                        counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                        // Say so once per burst: answering every message would double it.
                        if limit.throttled_in_a_row == 1
                            && !send(&mut sink, error_message("rate_limited", format!("more than {rate} messages a second; reading them at that rate (none are dropped)"), None)).await
                        {
                            break;
                        }
                    }
                    Admit::Flooding => {
                        tracing::warn!(session, "body kept flooding; disconnecting it");
                        let _ = send(&mut sink, error_message("flooding", "over the message rate for ten seconds without a break; disconnected (unfinished tasks are sent again when you reconnect)".into(), None)).await;
                        break;
                    }
                }
                let reply = match serde_json::from_str::<FromBody>(&text) {
                    Err(e) => {
                        counters.bad_messages.fetch_add(1, Ordering::Relaxed);
                        Some(error_message("malformed_message", format!("{e}; expected {{\"type\":\"status\",\"id\":...,\"state\":...}}"), None))
                    }
                    Ok(FromBody::Hello { name }) => {
                        tracing::info!(session, name = name.as_deref().unwrap_or("unnamed"), "body said hello");
                        None
                    }
                    Ok(FromBody::Status { id, state, detail, progress }) => {
                        let report = BodyReport { id: id.clone(), state, detail, progress };
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
                                tracing::debug!(session, %id, cause = %e, "body report refused");
                                Some(error_message(code, e.to_string(), Some(&id)))
                            }
                        }
                    }
                };
                if let Some(reply) = reply {
                    if !send(&mut sink, reply).await {
                        break;
                    }
                }
            }
        }
    }
    tracing::info!(session, "body session ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }

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
