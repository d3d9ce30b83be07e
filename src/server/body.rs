//! `WS /ws/body`: the robot body's connection (`docs/body-protocol.md`). The brain sends
//! `tool_call` and `cancel`; the body answers `status`. A bearer token guards the door, one
//! body is attached at a time, and whatever a body sends that is not a valid report (bad
//! JSON, unknown tasks, states out of order, floods) is answered with an error message on
//! the socket and counted, while the ledger and the brain carry on untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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

/// A token bucket: `rate` messages a second, bursts of twice that.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
    /// Messages refused since the last one let through.
    refused_in_a_row: u64,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimit {
            rate,
            tokens: 2.0 * rate,
            last: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(2.0 * self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row += 1;
            false
        }
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
    let mut limit = RateLimit::new(rate);
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                let text = serde_json::to_string(&command).unwrap_or_default();
                if !send(&mut sink, text).await {
                    break;
                }
            }
            incoming = stream.next() => {
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
                if !limit.allow() {
                    counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                    if limit.refused_in_a_row > u64::from(rate.max(1)) * 10 {
                        tracing::warn!(session, "body kept flooding; disconnecting it");
                        let _ = send(&mut sink, error_message("flooding", "too many messages; disconnected".into(), None)).await;
                        break;
                    }
                    // Answer the first refusal of a burst only: echoing every one would
                    // double the flood.
                    if limit.refused_in_a_row == 1
                        && !send(&mut sink, error_message("rate_limited", format!("more than {rate} messages a second; messages are being dropped"), None)).await
                    {
                        break;
                    }
                    continue;
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
    fn the_rate_limit_allows_a_burst_then_refuses() {
        let mut limit = RateLimit::new(10);
        let allowed = (0..100).filter(|_| limit.allow()).count();
        assert!((20..=21).contains(&allowed), "{allowed}");
        assert!(limit.refused_in_a_row > 0);
    }
}
