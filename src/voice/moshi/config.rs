//! `[voice.moshi]`: the local Moshi backend's settings, and the checks that refuse values
//! the model cannot run with.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;

/// Where the local Moshi model computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MoshiDtype {
    /// bf16 on CUDA, f32 elsewhere.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

/// The local Moshi backend's settings: `[voice.moshi]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoshiConfig {
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

impl Default for MoshiConfig {
    fn default() -> Self {
        MoshiConfig {
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

impl MoshiConfig {
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
