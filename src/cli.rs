//! The command line: `creature serve` runs the brain; `actors`, `state`, `tasks`, `task`
//! and `hear` talk to a running brain over HTTP and print readable tables; `bench` runs the
//! benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::config::{Backend, Config, DEV_BODY_TOKEN, PlannerKind};
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
    /// List the actors of a running brain.
    Actors(ClientArgs),
    /// Show the state of a running brain: the voice loop, affect, tasks.
    State(ClientArgs),
    /// List the tasks of a running brain.
    Tasks(ClientArgs),
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
    /// Cancel a task of a running brain (the body is told to stop).
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A reference robot body: connects to a brain's /ws/body and carries out its tasks.
    BodySim(crate::body_sim::BodySimArgs),
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
    },
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
    /// Planner of the slow loop (overrides reasoner.planner).
    #[arg(long, value_enum)]
    planner: Option<PlannerKind>,
    /// An OpenAI-compatible API base, e.g. http://127.0.0.1:8080/v1 (overrides
    /// reasoner.llm.base_url; implies `--planner llm`).
    #[arg(long, value_name = "URL")]
    llm_url: Option<String>,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// The running brain.
    #[arg(long, env = "CREATURE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The fast loop under load: slow loop saturated, many faces connected.
    Tick(crate::bench::TickBenchArgs),
    /// From the text piece that completes a commitment to the tool call on the body's socket.
    Intent(crate::bench::IntentBenchArgs),
    /// Mimi encode + decode of one 80 ms frame, random weights (full size by default).
    Mimi(crate::voice::moshi::bench::MimiBenchArgs),
    /// One multistream Moshi LM step, random weights (`--config tiny|v0.1`).
    Lm(crate::voice::moshi::bench::LmBenchArgs),
}

/// Parse the command line, run the command, and turn any error into a message and exit 1.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Actors(c) => actors(&Client::new(&c.url)?).await,
        Command::State(c) => state(&Client::new(&c.url)?).await,
        Command::Tasks(c) => tasks(&Client::new(&c.url)?).await,
        Command::Task { utterance, client } => task(&Client::new(&client.url)?, &utterance).await,
        Command::Hear { text, client } => hear(&Client::new(&client.url)?, &text).await,
        Command::Cancel { id, client } => cancel(&Client::new(&client.url)?, &id).await,
        Command::BodySim(args) => crate::body_sim::run(args).await,
        Command::Bench(BenchCommand::Tick(args)) => crate::bench::tick(args).await,
        Command::Bench(BenchCommand::Intent(args)) => crate::bench::intent(args).await,
        Command::Bench(BenchCommand::Mimi(args)) => {
            blocking(move || crate::voice::moshi::bench::mimi(args)).await
        }
        Command::Bench(BenchCommand::Lm(args)) => {
            blocking(move || crate::voice::moshi::bench::lm(args)).await
        }
        Command::Moshi(MoshiCommand::Tiny { dir, seed, q8 }) => moshi_tiny(&dir, seed, q8),
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
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    // A checkpoint dir or a server URL says which backend is meant, unless --voice says
    // otherwise; likewise an LLM URL means the LLM planner.
    let implied = match (&args.moshi_dir, &args.moshi_url) {
        (Some(_), None) => Some(Backend::Moshi),
        (None, Some(_)) => Some(Backend::MoshiRemote),
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
    let warning = open_door_warning(&config);
    let service = Service::start(config).await?;
    let addr = service.addr();
    tracing::info!(%addr, backend = service.brain().voice.backend(), "the creature is awake");
    eprintln!(
        "creature: listening on http://{addr}  (face: http://{addr}/face, inspector: http://{addr}/inspector)"
    );
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    service.run_until(shutdown_signal()).await
}

/// Served beyond this machine with the development body token, anyone on the network could
/// attach as the body: say so, and how to fix it.
fn open_door_warning(config: &Config) -> Option<String> {
    (!config.server.addr.ip().is_loopback() && config.body.token == DEV_BODY_TOKEN).then(|| {
        format!(
            "serving on {} with the development body token: anything on the network can attach \
             to /ws/body as the robot's body. Set your own `token` under [body] in the config.",
            config.server.addr
        )
    })
}

/// Model compute off the async workers.
async fn blocking(f: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .context("the benchmark thread failed")?
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
struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn new(url: &str) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Client {
            base: url.trim_end_matches('/').to_string(),
            http,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
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
            let error = body["error"].as_str().unwrap_or("error");
            let detail = body["detail"].as_str().unwrap_or("");
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

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
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

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[allow(clippy::print_stdout)]
async fn actors(client: &Client) -> anyhow::Result<()> {
    let list = client.get("/api/actors").await?;
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|a| {
            vec![
                text(&a["name"]),
                text(&a["status"]),
                text(&a["restarts"]),
                text(&a["handled"]),
                text(&a["mailbox"]),
                duration(a["uptime_ms"].as_u64().unwrap_or(0)),
                text(&a["last_error"]),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "ACTOR",
                "STATUS",
                "RESTARTS",
                "HANDLED",
                "MAILBOX",
                "UPTIME",
                "LAST ERROR"
            ],
            &rows
        )
    );
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
            duration(s["uptime_ms"].as_u64().unwrap_or(0)),
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
    println!("{}", table(&["", ""], &rows).trim_start());
    if let Some(err) = v["last_error"].as_str() {
        println!("last voice error: {err}");
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

#[allow(clippy::print_stdout)]
async fn tasks(client: &Client) -> anyhow::Result<()> {
    let list = client.get("/api/tasks").await?;
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|a| a.iter().map(task_row).collect())
        .unwrap_or_default();
    println!("{}", table(&TASK_HEADERS, &rows));
    Ok(())
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
async fn cancel(client: &Client, id: &str) -> anyhow::Result<()> {
    let t = client
        .post(&format!("/api/tasks/{id}/cancel"), serde_json::json!({}))
        .await?;
    println!("{}", table(&TASK_HEADERS, &[task_row(&t)]));
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn hear(client: &Client, text: &str) -> anyhow::Result<()> {
    let r = client
        .post("/api/hear", serde_json::json!({ "text": text }))
        .await?;
    println!(
        "the creature ({}) heard: {}",
        self::text(&r["backend"]),
        self::text(&r["heard"])
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
    fn serving_the_network_with_the_dev_body_token_is_warned_about() {
        let mut config = Config::default();
        assert_eq!(open_door_warning(&config), None, "loopback is fine");
        config.server.addr = "0.0.0.0:8080".parse().unwrap();
        let warning = open_door_warning(&config).expect("a warning");
        assert!(
            warning.contains("0.0.0.0:8080") && warning.contains("[body]"),
            "{warning}"
        );
        config.body.token = "a secret of our own".into();
        assert_eq!(open_door_warning(&config), None, "a real token");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(5_400), "5s");
        assert_eq!(duration(125_000), "2m05s");
        assert_eq!(duration(7_500_000), "2h05m");
    }
}
