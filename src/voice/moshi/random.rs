//! `creature moshi random --size v0.1|stt-1b|tts-1.6b DIR`: a random-weight Moshi, STT or
//! TTS of the real size, in Kyutai's layout, so the real-size loops can run end to end on a
//! GPU without the published weights (nothing here downloads anything).
//!
//! A 7.7 B-parameter LM is 15 GB in bf16, more than this writer may hold. So the models
//! are first *described* (built on [`RandomWeights::shapes_only`], which hands out free
//! broadcast zeros and notes every tensor's name and shape), then written one tensor at a
//! time, straight into a safetensors file: the header is known from the shapes alone, and
//! each tensor's values are made in chunks on every core and written in order. Memory stays
//! at a few megabytes a core. The values follow the tiny checkpoint's rules (norm gains 1,
//! biases 0, everything else roughly normal with std `1/sqrt(fan_in)`), and each chunk has
//! its own seed, so the files are the same whatever the number of cores.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use creature_actors::VoiceError;
use moshi::candle::{DType, Device, Shape};
use moshi::lm::{self, LmModel};
use moshi::mimi::Mimi;
use moshi::nn::MaybeQuantizedVarBuilder;
use serde_json::json;

use super::loader::{self, Architecture, MimiConfig, load_error};
use super::spm::{Piece, PieceKind, SentencePieceModel};
use super::stt::{STT_LM_FILE, STT_MIMI_FILE, STT_TOKENIZER_FILE, SttConfig, SttTiming};
use super::tiny::{self, RandomWeights};
use super::tts::{self, TtsConfig};

/// Which architecture to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RandomSize {
    /// The tiny test architecture (as `creature moshi tiny`), through this writer.
    Tiny,
    /// The published Moshi v0.1 sizes (moshiko/moshika: a 7.7 B LM, the full Mimi).
    #[value(name = "v0.1")]
    V0_1,
    /// Kyutai's `stt-1b-en_fr` sizes: a 1 B LM (width 2048, 16 layers, 16 heads) over 32
    /// codebooks with the four voice-activity heads, Mimi with 32 codebooks.
    #[value(name = "stt-1b")]
    Stt1b,
    /// Kyutai's `tts-1.6b-en_fr` sizes as far as moshi 0.6.4 runs them: the published
    /// model shares depformer weights between codebooks (a schedule of 11 weight sets for
    /// 32 codebooks), demultiplexes a second text stream and adds two LUT conditioners, none
    /// of which that crate has. This writes the closest model it runs: the same widths,
    /// depths, cross-attention and speaker conditioner, with a depformer slice of its own
    /// for each of the 32 codebooks (so about 2.7 B parameters instead of 1.6 B).
    #[value(name = "tts-1.6b")]
    Tts1_6b,
}

/// Values made per chunk: 1 Mi numbers (2-4 MB) per core at a time.
const CHUNK: usize = 1 << 20;

/// What [`write_random_checkpoint`] wrote.
#[derive(Debug, Clone)]
pub struct RandomReport {
    pub files: Vec<(PathBuf, u64)>,
    pub lm_tensors: usize,
    pub lm_parameters: usize,
    pub mimi_tensors: usize,
    pub mimi_parameters: usize,
    pub text_vocab: usize,
    pub took: Duration,
}

/// Progress of a long write: bytes of tensor data written so far, of the total.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub written: u64,
    pub total: u64,
}

/// A file's tensors by name and shape, in the order written.
type Tensors = Vec<(String, Shape)>;

/// What one size writes: the two models, the vocabulary, and the files' names.
struct Plan {
    lm: lm::Config,
    mimi: MimiConfig,
    vocab: SentencePieceModel,
    lm_file: String,
    mimi_file: String,
    tokenizer_file: String,
    /// `config.json`; `None` where the loader's defaults are the sizes (v0.1), so a file
    /// left from another size is removed.
    config: Option<serde_json::Value>,
    /// A TTS's LM file also holds the speaker conditioner, outside `LmModel`.
    speaker: Option<TtsConfig>,
}

impl Plan {
    fn new(size: RandomSize) -> Result<Plan, String> {
        let moshi = |arch: Architecture, vocab: SentencePieceModel, config| Plan {
            lm: arch.lm,
            mimi: arch.mimi,
            vocab,
            lm_file: loader::LM_SAFETENSORS.into(),
            mimi_file: loader::MIMI_FILE.into(),
            tokenizer_file: loader::TOKENIZER_FILE.into(),
            config,
            speaker: None,
        };
        Ok(match size {
            RandomSize::Tiny => {
                let vocab = tiny::tiny_vocabulary();
                let arch = tiny::tiny_architecture(vocab.len())?;
                let config = tiny::config_json(&arch);
                moshi(arch, vocab, Some(config))
            }
            RandomSize::V0_1 => {
                let arch = Architecture::v0_1();
                let vocab = filled_vocabulary(arch.lm.text_out_vocab_size);
                moshi(arch, vocab, None)
            }
            RandomSize::Stt1b => {
                let stt = stt_1b();
                // Kyutai's file also says what the model is and that it has no depformer.
                let mut config = serde_json::to_value(&stt).unwrap_or_default();
                if let Some(keys) = config.as_object_mut() {
                    keys.insert("dep_q".into(), json!(0));
                    keys.insert("delays".into(), json!([0]));
                    keys.insert("model_type".into(), json!("stt"));
                }
                Plan {
                    lm: stt.lm(),
                    mimi: stt.mimi(),
                    vocab: filled_vocabulary(stt.text_card),
                    lm_file: STT_LM_FILE.into(),
                    mimi_file: stt.mimi_name.clone(),
                    tokenizer_file: stt.tokenizer_name.clone(),
                    config: Some(config),
                    speaker: None,
                }
            }
            RandomSize::Tts1_6b => {
                let config = tts::runnable_1_6b();
                config.check()?;
                Plan {
                    lm: config.lm(),
                    mimi: config.mimi(),
                    vocab: filled_vocabulary(config.text_card),
                    lm_file: config.moshi_name.clone(),
                    mimi_file: config.mimi_name.clone(),
                    tokenizer_file: config.tokenizer_name.clone(),
                    config: Some(config.to_json()),
                    speaker: Some(config),
                }
            }
        })
    }

    /// Every tensor of the two files, by name and shape, in the order they are asked for.
    fn describe(&self, seed: u64) -> Result<(Tensors, Tensors), String> {
        let weights = RandomWeights::shapes_only(seed);
        Mimi::new(
            self.mimi.to_moshi(),
            weights.var_builder(DType::F32, &Device::Cpu),
        )
        .map_err(|e| format!("cannot describe Mimi: {e}"))?;
        let mimi = weights.shapes();
        let weights = RandomWeights::shapes_only(seed.wrapping_add(1));
        let vb = weights.var_builder(DType::F32, &Device::Cpu);
        LmModel::new(&self.lm, MaybeQuantizedVarBuilder::Real(vb.clone()))
            .map_err(|e| format!("cannot describe the LM: {e}"))?;
        if let Some(config) = &self.speaker {
            tts::describe_speaker(config, &vb)?;
        }
        Ok((mimi, weights.shapes()))
    }
}

/// Kyutai's `stt-1b-en_fr` sizes, in the STT loader's config.
fn stt_1b() -> SttConfig {
    SttConfig {
        mimi_name: STT_MIMI_FILE.into(),
        tokenizer_name: STT_TOKENIZER_FILE.into(),
        card: 2048,
        text_card: 8000,
        dim: 2048,
        n_q: 32,
        context: 750,
        max_period: 100_000.0,
        num_heads: 16,
        num_layers: 16,
        causal: true,
        stt_config: SttTiming {
            audio_delay_seconds: 0.5,
            audio_silence_prefix_seconds: 0.0,
        },
        extra_heads_num_heads: Some(4),
        extra_heads_dim: Some(6),
        mimi: None,
    }
}

/// Write a random checkpoint of `size` into `dir` (created if needed), in the layout its
/// loader reads (Moshi's, the STT's or the TTS's): the LM in bf16, Mimi in f32, a
/// SentencePiece vocabulary of the LM's size, and `config.json` where the size needs one.
/// `threads` cores make the values (0: all of them).
pub fn write_random_checkpoint(
    dir: &Path,
    size: RandomSize,
    seed: u64,
    threads: usize,
    mut progress: impl FnMut(Progress),
) -> Result<RandomReport, VoiceError> {
    let started = Instant::now();
    std::fs::create_dir_all(dir)
        .map_err(|e| load_error(dir, format!("cannot create the directory: {e}")))?;
    let plan = Plan::new(size).map_err(|e| load_error(dir, e))?;
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };

    // Describe both models: names and shapes, no values.
    let mimi_path = dir.join(&plan.mimi_file);
    let lm_path = dir.join(&plan.lm_file);
    let (mimi_shapes, lm_shapes) = plan.describe(seed).map_err(|e| load_error(&lm_path, e))?;

    let bytes = |shapes: &[(String, Shape)], width: u64| -> u64 {
        shapes
            .iter()
            .map(|(_, s)| s.elem_count() as u64 * width)
            .sum()
    };
    let total = bytes(&mimi_shapes, 4) + bytes(&lm_shapes, 2);
    let mut done = 0u64;
    let mut report = |n: u64| {
        done += n;
        progress(Progress {
            written: done,
            total,
        });
    };
    let mut files = Vec::new();
    let mut written = |path: PathBuf| {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        files.push((path, size));
    };
    write_safetensors(
        &mimi_path,
        &mimi_shapes,
        Stored::F32,
        seed,
        threads,
        &mut report,
    )
    .map_err(|e| load_error(&mimi_path, format!("cannot write: {e}")))?;
    written(mimi_path);
    write_safetensors(
        &lm_path,
        &lm_shapes,
        Stored::Bf16,
        seed.wrapping_add(1),
        threads,
        &mut report,
    )
    .map_err(|e| load_error(&lm_path, format!("cannot write: {e}")))?;
    written(lm_path);
    let tokenizer = dir.join(&plan.tokenizer_file);
    std::fs::write(&tokenizer, plan.vocab.to_bytes())
        .map_err(|e| load_error(&tokenizer, format!("cannot write: {e}")))?;
    written(tokenizer);
    let config = dir.join(loader::CONFIG_FILE);
    match &plan.config {
        Some(json) => {
            let text = serde_json::to_string_pretty(json)
                .map_err(|e| load_error(&config, e.to_string()))?;
            std::fs::write(&config, text + "\n")
                .map_err(|e| load_error(&config, format!("cannot write: {e}")))?;
            written(config);
        }
        // The loader's default sizes are v0.1's; a config left from another size would
        // override them.
        None => match std::fs::remove_file(&config) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(load_error(&config, format!("cannot remove: {e}"))),
        },
    }
    Ok(RandomReport {
        files,
        lm_tensors: lm_shapes.len(),
        lm_parameters: lm_shapes.iter().map(|(_, s)| s.elem_count()).sum(),
        mimi_tensors: mimi_shapes.len(),
        mimi_parameters: mimi_shapes.iter().map(|(_, s)| s.elem_count()).sum(),
        text_vocab: plan.vocab.len(),
        took: started.elapsed(),
    })
}

/// The tiny vocabulary, filled up to `size` pieces with made-up words (`▁w1234`), so the
/// tokenizer matches an LM that predicts `size` text tokens.
fn filled_vocabulary(size: usize) -> SentencePieceModel {
    let mut pieces = tiny::tiny_vocabulary().pieces().to_vec();
    let mark = super::spm::WORD_MARK;
    let mut n = 0;
    while pieces.len() < size {
        pieces.push(Piece {
            text: format!("{mark}w{n}"),
            score: -100.0 - n as f32 / 1000.0,
            kind: PieceKind::Normal,
        });
        n += 1;
    }
    pieces.truncate(size);
    SentencePieceModel::new(pieces)
}

/// How a file stores its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    F32,
    Bf16,
}

impl Stored {
    fn width(self) -> usize {
        match self {
            Stored::F32 => 4,
            Stored::Bf16 => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stored::F32 => "F32",
            Stored::Bf16 => "BF16",
        }
    }

    fn push(self, out: &mut Vec<u8>, v: f32) {
        match self {
            Stored::F32 => out.extend_from_slice(&v.to_le_bytes()),
            Stored::Bf16 => out.extend_from_slice(&bf16_bits(v).to_le_bytes()),
        }
    }
}

/// `v` rounded to bfloat16 (round to nearest, ties to even), as its bits.
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// Write `shapes` as a safetensors file, values made chunk by chunk on `threads` cores;
/// `report` hears the bytes of each chunk written.
fn write_safetensors(
    path: &Path,
    shapes: &[(String, Shape)],
    stored: Stored,
    seed: u64,
    threads: usize,
    report: &mut dyn FnMut(u64),
) -> Result<(), String> {
    // The header: each tensor's dtype, shape and byte range, in the order written.
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in shapes {
        let len = (shape.elem_count() * stored.width()) as u64;
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": stored.name(),
                "shape": shape.dims(),
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut header =
        serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| e.to_string())?;
    // Tensor data starts 8-byte aligned, as the format recommends.
    while (header.len() + 8) % 8 != 0 {
        header.push(b' ');
    }
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut out = BufWriter::with_capacity(8 << 20, file);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&header))
        .map_err(|e| e.to_string())?;

    for (index, (name, shape)) in shapes.iter().enumerate() {
        let n = shape.elem_count();
        let tensor_seed =
            tiny::splitmix(&mut (seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407)));
        let fixed = tiny::init_for(name);
        let fan_in: usize = shape.dims().iter().skip(1).product();
        let std = (1.0 / (fan_in.max(1) as f32).sqrt()).min(0.5);
        let chunks = n.div_ceil(CHUNK);
        // A wave of chunks at a time, one per core, written in order.
        let mut next = 0;
        while next < chunks {
            let wave: Vec<usize> = (next..chunks.min(next + threads)).collect();
            next += wave.len();
            let made: Vec<Vec<u8>> = std::thread::scope(|s| {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|&c| {
                        s.spawn(move || {
                            let start = c * CHUNK;
                            let len = CHUNK.min(n - start);
                            let mut bytes = Vec::with_capacity(len * stored.width());
                            match fixed {
                                Some(v) => (0..len).for_each(|_| stored.push(&mut bytes, v)),
                                None => {
                                    let mut rng = tensor_seed
                                        ^ (c as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25);
                                    for v in tiny::normals(&mut rng, len, std) {
                                        stored.push(&mut bytes, v);
                                    }
                                }
                            }
                            bytes
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            });
            for bytes in made {
                out.write_all(&bytes).map_err(|e| e.to_string())?;
                report(bytes.len() as u64);
            }
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    let file = out.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())?;
    let want = 8 + header.len() as u64 + offset;
    let got = file.metadata().map_err(|e| e.to_string())?.len();
    if got != want {
        return Err(format!("wrote {got} bytes, expected {want}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::moshi::{MoshiConfig, MoshiVoice};
    use creature_actors::ports::VoiceModel;
    use creature_actors::{FRAME_SAMPLES, audio::rms};

    #[test]
    fn bfloat16_rounds_to_nearest() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        assert_eq!(bf16_bits(-2.0), 0xC000);
        assert_eq!(bf16_bits(0.0), 0);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
        // Just above halfway rounds up.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3F81);
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
    }

    #[test]
    fn the_vocabulary_is_filled_to_the_lm_size() {
        let v = filled_vocabulary(32_000);
        assert_eq!(v.len(), 32_000);
        assert_eq!(
            SentencePieceModel::parse(&v.to_bytes()).unwrap().len(),
            32_000
        );
    }

    #[test]
    fn the_streamed_checkpoint_loads_through_the_real_loader_and_talks() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        let report =
            write_random_checkpoint(dir.path(), RandomSize::Tiny, 7, 3, |p| seen.push(p)).unwrap();
        let last = seen.last().unwrap();
        assert_eq!(last.written, last.total, "progress reaches the total");
        assert!(report.lm_parameters > 100_000, "{report:?}");
        assert_eq!(report.files.len(), 4, "{report:?}");
        // The LM is stored in bf16: two bytes a parameter, plus the header.
        let lm = &report.files[1];
        assert!(lm.0.ends_with(loader::LM_SAFETENSORS));
        assert!(
            lm.1 >= 2 * report.lm_parameters as u64
                && lm.1 < 2 * report.lm_parameters as u64 + 65_536
        );

        let settings = MoshiConfig {
            dir: Some(dir.path().to_path_buf()),
            ..MoshiConfig::default()
        };
        let mut voice = MoshiVoice::load(&settings).unwrap();
        let mut loud = 0;
        for i in 0..20 {
            let user: Vec<f32> = (0..FRAME_SAMPLES)
                .map(|n| 0.2 * ((i * FRAME_SAMPLES + n) as f32 * 0.05).sin())
                .collect();
            let out = voice.step(&user).unwrap();
            assert_eq!(out.agent.len(), FRAME_SAMPLES);
            assert!(out.agent.iter().all(|s| s.is_finite()));
            if rms(&out.agent) > 1e-4 {
                loud += 1;
            }
        }
        assert!(
            loud > 10,
            "random weights are not silent: {loud} loud frames"
        );
    }

    #[test]
    fn the_files_do_not_depend_on_the_number_of_cores() {
        let one = tempfile::tempdir().unwrap();
        let many = tempfile::tempdir().unwrap();
        write_random_checkpoint(one.path(), RandomSize::Tiny, 3, 1, |_| {}).unwrap();
        write_random_checkpoint(many.path(), RandomSize::Tiny, 3, 4, |_| {}).unwrap();
        for file in [loader::LM_SAFETENSORS, loader::MIMI_FILE] {
            let a = std::fs::read(one.path().join(file)).unwrap();
            let b = std::fs::read(many.path().join(file)).unwrap();
            assert!(a == b, "{file} differs between 1 and 4 cores");
        }
    }

    #[test]
    fn the_v0_1_description_has_the_published_size() {
        // Only described (no values made): the 7.7 B parameters of Moshi v0.1.
        let arch = Architecture::v0_1();
        let weights = RandomWeights::shapes_only(1);
        LmModel::new(
            &arch.lm,
            MaybeQuantizedVarBuilder::Real(weights.var_builder(DType::F32, &Device::Cpu)),
        )
        .unwrap();
        let params: usize = weights.shapes().iter().map(|(_, s)| s.elem_count()).sum();
        assert!(
            (7_000_000_000..8_500_000_000).contains(&params),
            "{params} parameters"
        );
    }

    fn parameters(shapes: &[(String, Shape)]) -> usize {
        shapes.iter().map(|(_, s)| s.elem_count()).sum()
    }

    #[test]
    fn the_stt_1b_description_has_the_published_size_and_reads_back() {
        let plan = Plan::new(RandomSize::Stt1b).unwrap();
        let (mimi, lm) = plan.describe(1).unwrap();
        // About 1 B parameters (Kyutai's "1b"), the four voice-activity heads among them.
        let params = parameters(&lm);
        assert!((900_000_000..1_200_000_000).contains(&params), "{params}");
        assert!(
            lm.iter()
                .any(|(n, s)| n == "extra_heads.3.weight" && s.dims() == [6, 2048])
        );
        // Mimi with its 32 codebooks (the first, and 31 more).
        assert!(
            mimi.iter()
                .any(|(n, _)| n.contains("rvq_rest.vq.layers.30."))
        );
        assert_eq!(plan.vocab.len(), 8000);
        // The config.json written reads back as the same sizes: the loader asks for
        // exactly the tensors described.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(loader::CONFIG_FILE),
            plan.config.as_ref().unwrap().to_string(),
        )
        .unwrap();
        let config = SttConfig::load(dir.path()).unwrap();
        assert_eq!(config, stt_1b());
        assert_eq!(plan.lm_file, STT_LM_FILE);
        assert_eq!(plan.mimi_file, config.mimi_name);
        assert_eq!(plan.tokenizer_file, config.tokenizer_name);
    }

    #[test]
    fn the_tts_1_6b_description_runs_on_moshi_0_6_4_and_reads_back() {
        let plan = Plan::new(RandomSize::Tts1_6b).unwrap();
        let (mimi, lm) = plan.describe(1).unwrap();
        let params = parameters(&lm);
        // The published widths with an unshared depformer: more than 1.6 B (see RandomSize).
        assert!((2_000_000_000..2_800_000_000).contains(&params), "{params}");
        let names: Vec<&str> = lm.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&tts::SPEAKER_PADDING));
        assert!(names.iter().any(|n| n.starts_with("depformer.31.")));
        assert!(names.iter().any(|n| n.contains("cross_attention")));
        assert!(
            mimi.iter()
                .any(|(n, _)| n.contains("rvq_rest.vq.layers.30."))
        );
        // The config.json written passes the TTS loader's checks and describes the same
        // tensors, so `load_tts` reads the file.
        let config: TtsConfig = serde_json::from_value(plan.config.clone().unwrap()).unwrap();
        config.check().unwrap();
        assert_eq!(config.text_card, plan.vocab.len());
        assert_eq!(plan.lm_file, tts::TTS_LM_FILE);
        let weights = RandomWeights::shapes_only(2);
        let vb = weights.var_builder(DType::F32, &Device::Cpu);
        LmModel::new(&config.lm(), MaybeQuantizedVarBuilder::Real(vb.clone())).unwrap();
        tts::describe_speaker(&config, &vb).unwrap();
        assert_eq!(weights.shapes(), lm);
    }

    /// The real sizes end to end: GBs on disk and in memory, so only by hand
    /// (`cargo test -p creature --lib real_sizes -- --ignored`).
    #[test]
    #[ignore = "writes 2 GB and 5.5 GB of weights"]
    fn the_real_sizes_load_through_their_loaders() {
        let dir = tempfile::tempdir().unwrap();
        let report = write_random_checkpoint(dir.path(), RandomSize::Stt1b, 1, 0, |_| {}).unwrap();
        eprintln!("stt-1b: {report:?}");
        let stt =
            crate::voice::moshi::stt::Stt::load(dir.path(), &Device::Cpu, DType::BF16).unwrap();
        assert_eq!(stt.config(), &stt_1b());
        drop(stt);
        let dir = tempfile::tempdir().unwrap();
        let report =
            write_random_checkpoint(dir.path(), RandomSize::Tts1_6b, 1, 0, |_| {}).unwrap();
        eprintln!("tts-1.6b: {report:?}");
        let tts = tts::load_tts(dir.path(), None, &Device::Cpu, DType::BF16).unwrap();
        assert!(tts.ca_src.is_some());
        // The same sizes read back (the file also names the layout, as Kyutai's do).
        assert_eq!(
            format!("{:?}", tts.config.lm()),
            format!("{:?}", tts::runnable_1_6b().lm())
        );
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        let err = write_random_checkpoint(&blocker.join("sub"), RandomSize::Tiny, 1, 1, |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("sub"), "{err}");
    }
}
