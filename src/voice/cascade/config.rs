//! `[voice.cascade]`: the cascade backend's models, its end-of-turn rule, its LLM and its
//! voice, and the checks that refuse values it cannot run with.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::planner_llm::LlmConfig;
use crate::voice::moshi::{MoshiDevice, MoshiDtype};

/// How the cascade decides that the user's turn is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EndOfTurn {
    /// The STT model's pause prediction where the checkpoint has its heads, else silence.
    #[default]
    Auto,
    /// The STT's voice-activity heads: the turn ends once the chosen head's probability
    /// of no speech ahead reaches `pause_threshold` (after `min_silence_ms` of quiet);
    /// `silence_ms` of quiet ends it regardless.
    PausePrediction,
    /// Energy only: `silence_ms` of quiet after the user's last loud frame.
    Silence,
}

/// The cascade backend's settings: `[voice.cascade]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CascadeConfig {
    /// Kyutai streaming STT checkpoint (`stt-1b-en_fr` layout); required.
    pub stt_dir: Option<PathBuf>,
    /// Kyutai streaming TTS checkpoint (`tts-1.6b-en_fr` layout); required.
    pub tts_dir: Option<PathBuf>,
    /// A speaker embedding (`.safetensors`, Kyutai's tts-voices) for a TTS with speaker
    /// conditioning; without one the model's unconditioned voice.
    pub tts_voice: Option<PathBuf>,
    pub device: MoshiDevice,
    pub dtype: MoshiDtype,
    pub end_of_turn: EndOfTurn,
    /// Quiet after the user's last loud frame that ends a turn (energy rule, and the
    /// pause prediction's backstop).
    pub silence_ms: u64,
    /// With the pause prediction: the quiet it needs at least.
    pub min_silence_ms: u64,
    /// With the pause prediction: which head (Kyutai's 1B has four: 0.5, 1, 2 and 3 s of
    /// no speech ahead), and the probability that ends the turn.
    pub pause_head: usize,
    pub pause_threshold: f32,
    /// After the end of a turn, STT steps on silence run at most per frame ahead of real
    /// time to flush its text delay (0: wait for the audio clock).
    pub stt_flush_steps_per_frame: usize,
    /// Loud user frames in a row that stop the creature's reply (a barge-in).
    pub barge_in_frames: u32,
    /// The echo guard (as the `sim` voice's): while the creature's voice is on the way
    /// out, a user frame is voice only within this many dB of the louder of its last two
    /// output frames, so its own echo neither interrupts it nor opens a turn.
    pub barge_in_margin_db: f32,
    /// Without an LLM endpoint, the built-in responder answers this long after the
    /// transcript is final (stream time: a stand-in for an LLM's time to first token).
    pub responder_delay_ms: u64,
    /// An OpenAI-compatible endpoint (`http://host:port/v1`) for the replies. Empty: the
    /// reasoner's endpoint (`[reasoner.llm]`, with its model and key) where one is
    /// configured, else the built-in responder; `"builtin"`: the built-in responder.
    pub llm_url: String,
    pub llm_model: String,
    /// The environment variable holding the endpoint's API key (unset: no key sent).
    pub llm_api_key_env: String,
    /// Longest wait for the reply's first piece (and between pieces).
    pub llm_timeout_secs: f64,
    pub llm_max_tokens: u32,
    pub llm_temperature: f32,
    pub system_prompt: String,
    /// Earlier exchanges sent with each request.
    pub history_turns: usize,
    /// TTS steps run at most per 80 ms frame: above 1 the TTS runs ahead of real time
    /// through its text-to-audio delay.
    pub tts_steps_per_frame: usize,
    /// Decoded frames the TTS may hold ahead of playback.
    pub tts_lookahead_frames: usize,
    pub tts_temperature: f64,
    pub tts_top_k: usize,
    pub seed: u64,
}

/// `llm_url` naming the built-in responder, whatever `[reasoner.llm]` says.
pub const BUILTIN: &str = "builtin";

/// The creature's instructions to an LLM that speaks for it.
pub const SYSTEM_PROMPT: &str = "You are a small robot creature that talks with the people around it and can do simple physical tasks (bring, fetch, give, put, open, close, switch on or off, clean, pour, push, pull, look at, go to). Your replies are spoken aloud: answer in one or two short sentences of plain words, no lists, no markup, no emoji. When you agree to do something physical, say it as your own commitment in the first person, for example \"Okay, I'll bring you the cup.\"";

impl Default for CascadeConfig {
    fn default() -> Self {
        CascadeConfig {
            stt_dir: None,
            tts_dir: None,
            tts_voice: None,
            device: MoshiDevice::Cpu,
            dtype: MoshiDtype::Auto,
            end_of_turn: EndOfTurn::Auto,
            silence_ms: 480,
            min_silence_ms: 160,
            pause_head: 1,
            pause_threshold: 0.6,
            stt_flush_steps_per_frame: 2,
            barge_in_frames: 1,
            barge_in_margin_db: 6.0,
            responder_delay_ms: 320,
            llm_url: String::new(),
            llm_model: "gpt-4o-mini".into(),
            llm_api_key_env: "OPENAI_API_KEY".into(),
            llm_timeout_secs: 8.0,
            llm_max_tokens: 120,
            llm_temperature: 0.7,
            system_prompt: SYSTEM_PROMPT.into(),
            history_turns: 6,
            tts_steps_per_frame: 3,
            tts_lookahead_frames: 4,
            tts_temperature: 0.6,
            tts_top_k: 250,
            seed: 42,
        }
    }
}

impl CascadeConfig {
    /// Refuse values the cascade cannot run with, naming the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if !(80..=10_000).contains(&self.silence_ms) {
            return invalid(
                "voice.cascade.silence_ms",
                format!("{} is outside 80..10000", self.silence_ms),
            );
        }
        if self.min_silence_ms > self.silence_ms {
            return invalid(
                "voice.cascade.min_silence_ms",
                format!(
                    "{} is longer than silence_ms ({}), which ends a turn anyway",
                    self.min_silence_ms, self.silence_ms
                ),
            );
        }
        if !(self.pause_threshold.is_finite() && (0.0..=1.0).contains(&self.pause_threshold)) {
            return invalid(
                "voice.cascade.pause_threshold",
                format!("{} is not a probability", self.pause_threshold),
            );
        }
        if self.pause_head > 15 {
            return invalid(
                "voice.cascade.pause_head",
                format!("{} is not a head of any published model", self.pause_head),
            );
        }
        if self.stt_flush_steps_per_frame > 16 {
            return invalid(
                "voice.cascade.stt_flush_steps_per_frame",
                format!("{} is over 16", self.stt_flush_steps_per_frame),
            );
        }
        if !(1..=25).contains(&self.barge_in_frames) {
            return invalid(
                "voice.cascade.barge_in_frames",
                format!("{} is outside 1..25", self.barge_in_frames),
            );
        }
        if !(self.barge_in_margin_db.is_finite() && (0.0..=60.0).contains(&self.barge_in_margin_db))
        {
            return invalid(
                "voice.cascade.barge_in_margin_db",
                format!("{} is outside 0..60 dB", self.barge_in_margin_db),
            );
        }
        if self.responder_delay_ms > 10_000 {
            return invalid(
                "voice.cascade.responder_delay_ms",
                format!("{} is over 10 s", self.responder_delay_ms),
            );
        }
        let url = self.llm_url.trim();
        if !(url.is_empty()
            || url == BUILTIN
            || url.starts_with("http://")
            || url.starts_with("https://"))
        {
            return invalid(
                "voice.cascade.llm_url",
                format!("{url:?} is not an http:// or https:// URL (or \"builtin\")"),
            );
        }
        if url.starts_with("http") && self.llm_model.trim().is_empty() {
            return invalid("voice.cascade.llm_model", "must name a model".into());
        }
        if !(self.llm_timeout_secs.is_finite()
            && self.llm_timeout_secs > 0.0
            && self.llm_timeout_secs <= 600.0)
        {
            return invalid(
                "voice.cascade.llm_timeout_secs",
                format!("{} is outside 0..600 seconds", self.llm_timeout_secs),
            );
        }
        if self.llm_max_tokens == 0 {
            return invalid("voice.cascade.llm_max_tokens", "must be at least 1".into());
        }
        if !(self.llm_temperature.is_finite() && (0.0..=2.0).contains(&self.llm_temperature)) {
            return invalid(
                "voice.cascade.llm_temperature",
                format!("{} is outside 0..2", self.llm_temperature),
            );
        }
        if !(1..=16).contains(&self.tts_steps_per_frame) {
            return invalid(
                "voice.cascade.tts_steps_per_frame",
                format!("{} is outside 1..16", self.tts_steps_per_frame),
            );
        }
        if !(1..=64).contains(&self.tts_lookahead_frames) {
            return invalid(
                "voice.cascade.tts_lookahead_frames",
                format!("{} is outside 1..64", self.tts_lookahead_frames),
            );
        }
        if !(self.tts_temperature.is_finite() && (0.0..=10.0).contains(&self.tts_temperature)) {
            return invalid(
                "voice.cascade.tts_temperature",
                format!("{} is outside 0..10", self.tts_temperature),
            );
        }
        if self.tts_top_k == 0 {
            return invalid("voice.cascade.tts_top_k", "must be at least 1".into());
        }
        if self.device == MoshiDevice::Cpu && self.dtype == MoshiDtype::Bf16 {
            return invalid(
                "voice.cascade.dtype",
                "bf16 matrix products are not available on the CPU; use f32 or f16".into(),
            );
        }
        Ok(())
    }

    /// Where the replies come from, with `[reasoner.llm]` standing in for an empty
    /// `llm_url`: the endpoint, model and API-key variable, or `None` for the built-in
    /// responder.
    pub fn llm_endpoint(&self, reasoner: &LlmConfig) -> Option<(String, String, String)> {
        let own = self.llm_url.trim();
        let reasoner_url = reasoner.base_url.trim();
        if own == BUILTIN || (own.is_empty() && reasoner_url.is_empty()) {
            None
        } else if own.is_empty() {
            Some((
                reasoner_url.to_string(),
                reasoner.model.clone(),
                reasoner.api_key_env.clone(),
            ))
        } else {
            Some((
                own.to_string(),
                self.llm_model.clone(),
                self.llm_api_key_env.clone(),
            ))
        }
    }

    /// Frames of quiet that end a turn by the energy rule (at least one).
    pub fn silence_frames(&self) -> u64 {
        frames_for(self.silence_ms).max(1)
    }

    pub fn min_silence_frames(&self) -> u64 {
        frames_for(self.min_silence_ms).max(1)
    }

    /// The built-in responder's delay in whole frames.
    pub fn responder_delay_frames(&self) -> u64 {
        frames_for(self.responder_delay_ms)
    }
}

/// Whole 80 ms frames covering `ms`.
fn frames_for(ms: u64) -> u64 {
    ms.div_ceil(80)
}

/// The cascade's checkpoints on the command line (`creature serve`, `creature run`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CascadeArgs {
    /// Kyutai STT checkpoint directory (overrides voice.cascade.stt_dir; with --tts-dir
    /// implies `--voice cascade`).
    #[arg(long, value_name = "DIR")]
    pub stt_dir: Option<PathBuf>,
    /// Kyutai TTS checkpoint directory (overrides voice.cascade.tts_dir).
    #[arg(long, value_name = "DIR")]
    pub tts_dir: Option<PathBuf>,
}

impl CascadeArgs {
    /// Put the directories into `config`; `true` when both are given (the cascade is
    /// meant, unless `--voice` says otherwise).
    pub fn apply(&self, config: &mut CascadeConfig) -> bool {
        if let Some(dir) = &self.stt_dir {
            config.stt_dir = Some(dir.clone());
        }
        if let Some(dir) = &self.tts_dir {
            config.tts_dir = Some(dir.clone());
        }
        self.stt_dir.is_some() && self.tts_dir.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_impossible_value_is_refused_by_its_key() {
        CascadeConfig::default().check().unwrap();
        type Breaker = Box<dyn Fn(&mut CascadeConfig)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("silence_ms", Box::new(|c| c.silence_ms = 0)),
            ("min_silence_ms", Box::new(|c| c.min_silence_ms = 5_000)),
            ("pause_threshold", Box::new(|c| c.pause_threshold = 1.5)),
            ("pause_head", Box::new(|c| c.pause_head = 99)),
            ("barge_in_frames", Box::new(|c| c.barge_in_frames = 0)),
            (
                "stt_flush_steps_per_frame",
                Box::new(|c| c.stt_flush_steps_per_frame = 17),
            ),
            (
                "barge_in_margin_db",
                Box::new(|c| c.barge_in_margin_db = f32::NAN),
            ),
            (
                "responder_delay_ms",
                Box::new(|c| c.responder_delay_ms = 60_000),
            ),
            ("llm_url", Box::new(|c| c.llm_url = "ftp://x".into())),
            (
                "llm_model",
                Box::new(|c| {
                    c.llm_url = "http://127.0.0.1:1/v1".into();
                    c.llm_model = " ".into();
                }),
            ),
            ("llm_timeout_secs", Box::new(|c| c.llm_timeout_secs = 0.0)),
            ("llm_max_tokens", Box::new(|c| c.llm_max_tokens = 0)),
            ("llm_temperature", Box::new(|c| c.llm_temperature = 3.0)),
            (
                "tts_steps_per_frame",
                Box::new(|c| c.tts_steps_per_frame = 0),
            ),
            (
                "tts_lookahead_frames",
                Box::new(|c| c.tts_lookahead_frames = 100),
            ),
            ("tts_temperature", Box::new(|c| c.tts_temperature = -1.0)),
            ("tts_top_k", Box::new(|c| c.tts_top_k = 0)),
            ("dtype", Box::new(|c| c.dtype = MoshiDtype::Bf16)),
        ];
        for (key, break_it) in cases {
            let mut c = CascadeConfig::default();
            break_it(&mut c);
            let err = c.check().unwrap_err().to_string();
            assert!(
                err.contains(&format!("voice.cascade.{key}")),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn the_replies_come_from_the_own_endpoint_else_the_reasoners_else_the_builtin() {
        let reasoner = LlmConfig {
            base_url: "http://planner:8080/v1".into(),
            model: "planner-model".into(),
            api_key_env: "PLANNER_KEY".into(),
            ..LlmConfig::default()
        };
        let none = LlmConfig::default();
        let c = CascadeConfig::default();
        assert_eq!(c.llm_endpoint(&none), None);
        assert_eq!(
            c.llm_endpoint(&reasoner),
            Some((
                "http://planner:8080/v1".into(),
                "planner-model".into(),
                "PLANNER_KEY".into()
            ))
        );
        let own = CascadeConfig {
            llm_url: "http://talker:9000/v1".into(),
            llm_model: "talker".into(),
            ..CascadeConfig::default()
        };
        assert_eq!(
            own.llm_endpoint(&reasoner).map(|e| e.1),
            Some("talker".to_string())
        );
        let builtin = CascadeConfig {
            llm_url: BUILTIN.into(),
            ..CascadeConfig::default()
        };
        builtin.check().unwrap();
        assert_eq!(builtin.llm_endpoint(&reasoner), None);
    }

    #[test]
    fn frames_round_up_to_whole_frames() {
        let c = CascadeConfig {
            silence_ms: 450,
            min_silence_ms: 1,
            responder_delay_ms: 0,
            ..CascadeConfig::default()
        };
        assert_eq!(c.silence_frames(), 6);
        assert_eq!(c.min_silence_frames(), 1);
        assert_eq!(c.responder_delay_frames(), 0);
    }

    #[test]
    fn the_section_reads_from_the_config_file_and_unknown_keys_are_named() {
        let config: crate::config::Config = toml::from_str(
            "[voice]\nbackend = \"cascade\"\n[voice.cascade]\nstt_dir = \"/m/stt\"\ntts_dir = \"/m/tts\"\nend_of_turn = \"silence\"\nsilence_ms = 640\n",
        )
        .unwrap();
        assert_eq!(config.voice.backend, crate::config::Backend::Cascade);
        let c = &config.voice.cascade;
        assert_eq!(c.stt_dir.as_deref(), Some(std::path::Path::new("/m/stt")));
        assert_eq!(c.end_of_turn, EndOfTurn::Silence);
        assert_eq!(c.silence_ms, 640);
        let err = toml::from_str::<crate::config::Config>("[voice.cascade]\nsilense_ms = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("silense_ms"), "{err}");
    }
}
