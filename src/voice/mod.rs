//! Voice backends behind the `VoiceModel` port, and choosing one from the config.

pub mod cascade;
pub mod moshi;
#[cfg(feature = "opus")]
pub mod ogg_opus;
pub mod remote;
mod rules;
pub mod sim;
mod synth;

use creature_actors::{VoiceError, VoiceModel};

use crate::config::{Backend, Config};
use sim::SimVoice;

/// Build (and for real models, load and warm up) the configured voice model.
pub fn build(config: &Config) -> Result<Box<dyn VoiceModel>, VoiceError> {
    match config.voice.backend {
        Backend::Sim => Ok(Box::new(SimVoice::new(config.voice.sim.clone()))),
        Backend::Moshi => Ok(Box::new(moshi::MoshiVoice::load(&config.voice.moshi)?)),
        Backend::MoshiRemote => remote::build(&config.voice.remote),
        Backend::Cascade => Ok(Box::new(cascade::CascadeVoice::load(
            &config.voice.cascade,
            config.voice.cascade.llm_endpoint(&config.reasoner.llm),
            config.voice.actor.user_vad_dbfs,
            config.voice.actor.agent_speaking_dbfs,
        )?)),
    }
}
