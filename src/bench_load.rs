//! Observer load for `creature bench tick --http-rps N --viewers N`: what operators do to a
//! running brain — poll an actor's snapshot (`GET /api/actors/voice`) at a fixed rate and
//! watch the live event stream (`GET /api/events`) — so the bench shows whether the tick
//! budgets hold under it. It runs on a thread and runtime of its own, as a separate
//! machine's browser or script would: it competes with the brain for the CPU, not for its
//! async workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use creature_actors::histogram::{LatencyHistogram, Percentiles};
use serde::Serialize;

/// Requests in flight at most; past it a request is skipped (and counted), so a stalled
/// brain cannot make the load generator pile up sockets.
const MAX_IN_FLIGHT: u64 = 256;

/// What the observers saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ObserverReport {
    pub target_rps: u32,
    /// Requests answered with a 2xx, and their rate over the run.
    pub requests_ok: u64,
    pub requests_per_sec: f64,
    /// Requests answered otherwise, failed, or skipped with too many in flight.
    pub requests_failed: u64,
    pub requests_skipped: u64,
    /// Request -> whole answer read.
    pub request_ms: Percentiles,
    pub viewers: usize,
    /// Viewers whose stream opened (a 2xx), and events they read in all.
    pub viewers_connected: u64,
    pub events_received: u64,
    /// The first error a viewer met, if any (e.g. no `/api/events` on this brain).
    pub viewer_error: Option<String>,
}

/// The running load; [`ObserverLoad::finish`] stops it and reports.
pub struct ObserverLoad {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<ObserverReport>,
}

/// How to reach the brain: its base URL (`http://…` or `https://…`), the certificate to
/// trust (PEM) and the token, where it serves TLS with one.
#[derive(Clone)]
pub struct Target {
    pub base: String,
    pub cert_pem: Option<Vec<u8>>,
    pub token: Option<String>,
}

impl Target {
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(MAX_IN_FLIGHT as usize);
        let certs = match &self.cert_pem {
            Some(pem) => reqwest::Certificate::from_pem_bundle(pem)?,
            None => Vec::new(),
        };
        crate::cli::brain_client(builder, self.token.as_deref(), certs)
    }
}

impl ObserverLoad {
    /// Start `rps` snapshot requests a second and `viewers` event-stream readers.
    pub fn start(target: Target, rps: u32, viewers: usize) -> anyhow::Result<ObserverLoad> {
        let client = target.client().context("the observer load's HTTP client")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the observer load")?;
        let thread = std::thread::Builder::new()
            .name("bench-observers".into())
            .spawn(move || runtime.block_on(run(client, target.base, rps, viewers, flag)))
            .context("a thread for the observer load")?;
        Ok(ObserverLoad { stop, thread })
    }

    pub fn finish(self) -> ObserverReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    in_flight: AtomicU64,
    viewers_connected: AtomicU64,
    events: AtomicU64,
    viewer_error: std::sync::Mutex<Option<String>>,
}

async fn run(
    client: reqwest::Client,
    base: String,
    rps: u32,
    viewers: usize,
    stop: Arc<AtomicBool>,
) -> ObserverReport {
    let counts = Arc::new(Counts::default());
    let latency = Arc::new(LatencyHistogram::new());
    let started = Instant::now();
    let mut readers = Vec::with_capacity(viewers);
    for _ in 0..viewers {
        readers.push(tokio::spawn(view(
            client.clone(),
            format!("{base}/api/events"),
            Arc::clone(&counts),
            Arc::clone(&stop),
        )));
    }
    if rps > 0 {
        let url = format!("{base}/api/actors/voice");
        let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !stop.load(Ordering::Relaxed) {
            every.tick().await;
            if counts.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                counts.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counts.in_flight.fetch_add(1, Ordering::Relaxed);
            let request = client.get(&url);
            let counts = Arc::clone(&counts);
            let latency = Arc::clone(&latency);
            tokio::spawn(async move {
                let sent = Instant::now();
                let answered = match request.timeout(Duration::from_secs(5)).send().await {
                    Ok(response) if response.status().is_success() => {
                        response.bytes().await.is_ok()
                    }
                    _ => false,
                };
                if answered {
                    latency.record(sent.elapsed());
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
                counts.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    } else {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    for reader in readers {
        reader.abort();
    }
    let ok = counts.ok.load(Ordering::Relaxed);
    let viewer_error = counts.viewer_error.lock().ok().and_then(|e| e.clone());
    ObserverReport {
        target_rps: rps,
        requests_ok: ok,
        requests_per_sec: ok as f64 / elapsed.max(1e-9),
        requests_failed: counts.failed.load(Ordering::Relaxed),
        requests_skipped: counts.skipped.load(Ordering::Relaxed),
        request_ms: latency.snapshot().percentiles(),
        viewers,
        viewers_connected: counts.viewers_connected.load(Ordering::Relaxed),
        events_received: counts.events.load(Ordering::Relaxed),
        viewer_error,
    }
}

/// One event-stream viewer: reads the stream until stopped, counting events (an SSE
/// event is a block of fields ending with a blank line; comments are not events);
/// reconnects after a second if the stream ends.
async fn view(client: reqwest::Client, url: String, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match client
            .get(&url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                counts.viewers_connected.fetch_add(1, Ordering::Relaxed);
                let mut response = response;
                // A block counts when it holds a field: the keep-alive comments (lines
                // starting with ':') are not events.
                let mut last = b'\n';
                let mut has_field = false;
                while let Ok(Some(chunk)) = response.chunk().await {
                    for &b in chunk.iter() {
                        if last == b'\n' && b != b'\n' && b != b':' {
                            has_field = true;
                        }
                        if b == b'\n' && last == b'\n' {
                            if has_field {
                                counts.events.fetch_add(1, Ordering::Relaxed);
                            }
                            has_field = false;
                        }
                        last = b;
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
            Ok(response) => note(&counts, format!("GET /api/events: {}", response.status())),
            Err(e) => note(&counts, format!("GET /api/events: {e}")),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn note(counts: &Counts, error: String) {
    if let Ok(mut first) = counts.viewer_error.lock() {
        first.get_or_insert(error);
    }
}
