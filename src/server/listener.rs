//! The accept loop under the router, in place of `axum::serve`: TCP_NODELAY, optional TLS
//! with a handshake timeout, a header-read timeout (slowloris), the peer's address in every
//! request, back-off when the process runs out of file descriptors, and a graceful stop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How the listener treats each connection.
#[derive(Clone)]
pub struct ListenerOptions {
    /// Serve HTTPS with this configuration; plain HTTP without.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A client that has not finished its TLS handshake within this is dropped.
    pub tls_handshake_timeout: Duration,
    /// A client that has not sent a request's headers within this is dropped.
    pub header_read_timeout: Duration,
    /// After the shutdown signal, open connections get this long to finish.
    pub drain_timeout: Duration,
}

impl std::fmt::Debug for ListenerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerOptions")
            .field("tls", &self.tls.is_some())
            .field("tls_handshake_timeout", &self.tls_handshake_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

/// Back-off while accept fails for want of resources (EMFILE, ENFILE, ENOMEM...).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning about failing accepts in this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Accept connections on `listener` and serve `router` on each until `shutdown` completes;
/// then stop accepting and give open connections `drain_timeout` to finish.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    options: ListenerOptions,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let acceptor = options.tls.clone().map(TlsAcceptor::from);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut failing: Option<(Duration, u64)> = None;
    let mut last_warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                if let Some((_, errors)) = failing.take() {
                    tracing::debug!(errors, "accepting connections again");
                }
                accepted
            }
            // The peer gave up before we took it: nothing wrong with us.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                let delay = match &mut failing {
                    None => {
                        failing = Some((FIRST_BACKOFF, 1));
                        FIRST_BACKOFF
                    }
                    Some((delay, errors)) => {
                        *errors += 1;
                        *delay = (*delay * 2).min(MAX_BACKOFF);
                        *delay
                    }
                };
                // One line, not one per retry (nor per flap while the pressure lasts).
                if last_warned.is_none_or(|at: Instant| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        cause = %e,
                        "cannot accept connections (out of file descriptors?); \
                         backing off until it passes"
                    );
                    last_warned = Some(Instant::now());
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        // Small, latency-sensitive messages (face frames, tool calls): no Nagle batching,
        // which with delayed ACKs can hold a message back for 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(cause = %e, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        match &acceptor {
            None => {
                tokio::spawn(serve_connection(tcp, peer, router, builder, watcher));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let handshake_timeout = options.tls_handshake_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => serve_connection(tls, peer, router, builder, watcher).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, cause = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            waited_secs = options.drain_timeout.as_secs_f64(),
            "open connections did not finish in time; closing them"
        );
    }
    Ok(())
}

/// Serve one connection, upgrades (websockets) included.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(%peer, cause = %e, "connection ended with an error");
    }
}

/// Errors about one connection that say nothing about the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Refuse a request whose declared `Content-Length` is over `max_body` before reading any
/// of it: 413 `body_too_large`, and the connection is not kept (the body is never read).
pub async fn declared_length_limit(
    axum::extract::State(max_body): axum::extract::State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > max_body as u64 => {
            let mut response = super::error::ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body declares {length} bytes; at most {max_body} are accepted"),
            )
            .into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
        _ => next.run(request).await,
    }
}
