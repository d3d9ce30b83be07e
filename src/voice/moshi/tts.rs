//! Kyutai's streaming text-to-speech (the delayed-streams TTS models such as
//! `tts-1.6b-en_fr`), on the same Mimi codec and 80 ms frames as Moshi: the last stage of
//! the cascade. The text stream leads and the audio follows `tts_config.audio_delay`
//! behind, so words can be fed as they arrive from the planner.
//!
//! A checkpoint directory in Kyutai's layout:
//!
//! | file | what |
//! |---|---|
//! | `config.json` | Kyutai's keys (see [`TtsConfig`]) |
//! | the file `moshi_name` names | the LM: a text stream and `n_q` audio codebooks in, a depformer of `dep_q` slices out, cross-attention on a speaker embedding |
//! | the file `mimi_name` names | Mimi, read with `n_q` codebooks |
//! | the file `tokenizer_name` names | the SentencePiece vocabulary of `text_card` pieces |
//!
//! `config.json` may also hold a `"mimi"` object of [`MimiConfig`] sizes (this project's
//! addition, for the tiny test checkpoints); without it Mimi has the published sizes.
//!
//! The model runs on the moshi crate's `tts_streaming::State`, which is what this loader
//! checks a config against: a `config.json` asking for something that version cannot run
//! (the published 1.6B model's shared depformer weights and second text stream among
//! them) is refused with the key named, never run as something else.

use std::path::{Path, PathBuf};

use creature_actors::VoiceError;
use moshi::candle::{DType, Device, Tensor};
use moshi::candle_nn::VarBuilder;
use moshi::lm::{self, LmModel};
use moshi::mimi::Mimi;
use moshi::nn::MaybeQuantizedVarBuilder;
use moshi::transformer::CaSrc;
use moshi::tts_streaming;
use serde::Deserialize;
use serde_json::json;

use super::loader::{self, MimiConfig, first_line, load_error, read_safetensors};
use super::spm::SentencePieceModel;
use super::tiny::{self, RandomWeights};

/// The LM's file in a TTS checkpoint (the name Kyutai's `tts-1.6b-en_fr` gives it; the
/// loader reads whatever `moshi_name` names).
pub const TTS_LM_FILE: &str = "dsm_tts_1e68beda@240.safetensors";
/// Mimi and the vocabulary under the names of the same release.
pub const TTS_MIMI_FILE: &str = "tokenizer-e351c8d8-checkpoint125.safetensors";
pub const TTS_TOKENIZER_FILE: &str = "tokenizer_spm_8k_en_fr_audio.model";

/// Frames per second of the token streams.
const FRAME_RATE: f64 = 12.5;
/// The moshi crate this loader runs on, for the messages about what it cannot run.
const MOSHI: &str = "the moshi 0.6.4 crate";
/// Where the LM file keeps the speaker conditioner (Kyutai's names).
pub(super) const SPEAKER_PADDING: &str =
    "condition_provider.conditioners.speaker_wavs.learnt_padding";
const SPEAKER_PROJ: &str = "condition_provider.conditioners.speaker_wavs.output_proj";
/// The speaker conditioning: up to 5 voices of 10 s each, as Kyutai's models are trained.
const SPEAKERS: usize = 5;
const SPEAKER_SECONDS: f64 = 10.0;

/// `config.json` of a TTS checkpoint, Kyutai's keys (others are ignored). Keys that only
/// say how the weights are laid out are read to check that moshi 0.6.4 lays them out the
/// same way.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TtsConfig {
    /// The LM's file.
    #[serde(default = "default_lm_file")]
    pub moshi_name: String,
    pub mimi_name: String,
    pub tokenizer_name: String,
    /// Entries per audio codebook.
    pub card: usize,
    /// Audio codebooks the LM reads.
    pub n_q: usize,
    /// Audio codebooks the depformer writes (one slice each).
    pub dep_q: usize,
    /// Each stream's delay in steps: the text, then each codebook. The acoustic delay is
    /// the largest (the first codebook and the text have none; 2 without the key).
    #[serde(default)]
    pub delays: Vec<usize>,
    pub dim: usize,
    pub text_card: usize,
    /// The text padding id (Kyutai's models pad with 3).
    #[serde(default = "default_text_padding")]
    pub existing_text_padding_id: u32,
    pub num_heads: usize,
    pub num_layers: usize,
    /// `dim_feedforward = round(dim * hidden_scale)`, split by the gating into 2/3 of it.
    pub hidden_scale: f64,
    #[serde(default = "yes")]
    pub causal: bool,
    pub context: usize,
    pub max_period: f64,
    #[serde(default)]
    pub gating: Option<String>,
    #[serde(default)]
    pub norm: Option<String>,
    #[serde(default)]
    pub positional_embedding: Option<String>,
    pub depformer_dim: usize,
    pub depformer_num_heads: usize,
    pub depformer_num_layers: usize,
    /// Defaults to `round(depformer_dim * hidden_scale)`, as in Kyutai's trainer.
    #[serde(default)]
    pub depformer_dim_feedforward: Option<usize>,
    #[serde(default)]
    pub depformer_low_rank_embeddings: Option<usize>,
    /// Which weights each depformer step uses; moshi 0.6.4 gives each step its own.
    #[serde(default)]
    pub depformer_weights_per_step_schedule: Option<Vec<usize>>,
    #[serde(default = "yes")]
    pub depformer_weights_per_step: bool,
    #[serde(default = "yes")]
    pub depformer_multi_linear: bool,
    #[serde(default)]
    pub depformer_pos_emb: Option<String>,
    #[serde(default)]
    pub depformer_gating: Option<String>,
    /// A second text stream (moshi 0.6.4 steps one).
    #[serde(default)]
    pub demux_second_stream: bool,
    /// Cross-attention on the speaker embedding.
    #[serde(default)]
    pub cross_attention: bool,
    /// Conditioners by name; only the speaker's (`speaker_wavs`, through the
    /// cross-attention) is run here.
    #[serde(default)]
    pub conditioners: Option<serde_json::Map<String, serde_json::Value>>,
    pub tts_config: TtsTiming,
    /// Kyutai's sampling defaults.
    #[serde(default)]
    pub lm_gen_config: Option<TtsSampling>,
    /// Mimi's sizes, where they are not the published ones (tiny checkpoints).
    #[serde(default)]
    pub mimi: Option<MimiConfig>,
}

fn default_lm_file() -> String {
    "model.safetensors".into()
}

fn default_text_padding() -> u32 {
    3
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TtsTiming {
    /// How far the audio lags the text, in seconds (1.28 s for `tts-1.6b-en_fr`).
    pub audio_delay: f64,
    /// How many steps the second text stream leads (only with `demux_second_stream`).
    #[serde(default)]
    pub second_stream_ahead: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TtsSampling {
    pub temp: f64,
    pub temp_text: f64,
    pub top_k: usize,
    pub top_k_text: usize,
}

impl TtsConfig {
    /// Read `dir/config.json`; sizes that cannot work and features moshi 0.6.4 cannot run
    /// are refused with the key named.
    pub fn load(dir: &Path) -> Result<TtsConfig, VoiceError> {
        let path = dir.join(loader::CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                load_error(&path, "missing file")
            } else {
                load_error(&path, format!("cannot read: {e}"))
            }
        })?;
        let config: TtsConfig = serde_json::from_str(&text)
            .map_err(|e| load_error(&path, format!("not a TTS config: {e}")))?;
        config.check().map_err(|e| load_error(&path, e))?;
        Ok(config)
    }

    /// Sizes that cannot work, then anything the moshi crate would run differently from
    /// what the config asks; each message names its key.
    pub fn check(&self) -> Result<(), String> {
        for (key, value) in [
            ("card", self.card),
            ("n_q", self.n_q),
            ("dep_q", self.dep_q),
            ("dim", self.dim),
            ("text_card", self.text_card),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("context", self.context),
            ("depformer_dim", self.depformer_dim),
            ("depformer_num_heads", self.depformer_num_heads),
            ("depformer_num_layers", self.depformer_num_layers),
        ] {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if !(self.hidden_scale.is_finite() && self.hidden_scale > 0.0) {
            return Err(format!(
                "hidden_scale {} must be a positive number",
                self.hidden_scale
            ));
        }
        if !(self.max_period.is_finite() && self.max_period >= 1.0) {
            return Err(format!("max_period {} must be at least 1", self.max_period));
        }
        even_heads("num_heads", self.dim, self.num_heads)?;
        even_heads(
            "depformer_num_heads",
            self.depformer_dim,
            self.depformer_num_heads,
        )?;
        if self.depformer_dim_feedforward == Some(0) {
            return Err("depformer_dim_feedforward must be at least 1".into());
        }
        if self.depformer_low_rank_embeddings == Some(0) {
            return Err("depformer_low_rank_embeddings must be at least 1".into());
        }
        if self.dep_q != self.n_q {
            return Err(format!(
                "dep_q ({}) must equal n_q ({}): the depformer writes the codebooks Mimi decodes",
                self.dep_q, self.n_q
            ));
        }
        // Text ids 0-2 are end-of-padding and the start and end of a turn; the padding id
        // is predicted too, so it is another id of the vocabulary.
        let pad = self.existing_text_padding_id as usize;
        if !(3..self.text_card).contains(&pad) {
            return Err(format!(
                "existing_text_padding_id {pad} must be a text id from 3 to text_card - 1 ({})",
                self.text_card.saturating_sub(1)
            ));
        }
        let delay = self.tts_config.audio_delay;
        if !(delay.is_finite() && (0.0..=60.0).contains(&delay)) {
            return Err(format!(
                "tts_config.audio_delay {delay} must be between 0 and 60 seconds"
            ));
        }
        if let Some(mimi) = &self.mimi {
            mimi.check_sizes()?;
        }
        self.check_supported()
    }

    /// What moshi 0.6.4's `tts_streaming` and `LmModel` cannot run.
    fn check_supported(&self) -> Result<(), String> {
        let cannot = |key: &str, what: String| {
            Err(format!(
                "{key}: {what}; {MOSHI} cannot run it (refused rather than run as something else)"
            ))
        };
        if let Some(schedule) = &self.depformer_weights_per_step_schedule {
            let identity =
                schedule.len() == self.dep_q && schedule.iter().enumerate().all(|(i, &w)| i == w);
            if !identity {
                return cannot(
                    "depformer_weights_per_step_schedule",
                    format!(
                        "{schedule:?} shares depformer weights between codebooks, but each of the {} slices has its own",
                        self.dep_q
                    ),
                );
            }
        }
        if !self.depformer_weights_per_step {
            return cannot(
                "depformer_weights_per_step",
                "false (one depformer for every codebook)".into(),
            );
        }
        if !self.depformer_multi_linear {
            return cannot(
                "depformer_multi_linear",
                "false (one input projection for every codebook)".into(),
            );
        }
        if self.demux_second_stream {
            return cannot("demux_second_stream", "true (a second text stream)".into());
        }
        if !self.causal {
            return cannot("causal", "false".into());
        }
        for (key, value, allowed) in [
            ("gating", &self.gating, &["silu"][..]),
            ("norm", &self.norm, &["rms_norm", "rms_norm_f32"][..]),
            (
                "positional_embedding",
                &self.positional_embedding,
                &["rope"][..],
            ),
            ("depformer_pos_emb", &self.depformer_pos_emb, &["none"][..]),
            ("depformer_gating", &self.depformer_gating, &["silu"][..]),
        ] {
            if let Some(v) = value
                && !allowed.contains(&v.as_str())
            {
                return cannot(key, format!("{v:?} (only {allowed:?})"));
            }
        }
        if let Some(conditioners) = &self.conditioners {
            let others: Vec<&str> = conditioners
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "speaker_wavs")
                .collect();
            if !others.is_empty() {
                return cannot(
                    "conditioners",
                    format!(
                        "{others:?} would be added to the input, and only the speaker is wired here"
                    ),
                );
            }
        }
        let acoustic = self.acoustic_delay();
        let fits = match self.delays.as_slice() {
            [] => true,
            [text, first, rest @ ..] => {
                self.delays.len() == self.n_q + 1
                    && *text == 0
                    && *first == 0
                    && rest.iter().all(|&d| d == acoustic)
            }
            [_] => false,
        };
        if !fits {
            return cannot(
                "delays",
                format!(
                    "{:?} is not the text and first codebook at 0 and the other {} codebooks at one delay",
                    self.delays,
                    self.n_q.saturating_sub(1)
                ),
            );
        }
        Ok(())
    }

    /// Steps the acoustic codebooks lag the first (2 for Kyutai's models).
    pub fn acoustic_delay(&self) -> usize {
        self.delays
            .iter()
            .copied()
            .max()
            .unwrap_or(loader::ACOUSTIC_DELAY)
    }

    /// Steps the audio lags the text.
    pub fn audio_delay_steps(&self) -> usize {
        (self.tts_config.audio_delay * FRAME_RATE).round() as usize
    }

    fn dim_feedforward(&self) -> usize {
        (self.dim as f64 * self.hidden_scale).round() as usize
    }

    fn depformer_dim_feedforward(&self) -> usize {
        self.depformer_dim_feedforward
            .unwrap_or_else(|| (self.depformer_dim as f64 * self.hidden_scale).round() as usize)
    }

    /// The moshi crate's LM config for these sizes (moshi's `tts_202501` is the shape).
    pub fn lm(&self) -> lm::Config {
        use moshi::transformer::{Config, CrossAttentionGating, PositionalEmbedding};
        let transformer = Config {
            d_model: self.dim,
            num_heads: self.num_heads,
            num_layers: self.num_layers,
            dim_feedforward: self.dim_feedforward(),
            causal: self.causal,
            norm_first: true,
            bias_ff: false,
            bias_attn: false,
            layer_scale: None,
            context: self.context,
            max_period: self.max_period as usize,
            use_conv_block: false,
            use_conv_bias: true,
            cross_attention: self.cross_attention.then_some((
                CrossAttentionGating::Normal,
                moshi::NormType::LayerNorm,
                None,
            )),
            gating: Some(moshi::candle_nn::Activation::Silu),
            norm: moshi::NormType::RmsNorm,
            positional_embedding: PositionalEmbedding::Rope,
            conv_layout: false,
            conv_kernel_size: 3,
            kv_repeat: 1,
            max_seq_len: 4096 * 4,
            shared_cross_attn: false,
        };
        let depformer = Config {
            d_model: self.depformer_dim,
            num_heads: self.depformer_num_heads,
            num_layers: self.depformer_num_layers,
            dim_feedforward: self.depformer_dim_feedforward(),
            context: self.dep_q,
            max_period: 10_000,
            cross_attention: None,
            positional_embedding: PositionalEmbedding::None,
            max_seq_len: 4096,
            ..transformer.clone()
        };
        lm::Config {
            transformer,
            depformer: Some(lm::DepFormerConfig {
                transformer: depformer,
                num_slices: self.dep_q,
                low_rank_embeddings: self.depformer_low_rank_embeddings,
            }),
            audio_vocab_size: self.card + 1,
            text_in_vocab_size: self.text_card + 1,
            text_out_vocab_size: self.text_card,
            audio_codebooks: self.n_q,
            conditioners: None,
            extra_heads: None,
        }
    }

    /// The generation constants for moshi's `tts_streaming::State`.
    pub fn streaming(&self) -> tts_streaming::Config {
        tts_streaming::Config {
            acoustic_delay: self.acoustic_delay(),
            text_pad_token: self.existing_text_padding_id,
            text_bos_token: 1,
            text_eos_token: 2,
            text_eop_token: 0,
            text_start_token: self.text_card as u32,
            text_audio_delay_in_tokens: self.audio_delay_steps(),
            max_consecutive_pads: 10,
            extra_steps: 5,
            speaker_cond_duration_s: SPEAKER_SECONDS,
            speaker_cond_dim: self.dim,
            speaker_cond_n_speakers: SPEAKERS,
        }
    }

    /// Mimi's sizes: the published ones with `n_q` codebooks, unless the file says.
    pub fn mimi(&self) -> MimiConfig {
        let mut mimi = self.mimi.clone().unwrap_or_default();
        mimi.quantizer_n_q = self.n_q;
        mimi
    }

    /// `config.json` in Kyutai's keys, plus this project's `"mimi"` where set.
    pub(super) fn to_json(&self) -> serde_json::Value {
        let mut file = json!({
            "moshi_name": self.moshi_name,
            "mimi_name": self.mimi_name,
            "tokenizer_name": self.tokenizer_name,
            "card": self.card,
            "n_q": self.n_q,
            "dep_q": self.dep_q,
            "delays": self.delays,
            "dim": self.dim,
            "text_card": self.text_card,
            "existing_text_padding_id": self.existing_text_padding_id,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "hidden_scale": self.hidden_scale,
            "causal": self.causal,
            "context": self.context,
            "max_period": self.max_period,
            "gating": "silu",
            "norm": "rms_norm_f32",
            "positional_embedding": "rope",
            "depformer_dim": self.depformer_dim,
            "depformer_num_heads": self.depformer_num_heads,
            "depformer_num_layers": self.depformer_num_layers,
            "depformer_dim_feedforward": self.depformer_dim_feedforward(),
            "depformer_low_rank_embeddings": self.depformer_low_rank_embeddings,
            "depformer_multi_linear": true,
            "depformer_weights_per_step": true,
            "depformer_pos_emb": "none",
            "demux_second_stream": false,
            "cross_attention": self.cross_attention,
            "tts_config": {
                "audio_delay": self.tts_config.audio_delay,
                "second_stream_ahead": self.tts_config.second_stream_ahead,
            },
            "model_type": "tts",
        });
        if let Some(s) = &self.lm_gen_config {
            file["lm_gen_config"] = json!({
                "temp": s.temp, "temp_text": s.temp_text, "top_k": s.top_k, "top_k_text": s.top_k_text,
            });
        }
        if let Some(mimi) = &self.mimi {
            file["mimi"] = json!(mimi);
        }
        file
    }
}

/// A transformer's width must split evenly into heads of even size (rotary embeddings
/// rotate pairs).
fn even_heads(key: &str, dim: usize, heads: usize) -> Result<(), String> {
    if dim % heads != 0 || (dim / heads) % 2 != 0 {
        return Err(format!(
            "{key} {heads} does not split width {dim} into even-sized heads"
        ));
    }
    Ok(())
}

/// A loaded TTS checkpoint, ready to be stepped by `tts_streaming::State`.
pub struct TtsCheckpoint {
    pub config: TtsConfig,
    /// Fresh, never stepped: each utterance steps a clone (the weights are shared).
    pub lm: LmModel,
    /// Mimi with the model's codebooks, for decoding.
    pub mimi: Mimi,
    pub tokenizer: SentencePieceModel,
    /// The speaker conditioning for the cross-attention, where the model has it.
    pub ca_src: Option<CaSrc>,
    pub dir: PathBuf,
    pub lm_file: PathBuf,
}

impl std::fmt::Debug for TtsCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtsCheckpoint")
            .field("dir", &self.dir)
            .field("lm_file", &self.lm_file)
            .field("speaker", &self.ca_src.is_some())
            .finish()
    }
}

/// Load the TTS checkpoint in `dir`; the LM computes in `dtype`, Mimi in f32. With a
/// cross-attention model, `voice` names a speaker embedding (one of Kyutai's `tts-voices`
/// safetensors files); without one the model's learnt padding stands for every speaker,
/// as moshi's `SpeakerEncoder::empty` does. Every missing or unfitting file is named.
pub fn load_tts(
    dir: &Path,
    voice: Option<&Path>,
    device: &Device,
    dtype: DType,
) -> Result<TtsCheckpoint, VoiceError> {
    if !dir.is_dir() {
        return Err(load_error(
            dir,
            "not a directory (expected a TTS checkpoint in Kyutai's layout)",
        ));
    }
    let config = TtsConfig::load(dir)?;
    let tokenizer = loader::load_vocabulary(&dir.join(&config.tokenizer_name), config.text_card)?;
    let mimi = loader::load_mimi(&dir.join(&config.mimi_name), &config.mimi(), device)?;
    let lm_path = dir.join(&config.moshi_name);
    let vb = VarBuilder::from_tensors(read_safetensors(&lm_path, device)?, dtype, device);
    let lm =
        LmModel::new(&config.lm(), MaybeQuantizedVarBuilder::Real(vb.clone())).map_err(|e| {
            load_error(
                &lm_path,
                format!(
                    "weights do not fit the TTS sizes in config.json: {}",
                    first_line(&e)
                ),
            )
        })?;
    let ca_src = if config.cross_attention {
        let speaker = Speaker::from_lm(&config, &vb).map_err(|e| {
            load_error(
                &lm_path,
                format!("no speaker conditioner for the cross-attention: {e}"),
            )
        })?;
        let tokens = match voice {
            Some(path) => speaker.voice(path, device)?,
            None => speaker.empty().map_err(|e| {
                load_error(&lm_path, format!("speaker padding: {}", first_line(&e)))
            })?,
        };
        Some(CaSrc::Tokens(tokens))
    } else if let Some(path) = voice {
        return Err(load_error(
            path,
            "this TTS model has no speaker conditioning (config.json's cross_attention is false)",
        ));
    } else {
        None
    };
    Ok(TtsCheckpoint {
        config,
        lm,
        mimi,
        tokenizer,
        ca_src,
        dir: dir.to_path_buf(),
        lm_file: lm_path,
    })
}

/// The speaker conditioner's weights, as the LM file holds them.
struct Speaker {
    /// What stands for a missing speaker, `(1, 1, dim)`.
    padding: Tensor,
    /// Mimi's latent (`mimi.dimension` wide) to the LM's width.
    proj: Tensor,
    mimi_dim: usize,
    dim: usize,
    /// Steps one speaker takes in the conditioning (10 s at 12.5 Hz).
    steps: usize,
    dtype: DType,
}

impl Speaker {
    fn from_lm(config: &TtsConfig, vb: &VarBuilder) -> Result<Speaker, String> {
        let dim = config.dim;
        let mimi_dim = config.mimi().dimension;
        let padding = vb
            .get((1, 1, dim), SPEAKER_PADDING)
            .map_err(|e| first_line(&e))?;
        let proj = vb
            .get((dim, mimi_dim), &format!("{SPEAKER_PROJ}.weight"))
            .map_err(|e| first_line(&e))?;
        Ok(Speaker {
            padding,
            proj,
            mimi_dim,
            dim,
            steps: (SPEAKER_SECONDS * FRAME_RATE).round() as usize,
            dtype: vb.dtype(),
        })
    }

    /// No voice: the learnt padding in every speaker's place, with positions.
    fn empty(&self) -> moshi::candle::Result<Tensor> {
        let tokens = self
            .padding
            .broadcast_as((1, SPEAKERS * self.steps, self.dim))?
            .contiguous()?;
        moshi::tts::add_sin_embeddings(&tokens)?.to_dtype(self.dtype)
    }

    /// One voice from a speaker-embedding file: its tensor `speaker_wavs` (or its only
    /// tensor), either Mimi latents `(1, mimi_dim, T)`, projected here as the conditioner
    /// does, or already projected ones `(1, T, dim)`; the other speakers' places are
    /// padding, as in moshi's `SpeakerEncoder::encode`.
    fn voice(&self, path: &Path, device: &Device) -> Result<Tensor, VoiceError> {
        let tensors = read_safetensors(path, device)?;
        let bad = |reason: String| load_error(path, reason);
        let tensor = match tensors.get("speaker_wavs") {
            Some(t) => t.clone(),
            None if tensors.len() == 1 => tensors
                .into_values()
                .next()
                .ok_or_else(|| bad("no tensor".into()))?,
            None => {
                let mut names: Vec<String> = tensors.into_keys().collect();
                names.sort();
                return Err(bad(format!(
                    "expected one speaker embedding (`speaker_wavs`), found {} tensors: {}",
                    names.len(),
                    names.join(", ")
                )));
            }
        };
        let fail = |e: moshi::candle::Error| bad(format!("speaker embedding: {}", first_line(&e)));
        let tensor = tensor.to_dtype(DType::F32).map_err(fail)?;
        let tensor = match tensor.rank() {
            2 => tensor.unsqueeze(0).map_err(fail)?,
            3 => tensor,
            _ => {
                return Err(bad(format!(
                    "a speaker embedding has 3 dimensions, this one has shape {:?}",
                    tensor.dims()
                )));
            }
        };
        let (batch, a, b) = tensor.dims3().map_err(fail)?;
        let latents = if batch != 1 {
            None
        } else if a == self.mimi_dim {
            let proj = self.proj.to_dtype(DType::F32).map_err(fail)?;
            Some(
                tensor
                    .transpose(1, 2)
                    .and_then(|t| t.broadcast_matmul(&proj.t()?))
                    .map_err(fail)?,
            )
        } else if b == self.dim {
            Some(tensor.clone())
        } else {
            None
        };
        let Some(latents) = latents else {
            return Err(bad(format!(
                "shape {:?} is neither (1, {}, T) Mimi latents nor (1, T, {}) projected ones",
                tensor.dims(),
                self.mimi_dim,
                self.dim
            )));
        };
        let steps = latents.dim(1).map_err(fail)?;
        let padding = self
            .padding
            .to_dtype(DType::F32)
            .and_then(|p| p.broadcast_as((1, (SPEAKERS - 1) * steps, self.dim)))
            .map_err(fail)?;
        Tensor::cat(&[&latents, &padding], 1)
            .and_then(|t| moshi::tts::add_sin_embeddings(&t))
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(fail)
    }
}

/// The speaker conditioner's tensors, asked of `vb` so that a weight recorder makes them
/// (they are not part of `LmModel`).
pub(super) fn describe_speaker(config: &TtsConfig, vb: &VarBuilder) -> Result<(), String> {
    Speaker::from_lm(config, vb).map(|_| ())
}

/// The sizes of Kyutai's `tts-1.6b-en_fr` in the layout moshi 0.6.4 runs: a depformer
/// slice of its own for each codebook (the published model shares 11 weight sets among
/// the 32), one text stream, and the speaker as its only conditioner.
pub(super) fn runnable_1_6b() -> TtsConfig {
    let mut delays = vec![0, 0];
    delays.resize(33, 2);
    TtsConfig {
        moshi_name: TTS_LM_FILE.into(),
        mimi_name: TTS_MIMI_FILE.into(),
        tokenizer_name: TTS_TOKENIZER_FILE.into(),
        card: 2048,
        n_q: 32,
        dep_q: 32,
        delays,
        dim: 2048,
        text_card: 8000,
        existing_text_padding_id: 3,
        num_heads: 32,
        num_layers: 16,
        hidden_scale: 4.125,
        causal: true,
        context: 500,
        max_period: 10_000.0,
        gating: None,
        norm: None,
        positional_embedding: None,
        depformer_dim: 1024,
        depformer_num_heads: 16,
        depformer_num_layers: 4,
        depformer_dim_feedforward: Some(3072),
        depformer_low_rank_embeddings: Some(128),
        depformer_weights_per_step_schedule: None,
        depformer_weights_per_step: true,
        depformer_multi_linear: true,
        depformer_pos_emb: None,
        depformer_gating: None,
        demux_second_stream: false,
        cross_attention: true,
        conditioners: None,
        tts_config: TtsTiming {
            audio_delay: 1.28,
            second_stream_ahead: 0,
        },
        lm_gen_config: Some(TtsSampling {
            temp: 0.6,
            temp_text: 0.6,
            top_k: 250,
            top_k_text: 50,
        }),
        mimi: None,
    }
}

/// The tiny TTS's config: an LM of width 64 over 8 codebooks with a one-layer depformer,
/// cross-attention on a speaker, the tiny vocabulary and a narrow Mimi.
fn tiny_config(text_card: usize) -> Result<TtsConfig, String> {
    let codebooks = loader::CODEBOOKS;
    let mimi = tiny::tiny_architecture(text_card)?.mimi;
    let mut delays = vec![0, 0];
    delays.resize(codebooks + 1, loader::ACOUSTIC_DELAY);
    let config = TtsConfig {
        moshi_name: TTS_LM_FILE.into(),
        mimi_name: TTS_MIMI_FILE.into(),
        tokenizer_name: TTS_TOKENIZER_FILE.into(),
        card: mimi.quantizer_bins,
        n_q: codebooks,
        dep_q: codebooks,
        delays,
        dim: 64,
        text_card,
        existing_text_padding_id: 3,
        num_heads: 4,
        num_layers: 2,
        hidden_scale: 4.125,
        causal: true,
        context: 500,
        max_period: 10_000.0,
        gating: None,
        norm: None,
        positional_embedding: None,
        depformer_dim: 32,
        depformer_num_heads: 2,
        depformer_num_layers: 1,
        depformer_dim_feedforward: None,
        depformer_low_rank_embeddings: Some(16),
        depformer_weights_per_step_schedule: None,
        depformer_weights_per_step: true,
        depformer_multi_linear: true,
        depformer_pos_emb: None,
        depformer_gating: None,
        demux_second_stream: false,
        cross_attention: true,
        conditioners: None,
        // 4 frames: audio follows the text within a third of a second.
        tts_config: TtsTiming {
            audio_delay: 0.32,
            second_stream_ahead: 0,
        },
        lm_gen_config: Some(TtsSampling {
            temp: 0.6,
            temp_text: 0.6,
            top_k: 250,
            top_k_text: 50,
        }),
        mimi: Some(mimi),
    };
    config.check()?;
    Ok(config)
}

/// Write a random-weight tiny TTS checkpoint into `dir`, in the layout above (see
/// `tiny_config`). It runs the real `tts_streaming` path on any CPU in milliseconds a
/// step, and speaks (audibly, if not in words) once the audio delay has passed.
pub fn write_tiny_tts(dir: &Path, seed: u64) -> Result<Vec<(PathBuf, u64)>, VoiceError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| load_error(dir, format!("cannot create the directory: {e}")))?;
    let vocab = tiny::tiny_vocabulary();
    let config = tiny_config(vocab.len()).map_err(|e| load_error(dir, e))?;
    let mimi = config.mimi();
    let device = Device::Cpu;
    let mimi_weights = tiny::random_mimi(&mimi, seed, &dir.join(TTS_MIMI_FILE))?;
    let lm_path = dir.join(TTS_LM_FILE);
    let lm_weights = RandomWeights::new(seed.wrapping_add(1));
    let vb = lm_weights.var_builder(DType::F32, &device);
    LmModel::new(&config.lm(), MaybeQuantizedVarBuilder::Real(vb.clone()))
        .map_err(|e| load_error(&lm_path, format!("cannot build the tiny TTS LM: {e}")))?;
    describe_speaker(&config, &vb).map_err(|e| {
        load_error(
            &lm_path,
            format!("cannot make the speaker conditioner: {e}"),
        )
    })?;

    let mut written = tiny::Written::new(dir);
    written.file(TTS_LM_FILE, lm_weights.save(&lm_path))?;
    written.file(TTS_MIMI_FILE, mimi_weights.save(&dir.join(TTS_MIMI_FILE)))?;
    written.bytes(TTS_TOKENIZER_FILE, &vocab.to_bytes())?;
    written.json(loader::CONFIG_FILE, &config.to_json())?;
    Ok(written.into_files())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::generation::{LogitsProcessor, Sampling};
    use creature_actors::FRAME_SAMPLES;
    use creature_actors::audio::rms;
    use moshi::StreamTensor;
    use moshi::tts_streaming::{AllowedTokens, State};

    /// Speak `words` on a fresh state: each word's tokens go in as the model asks for the
    /// next word (it says end-of-padding), then padding. Returns each step's text token and
    /// audio frame (empty while the model has none).
    fn speak(c: &mut TtsCheckpoint, words: &[&str], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
        let generation = c.config.streaming();
        let sampler = |seed, k| {
            LogitsProcessor::from_sampling(
                seed,
                Sampling::TopK {
                    k,
                    temperature: 0.6,
                },
            )
        };
        let mut state = State::new(
            c.lm.clone(),
            c.ca_src.clone(),
            steps + 8,
            sampler(1, 250),
            sampler(2, 50),
            None,
            generation.clone(),
        );
        c.mimi.reset_state();
        let mut queue: std::collections::VecDeque<u32> = Default::default();
        let mut words = words.iter();
        let mut prev = generation.text_start_token;
        let mut frames = Vec::new();
        let mut texts = Vec::new();
        for _ in 0..steps {
            let allowed = match queue.pop_front() {
                Some(t) => AllowedTokens::Text(t),
                None if words.len() > 0 => AllowedTokens::PadOrEpad,
                None => AllowedTokens::Pad,
            };
            prev = state.step(prev, allowed, None).unwrap();
            texts.push(prev);
            if prev == generation.text_eop_token
                && allowed == AllowedTokens::PadOrEpad
                && let Some(word) = words.next()
            {
                queue.extend(c.tokenizer.encode_word(word));
            }
            let frame = match state.last_audio_tokens() {
                Some(codes) => {
                    let n = codes.len();
                    let codes = Tensor::from_vec(codes, (1, n, 1), &Device::Cpu).unwrap();
                    let pcm = c
                        .mimi
                        .decode_step(&StreamTensor::from_tensor(codes), &().into())
                        .unwrap();
                    match pcm.as_option() {
                        Some(pcm) => pcm.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        None => Vec::new(),
                    }
                }
                None => Vec::new(),
            };
            frames.push(frame);
        }
        (texts, frames)
    }

    #[test]
    fn the_tiny_tts_speaks_after_its_delay() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_tiny_tts(dir.path(), 3).unwrap();
        assert_eq!(files.len(), 4);
        let mut c = load_tts(dir.path(), None, &Device::Cpu, DType::F32).unwrap();
        assert!(c.ca_src.is_some(), "the tiny TTS has a speaker");
        let generation = c.config.streaming();
        assert_eq!(generation.text_audio_delay_in_tokens, 4);
        assert_eq!(generation.acoustic_delay, 2);
        let started = std::time::Instant::now();
        let words = ["hello", "creature", "fetch", "the", "ball"];
        let (texts, frames) = speak(&mut c, &words, 30);
        let per_step = started.elapsed() / 30;
        // The words went in, in order, one token a step.
        let fed: Vec<u32> = words
            .iter()
            .flat_map(|w| c.tokenizer.encode_word(w))
            .collect();
        let mut rest = texts.iter();
        assert!(
            fed.iter().all(|t| rest.any(|x| x == t)),
            "{fed:?} not all in {texts:?}"
        );
        // The audio starts once the text lead and the acoustic delay have passed.
        let first = frames.iter().position(|f| !f.is_empty()).unwrap();
        assert_eq!(
            first,
            generation.text_audio_delay_in_tokens + generation.acoustic_delay,
            "first audio at step {first}"
        );
        let loud: Vec<f32> = frames[first..]
            .iter()
            .map(|f| {
                assert_eq!(f.len(), FRAME_SAMPLES);
                assert!(f.iter().all(|s| s.is_finite()));
                rms(f)
            })
            .collect();
        let db = |r: f32| 20.0 * r.max(1e-9).log10();
        eprintln!(
            "tiny TTS: first audio at step {first}, {per_step:?} a step, levels {:?} dBFS",
            loud.iter().map(|&r| db(r).round()).collect::<Vec<_>>()
        );
        let audible = loud.iter().filter(|&&r| db(r) > -30.0).count();
        assert!(
            audible * 2 > loud.len(),
            "{audible} of {} frames audible",
            loud.len()
        );
    }

    #[test]
    fn a_voice_file_conditions_the_speaker() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_tts(dir.path(), 4).unwrap();
        let config = TtsConfig::load(dir.path()).unwrap();
        let mimi_dim = config.mimi().dimension;
        let voice = dir.path().join("voice.safetensors");
        let latents = Tensor::randn(0f32, 1.0, (1, mimi_dim, 125), &Device::Cpu).unwrap();
        moshi::candle::safetensors::save(
            &std::collections::HashMap::from([("speaker_wavs".to_string(), latents)]),
            &voice,
        )
        .unwrap();
        let mut c = load_tts(dir.path(), Some(&voice), &Device::Cpu, DType::F32).unwrap();
        let Some(CaSrc::Tokens(tokens)) = &c.ca_src else {
            panic!("no speaker tokens");
        };
        assert_eq!(tokens.dims(), &[1, SPEAKERS * 125, config.dim]);
        let (_, frames) = speak(&mut c, &["hi"], 12);
        assert!(frames.iter().any(|f| !f.is_empty()));

        // A file with the wrong shape, or several tensors, is named.
        let wrong = Tensor::zeros((1, 7, 125), DType::F32, &Device::Cpu).unwrap();
        for tensors in [
            vec![("speaker_wavs", wrong.clone())],
            vec![("a", wrong.clone()), ("b", wrong)],
        ] {
            let map: std::collections::HashMap<String, Tensor> = tensors
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect();
            moshi::candle::safetensors::save(&map, &voice).unwrap();
            let err = load_tts(dir.path(), Some(&voice), &Device::Cpu, DType::F32)
                .unwrap_err()
                .to_string();
            assert!(err.contains("voice.safetensors"), "{err}");
        }

        // A voice for a model without cross-attention is refused, not ignored.
        let path = dir.path().join(loader::CONFIG_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"cross_attention\": true", "\"cross_attention\": false"),
        )
        .unwrap();
        assert!(
            load_tts(dir.path(), None, &Device::Cpu, DType::F32)
                .unwrap()
                .ca_src
                .is_none()
        );
        let err = load_tts(dir.path(), Some(&voice), &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("voice.safetensors") && err.contains("cross_attention"),
            "{err}"
        );
    }

    #[test]
    fn each_missing_or_wrong_file_is_named() {
        let check = |break_it: &dyn Fn(&Path), name: &str| {
            let dir = tempfile::tempdir().unwrap();
            write_tiny_tts(dir.path(), 5).unwrap();
            break_it(dir.path());
            let err = load_tts(dir.path(), None, &Device::Cpu, DType::F32)
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{name}: {err}");
        };
        for name in [
            TTS_LM_FILE,
            TTS_MIMI_FILE,
            TTS_TOKENIZER_FILE,
            loader::CONFIG_FILE,
        ] {
            check(&|d| std::fs::remove_file(d.join(name)).unwrap(), name);
            check(&|d| std::fs::write(d.join(name), b"garbage").unwrap(), name);
        }
        let edit = |from: &'static str, to: &'static str| {
            move |d: &Path| {
                let path = d.join(loader::CONFIG_FILE);
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.contains(from), "{from} not in {text}");
                std::fs::write(&path, text.replace(from, to)).unwrap();
            }
        };
        // Sizes that do not fit the weights name the LM file.
        check(&edit("\"num_layers\": 2", "\"num_layers\": 3"), TTS_LM_FILE);
        // Sizes that cannot work are refused before any weight is read.
        check(&edit("\"num_heads\": 4", "\"num_heads\": 5"), "num_heads");
        check(&edit("\"dep_q\": 8", "\"dep_q\": 4"), "dep_q");
        // A vocabulary of another size names the tokenizer.
        check(
            &edit("\"text_card\": ", "\"text_card\": 1"),
            TTS_TOKENIZER_FILE,
        );
        // What moshi 0.6.4 cannot run is refused, naming the key.
        check(
            &edit(
                "\"demux_second_stream\": false",
                "\"demux_second_stream\": true",
            ),
            "demux_second_stream",
        );
        // Without the speaker conditioner a cross-attention model cannot start.
        check(
            &|d| {
                let path = d.join(TTS_LM_FILE);
                let mut tensors = moshi::candle::safetensors::load(&path, &Device::Cpu).unwrap();
                tensors.remove(SPEAKER_PADDING).unwrap();
                moshi::candle::safetensors::save(&tensors, &path).unwrap();
            },
            "learnt_padding",
        );
    }

    /// Kyutai's `config.json` for `tts-1.6b-en_fr`, as published (from reading it and
    /// the code that reads it; `delays` written out: the text and first codebook at 0,
    /// the other 31 at 2).
    fn published() -> serde_json::Value {
        let mut file: serde_json::Value = serde_json::from_str(
            r#"{
            "card": 2048, "n_q": 32, "dep_q": 32, "dim": 2048,
            "text_card": 8000, "existing_text_padding_id": 3, "num_heads": 32,
            "num_layers": 16, "hidden_scale": 4.125, "causal": true, "layer_scale": null,
            "context": 500, "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
            "positional_embedding": "rope", "depformer_dim": 1024,
            "depformer_dim_feedforward": 3072, "depformer_num_heads": 16,
            "depformer_num_layers": 4, "depformer_layer_scale": null,
            "depformer_multi_linear": true, "depformer_context": 32,
            "depformer_max_period": 10000, "depformer_gating": "silu",
            "depformer_pos_emb": "none", "depformer_weights_per_step": true,
            "depformer_low_rank_embeddings": 128, "demux_second_stream": true,
            "text_card_out": null,
            "conditioners": {
                "speaker_wavs": {"type": "tensor", "dim": 512},
                "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16,
                    "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]}},
                "control": {"type": "lut", "lut": {"n_bins": 1, "dim": 2048,
                    "possible_values": ["ok"]}}
            },
            "fuser": {"sum": ["control", "cfg"], "cross": ["speaker_wavs"]},
            "cross_attention": true,
            "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
            "stt_config": {},
            "model_id": {"sig": "1e68beda", "epoch": 240},
            "model_type": "tts",
            "lm_gen_config": {"temp": 0.6, "temp_text": 0.6, "top_k": 250, "top_k_text": 50},
            "tokenizer_name": "tokenizer_spm_8k_en_fr_audio.model",
            "mimi_name": "tokenizer-e351c8d8-checkpoint125.safetensors",
            "moshi_name": "dsm_tts_1e68beda@240.safetensors"
        }"#,
        )
        .unwrap();
        let mut delays = vec![0, 0];
        delays.resize(33, 2);
        let mut schedule: Vec<usize> = (0..8).collect();
        for w in [8, 9, 10] {
            schedule.extend([w; 8]);
        }
        file["delays"] = json!(delays);
        file["depformer_weights_per_step_schedule"] = json!(schedule);
        file
    }

    #[test]
    fn kyutai_s_published_config_reads_and_is_refused_by_name() {
        let mut file = published();
        let config: TtsConfig = serde_json::from_value(file.clone()).unwrap();
        assert_eq!(config.moshi_name, TTS_LM_FILE);
        assert_eq!(config.mimi_name, TTS_MIMI_FILE);
        assert_eq!(config.tokenizer_name, TTS_TOKENIZER_FILE);
        assert_eq!(config.acoustic_delay(), 2);
        assert_eq!(config.audio_delay_steps(), 16);
        // The shared depformer weights are the first thing moshi 0.6.4 cannot run ...
        let err = config.check().unwrap_err();
        assert!(err.contains("depformer_weights_per_step_schedule"), "{err}");
        assert!(err.contains("moshi 0.6.4"), "{err}");
        // ... then the second text stream, then the LUT conditioners.
        file["depformer_weights_per_step_schedule"] = json!((0..32).collect::<Vec<_>>());
        let err = serde_json::from_value::<TtsConfig>(file.clone())
            .unwrap()
            .check()
            .unwrap_err();
        assert!(err.contains("demux_second_stream"), "{err}");
        file["demux_second_stream"] = json!(false);
        let err = serde_json::from_value::<TtsConfig>(file.clone())
            .unwrap()
            .check()
            .unwrap_err();
        assert!(err.contains("conditioners") && err.contains("cfg"), "{err}");
        // Without those, the same sizes map onto the moshi crate's TTS shape.
        file["conditioners"] = json!({"speaker_wavs": {"type": "tensor", "dim": 512}});
        let config: TtsConfig = serde_json::from_value(file).unwrap();
        config.check().unwrap();
        let lm = config.lm();
        let reference = lm::Config::tts_202501();
        assert_eq!(lm.audio_codebooks, reference.audio_codebooks);
        assert_eq!(lm.audio_vocab_size, reference.audio_vocab_size);
        assert_eq!(lm.text_in_vocab_size, reference.text_in_vocab_size);
        assert_eq!(lm.text_out_vocab_size, reference.text_out_vocab_size);
        assert_eq!(lm.transformer.d_model, 2048);
        assert_eq!(
            lm.transformer.cross_attention,
            reference.transformer.cross_attention
        );
        let dep = lm.depformer.unwrap();
        assert_eq!(dep.num_slices, 32);
        assert_eq!(dep.low_rank_embeddings, Some(128));
        let s = config.streaming();
        assert_eq!(
            (s.text_pad_token, s.text_start_token, s.acoustic_delay),
            (3, 8000, 2)
        );

        // Through the loader, the refusal names config.json and the key.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(loader::CONFIG_FILE),
            published().to_string(),
        )
        .unwrap();
        let err = load_tts(dir.path(), None, &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(loader::CONFIG_FILE)
                && err.contains("depformer_weights_per_step_schedule"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_layouts_are_refused_by_key() {
        let base = {
            let mut f = published();
            f["depformer_weights_per_step_schedule"] = json!(null);
            f["demux_second_stream"] = json!(false);
            f["conditioners"] = json!(null);
            f
        };
        serde_json::from_value::<TtsConfig>(base.clone())
            .unwrap()
            .check()
            .unwrap();
        for (key, value) in [
            ("depformer_weights_per_step", json!(false)),
            ("depformer_multi_linear", json!(false)),
            ("depformer_pos_emb", json!("sin")),
            ("norm", json!("layer_norm")),
            ("causal", json!(false)),
            ("delays", json!([0, 1, 2])),
            ("hidden_scale", json!(0.0)),
            ("existing_text_padding_id", json!(8000)),
        ] {
            let mut f = base.clone();
            f[key] = value;
            let err = serde_json::from_value::<TtsConfig>(f)
                .unwrap()
                .check()
                .unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
