//! The connection to the Moshi server, run on the backend's own network thread: connect,
//! wait for the handshake, stream user audio up and agent audio and text down, and when
//! anything goes wrong (a lost socket, a malformed message, a server error) drop the
//! session and connect again after an exponential backoff.
//!
//! The step never waits on this: user frames arrive through a bounded channel, and agent
//! audio and text leave through another, each message tagged with its session so the step
//! can discard what belongs to a session that is gone.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::RemoteConfig;
use super::wire::{self, MessageKind, ProtocolError, ServerMessage};
use crate::voice::ogg_opus::{OggOpusError, OggOpusReader, OggOpusWriter};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A session that stayed up this long was healthy: the next reconnect starts again from the
/// shortest backoff. Shorter sessions keep doubling it, so a server that breaks every
/// session right away is not hammered.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// Longest wait for our close frame to go out when a session ends.
const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// Largest websocket message accepted from the server (an 80 ms Ogg page is ~200 bytes).
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Rate limit of each kind of connection warning.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Where the link is, as `status()` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum LinkState {
    /// Opening the socket and waiting for the server's handshake.
    Connecting = 0,
    /// Handshake done; audio flows.
    Connected = 1,
    /// Waiting before the next attempt.
    Backoff = 2,
    /// The backend was dropped.
    Stopped = 3,
}

impl LinkState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Backoff => "backoff",
            LinkState::Stopped => "stopped",
        }
    }

    fn from_u8(v: u8) -> LinkState {
        match v {
            0 => LinkState::Connecting,
            1 => LinkState::Connected,
            2 => LinkState::Backoff,
            _ => LinkState::Stopped,
        }
    }
}

/// What the network thread reports; the step side reads it for `status()`.
#[derive(Debug, Default)]
pub(super) struct LinkShared {
    state: AtomicU8,
    /// The session whose audio is playing; 0 while none is.
    pub(super) live_session: AtomicU64,
    /// Sessions established (handshake received).
    pub(super) sessions: AtomicU64,
    pub(super) connect_attempts: AtomicU64,
    /// Attempts that ended before a handshake (refused, timed out, rejected).
    pub(super) connect_failures: AtomicU64,
    /// Established sessions lost to the socket, the server closing, or silence.
    pub(super) disconnects: AtomicU64,
    /// Server messages that broke the protocol (each one reset the connection).
    pub(super) malformed_messages: AtomicU64,
    /// Error messages (kind 5) from the server (each one reset the connection).
    pub(super) server_errors: AtomicU64,
    /// User frames sent to the server.
    pub(super) frames_sent: AtomicU64,
    /// Agent samples dropped because the step did not collect them in time.
    pub(super) downlink_dropped_samples: AtomicU64,
    pub(super) downlink_dropped_pieces: AtomicU64,
    /// The current backoff, in milliseconds.
    pub(super) backoff_ms: AtomicU64,
    pub(super) notes: Mutex<LinkNotes>,
}

/// The link's last words, for `status()`.
#[derive(Debug, Default, Clone)]
pub(super) struct LinkNotes {
    pub(super) last_error: Option<String>,
    pub(super) last_server_error: Option<String>,
    /// The last metadata message (the Rust server's session settings).
    pub(super) metadata: Option<serde_json::Value>,
}

impl LinkShared {
    pub(super) fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, state: LinkState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub(super) fn notes(&self) -> LinkNotes {
        self.notes.lock().map(|n| n.clone()).unwrap_or_default()
    }

    fn note(&self, f: impl FnOnce(&mut LinkNotes)) {
        if let Ok(mut notes) = self.notes.lock() {
            f(&mut notes);
        }
    }
}

/// Agent output on its way to the step.
#[derive(Debug)]
pub(super) struct Downlink {
    /// The session it came from.
    pub(super) session: u64,
    pub(super) event: DownlinkEvent,
}

#[derive(Debug)]
pub(super) enum DownlinkEvent {
    Audio(Vec<f32>),
    Piece(String),
}

/// Why a connection attempt or a session ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(tokio_tungstenite::tungstenite::Error),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error(
        "no handshake within {0:?}; the server may be busy with another session (Kyutai servers serve one at a time)"
    )]
    NoHandshake(Duration),
    #[error("the server closed the connection before its handshake")]
    ClosedBeforeHandshake,
    #[error("the server reported an error: {0}")]
    Server(String),
    #[error("malformed message from the server: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("connection lost: {0}")]
    Socket(tokio_tungstenite::tungstenite::Error),
    #[error("the server closed the connection{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    #[error("nothing from the server for {0:?}")]
    Idle(Duration),
    #[error("cannot encode the user's audio: {0}")]
    Codec(OggOpusError),
}

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// The backend is going away.
    Shutdown,
    /// `reset()` asked for a fresh conversation.
    Reset,
    Failed(LinkError),
}

/// Lets one warning through per window and counts the ones held back.
#[derive(Debug, Default)]
struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `Some(held back since the last warning)` if a warning may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The network side of the backend: everything the thread owns.
pub(super) struct Link {
    pub(super) config: RemoteConfig,
    /// The URL with the sampling settings in its query string.
    pub(super) session_url: String,
    pub(super) shared: std::sync::Arc<LinkShared>,
    pub(super) uplink: mpsc::Receiver<Vec<f32>>,
    pub(super) downlink: SyncSender<Downlink>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) reset: watch::Receiver<u64>,
}

#[derive(Default)]
struct Warnings {
    connect: WarnLimiter,
    malformed: WarnLimiter,
    server: WarnLimiter,
    lost: WarnLimiter,
}

impl Link {
    /// Connect, stream, reconnect, until the backend is dropped.
    pub(super) async fn run(mut self) {
        let mut backoff = self.config.backoff_min;
        let mut warnings = Warnings::default();
        let mut next_session: u64 = 1;
        let server = self.config.url.clone();
        tracing::info!(%server, "moshi-remote link started");
        loop {
            self.shared.set_state(LinkState::Connecting);
            self.shared.connect_attempts.fetch_add(1, Ordering::Relaxed);
            let opened = tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                opened = open(&self.session_url, self.config.connect_timeout, &self.shared) => opened,
            };
            let mut retry_now = false;
            match opened {
                Ok(socket) => {
                    let session = next_session;
                    next_session += 1;
                    let started = Instant::now();
                    let end = self.session(socket, session).await;
                    if started.elapsed() >= STABLE_SESSION {
                        backoff = self.config.backoff_min;
                    }
                    match end {
                        SessionEnd::Shutdown => break,
                        SessionEnd::Reset => {
                            tracing::info!(%server, session, "moshi-remote session reset on request");
                            retry_now = true;
                        }
                        SessionEnd::Failed(error) => {
                            self.session_failed(session, &error, &mut warnings)
                        }
                    }
                }
                Err(error) => self.connect_failed(&error, &mut warnings, backoff),
            }
            if retry_now {
                continue;
            }
            self.shared.set_state(LinkState::Backoff);
            self.shared
                .backoff_ms
                .store(backoff.as_millis() as u64, Ordering::Relaxed);
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = backoff.saturating_mul(2).min(self.config.backoff_max);
        }
        self.shared.set_state(LinkState::Stopped);
        self.shared.live_session.store(0, Ordering::Relaxed);
        tracing::info!(%server, "moshi-remote link stopped");
    }

    /// Stream one session until it ends.
    async fn session(&mut self, socket: Socket, session: u64) -> SessionEnd {
        let serial = session_serial(session);
        let (writer, reader) = match (OggOpusWriter::new(serial), OggOpusReader::new()) {
            (Ok(w), Ok(r)) => (w, r),
            (Err(e), _) | (_, Err(e)) => return SessionEnd::Failed(LinkError::Codec(e)),
        };
        let (mut sink, stream) = socket.split();
        // Frames queued while disconnected are stale: the server starts a new conversation.
        while self.uplink.try_recv().is_ok() {}
        self.reset.borrow_and_update();
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        self.shared.live_session.store(session, Ordering::Relaxed);
        self.shared.set_state(LinkState::Connected);
        tracing::info!(server = %self.config.url, session, "moshi-remote connected");

        let end = tokio::select! {
            biased;
            _ = self.shutdown.changed() => SessionEnd::Shutdown,
            _ = self.reset.changed() => SessionEnd::Reset,
            end = send_user_audio(&mut sink, &mut self.uplink, writer, &self.shared) => end,
            end = receive(stream, reader, &self.downlink, session, &self.shared, self.config.idle_timeout) => end,
        };

        self.shared.live_session.store(0, Ordering::Relaxed);
        let (code, reason) = match &end {
            SessionEnd::Failed(LinkError::Protocol(_)) => {
                (CloseCode::Protocol, "malformed message")
            }
            SessionEnd::Failed(_) => (CloseCode::Away, "reconnecting"),
            SessionEnd::Reset => (CloseCode::Normal, "conversation reset"),
            SessionEnd::Shutdown => (CloseCode::Normal, "shutting down"),
        };
        let bye = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(bye)).await;
        end
    }

    fn session_failed(&self, session: u64, error: &LinkError, warnings: &mut Warnings) {
        let server = &self.config.url;
        let (counter, limiter, what) = match error {
            LinkError::Protocol(_) => (
                &self.shared.malformed_messages,
                &mut warnings.malformed,
                "malformed message; connection reset",
            ),
            LinkError::Server(_) => (
                &self.shared.server_errors,
                &mut warnings.server,
                "server error; connection reset",
            ),
            _ => (&self.shared.disconnects, &mut warnings.lost, "session lost"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let LinkError::Server(message) = error {
            let message = message.clone();
            self.shared.note(|n| n.last_server_error = Some(message));
        }
        self.shared.note(|n| n.last_error = Some(error.to_string()));
        match limiter.allow() {
            Some(suppressed) => {
                tracing::warn!(%server, session, cause = %error, suppressed, "moshi-remote: {what}")
            }
            None => tracing::debug!(%server, session, cause = %error, "moshi-remote: {what}"),
        }
    }

    fn connect_failed(&self, error: &LinkError, warnings: &mut Warnings, backoff: Duration) {
        let server = &self.config.url;
        match error {
            LinkError::Protocol(_) => self
                .shared
                .malformed_messages
                .fetch_add(1, Ordering::Relaxed),
            LinkError::Server(_) => self.shared.server_errors.fetch_add(1, Ordering::Relaxed),
            _ => self.shared.connect_failures.fetch_add(1, Ordering::Relaxed),
        };
        if let LinkError::Server(message) = error {
            let message = message.clone();
            self.shared.note(|n| n.last_server_error = Some(message));
        }
        self.shared.note(|n| n.last_error = Some(error.to_string()));
        let retry_ms = backoff.as_millis() as u64;
        match warnings.connect.allow() {
            Some(suppressed) => {
                tracing::warn!(%server, cause = %error, retry_ms, suppressed, "moshi-remote: cannot open a session")
            }
            None => {
                tracing::debug!(%server, cause = %error, retry_ms, "moshi-remote: cannot open a session")
            }
        }
    }
}

/// Open the websocket and wait for the server's handshake, each within `timeout`.
async fn open(url: &str, timeout: Duration, shared: &LinkShared) -> Result<Socket, LinkError> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let (mut socket, _response) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| LinkError::ConnectTimeout(timeout))?
        .map_err(LinkError::Connect)?;
    tokio::time::timeout(timeout, handshake(&mut socket, shared))
        .await
        .map_err(|_| LinkError::NoHandshake(timeout))??;
    Ok(socket)
}

/// Read until the handshake. The Rust server sends its metadata first; audio or text before
/// the handshake breaks the protocol.
async fn handshake(socket: &mut Socket, shared: &LinkShared) -> Result<(), LinkError> {
    while let Some(message) = socket.next().await {
        let bytes = match message.map_err(LinkError::Socket)? {
            Message::Binary(bytes) => bytes,
            Message::Text(_) => return Err(ProtocolError::TextFrame.into()),
            Message::Close(_) => return Err(LinkError::ClosedBeforeHandshake),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        match wire::parse(&bytes)? {
            ServerMessage::Handshake => return Ok(()),
            ServerMessage::Metadata(m) => shared.note(|n| n.metadata = Some(m)),
            ServerMessage::Error(message) => return Err(LinkError::Server(message)),
            ServerMessage::Control(_) | ServerMessage::Ping => {}
            ServerMessage::Audio(_) => {
                return Err(ProtocolError::BeforeHandshake(MessageKind::Audio).into());
            }
            ServerMessage::Text(_) => {
                return Err(ProtocolError::BeforeHandshake(MessageKind::Text).into());
            }
        }
    }
    Err(LinkError::ClosedBeforeHandshake)
}

/// Encode each user frame as Ogg/Opus and send it, until the session or the backend ends.
async fn send_user_audio<S>(
    sink: &mut S,
    uplink: &mut mpsc::Receiver<Vec<f32>>,
    mut writer: OggOpusWriter,
    shared: &LinkShared,
) -> SessionEnd
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    while let Some(frame) = uplink.recv().await {
        let ogg = match writer.encode(&frame) {
            Ok(ogg) => ogg,
            Err(e) => return SessionEnd::Failed(LinkError::Codec(e)),
        };
        if ogg.is_empty() {
            continue;
        }
        if let Err(e) = sink
            .send(Message::Binary(wire::audio_message(&ogg).into()))
            .await
        {
            return SessionEnd::Failed(LinkError::Socket(e));
        }
        shared.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
    SessionEnd::Shutdown
}

/// Read the server's messages, decode agent audio, and pass audio and text to the step.
async fn receive<S>(
    mut stream: S,
    mut reader: OggOpusReader,
    downlink: &SyncSender<Downlink>,
    session: u64,
    shared: &LinkShared,
    idle: Duration,
) -> SessionEnd
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let failed = |e: LinkError| SessionEnd::Failed(e);
    loop {
        let message = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return failed(LinkError::Idle(idle)),
            Ok(None) => return failed(LinkError::Closed(None)),
            Ok(Some(Err(e))) => return failed(LinkError::Socket(e)),
            Ok(Some(Ok(message))) => message,
        };
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Text(_) => return failed(ProtocolError::TextFrame.into()),
            Message::Close(frame) => {
                return failed(LinkError::Closed(
                    frame
                        .map(|f| f.reason.to_string())
                        .filter(|r| !r.is_empty()),
                ));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        let event = match wire::parse(&bytes) {
            Err(e) => return failed(e.into()),
            Ok(ServerMessage::Audio(ogg)) => {
                let mut pcm = Vec::new();
                if let Err(e) = reader.push(ogg, &mut pcm) {
                    return failed(ProtocolError::Audio(e.to_string()).into());
                }
                if pcm.is_empty() {
                    continue;
                }
                DownlinkEvent::Audio(pcm)
            }
            Ok(ServerMessage::Text("")) => continue,
            Ok(ServerMessage::Text(piece)) => DownlinkEvent::Piece(piece.to_string()),
            Ok(ServerMessage::Error(message)) => return failed(LinkError::Server(message)),
            Ok(ServerMessage::Metadata(m)) => {
                shared.note(|n| n.metadata = Some(m));
                continue;
            }
            Ok(ServerMessage::Handshake | ServerMessage::Control(_) | ServerMessage::Ping) => {
                continue;
            }
        };
        match downlink.try_send(Downlink { session, event }) {
            Ok(()) => {}
            Err(TrySendError::Full(dropped)) => match dropped.event {
                DownlinkEvent::Audio(pcm) => {
                    shared
                        .downlink_dropped_samples
                        .fetch_add(pcm.len() as u64, Ordering::Relaxed);
                }
                DownlinkEvent::Piece(_) => {
                    shared
                        .downlink_dropped_pieces
                        .fetch_add(1, Ordering::Relaxed);
                }
            },
            Err(TrySendError::Disconnected(_)) => return SessionEnd::Shutdown,
        }
    }
}

/// A serial number for our Ogg stream in a session: differs between sessions and runs.
fn session_serial(session: u64) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ (session as u32).rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_hold_back() {
        let mut w = WarnLimiter::default();
        assert_eq!(w.allow(), Some(0));
        assert_eq!(w.allow(), None);
        assert_eq!(w.allow(), None);
        w.last = Instant::now().checked_sub(WARN_EVERY);
        assert_eq!(w.allow(), Some(2));
    }

    #[test]
    fn states_round_trip() {
        for s in [
            LinkState::Connecting,
            LinkState::Connected,
            LinkState::Backoff,
            LinkState::Stopped,
        ] {
            assert_eq!(LinkState::from_u8(s as u8), s);
        }
    }
}
