//! Voice backends behind the `VoiceModel` port, and choosing one from the config.

pub mod moshi;
#[cfg(feature = "opus")]
pub mod ogg_opus;
pub mod remote;
mod rules;
pub mod sim;
mod synth;

use creature_actors::{VoiceError, VoiceModel};

use crate::config::{Backend, Config};
use sim::{SimConfig, SimVoice};

/// The `sim` settings from the config file.
pub fn sim_config(config: &Config) -> SimConfig {
    let s = &config.voice.sim;
    SimConfig {
        words_per_second: s.words_per_second,
        reaction_ms: s.reaction_ms,
        vad_threshold_dbfs: s.vad_threshold_dbfs,
        barge_in_margin_db: s.barge_in_margin_db,
        backchannel_after_ms: s.backchannel_after_ms,
        backchannel_every_ms: s.backchannel_every_ms,
        pitch_hz: s.pitch_hz,
        seed: s.seed,
    }
}

/// Build (and for real models, load and warm up) the configured voice model.
pub fn build(config: &Config) -> Result<Box<dyn VoiceModel>, VoiceError> {
    match config.voice.backend {
        Backend::Sim => Ok(Box::new(SimVoice::new(sim_config(config)))),
        Backend::Moshi => Ok(Box::new(moshi::MoshiVoice::load(&config.voice.moshi)?)),
        Backend::MoshiRemote => remote::build(&config.voice.remote),
    }
}
