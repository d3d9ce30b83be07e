//! `creature moshi tiny DIR`: a random-weight Moshi small enough to run the real candle
//! path on a CPU in a few milliseconds a step, written in exactly Kyutai's layout so that it
//! loads through the same loader as a real checkpoint.
//!
//! The weights come from [`RandomWeights`], a candle `SimpleBackend` that makes up a tensor
//! for every name the moshi crate asks for while it builds a model, and remembers it; the
//! remembered tensors are then saved under those names. So the files hold exactly the
//! tensors, names and shapes the models read, whatever the moshi version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use creature_actors::VoiceError;
use moshi::candle::{DType, Device, Shape, Tensor};
use moshi::candle_nn::var_builder::SimpleBackend;
use moshi::candle_nn::{Init, VarBuilder};
use moshi::lm::LmModel;
use moshi::mimi::Mimi;
use moshi::nn::MaybeQuantizedVarBuilder;
use serde_json::json;

use super::loader::{self, Architecture, MimiConfig, load_error};
use super::spm::{Piece, PieceKind, SentencePieceModel};

/// Words of the tiny vocabulary: enough for the monologue watcher to find a task in now and
/// then, plus a few characters that only byte pieces can spell.
const WORDS: &[&str] = &[
    "hello", "hi", "yes", "no", "okay", "well", "so", "and", "but", "or", "the", "a", "an", "to",
    "of", "in", "on", "at", "with", "for", "from", "it", "is", "was", "be", "I", "you", "me", "my",
    "we", "they", "this", "that", "what", "how", "why", "where", "here", "there", "now", "then",
    "please", "thanks", "sure", "can", "will", "would", "let", "go", "get", "bring", "take", "put",
    "give", "fetch", "find", "pick", "up", "down", "cup", "ball", "book", "box", "table",
    "kitchen", "door", "shelf", "chair", "toy", "water", "think", "know", "like", "see", "look",
    "good", "nice", "fun", "creature", "robot", "friend", "café", "naïve",
];
/// Sub-word pieces, without the word mark.
const SUFFIXES: &[&str] = &[
    "s", "ed", "ing", "er", "ly", "'s", "n't", "é", ".", ",", "?", "!",
];

/// The tiny architecture: an LM of width 64 with 2 layers and a depformer of width 32,
/// and a Mimi with narrow convolutions but the real ratios (one 1920-sample frame per
/// step) and 8 codebooks of 2048 entries.
pub fn tiny_architecture(text_vocab: usize) -> Result<Architecture, String> {
    let lm = json!({
        "transformer": transformer_json(64, 4, 2, 256, 3000, "Rope"),
        "depformer": {
            "transformer": transformer_json(32, 2, 1, 128, loader::CODEBOOKS, "None"),
            "num_slices": loader::CODEBOOKS,
            "low_rank_embeddings": null,
        },
        "text_in_vocab_size": text_vocab + 1,
        "text_out_vocab_size": text_vocab,
        "audio_vocab_size": 2049,
        "audio_codebooks": 2 * loader::CODEBOOKS,
        "conditioners": null,
        "extra_heads": null,
    });
    let lm = serde_json::from_value(lm).map_err(|e| format!("tiny LM config: {e}"))?;
    let mimi = MimiConfig {
        dimension: 32,
        n_filters: 4,
        transformer_num_heads: 2,
        transformer_num_layers: 1,
        transformer_dim_feedforward: 64,
        quantizer_dim: 16,
        ..MimiConfig::default()
    };
    let arch = Architecture {
        lm,
        mimi,
        source: loader::CONFIG_FILE.into(),
    };
    arch.check()?;
    Ok(arch)
}

/// A transformer block config as moshi's `transformer::Config` deserializes it.
fn transformer_json(
    d_model: usize,
    heads: usize,
    layers: usize,
    ff: usize,
    context: usize,
    pos: &str,
) -> serde_json::Value {
    json!({
        "d_model": d_model, "num_heads": heads, "num_layers": layers, "dim_feedforward": ff,
        "causal": true, "norm_first": true, "bias_ff": false, "bias_attn": false, "layer_scale": null,
        "context": context, "max_period": 10000, "use_conv_block": false, "use_conv_bias": true,
        "cross_attention": null, "gating": "silu", "norm": "RmsNorm", "positional_embedding": pos,
        "conv_layout": false, "conv_kernel_size": 3, "kv_repeat": 1, "max_seq_len": 4096,
        "shared_cross_attn": false,
    })
}

/// `config.json` for an architecture: the LM part mirrors moshi's `lm::Config`, which
/// can be read but not written by serde, so it is spelled out here.
pub(super) fn config_json(arch: &Architecture) -> serde_json::Value {
    let t = |c: &moshi::transformer::Config| {
        let pos = match c.positional_embedding {
            moshi::transformer::PositionalEmbedding::Rope => "Rope",
            moshi::transformer::PositionalEmbedding::Sin => "Sin",
            moshi::transformer::PositionalEmbedding::None => "None",
        };
        transformer_json(
            c.d_model,
            c.num_heads,
            c.num_layers,
            c.dim_feedforward,
            c.context,
            pos,
        )
    };
    let dep = arch.lm.depformer.as_ref().map(|d| {
        json!({ "transformer": t(&d.transformer), "num_slices": d.num_slices, "low_rank_embeddings": d.low_rank_embeddings })
    });
    json!({
        "lm": {
            "transformer": t(&arch.lm.transformer),
            "depformer": dep,
            "text_in_vocab_size": arch.lm.text_in_vocab_size,
            "text_out_vocab_size": arch.lm.text_out_vocab_size,
            "audio_vocab_size": arch.lm.audio_vocab_size,
            "audio_codebooks": arch.lm.audio_codebooks,
            "conditioners": null,
            "extra_heads": null,
        },
        "mimi": arch.mimi,
    })
}

/// The tiny vocabulary: `<unk> <s> </s> <pad>`, the 256 byte pieces, then words (with the
/// word mark) and sub-word pieces (without).
pub fn tiny_vocabulary() -> SentencePieceModel {
    let special = |text: &str, kind| Piece {
        text: text.into(),
        score: 0.0,
        kind,
    };
    let mut pieces = vec![
        special("<unk>", PieceKind::Unknown),
        special("<s>", PieceKind::Control),
        special("</s>", PieceKind::Control),
        special("<pad>", PieceKind::Control),
    ];
    pieces.extend((0..=255u8).map(|b| special(&format!("<0x{b:02X}>"), PieceKind::Byte(b))));
    let mark = super::spm::WORD_MARK;
    let words = WORDS.iter().map(|w| format!("{mark}{w}"));
    let subwords = SUFFIXES.iter().map(|s| s.to_string());
    for (rank, text) in words
        .chain(subwords)
        .chain(std::iter::once(mark.to_string()))
        .enumerate()
    {
        pieces.push(Piece {
            text,
            score: -(rank as f32) / 10.0,
            kind: PieceKind::Normal,
        });
    }
    SentencePieceModel::new(pieces)
}

/// What `write_tiny_checkpoint` wrote.
#[derive(Debug, Clone)]
pub struct TinyReport {
    /// Each file and its size in bytes.
    pub files: Vec<(PathBuf, u64)>,
    pub lm_tensors: usize,
    pub lm_parameters: usize,
    pub mimi_tensors: usize,
    pub mimi_parameters: usize,
    pub text_vocab: usize,
}

/// Write a random-weight tiny Moshi into `dir` (created if needed), deterministically.
/// With `q8` the LM goes to `model.q8.gguf` (8-bit, as Kyutai's `-candle-q8` releases)
/// instead of `model.safetensors`.
pub fn write_tiny_checkpoint(dir: &Path, seed: u64, q8: bool) -> Result<TinyReport, VoiceError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| load_error(dir, format!("cannot create the directory: {e}")))?;
    let vocab = tiny_vocabulary();
    let arch = tiny_architecture(vocab.len()).map_err(|e| load_error(dir, e))?;
    let device = Device::Cpu;

    let mimi_weights = random_mimi(&arch.mimi, seed, &dir.join(loader::MIMI_FILE))?;
    let lm_weights = RandomWeights::new(seed.wrapping_add(1));
    LmModel::new(
        &arch.lm,
        MaybeQuantizedVarBuilder::Real(lm_weights.var_builder(DType::F32, &device)),
    )
    .map_err(|e| {
        load_error(
            &dir.join(loader::LM_SAFETENSORS),
            format!("cannot build the tiny LM: {e}"),
        )
    })?;

    // Random text logits would be nearly uniform over the vocabulary, and with 256 of its
    // pieces single bytes the monologue would be mostly stray bytes. Scaling the rows of the
    // text head (words x3, bytes x0.3) keeps the weights random but lets the sampler's top-k
    // favour words, as a trained model's would.
    let row_scale: Vec<f32> = vocab
        .pieces()
        .iter()
        .map(|p| match p.kind {
            PieceKind::Normal => 3.0,
            PieceKind::Byte(_) => 0.3,
            _ => 1.0,
        })
        .collect();
    lm_weights
        .scale_rows("text_linear.weight", &row_scale)
        .map_err(|e| {
            load_error(
                &dir.join(loader::LM_SAFETENSORS),
                format!("cannot shape the tiny text head: {e}"),
            )
        })?;

    let mut written = Written::new(dir);
    let (lm_tensors, lm_parameters) = lm_weights.counts();
    let (mimi_tensors, mimi_parameters) = mimi_weights.counts();
    if q8 {
        written.file(
            loader::LM_GGUF,
            lm_weights.save_q8(&dir.join(loader::LM_GGUF)),
        )?;
    } else {
        written.file(
            loader::LM_SAFETENSORS,
            lm_weights.save(&dir.join(loader::LM_SAFETENSORS)),
        )?;
    }
    written.file(
        loader::MIMI_FILE,
        mimi_weights.save(&dir.join(loader::MIMI_FILE)),
    )?;
    written.bytes(loader::TOKENIZER_FILE, &vocab.to_bytes())?;
    written.json(loader::CONFIG_FILE, &config_json(&arch))?;
    Ok(TinyReport {
        files: written.into_files(),
        lm_tensors,
        lm_parameters,
        mimi_tensors,
        mimi_parameters,
        text_vocab: vocab.len(),
    })
}

/// Random Mimi weights of `config`'s sizes (made as the model asks for them), to be saved
/// as `path`; an error names that file.
pub(super) fn random_mimi(
    config: &loader::MimiConfig,
    seed: u64,
    path: &Path,
) -> Result<RandomWeights, VoiceError> {
    let weights = RandomWeights::new(seed);
    Mimi::new(
        config.to_moshi(),
        weights.var_builder(DType::F32, &Device::Cpu),
    )
    .map_err(|e| load_error(path, format!("cannot build the tiny Mimi: {e}")))?;
    Ok(weights)
}

/// Files written into a checkpoint directory, with their sizes; a file that could not be
/// written is an error naming it.
#[derive(Debug)]
pub(super) struct Written {
    dir: PathBuf,
    files: Vec<(PathBuf, u64)>,
}

impl Written {
    pub(super) fn new(dir: &Path) -> Written {
        Written {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        }
    }

    /// `name` in the directory, as written by `result`.
    pub(super) fn file(
        &mut self,
        name: &str,
        result: Result<(), String>,
    ) -> Result<(), VoiceError> {
        let path = self.dir.join(name);
        result.map_err(|e| load_error(&path, format!("cannot write: {e}")))?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.files.push((path, size));
        Ok(())
    }

    /// Write `bytes` as `name`.
    pub(super) fn bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), VoiceError> {
        let result = std::fs::write(self.dir.join(name), bytes).map_err(|e| e.to_string());
        self.file(name, result)
    }

    /// Write `value` as `name`, pretty JSON with a final newline.
    pub(super) fn json(&mut self, name: &str, value: &serde_json::Value) -> Result<(), VoiceError> {
        let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string());
        match text {
            Ok(text) => self.bytes(name, (text + "\n").as_bytes()),
            Err(e) => self.file(name, Err(e)),
        }
    }

    pub(super) fn into_files(self) -> Vec<(PathBuf, u64)> {
        self.files
    }
}

/// A candle weight source that invents every tensor asked for, deterministically from its
/// seed and the order of requests, and remembers it (the same name gives the same tensor).
///
/// Values: norm gains and codebook usage counts are 1 (a codebook entry is then its
/// `embedding_sum` row), biases 0, layer scales 0.01, and everything else is roughly normal
/// with standard deviation `1/sqrt(fan_in)` (at most 0.5), so activations neither vanish nor
/// explode through the layers. (Zeros make Mimi silent; candle's VarMap initialisation
/// gives NaN in Mimi's weight-normed convolutions.)
///
/// In [`RandomWeights::shapes_only`] mode it hands out free zero tensors (one value
/// broadcast) and only notes names and shapes, so a 7B model can be described without
/// memory and its weights made one tensor at a time (see [`RandomWeights::save_q8`]).
#[derive(Clone)]
pub struct RandomWeights {
    inner: Arc<Mutex<Made>>,
}

struct Made {
    rng: u64,
    shapes_only: bool,
    tensors: HashMap<String, Tensor>,
    /// Every name asked for, in order, with its shape.
    shapes: Vec<(String, Shape)>,
}

type Poisoned<T> = std::sync::PoisonError<T>;

fn poisoned<T>(_: Poisoned<T>) -> String {
    "the weight recorder was poisoned".to_string()
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        Self::with_mode(seed, false)
    }

    /// Note names and shapes only; the values are made when saving.
    pub fn shapes_only(seed: u64) -> Self {
        Self::with_mode(seed, true)
    }

    fn with_mode(seed: u64, shapes_only: bool) -> Self {
        let made = Made {
            rng: seed,
            shapes_only,
            tensors: HashMap::new(),
            shapes: Vec::new(),
        };
        RandomWeights {
            inner: Arc::new(Mutex::new(made)),
        }
    }

    /// A var builder drawing from these weights, making them in `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Every tensor asked for, in order, with its shape.
    pub fn shapes(&self) -> Vec<(String, Shape)> {
        match self.inner.lock() {
            Ok(m) => m.shapes.clone(),
            Err(_) => Vec::new(),
        }
    }

    /// How many tensors were asked for, and how many numbers they hold.
    pub fn counts(&self) -> (usize, usize) {
        match self.inner.lock() {
            Ok(m) => (
                m.shapes.len(),
                m.shapes.iter().map(|(_, s)| s.elem_count()).sum(),
            ),
            Err(_) => (0, 0),
        }
    }

    /// Save every tensor as gguf: matrices whose rows split into 32-value blocks quantized
    /// to 8 bits (Q8_0), everything else (norm gains, odd-sized tables) in f32.
    pub fn save_q8(&self, path: &Path) -> Result<(), String> {
        use moshi::candle::quantized::{GgmlDType, QTensor, gguf_file};
        let mut made = self.inner.lock().map_err(poisoned)?;
        let made = &mut *made;
        let mut quantized = Vec::with_capacity(made.shapes.len());
        for (name, shape) in &made.shapes {
            let fresh;
            let t = match made.tensors.get(name) {
                Some(t) => t,
                None => {
                    fresh = make(&mut made.rng, name, shape).map_err(|e| format!("{name}: {e}"))?;
                    &fresh
                }
            };
            let blocks = t.rank() >= 2 && t.dims().last().is_some_and(|d| d % 32 == 0);
            let kind = if blocks {
                GgmlDType::Q8_0
            } else {
                GgmlDType::F32
            };
            let q = QTensor::quantize(t, kind).map_err(|e| format!("{name}: {e}"))?;
            quantized.push((name.as_str(), q));
        }
        let tensors: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, q)| (*n, q)).collect();
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| e.to_string())?);
        gguf_file::write(&mut file, &[], &tensors).map_err(|e| e.to_string())?;
        std::io::Write::flush(&mut file).map_err(|e| e.to_string())
    }

    /// Multiply each row of the 2-d tensor `name` by its factor.
    pub fn scale_rows(&self, name: &str, factors: &[f32]) -> Result<(), String> {
        let mut made = self.inner.lock().map_err(poisoned)?;
        let t = made
            .tensors
            .get(name)
            .ok_or_else(|| format!("no tensor {name}"))?;
        let rows = t.dim(0).map_err(|e| e.to_string())?;
        if rows != factors.len() {
            return Err(format!("{name} has {rows} rows, not {}", factors.len()));
        }
        let f =
            Tensor::from_slice(factors, (rows, 1), t.device()).and_then(|f| f.to_dtype(t.dtype()));
        let scaled = f
            .and_then(|f| t.broadcast_mul(&f))
            .map_err(|e| e.to_string())?;
        made.tensors.insert(name.to_string(), scaled);
        Ok(())
    }

    /// Save every tensor made so far under its name, in safetensors format.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let made = self.inner.lock().map_err(poisoned)?;
        if made.shapes_only {
            return Err("shapes-only weights have no values to save as safetensors".into());
        }
        moshi::candle::safetensors::save(&made.tensors, path).map_err(|e| e.to_string())
    }
}

/// A tensor's values by the rules above, in f32 on the CPU.
fn make(rng: &mut u64, name: &str, shape: &Shape) -> moshi::candle::Result<Tensor> {
    match init_for(name) {
        Some(v) => Tensor::full(v, shape, &Device::Cpu),
        None => {
            let fan_in: usize = shape.dims().iter().skip(1).product();
            let std = (1.0 / (fan_in.max(1) as f32).sqrt()).min(0.5);
            Tensor::from_vec(normals(rng, shape.elem_count(), std), shape, &Device::Cpu)
        }
    }
}

/// One 64-bit step of SplitMix64.
pub(super) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` roughly normal numbers with standard deviation `std`: the sum of four 16-bit uniforms
/// from one random word (Irwin-Hall), centred and scaled. Cheap enough for billions.
pub(super) fn normals(state: &mut u64, n: usize, std: f32) -> Vec<f32> {
    // The sum of 4 uniforms on 0..1 has mean 2 and variance 4/12.
    let scale = std / (4.0f32 / 12.0).sqrt() / 65_536.0;
    (0..n)
        .map(|_| {
            let r = splitmix(state);
            let sum = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
            (sum as f32 - 2.0 * 65_536.0) * scale
        })
        .collect()
}

/// The value rule for a tensor, from the last part of its name.
pub(super) fn init_for(name: &str) -> Option<f32> {
    let last = name.rsplit('.').next().unwrap_or(name);
    let parent = name.rsplit('.').nth(1).unwrap_or("");
    match last {
        "alpha" | "cluster_usage" | "_initialized" => Some(1.0),
        "weight" if parent.contains("norm") => Some(1.0),
        "bias" => Some(0.0),
        "scale" => Some(0.01),
        _ => None,
    }
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> moshi::candle::Result<Tensor> {
        let mut made = self
            .inner
            .lock()
            .map_err(|e| moshi::candle::Error::Msg(poisoned(e)))?;
        if let Some((_, known)) = made.shapes.iter().find(|(n, _)| n == name) {
            if known != &shape {
                moshi::candle::bail!("{name} asked for as {shape:?} after {known:?}");
            }
        } else {
            made.shapes.push((name.to_string(), shape.clone()));
        }
        if made.shapes_only {
            return Tensor::zeros((), dtype, dev)?.broadcast_as(shape);
        }
        if let Some(t) = made.tensors.get(name) {
            return t.to_dtype(dtype)?.to_device(dev);
        }
        let tensor = make(&mut made.rng, name, &shape)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        made.tensors.insert(name.to_string(), tensor.clone());
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> moshi::candle::Result<Tensor> {
        let made = self
            .inner
            .lock()
            .map_err(|_| moshi::candle::Error::Msg("weight recorder poisoned".into()))?;
        match made.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => moshi::candle::bail!("{name} has no shape yet, so it cannot be made up"),
        }
    }

    /// Real checkpoints store plain `weight`s (weight norm folded in, layer norms as
    /// `weight`/`bias`); saying so makes the moshi crate ask for exactly those names.
    fn contains_tensor(&self, name: &str) -> bool {
        name.rsplit('.').next() == Some("weight")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_vocabulary_has_a_few_hundred_pieces_with_the_special_ids_first() {
        let v = tiny_vocabulary();
        assert!((300..500).contains(&v.len()), "{}", v.len());
        assert_eq!(v.piece(0).unwrap().kind, PieceKind::Unknown);
        assert_eq!(v.piece(3).unwrap().text, "<pad>");
        assert_eq!(v.piece(4 + 0xE9).unwrap().kind, PieceKind::Byte(0xE9));
        assert_eq!(SentencePieceModel::parse(&v.to_bytes()).unwrap(), v);
    }

    #[test]
    fn random_weights_are_deterministic_and_roughly_normal() {
        let a = normals(&mut 7, 100_000, 0.02);
        let b = normals(&mut 7, 100_000, 0.02);
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let std = (a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
        assert!(mean.abs() < 1e-3, "{mean}");
        assert!((std - 0.02).abs() < 1e-3, "{std}");
    }

    #[test]
    fn the_tiny_architecture_passes_the_loader_checks() {
        let arch = tiny_architecture(tiny_vocabulary().len()).unwrap();
        assert_eq!(arch.lm.transformer.d_model, 64);
        assert_eq!(arch.lm.transformer.num_layers, 2);
        assert_eq!(arch.mimi.ratios, [8, 6, 5, 4]);
        // The written config.json reads back into the same architecture.
        let text = config_json(&arch).to_string();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(loader::CONFIG_FILE), text).unwrap();
        let back = Architecture::load(dir.path()).unwrap();
        assert_eq!(back.mimi, arch.mimi);
        assert_eq!(format!("{:?}", back.lm), format!("{:?}", arch.lm));
    }
}
