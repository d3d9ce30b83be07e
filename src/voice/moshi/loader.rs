//! Loading a Moshi checkpoint directory in Kyutai's layout, and checking that its parts fit
//! together, so a bad file is a startup error naming the file rather than a failed step.
//!
//! | file | what |
//! |---|---|
//! | `model.safetensors` or `model.q8.gguf` | the multistream LM (RQ-Transformer) |
//! | `tokenizer-e351c8d8-checkpoint125.safetensors` | Mimi, the audio codec |
//! | `tokenizer_spm_32k_3.model` | the SentencePiece text vocabulary |
//! | `config.json` (optional) | `{"lm": <moshi lm::Config>, "mimi": <MimiConfig>}`, or Kyutai's own format for the v0.1 sizes |
//!
//! Without `config.json` (or without one of its two keys) the published Moshi v0.1 sizes
//! apply: `lm::Config::v0_1_streaming(8)` and `mimi::Config::v0_1(Some(8))`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use creature_actors::{FRAME_SAMPLES, SAMPLE_RATE, VoiceError};
use moshi::candle::{DType, Device, Tensor};
use moshi::candle_nn::VarBuilder;
use moshi::lm::{self, LmModel};
use moshi::lm_generate_multistream;
use moshi::mimi::{self, Mimi};
use moshi::nn::MaybeQuantizedVarBuilder;
use serde::{Deserialize, Serialize};

use super::spm::SentencePieceModel;

/// The LM weights, full precision (any dtype safetensors holds).
pub const LM_SAFETENSORS: &str = "model.safetensors";
/// The LM weights quantized to 8 bits (Kyutai's `-candle-q8` releases).
pub const LM_GGUF: &str = "model.q8.gguf";
/// Mimi's weights, under the name Kyutai publishes them.
pub const MIMI_FILE: &str = "tokenizer-e351c8d8-checkpoint125.safetensors";
/// The text vocabulary.
pub const TOKENIZER_FILE: &str = "tokenizer_spm_32k_3.model";
/// Optional architecture of both models.
pub const CONFIG_FILE: &str = "config.json";

/// Kyutai's text padding ids: "end of padding" (0) and padding (3); never shown as text.
pub const TEXT_EOP_TOKEN: u32 = 0;
pub const TEXT_PAD_TOKEN: u32 = 3;
/// Agent and user audio streams each carry this many Mimi codebooks.
pub const CODEBOOKS: usize = 8;
/// Steps the acoustic codebooks lag the semantic one.
pub const ACOUSTIC_DELAY: usize = 2;

/// Mimi's size knobs. Everything else (causal convolutions with weight norm, ELU, a RoPE
/// transformer with layer norm, 12.5 Hz at 24 kHz) is Moshi v0.1's architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MimiConfig {
    /// Width of the latent between the SEANet convolutions and the transformers.
    pub dimension: usize,
    /// Channels of the first convolution; they double at each downsampling.
    pub n_filters: usize,
    pub n_residual_layers: usize,
    /// Downsampling ratios of the encoder (product times 2 must be 1920, one 80 ms frame).
    pub ratios: Vec<usize>,
    pub kernel_size: usize,
    pub residual_kernel_size: usize,
    pub last_kernel_size: usize,
    pub compress: usize,
    pub dilation_base: usize,
    pub transformer_num_heads: usize,
    pub transformer_num_layers: usize,
    pub transformer_dim_feedforward: usize,
    /// Attention window of the codec transformers, in 25 Hz positions.
    pub transformer_context: usize,
    pub transformer_max_seq_len: usize,
    pub transformer_layer_scale: Option<f64>,
    /// Codebooks used (Moshi streams 8; the published file holds more).
    pub quantizer_n_q: usize,
    /// Entries per codebook.
    pub quantizer_bins: usize,
    pub quantizer_dim: usize,
}

impl Default for MimiConfig {
    fn default() -> Self {
        MimiConfig::from_moshi(&mimi::Config::v0_1(Some(CODEBOOKS)))
    }
}

impl MimiConfig {
    fn from_moshi(c: &mimi::Config) -> Self {
        MimiConfig {
            dimension: c.seanet.dimension,
            n_filters: c.seanet.n_filters,
            n_residual_layers: c.seanet.n_residual_layers,
            ratios: c.seanet.ratios.clone(),
            kernel_size: c.seanet.kernel_size,
            residual_kernel_size: c.seanet.residual_kernel_size,
            last_kernel_size: c.seanet.last_kernel_size,
            compress: c.seanet.compress,
            dilation_base: c.seanet.dilation_base,
            transformer_num_heads: c.transformer.num_heads,
            transformer_num_layers: c.transformer.num_layers,
            transformer_dim_feedforward: c.transformer.dim_feedforward,
            transformer_context: c.transformer.context,
            transformer_max_seq_len: c.transformer.max_seq_len,
            transformer_layer_scale: c.transformer.layer_scale,
            quantizer_n_q: c.quantizer_n_q,
            quantizer_bins: c.quantizer_bins,
            quantizer_dim: c.quantizer_dim,
        }
    }

    /// The moshi crate's config for these sizes.
    pub fn to_moshi(&self) -> mimi::Config {
        let mut c = mimi::Config::v0_1(Some(self.quantizer_n_q));
        c.seanet.dimension = self.dimension;
        c.seanet.n_filters = self.n_filters;
        c.seanet.n_residual_layers = self.n_residual_layers;
        c.seanet.ratios = self.ratios.clone();
        c.seanet.kernel_size = self.kernel_size;
        c.seanet.residual_kernel_size = self.residual_kernel_size;
        c.seanet.last_kernel_size = self.last_kernel_size;
        c.seanet.compress = self.compress;
        c.seanet.dilation_base = self.dilation_base;
        c.transformer.d_model = self.dimension;
        c.transformer.num_heads = self.transformer_num_heads;
        c.transformer.num_layers = self.transformer_num_layers;
        c.transformer.dim_feedforward = self.transformer_dim_feedforward;
        c.transformer.context = self.transformer_context;
        c.transformer.max_seq_len = self.transformer_max_seq_len;
        c.transformer.layer_scale = self.transformer_layer_scale;
        c.quantizer_bins = self.quantizer_bins;
        c.quantizer_dim = self.quantizer_dim;
        c
    }

    /// Sizes the moshi crate would divide by zero on, or that break the 80 ms frame, and
    /// a codebook count other than the 8 Moshi streams.
    pub fn check(&self) -> Result<(), String> {
        self.check_sizes()?;
        if self.quantizer_n_q != CODEBOOKS {
            return Err(format!(
                "mimi.quantizer_n_q is {}; Moshi streams {CODEBOOKS} codebooks",
                self.quantizer_n_q
            ));
        }
        Ok(())
    }

    /// Sizes the moshi crate would divide by zero on, or that break the 80 ms frame (any
    /// codebook count: the speech-to-text models read 32).
    pub fn check_sizes(&self) -> Result<(), String> {
        if self.quantizer_n_q == 0 {
            return Err("mimi.quantizer_n_q must be positive".into());
        }
        let hop: usize = self.ratios.iter().product();
        if self.ratios.is_empty()
            || self.ratios.contains(&0)
            || hop == 0
            || FRAME_SAMPLES % hop != 0
        {
            return Err(format!(
                "mimi.ratios {:?} must multiply to a divisor of {FRAME_SAMPLES}",
                self.ratios
            ));
        }
        if FRAME_SAMPLES / hop != 2 {
            // The encoder runs at 25 Hz and a learnt stride-2 convolution brings it to 12.5 Hz.
            return Err(format!(
                "mimi.ratios {:?} give {} Hz before downsampling; Mimi needs 25 Hz ({} samples)",
                self.ratios,
                SAMPLE_RATE as usize / hop,
                FRAME_SAMPLES / 2
            ));
        }
        positive(&[
            ("mimi.dimension", self.dimension),
            ("mimi.n_filters", self.n_filters),
            ("mimi.compress", self.compress),
            ("mimi.kernel_size", self.kernel_size),
            ("mimi.residual_kernel_size", self.residual_kernel_size),
            ("mimi.last_kernel_size", self.last_kernel_size),
            ("mimi.transformer_num_heads", self.transformer_num_heads),
            (
                "mimi.transformer_dim_feedforward",
                self.transformer_dim_feedforward,
            ),
            ("mimi.transformer_context", self.transformer_context),
            ("mimi.quantizer_bins", self.quantizer_bins),
            ("mimi.quantizer_dim", self.quantizer_dim),
        ])?;
        heads("mimi", self.dimension, self.transformer_num_heads, 1)
    }
}

fn positive(values: &[(&str, usize)]) -> Result<(), String> {
    match values.iter().find(|(_, v)| *v == 0) {
        Some((key, _)) => Err(format!("{key} must be at least 1")),
        None => Ok(()),
    }
}

/// A transformer's width must split evenly into heads of even size (rotary embeddings
/// rotate pairs), and its heads into key/value groups.
fn heads(what: &str, d_model: usize, num_heads: usize, kv_repeat: usize) -> Result<(), String> {
    if num_heads == 0
        || kv_repeat == 0
        || d_model % num_heads != 0
        || (d_model / num_heads) % 2 != 0
        || num_heads % kv_repeat != 0
    {
        return Err(format!(
            "{what}: d_model {d_model} with {num_heads} heads and kv_repeat {kv_repeat} does not split into even-sized heads"
        ));
    }
    Ok(())
}

/// Check an LM architecture against what the multistream step needs.
pub fn check_lm_config(c: &lm::Config) -> Result<(), String> {
    let t = &c.transformer;
    heads("lm.transformer", t.d_model, t.num_heads, t.kv_repeat)?;
    positive(&[
        ("lm.transformer.num_layers", t.num_layers),
        ("lm.transformer.dim_feedforward", t.dim_feedforward),
        ("lm.transformer.context", t.context),
        ("lm.text_out_vocab_size", c.text_out_vocab_size),
    ])?;
    let Some(dep) = &c.depformer else {
        return Err("lm.depformer is missing: Moshi generates its audio with the depformer".into());
    };
    heads(
        "lm.depformer.transformer",
        dep.transformer.d_model,
        dep.transformer.num_heads,
        dep.transformer.kv_repeat,
    )?;
    if dep.num_slices != CODEBOOKS || c.audio_codebooks != 2 * CODEBOOKS {
        return Err(format!(
            "lm has {} depformer slices and {} audio codebooks; the multistream step needs {CODEBOOKS} and {}",
            dep.num_slices,
            c.audio_codebooks,
            2 * CODEBOOKS
        ));
    }
    if c.text_in_vocab_size != c.text_out_vocab_size + 1 {
        return Err(format!(
            "lm.text_in_vocab_size ({}) must be text_out_vocab_size + 1 (the extra id is the start token)",
            c.text_in_vocab_size
        ));
    }
    if c.text_out_vocab_size <= TEXT_PAD_TOKEN as usize {
        return Err(format!(
            "lm.text_out_vocab_size {} leaves no room for the padding ids",
            c.text_out_vocab_size
        ));
    }
    if c.transformer.cross_attention.is_some() || c.conditioners.is_some() {
        return Err(
            "lm with cross-attention or conditioners is not a plain speech-to-speech Moshi".into(),
        );
    }
    Ok(())
}

/// The architecture, from `config.json` or the published defaults.
#[derive(Debug, Clone)]
pub struct Architecture {
    pub lm: lm::Config,
    pub mimi: MimiConfig,
    /// Where the sizes came from, for error messages and the status.
    pub source: String,
}

/// `config.json` as this loader reads it; the LM part is the moshi crate's own serde type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    lm: Option<lm::Config>,
    mimi: Option<MimiConfig>,
}

impl Architecture {
    /// The published Moshi v0.1 (moshiko / moshika) sizes.
    pub fn v0_1() -> Self {
        Architecture {
            lm: lm::Config::v0_1_streaming(CODEBOOKS),
            mimi: MimiConfig::default(),
            source: "the Moshi v0.1 sizes".into(),
        }
    }

    /// Read `dir/config.json` if there is one.
    pub fn load(dir: &Path) -> Result<Self, VoiceError> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Architecture::v0_1()),
            Err(e) => return Err(load_error(&path, format!("cannot read: {e}"))),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| load_error(&path, format!("not valid JSON: {e}")))?;
        if value.get("lm").is_none() && value.get("mimi").is_none() && value.get("dim").is_some() {
            return kyutai_config(&path, &value);
        }
        let file: ConfigFile = serde_json::from_value(value)
            .map_err(|e| load_error(&path, format!("not a valid config: {e}")))?;
        let v0_1 = Architecture::v0_1();
        let arch = Architecture {
            lm: file.lm.unwrap_or(v0_1.lm),
            mimi: file.mimi.unwrap_or(v0_1.mimi),
            source: CONFIG_FILE.into(),
        };
        arch.check().map_err(|reason| load_error(&path, reason))?;
        Ok(arch)
    }

    pub fn check(&self) -> Result<(), String> {
        check_lm_config(&self.lm)?;
        self.mimi.check()?;
        if self.lm.audio_vocab_size != self.mimi.quantizer_bins + 1 {
            return Err(format!(
                "lm.audio_vocab_size ({}) must be mimi.quantizer_bins ({}) + 1 (the extra id is the audio padding)",
                self.lm.audio_vocab_size, self.mimi.quantizer_bins
            ));
        }
        Ok(())
    }

    /// What the multistream generator needs to know about the token ids.
    pub fn generation(&self) -> lm_generate_multistream::Config {
        lm_generate_multistream::Config {
            generated_audio_codebooks: CODEBOOKS,
            input_audio_codebooks: CODEBOOKS,
            audio_vocab_size: self.lm.audio_vocab_size,
            acoustic_delay: ACOUSTIC_DELAY,
            text_pad_token: TEXT_PAD_TOKEN,
            text_eop_token: TEXT_EOP_TOKEN,
            text_start_token: (self.lm.text_in_vocab_size - 1) as u32,
        }
    }
}

/// A `config.json` in Kyutai's own (Python) format, as some of their checkpoint
/// directories carry. Its keys are not this loader's; the published v0.1 model is
/// recognised by its sizes and loaded with them, anything else is refused with the reason.
fn kyutai_config(path: &Path, value: &serde_json::Value) -> Result<Architecture, VoiceError> {
    let number = |key: &str| value.get(key).and_then(serde_json::Value::as_u64);
    let v0_1 = [
        ("dim", 4096),
        ("num_layers", 32),
        ("text_card", 32_000),
        ("card", 2048),
    ];
    let differs: Vec<String> = v0_1
        .iter()
        .filter_map(|(key, want)| match number(key) {
            Some(got) if got == *want => None,
            got => Some(format!(
                "{key} {}",
                got.map_or("missing".into(), |g| g.to_string())
            )),
        })
        .collect();
    if differs.is_empty() {
        tracing::info!(path = %path.display(), "Kyutai-format config.json describes Moshi v0.1; using those sizes");
        return Ok(Architecture {
            source: "Kyutai's config.json (the Moshi v0.1 sizes)".into(),
            ..Architecture::v0_1()
        });
    }
    Err(load_error(
        path,
        format!(
            "a config.json in Kyutai's own format for a model other than Moshi v0.1 ({}); \
             describe it in this loader's format instead: {{\"lm\": <moshi lm::Config>, \"mimi\": {{...}}}}",
            differs.join(", ")
        ),
    ))
}

/// Everything in a checkpoint directory, loaded on a device.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub arch: Architecture,
    pub lm: LmModel,
    /// The LM file that was loaded (safetensors or gguf).
    pub lm_file: PathBuf,
    pub mimi: Mimi,
    pub tokenizer: SentencePieceModel,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("lm_file", &self.lm_file)
            .finish()
    }
}

pub fn load_error(path: &Path, reason: impl Into<String>) -> VoiceError {
    VoiceError::Load {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Load and cross-check a checkpoint directory. The LM computes in `dtype`; Mimi in f32.
pub fn load_checkpoint(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<Checkpoint, VoiceError> {
    if !dir.is_dir() {
        return Err(load_error(
            dir,
            "not a directory (expected a Moshi checkpoint in Kyutai's layout)",
        ));
    }
    let arch = Architecture::load(dir)?;
    let tokenizer = load_tokenizer(&dir.join(TOKENIZER_FILE))?;
    if tokenizer.len() != arch.lm.text_out_vocab_size {
        return Err(load_error(
            &dir.join(TOKENIZER_FILE),
            format!(
                "vocabulary size mismatch: the tokenizer has {} pieces but the LM ({}) predicts {} text tokens",
                tokenizer.len(),
                arch.source,
                arch.lm.text_out_vocab_size
            ),
        ));
    }
    let mimi_path = dir.join(MIMI_FILE);
    let mimi = {
        let tensors = read_safetensors(&mimi_path, device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Mimi::new(arch.mimi.to_moshi(), vb).map_err(|e| mismatch(&mimi_path, &arch, e))?
    };
    let (lm, lm_file) = load_lm(dir, &arch, device, dtype)?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        arch,
        lm,
        lm_file,
        mimi,
        tokenizer,
    })
}

/// The vocabulary of an STT or TTS checkpoint, which must hold `text_card` pieces.
pub(super) fn load_vocabulary(
    path: &Path,
    text_card: usize,
) -> Result<SentencePieceModel, VoiceError> {
    let tokenizer = load_tokenizer(path)?;
    if tokenizer.len() != text_card {
        return Err(load_error(
            path,
            format!(
                "vocabulary size mismatch: {} pieces, but config.json's text_card is {text_card}",
                tokenizer.len(),
            ),
        ));
    }
    Ok(tokenizer)
}

/// Mimi of `config`'s sizes from `path`, computing in f32.
pub(super) fn load_mimi(
    path: &Path,
    config: &MimiConfig,
    device: &Device,
) -> Result<Mimi, VoiceError> {
    let tensors = read_safetensors(path, device)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    Mimi::new(config.to_moshi(), vb).map_err(|e| {
        load_error(
            path,
            format!(
                "weights do not fit Mimi with n_q {}: {}",
                config.quantizer_n_q,
                first_line(&e)
            ),
        )
    })
}

fn load_tokenizer(path: &Path) -> Result<SentencePieceModel, VoiceError> {
    let bytes = std::fs::read(path).map_err(|e| load_error(path, io_reason(&e)))?;
    SentencePieceModel::parse(&bytes)
        .map_err(|e| load_error(path, format!("not a SentencePiece model: {e}")))
}

fn io_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        "missing file".into()
    } else {
        format!("cannot read: {e}")
    }
}

/// All tensors of a safetensors file, on `device` in the file's own dtype.
pub(super) fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, VoiceError> {
    if !path.is_file() {
        return Err(load_error(path, "missing file"));
    }
    moshi::candle::safetensors::load(path, device).map_err(|e| {
        load_error(
            path,
            format!("not a readable safetensors file: {}", first_line(&e)),
        )
    })
}

/// The model does not fit the weights: a missing tensor or one of the wrong shape.
fn mismatch(path: &Path, arch: &Architecture, e: moshi::candle::Error) -> VoiceError {
    load_error(
        path,
        format!(
            "weights do not fit the architecture from {}: {}",
            arch.source,
            first_line(&e)
        ),
    )
}

/// candle errors may carry a backtrace after the message; the message is what a person needs.
pub(super) fn first_line(e: &moshi::candle::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn load_lm(
    dir: &Path,
    arch: &Architecture,
    device: &Device,
    dtype: DType,
) -> Result<(LmModel, PathBuf), VoiceError> {
    let st = dir.join(LM_SAFETENSORS);
    let gguf = dir.join(LM_GGUF);
    if st.is_file() {
        let tensors = read_safetensors(&st, device)?;
        let vb = MaybeQuantizedVarBuilder::Real(VarBuilder::from_tensors(tensors, dtype, device));
        let lm = LmModel::new(&arch.lm, vb).map_err(|e| mismatch(&st, arch, e))?;
        Ok((lm, st))
    } else if gguf.is_file() {
        let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(&gguf, device)
            .map_err(|e| {
            load_error(
                &gguf,
                format!("not a readable gguf file: {}", first_line(&e)),
            )
        })?;
        let lm = LmModel::new(&arch.lm, MaybeQuantizedVarBuilder::Quantized(vb))
            .map_err(|e| mismatch(&gguf, arch, e))?;
        Ok((lm, gguf))
    } else {
        Err(load_error(
            &st,
            format!("missing file (nor is there a quantized {LM_GGUF})"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::moshi::tiny::write_tiny_checkpoint;

    fn tiny() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_checkpoint(dir.path(), 3, false).unwrap();
        dir
    }

    /// Load, expecting a `Load` error that names `file` and says `what`.
    #[track_caller]
    fn load_fails(dir: &Path, file: &str, what: &str) -> String {
        let err = match load_checkpoint(dir, &Device::Cpu, DType::F32) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => e,
        };
        let VoiceError::Load { path, reason } = &err else {
            panic!("not a load error: {err}")
        };
        assert!(path.ends_with(file), "{path} does not name {file}");
        assert!(reason.contains(what), "{reason:?} does not say {what:?}");
        err.to_string()
    }

    #[test]
    fn the_tiny_checkpoint_loads_with_its_own_sizes() {
        let dir = tiny();
        let c = load_checkpoint(dir.path(), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(c.arch.source, CONFIG_FILE);
        assert_eq!(c.arch.lm.transformer.d_model, 64);
        assert_eq!(c.tokenizer.len(), c.arch.lm.text_out_vocab_size);
        assert!(c.lm_file.ends_with(LM_SAFETENSORS));
        let g = c.arch.generation();
        assert_eq!(g.text_start_token as usize, c.tokenizer.len());
        assert_eq!(
            (g.text_pad_token, g.text_eop_token, g.audio_vocab_size),
            (3, 0, 2049)
        );
    }

    #[test]
    fn kyutais_own_config_json_for_v0_1_is_recognised_and_others_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        let v0_1 = serde_json::json!({"dim": 4096, "num_layers": 32, "text_card": 32000, "card": 2048, "n_q": 16, "dep_q": 8, "num_heads": 32});
        std::fs::write(&path, v0_1.to_string()).unwrap();
        let arch = Architecture::load(dir.path()).unwrap();
        assert!(arch.source.contains("Kyutai"), "{}", arch.source);
        assert_eq!(arch.lm.transformer.d_model, 4096);
        let other =
            serde_json::json!({"dim": 2048, "num_layers": 16, "text_card": 48000, "card": 2048});
        std::fs::write(&path, other.to_string()).unwrap();
        let err = Architecture::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("config.json")
                && err.contains("dim 2048")
                && err.contains("text_card 48000"),
            "{err}"
        );
    }

    #[test]
    fn without_config_json_the_published_sizes_apply() {
        let dir = tiny();
        std::fs::remove_file(dir.path().join(CONFIG_FILE)).unwrap();
        let arch = Architecture::load(dir.path()).unwrap();
        assert_eq!(arch.lm.transformer.d_model, 4096);
        assert_eq!(arch.lm.text_out_vocab_size, 32_000);
        assert_eq!(arch.mimi.dimension, 512);
        assert_eq!(arch.mimi.quantizer_n_q, 8);
        arch.check().unwrap();
        // The tiny tokenizer then does not match the 32k vocabulary: refused before any weights.
        load_fails(dir.path(), TOKENIZER_FILE, "vocabulary size mismatch");
    }

    #[test]
    fn missing_files_are_named() {
        let err =
            load_checkpoint(Path::new("/nonexistent/moshi"), &Device::Cpu, DType::F32).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/moshi")
                && err.to_string().contains("not a directory"),
            "{err}"
        );
        for file in [LM_SAFETENSORS, MIMI_FILE, TOKENIZER_FILE] {
            let dir = tiny();
            std::fs::remove_file(dir.path().join(file)).unwrap();
            let msg = load_fails(dir.path(), file, "missing file");
            if file == LM_SAFETENSORS {
                assert!(msg.contains(LM_GGUF), "{msg}");
            }
        }
    }

    #[test]
    fn truncated_or_garbage_files_are_named() {
        for file in [LM_SAFETENSORS, MIMI_FILE] {
            let dir = tiny();
            let path = dir.path().join(file);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            load_fails(dir.path(), file, "not a readable safetensors file");
            std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7f garbage").unwrap();
            load_fails(dir.path(), file, "not a readable safetensors file");
            std::fs::write(&path, b"").unwrap();
            load_fails(dir.path(), file, "not a readable safetensors file");
        }
        let dir = tiny();
        let path = dir.path().join(TOKENIZER_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        load_fails(dir.path(), TOKENIZER_FILE, "not a SentencePiece model");
    }

    /// Rewrite one tensor of a safetensors file.
    fn replace_tensor(path: &Path, name: &str, make: impl FnOnce(&Tensor) -> Tensor) {
        let mut tensors = moshi::candle::safetensors::load(path, &Device::Cpu).unwrap();
        let t = tensors
            .remove(name)
            .unwrap_or_else(|| panic!("no {name} in {}", path.display()));
        tensors.insert(name.to_string(), make(&t));
        moshi::candle::safetensors::save(&tensors, path).unwrap();
    }

    #[test]
    fn tensors_of_the_wrong_shape_are_named() {
        let dir = tiny();
        replace_tensor(&dir.path().join(LM_SAFETENSORS), "text_emb.weight", |t| {
            t.narrow(1, 0, 32).unwrap()
        });
        let msg = load_fails(
            dir.path(),
            LM_SAFETENSORS,
            "shape mismatch for text_emb.weight",
        );
        assert!(
            msg.contains("weights do not fit the architecture from config.json"),
            "{msg}"
        );

        // Every decoder convolution in turn, in a fixed order, and corrupted by doubling
        // its output channels: a change of shape whatever the tensor's size (narrowing to
        // one channel changed nothing for a convolution that has one already).
        let dir = tiny();
        let mimi = dir.path().join(MIMI_FILE);
        let pristine = std::fs::read(&mimi).unwrap();
        let mut convs: Vec<String> = moshi::candle::safetensors::load(&mimi, &Device::Cpu)
            .unwrap()
            .into_keys()
            .filter(|n| n.starts_with("decoder.") && n.ends_with("conv.weight"))
            .collect();
        convs.sort();
        assert!(!convs.is_empty(), "the tiny Mimi has decoder convolutions");
        for conv in &convs {
            std::fs::write(&mimi, &pristine).unwrap();
            replace_tensor(&mimi, conv, |t| Tensor::cat(&[t, t], 0).unwrap());
            let msg = load_fails(dir.path(), MIMI_FILE, "shape mismatch");
            assert!(msg.contains(conv.as_str()), "{conv}: {msg}");
        }

        let dir = tiny();
        let lm = dir.path().join(LM_SAFETENSORS);
        let mut tensors = moshi::candle::safetensors::load(&lm, &Device::Cpu).unwrap();
        tensors.retain(|n, _| !n.starts_with("depformer.7."));
        moshi::candle::safetensors::save(&tensors, &lm).unwrap();
        load_fails(dir.path(), LM_SAFETENSORS, "depformer.7.");
    }

    #[test]
    fn a_vocabulary_that_does_not_match_the_lm_is_refused() {
        let dir = tiny();
        let path = dir.path().join(TOKENIZER_FILE);
        let model = SentencePieceModel::parse(&std::fs::read(&path).unwrap()).unwrap();
        let fewer = SentencePieceModel::new(model.pieces()[..model.len() - 5].to_vec());
        std::fs::write(&path, fewer.to_bytes()).unwrap();
        let msg = load_fails(dir.path(), TOKENIZER_FILE, "vocabulary size mismatch");
        assert!(
            msg.contains(&format!("{} pieces", model.len() - 5))
                && msg.contains(&format!("predicts {}", model.len())),
            "{msg}"
        );
    }

    #[test]
    fn bad_config_files_are_named_and_never_panic() {
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let dir = tiny();
            let path = dir.path().join(CONFIG_FILE);
            let mut v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            f(&mut v);
            std::fs::write(&path, v.to_string()).unwrap();
            dir
        };
        let dir = tiny();
        std::fs::write(dir.path().join(CONFIG_FILE), "{ not json").unwrap();
        load_fails(dir.path(), CONFIG_FILE, "not valid JSON");
        load_fails(
            edit(&|v| v["colour"] = 3.into()).path(),
            CONFIG_FILE,
            "unknown field `colour`",
        );
        load_fails(
            edit(&|v| v["mimi"]["n_filtres"] = 3.into()).path(),
            CONFIG_FILE,
            "unknown field `n_filtres`",
        );
        load_fails(
            edit(&|v| v["lm"]["transformer"]["num_heads"] = 0.into()).path(),
            CONFIG_FILE,
            "even-sized heads",
        );
        load_fails(
            edit(&|v| v["lm"]["transformer"]["d_model"] = 60.into()).path(),
            CONFIG_FILE,
            "even-sized heads",
        );
        load_fails(
            edit(&|v| v["mimi"]["ratios"] = serde_json::json!([8, 6, 5])).path(),
            CONFIG_FILE,
            "25 Hz",
        );
        load_fails(
            edit(&|v| v["mimi"]["ratios"] = serde_json::json!([8, 0])).path(),
            CONFIG_FILE,
            "divisor",
        );
        load_fails(
            edit(&|v| v["mimi"]["transformer_num_heads"] = 0.into()).path(),
            CONFIG_FILE,
            "at least 1",
        );
        load_fails(
            edit(&|v| v["mimi"]["quantizer_n_q"] = 4.into()).path(),
            CONFIG_FILE,
            "8 codebooks",
        );
        load_fails(
            edit(&|v| v["mimi"]["quantizer_bins"] = 1024.into()).path(),
            CONFIG_FILE,
            "audio_vocab_size",
        );
        load_fails(
            edit(&|v| v["lm"]["depformer"] = serde_json::Value::Null).path(),
            CONFIG_FILE,
            "depformer is missing",
        );
        load_fails(
            edit(&|v| v["lm"]["text_in_vocab_size"] = 10.into()).path(),
            CONFIG_FILE,
            "start token",
        );
        load_fails(
            edit(&|v| v["lm"]["audio_codebooks"] = "sixteen".into()).path(),
            CONFIG_FILE,
            "invalid type",
        );
        // Sizes that are consistent but not those of the weights: the weights file is named.
        load_fails(
            edit(&|v| v["lm"]["transformer"]["num_layers"] = 3.into()).path(),
            LM_SAFETENSORS,
            "transformer.layers.2",
        );
        load_fails(
            edit(&|v| v["mimi"]["dimension"] = 64.into()).path(),
            MIMI_FILE,
            "shape mismatch",
        );
    }
}
