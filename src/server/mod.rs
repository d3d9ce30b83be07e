//! The HTTP and websocket face of the brain (axum). `app` builds the router so tests can
//! drive it with `oneshot`; `serve` runs it on a listener until the shutdown future ends.

mod api;
mod assets;
mod body;
pub mod error;
mod events;
mod fanout;
mod guard;
pub mod listener;
mod metrics;
pub mod names;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::{get, post};
use creature_actors::BrainHandle;
use tokio::net::TcpListener;

use crate::config::Config;
use error::ApiError;

pub use guard::{TOKEN_FILE, auth_required, load_or_create_token};
pub use ws::{
    CloseReason, LinkTiming, SessionEnd, audio_session, f32_to_pcm16, face_session, goodbye_within,
    pcm16_to_f32,
};

const FACE_HTML: &str = include_str!("../../face/face.html");
const INSPECTOR_HTML: &str = include_str!("../../face/inspector.html");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    brain: Arc<BrainHandle>,
    config: Config,
    started: Instant,
    /// Face sockets open now, against `server.max_face_clients`.
    face_clients: AtomicUsize,
    /// One audio session at a time: two microphones in one inbox would be noise.
    audio_busy: AtomicBool,
    body: Arc<body::BodyCounters>,
    /// Host/Origin allow-lists, the access token and the request rate buckets.
    guard: guard::Guard,
    /// Who holds the face sockets and the audio seat (newest audio client wins).
    seats: ws::Seats,
    /// Voice loop emits a frame's stats -> its face frame is written to a phone's socket.
    face_latency: Arc<creature_actors::histogram::LatencyHistogram>,
    /// The face sockets' writers' own thread (none if the OS refused one: then they run on
    /// the shared workers).
    face_writers: Option<fanout::FaceWriters>,
    /// Websocket sessions running now (face, audio, body), until each has said goodbye.
    sessions: tokio::sync::watch::Sender<usize>,
    /// Set when the server begins to stop: event streams end on it (they would otherwise
    /// hold the graceful stop for its whole drain time).
    closing: tokio::sync::watch::Sender<bool>,
}

/// Counts one running websocket session while it lives.
pub(crate) struct SessionGuard(tokio::sync::watch::Sender<usize>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl AppState {
    pub fn new(brain: Arc<BrainHandle>, config: Config) -> Self {
        let guard = guard::Guard::new(&config);
        let face_writers = match fanout::FaceWriters::start(config.voice.actor.realtime_priority) {
            Ok(writers) => Some(writers),
            Err(e) => {
                tracing::warn!(cause = %e, "no thread for the face writers; they share the async workers");
                None
            }
        };
        AppState {
            inner: Arc::new(Shared {
                brain,
                config,
                started: Instant::now(),
                face_clients: AtomicUsize::new(0),
                audio_busy: AtomicBool::new(false),
                body: Arc::default(),
                guard,
                seats: ws::Seats::default(),
                face_latency: Default::default(),
                face_writers,
                sessions: tokio::sync::watch::Sender::new(0),
                closing: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    pub fn brain(&self) -> &Arc<BrainHandle> {
        &self.inner.brain
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The access token: always when auth is on (`None` then means it could not be read and
    /// nobody gets in), else only when `[server] token` sets one.
    pub fn access_token(&self) -> Option<&str> {
        self.inner.guard.access_token()
    }

    /// Whether every route but `/healthz` and the static pages needs the access token.
    pub fn auth_on(&self) -> bool {
        self.inner.guard.auth_on()
    }

    /// How long face frames take from the voice loop to a phone's socket.
    pub fn face_latency(&self) -> &creature_actors::histogram::LatencyHistogram {
        &self.inner.face_latency
    }

    /// The face writers' runtime, if it has its own thread.
    pub(crate) fn face_writers(&self) -> Option<&tokio::runtime::Handle> {
        self.inner.face_writers.as_ref().map(|w| w.handle())
    }

    /// Count a websocket session until the guard is dropped.
    pub(crate) fn session(&self) -> SessionGuard {
        self.inner.sessions.send_modify(|n| *n += 1);
        SessionGuard(self.inner.sessions.clone())
    }

    /// Websocket sessions running now.
    pub fn open_sessions(&self) -> usize {
        *self.inner.sessions.borrow()
    }

    /// Wait (at most `within`) until every websocket session has ended; whether they did.
    /// Sessions end with a close frame (1001) once the brain begins to stop.
    pub async fn sessions_closed(&self, within: std::time::Duration) -> bool {
        let mut open = self.inner.sessions.subscribe();
        tokio::time::timeout(within, open.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    /// Ends once the brain begins to stop: every session's cue to close with 1001.
    pub(crate) fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.brain.stopping()
    }

    /// Ends once the server begins to stop or the brain to stop: the event streams' cue.
    pub(crate) fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closing = self.inner.closing.subscribe();
        let stopping = self.stopping();
        async move {
            tokio::select! {
                _ = closing.wait_for(|c| *c) => {}
                () = stopping => {}
            }
        }
    }

    /// Keep `/ws/audio` closed because `who` already feeds the fast loop.
    pub fn reserve_audio(&self, who: &'static str) {
        self.inner
            .audio_busy
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.seats.reserve_audio();
        tracing::info!(
            by = who,
            "phone audio sessions are off: the loop already has a microphone"
        );
    }
}

/// The router with every route of the API.
pub fn app(state: AppState) -> Router {
    let max_body = state.config().server.max_body_bytes;
    let body_timeout = std::time::Duration::from_secs_f64(
        state
            .config()
            .server
            .body_read_timeout_secs
            .clamp(0.001, 1e9),
    );
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/face") }))
        .route("/healthz", get(api::healthz))
        .route("/face", get(|| async { page(FACE_HTML) }))
        .route("/inspector", get(|| async { page(INSPECTOR_HTML) }))
        .route("/static/{*path}", get(assets::asset))
        .route("/ws/face", get(ws::face))
        .route("/ws/audio", get(ws::audio))
        .route("/ws/body", get(body::body))
        .route("/api/actors", get(api::actors))
        .route("/api/actors/{name}", get(api::actor))
        .route("/api/actors/{name}/fail", post(events::fail_actor))
        .route("/api/events", get(events::events))
        .route("/api/state", get(api::state))
        .route("/api/tasks", post(api::create_task).get(api::list_tasks))
        .route("/api/tasks/cancel", post(api::cancel_tasks))
        .route("/api/tasks/{id}", get(api::get_task))
        .route("/api/tasks/{id}/cancel", post(api::cancel_task))
        .route("/api/hear", post(api::hear))
        .route("/api/pair", get(crate::pairing::api_pair))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::not_found("no such route; see README.md for the API") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        // A body that trickles in is cut off (the handler sees a read error)...
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        // ...and one that declares more than the limit is refused before a byte is read.
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            listener::declared_length_limit,
        ))
        // Outermost, so nothing it refuses reaches any other layer or handler, and every
        // response (its own refusals included) gets the security headers.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .with_state(state)
}

fn page(html: &'static str) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(html))
}

/// Serve `app` on `listener` until `shutdown` completes, then finish open requests: HTTPS
/// with `tls`, plain HTTP without. `pairing` (the phone links) answers `GET /api/pair`.
pub async fn serve<F>(
    listener: TcpListener,
    state: AppState,
    tls: Option<Arc<rustls::ServerConfig>>,
    pairing: Option<Arc<crate::pairing::Pairing>>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let server = &state.config().server;
    let options = listener::ListenerOptions {
        tls,
        tls_handshake_timeout: secs_or(server.header_read_timeout_secs, 10.0),
        header_read_timeout: secs_or(server.header_read_timeout_secs, 10.0),
        drain_timeout: std::time::Duration::from_secs(5),
    };
    let closing = state.inner.closing.clone();
    let shutdown = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    let mut router = app(state);
    if let Some(pairing) = pairing {
        router = router.layer(axum::Extension(pairing));
    }
    listener::serve(listener, router, options, shutdown).await
}

/// `secs` as a duration, or `default` when it is not a usable number of seconds.
fn secs_or(secs: f64, default: f64) -> std::time::Duration {
    let secs = if secs.is_finite() && secs > 0.0 && secs < 1e9 {
        secs
    } else {
        default
    };
    std::time::Duration::from_secs_f64(secs)
}
