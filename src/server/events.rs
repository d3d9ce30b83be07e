//! `GET /api/events`: the live event stream as server-sent events, and the operators'
//! fault injection (`POST /api/actors/{name}/fail`).
//!
//! Each viewer gets the bus's replay (or what came after its `Last-Event-ID`), then every
//! new event. A forwarder task per viewer moves events from the bus into a small queue the
//! response body drains; a viewer that falls behind the bus skips ahead and gets a
//! `lagged` event saying how many it missed, and one that stops reading altogether (its
//! queue stays full for `viewer_send_timeout`) is cut off. The brain never waits for any
//! of them.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use creature_actors::brain::FailError;
use creature_actors::events::{Event, EventBus, Published, Subscription};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::AppState;
use super::error::ApiError;

/// Events waiting between a viewer's forwarder and its socket.
const VIEWER_QUEUE: usize = 64;
/// A viewer whose queue stays full this long has stopped reading and is cut off.
const VIEWER_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/events`.
pub(super) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let bus = state.brain().events().clone();
    let max = state.config().inspect.max_viewers;
    if bus.viewers() >= max {
        return Err(ApiError::unavailable(format!(
            "{max} event-stream viewers are connected, the most allowed ([inspect] max_viewers); \
             close one and try again"
        )));
    }
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "`Last-Event-ID` must be the `seq` of an event this stream sent",
                    )
                })?,
        ),
    };
    let subscription = bus.subscribe(after);
    let (tx, rx) = mpsc::channel(VIEWER_QUEUE);
    // The forwarder ends when the viewer goes, stops reading, or the brain stops.
    tokio::spawn(forward(
        subscription,
        tx,
        bus,
        state.closing(),
        VIEWER_SEND_TIMEOUT,
    ));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The notice to a viewer that `skipped` events passed it by.
fn lagged(skipped: u64) -> SseEvent {
    let notice = Event::Lagged { skipped };
    let data = serde_json::to_string(&notice).unwrap_or_default();
    SseEvent::default().event(notice.kind()).data(data)
}

fn sse(p: &Published) -> SseEvent {
    SseEvent::default()
        .id(p.seq.to_string())
        .event(p.kind)
        .data(&p.json)
}

/// Move one viewer's events from the bus to its queue until it goes, stops reading for
/// `send_timeout`, or `stopping` completes (the server or the brain begins to stop).
async fn forward(
    subscription: Subscription,
    tx: mpsc::Sender<SseEvent>,
    bus: EventBus,
    stopping: impl Future<Output = ()> + Send + 'static,
    send_timeout: Duration,
) {
    let Subscription {
        replay,
        mut live,
        missed,
    } = subscription;
    let send = |event: SseEvent| {
        let tx = tx.clone();
        async move {
            match tokio::time::timeout(send_timeout, tx.send(event)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(false), // the viewer went away
                Err(_) => Err(true),      // it stopped reading
            }
        }
    };
    let counters = bus.counters();
    let mut stopping = std::pin::pin!(stopping);
    let mut outcome = Ok(());
    if missed > 0 {
        outcome = send(lagged(missed)).await;
    }
    for p in &replay {
        if outcome.is_err() {
            break;
        }
        outcome = send(sse(p)).await;
    }
    while outcome.is_ok() {
        let next = tokio::select! {
            _ = &mut stopping => break,
            next = live.recv() => next,
        };
        outcome = match next {
            Ok(p) => send(sse(&p)).await,
            Err(RecvError::Lagged(skipped)) => {
                counters.skipped.fetch_add(skipped, Ordering::Relaxed);
                send(lagged(skipped)).await
            }
            Err(RecvError::Closed) => break,
        };
    }
    if outcome == Err(true) {
        counters.viewers_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            waited_secs = send_timeout.as_secs_f64(),
            "cut off an event-stream viewer that stopped reading"
        );
    }
}

/// Body of `POST /api/actors/{name}/fail` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailRequest {
    reason: Option<String>,
}

/// The most of a fault's reason that is kept.
const MAX_REASON: usize = 200;

/// `POST /api/actors/{name}/fail`: make a child fail on purpose (when
/// `[inspect] fault_injection` is on); 202 once its incarnation is told to stop.
pub(super) async fn fail_actor(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if !state.config().inspect.fault_injection {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "fault_injection_off",
            "fault injection is off; set `[inspect] fault_injection = true` in the config file \
             to let operators make an actor fail",
        ));
    }
    let req: FailRequest = super::error::optional_json_body(&body)?;
    let reason: String =
        creature_actors::text::printable(req.reason.as_deref().unwrap_or("by an operator"))
            .chars()
            .take(MAX_REASON)
            .collect();
    state
        .brain()
        .fail_actor(&name, &reason)
        .map_err(|e| match e {
            FailError::Unknown(_) => ApiError::not_found(e.to_string()),
            FailError::Root => ApiError::unprocessable("not_a_child", e.to_string()),
            FailError::NotRunning(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_running", e.to_string())
            }
        })?;
    tracing::warn!(actor = %name, reason = %reason, "fault injected by an operator");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"failed": name, "reason": reason})),
    )
        .into_response())
}

/// The stream's counters, for `/metrics`.
pub(super) fn bus_figures(bus: &EventBus) -> [(&'static str, &'static str, u64); 3] {
    let c = bus.counters();
    [
        (
            "creature_events_published_total",
            "Events published on the live event stream.",
            c.published.load(Ordering::Relaxed),
        ),
        (
            "creature_events_skipped_total",
            "Events event-stream viewers skipped because they fell behind.",
            c.skipped.load(Ordering::Relaxed),
        ),
        (
            "creature_event_viewers_dropped_total",
            "Event-stream viewers cut off because they stopped reading.",
            c.viewers_dropped.load(Ordering::Relaxed),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus_with(n: u64) -> EventBus {
        let bus = EventBus::new(256, 256);
        for tick in 0..n {
            bus.publish(Event::Piece {
                tick,
                text: "x".into(),
            });
        }
        bus
    }

    #[tokio::test]
    async fn a_viewer_that_stops_reading_is_cut_off_and_counted() {
        let bus = bus_with(VIEWER_QUEUE as u64 + 10);
        let (tx, _never_read) = mpsc::channel(VIEWER_QUEUE);
        let sub = bus.subscribe(None);
        let forwarder = tokio::spawn(forward(
            sub,
            tx,
            bus.clone(),
            std::future::pending(),
            Duration::from_millis(200),
        ));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(forwarder.is_finished(), "the forwarder gave up on it");
        assert_eq!(bus.counters().viewers_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(bus.viewers(), 0, "its place on the bus is freed");
    }

    #[tokio::test]
    async fn a_viewer_gets_the_replay_then_live_events_and_leaves_when_the_brain_stops() {
        let bus = bus_with(3);
        let (tx, mut rx) = mpsc::channel(VIEWER_QUEUE);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let forwarder = tokio::spawn(forward(
            bus.subscribe(None),
            tx,
            bus.clone(),
            async move {
                let _ = stop_rx.await;
            },
            Duration::from_secs(5),
        ));
        for _ in 0..3 {
            let _ = rx.recv().await.expect("a replayed event");
        }
        bus.publish(Event::Lagged { skipped: 0 });
        let _ = rx.recv().await.expect("the live event");
        let _ = stop_tx.send(());
        assert!(
            rx.recv().await.is_none(),
            "the stream ends when the brain stops"
        );
        forwarder.await.unwrap();
    }
}
