//! The command line: `creature serve` runs the brain; `actors`, `state`, `tasks`, `task`
//! and `hear` talk to a running brain over HTTP and print readable tables; `bench` runs the
//! benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use creature_actors::text::printable;
use serde_json::Value;

use crate::config::{Backend, Config, PlannerKind};
use crate::service::Service;

#[derive(Debug, Parser)]
#[command(
    name = "creature",
    version,
    about = "The brain of a robot creature: full-duplex voice, inner-monologue tasks, affect and a phone face."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `creature=debug`.
    #[arg(long, global = true, env = "CREATURE_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the brain and its API.
    Serve(ServeArgs),
    /// Print the supervision tree of a running brain: each actor's status, restarts,
    /// messages per second, mailbox now/peak, message latency p99 and uptime.
    Actors(ClientArgs),
    /// Watch a running brain live in the terminal (the tree, the loop's figures, the last
    /// restarts, phrases and tasks); `q` quits.
    Top {
        /// Print one frame to stdout and exit (for scripts).
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the state of a running brain: the voice loop, affect, tasks.
    State(ClientArgs),
    /// List the tasks of a running brain, newest first.
    Tasks {
        /// How many of the newest tasks to show (at most 500).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only tasks in these states, e.g. `pending,running`, or `unfinished`.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask a running brain to do a physical task, e.g. `creature task "bring me the cup"`.
    Task {
        utterance: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Say something to the creature (the `sim` voice hears typed text).
    Hear {
        text: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a task of a running brain (the body is told to stop), or with `--all` every
    /// unfinished one.
    Cancel {
        /// The task to cancel.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Cancel every unfinished task (narrowed by `--state` and `--source`).
        #[arg(long)]
        all: bool,
        /// With `--all`: only tasks in these states, e.g. `pending` or `pending,dispatched`.
        #[arg(long, requires = "all")]
        state: Option<String>,
        /// With `--all`: only tasks from this source (`api` or `monologue`).
        #[arg(long, requires = "all")]
        source: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the phone link and its QR code for a running brain (`serve --lan`).
    Pair(ClientArgs),
    /// A reference robot body: connects to a brain's /ws/body and carries out its tasks.
    BodySim(crate::body_sim::BodySimArgs),
    /// Drive the whole brain from a WAV file of the user's side (`--in`), write the agent's
    /// side sample-aligned (`--out`), and print each turn's timing.
    Run(crate::run::RunArgs),
    /// Run a benchmark.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Moshi checkpoints for the local `moshi` backend.
    #[command(subcommand)]
    Moshi(MoshiCommand),
}

#[derive(Debug, Subcommand)]
enum MoshiCommand {
    /// Write a random-weight tiny Moshi checkpoint (Kyutai's layout) that runs on a CPU:
    /// `creature moshi tiny /tmp/m && creature serve --voice moshi --moshi-dir /tmp/m`.
    Tiny {
        /// Directory to write (created if needed; existing files are replaced).
        dir: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Write the LM 8-bit quantized as model.q8.gguf instead of model.safetensors.
        #[arg(long)]
        q8: bool,
        /// Which model: Moshi itself, or Kyutai's streaming speech-to-text (`stt`, in the
        /// layout of their stt-1b-en_fr release) or text-to-speech (`tts`, in the layout of
        /// their tts-1.6b-en_fr release).
        #[arg(long, value_enum, default_value = "moshi")]
        kind: TinyKind,
    },
    /// Write a random-weight checkpoint of a real size (bf16 LM, Kyutai's layout), tensor
    /// by tensor on every core, to run the real-size loop without the published weights:
    /// `creature moshi random --size v0.1 /data/m` (about 15.7 GB); `--size stt-1b` and
    /// `--size tts-1.6b` write Kyutai's speech-to-text and text-to-speech sizes.
    Random {
        /// Directory to write (created if needed; existing files are replaced).
        dir: PathBuf,
        /// Which architecture.
        #[arg(long, value_enum, default_value = "v0.1")]
        size: crate::voice::moshi::random::RandomSize,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Cores making the values (0: all).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

/// The models `creature moshi tiny` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TinyKind {
    Moshi,
    Stt,
    Tts,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Config file (see config/creature.toml); defaults apply without one.
    #[arg(long, env = "CREATURE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides server.addr).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Where to keep the task ledger (overrides data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Voice backend (overrides voice.backend).
    #[arg(long, value_enum)]
    voice: Option<Backend>,
    /// Moshi checkpoint directory (overrides voice.moshi.dir; implies `--voice moshi`).
    #[arg(long)]
    moshi_dir: Option<PathBuf>,
    /// A Kyutai Moshi server's websocket, e.g. ws://gpu-box:8998/api/chat (overrides
    /// voice.remote.url; implies `--voice moshi-remote`).
    #[arg(long, value_name = "URL")]
    moshi_url: Option<String>,
    #[command(flatten)]
    cascade: crate::voice::cascade::CascadeArgs,
    /// Planner of the slow loop (overrides reasoner.planner).
    #[arg(long, value_enum)]
    planner: Option<PlannerKind>,
    /// An OpenAI-compatible API base, e.g. http://127.0.0.1:8080/v1 (overrides
    /// reasoner.llm.base_url; implies `--planner llm`).
    #[arg(long, value_name = "URL")]
    llm_url: Option<String>,
    /// Serve the LAN (sets server.lan): every interface (or `--addr`), HTTPS with a
    /// self-signed certificate kept in the data dir, the access token on every route.
    #[arg(long)]
    lan: bool,
    /// Your own TLS certificate chain, PEM (overrides server.tls_cert; needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM (overrides server.tls_key).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// The running brain.
    #[arg(long, env = "CREATURE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The access token (else read from `<data-dir>/access-token`).
    #[arg(long, env = "CREATURE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The brain's data dir: its access token, and for https URLs its certificate
    /// (`tls/cert.pem`), which is trusted besides the system's roots.
    #[arg(long, env = "CREATURE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The fast loop under load: slow loop saturated, many faces connected.
    Tick(crate::bench::TickBenchArgs),
    /// From the text piece that completes a commitment to the tool call on the body's socket.
    Intent(crate::bench::IntentBenchArgs),
    /// A scripted conversation through `sim` and a tiny Moshi: per-turn response latency,
    /// barge-in reaction, and the brain's own latency, side by side.
    Turn(crate::bench::TurnBenchArgs),
    /// Mimi encode + decode of one 80 ms frame, random weights (full size by default).
    Mimi(crate::voice::moshi::bench::MimiBenchArgs),
    /// One multistream Moshi LM step, random weights (`--config tiny|v0.1`).
    Lm(crate::voice::moshi::bench::LmBenchArgs),
}

/// Parse the command line, run the command, and turn any error into a message and exit 1.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end: dropping it flushes what the log thread has not written yet.
    let _log_writer = init_tracing(&cli.log);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log to stderr through a writer thread: a thread that logs (the fast loop's included)
/// only queues the line and never waits on a slow terminal or pipe. When the queue is full
/// lines are dropped, not waited for.
fn init_tracing(filter: &str) -> tracing_appender::non_blocking::WorkerGuard {
    // A certificate the client cannot trust is explained by the command's own error; the
    // verifier's log line would only repeat it, less clearly.
    let filter = if filter.contains("rustls_platform_verifier") {
        filter.to_string()
    } else {
        format!("{filter},rustls_platform_verifier=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    #[cfg(feature = "console")]
    {
        // tokio-console's layer sees every task (it needs tokio's instrumentation, on with
        // RUSTFLAGS="--cfg tokio_unstable"); the log keeps its own filter.
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let log = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_filter(filter);
        let _ = tracing_subscriber::registry()
            .with(console_subscriber::spawn())
            .with(log)
            .try_init();
    }
    #[cfg(not(feature = "console"))]
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
    guard
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Actors(c) => actors(&Client::new(&c)?).await,
        Command::Top { once, client } => {
            // The stream lives as long as the view: no whole-request timeout.
            let c = Client::with_timeout(&client, None)?;
            if once {
                crate::top::once(c.http, &c.base).await
            } else {
                crate::top::live(c.http, &c.base).await
            }
        }
        Command::State(c) => state(&Client::new(&c)?).await,
        Command::Tasks {
            limit,
            state,
            client,
        } => tasks(&Client::new(&client)?, limit, state.as_deref()).await,
        Command::Task { utterance, client } => task(&Client::new(&client)?, &utterance).await,
        Command::Hear { text, client } => hear(&Client::new(&client)?, &text).await,
        Command::Cancel {
            id,
            all,
            state,
            source,
            client,
        } => {
            let which = match id {
                Some(id) if !all => Cancel::One(id),
                _ => Cancel::All { state, source },
            };
            cancel(&Client::new(&client)?, which).await
        }
        Command::Pair(c) => pair(&Client::new(&c)?).await,
        Command::BodySim(args) => crate::body_sim::run(args).await,
        Command::Run(args) => crate::run::run(args).await,
        Command::Bench(BenchCommand::Tick(args)) => crate::bench::tick(args).await,
        Command::Bench(BenchCommand::Intent(args)) => crate::bench::intent(args).await,
        Command::Bench(BenchCommand::Turn(args)) => crate::bench::turn(args).await,
        Command::Bench(BenchCommand::Mimi(args)) => {
            blocking(move || crate::voice::moshi::bench::mimi(args)).await
        }
        Command::Bench(BenchCommand::Lm(args)) => {
            blocking(move || crate::voice::moshi::bench::lm(args)).await
        }
        Command::Moshi(MoshiCommand::Tiny {
            dir,
            seed,
            q8,
            kind,
        }) => match kind {
            TinyKind::Moshi => moshi_tiny(&dir, seed, q8),
            TinyKind::Stt => cascade_tiny(
                &dir,
                seed,
                q8,
                "speech-to-text",
                crate::voice::moshi::stt::write_tiny_stt,
            ),
            TinyKind::Tts => cascade_tiny(
                &dir,
                seed,
                q8,
                "text-to-speech",
                crate::voice::moshi::tts::write_tiny_tts,
            ),
        },
        Command::Moshi(MoshiCommand::Random {
            dir,
            size,
            seed,
            threads,
        }) => moshi_random(&dir, size, seed, threads),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(addr) = args.addr {
        config.server.addr = addr;
    }
    if args.lan {
        config.server.lan = true;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.server.tls_cert = Some(cert);
        config.server.tls_key = Some(key);
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    // A checkpoint dir or a server URL says which backend is meant, unless --voice says
    // otherwise; likewise an LLM URL means the LLM planner.
    let cascade = args.cascade.apply(&mut config.voice.cascade);
    let implied = match (&args.moshi_dir, &args.moshi_url) {
        (Some(_), None) => Some(Backend::Moshi),
        (None, Some(_)) => Some(Backend::MoshiRemote),
        (None, None) if cascade => Some(Backend::Cascade),
        _ => None,
    };
    if let Some(voice) = args.voice.or(implied) {
        config.voice.backend = voice;
    }
    if let Some(dir) = args.moshi_dir {
        config.voice.moshi.dir = Some(dir);
    }
    if let Some(url) = args.moshi_url {
        config.voice.remote.url = url;
    }
    if let Some(planner) = args
        .planner
        .or(args.llm_url.as_ref().map(|_| PlannerKind::Llm))
    {
        config.reasoner.planner = planner;
    }
    if let Some(url) = args.llm_url {
        config.reasoner.llm.base_url = url;
    }
    // `--lan --addr IP:PORT` listens on exactly that; `--lan` alone on every interface.
    let bind = match args.addr {
        Some(addr) => addr,
        None => crate::service::bind_addr(&config.server),
    };
    let service = Service::start_on(config, bind).await?;
    let addr = service.addr();
    tracing::info!(%addr, backend = service.brain().voice.backend(), "the creature is awake");
    eprint!("{}", banner(&service));
    service.run_until(shutdown_signal()).await
}

/// What `serve` prints on stderr: where it listens, the phone and inspector links, and
/// (when a phone can reach it) the phone link as a QR code.
fn banner(service: &Service) -> String {
    let pairing = service.pairing();
    let scheme = if service.cert_path().is_some() {
        "https"
    } else {
        "http"
    };
    let every = if service.addr().ip().is_unspecified() {
        "  (every interface)"
    } else {
        ""
    };
    let mut out = format!(
        "creature: listening on {scheme}://{}{every}\n",
        service.addr()
    );
    out.push_str(&format!("  phone:     {}\n", pairing.url));
    for other in pairing.urls.iter().skip(1) {
        out.push_str(&format!("  also:      {other}\n"));
    }
    out.push_str(&format!("  inspector: {}\n", pairing.inspector));
    if let Some(cert) = service.cert_path() {
        out.push_str(&format!(
            "  certificate: {} (self-signed: the phone asks once to trust it)\n",
            cert.display()
        ));
    }
    // A phone can use it: it listens beyond loopback, or over HTTPS (LAN mode).
    if !service.addr().ip().is_loopback() || service.cert_path().is_some() {
        match pairing.qr_terminal() {
            Ok(qr) => {
                out.push_str("  scan with the phone:\n");
                out.push_str(&qr);
            }
            Err(e) => out.push_str(&format!("  (no QR code: {e})\n")),
        }
    }
    out
}

/// `creature pair`: the phone link of a running brain, again, with its QR code.
#[allow(clippy::print_stdout)]
async fn pair(client: &Client) -> anyhow::Result<()> {
    let info = client.get("/api/pair").await?;
    let url = info["url"]
        .as_str()
        .context("the brain's /api/pair has no url")?;
    let url = printable(url).into_owned();
    println!("open on the phone: {url}");
    for other in info["urls"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if let Some(other) = other.as_str().filter(|o| *o != url) {
            println!("               or: {}", printable(other));
        }
    }
    print!("{}", crate::pairing::qr_terminal(&url)?);
    Ok(())
}

/// Model compute off the async workers.
async fn blocking(f: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .context("the benchmark thread failed")?
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn moshi_random(
    dir: &std::path::Path,
    size: crate::voice::moshi::random::RandomSize,
    seed: u64,
    threads: usize,
) -> anyhow::Result<()> {
    use crate::voice::moshi::random::{Progress, write_random_checkpoint};
    let gb = |b: u64| b as f64 / 1e9;
    let mut shown = 0u64;
    let report = write_random_checkpoint(dir, size, seed, threads, |p: Progress| {
        // A line every 5 % of a real size (which takes a minute or more).
        let large = p.total >= 1_000_000_000;
        if large && (p.written == p.total || p.written >= shown + p.total / 20) {
            shown = p.written;
            eprintln!(
                "moshi random: {:.2} of {:.2} GB ({:.0} %)",
                gb(p.written),
                gb(p.total),
                100.0 * p.written as f64 / p.total.max(1) as f64
            );
        }
    })?;
    use crate::voice::moshi::random::RandomSize;
    let what = match size {
        RandomSize::Tiny | RandomSize::V0_1 => "Moshi",
        RandomSize::Stt1b => "speech-to-text model (stt-1b-en_fr sizes)",
        RandomSize::Tts1_6b => "text-to-speech model",
    };
    println!(
        "random {what} written to {} in {:.1} s (LM {} tensors, {:.3} B parameters in bf16; Mimi {} tensors, {:.1} M parameters; {} text pieces)",
        dir.display(),
        report.took.as_secs_f64(),
        report.lm_tensors,
        report.lm_parameters as f64 / 1e9,
        report.mimi_tensors,
        report.mimi_parameters as f64 / 1e6,
        report.text_vocab
    );
    for (path, size) in &report.files {
        println!("  {:>12} bytes  {}", size, path.display());
    }
    match size {
        RandomSize::Tiny => println!(
            "run it with:  creature serve --voice moshi --moshi-dir {}",
            dir.display()
        ),
        RandomSize::V0_1 => println!(
            "run it (a --features cuda build, [voice.moshi] device = \"cuda\", dtype = \"bf16\"):  creature serve --voice moshi --moshi-dir {}",
            dir.display()
        ),
        RandomSize::Stt1b => println!(
            "it loads like Kyutai's stt-1b-en_fr checkpoint (bf16 on a GPU is the real-size case)"
        ),
        RandomSize::Tts1_6b => println!(
            "note: moshi 0.6.4 cannot run the published tts-1.6b-en_fr layout (depformer weights shared by a schedule, a second text stream, LUT conditioners); these are its sizes with a depformer slice for each of the 32 codebooks, the closest model that crate runs"
        ),
    }
    Ok(())
}

/// Writes a tiny checkpoint into a directory from a seed, listing the files written.
type TinyWriter = fn(
    &std::path::Path,
    u64,
) -> Result<Vec<(std::path::PathBuf, u64)>, creature_actors::VoiceError>;

/// A tiny checkpoint of one of the cascade's models (`what`), written by `write`.
#[allow(clippy::print_stdout)]
fn cascade_tiny(
    dir: &std::path::Path,
    seed: u64,
    q8: bool,
    what: &str,
    write: TinyWriter,
) -> anyhow::Result<()> {
    if q8 {
        anyhow::bail!("--q8 is for Moshi's LM; the {what} checkpoint is written in f32");
    }
    let files = write(dir, seed)?;
    println!("tiny {what} model written to {}", dir.display());
    for (path, size) in &files {
        println!("  {:>10} bytes  {}", size, path.display());
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn moshi_tiny(dir: &std::path::Path, seed: u64, q8: bool) -> anyhow::Result<()> {
    let report = crate::voice::moshi::tiny::write_tiny_checkpoint(dir, seed, q8)?;
    println!(
        "tiny Moshi written to {} (LM {} tensors, {:.2} M parameters; Mimi {} tensors, {:.2} M parameters; {} text pieces)",
        dir.display(),
        report.lm_tensors,
        report.lm_parameters as f64 / 1e6,
        report.mimi_tensors,
        report.mimi_parameters as f64 / 1e6,
        report.text_vocab
    );
    for (path, size) in &report.files {
        println!("  {:>10} bytes  {}", size, path.display());
    }
    println!(
        "run it with:  creature serve --voice moshi --moshi-dir {}",
        dir.display()
    );
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(cause = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(cause = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A small HTTP client for a running brain, with errors a person can act on.
/// With the access token (`--token`, `CREATURE_TOKEN`, or `<data_dir>/access-token`) as a
/// bearer, and for https the brain's own certificate (`<data_dir>/tls/cert.pem`) trusted
/// besides the system's roots.
struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        Client::with_timeout(args, Some(Duration::from_secs(10)))
    }

    /// A client whose requests give up after `timeout` (`None`: a stream, never).
    fn with_timeout(args: &ClientArgs, timeout: Option<Duration>) -> anyhow::Result<Client> {
        let base = args.url.trim_end_matches('/').to_string();
        let token = match &args.token {
            Some(token) => Some(token.trim().to_string()),
            None => read_token_file(&args.data_dir)?,
        };
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let cert = args
            .data_dir
            .join(crate::pairing::TLS_DIR)
            .join(crate::pairing::CERT_FILE);
        let mut certs = Vec::new();
        if base.starts_with("https://") && cert.exists() {
            let pem = std::fs::read(&cert).with_context(|| {
                format!("cannot read the brain's certificate {}", cert.display())
            })?;
            certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} is not a PEM certificate", cert.display()))?;
        }
        let http = brain_client(builder, token.as_deref(), certs)?;
        Ok(Client { base, http })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().await.map_err(|e| {
            if is_untrusted_certificate(&e) {
                anyhow::anyhow!(
                    "cannot trust the certificate of the brain at {}: point --data-dir at the \
                     brain's data directory (its tls/cert.pem is trusted), or install that \
                     certificate",
                    self.base
                )
            } else if e.is_connect() {
                anyhow::anyhow!(
                    "cannot reach the brain at {}: is `creature serve` running?",
                    self.base
                )
            } else {
                anyhow::anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .context("the brain answered with something that is not JSON")?;
        if !status.is_success() {
            let error = printable(body["error"].as_str().unwrap_or("error")).into_owned();
            let detail = printable(body["detail"].as_str().unwrap_or("")).into_owned();
            bail!("{status}: {error}: {detail}");
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }
}

/// An HTTP client for a brain: `token` (if any, and not empty) as the bearer on every
/// request, and `certs` (the brain's own certificate) trusted besides the system's roots.
pub(crate) fn brain_client(
    builder: reqwest::ClientBuilder,
    token: Option<&str>,
    certs: Vec<reqwest::Certificate>,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = builder;
    if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the access token has characters a header cannot carry")?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    if !certs.is_empty() {
        builder = builder.tls_certs_merge(certs);
    }
    Ok(builder.build()?)
}

/// The token kept by a brain in `data_dir`, if there is one.
fn read_token_file(data_dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(crate::server::TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) => Ok(Some(token.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the access token {}", path.display()))
        }
    }
}

/// A TLS handshake refused for the server's certificate (self-signed and not ours to trust).
fn is_untrusted_certificate(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        let text = err.to_string();
        if text.contains("certificate") || text.contains("UnknownIssuer") {
            return true;
        }
        source = err.source();
    }
    false
}

/// Columns padded to their widest cell. Every cell is [`printable`]: text from the network
/// (an utterance, a task's object) cannot move the cursor, clear the screen or break lines.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.2} ms"))
        .unwrap_or_else(|| "-".into())
}

#[allow(clippy::print_stdout)]
async fn actors(client: &Client) -> anyhow::Result<()> {
    let list = client.get("/api/actors").await?;
    let rows: Vec<crate::top::ActorRow> = list
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(crate::top::ActorRow::from_api)
        .collect();
    println!("{}", crate::top::tree_lines(&rows).join("\n"));
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn state(client: &Client) -> anyhow::Result<()> {
    let s = client.get("/api/state").await?;
    let v = &s["voice"];
    let a = &s["affect"];
    let t = &s["tasks"];
    let mut rows = vec![
        vec!["voice backend".into(), text(&v["backend"])],
        vec![
            "ticks".into(),
            format!(
                "{} ({} overruns, {} missed)",
                text(&v["ticks"]),
                text(&v["overruns"]),
                text(&v["missed_ticks"])
            ),
        ],
        vec![
            "tick jitter".into(),
            format!(
                "p50 {}  p99 {}  max {}",
                ms(&v["jitter_ms"]["p50_ms"]),
                ms(&v["jitter_ms"]["p99_ms"]),
                ms(&v["jitter_ms"]["max_ms"])
            ),
        ],
        vec![
            "model compute".into(),
            format!(
                "p50 {}  p99 {}  (real-time factor p99 {:.3})",
                ms(&v["compute_ms"]["p50_ms"]),
                ms(&v["compute_ms"]["p99_ms"]),
                v["real_time_factor"]["p99"].as_f64().unwrap_or(0.0)
            ),
        ],
        vec![
            "loop overhead".into(),
            format!("p99 {}", ms(&v["overhead_ms"]["p99_ms"])),
        ],
        vec![
            "turns".into(),
            format!(
                "{} ({} answered, {} no answer, {} talked over); response p50 {}; barge-in reaction p50 {}; own latency p99 {}",
                text(&v["turns"]["count"]),
                text(&v["turns"]["answered"]),
                text(&v["turns"]["no_answer"]),
                text(&v["turns"]["talked_over"]),
                ms(&v["turns"]["response_ms"]["p50_ms"]),
                ms(&v["turns"]["barge_in_reaction_ms"]["p50_ms"]),
                ms(&v["turns"]["own_latency_ms"]["p99_ms"])
            ),
        ],
        vec![
            "speaking".into(),
            format!(
                "{} (user active: {})",
                text(&v["speaking"]),
                text(&v["user_active"])
            ),
        ],
        vec![
            "emotion".into(),
            format!(
                "{} (valence {:.2}, arousal {:.2})",
                text(&a["emotion"]),
                a["valence"].as_f64().unwrap_or(0.0),
                a["arousal"].as_f64().unwrap_or(0.0)
            ),
        ],
        vec![
            "tasks".into(),
            format!("{} total {}", text(&t["total"]), by_state(&t["by_state"])),
        ],
        vec![
            "reasoner".into(),
            format!(
                "{} planner, {} thinking, {} queued",
                text(&s["reasoner"]["planner"]),
                text(&s["reasoner"]["in_flight"]),
                text(&s["reasoner"]["queued"])
            ),
        ],
        vec!["faces connected".into(), text(&s["face"]["sockets"])],
        vec![
            "uptime".into(),
            crate::top::duration(s["uptime_ms"].as_u64().unwrap_or(0)),
        ],
    ];
    // The local moshi backend: where it runs and how far the conversation is from its reset.
    let m = &v["model"];
    if m["steps_until_reset"].is_u64() {
        let row = format!(
            "{} {} on {}, {} steps until the next reset ({} resets so far)",
            text(&m["lm_file"]),
            text(&m["dtype"]),
            text(&m["device"]),
            text(&m["steps_until_reset"]),
            text(&m["resets"])
        );
        rows.insert(4, vec!["moshi".into(), row]);
    }
    // The cascade: where its answers' time goes, and the last exchange.
    if v["backend"] == "cascade" {
        let st = &v["turns"]["stages_ms"];
        rows.push(vec![
            "cascade stages".into(),
            format!(
                "p50 turn wait {}, stt final {}, llm first token {}, tts first audio {}",
                ms(&st["turn_wait"]["p50_ms"]),
                ms(&st["stt_final"]["p50_ms"]),
                ms(&st["llm_first_token"]["p50_ms"]),
                ms(&st["tts_first_audio"]["p50_ms"])
            ),
        ]);
        // The backend's status is refreshed about once a second, when asked for.
        for (row, key) in [
            ("cascade heard", "last_transcript"),
            ("cascade said", "last_reply"),
        ] {
            if let Some(text) = m[key].as_str().filter(|t| !t.is_empty()) {
                rows.push(vec![row.into(), printable(text).into_owned()]);
            }
        }
    }
    println!("{}", table(&["", ""], &rows).trim_start());
    if let Some(err) = v["last_error"].as_str() {
        println!("last voice error: {}", printable(err));
    }
    Ok(())
}

fn by_state(v: &Value) -> String {
    let parts: Vec<String> = v
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        String::new()
    } else {
        format!("({})", parts.join(", "))
    }
}

fn task_row(t: &Value) -> Vec<String> {
    let args = &t["arguments"];
    vec![
        text(&t["id"]),
        text(&t["state"]),
        text(&args["action"]),
        text(&args["object"]),
        text(&args["destination"]),
        text(&t["source"]),
        text(&args["utterance"]),
    ]
}

const TASK_HEADERS: [&str; 7] = [
    "ID",
    "STATE",
    "ACTION",
    "OBJECT",
    "DESTINATION",
    "SOURCE",
    "UTTERANCE",
];

/// The newest `limit` tasks (one page of `GET /api/tasks`), newest first; how many more
/// there are goes to stderr, so stdout stays the table.
#[allow(clippy::print_stdout, clippy::print_stderr)]
async fn tasks(client: &Client, limit: usize, state: Option<&str>) -> anyhow::Result<()> {
    let mut path = format!("/api/tasks?limit={limit}");
    if let Some(state) = state {
        path.push_str(&format!("&state={}", query_value(state)));
    }
    let page = client.get(&path).await?;
    let rows: Vec<Vec<String>> = page["tasks"]
        .as_array()
        .map(|a| a.iter().map(task_row).collect())
        .unwrap_or_default();
    println!("{}", table(&TASK_HEADERS, &rows));
    let total = page["total"].as_u64().unwrap_or(0);
    if total > rows.len() as u64 {
        eprintln!(
            "{} of {total} tasks shown, newest first (--limit for more)",
            rows.len()
        );
    }
    Ok(())
}

/// A query-string value: only what a state list needs passes, the rest is %-encoded.
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b',' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What `creature cancel` cancels.
enum Cancel {
    One(String),
    All {
        state: Option<String>,
        source: Option<String>,
    },
}

#[allow(clippy::print_stdout)]
async fn task(client: &Client, utterance: &str) -> anyhow::Result<()> {
    let t = client
        .post("/api/tasks", serde_json::json!({ "utterance": utterance }))
        .await?;
    println!("{}", table(&TASK_HEADERS, &[task_row(&t)]));
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn cancel(client: &Client, which: Cancel) -> anyhow::Result<()> {
    match which {
        Cancel::One(id) => {
            let t = client
                .post(
                    &format!("/api/tasks/{}/cancel", query_value(&id)),
                    serde_json::json!({}),
                )
                .await?;
            println!("{}", table(&TASK_HEADERS, &[task_row(&t)]));
        }
        Cancel::All { state, source } => {
            let mut body = serde_json::Map::new();
            if let Some(state) = state {
                let states: Vec<&str> = state.split(',').map(str::trim).collect();
                body.insert("state".into(), serde_json::json!(states));
            }
            if let Some(source) = source {
                body.insert("source".into(), Value::String(source));
            }
            let r = client
                .post("/api/tasks/cancel", Value::Object(body))
                .await?;
            let ids: Vec<String> = r["cancelled"]
                .as_array()
                .map(|a| a.iter().map(|v| printable(&text(v)).into_owned()).collect())
                .unwrap_or_default();
            if ids.is_empty() {
                println!("no unfinished tasks to cancel");
            } else {
                println!("cancelled {} tasks: {}", ids.len(), ids.join(" "));
            }
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn hear(client: &Client, text: &str) -> anyhow::Result<()> {
    let r = client
        .post("/api/hear", serde_json::json!({ "text": text }))
        .await?;
    println!(
        "the creature ({}) heard: {}",
        printable(&self::text(&r["backend"])),
        printable(&self::text(&r["heard"]))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["long cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(t, "A          BB\nlong cell  x\ny          z");
    }

    #[test]
    fn table_cells_from_the_network_are_escaped() {
        let t = table(
            &["ID", "OBJECT"],
            &[
                vec!["task-1".into(), "\u{0}\u{1b}[2J".into()],
                vec!["task-2".into(), "a\nb\u{202e}".into()],
            ],
        );
        assert!(
            t.lines()
                .all(|l| !l.chars().any(creature_actors::text::is_unsafe)),
            "{t:?}"
        );
        assert!(
            t.contains("\\u{0}\\u{1b}[2J") && t.contains("a\\u{a}b\\u{202e}"),
            "{t}"
        );
        assert_eq!(t.lines().count(), 3, "{t}");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(query_value("pending,running"), "pending,running");
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }

    #[test]
    fn durations_read_naturally() {
        use crate::top::duration;
        assert_eq!(duration(5_400), "5s");
        assert_eq!(duration(125_000), "2m05s");
        assert_eq!(duration(7_500_000), "2h05m");
    }
}
