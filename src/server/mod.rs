//! The HTTP and websocket face of the brain (axum). `app` builds the router so tests can
//! drive it with `oneshot`; `serve` runs it on a listener until the shutdown future ends.

mod api;
mod body;
pub mod error;
mod metrics;
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
use axum::serve::ListenerExt;
use creature_actors::BrainHandle;
use tokio::net::TcpListener;

use crate::config::Config;
use error::ApiError;

pub use ws::{audio_session, f32_to_pcm16, face_session, pcm16_to_f32};

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
    /// Voice loop emits a frame's stats -> its face frame is written to a phone's socket.
    face_latency: creature_actors::histogram::LatencyHistogram,
}

impl AppState {
    pub fn new(brain: Arc<BrainHandle>, config: Config) -> Self {
        AppState {
            inner: Arc::new(Shared {
                brain,
                config,
                started: Instant::now(),
                face_clients: AtomicUsize::new(0),
                audio_busy: AtomicBool::new(false),
                body: Arc::default(),
                face_latency: Default::default(),
            }),
        }
    }

    pub fn brain(&self) -> &Arc<BrainHandle> {
        &self.inner.brain
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// How long face frames take from the voice loop to a phone's socket.
    pub fn face_latency(&self) -> &creature_actors::histogram::LatencyHistogram {
        &self.inner.face_latency
    }

    /// Keep `/ws/audio` closed because `who` already feeds the fast loop.
    pub fn reserve_audio(&self, who: &'static str) {
        self.inner
            .audio_busy
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(
            by = who,
            "phone audio sessions are off: the loop already has a microphone"
        );
    }
}

/// The router with every route of the API.
pub fn app(state: AppState) -> Router {
    let max_body = state.config().server.max_body_bytes;
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/face") }))
        .route("/healthz", get(api::healthz))
        .route("/face", get(|| async { page(FACE_HTML) }))
        .route("/inspector", get(|| async { page(INSPECTOR_HTML) }))
        .route("/ws/face", get(ws::face))
        .route("/ws/audio", get(ws::audio))
        .route("/ws/body", get(body::body))
        .route("/api/actors", get(api::actors))
        .route("/api/actors/{name}", get(api::actor))
        .route("/api/state", get(api::state))
        .route("/api/tasks", post(api::create_task).get(api::list_tasks))
        .route("/api/tasks/{id}", get(api::get_task))
        .route("/api/tasks/{id}/cancel", post(api::cancel_task))
        .route("/api/hear", post(api::hear))
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
        .with_state(state)
}

fn page(html: &'static str) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(html))
}

/// Serve `app` on `listener` until `shutdown` completes, then finish open requests.
pub async fn serve<F>(listener: TcpListener, state: AppState, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    // Small, latency-sensitive messages (face frames, tool calls): no Nagle batching, which
    // with delayed ACKs can hold a message back for 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(cause = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
