//! `creature bench tick`: the fast loop under the worst load the design allows. The slow
//! loop is saturated (many concurrent slow plans, and a CPU-bound planner keeping one core
//! busy), 100 phone faces are connected over real websockets, and the `sim` voice talks.
//! It reports tick jitter, model compute, loop overhead, overruns, and how long a face
//! frame takes from the voice loop to a socket, and checks them against the budgets.
//! Each tick's lateness is split into the host's part (the ticker's wake-up, with the
//! host's steal time over the same window) and the brain's own (hand-off + loop), with the
//! allocations per tick on the loop's threads beside it (in an `alloc-count` build).
//! `--beside CMD` runs a neighbour (a build, busy loops) for the whole window.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use creature_actors::histogram::{LatencyHistogram, Percentiles};
use creature_actors::ports::{
    Action, Intent, PhysicalTask, PlanContext, PlanOutcome, Planner, PlannerError,
};
use creature_actors::rules::RulePlanner;
use futures::StreamExt;
use serde::Serialize;

use crate::config::{Backend, Config};
use crate::service::{Service, start_brain_with};
use crate::voice;
use crate::voice::moshi::{MoshiDevice, MoshiDtype};

#[derive(Debug, Clone, clap::Args)]
pub struct TickBenchArgs {
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Phone faces connected over websockets.
    #[arg(long, default_value_t = 100)]
    pub faces: usize,
    /// Deliberations kept running at once.
    #[arg(long, default_value_t = 100)]
    pub slow_plans: usize,
    /// How long each plan thinks (asleep, like an LLM call), in ms.
    #[arg(long, default_value_t = 2_000)]
    pub plan_ms: u64,
    /// CPU each plan burns, one plan at a time, so one core stays busy, in ms.
    #[arg(long, default_value_t = 40)]
    pub plan_cpu_ms: u64,
    /// Leave the fast loop's threads at normal priority (to see what real-time buys).
    #[arg(long)]
    pub no_realtime: bool,
    /// Type no lines to the voice (by default one every 3 s, which it answers aloud): a
    /// silent run shows what ticks alone cost, since composing and speaking text
    /// allocates where ticks do not.
    #[arg(long)]
    pub silent: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A neighbour to run (through `sh -c`) for the whole window, e.g.
    /// `'nice -n 19 cargo build --release'`; its process group is killed at the end.
    #[arg(long, value_name = "CMD")]
    pub beside: Option<String>,
    /// Serve as `serve --lan` does (HTTPS with the self-signed certificate, the access
    /// token on) and connect the faces over TLS, to see what TLS costs per frame.
    #[arg(long)]
    pub lan: bool,
    /// Observer load: this many `GET /api/actors/voice` a second, during the whole run.
    #[arg(long, default_value_t = 0)]
    pub http_rps: u32,
    /// Observer load: this many readers of the event stream (`GET /api/events`).
    #[arg(long, default_value_t = 0)]
    pub viewers: usize,
}

/// How the simulated faces reach a LAN-mode brain: TLS pinned to its certificate, and
/// the access token as a bearer.
#[derive(Clone)]
struct FaceTls {
    connector: tokio_rustls::TlsConnector,
    token: Option<String>,
}

impl FaceTls {
    fn for_service(service: &Service) -> anyhow::Result<Option<FaceTls>> {
        let Some(cert) = service.cert_path() else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in crate::pairing::read_certs(cert)? {
            roots.add(cert)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::pairing::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(FaceTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            token: service.access_token().map(str::to_string),
        }))
    }
}

/// A face socket's byte stream, plain or TLS.
trait FaceIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> FaceIo for T {}

/// One face socket: plain, or over TLS with the token.
async fn connect_face(
    url: &str,
    tls: Option<&FaceTls>,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<Box<dyn FaceIo>>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    let host = request
        .uri()
        .host()
        .context("a face URL without a host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let stream: Box<dyn FaceIo> = match tls {
        None => Box::new(tcp),
        Some(tls) => {
            if let Some(token) = &tls.token {
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
            }
            let name = rustls::pki_types::ServerName::try_from(host)?;
            Box::new(tls.connector.connect(name, tcp).await?)
        }
    };
    Ok(tokio_tungstenite::client_async(request, stream).await?.0)
}

/// A neighbour process for the length of the bench; killed with its process group on drop.
struct Neighbour {
    child: std::process::Child,
}

impl Neighbour {
    fn start(cmd: &str) -> anyhow::Result<Neighbour> {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start the neighbour {cmd:?}"))?;
        Ok(Neighbour { child })
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        // The whole group: `sh -c` and whatever it started (cargo, rustc, busy loops).
        let group = format!("-{}", self.child.id());
        for signal in ["-TERM", "-KILL"] {
            let _ = std::process::Command::new("kill")
                .args([signal, "--", group.as_str()])
                .stderr(std::process::Stdio::null())
                .status();
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = self.child.wait();
    }
}

/// A planner that is slow twice over: it waits like a remote LLM, then computes on a CPU
/// core of its own. Its compute thread runs at background priority, as CPU-heavy slow-loop
/// work should (`creature_actors::realtime::demote_current_thread`): it takes a whole core
/// when the faster loops leave one free, and yields when they need it.
struct LoadPlanner {
    think: Duration,
    /// Jobs for the compute thread: how long to compute, and whom to tell when done.
    core: std::sync::mpsc::SyncSender<(Duration, tokio::sync::oneshot::Sender<()>)>,
    cpu: Duration,
    rules: RulePlanner,
}

impl LoadPlanner {
    fn new(think: Duration, cpu: Duration) -> anyhow::Result<LoadPlanner> {
        let (core, jobs) =
            std::sync::mpsc::sync_channel::<(Duration, tokio::sync::oneshot::Sender<()>)>(1024);
        std::thread::Builder::new()
            .name("bench-planner-cpu".into())
            .spawn(move || {
                creature_actors::realtime::demote_current_thread("bench-planner-cpu");
                while let Ok((cpu, done)) = jobs.recv() {
                    let until = Instant::now() + cpu;
                    let mut x: u64 = 1;
                    while Instant::now() < until {
                        for _ in 0..1_000 {
                            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        }
                        std::hint::black_box(x);
                    }
                    let _ = done.send(());
                }
            })?;
        Ok(LoadPlanner {
            think,
            core,
            cpu,
            rules: RulePlanner::default(),
        })
    }
}

#[async_trait::async_trait]
impl Planner for LoadPlanner {
    fn name(&self) -> &'static str {
        "bench-load"
    }

    async fn plan(&self, ctx: PlanContext) -> Result<PlanOutcome, PlannerError> {
        tokio::time::sleep(self.think).await;
        let (done, computed) = tokio::sync::oneshot::channel();
        self.core
            .try_send((self.cpu, done))
            .map_err(|e| PlannerError::Failed(format!("compute queue: {e}")))?;
        computed
            .await
            .map_err(|e| PlannerError::Failed(e.to_string()))?;
        self.rules.plan_now(&ctx)
    }
}

#[derive(Debug, Serialize)]
pub struct TickBenchReport {
    pub seconds: f64,
    pub faces: usize,
    pub slow_plans: usize,
    pub backend: &'static str,
    pub ticks: u64,
    pub overruns: u64,
    pub missed_ticks: u64,
    pub jitter_ms: Percentiles,
    pub interval_ms: Percentiles,
    pub compute_ms: Percentiles,
    pub overhead_ms: Percentiles,
    /// Each tick's lateness in parts: the host's (wake) and the brain's own (hand-off +
    /// loop).
    pub lateness: creature_actors::voice::LatenessSplit,
    /// CPU time the hypervisor stole during the window, all CPUs together (ms).
    pub host_steal_ms: Option<f64>,
    /// Allocations on the loop's threads during the window (null unless built with
    /// `--features alloc-count`).
    pub allocations: Option<creature_actors::realtime::LoopAllocations>,
    pub allocations_per_tick: Option<f64>,
    /// The neighbour that ran beside the bench, if any.
    pub beside: Option<String>,
    /// The observer load (`--http-rps`, `--viewers`), if any.
    pub observers: Option<crate::bench_load::ObserverReport>,
    /// Voice loop emits a frame's stats -> the face message is written to a phone's socket
    /// (measured by the server, per frame and socket).
    pub face_written_ms: Percentiles,
    /// ... -> the message is read by the client (adds the clients' own scheduling, on the
    /// same two cores).
    pub face_received_ms: Percentiles,
    pub face_msgs_per_sec_min: f64,
    pub face_msgs_per_sec_mean: f64,
    pub plans_finished: u64,
    pub tasks_filed: u64,
    pub budgets: Vec<Budget>,
}

#[derive(Debug, Serialize)]
pub struct Budget {
    pub what: &'static str,
    pub limit: String,
    pub measured: String,
    pub pass: bool,
}

/// What one face socket saw: (seq, when it arrived).
type Arrivals = Vec<(u64, Instant)>;

fn run_face_clients(
    url: String,
    n: usize,
    stop: Arc<AtomicBool>,
    tls: Option<FaceTls>,
) -> std::thread::JoinHandle<Vec<Arrivals>> {
    // The phones get their own runtime thread, as separate devices would be separate
    // processes: they compete for the CPU, not for the brain's async workers.
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(cause = %e, "bench: no runtime for the face clients");
                return Vec::new();
            }
        };
        rt.block_on(async move {
            let mut clients = Vec::with_capacity(n);
            for _ in 0..n {
                let url = url.clone();
                let stop = Arc::clone(&stop);
                let tls = tls.clone();
                clients.push(tokio::spawn(async move {
                    let mut seen = Vec::with_capacity(1024);
                    let mut socket = match connect_face(&url, tls.as_ref()).await {
                        Ok(socket) => socket,
                        Err(e) => {
                            tracing::warn!(cause = %e, "bench: a face could not connect");
                            return seen;
                        }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let next =
                            tokio::time::timeout(Duration::from_millis(200), socket.next()).await;
                        match next {
                            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                                let at = Instant::now();
                                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                                    if let Some(seq) = v["seq"].as_u64() {
                                        seen.push((seq, at));
                                    }
                                }
                            }
                            Ok(Some(Ok(_))) | Err(_) => {}
                            Ok(None) | Ok(Some(Err(_))) => break,
                        }
                    }
                    seen
                }));
            }
            let mut all = Vec::with_capacity(n);
            for c in clients {
                all.push(c.await.unwrap_or_default());
            }
            all
        })
    })
}

#[allow(clippy::print_stdout)]
pub async fn tick(args: TickBenchArgs) -> anyhow::Result<()> {
    let report = run_tick(&args).await?;
    print_report(&args, &report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub async fn run_tick(args: &TickBenchArgs) -> anyhow::Result<TickBenchReport> {
    let (data, mut config) = bench_config()?;
    config.voice.actor.realtime_priority = !args.no_realtime;
    config.server.max_face_clients = args.faces + 16;
    // Every simulated face comes from this machine: past the per-address cap the oldest
    // would be closed to seat the next.
    config.server.max_face_clients_per_addr = args.faces + 16;
    config.reasoner.actor.max_in_flight = args.slow_plans.max(1);
    config.reasoner.actor.queue_capacity = args.slow_plans.max(1) * 2;
    let planner = LoadPlanner::new(
        Duration::from_millis(args.plan_ms),
        Duration::from_millis(args.plan_cpu_ms),
    )?;
    let model = voice::build(&config)?;
    let brain = start_brain_with(&config, model, Some(Arc::new(planner))).await?;
    let service = if args.lan {
        config.server.lan = true;
        // LAN mode as served, but reached on loopback.
        let bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        Service::serve_on(config, Arc::clone(&brain), bind).await?
    } else {
        Service::serve(config, Arc::clone(&brain)).await?
    };
    let addr = service.addr();
    let face_tls = FaceTls::for_service(&service)?;
    let ws_scheme = if face_tls.is_some() { "wss" } else { "ws" };
    eprintln!(
        "bench: brain on {addr}; connecting {} faces{}, saturating the slow loop...",
        args.faces,
        if face_tls.is_some() { " over TLS" } else { "" }
    );

    let neighbour = match &args.beside {
        Some(cmd) => {
            eprintln!("bench: running beside {cmd:?}");
            Some(Neighbour::start(cmd)?)
        }
        None => None,
    };
    let observers = if args.http_rps > 0 || args.viewers > 0 {
        eprintln!(
            "bench: observers: {} requests/s to /api/actors/voice, {} event-stream viewers",
            args.http_rps, args.viewers
        );
        let scheme = if face_tls.is_some() { "https" } else { "http" };
        let cert_pem = match service.cert_path() {
            Some(path) => Some(
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            ),
            None => None,
        };
        let target = crate::bench_load::Target {
            base: format!("{scheme}://{addr}"),
            cert_pem,
            token: service.access_token().map(str::to_string),
        };
        Some(crate::bench_load::ObserverLoad::start(
            target,
            args.http_rps,
            args.viewers,
        )?)
    } else {
        None
    };
    let stop = Arc::new(AtomicBool::new(false));
    let clients = run_face_clients(
        format!("{ws_scheme}://{addr}/ws/face"),
        args.faces,
        Arc::clone(&stop),
        face_tls,
    );

    // Record when each face frame left the voice loop, by sequence number.
    let sources: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let recorder = {
        let mut rx = brain.face.subscribe();
        let sources = Arc::clone(&sources);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if tokio::time::timeout(Duration::from_millis(200), rx.changed())
                    .await
                    .is_err()
                {
                    continue;
                }
                let update = rx.borrow_and_update().clone();
                if let (Some(at), Ok(mut map)) = (update.source_at, sources.lock()) {
                    map.insert(update.frame.seq, at);
                }
            }
        })
    };

    // Keep the slow loop saturated and the voice talking.
    let feeder = {
        let brain = Arc::clone(&brain);
        let stop = Arc::clone(&stop);
        let target = args.slow_plans as u64;
        let silent = args.silent;
        tokio::spawn(async move {
            let objects = [
                "cup", "ball", "book", "keys", "remote", "apple", "sock", "pen",
            ];
            let lines = [
                "bring me the cup",
                "how are you today",
                "pick up the red ball",
                "what is your name",
            ];
            let mut n: u64 = 0;
            let mut last_line = Instant::now() - Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) {
                if let Ok(snap) = brain.reasoner.snapshot().await {
                    let busy = snap["in_flight"].as_u64().unwrap_or(0)
                        + snap["queued"].as_u64().unwrap_or(0);
                    for _ in busy..target + 4 {
                        n += 1;
                        let object = objects[(n % objects.len() as u64) as usize];
                        let task = PhysicalTask {
                            action: Action::Bring,
                            object: object.into(),
                            destination: None,
                            utterance: format!("I'll bring you the {object}."),
                            confidence: 0.9,
                        };
                        brain.reasoner.intent(
                            Intent {
                                task,
                                tick: 0,
                                detector: "bench".into(),
                            },
                            vec![],
                        );
                    }
                }
                if !silent && last_line.elapsed() > Duration::from_secs(3) {
                    let _ = brain.voice.hear(lines[(n % lines.len() as u64) as usize]);
                    last_line = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Let the load build up before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = brain.voice.metrics();
    let before = (
        m.jitter.snapshot(),
        m.interval.snapshot(),
        m.compute.snapshot(),
        m.overhead.snapshot(),
    );
    let split_before = [
        m.wake.snapshot(),
        m.handoff.snapshot(),
        m.tick_work.snapshot(),
        m.own.snapshot(),
    ];
    let steal0 = creature_actors::realtime::host_steal();
    let allocs0 = creature_actors::realtime::loop_allocations();
    let face_before = service.face_latency().snapshot();
    let counters = |m: &creature_actors::voice::VoiceMetrics| {
        (
            m.ticks.load(Ordering::Relaxed),
            m.overruns.load(Ordering::Relaxed),
            m.missed_ticks.load(Ordering::Relaxed),
        )
    };
    let c0 = counters(m);
    let tasks0 = brain.tasks.summary().await.map(|s| s.total).unwrap_or(0);
    let reasoner0 = brain.reasoner.snapshot().await.ok();
    let window_start = Instant::now();
    let mut next_progress = Instant::now() + Duration::from_secs(10);
    while window_start.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if Instant::now() >= next_progress {
            eprintln!(
                "bench: {:>3} s of {} ...",
                window_start.elapsed().as_secs(),
                args.seconds
            );
            next_progress += Duration::from_secs(10);
        }
    }
    let window_end = Instant::now();
    let elapsed = window_start.elapsed().as_secs_f64();
    let after = (
        m.jitter.snapshot(),
        m.interval.snapshot(),
        m.compute.snapshot(),
        m.overhead.snapshot(),
    );
    let split_after = [
        m.wake.snapshot(),
        m.handoff.snapshot(),
        m.tick_work.snapshot(),
        m.own.snapshot(),
    ];
    let steal1 = creature_actors::realtime::host_steal();
    let allocs1 = creature_actors::realtime::loop_allocations();
    let face_written = service
        .face_latency()
        .snapshot()
        .since(&face_before)
        .percentiles();
    let c1 = counters(m);
    let tasks1 = brain.tasks.summary().await.map(|s| s.total).unwrap_or(0);
    let reasoner1 = brain.reasoner.snapshot().await.ok();

    stop.store(true, Ordering::Relaxed);
    let observers = match observers {
        Some(load) => Some(tokio::task::spawn_blocking(move || load.finish()).await?),
        None => None,
    };
    let arrivals = tokio::task::spawn_blocking(move || clients.join().unwrap_or_default()).await?;
    let _ = recorder.await;
    let _ = feeder.await;
    drop(neighbour);
    service.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);

    let sources = sources.lock().map(|m| m.clone()).unwrap_or_default();
    let latency = LatencyHistogram::new();
    let mut rates = Vec::new();
    for client in &arrivals {
        let in_window = client
            .iter()
            .filter(|(_, at)| *at >= window_start && *at <= window_end);
        let mut count = 0u64;
        for (seq, at) in in_window {
            count += 1;
            if let Some(src) = sources.get(seq) {
                latency.record(at.saturating_duration_since(*src));
            }
        }
        rates.push(count as f64 / elapsed);
    }
    rates.resize(args.faces, 0.0); // a client that never connected counts as zero
    let planned =
        |s: &Option<serde_json::Value>| s.as_ref().and_then(|v| v["planned"].as_u64()).unwrap_or(0);

    let jitter = after.0.since(&before.0).percentiles();
    let overhead = after.3.since(&before.3).percentiles();
    let face_latency = latency.percentiles();
    let overruns = c1.1 - c0.1;
    let missed = c1.2 - c0.2;
    let rate_min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let part = |i: usize| split_after[i].since(&split_before[i]).percentiles();
    let lateness = creature_actors::voice::LatenessSplit {
        wake_ms: part(0),
        handoff_ms: part(1),
        loop_ms: part(2),
        own_ms: part(3),
    };
    let host_steal_ms = match (steal0, steal1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64() * 1000.0),
        _ => None,
    };
    let ticks = c1.0 - c0.0;
    let allocations = allocs0.zip(allocs1).map(|(a, b)| b.since(&a));
    let allocations_per_tick = allocations.map(|a| a.total() as f64 / ticks.max(1) as f64);
    let mut budgets = vec![
        Budget {
            what: "own lateness (hand-off + loop) p99",
            limit: "< 0.5 ms".into(),
            measured: format!("{:.3} ms", lateness.own_ms.p99_ms),
            pass: lateness.own_ms.p99_ms < 0.5,
        },
        Budget {
            what: "tick jitter p99",
            limit: "< 2 ms".into(),
            measured: format!("{:.3} ms", jitter.p99_ms),
            pass: jitter.p99_ms < 2.0,
        },
        Budget {
            what: "overruns and missed ticks",
            limit: "0".into(),
            measured: format!("{overruns} + {missed}"),
            pass: overruns + missed == 0,
        },
        Budget {
            what: "loop overhead p99",
            limit: "< 0.5 ms".into(),
            measured: format!("{:.3} ms", overhead.p99_ms),
            pass: overhead.p99_ms < 0.5,
        },
        Budget {
            what: "agent frame -> face socket p99",
            limit: "< 5 ms".into(),
            measured: format!("{:.3} ms", face_written.p99_ms),
            pass: face_written.p99_ms < 5.0 && face_written.count > 0,
        },
        Budget {
            what: "face messages per client",
            limit: ">= 11 /s".into(),
            measured: format!("min {rate_min:.2} /s"),
            pass: rate_min >= 11.0,
        },
    ];
    if let Some(per_tick) = allocations_per_tick {
        budgets.push(Budget {
            what: "allocations per tick, loop threads",
            limit: "0".into(),
            measured: format!("{per_tick:.2}"),
            pass: per_tick == 0.0,
        });
    }
    Ok(TickBenchReport {
        seconds: elapsed,
        faces: args.faces,
        slow_plans: args.slow_plans,
        backend: brain.voice.backend(),
        ticks,
        overruns,
        missed_ticks: missed,
        jitter_ms: jitter,
        interval_ms: after.1.since(&before.1).percentiles(),
        compute_ms: after.2.since(&before.2).percentiles(),
        overhead_ms: overhead,
        lateness,
        host_steal_ms,
        allocations,
        allocations_per_tick,
        beside: args.beside.clone(),
        observers,
        face_written_ms: face_written,
        face_received_ms: face_latency,
        face_msgs_per_sec_min: rate_min,
        face_msgs_per_sec_mean: rates.iter().sum::<f64>() / rates.len().max(1) as f64,
        plans_finished: planned(&reasoner1).saturating_sub(planned(&reasoner0)),
        tasks_filed: tasks1.saturating_sub(tasks0),
        budgets,
    })
}

/// The defaults, with a fresh ledger in a temporary directory and a free port.
fn bench_config() -> anyhow::Result<(PathBuf, Config)> {
    let data = std::env::temp_dir().join(format!("creature-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let mut server = Config::default().server;
    server.addr = "127.0.0.1:0".parse()?;
    Ok((
        data.clone(),
        Config {
            data_dir: data,
            server,
            ..Config::default()
        },
    ))
}

#[allow(clippy::print_stdout)]
fn print_report(args: &TickBenchArgs, r: &TickBenchReport) {
    let p = |x: &Percentiles| {
        format!(
            "p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            x.p50_ms, x.p99_ms, x.max_ms
        )
    };
    println!(
        "creature bench tick: {:.0} s, {} voice, {} faces, {} slow plans ({} ms think + {} ms CPU each, one core busy)",
        r.seconds, r.backend, r.faces, r.slow_plans, args.plan_ms, args.plan_cpu_ms
    );
    println!(
        "ticks             {} (overruns {}, missed {})",
        r.ticks, r.overruns, r.missed_ticks
    );
    println!("tick jitter       {}", p(&r.jitter_ms));
    println!("tick interval     {}", p(&r.interval_ms));
    println!("model compute     {}", p(&r.compute_ms));
    println!("loop overhead     {}", p(&r.overhead_ms));
    println!("lateness, host:");
    println!("  wake-up         {}", p(&r.lateness.wake_ms));
    match r.host_steal_ms {
        Some(ms) => println!(
            "  host steal      {ms:.0} ms in the window ({:.2} % of one CPU)",
            ms / 10.0 / r.seconds.max(1e-9)
        ),
        None => println!("  host steal      unknown (no /proc/stat)"),
    }
    println!("lateness, own:");
    println!("  hand-off        {}", p(&r.lateness.handoff_ms));
    println!("  loop            {}", p(&r.lateness.loop_ms));
    println!("  hand-off + loop {}", p(&r.lateness.own_ms));
    match (&r.allocations, r.allocations_per_tick) {
        (Some(a), Some(per_tick)) => println!(
            "allocations       {per_tick:.2} per tick (ticker {}, loop {}, model {})",
            a.ticker, a.voice_loop, a.model
        ),
        _ => println!("allocations       not counted (build with --features alloc-count)"),
    }
    if let Some(o) = &r.observers {
        println!(
            "observers         {:.0} snapshot requests/s of {} ({} failed, {} skipped), answered in {}",
            o.requests_per_sec,
            o.target_rps,
            o.requests_failed,
            o.requests_skipped,
            p(&o.request_ms)
        );
        println!(
            "                  {} event-stream viewers ({} connections), {} events read{}",
            o.viewers,
            o.viewers_connected,
            o.events_received,
            o.viewer_error
                .as_deref()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(cmd) = &r.beside {
        println!("beside            {cmd}");
    }
    println!(
        "frame -> socket   {}  ({} writes)",
        p(&r.face_written_ms),
        r.face_written_ms.count
    );
    println!(
        "frame -> client   {}  ({} messages read by the clients)",
        p(&r.face_received_ms),
        r.face_received_ms.count
    );
    println!(
        "face msgs/client  min {:.2}/s  mean {:.2}/s",
        r.face_msgs_per_sec_min, r.face_msgs_per_sec_mean
    );
    println!(
        "slow loop         {} plans finished, {} tasks filed",
        r.plans_finished, r.tasks_filed
    );
    for b in &r.budgets {
        println!(
            "budget  {:<32} {:<10} {:<22} {}",
            b.what,
            b.limit,
            b.measured,
            if b.pass { "PASS" } else { "FAIL" }
        );
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct IntentBenchArgs {
    /// How many intents to time, one after another.
    #[arg(long, default_value_t = 1000)]
    pub intents: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct IntentBenchReport {
    pub intents: usize,
    /// Intents whose tool call reached the body.
    pub delivered: usize,
    /// Last monologue piece cast -> `tool_call` read from the body's socket (the task is on
    /// disk before it is sent).
    pub latency_ms: Percentiles,
    pub budget_p99_ms: f64,
    pub pass: bool,
}

const ADJECTIVES: [&str; 25] = [
    "red", "blue", "green", "yellow", "small", "big", "old", "new", "wooden", "metal", "striped",
    "shiny", "soft", "heavy", "light", "round", "square", "tall", "short", "white", "black",
    "golden", "purple", "pink", "brown",
];
const NOUNS: [&str; 40] = [
    "cup", "ball", "book", "box", "bottle", "spoon", "plate", "bowl", "pen", "pencil", "shoe",
    "sock", "hat", "scarf", "glove", "towel", "pillow", "blanket", "lamp", "clock", "phone",
    "remote", "key", "wallet", "bag", "basket", "toy", "block", "brush", "comb", "mug", "jar",
    "can", "apple", "banana", "orange", "candle", "notebook", "charger", "cable",
];

/// `creature bench intent`: how long from the text piece that completes a commitment to
/// the tool call arriving on the body's socket.
#[allow(clippy::print_stdout)]
pub async fn intent(args: IntentBenchArgs) -> anyhow::Result<()> {
    let report = run_intent(&args).await?;
    let p = &report.latency_ms;
    println!(
        "creature bench intent: {} intents, one at a time, sim voice, sled ledger, one body socket",
        report.intents
    );
    println!(
        "delivered          {} of {}",
        report.delivered, report.intents
    );
    println!(
        "piece -> body      p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
    );
    println!(
        "budget  p99 < {:.0} ms: {}",
        report.budget_p99_ms,
        if report.pass { "PASS" } else { "FAIL" }
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub async fn run_intent(args: &IntentBenchArgs) -> anyhow::Result<IntentBenchReport> {
    use creature_actors::signals::TextPiece;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let (data, config) = bench_config()?;
    let token = config.body.token.clone();
    let service = Service::start(config).await?;
    let brain = Arc::clone(service.brain());
    let mut req = format!("ws://{}/ws/body", service.addr()).into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);

    // The body reads on its own thread and runtime, stamping each tool call as it arrives,
    // and acknowledges it like a real body would.
    let (arrivals_tx, arrivals_rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let body = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (mut socket, _) = tokio_tungstenite::connect_async(req).await?;
            while let Some(Ok(msg)) = socket.next().await {
                let Message::Text(text) = msg else { continue };
                let at = Instant::now();
                let v: serde_json::Value = serde_json::from_str(&text)?;
                if v["type"] == "tool_call" {
                    let object = v["arguments"]["object"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if arrivals_tx.send((object, at)).is_err() {
                        break;
                    }
                    let ack =
                        serde_json::json!({"type": "status", "id": v["id"], "state": "accepted"});
                    futures::SinkExt::send(&mut socket, Message::text(ack.to_string())).await?;
                }
            }
            Ok(())
        })
    });

    let latency = LatencyHistogram::new();
    let mut delivered = 0;
    let mut tick = 0u64;
    for i in 0..args.intents {
        let object = format!(
            "{} {}",
            ADJECTIVES[i % ADJECTIVES.len()],
            NOUNS[(i / ADJECTIVES.len()) % NOUNS.len()]
        );
        let words = ["Okay,", "I'll", "bring", "you", "the"];
        for w in words.iter().copied().chain(object.split(' ').take(1)) {
            tick += 1;
            brain.monologue.text_piece(TextPiece {
                tick,
                text: format!(" {w}").into(),
            });
        }
        // Let the watcher take the first pieces in; then time the piece that completes it.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let last = format!(" {}.", object.split(' ').nth(1).unwrap_or("cup"));
        tick += 1;
        let sent = Instant::now();
        brain.monologue.text_piece(TextPiece {
            tick,
            text: last.into(),
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match arrivals_rx.recv_timeout(left) {
                Ok((got, at)) if got == object => {
                    latency.record(at.saturating_duration_since(sent));
                    delivered += 1;
                    break;
                }
                Ok(_) => continue, // a redelivery of an earlier task
                Err(_) => {
                    tracing::warn!(%object, "bench: no tool call within 2 s");
                    break;
                }
            }
        }
        if i % 100 == 99 {
            eprintln!("bench: {} intents ...", i + 1);
        }
    }
    service.shutdown().await;
    drop(arrivals_rx);
    let _ = body.join();
    let _ = std::fs::remove_dir_all(&data);
    let latency_ms = latency.percentiles();
    let budget = 10.0;
    Ok(IntentBenchReport {
        intents: args.intents,
        delivered,
        pass: delivered == args.intents && latency_ms.p99_ms < budget,
        latency_ms,
        budget_p99_ms: budget,
    })
}

#[derive(Debug, Clone, clap::Args)]
pub struct TurnBenchArgs {
    /// The `sim` voice's reply delay for spoken turns, in ms (its measured response
    /// latency must come out as this, within a frame).
    #[arg(long, default_value_t = 160)]
    pub reply_delay_ms: u64,
    /// The voices to run, one after the other.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sim,moshi,cascade"
    )]
    pub voices: Vec<Backend>,
    /// `tiny`: random checkpoints written for the bench (any CPU); `real`: the checkpoints
    /// given with --moshi-dir, --stt-dir and --tts-dir (real sizes: Kyutai's, or the
    /// random ones `creature moshi random` writes).
    #[arg(long, value_enum, default_value = "tiny")]
    pub size: BenchSize,
    /// Where the models compute (`cuda` needs a `--features cuda` build and a GPU).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: MoshiDevice,
    /// The models' number format (`auto`: bf16 on CUDA, f32 elsewhere; `f16` halves a
    /// real size's memory on a CPU).
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: MoshiDtype,
    /// A Moshi checkpoint (instead of a tiny random one).
    #[arg(long)]
    pub moshi_dir: Option<PathBuf>,
    /// The cascade's STT and TTS checkpoints (instead of tiny random ones).
    #[arg(long)]
    pub stt_dir: Option<PathBuf>,
    #[arg(long)]
    pub tts_dir: Option<PathBuf>,
    /// The cascade's LLM stand-in: the built-in responder answers this long after the
    /// transcript is final (stream time).
    #[arg(long, default_value_t = 320)]
    pub responder_delay_ms: u64,
    /// A virtual clock (step as fast as the model allows) instead of real time.
    #[arg(long)]
    pub fast: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Checkpoint sizes for `bench turn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchSize {
    Tiny,
    Real,
}

/// One piece of the bench's scripted conversation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ScriptPiece {
    pub seconds: f64,
    pub speaking: bool,
    /// What the piece is for.
    pub what: &'static str,
}

/// The conversation `bench turn` plays: turns with pauses of known length, a barge-in
/// timed for the `sim` voice's reply, and a turn long enough for a backchannel. Pieces are
/// whole 80 ms frames, so every boundary falls on a frame.
pub fn turn_script(reply_delay_ms: u64) -> Vec<ScriptPiece> {
    let piece = |seconds: f64, speaking: bool, what: &'static str| ScriptPiece {
        seconds,
        speaking,
        what,
    };
    // Into the reply: hangover (240 ms) + reply delay + 320 ms of the reply.
    let barge_after = (240 + reply_delay_ms + 320) as f64 / 1000.0;
    vec![
        piece(0.4, false, "lead-in"),
        piece(1.2, true, "turn 1"),
        piece(2.4, false, "pause for the reply"),
        piece(0.8, true, "turn 2"),
        piece(barge_after, false, "pause, cut short"),
        piece(0.96, true, "turn 3: barge-in 320 ms into the reply"),
        piece(1.2, false, "pause"),
        piece(3.2, true, "turn 4: long, room for a backchannel"),
        piece(2.4, false, "pause for the reply"),
        piece(0.48, true, "turn 5: short"),
        piece(2.4, false, "tail"),
    ]
}

/// The script as 24 kHz audio: speech is deterministic noise swelling at a syllable rate
/// (well above every voice threshold, and louder than the creature, so it can interrupt
/// it); pauses are digital silence.
pub fn turn_audio(script: &[ScriptPiece]) -> Vec<f32> {
    let rate = creature_actors::SAMPLE_RATE as f32;
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::new();
    for piece in script {
        let n = (piece.seconds * f64::from(creature_actors::SAMPLE_RATE)).round() as usize;
        for i in 0..n {
            out.push(if piece.speaking {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                let swell = 0.8 + 0.2 * (std::f32::consts::TAU * 4.0 * i as f32 / rate).sin();
                0.9 * swell * noise
            } else {
                0.0
            });
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct TurnBenchReport {
    pub script: Vec<ScriptPiece>,
    pub reply_delay_ms: u64,
    pub runs: Vec<crate::run::RunReport>,
    pub budgets: Vec<Budget>,
}

/// `creature bench turn`: the scripted conversation through `sim` and a tiny Moshi, one
/// after the other, each turn measured by the loop.
#[allow(clippy::print_stdout)]
pub async fn turn(args: TurnBenchArgs) -> anyhow::Result<()> {
    let report = run_turn(&args).await?;
    for run in &report.runs {
        print!("{}", crate::run::turn_table(run));
        println!();
    }
    print!("{}", side_by_side(&report));
    for b in &report.budgets {
        println!(
            "budget  {:<40} {:<10} {:<24} {}",
            b.what,
            b.limit,
            b.measured,
            if b.pass { "PASS" } else { "FAIL" }
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub async fn run_turn(args: &TurnBenchArgs) -> anyhow::Result<TurnBenchReport> {
    let script = turn_script(args.reply_delay_ms);
    let audio = turn_audio(&script);
    let mut config = Config::default();
    config.voice.sim.reply_delay_ms = args.reply_delay_ms;
    config.voice.moshi.device = args.device;
    config.voice.cascade.device = args.device;
    config.voice.moshi.dtype = args.dtype;
    config.voice.cascade.dtype = args.dtype;
    config.voice.cascade.responder_delay_ms = args.responder_delay_ms;
    let wants = |b: Backend| args.voices.contains(&b);
    // Tiny checkpoints go here (each writer makes its own directory).
    let tiny = std::env::temp_dir().join(format!("creature-bench-tiny-{}", std::process::id()));
    // A checkpoint given is used; a missing one is written tiny, or refused at real size.
    let dir = |given: &Option<PathBuf>, flag: &str, name: &str| -> anyhow::Result<PathBuf> {
        match (given, args.size) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, BenchSize::Tiny) => Ok(tiny.join(name)),
            (None, BenchSize::Real) => bail!(
                "--size real needs {flag} DIR (Kyutai's checkpoint, or one `creature moshi random` wrote)"
            ),
        }
    };
    if wants(Backend::Moshi) {
        let d = dir(&args.moshi_dir, "--moshi-dir", "moshi")?;
        if args.moshi_dir.is_none() {
            let w = d.clone();
            tokio::task::spawn_blocking(move || {
                crate::voice::moshi::tiny::write_tiny_checkpoint(&w, 7, false)
            })
            .await
            .context("the checkpoint writer died")??;
        }
        config.voice.moshi.dir = Some(d);
    }
    if wants(Backend::Cascade) {
        let stt_dir = dir(&args.stt_dir, "--stt-dir", "stt")?;
        let tts_dir = dir(&args.tts_dir, "--tts-dir", "tts")?;
        let (write_stt, write_tts) = (args.stt_dir.is_none(), args.tts_dir.is_none());
        let (s, t) = (stt_dir.clone(), tts_dir.clone());
        tokio::task::spawn_blocking(move || -> Result<(), creature_actors::VoiceError> {
            if write_stt {
                crate::voice::moshi::stt::write_tiny_stt(&s, 5)?;
            }
            if write_tts {
                crate::voice::moshi::tts::write_tiny_tts(&t, 9)?;
            }
            Ok(())
        })
        .await
        .context("the checkpoint writer died")??;
        config.voice.cascade.stt_dir = Some(stt_dir);
        config.voice.cascade.tts_dir = Some(tts_dir);
        if args.size == BenchSize::Tiny {
            // Random pause heads predict nothing: the energy rule ends turns.
            config.voice.cascade.end_of_turn = crate::voice::cascade::EndOfTurn::Silence;
        }
    }
    let mut runs = Vec::new();
    for &backend in &args.voices {
        let mut config = config.clone();
        config.voice.backend = backend;
        eprintln!(
            "bench: {:.1} s conversation through {} ({} clock)...",
            audio.len() as f64 / f64::from(creature_actors::SAMPLE_RATE),
            backend.as_str(),
            if args.fast { "virtual" } else { "real-time" }
        );
        runs.push(
            crate::run::run_audio(config, &audio, args.fast)
                .await
                .with_context(|| format!("the {} run", backend.as_str()))?
                .report,
        );
    }
    let _ = std::fs::remove_dir_all(&tiny);
    let mut budgets = Vec::new();
    for run in &runs {
        let own = &run.summary.own_latency_ms;
        budgets.push(Budget {
            what: budget_name(run.backend, false),
            limit: "< 5 ms".into(),
            measured: format!("{:.3} ms ({} frames)", own.p99_ms, own.count),
            pass: own.p99_ms < 5.0 && own.count > 0,
        });
        // Only where something was answered: a backend that talked every turn over has
        // no answer to time (its per-frame figure above still counts).
        let answers: Vec<f64> = run.turns.iter().filter_map(|t| t.own_ms).collect();
        if let Some(worst) = answers.iter().copied().reduce(f64::max) {
            budgets.push(Budget {
                what: budget_name(run.backend, true),
                limit: "< 5 ms".into(),
                measured: format!("max {worst:.3} ms ({} answers)", answers.len()),
                pass: worst < 5.0,
            });
        }
    }
    if let Some(cascade) = runs.iter().find(|r| r.backend == "cascade") {
        let staged: Vec<(f64, f64)> = cascade
            .turns
            .iter()
            .filter_map(|t| Some((t.stages?.total_ms(), t.gap_ms?)))
            .collect();
        let off = staged
            .iter()
            .map(|(sum, gap)| (sum - gap).abs())
            .fold(0.0f64, f64::max);
        budgets.push(Budget {
            what: "cascade: stages add up to the gap",
            limit: "within 160 ms".into(),
            measured: format!("off by at most {off:.0} ms ({} answers)", staged.len()),
            pass: off <= 160.0 && !staged.is_empty(),
        });
    }
    if let Some(sim) = runs.iter().find(|r| r.backend == "sim") {
        let delay = args.reply_delay_ms as f64;
        let off = sim
            .turns
            .iter()
            .filter_map(|t| t.response_ms)
            .map(|r| (r - delay).abs())
            .fold(0.0f64, f64::max);
        budgets.push(Budget {
            what: "sim: response latency = reply delay",
            limit: "within 80 ms".into(),
            measured: format!("off by at most {off:.0} ms"),
            pass: off <= 80.0 && sim.turns.iter().any(|t| t.response_ms.is_some()),
        });
        let reaction = sim
            .turns
            .iter()
            .filter_map(|t| t.barge_in_reaction_ms)
            .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r))));
        budgets.push(Budget {
            what: "sim: barge-in reaction",
            limit: "<= 80 ms + 240 ms hangover".into(),
            measured: reaction.map_or_else(|| "no barge-in".into(), |r| format!("{r:.0} ms")),
            pass: reaction.is_some_and(|r| r <= 320.0),
        });
    }
    Ok(TurnBenchReport {
        script,
        reply_delay_ms: args.reply_delay_ms,
        runs,
        budgets,
    })
}

/// The own-latency budgets' names, per backend of the bench.
fn budget_name(backend: &str, per_answer: bool) -> &'static str {
    match (backend, per_answer) {
        ("sim", false) => "sim: own latency per frame p99",
        ("sim", true) => "sim: own latency of each answer",
        ("cascade", false) => "cascade: own latency per frame p99",
        ("cascade", true) => "cascade: own latency of each answer",
        (_, false) => "moshi: own latency per frame p99",
        (_, true) => "moshi: own latency of each answer",
    }
}

/// Each user turn, the backends side by side: response latency, the gap it makes
/// ("mouth closes -> voice starts" = hangover + response), its own latency, and the
/// barge-in reaction.
fn side_by_side(report: &TurnBenchReport) -> String {
    let cell = crate::run::ms;
    let mut out = String::from("turn  start (s)");
    for run in &report.runs {
        out.push_str(&format!(
            "  | {:<6} response  gap  own (ms)  reaction  outcome    ",
            run.backend
        ));
    }
    out.push('\n');
    let frame_s = creature_actors::FRAME_PERIOD.as_secs_f64();
    let longest = report.runs.iter().map(|r| r.turns.len()).max().unwrap_or(0);
    for i in 0..longest {
        let start = report.runs.iter().find_map(|r| {
            r.turns
                .get(i)
                .map(|t| t.user_start_tick.saturating_sub(r.first_tick) as f64 * frame_s)
        });
        out.push_str(&format!(
            "{:>4}  {:>9}",
            i + 1,
            start.map_or_else(|| "-".into(), |s| format!("{s:.2}"))
        ));
        for run in &report.runs {
            match run.turns.get(i) {
                Some(t) => out.push_str(&format!(
                    "  | {:<6} {:>8}  {:>4}  {:>8}  {:>8}  {:<11}",
                    "",
                    cell(t.response_ms),
                    cell(t.gap_ms),
                    crate::run::own_ms(t.own_ms),
                    cell(t.barge_in_reaction_ms),
                    t.outcome.label()
                )),
                None => out.push_str(&format!("  | {:<6} {:>8}", "", "(none)")),
            }
        }
        out.push('\n');
    }
    out
}
