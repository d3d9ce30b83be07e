//! The service's one configuration file (`config/creature.toml` documents every key).
//! Defaults live here in code; the file overrides them; command-line flags override both.
//! Unknown keys are an error that names the key, so a typo never silently does nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use creature_actors::affect::AffectConfig;
use creature_actors::face::FaceConfig;
use creature_actors::monologue::MonologueConfig;
use creature_actors::reasoner::ReasonerConfig;
use creature_actors::voice::VoiceConfig;
use creature_actors::BrainConfig;
use serde::{Deserialize, Serialize};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 64 * 1024,
            max_face_clients: 256,
            max_audio_message_bytes: 48_000,
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
        SupervisionConfig { max_restarts: 5, restart_window_secs: 10.0 }
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
    pub sim: SimSection,
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
            sim: SimSection::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSection {
    pub words_per_second: f32,
    pub reaction_ms: u64,
    pub vad_threshold_dbfs: f32,
    pub barge_in_margin_db: f32,
    pub backchannel_after_ms: u64,
    pub backchannel_every_ms: u64,
    pub pitch_hz: f32,
    pub seed: u64,
}

impl Default for SimSection {
    fn default() -> Self {
        SimSection {
            words_per_second: 3.0,
            reaction_ms: 160,
            vad_threshold_dbfs: -42.0,
            barge_in_margin_db: 6.0,
            backchannel_after_ms: 2_500,
            backchannel_every_ms: 4_000,
            pitch_hz: 220.0,
            seed: 7,
        }
    }
}

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
}

impl Default for ReasonerSection {
    fn default() -> Self {
        let r = ReasonerConfig::default();
        ReasonerSection { max_in_flight: r.max_in_flight, queue_capacity: r.queue_capacity, min_confidence: 0.5 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffectSection {
    pub idle_after_secs: f64,
    pub glide: f32,
}

impl Default for AffectSection {
    fn default() -> Self {
        let a = AffectConfig::default();
        AffectSection { idle_after_secs: a.idle_after.as_secs_f64(), glide: a.glide }
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

fn secs(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(ConfigError::Invalid { key, reason: format!("{v} is not a positive number of seconds") })
    }
}

fn unit(key: &'static str, v: f32) -> Result<f32, ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::Invalid { key, reason: format!("{v} is outside 0..1") })
    }
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        config.brain_config()?;
        Ok(config)
    }

    /// The actor-level settings, checked.
    pub fn brain_config(&self) -> Result<BrainConfig, ConfigError> {
        if self.brain.max_restarts == 0 {
            return Err(ConfigError::Invalid { key: "brain.max_restarts", reason: "must be at least 1".into() });
        }
        if self.reasoner.max_in_flight == 0 {
            return Err(ConfigError::Invalid { key: "reasoner.max_in_flight", reason: "must be at least 1".into() });
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
            },
            monologue: MonologueConfig {
                pause: Duration::from_millis(self.monologue.pause_ms.max(1)),
                dedupe_window: secs("monologue.dedupe_window_secs", self.monologue.dedupe_window_secs)?,
                max_phrase_chars: self.monologue.max_phrase_chars.max(16),
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
        assert_eq!(config, Config::default(), "config/creature.toml drifted from the defaults in code");
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
        let c = parse("[server]\naddr = \"0.0.0.0:9000\"\n[voice]\nbackend = \"moshi-remote\"\n").unwrap();
        assert_eq!(c.server.addr.port(), 9000);
        assert_eq!(c.server.max_body_bytes, 64 * 1024);
        assert_eq!(c.voice.backend, Backend::MoshiRemote);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn nonsense_values_are_refused_with_the_key() {
        let mut c = Config::default();
        c.affect.glide = 3.0;
        assert!(c.brain_config().unwrap_err().to_string().contains("affect.glide"));
        let mut c = Config::default();
        c.brain.restart_window_secs = -1.0;
        assert!(c.brain_config().unwrap_err().to_string().contains("brain.restart_window_secs"));
    }

    #[test]
    fn defaults_bind_loopback_and_keep_data_locally() {
        let c = Config::default();
        assert_eq!(c.server.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        c.brain_config().unwrap();
    }
}
