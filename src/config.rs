//! The service's one configuration file (`config/creature.toml` documents every key).
//! Each section is the config struct of what it sets: an actor's (`[voice]`'s loop keys,
//! `[monologue]`, `[reasoner]`'s, `[affect]`, `[face]`, `[tasks]`, `[brain]`, the event
//! stream's `[inspect]`) or a voice backend's and the planner's (`[voice.sim]`,
//! `[voice.moshi]`, `[voice.remote]`, `[reasoner.llm]`, which keep their checks beside
//! their code); each default is written once, in that struct's `Default`. The file
//! overrides the defaults; command-line flags override both. Unknown keys are an error that
//! names the key, so a typo never silently does nothing.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use creature_actors::affect::AffectConfig;
use creature_actors::events::InspectConfig;
use creature_actors::face::FaceConfig;
use creature_actors::monologue::MonologueConfig;
use creature_actors::reasoner::ReasonerConfig;
use creature_actors::rules::RulePlanner;
use creature_actors::tasks::TasksConfig;
use creature_actors::voice::VoiceConfig;
use creature_actors::{BrainConfig, SupervisionConfig};
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::planner_llm::LlmConfig;
use crate::voice::cascade::CascadeConfig;
use crate::voice::moshi::MoshiConfig;
use crate::voice::remote::RemoteConfig;
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the task ledger (and anything else durable) lives.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub brain: SupervisionConfig,
    pub voice: VoiceSection,
    pub monologue: MonologueConfig,
    pub reasoner: ReasonerSection,
    pub affect: AffectConfig,
    pub face: FaceConfig,
    pub audio: AudioSection,
    pub body: BodySection,
    pub tasks: TasksConfig,
    /// The event stream and the inspector's operator tools.
    pub inspect: InspectConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            server: ServerConfig::default(),
            brain: SupervisionConfig::default(),
            voice: VoiceSection::default(),
            monologue: MonologueConfig::default(),
            reasoner: ReasonerSection::default(),
            affect: AffectConfig::default(),
            face: FaceConfig::default(),
            audio: AudioSection::default(),
            body: BodySection::default(),
            tasks: TasksConfig::default(),
            inspect: InspectConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Kyutai's streaming STT -> an LLM (or the built-in responder) -> Kyutai's streaming
    /// TTS: the cascade the seed compares Moshi with.
    Cascade,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sim => "sim",
            Backend::Moshi => "moshi",
            Backend::MoshiRemote => "moshi-remote",
            Backend::Cascade => "cascade",
        }
    }
}

/// `[voice]`: which backend, the voice loop's own keys, and each backend's table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VoiceSection {
    pub backend: Backend,
    /// The voice loop's keys (levels, backlog, inbox, real-time priority).
    pub actor: VoiceConfig,
    pub sim: SimConfig,
    pub moshi: MoshiConfig,
    pub remote: RemoteConfig,
    pub cascade: CascadeConfig,
}

/// `[reasoner]`: the reasoner's own keys, and who plans.
#[derive(Debug, Clone, PartialEq)]
pub struct ReasonerSection {
    /// The reasoner's keys (deliberations at once, queue).
    pub actor: ReasonerConfig,
    /// Intents less sure than this are not acted on (the rule planner's threshold).
    pub min_confidence: f32,
    /// Who turns intents into tool calls.
    pub planner: PlannerKind,
    /// The LLM planner's endpoint and model (used when `planner = "llm"`).
    pub llm: LlmConfig,
}

impl Default for ReasonerSection {
    fn default() -> Self {
        ReasonerSection {
            actor: ReasonerConfig::default(),
            min_confidence: RulePlanner::default().min_confidence,
            planner: PlannerKind::default(),
            llm: LlmConfig::default(),
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

// A section that is an actor's config plus the service's own keys is read key by key: the
// service's keys by the section, every other key by the actor config's `Deserialize`
// (which refuses unknown ones). Unlike `#[serde(flatten)]`, which buffers the values, the
// file's parser reads each value itself, so an error in any of them still points at its key.

/// A section made of an actor's config and the service's own keys.
trait SplitSection<'de>: Default {
    type Actor: Deserialize<'de>;
    /// What the section is, for the parser's "expected ..." message.
    const EXPECTING: &'static str;
    /// Read `key`'s value from `map` if the key is the section's own; `false` if not.
    fn own_key<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
    fn set_actor(&mut self, actor: Self::Actor);
}

impl<'de> SplitSection<'de> for VoiceSection {
    type Actor = VoiceConfig;
    const EXPECTING: &'static str = "the [voice] table";
    fn own_key<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "backend" => self.backend = map.next_value()?,
            "sim" => self.sim = map.next_value()?,
            "moshi" => self.moshi = map.next_value()?,
            "remote" => self.remote = map.next_value()?,
            "cascade" => self.cascade = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn set_actor(&mut self, actor: VoiceConfig) {
        self.actor = actor;
    }
}

impl<'de> SplitSection<'de> for ReasonerSection {
    type Actor = ReasonerConfig;
    const EXPECTING: &'static str = "the [reasoner] table";
    fn own_key<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "min_confidence" => self.min_confidence = map.next_value()?,
            "planner" => self.planner = map.next_value()?,
            "llm" => self.llm = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn set_actor(&mut self, actor: ReasonerConfig) {
        self.actor = actor;
    }
}

impl<'de> Deserialize<'de> for VoiceSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SplitVisitor(PhantomData))
    }
}

impl<'de> Deserialize<'de> for ReasonerSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SplitVisitor(PhantomData))
    }
}

struct SplitVisitor<S>(PhantomData<S>);

impl<'de, S: SplitSection<'de>> Visitor<'de> for SplitVisitor<S> {
    type Value = S;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(S::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<S, A::Error> {
        let mut section = S::default();
        let actor = S::Actor::deserialize(MapAccessDeserializer::new(ActorKeys {
            section: &mut section,
            map,
        }))?;
        section.set_actor(actor);
        Ok(section)
    }
}

/// The section's map with its own keys taken out: what the actor config reads.
struct ActorKeys<'s, S, A> {
    section: &'s mut S,
    map: A,
}

impl<'de, S: SplitSection<'de>, A: MapAccess<'de>> MapAccess<'de> for ActorKeys<'_, S, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key::<String>()? {
            if !self.section.own_key(&key, &mut self.map)? {
                return seed.deserialize(key.into_deserializer()).map(Some);
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AudioSection {
    /// Use the machine's default microphone and speaker (needs the `audio-device` feature).
    pub device: bool,
}

/// The robot body's connection (`WS /ws/body`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodySection {
    /// The bearer token a body must present. The default is a development token: set your
    /// own before letting anything but this machine reach the brain.
    pub token: String,
    /// A task sent to the body and not acknowledged within this is sent again (the task
    /// ledger's `redeliver_after`).
    #[serde(
        rename = "redeliver_after_secs",
        deserialize_with = "creature_actors::config_duration::secs"
    )]
    pub redeliver_after: Duration,
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
            redeliver_after: TasksConfig::default().redeliver_after,
            max_messages_per_sec: 50,
        }
    }
}

fn at_least(key: &'static str, v: usize, least: usize) -> Result<(), ConfigError> {
    if v >= least {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: format!("{v} is below {least}"),
        })
    }
}

fn unit(key: &'static str, v: f32) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
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
        config.check()?;
        Ok(config)
    }

    /// Refuse values nothing can run with, naming the key. Durations were checked as the
    /// file was read (`creature_actors::config_duration`).
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        at_least("brain.max_restarts", self.brain.max_restarts as usize, 1)?;
        if self.body.token.trim().is_empty() {
            return invalid("body.token", "must not be empty");
        }
        at_least(
            "body.max_messages_per_sec",
            self.body.max_messages_per_sec as usize,
            1,
        )?;
        at_least("tasks.max_unfinished", self.tasks.max_unfinished, 1)?;
        let voice = &self.voice.actor;
        at_least("voice.backlog_frames", voice.backlog_frames, 1)?;
        at_least("voice.inbox_frames", voice.inbox_frames, 1)?;
        if self.monologue.pause.is_zero() {
            return invalid("monologue.pause_ms", "must be at least 1");
        }
        at_least(
            "monologue.max_phrase_chars",
            self.monologue.max_phrase_chars,
            16,
        )?;
        at_least(
            "reasoner.max_in_flight",
            self.reasoner.actor.max_in_flight,
            1,
        )?;
        at_least(
            "reasoner.queue_capacity",
            self.reasoner.actor.queue_capacity,
            1,
        )?;
        unit("affect.glide", self.affect.glide)?;
        if self.face.mouth_ceil_dbfs <= self.face.mouth_floor_dbfs {
            return invalid(
                "face.mouth_ceil_dbfs",
                "must be louder than face.mouth_floor_dbfs",
            );
        }
        unit("face.mouth_attack", self.face.mouth_attack)?;
        unit("face.mouth_release", self.face.mouth_release)?;
        self.voice.sim.check()?;
        self.voice.moshi.check()?;
        self.voice.remote.check()?;
        self.voice.cascade.check()?;
        self.reasoner.llm.check()?;
        Ok(())
    }

    /// The actor-level settings, checked.
    pub fn brain_config(&self) -> Result<BrainConfig, ConfigError> {
        self.check()?;
        Ok(BrainConfig {
            supervision: self.brain.clone(),
            voice: self.voice.actor.clone(),
            monologue: self.monologue.clone(),
            tasks: TasksConfig {
                redeliver_after: self.body.redeliver_after,
                ..self.tasks.clone()
            },
            reasoner: self.reasoner.actor.clone(),
            affect: self.affect.clone(),
            face: self.face.clone(),
            inspect: self.inspect.clone(),
            ..BrainConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::moshi::{MoshiDevice, MoshiDtype};

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
        c.voice.actor.backlog_frames = 0;
        assert!(
            c.brain_config()
                .unwrap_err()
                .to_string()
                .contains("voice.backlog_frames")
        );
        for (text, key) in [
            (
                "[brain]\nrestart_window_secs = -1.0\n",
                "restart_window_secs",
            ),
            ("[affect]\nidle_after_secs = 0\n", "idle_after_secs"),
            (
                "[body]\nredeliver_after_secs = nan\n",
                "redeliver_after_secs",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                err.contains(key) && err.contains("a positive number of seconds"),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn actor_sections_reach_the_brain_config() {
        let c = parse(
            "[brain]\nrestart_window_secs = 2.5\n[voice]\nbackend = \"sim\"\ninbox_frames = 7\n\
             [monologue]\npause_ms = 300\n[reasoner]\nqueue_capacity = 9\n\
             [body]\nredeliver_after_secs = 1.5\n[tasks]\nretain_finished = 20\n",
        )
        .unwrap();
        let b = c.brain_config().unwrap();
        assert_eq!(b.supervision.restart_window, Duration::from_millis(2_500));
        assert_eq!(b.voice.inbox_frames, 7);
        assert_eq!(b.monologue.pause, Duration::from_millis(300));
        assert_eq!(b.reasoner.queue_capacity, 9);
        assert_eq!(b.tasks.redeliver_after, Duration::from_millis(1_500));
        assert_eq!(b.tasks.retain_finished, 20);
        assert_eq!(
            b.tasks.max_unfinished,
            TasksConfig::default().max_unfinished
        );
        let err = parse("[tasks]\nredeliver_after_secs = 1.0\n").unwrap_err();
        assert!(
            err.contains("unknown field `redeliver_after_secs`"),
            "{err}"
        );
        let err = parse("[voice]\nuser_vad_dbfs = \"loud\"\n").unwrap_err();
        assert!(err.contains("user_vad_dbfs = \"loud\""), "{err}");
        let err = parse("[reasoner]\nplanner = \"llm\"\nqueue_capacity = -1\n").unwrap_err();
        assert!(err.contains("queue_capacity = -1"), "{err}");
        let err = parse("[reasoner]\nmax_inflight = 1\n").unwrap_err();
        assert!(err.contains("unknown field `max_inflight`"), "{err}");
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
        assert_eq!(c.voice.remote.backoff_max, Duration::from_secs(2));
        c.brain_config().unwrap();
        let err = parse("[voice.remote]\ntopk = 3\n").unwrap_err();
        assert!(err.contains("unknown field `topk`"), "{err}");
        let bad = |f: fn(&mut RemoteConfig), key: &str| {
            let mut c = Config::default();
            f(&mut c.voice.remote);
            let err = c.brain_config().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        };
        bad(|r| r.url = "wss://gpu/api/chat".into(), "voice.remote.url");
        bad(|r| r.url = "http://gpu/api/chat".into(), "voice.remote.url");
        bad(
            |r| r.backoff_max = Duration::from_millis(10),
            "voice.remote.backoff_max_ms",
        );
        bad(
            |r| r.connect_timeout = Duration::ZERO,
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
        let bad = |f: fn(&mut LlmConfig), key: &str| {
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
