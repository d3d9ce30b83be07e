//! The service's one configuration file (`config/creature.toml` documents every key).
//! Defaults live here in code; the file overrides them; command-line flags override both.
//! Unknown keys are an error that names the key, so a typo never silently does nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use creature_actors::BrainConfig;
use creature_actors::affect::AffectConfig;
use creature_actors::face::FaceConfig;
use creature_actors::monologue::MonologueConfig;
use creature_actors::reasoner::ReasonerConfig;
use creature_actors::tasks::TasksConfig;
use creature_actors::voice::VoiceConfig;
use serde::{Deserialize, Serialize};

use crate::voice::sim::SimConfig;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config value `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the task ledger (and anything else durable) lives.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub brain: SupervisionConfig,
    pub voice: VoiceSection,
    pub monologue: MonologueSection,
    pub reasoner: ReasonerSection,
    pub affect: AffectSection,
    pub face: FaceSection,
    pub audio: AudioSection,
    pub body: BodySection,
    pub tasks: TasksSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            server: ServerConfig::default(),
            brain: SupervisionConfig::default(),
            voice: VoiceSection::default(),
            monologue: MonologueSection::default(),
            reasoner: ReasonerSection::default(),
            affect: AffectSection::default(),
            face: FaceSection::default(),
            audio: AudioSection::default(),
            body: BodySection::default(),
            tasks: TasksSection::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// Largest JSON request body accepted.
    pub max_body_bytes: usize,
    /// Most phone faces connected at once.
    pub max_face_clients: usize,
    /// Largest binary audio message accepted on /ws/audio.
    pub max_audio_message_bytes: usize,
    /// Serve the LAN: all interfaces, HTTPS, and the access token on every route.
    pub lan: bool,
    /// Your own certificate chain (PEM); without it `lan` makes and keeps a self-signed one.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// The access token; unset: generated on first start into `<data_dir>/access-token`.
    pub token: Option<String>,
    /// Ask for the token on loopback too (it is always asked for with `lan` or a
    /// non-loopback address).
    pub require_token: bool,
    /// Host names the brain answers to besides its own addresses, localhost and the
    /// certificate's names (a reverse proxy's name, say).
    pub allowed_hosts: Vec<String>,
    /// A client that has not sent its request headers within this is cut off.
    pub header_read_timeout_secs: f64,
    /// A client that has not sent its request body within this is cut off.
    pub body_read_timeout_secs: f64,
    /// Every websocket is pinged this often.
    pub ws_ping_interval_secs: f64,
    /// A websocket that sends nothing (not even a pong) for this long is closed.
    pub ws_idle_timeout_secs: f64,
    /// A websocket that takes longer than this to accept one message is closed.
    pub ws_send_timeout_secs: f64,
    /// Most face sockets from one remote address; past it the oldest of them is closed.
    pub max_face_clients_per_addr: usize,
    /// State-changing requests (POST) per second, per token and remote address.
    pub rate_limit_per_sec: f64,
    /// Burst allowed above `rate_limit_per_sec`.
    pub rate_limit_burst: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 64 * 1024,
            max_face_clients: 256,
            max_audio_message_bytes: 48_000,
            lan: false,
            tls_cert: None,
            tls_key: None,
            token: None,
            require_token: false,
            allowed_hosts: Vec::new(),
            header_read_timeout_secs: 10.0,
            body_read_timeout_secs: 10.0,
            ws_ping_interval_secs: 10.0,
            ws_idle_timeout_secs: 30.0,
            ws_send_timeout_secs: 5.0,
            max_face_clients_per_addr: 8,
            rate_limit_per_sec: 5.0,
            rate_limit_burst: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    pub max_restarts: u32,
    pub restart_window_secs: f64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            max_restarts: 5,
            restart_window_secs: 10.0,
        }
    }
}

/// Which voice model drives the fast loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The embedded simulator: no weights, no GPU.
    #[default]
    Sim,
    /// Kyutai's Moshi on candle, from a local checkpoint directory.
    Moshi,
    /// A Kyutai Moshi server, over its `/api/chat` websocket.
    MoshiRemote,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sim => "sim",
            Backend::Moshi => "moshi",
            Backend::MoshiRemote => "moshi-remote",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceSection {
    pub backend: Backend,
    pub user_vad_dbfs: f32,
    pub agent_speaking_dbfs: f32,
    pub vad_hangover_frames: u32,
    pub backlog_frames: usize,
    /// User audio buffered ahead of the loop, in 80 ms frames.
    pub inbox_frames: usize,
    /// Ask the OS for real-time scheduling of the loop's ticker and actor threads.
    pub realtime_priority: bool,
    pub sim: SimConfig,
    pub moshi: MoshiSection,
    pub remote: RemoteSection,
}

impl Default for VoiceSection {
    fn default() -> Self {
        let v = VoiceConfig::default();
        VoiceSection {
            backend: Backend::Sim,
            user_vad_dbfs: v.user_vad_dbfs,
            agent_speaking_dbfs: v.agent_speaking_dbfs,
            vad_hangover_frames: v.vad_hangover_frames,
            backlog_frames: v.backlog_frames,
            inbox_frames: 25,
            realtime_priority: v.realtime_priority,
            sim: SimConfig::default(),
            moshi: MoshiSection::default(),
            remote: RemoteSection::default(),
        }
    }
}

// --- [voice.moshi]: the local Moshi backend (src/voice/moshi) ---------------------------

/// Where the local Moshi model computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MoshiDevice {
    #[default]
    Cpu,
    /// The first CUDA GPU (needs a build with `--features cuda`).
    Cuda,
    /// The Apple GPU (needs a build with `--features metal`).
    Metal,
}

/// Number format of the LM's weights and activations (Mimi always computes in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MoshiDtype {
    /// bf16 on CUDA, f32 elsewhere.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoshiSection {
    /// Checkpoint directory in Kyutai's layout; required by the `moshi` backend.
    pub dir: Option<PathBuf>,
    pub device: MoshiDevice,
    pub dtype: MoshiDtype,
    /// Sampling of the agent's audio codes.
    pub temperature: f64,
    pub top_k: usize,
    pub seed: u64,
    /// Sampling of the inner-monologue text tokens.
    pub text_temperature: f64,
    pub text_top_k: usize,
    pub text_seed: u64,
    /// Steps (80 ms each) in one conversation before the model state is reset cleanly.
    pub max_steps: usize,
}

impl Default for MoshiSection {
    fn default() -> Self {
        MoshiSection {
            dir: None,
            device: MoshiDevice::Cpu,
            dtype: MoshiDtype::Auto,
            temperature: 0.8,
            top_k: 250,
            seed: 299_792_458,
            text_temperature: 0.7,
            text_top_k: 25,
            text_seed: 299_792_459,
            max_steps: 3_000,
        }
    }
}

impl MoshiSection {
    /// Refuse values the model cannot run with, naming the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (key, t) in [
            ("voice.moshi.temperature", self.temperature),
            ("voice.moshi.text_temperature", self.text_temperature),
        ] {
            if !(t.is_finite() && (0.0..=10.0).contains(&t)) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("{t} is outside 0..10 (0 = always the likeliest)"),
                });
            }
        }
        for (key, k) in [
            ("voice.moshi.top_k", self.top_k),
            ("voice.moshi.text_top_k", self.text_top_k),
        ] {
            if k == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if !(8..=100_000).contains(&self.max_steps) {
            return Err(ConfigError::Invalid {
                key: "voice.moshi.max_steps",
                reason: format!("{} is outside 8..100000", self.max_steps),
            });
        }
        if self.device == MoshiDevice::Cpu && self.dtype == MoshiDtype::Bf16 {
            return Err(ConfigError::Invalid {
                key: "voice.moshi.dtype",
                reason: "bf16 matrix products are not available on the CPU; use f32 or f16".into(),
            });
        }
        Ok(())
    }
}

// --- end of [voice.moshi] ------------------------------------------------------------------

// --- [voice.remote]: the moshi-remote backend (src/voice/remote) --------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteSection {
    /// The Moshi server's `/api/chat` websocket (ws:// only: this build has no TLS client).
    pub url: String,
    /// Sampling settings sent in the query string, named as Kyutai's servers read them.
    pub text_temperature: f64,
    pub text_topk: u32,
    pub audio_temperature: f64,
    pub audio_topk: u32,
    pub pad_mult: f32,
    pub repetition_penalty_context: u32,
    pub repetition_penalty: f32,
    /// Unset: the server picks a random seed for each session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_seed: Option<u64>,
    /// Longest wait for the socket, and then for the server's handshake.
    pub connect_timeout_ms: u64,
    /// Reconnect backoff: starts at the minimum, doubles up to the maximum.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// A connected server silent this long is considered gone.
    pub idle_timeout_ms: u64,
    /// Most agent audio held for playout, in 80 ms frames (beyond: the oldest is dropped).
    pub jitter_buffer_frames: usize,
    /// Agent audio gathered before playing starts (again), in 80 ms frames.
    pub prefill_frames: usize,
    /// User frames waiting for the socket (beyond: new frames are dropped and counted).
    pub send_queue_frames: usize,
}

impl Default for RemoteSection {
    fn default() -> Self {
        RemoteSection {
            url: "ws://127.0.0.1:8998/api/chat".into(),
            text_temperature: 0.7,
            text_topk: 25,
            audio_temperature: 0.8,
            audio_topk: 250,
            pad_mult: 0.0,
            repetition_penalty_context: 64,
            repetition_penalty: 1.0,
            text_seed: None,
            audio_seed: None,
            connect_timeout_ms: 5_000,
            backoff_min_ms: 500,
            backoff_max_ms: 10_000,
            idle_timeout_ms: 10_000,
            jitter_buffer_frames: 8,
            prefill_frames: 1,
            send_queue_frames: 4,
        }
    }
}

impl RemoteSection {
    /// Refuse values the remote backend cannot run with, naming the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.url.starts_with("wss://") {
            return invalid(
                "voice.remote.url",
                "wss:// needs TLS, which this build's websocket client lacks; use ws:// (a TLS proxy or an SSH tunnel can carry it)".into(),
            );
        }
        if !self.url.starts_with("ws://") || self.url.len() <= "ws://".len() {
            return invalid(
                "voice.remote.url",
                format!("{:?} is not a ws:// URL", self.url),
            );
        }
        for (key, t) in [
            ("voice.remote.text_temperature", self.text_temperature),
            ("voice.remote.audio_temperature", self.audio_temperature),
        ] {
            if !(t.is_finite() && (0.0..=10.0).contains(&t)) {
                return invalid(key, format!("{t} is outside 0..10"));
            }
        }
        for (key, k) in [
            ("voice.remote.text_topk", self.text_topk),
            ("voice.remote.audio_topk", self.audio_topk),
        ] {
            if k == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        if !self.pad_mult.is_finite() {
            return invalid(
                "voice.remote.pad_mult",
                format!("{} is not a number", self.pad_mult),
            );
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return invalid(
                "voice.remote.repetition_penalty",
                format!("{} is not positive", self.repetition_penalty),
            );
        }
        const HOUR_MS: u64 = 3_600_000;
        for (key, ms) in [
            ("voice.remote.connect_timeout_ms", self.connect_timeout_ms),
            ("voice.remote.backoff_min_ms", self.backoff_min_ms),
            ("voice.remote.backoff_max_ms", self.backoff_max_ms),
            ("voice.remote.idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if !(1..=HOUR_MS).contains(&ms) {
                return invalid(key, format!("{ms} is outside 1..{HOUR_MS} ms"));
            }
        }
        if self.backoff_max_ms < self.backoff_min_ms {
            return invalid(
                "voice.remote.backoff_max_ms",
                "must not be below voice.remote.backoff_min_ms".into(),
            );
        }
        if !(2..=250).contains(&self.jitter_buffer_frames) {
            return invalid(
                "voice.remote.jitter_buffer_frames",
                format!("{} is outside 2..250", self.jitter_buffer_frames),
            );
        }
        if !(1..=self.jitter_buffer_frames).contains(&self.prefill_frames) {
            return invalid(
                "voice.remote.prefill_frames",
                format!(
                    "{} is outside 1..jitter_buffer_frames ({})",
                    self.prefill_frames, self.jitter_buffer_frames
                ),
            );
        }
        if !(1..=250).contains(&self.send_queue_frames) {
            return invalid(
                "voice.remote.send_queue_frames",
                format!("{} is outside 1..250", self.send_queue_frames),
            );
        }
        Ok(())
    }
}

// --- end of [voice.remote] -----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonologueSection {
    pub pause_ms: u64,
    pub dedupe_window_secs: f64,
    pub max_phrase_chars: usize,
}

impl Default for MonologueSection {
    fn default() -> Self {
        let m = MonologueConfig::default();
        MonologueSection {
            pause_ms: m.pause.as_millis() as u64,
            dedupe_window_secs: m.dedupe_window.as_secs_f64(),
            max_phrase_chars: m.max_phrase_chars,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReasonerSection {
    pub max_in_flight: usize,
    pub queue_capacity: usize,
    /// Intents less sure than this are not acted on.
    pub min_confidence: f32,
    /// Who turns intents into tool calls.
    pub planner: PlannerKind,
    /// The LLM planner's endpoint and model (used when `planner = "llm"`).
    pub llm: LlmSection,
}

impl Default for ReasonerSection {
    fn default() -> Self {
        let r = ReasonerConfig::default();
        ReasonerSection {
            max_in_flight: r.max_in_flight,
            queue_capacity: r.queue_capacity,
            min_confidence: 0.5,
            planner: PlannerKind::Rules,
            llm: LlmSection::default(),
        }
    }
}

/// Which planner the slow loop asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PlannerKind {
    /// The embedded rule planner: the intent's own action, object and destination.
    #[default]
    Rules,
    /// An OpenAI-compatible chat endpoint with the `do_physical_task` tool; the rule
    /// planner is its fallback.
    Llm,
}

// --- [reasoner.llm]: the LLM planner (src/planner_llm.rs) ---------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmSection {
    /// The endpoint's API base, `/v1` included (`/chat/completions` is appended).
    /// Empty: no endpoint, so every deliberation falls back to the rule planner.
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable holding the API key: the key itself never sits in
    /// the config file. An unset variable sends no key (fine for local servers).
    pub api_key_env: String,
    /// Longest wait for the whole request, answer included.
    pub timeout_secs: f64,
    pub temperature: f32,
    /// Most tokens the model may generate per answer.
    pub max_tokens: u32,
    /// Most tool calls accepted from one answer; a longer plan is refused (and falls back).
    pub max_steps: usize,
}

impl Default for LlmSection {
    fn default() -> Self {
        LlmSection {
            base_url: String::new(),
            model: "gpt-4o-mini".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            timeout_secs: 8.0,
            temperature: 0.2,
            max_tokens: 512,
            max_steps: 8,
        }
    }
}

impl LlmSection {
    /// Refuse values the LLM planner cannot run with, naming the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        let url = self.base_url.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return invalid(
                "reasoner.llm.base_url",
                format!("{url:?} is not an http:// or https:// URL"),
            );
        }
        if self.model.trim().is_empty() {
            return invalid("reasoner.llm.model", "must name a model".into());
        }
        if self.api_key_env.contains('=') || self.api_key_env.contains('\0') {
            return invalid(
                "reasoner.llm.api_key_env",
                format!("{:?} is not an environment variable name", self.api_key_env),
            );
        }
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0 && self.timeout_secs <= 600.0)
        {
            return invalid(
                "reasoner.llm.timeout_secs",
                format!("{} is outside 0..600 seconds", self.timeout_secs),
            );
        }
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return invalid(
                "reasoner.llm.temperature",
                format!("{} is outside 0..2", self.temperature),
            );
        }
        if self.max_tokens == 0 {
            return invalid("reasoner.llm.max_tokens", "must be at least 1".into());
        }
        if !(1..=32).contains(&self.max_steps) {
            return invalid(
                "reasoner.llm.max_steps",
                format!("{} is outside 1..32", self.max_steps),
            );
        }
        Ok(())
    }
}

// --- end of [reasoner.llm] -----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffectSection {
    pub idle_after_secs: f64,
    pub glide: f32,
}

impl Default for AffectSection {
    fn default() -> Self {
        let a = AffectConfig::default();
        AffectSection {
            idle_after_secs: a.idle_after.as_secs_f64(),
            glide: a.glide,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaceSection {
    pub mouth_floor_dbfs: f32,
    pub mouth_ceil_dbfs: f32,
    pub mouth_attack: f32,
    pub mouth_release: f32,
}

impl Default for FaceSection {
    fn default() -> Self {
        let f = FaceConfig::default();
        FaceSection {
            mouth_floor_dbfs: f.mouth_floor_dbfs,
            mouth_ceil_dbfs: f.mouth_ceil_dbfs,
            mouth_attack: f.mouth_attack,
            mouth_release: f.mouth_release,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AudioSection {
    /// Use the machine's default microphone and speaker (needs the `audio-device` feature).
    pub device: bool,
}

/// The robot body's connection (`WS /ws/body`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodySection {
    /// The bearer token a body must present. The default is a development token: set your
    /// own before letting anything but this machine reach the brain.
    pub token: String,
    /// A task sent to the body and not acknowledged within this is sent again.
    pub redeliver_after_secs: f64,
    /// Messages a body may send per second (a burst of twice this is allowed); beyond that
    /// the brain reads them at this pace (none are dropped), and a body that stays over it
    /// for ten seconds is disconnected.
    pub max_messages_per_sec: u32,
}

/// The body token `creature serve` and `creature body-sim` use when none is configured.
pub const DEV_BODY_TOKEN: &str = "creature-dev-token";

impl Default for BodySection {
    fn default() -> Self {
        BodySection {
            token: DEV_BODY_TOKEN.into(),
            redeliver_after_secs: 5.0,
            max_messages_per_sec: 50,
        }
    }
}

/// The task ledger's bounds (`[tasks]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksSection {
    /// At most this many unfinished tasks at once; filing more is refused.
    pub max_unfinished: usize,
    /// Keep the newest this-many finished tasks; older finished ones are deleted.
    pub retain_finished: usize,
}

impl Default for TasksSection {
    fn default() -> Self {
        let t = TasksConfig::default();
        TasksSection {
            max_unfinished: t.max_unfinished,
            retain_finished: t.retain_finished,
        }
    }
}

fn secs(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: format!("{v} is not a positive number of seconds"),
        })
    }
}

fn unit(key: &'static str, v: f32) -> Result<f32, ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: format!("{v} is outside 0..1"),
        })
    }
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.brain_config()?;
        Ok(config)
    }

    /// The actor-level settings, checked.
    pub fn brain_config(&self) -> Result<BrainConfig, ConfigError> {
        if self.brain.max_restarts == 0 {
            return Err(ConfigError::Invalid {
                key: "brain.max_restarts",
                reason: "must be at least 1".into(),
            });
        }
        if self.body.token.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "body.token",
                reason: "must not be empty".into(),
            });
        }
        if self.body.max_messages_per_sec == 0 {
            return Err(ConfigError::Invalid {
                key: "body.max_messages_per_sec",
                reason: "must be at least 1".into(),
            });
        }
        if self.tasks.max_unfinished == 0 {
            return Err(ConfigError::Invalid {
                key: "tasks.max_unfinished",
                reason: "must be at least 1".into(),
            });
        }
        if self.reasoner.max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                key: "reasoner.max_in_flight",
                reason: "must be at least 1".into(),
            });
        }
        if self.face.mouth_ceil_dbfs <= self.face.mouth_floor_dbfs {
            return Err(ConfigError::Invalid {
                key: "face.mouth_ceil_dbfs",
                reason: "must be louder than face.mouth_floor_dbfs".into(),
            });
        }
        if !(self.voice.sim.words_per_second > 0.2 && self.voice.sim.words_per_second <= 20.0) {
            return Err(ConfigError::Invalid {
                key: "voice.sim.words_per_second",
                reason: format!("{} is outside 0.2..20", self.voice.sim.words_per_second),
            });
        }
        self.voice.moshi.check()?;
        self.voice.remote.check()?;
        self.reasoner.llm.check()?;
        Ok(BrainConfig {
            max_restarts: self.brain.max_restarts,
            restart_window: secs("brain.restart_window_secs", self.brain.restart_window_secs)?,
            audio_inbox_frames: self.voice.inbox_frames.max(1),
            audio_out_frames: 16,
            voice: VoiceConfig {
                user_vad_dbfs: self.voice.user_vad_dbfs,
                agent_speaking_dbfs: self.voice.agent_speaking_dbfs,
                vad_hangover_frames: self.voice.vad_hangover_frames,
                backlog_frames: self.voice.backlog_frames.max(1),
                realtime_priority: self.voice.realtime_priority,
            },
            monologue: MonologueConfig {
                pause: Duration::from_millis(self.monologue.pause_ms.max(1)),
                dedupe_window: secs(
                    "monologue.dedupe_window_secs",
                    self.monologue.dedupe_window_secs,
                )?,
                max_phrase_chars: self.monologue.max_phrase_chars.max(16),
            },
            tasks: TasksConfig {
                redeliver_after: secs("body.redeliver_after_secs", self.body.redeliver_after_secs)?,
                max_unfinished: self.tasks.max_unfinished,
                retain_finished: self.tasks.retain_finished,
            },
            reasoner: ReasonerConfig {
                max_in_flight: self.reasoner.max_in_flight,
                queue_capacity: self.reasoner.queue_capacity.max(1),
            },
            affect: AffectConfig {
                idle_after: secs("affect.idle_after_secs", self.affect.idle_after_secs)?,
                glide: unit("affect.glide", self.affect.glide)?,
            },
            face: FaceConfig {
                mouth_floor_dbfs: self.face.mouth_floor_dbfs,
                mouth_ceil_dbfs: self.face.mouth_ceil_dbfs,
                mouth_attack: unit("face.mouth_attack", self.face.mouth_attack)?,
                mouth_release: unit("face.mouth_release", self.face.mouth_release)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_shipped_config_file_is_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/creature.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config,
            Config::default(),
            "config/creature.toml drifted from the defaults in code"
        );
    }

    #[test]
    fn unknown_keys_are_named_in_the_error() {
        let err = parse("[voice]\nbakend = \"sim\"\n").unwrap_err();
        assert!(err.contains("unknown field `bakend`"), "{err}");
        let err = parse("colour = 3\n").unwrap_err();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn partial_files_keep_the_other_defaults() {
        let c = parse("[server]\naddr = \"0.0.0.0:9000\"\n[voice]\nbackend = \"moshi-remote\"\n")
            .unwrap();
        assert_eq!(c.server.addr.port(), 9000);
        assert_eq!(c.server.max_body_bytes, 64 * 1024);
        assert_eq!(c.voice.backend, Backend::MoshiRemote);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn nonsense_values_are_refused_with_the_key() {
        let mut c = Config::default();
        c.affect.glide = 3.0;
        assert!(
            c.brain_config()
                .unwrap_err()
                .to_string()
                .contains("affect.glide")
        );
        let mut c = Config::default();
        c.brain.restart_window_secs = -1.0;
        assert!(
            c.brain_config()
                .unwrap_err()
                .to_string()
                .contains("brain.restart_window_secs")
        );
    }

    #[test]
    fn moshi_keys_parse_and_bad_values_name_the_key() {
        let c = parse(
            "[voice.moshi]\ndir = \"/m\"\ndevice = \"cuda\"\ndtype = \"bf16\"\nmax_steps = 100\n",
        )
        .unwrap();
        assert_eq!(c.voice.moshi.dir, Some(PathBuf::from("/m")));
        assert_eq!(c.voice.moshi.device, MoshiDevice::Cuda);
        assert_eq!(c.voice.moshi.dtype, MoshiDtype::Bf16);
        assert_eq!(c.voice.moshi.top_k, 250);
        c.brain_config().unwrap();
        let err = parse("[voice.moshi]\ntopk = 3\n").unwrap_err();
        assert!(err.contains("unknown field `topk`"), "{err}");
        let mut c = Config::default();
        c.voice.moshi.max_steps = 2;
        assert!(
            c.brain_config()
                .unwrap_err()
                .to_string()
                .contains("voice.moshi.max_steps")
        );
        let mut c = Config::default();
        c.voice.moshi.text_temperature = f64::NAN;
        assert!(
            c.brain_config()
                .unwrap_err()
                .to_string()
                .contains("voice.moshi.text_temperature")
        );
        let mut c = Config::default();
        c.voice.moshi.dtype = MoshiDtype::Bf16;
        assert!(
            c.brain_config()
                .unwrap_err()
                .to_string()
                .contains("voice.moshi.dtype")
        );
    }

    #[test]
    fn remote_keys_parse_and_bad_values_name_the_key() {
        let c = parse("[voice.remote]\nurl = \"ws://gpu:8998/api/chat\"\ntext_seed = 5\nbackoff_max_ms = 2000\n").unwrap();
        assert_eq!(c.voice.remote.url, "ws://gpu:8998/api/chat");
        assert_eq!(c.voice.remote.text_seed, Some(5));
        assert_eq!(c.voice.remote.audio_seed, None);
        assert_eq!(c.voice.remote.audio_topk, 250);
        c.brain_config().unwrap();
        let err = parse("[voice.remote]\ntopk = 3\n").unwrap_err();
        assert!(err.contains("unknown field `topk`"), "{err}");
        let bad = |f: fn(&mut RemoteSection), key: &str| {
            let mut c = Config::default();
            f(&mut c.voice.remote);
            let err = c.brain_config().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        };
        bad(|r| r.url = "wss://gpu/api/chat".into(), "voice.remote.url");
        bad(|r| r.url = "http://gpu/api/chat".into(), "voice.remote.url");
        bad(|r| r.backoff_max_ms = 10, "voice.remote.backoff_max_ms");
        bad(
            |r| r.connect_timeout_ms = 0,
            "voice.remote.connect_timeout_ms",
        );
        bad(
            |r| r.text_temperature = f64::NAN,
            "voice.remote.text_temperature",
        );
        bad(|r| r.prefill_frames = 9, "voice.remote.prefill_frames");
        bad(
            |r| r.jitter_buffer_frames = 1,
            "voice.remote.jitter_buffer_frames",
        );
    }

    #[test]
    fn llm_planner_keys_parse_and_bad_values_name_the_key() {
        let c = parse("[reasoner]\nplanner = \"llm\"\n[reasoner.llm]\nbase_url = \"http://127.0.0.1:11434/v1\"\nmodel = \"qwen2.5\"\ntimeout_secs = 2.5\n").unwrap();
        assert_eq!(c.reasoner.planner, PlannerKind::Llm);
        assert_eq!(c.reasoner.llm.base_url, "http://127.0.0.1:11434/v1");
        assert_eq!(c.reasoner.llm.timeout_secs, 2.5);
        assert_eq!(c.reasoner.llm.api_key_env, "OPENAI_API_KEY");
        c.brain_config().unwrap();
        assert_eq!(Config::default().reasoner.planner, PlannerKind::Rules);
        let err = parse("[reasoner.llm]\napi_key = \"sk-1\"\n").unwrap_err();
        assert!(err.contains("unknown field `api_key`"), "{err}");
        let err = parse("[reasoner]\nplanner = \"gpt\"\n").unwrap_err();
        assert!(err.contains("planner"), "{err}");
        let bad = |f: fn(&mut LlmSection), key: &str| {
            let mut c = Config::default();
            f(&mut c.reasoner.llm);
            let err = c.brain_config().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        };
        bad(
            |l| l.base_url = "127.0.0.1:8080/v1".into(),
            "reasoner.llm.base_url",
        );
        bad(|l| l.timeout_secs = 0.0, "reasoner.llm.timeout_secs");
        bad(|l| l.temperature = f32::NAN, "reasoner.llm.temperature");
        bad(|l| l.max_tokens = 0, "reasoner.llm.max_tokens");
        bad(|l| l.max_steps = 0, "reasoner.llm.max_steps");
        bad(|l| l.model = " ".into(), "reasoner.llm.model");
    }

    #[test]
    fn defaults_bind_loopback_and_keep_data_locally() {
        let c = Config::default();
        assert_eq!(c.server.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        c.brain_config().unwrap();
    }
}
