//! Kyutai's streaming speech-to-text (the delayed-streams STT models such as
//! `stt-1b-en_fr`), on the same Mimi codec and 80 ms frames as Moshi: the first stage of the
//! cascade the seed's Lab 5a compares with Moshi.
//!
//! A checkpoint directory in Kyutai's layout (as their `-candle` releases ship it):
//!
//! | file | what |
//! |---|---|
//! | `config.json` | Kyutai's keys: `dim`, `num_heads`, `num_layers`, `context`, `max_period`, `causal`, `n_q`, `card`, `text_card`, `mimi_name`, `tokenizer_name`, `stt_config.audio_delay_seconds`, `stt_config.audio_silence_prefix_seconds`; where the model has the voice-activity heads, `extra_heads_num_heads` and `extra_heads_dim` |
//! | `model.safetensors` | the LM (a text stream over `n_q` audio codebooks, no depformer) |
//! | the file `mimi_name` names | Mimi, read with `n_q` codebooks |
//! | the file `tokenizer_name` names | the SentencePiece vocabulary of `text_card` pieces |
//!
//! `config.json` may also hold a `"mimi"` object of [`MimiConfig`] sizes (this project's
//! addition, for the tiny test checkpoints); without it Mimi has the published sizes.
//!
//! Each [`Stt::step`] takes one 80 ms frame and returns the words the model closed, with
//! their start times, and the voice-activity heads' probabilities of no speech ahead
//! (Kyutai's 1B model has four, for 0.5, 1, 2 and 3 s), from which a turn's end can be
//! predicted rather than waited for.

use std::path::{Path, PathBuf};

use creature_actors::{FRAME_SAMPLES, VoiceError};
use moshi::asr::{AsrMsg, State};
use moshi::candle::{DType, Device, Tensor};
use moshi::candle_nn::VarBuilder;
use moshi::lm::{self, LmModel};
use moshi::nn::MaybeQuantizedVarBuilder;
use serde::{Deserialize, Serialize};

use super::loader::{self, MimiConfig, first_line, load_error, read_safetensors};
use super::spm::{SentencePieceModel, TextDecoder};
use super::tiny::{self, RandomWeights};

/// The LM's file in an STT checkpoint.
pub const STT_LM_FILE: &str = "model.safetensors";
/// Mimi and the vocabulary under the names Kyutai's `stt-1b-en_fr` release gives them
/// (the loader reads whatever `config.json` names).
pub const STT_MIMI_FILE: &str = "mimi-pytorch-e351c8d8@125.safetensors";
pub const STT_TOKENIZER_FILE: &str = "tokenizer_en_fr_audio_8000.model";

/// Frames per second of the token streams.
const FRAME_RATE: f64 = 12.5;

/// `config.json` of an STT checkpoint, Kyutai's keys (others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SttConfig {
    pub mimi_name: String,
    pub tokenizer_name: String,
    pub card: usize,
    pub text_card: usize,
    pub dim: usize,
    pub n_q: usize,
    pub context: usize,
    pub max_period: f64,
    pub num_heads: usize,
    pub num_layers: usize,
    #[serde(default = "yes")]
    pub causal: bool,
    pub stt_config: SttTiming,
    #[serde(default)]
    pub extra_heads_num_heads: Option<usize>,
    #[serde(default)]
    pub extra_heads_dim: Option<usize>,
    /// Mimi's sizes, where they are not the published ones (tiny checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mimi: Option<MimiConfig>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SttTiming {
    /// How far the text stream lags the audio.
    pub audio_delay_seconds: f64,
    /// Silence the model expects before the first word.
    #[serde(default)]
    pub audio_silence_prefix_seconds: f64,
}

impl SttConfig {
    /// The moshi crate's LM config for these sizes.
    pub fn lm(&self) -> lm::Config {
        let transformer = moshi::transformer::Config {
            d_model: self.dim,
            num_heads: self.num_heads,
            num_layers: self.num_layers,
            dim_feedforward: self.dim * 4,
            causal: self.causal,
            norm_first: true,
            bias_ff: false,
            bias_attn: false,
            layer_scale: None,
            context: self.context,
            max_period: self.max_period as usize,
            use_conv_block: false,
            use_conv_bias: true,
            cross_attention: None,
            gating: Some(moshi::candle_nn::Activation::Silu),
            norm: moshi::NormType::RmsNorm,
            positional_embedding: moshi::transformer::PositionalEmbedding::Rope,
            conv_layout: false,
            conv_kernel_size: 3,
            kv_repeat: 1,
            max_seq_len: 4096 * 4,
            shared_cross_attn: false,
        };
        let extra_heads = match (self.extra_heads_num_heads, self.extra_heads_dim) {
            (Some(num_heads), Some(dim)) if num_heads > 0 => {
                Some(lm::ExtraHeadsConfig { num_heads, dim })
            }
            _ => None,
        };
        lm::Config {
            transformer,
            depformer: None,
            audio_vocab_size: self.card + 1,
            text_in_vocab_size: self.text_card + 1,
            text_out_vocab_size: self.text_card,
            audio_codebooks: self.n_q,
            conditioners: Default::default(),
            extra_heads,
        }
    }

    /// Mimi's sizes: the published ones with `n_q` codebooks, unless the file says.
    pub fn mimi(&self) -> MimiConfig {
        let mut mimi = self.mimi.clone().unwrap_or_default();
        mimi.quantizer_n_q = self.n_q;
        mimi
    }

    /// Steps the text stream lags the audio.
    pub fn delay_steps(&self) -> usize {
        (self.stt_config.audio_delay_seconds * FRAME_RATE).round() as usize
    }

    fn check(&self) -> Result<(), String> {
        let positive = [
            ("dim", self.dim),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("n_q", self.n_q),
            ("card", self.card),
            ("text_card", self.text_card),
            ("context", self.context),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be positive"));
        }
        if self.dim % self.num_heads != 0 {
            return Err(format!(
                "dim ({}) must divide into num_heads ({})",
                self.dim, self.num_heads
            ));
        }
        let delay = self.stt_config.audio_delay_seconds;
        if !(delay.is_finite() && (0.0..=10.0).contains(&delay)) {
            return Err(format!(
                "stt_config.audio_delay_seconds {delay} is outside 0..10"
            ));
        }
        let mimi = self.mimi();
        mimi.check_sizes()?;
        if mimi.quantizer_bins != self.card {
            return Err(format!(
                "card ({}) must be Mimi's codebook size ({})",
                self.card, mimi.quantizer_bins
            ));
        }
        Ok(())
    }

    /// Read and check `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, VoiceError> {
        let path = dir.join(loader::CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            let reason = if e.kind() == std::io::ErrorKind::NotFound {
                "missing file (an STT checkpoint names its parts in config.json)".to_string()
            } else {
                format!("cannot read: {e}")
            };
            load_error(&path, reason)
        })?;
        let config: SttConfig = serde_json::from_str(&text)
            .map_err(|e| load_error(&path, format!("not an STT config: {e}")))?;
        config.check().map_err(|e| load_error(&path, e))?;
        Ok(config)
    }
}

/// A word the model closed: its text and when (in the audio) it started.
#[derive(Debug, Clone, PartialEq)]
pub struct SttWord {
    pub text: String,
    pub start_s: f64,
}

/// What one frame told.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SttStep {
    pub words: Vec<SttWord>,
    /// Where a word ended in this step, its end time.
    pub word_ended_s: Option<f64>,
    /// The voice-activity heads: for each horizon, the probability of no speech within it
    /// (empty for a model without the heads).
    pub pause: Vec<f32>,
}

/// A loaded STT model, stepped one frame at a time.
pub struct Stt {
    state: State,
    tokenizer: SentencePieceModel,
    config: SttConfig,
    dir: PathBuf,
    steps: u64,
}

impl std::fmt::Debug for Stt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stt")
            .field("dir", &self.dir)
            .field("steps", &self.steps)
            .finish()
    }
}

fn step_error(e: moshi::candle::Error) -> VoiceError {
    VoiceError::Model(format!("the STT model failed a step: {}", first_line(&e)))
}

impl Stt {
    /// Load the checkpoint in `dir`; every missing or unfitting file is named.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Stt, VoiceError> {
        if !dir.is_dir() {
            return Err(load_error(
                dir,
                "not a directory (expected an STT checkpoint in Kyutai's layout)",
            ));
        }
        let config = SttConfig::load(dir)?;
        let tokenizer =
            loader::load_vocabulary(&dir.join(&config.tokenizer_name), config.text_card)?;
        let mimi = loader::load_mimi(&dir.join(&config.mimi_name), &config.mimi(), device)?;
        let lm_path = dir.join(STT_LM_FILE);
        let lm = {
            let tensors = read_safetensors(&lm_path, device)?;
            let vb =
                MaybeQuantizedVarBuilder::Real(VarBuilder::from_tensors(tensors, dtype, device));
            LmModel::new(&config.lm(), vb).map_err(|e| {
                load_error(
                    &lm_path,
                    format!(
                        "weights do not fit the STT sizes in config.json: {}",
                        first_line(&e)
                    ),
                )
            })?
        };
        let state = State::new(1, config.delay_steps(), 0.0, mimi, lm).map_err(|e| {
            load_error(
                &lm_path,
                format!("cannot start the model: {}", first_line(&e)),
            )
        })?;
        Ok(Stt {
            state,
            tokenizer,
            config,
            dir: dir.to_path_buf(),
            steps: 0,
        })
    }

    pub fn config(&self) -> &SttConfig {
        &self.config
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Frames stepped since the last reset.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Step one 80 ms frame of user audio (24 kHz mono).
    pub fn step(&mut self, pcm: &[f32]) -> Result<SttStep, VoiceError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(VoiceError::Input(format!(
                "an STT frame holds {FRAME_SAMPLES} samples, got {}",
                pcm.len()
            )));
        }
        let device = self.state.device().clone();
        let frame = Tensor::from_slice(pcm, (1, 1, FRAME_SAMPLES), &device).map_err(step_error)?;
        let msgs = self
            .state
            .step_pcm(frame, None, &().into(), |_, _, _| ())
            .map_err(step_error)?;
        self.steps += 1;
        let mut out = SttStep::default();
        for msg in msgs {
            match msg {
                AsrMsg::Word {
                    tokens, start_time, ..
                } => {
                    let mut decoder = TextDecoder::new(
                        self.tokenizer.clone(),
                        vec![loader::TEXT_EOP_TOKEN, loader::TEXT_PAD_TOKEN],
                    );
                    let text: String = tokens.iter().filter_map(|&t| decoder.push(t)).collect();
                    let text = text.trim().to_string();
                    if !text.is_empty() {
                        out.words.push(SttWord {
                            text,
                            start_s: start_time,
                        });
                    }
                }
                AsrMsg::EndWord { stop_time, .. } => out.word_ended_s = Some(stop_time),
                AsrMsg::Step { prs, .. } => {
                    out.pause = prs.iter().filter_map(|p| p.first().copied()).collect();
                }
            }
        }
        Ok(out)
    }

    /// Forget the audio heard so far (a new conversation).
    pub fn reset(&mut self) -> Result<(), VoiceError> {
        self.steps = 0;
        self.state.reset().map_err(step_error)
    }
}

/// Write a random-weight tiny STT checkpoint into `dir`, in the layout above: an LM of
/// width 64 over 32 codebooks with the four voice-activity heads, a narrow Mimi, and the
/// tiny vocabulary. It runs the real path on any CPU in milliseconds a frame.
pub fn write_tiny_stt(dir: &Path, seed: u64) -> Result<Vec<(PathBuf, u64)>, VoiceError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| load_error(dir, format!("cannot create the directory: {e}")))?;
    let vocab = tiny::tiny_vocabulary();
    let mimi = MimiConfig {
        quantizer_n_q: 32,
        ..tiny::tiny_architecture(vocab.len())
            .map_err(|e| load_error(dir, e))?
            .mimi
    };
    let config = SttConfig {
        mimi_name: STT_MIMI_FILE.into(),
        tokenizer_name: STT_TOKENIZER_FILE.into(),
        card: mimi.quantizer_bins,
        text_card: vocab.len(),
        dim: 64,
        n_q: 32,
        context: 375,
        max_period: 100_000.0,
        num_heads: 4,
        num_layers: 2,
        causal: true,
        stt_config: SttTiming {
            audio_delay_seconds: 0.5,
            audio_silence_prefix_seconds: 0.0,
        },
        extra_heads_num_heads: Some(4),
        extra_heads_dim: Some(6),
        mimi: Some(mimi.clone()),
    };
    config.check().map_err(|e| load_error(dir, e))?;
    let device = Device::Cpu;
    let mimi_weights = tiny::random_mimi(&mimi, seed, &dir.join(STT_MIMI_FILE))?;
    let lm_weights = RandomWeights::new(seed.wrapping_add(1));
    LmModel::new(
        &config.lm(),
        MaybeQuantizedVarBuilder::Real(lm_weights.var_builder(DType::F32, &device)),
    )
    .map_err(|e| {
        load_error(
            &dir.join(STT_LM_FILE),
            format!("cannot build the tiny STT LM: {e}"),
        )
    })?;
    // As for the tiny Moshi: random text logits hover near uniform and their argmax sticks
    // to one id. Favouring words and the two padding ids (which close a word) keeps the
    // weights random but makes the transcript alternate words and pauses with the input.
    let row_scale: Vec<f32> = vocab
        .pieces()
        .iter()
        .enumerate()
        .map(|(id, p)| {
            let padding = [loader::TEXT_PAD_TOKEN, loader::TEXT_EOP_TOKEN].contains(&(id as u32));
            if padding {
                5.0
            } else if p.kind == super::spm::PieceKind::Normal {
                3.0
            } else {
                0.3
            }
        })
        .collect();
    lm_weights
        .scale_rows("text_linear.weight", &row_scale)
        .map_err(|e| {
            load_error(
                &dir.join(STT_LM_FILE),
                format!("cannot shape the text head: {e}"),
            )
        })?;

    let mut written = tiny::Written::new(dir);
    written.file(STT_LM_FILE, lm_weights.save(&dir.join(STT_LM_FILE)))?;
    written.file(STT_MIMI_FILE, mimi_weights.save(&dir.join(STT_MIMI_FILE)))?;
    written.bytes(STT_TOKENIZER_FILE, &vocab.to_bytes())?;
    let file = serde_json::to_value(&config).map_err(|e| load_error(dir, e.to_string()))?;
    written.json(loader::CONFIG_FILE, &file)?;
    Ok(written.into_files())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speech(i: usize) -> Vec<f32> {
        (0..FRAME_SAMPLES)
            .map(|n| {
                let t = (i * FRAME_SAMPLES + n) as f32 / 24_000.0;
                0.3 * (t * 2.0 * std::f32::consts::PI * 180.0).sin()
                    * (0.5 + 0.5 * (t * 2.0 * std::f32::consts::PI * 3.0).sin())
            })
            .collect()
    }

    #[test]
    fn the_tiny_stt_runs_the_real_path_and_reports_words_and_pauses() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_stt(dir.path(), 5).unwrap();
        let mut stt = Stt::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(stt.config().delay_steps(), 6);
        let mut words = Vec::new();
        let mut last_start = 0.0;
        for i in 0..60 {
            let step = stt.step(&speech(i)).unwrap();
            // The four voice-activity heads answer every step, as probabilities.
            assert_eq!(step.pause.len(), 4, "step {i}");
            assert!(step.pause.iter().all(|p| (0.0..=1.0).contains(p)));
            for w in step.words {
                assert!(w.start_s >= last_start, "word times go forward");
                last_start = w.start_s;
                assert!(!w.text.is_empty());
                words.push(w);
            }
        }
        assert_eq!(stt.steps(), 60);
        // Random weights still close words now and then (after the text delay).
        assert!(words.len() >= 3, "only {} words in 60 frames", words.len());
        eprintln!(
            "tiny STT: {:?}",
            words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>()
        );
        stt.reset().unwrap();
        assert_eq!(stt.steps(), 0);
        assert!(matches!(stt.step(&[0.0; 10]), Err(VoiceError::Input(_))));
    }

    #[test]
    fn each_missing_or_wrong_file_is_named() {
        let check = |break_it: &dyn Fn(&Path), name: &str| {
            let dir = tempfile::tempdir().unwrap();
            write_tiny_stt(dir.path(), 5).unwrap();
            break_it(dir.path());
            let err = Stt::load(dir.path(), &Device::Cpu, DType::F32)
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{name}: {err}");
        };
        for name in [
            STT_LM_FILE,
            STT_MIMI_FILE,
            STT_TOKENIZER_FILE,
            loader::CONFIG_FILE,
        ] {
            check(&|d| std::fs::remove_file(d.join(name)).unwrap(), name);
            check(&|d| std::fs::write(d.join(name), b"garbage").unwrap(), name);
        }
        // A config whose sizes do not fit the weights names the LM file.
        check(
            &|d| {
                let path = d.join(loader::CONFIG_FILE);
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(
                    &path,
                    text.replace("\"num_layers\": 2", "\"num_layers\": 3"),
                )
                .unwrap();
            },
            STT_LM_FILE,
        );
        // Sizes that cannot work are refused before any weight is read.
        check(
            &|d| {
                let path = d.join(loader::CONFIG_FILE);
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, text.replace("\"num_heads\": 4", "\"num_heads\": 5"))
                    .unwrap();
            },
            "num_heads",
        );
    }

    #[test]
    fn kyutai_s_published_config_reads() {
        // Kyutai's keys for stt-1b-en_fr, with some this loader has no use for.
        let text = r#"{
            "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
            "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
            "card": 2048, "text_card": 8000, "dim": 2048, "n_q": 32, "context": 750,
            "max_period": 100000.0, "num_heads": 16, "num_layers": 16, "causal": true,
            "dep_q": 0, "delays": [0],
            "stt_config": {"audio_silence_prefix_seconds": 0.0, "audio_delay_seconds": 0.5},
            "extra_heads_num_heads": 4, "extra_heads_dim": 6
        }"#;
        let config: SttConfig = serde_json::from_str(text).unwrap();
        config.check().unwrap();
        assert_eq!(config.delay_steps(), 6);
        let lm = config.lm();
        assert_eq!(lm.audio_codebooks, 32);
        assert!(lm.depformer.is_none());
        assert_eq!(config.mimi().quantizer_n_q, 32);
        assert_eq!(config.mimi().ratios, [8, 6, 5, 4]);
    }
}
