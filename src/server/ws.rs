//! The phone's websockets, and what keeps every websocket honest. `/ws/face` pushes face
//! frames (latest value: a slow phone skips frames, it never holds anyone up). `/ws/audio`
//! carries the phone's microphone in and the creature's voice out as PCM16 LE, 24 kHz mono.
//! Sessions are written over any `Sink`/`Stream` of messages, so tests can drive them with
//! channels.
//!
//! Every session (face, audio and the body's in `body.rs`) reads and writes independently:
//! a reader that only reads (so a slow downlink never holds up the microphone), and a
//! writer that pings every `ws_ping_interval_secs` and gives every write
//! `ws_send_timeout_secs`. A socket that sends nothing, not even a pong, for
//! `ws_idle_timeout_secs` is closed. When the server ends a socket it says why with a close
//! frame ([`CloseReason`]). Nobody can hold a seat hostage: the audio seat goes to the
//! newest client (the old one is closed with 4001), and past the face caps the oldest face
//! is closed (4003) to seat the new one.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{Extensions, StatusCode};
use axum::response::{IntoResponse, Response};
use creature_actors::audio::{AgentFrame, AudioInbox};
use creature_actors::face::FaceUpdate;
use creature_actors::histogram::LatencyHistogram;
use creature_actors::outlet::OutletReader;
use creature_actors::{FRAME_SAMPLES, SAMPLE_RATE};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::AppState;
use super::error::ApiError;
use crate::config::ServerConfig;

/// Protocol-level cap on any websocket message; the per-kind limits below are stricter
/// and answered with a readable error instead of a closed socket.
const MAX_WS_MESSAGE: usize = 1 << 20;
/// Replies (errors, `hello_ok`) waiting for the writer. A client that floods the socket
/// with bad messages and reads nothing loses replies past this, never its uplink.
const REPLIES: usize = 64;

/// How every websocket is kept honest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkTiming {
    /// The server pings this often.
    pub ping_every: Duration,
    /// Nothing received (no message, no pong) for this long: the socket is closed (4002).
    pub idle_after: Duration,
    /// One write may take this long; a peer that does not take it is dropped.
    pub send_within: Duration,
}

impl Default for LinkTiming {
    fn default() -> Self {
        LinkTiming::from_config(&ServerConfig::default())
    }
}

impl LinkTiming {
    /// From `[server] ws_*`; nonsense values (negative, NaN) fall back to the defaults.
    pub fn from_config(server: &ServerConfig) -> Self {
        fn secs(v: f64, fallback: f64) -> Duration {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .unwrap_or_else(|| Duration::from_secs_f64(fallback))
        }
        LinkTiming {
            ping_every: secs(server.ws_ping_interval_secs, 10.0),
            idle_after: secs(server.ws_idle_timeout_secs, 30.0),
            send_within: secs(server.ws_send_timeout_secs, 5.0),
        }
    }
}

/// Why the server closed a socket: the close frame's code (4000-4999) and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer client took the seat (audio, body).
    Replaced,
    /// Nothing arrived, not even a pong, within the idle timeout.
    Idle,
    /// The face caps were reached and this was the oldest face.
    TooManyFaces,
    /// A body over its message rate for ten seconds without a break.
    Flooding,
    /// The brain is stopping.
    Shutdown,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Replaced => 4001,
            CloseReason::Idle => 4002,
            CloseReason::TooManyFaces => 4003,
            CloseReason::Flooding => 4004,
            CloseReason::Shutdown => 1001,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::Replaced => "replaced by a newer connection",
            CloseReason::Idle => "idle",
            CloseReason::TooManyFaces => "too many faces",
            CloseReason::Flooding => "flooding",
            CloseReason::Shutdown => "the brain is stopping",
        }
    }

    fn frame(self) -> Message {
        Message::Close(Some(CloseFrame {
            code: self.code(),
            reason: self.reason().into(),
        }))
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer closed the socket, broke it, or it errored.
    Peer,
    /// A write did not go through within the send timeout.
    Stalled,
    /// The server closed it, with this reason.
    Closed(CloseReason),
}

/// Write one message within the send timeout.
pub(super) async fn send_within<Si: Sink<Message> + Unpin>(
    sink: &mut Si,
    msg: Message,
    within: Duration,
) -> bool {
    matches!(
        tokio::time::timeout(within, sink.send(msg)).await,
        Ok(Ok(()))
    )
}

/// The next message from the peer, whatever it is (pongs count: they show it is alive).
/// `Err` says how the socket ended: the peer left, or it was idle too long.
pub(super) async fn next_within<St, E>(
    stream: &mut St,
    idle: Duration,
) -> Result<Message, SessionEnd>
where
    St: Stream<Item = Result<Message, E>> + Unpin,
{
    match tokio::time::timeout(idle, stream.next()).await {
        Err(_) => Err(SessionEnd::Closed(CloseReason::Idle)),
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => Err(SessionEnd::Peer),
        Ok(Some(Ok(msg))) => Ok(msg),
    }
}

/// The writer's ping clock: first ping one interval from now.
pub(super) fn pinger(timing: LinkTiming) -> tokio::time::Interval {
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + timing.ping_every,
        timing.ping_every,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping
}

/// Say goodbye: a close frame with the reason when the server ends the socket, then a wait
/// (within the send timeout) for the peer's answering close, so the reason is read before
/// the connection goes; a polite close when the peer ended it; nothing for a peer that
/// stopped taking writes.
pub(super) async fn finish<Si, St, E>(
    sink: &mut Si,
    stream: &mut St,
    end: SessionEnd,
    timing: LinkTiming,
) where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
{
    let closing = async {
        if let SessionEnd::Closed(reason) = end {
            if sink.send(reason.frame()).await.is_err() {
                return;
            }
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        }
        let _ = sink.close().await;
    };
    if end != SessionEnd::Stalled {
        let _ = tokio::time::timeout(goodbye_within(end, timing), closing).await;
    }
}

/// The longest a session waits for its peer's answering close when the brain stops: a
/// stopping process does not hang on a phone that stopped reading.
pub(super) const SHUTDOWN_GOODBYE: Duration = Duration::from_secs(1);

/// How long [`finish`] gives the goodbye: the send timeout, and at most
/// [`SHUTDOWN_GOODBYE`] when the brain is stopping.
pub fn goodbye_within(end: SessionEnd, timing: LinkTiming) -> Duration {
    match end {
        SessionEnd::Closed(CloseReason::Shutdown) => timing.send_within.min(SHUTDOWN_GOODBYE),
        _ => timing.send_within,
    }
}

/// Wait for a seat's eviction notice; a seat given up without one never fires.
async fn evicted(kick: oneshot::Receiver<CloseReason>) -> CloseReason {
    match kick.await {
        Ok(reason) => reason,
        Err(_) => std::future::pending().await,
    }
}

/// A session's reason to end from outside: `kick`'s, or [`CloseReason::Shutdown`] once
/// `stopping` (the brain's stop) completes.
pub(super) async fn kicked_or_stopping<K, S>(kick: K, stopping: S) -> CloseReason
where
    K: Future<Output = CloseReason>,
    S: Future<Output = ()>,
{
    tokio::select! {
        reason = kick => reason,
        () = stopping => CloseReason::Shutdown,
    }
}

/// Who holds the counted sockets: the face sockets (capped; the oldest makes way) and the
/// one audio seat (the newest client takes it).
#[derive(Debug, Default)]
pub(super) struct Seats {
    next: AtomicU64,
    /// Open face sockets by seat number, so the first is the oldest.
    faces: Mutex<BTreeMap<u64, FaceSeat>>,
    /// The audio session holding the seat now.
    audio: Mutex<Option<(u64, oneshot::Sender<CloseReason>)>>,
    /// The brain's own microphone feeds the loop: phone audio is refused.
    audio_reserved: AtomicBool,
}

#[derive(Debug)]
struct FaceSeat {
    addr: Option<IpAddr>,
    kick: oneshot::Sender<CloseReason>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Seats {
    pub(super) fn reserve_audio(&self) {
        self.audio_reserved.store(true, Ordering::SeqCst);
    }

    /// Seat a face from `addr`, closing the oldest faces of that address past `per_addr`
    /// and the oldest of all past `total`. `count` mirrors the number seated.
    fn seat_face(
        &self,
        addr: Option<IpAddr>,
        total: usize,
        per_addr: usize,
        count: &AtomicUsize,
    ) -> (u64, oneshot::Receiver<CloseReason>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (kick, notice) = oneshot::channel();
        let mut faces = lock(&self.faces);
        let evict = |faces: &mut BTreeMap<u64, FaceSeat>, old: u64, why: &str| {
            if let Some(seat) = faces.remove(&old) {
                tracing::info!(seat = old, addr = ?seat.addr, why, "closing the oldest face socket to seat a new one");
                let _ = seat.kick.send(CloseReason::TooManyFaces);
            }
        };
        if let Some(ip) = addr {
            let same: Vec<u64> = faces
                .iter()
                .filter(|(_, s)| s.addr == Some(ip))
                .map(|(id, _)| *id)
                .collect();
            let excess = (same.len() + 1).saturating_sub(per_addr.max(1));
            for old in same.into_iter().take(excess) {
                evict(&mut faces, old, "per-address cap");
            }
        }
        while faces.len() >= total.max(1) {
            let Some(oldest) = faces.keys().next().copied() else {
                break;
            };
            evict(&mut faces, oldest, "total cap");
        }
        faces.insert(id, FaceSeat { addr, kick });
        count.store(faces.len(), Ordering::SeqCst);
        (id, notice)
    }

    fn leave_face(&self, id: u64, count: &AtomicUsize) {
        let mut faces = lock(&self.faces);
        faces.remove(&id);
        count.store(faces.len(), Ordering::SeqCst);
    }

    /// Take the audio seat; whoever held it is told to go (4001).
    fn seat_audio(&self, open: &AtomicBool) -> (u64, oneshot::Receiver<CloseReason>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (kick, notice) = oneshot::channel();
        let mut audio = lock(&self.audio);
        if let Some((old, old_kick)) = audio.replace((id, kick)) {
            tracing::info!(old, new = id, "a new audio client replaces the old one");
            let _ = old_kick.send(CloseReason::Replaced);
        }
        open.store(true, Ordering::SeqCst);
        (id, notice)
    }

    fn leave_audio(&self, id: u64, open: &AtomicBool) {
        let mut audio = lock(&self.audio);
        if audio.as_ref().is_some_and(|(holder, _)| *holder == id) {
            *audio = None;
            if !self.audio_reserved.load(Ordering::SeqCst) {
                open.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// Runs a closure when dropped (gives a seat back however the session ends).
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

pub(super) async fn face(
    ws: WebSocketUpgrade,
    extensions: Extensions,
    State(state): State<AppState>,
) -> Response {
    // Set by the listener; absent (router tests): an unknown address, no per-address cap.
    let addr = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip());
    let timing = LinkTiming::from_config(&state.config().server);
    ws.protocols(["creature"])
        .max_message_size(16 * 1024)
        .on_upgrade(move |socket| async move {
            let _session = state.session();
            let server = &state.config().server;
            let (seat, notice) = state.inner.seats.seat_face(
                addr,
                server.max_face_clients,
                server.max_face_clients_per_addr,
                &state.inner.face_clients,
            );
            let seat_state = state.clone();
            let _seat = OnDrop(move || {
                seat_state
                    .inner
                    .seats
                    .leave_face(seat, &seat_state.inner.face_clients)
            });
            let rx = state.brain().face.subscribe();
            let (sink, stream) = socket.split();
            let end = face_session(
                sink,
                stream,
                rx,
                Arc::clone(&state.inner.face_latency),
                timing,
                kicked_or_stopping(evicted(notice), state.stopping()),
                state.face_writers(),
            )
            .await;
            tracing::debug!(seat, addr = ?addr, end = ?end, "face socket ended");
        })
}

/// Send every new face frame until the phone goes away, recording in `latency` how long
/// each took from the voice loop to the socket. What the phone sends is read only to notice
/// that it is alive; `kick` ends the session with its close reason. The writer runs on
/// `writers` when given (the face writers' own thread: see `fanout`), else in place.
pub async fn face_session<Si, St, E, K>(
    sink: Si,
    mut stream: St,
    rx: OutletReader<FaceUpdate>,
    latency: Arc<LatencyHistogram>,
    timing: LinkTiming,
    kick: K,
    writers: Option<&tokio::runtime::Handle>,
) -> SessionEnd
where
    Si: Sink<Message> + Unpin + Send + 'static,
    St: Stream<Item = Result<Message, E>> + Unpin,
    K: Future<Output = CloseReason>,
{
    // The writer hands the sink back with its reason to end, so the close frame goes out
    // on the same socket; `stop` ends it when the reader or the kick ends the session.
    let (stop, stopped) = oneshot::channel::<SessionEnd>();
    let writer = write_faces(sink, rx, latency, timing, stopped);
    let mut writer = match writers {
        Some(rt) => rt.spawn(writer),
        None => tokio::spawn(writer),
    };
    let reader = async {
        loop {
            if let Err(end) = next_within(&mut stream, timing.idle_after).await {
                return end;
            }
        }
    };
    let (end, sink) = tokio::select! {
        done = &mut writer => match done {
            Ok(done) => (done.0, Some(done.1)),
            Err(_) => (SessionEnd::Closed(CloseReason::Shutdown), None),
        },
        end = reader => {
            let _ = stop.send(end);
            match writer.await {
                Ok((_, sink)) => (end, Some(sink)),
                Err(_) => (end, None),
            }
        }
        reason = kick => {
            let end = SessionEnd::Closed(reason);
            let _ = stop.send(end);
            match writer.await {
                Ok((_, sink)) => (end, Some(sink)),
                Err(_) => (end, None),
            }
        }
    };
    if let Some(mut sink) = sink {
        finish(&mut sink, &mut stream, end, timing).await;
    }
    end
}

/// The writing half of a face session: the first frame, then every newer one and a ping
/// now and then, until a write stalls, the outlet closes or `stop` says why to end.
async fn write_faces<Si>(
    mut sink: Si,
    mut rx: OutletReader<FaceUpdate>,
    latency: Arc<LatencyHistogram>,
    timing: LinkTiming,
    mut stop: oneshot::Receiver<SessionEnd>,
) -> (SessionEnd, Si)
where
    Si: Sink<Message> + Unpin + Send + 'static,
{
    let first = rx.borrow_and_update().json.clone();
    if !send_within(
        &mut sink,
        Message::Text((&*first).into()),
        timing.send_within,
    )
    .await
    {
        return (SessionEnd::Stalled, sink);
    }
    let mut ping = pinger(timing);
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return (SessionEnd::Closed(CloseReason::Shutdown), sink);
                }
                let update = rx.borrow_and_update();
                if !send_within(&mut sink, Message::Text((&*update.json).into()), timing.send_within).await {
                    return (SessionEnd::Stalled, sink);
                }
                if let Some(at) = update.source_at {
                    latency.record(at.elapsed());
                }
            }
            _ = ping.tick() => {
                if !send_within(&mut sink, Message::Ping(Default::default()), timing.send_within).await {
                    return (SessionEnd::Stalled, sink);
                }
            }
            end = &mut stop => {
                return (end.unwrap_or(SessionEnd::Closed(CloseReason::Shutdown)), sink);
            }
        }
    }
}

pub(super) async fn audio(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    if state.inner.seats.audio_reserved.load(Ordering::SeqCst) {
        return ApiError::new(
            StatusCode::CONFLICT,
            "audio_busy",
            "the brain's own microphone feeds the loop; phone audio is off (set [audio] device = false to use a phone)",
        )
        .into_response();
    }
    let brain = Arc::clone(state.brain());
    let max_bytes = state.config().server.max_audio_message_bytes;
    let timing = LinkTiming::from_config(&state.config().server);
    ws.protocols(["creature"])
        .max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _session = state.session();
            // The newest client takes the seat: a phone that reconnects never waits for its
            // old, dead connection to time out.
            let (seat, notice) = state.inner.seats.seat_audio(&state.inner.audio_busy);
            let seat_state = state.clone();
            let _seat = OnDrop(move || {
                seat_state
                    .inner
                    .seats
                    .leave_audio(seat, &seat_state.inner.audio_busy)
            });
            let (sink, stream) = socket.split();
            let ready = json!({
                "type": "ready",
                "sample_rate": SAMPLE_RATE,
                "channels": 1,
                "format": "pcm16le",
                "frame_samples": FRAME_SAMPLES,
                "backend": brain.voice.backend(),
            });
            let end = audio_session(
                sink,
                stream,
                brain.inbox(),
                brain.subscribe_audio(),
                max_bytes,
                ready,
                timing,
                kicked_or_stopping(evicted(notice), state.stopping()),
            )
            .await;
            tracing::info!(seat, end = ?end, "audio session ended");
        })
}

/// The optional first text message of an audio session.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hello {
    #[serde(rename = "type")]
    kind: String,
    sample_rate: u32,
    #[serde(default = "pcm16le")]
    format: String,
    #[serde(default = "mono")]
    channels: u16,
}

fn pcm16le() -> String {
    "pcm16le".into()
}

fn mono() -> u16 {
    1
}

fn error_json(error: &str, detail: String) -> String {
    json!({"error": error, "detail": detail}).to_string()
}

/// What the phone's microphone sent, and the reply it gets (if any).
struct Uplink<'a> {
    inbox: &'a AudioInbox,
    max_bytes: usize,
    /// Until a hello says otherwise, audio is assumed to be in the documented format.
    format_ok: bool,
    samples: Vec<f32>,
}

impl Uplink<'_> {
    fn take(&mut self, msg: Message) -> Option<String> {
        let max_bytes = self.max_bytes;
        match msg {
            Message::Binary(bytes) => {
                if !self.format_ok {
                    Some(error_json("bad_audio", "the last hello announced a format this brain cannot take; send a hello with sample_rate 24000, format pcm16le, channels 1".into()))
                } else if bytes.len() > max_bytes {
                    Some(error_json(
                        "audio_too_large",
                        format!(
                            "{} bytes in one message; the limit is {max_bytes} (send 80 ms frames of 3840 bytes)",
                            bytes.len()
                        ),
                    ))
                } else if bytes.len() % 2 != 0 {
                    Some(error_json(
                        "bad_audio",
                        format!(
                            "{} bytes is not a whole number of 16-bit samples",
                            bytes.len()
                        ),
                    ))
                } else {
                    pcm16_to_f32(&bytes, &mut self.samples);
                    self.inbox.push(&self.samples);
                    None
                }
            }
            Message::Text(text) => match serde_json::from_str::<Hello>(&text) {
                Ok(h) if h.kind == "hello" => {
                    let problems: Vec<String> = [
                        (h.sample_rate != SAMPLE_RATE)
                            .then(|| format!("sample_rate {} (need {SAMPLE_RATE})", h.sample_rate)),
                        (h.format != "pcm16le")
                            .then(|| format!("format {:?} (need \"pcm16le\")", h.format)),
                        (h.channels != 1).then(|| format!("{} channels (need 1)", h.channels)),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    self.format_ok = problems.is_empty();
                    Some(if self.format_ok {
                        json!({"type": "hello_ok"}).to_string()
                    } else {
                        error_json(
                            "unsupported_format",
                            format!(
                                "unsupported audio: {}; resample to 24 kHz mono PCM16 LE",
                                problems.join(", ")
                            ),
                        )
                    })
                }
                Ok(h) => Some(error_json(
                    "unknown_message",
                    format!(
                        "unknown message type {:?}; only \"hello\" is understood",
                        h.kind
                    ),
                )),
                Err(e) => Some(error_json("malformed_json", format!("{e}"))),
            },
            _ => None, // ping, pong
        }
    }
}

/// Microphone in, voice out, each on its own: the reader hands audio to the inbox whatever
/// the writer is doing, so a phone slow to take the voice never holds up its microphone.
/// Bad messages get a JSON error on the socket and are skipped; the session, the audio
/// already received and the brain carry on. `kick` ends the session with its close reason.
#[allow(clippy::too_many_arguments)]
pub async fn audio_session<Si, St, E, K>(
    mut sink: Si,
    mut stream: St,
    inbox: &AudioInbox,
    mut voice: broadcast::Receiver<AgentFrame>,
    max_bytes: usize,
    ready: serde_json::Value,
    timing: LinkTiming,
    kick: K,
) -> SessionEnd
where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
    K: Future<Output = CloseReason>,
{
    let (replies_tx, mut replies) = mpsc::channel::<String>(REPLIES);
    let end = {
        let writer = async {
            if !send_within(
                &mut sink,
                Message::Text(ready.to_string().into()),
                timing.send_within,
            )
            .await
            {
                return SessionEnd::Stalled;
            }
            let mut ping = pinger(timing);
            loop {
                let msg = tokio::select! {
                    Some(reply) = replies.recv() => Message::Text(reply.into()),
                    frame = voice.recv() => match frame {
                        Ok(frame) => Message::Binary(f32_to_pcm16(&frame).into()),
                        // A phone that fell behind skips ahead to the live voice.
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(skipped = n, "audio listener lagged");
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => return SessionEnd::Closed(CloseReason::Shutdown),
                    },
                    _ = ping.tick() => Message::Ping(Default::default()),
                };
                if !send_within(&mut sink, msg, timing.send_within).await {
                    return SessionEnd::Stalled;
                }
            }
        };
        let reader = async {
            let mut uplink = Uplink {
                inbox,
                max_bytes,
                format_ok: true,
                samples: Vec::with_capacity(FRAME_SAMPLES),
            };
            loop {
                let msg = match next_within(&mut stream, timing.idle_after).await {
                    Ok(msg) => msg,
                    Err(end) => return end,
                };
                if let Some(reply) = uplink.take(msg) {
                    if replies_tx.try_send(reply).is_err() {
                        tracing::debug!("audio client is not reading its replies; one dropped");
                    }
                }
            }
        };
        tokio::select! {
            end = writer => end,
            end = reader => end,
            reason = kick => SessionEnd::Closed(reason),
        }
    };
    finish(&mut sink, &mut stream, end, timing).await;
    end
}

/// PCM16 little-endian bytes to f32 samples in -1..1 (`out` is cleared first).
pub fn pcm16_to_f32(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
    );
}

/// f32 samples to PCM16 little-endian bytes, clamping out-of-range values.
pub fn f32_to_pcm16(samples: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc as chan;

    fn quick(send_within: Duration) -> LinkTiming {
        LinkTiming {
            ping_every: Duration::from_millis(100),
            idle_after: Duration::from_millis(500),
            send_within,
        }
    }

    /// A downlink that takes nothing: the session's first write (`ready`) never completes.
    #[tokio::test]
    async fn a_stuck_downlink_never_holds_up_the_microphone() {
        let (stuck, _never_read) = chan::channel::<Message>(0);
        let (mic, stream) = chan::unbounded::<Result<Message, ()>>();
        let inbox = AudioInbox::new(1000);
        let (_voice_tx, voice) = broadcast::channel(4);
        let session = audio_session(
            stuck,
            stream,
            &inbox,
            voice,
            48_000,
            json!({"type": "ready"}),
            quick(Duration::from_secs(60)),
            std::future::pending(),
        );
        let feed = async {
            for _ in 0..10 {
                mic.unbounded_send(Ok(Message::Binary(vec![0u8; 3840].into())))
                    .unwrap();
                mic.unbounded_send(Ok(Message::Text("{not json".into())))
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // Fed, then every frame must reach the inbox while the downlink stays stuck (polled
        // with a deadline: a host stall must not turn into a false failure).
        let all_heard = async {
            feed.await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while inbox.received() < 10 * 1920 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            end = session => panic!("the session ended: {end:?}"),
            () = all_heard => {}
        }
        assert_eq!(inbox.received(), 10 * 1920);
    }

    #[tokio::test]
    async fn a_kicked_session_says_why_and_a_silent_one_is_closed_as_idle() {
        let (sink, mut sent) = chan::unbounded::<Message>();
        let (_mic, stream) = chan::unbounded::<Result<Message, ()>>();
        let inbox = AudioInbox::new(10);
        let (_voice_tx, voice) = broadcast::channel(4);
        let end = audio_session(
            sink,
            stream,
            &inbox,
            voice,
            48_000,
            json!({"type": "ready"}),
            quick(Duration::from_millis(300)),
            async { CloseReason::Replaced },
        )
        .await;
        assert_eq!(end, SessionEnd::Closed(CloseReason::Replaced));
        let mut last = None;
        while let Ok(msg) = sent.try_recv() {
            last = Some(msg);
        }
        match last {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(
                    (frame.code, frame.reason.as_str()),
                    (4001, "replaced by a newer connection")
                )
            }
            other => panic!("no close frame: {other:?}"),
        }

        // Nothing from the peer: pinged, then closed as idle after the idle timeout.
        let (sink, mut sent) = chan::unbounded::<Message>();
        let (_mic, stream) = chan::unbounded::<Result<Message, ()>>();
        let (_voice_tx, voice) = broadcast::channel(4);
        let started = tokio::time::Instant::now();
        let end = audio_session(
            sink,
            stream,
            &inbox,
            voice,
            48_000,
            json!({"type": "ready"}),
            quick(Duration::from_millis(300)),
            std::future::pending(),
        )
        .await;
        assert_eq!(end, SessionEnd::Closed(CloseReason::Idle));
        assert!(started.elapsed() >= Duration::from_millis(500));
        let mut pings = 0;
        let mut close = None;
        while let Ok(msg) = sent.try_recv() {
            match msg {
                Message::Ping(_) => pings += 1,
                Message::Close(Some(frame)) => close = Some(frame.code),
                _ => {}
            }
        }
        assert!(pings >= 4, "{pings} pings");
        assert_eq!(close, Some(4002));
    }

    #[test]
    fn pcm16_round_trips_within_one_step() {
        let samples = [0.0, 0.5, -0.5, 0.999, -1.0, 1.5, -2.0];
        let bytes = f32_to_pcm16(&samples);
        assert_eq!(bytes.len(), samples.len() * 2);
        let mut back = Vec::new();
        pcm16_to_f32(&bytes, &mut back);
        for (a, b) in samples.iter().zip(&back) {
            assert!(
                (a.clamp(-1.0, 1.0) - b).abs() < 1.0 / 16_000.0,
                "{a} -> {b}"
            );
        }
    }
}
