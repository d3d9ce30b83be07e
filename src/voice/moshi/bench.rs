//! `creature bench mimi` and `creature bench lm`: how long one 80 ms frame of the Moshi
//! path takes on this machine, with random weights (the compute does not depend on their
//! values). Mimi is encode + decode of one frame; the LM is one multistream step (temporal
//! transformer, text sampling, depformer over 8 codebooks). Both print milliseconds per
//! frame and the real-time factor (compute / 80 ms; below 1 keeps up).

use std::time::Instant;

use anyhow::Context;
use moshi::StreamTensor;
use moshi::candle::{DType, Device, Tensor};
use moshi::lm::LmModel;
use moshi::mimi::Mimi;
use moshi::nn::MaybeQuantizedVarBuilder;
use serde::Serialize;

use super::loader::{Architecture, CODEBOOKS};
use super::tiny::{RandomWeights, tiny_architecture, tiny_vocabulary};
use super::{MoshiConfig, MoshiDevice, new_state, open_device};
use creature_actors::FRAME_SAMPLES;

/// Which sizes to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchSize {
    /// The tiny checkpoint's sizes (`creature moshi tiny`).
    Tiny,
    /// The published Moshi v0.1 sizes (moshiko/moshika: a 7B LM, the full Mimi).
    #[value(name = "v0.1", alias = "large", alias = "full")]
    V0_1,
}

/// Number format for the LM benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchDtype {
    F32,
    F16,
    Bf16,
    /// 8-bit weights (Q8_0) in a gguf file, as Kyutai's `-candle-q8` releases.
    Q8,
}

impl BenchDtype {
    fn dtype(self) -> DType {
        match self {
            BenchDtype::F32 | BenchDtype::Q8 => DType::F32,
            BenchDtype::F16 => DType::F16,
            BenchDtype::Bf16 => DType::BF16,
        }
    }

    /// Bytes per weight (Q8_0: 32 weights in 34 bytes).
    fn weight_bytes(self) -> f64 {
        match self {
            BenchDtype::F32 => 4.0,
            BenchDtype::F16 | BenchDtype::Bf16 => 2.0,
            BenchDtype::Q8 => 34.0 / 32.0,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct MimiBenchArgs {
    /// Sizes: `v0.1` (the real Mimi) or `tiny`.
    #[arg(long, value_enum, default_value = "v0.1")]
    pub config: BenchSize,
    /// Frames to time (after 3 warm-up frames).
    #[arg(long, default_value_t = 100)]
    pub frames: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: MoshiDeviceArg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LmBenchArgs {
    /// Sizes: `tiny` or `v0.1` (the 7B LM: 15 GB in f16, 31 GB in f32).
    #[arg(long, value_enum, default_value = "tiny")]
    pub config: BenchSize,
    /// Keep only this many layers of the temporal transformer (same width), to fit memory.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Weights: f32, f16 (CPU and GPU), bf16 (GPU only) or q8 (8-bit gguf, through a
    /// scratch file loaded like a real `model.q8.gguf`).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: BenchDtype,
    /// Where the q8 benchmark writes its temporary gguf file (removed after loading).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub scratch: std::path::PathBuf,
    /// Steps to time (after 3 warm-up steps).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: MoshiDeviceArg,
}

/// `--device` for the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MoshiDeviceArg {
    Cpu,
    Cuda,
    Metal,
}

impl MoshiDeviceArg {
    fn open(self) -> anyhow::Result<Device> {
        let kind = match self {
            MoshiDeviceArg::Cpu => MoshiDevice::Cpu,
            MoshiDeviceArg::Cuda => MoshiDevice::Cuda,
            MoshiDeviceArg::Metal => MoshiDevice::Metal,
        };
        Ok(open_device(kind)?)
    }
}

/// Milliseconds per frame, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct FrameTimes {
    pub frames: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
}

impl FrameTimes {
    fn from_ms(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        FrameTimes {
            frames: ms.len(),
            mean_ms: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            max_ms: at(1.0),
        }
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what:<22} mean {:>9.2} ms  p50 {:>9.2} ms  p90 {:>9.2} ms  max {:>9.2} ms  real-time factor {:.3} (p50 {:.3})",
            self.mean_ms,
            self.p50_ms,
            self.p90_ms,
            self.max_ms,
            self.mean_ms / 80.0,
            self.p50_ms / 80.0
        )
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A test signal: a gliding tone with some noise, so the encoder sees something speech-like.
fn test_frame(frame: usize) -> Vec<f32> {
    (0..FRAME_SAMPLES)
        .map(|i| {
            let t = (frame * FRAME_SAMPLES + i) as f32 / 24_000.0;
            let f = 180.0 + 60.0 * (t * 1.3).sin();
            0.3 * (std::f32::consts::TAU * f * t).sin()
                + 0.01 * ((i * 7919 % 101) as f32 / 50.0 - 1.0)
        })
        .collect()
}

/// `creature bench mimi`.
#[allow(clippy::print_stdout)]
pub fn mimi(args: MimiBenchArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let arch = match args.config {
        BenchSize::V0_1 => Architecture::v0_1(),
        BenchSize::Tiny => {
            tiny_architecture(tiny_vocabulary().len()).map_err(anyhow::Error::msg)?
        }
    };
    let weights = RandomWeights::new(7);
    let mut mimi = Mimi::new(
        arch.mimi.to_moshi(),
        weights.var_builder(DType::F32, &device),
    )
    .context("building Mimi")?;
    let (tensors, params) = weights.counts();
    eprintln!(
        "bench mimi: {:?} sizes, {tensors} tensors, {:.1} M parameters, {} threads",
        args.config,
        params as f64 / 1e6,
        threads()
    );
    let (mut enc, mut dec, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut rms_out = 0.0f64;
    for i in 0..args.frames + 3 {
        let pcm = Tensor::from_vec(test_frame(i), (1, 1, FRAME_SAMPLES), &device)?;
        let t0 = Instant::now();
        let codes = mimi.encode_step(&StreamTensor::from_tensor(pcm), &().into())?;
        let codes = codes
            .as_option()
            .context("Mimi gave no codes for a whole frame")?
            .clone();
        device.synchronize()?;
        let t1 = Instant::now();
        let out = mimi.decode_step(&StreamTensor::from_tensor(codes), &().into())?;
        let out: Vec<f32> = out
            .as_option()
            .context("Mimi decoded nothing")?
            .flatten_all()?
            .to_vec1()?;
        let t2 = Instant::now();
        if i >= 3 {
            enc.push((t1 - t0).as_secs_f64() * 1e3);
            dec.push((t2 - t1).as_secs_f64() * 1e3);
            total.push((t2 - t0).as_secs_f64() * 1e3);
            rms_out += out
                .iter()
                .map(|&s| f64::from(s) * f64::from(s))
                .sum::<f64>()
                / out.len().max(1) as f64;
        }
    }
    println!(
        "Mimi ({:?} sizes, random weights, {} threads, {} frames of 80 ms)",
        args.config,
        threads(),
        args.frames
    );
    println!("{}", FrameTimes::from_ms(enc).line("encode"));
    println!("{}", FrameTimes::from_ms(dec).line("decode"));
    println!("{}", FrameTimes::from_ms(total).line("encode + decode"));
    println!(
        "output rms {:.4}",
        (rms_out / args.frames.max(1) as f64).sqrt()
    );
    Ok(())
}

/// A random-weight LM: made in memory for f32/f16/bf16; for q8 described without memory,
/// made and quantized one tensor at a time into a scratch gguf, and loaded back from it.
fn build_lm(
    arch: &Architecture,
    dtype: BenchDtype,
    device: &Device,
    scratch: &std::path::Path,
) -> anyhow::Result<(LmModel, usize, usize)> {
    if dtype != BenchDtype::Q8 {
        let weights = RandomWeights::new(11);
        let vb = MaybeQuantizedVarBuilder::Real(weights.var_builder(dtype.dtype(), device));
        let model = LmModel::new(&arch.lm, vb).context("building the LM")?;
        let (tensors, params) = weights.counts();
        return Ok((model, tensors, params));
    }
    let weights = RandomWeights::shapes_only(11);
    LmModel::new(
        &arch.lm,
        MaybeQuantizedVarBuilder::Real(weights.var_builder(DType::F32, &Device::Cpu)),
    )
    .context("describing the LM")?;
    let (tensors, params) = weights.counts();
    let path = scratch.join(format!("creature-bench-lm-{}.q8.gguf", std::process::id()));
    eprintln!(
        "bench lm: writing {:.1} GiB of 8-bit weights to {}...",
        params as f64 * 34.0 / 32.0 / (1u64 << 30) as f64,
        path.display()
    );
    let written = weights.save_q8(&path).map_err(anyhow::Error::msg);
    drop(weights);
    let loaded = written.and_then(|()| {
        let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(&path, device)?;
        Ok(LmModel::new(
            &arch.lm,
            MaybeQuantizedVarBuilder::Quantized(vb),
        )?)
    });
    if let Err(e) = std::fs::remove_file(&path) {
        eprintln!("bench lm: cannot remove {}: {e}", path.display());
    }
    Ok((loaded.context("loading the 8-bit LM")?, tensors, params))
}

/// `creature bench lm`.
#[allow(clippy::print_stdout)]
pub fn lm(args: LmBenchArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let mut arch = match args.config {
        BenchSize::V0_1 => Architecture::v0_1(),
        BenchSize::Tiny => {
            tiny_architecture(tiny_vocabulary().len()).map_err(anyhow::Error::msg)?
        }
    };
    if let Some(layers) = args.layers {
        anyhow::ensure!(layers >= 1, "--layers must be at least 1");
        arch.lm.transformer.num_layers = layers;
    }
    let t = &arch.lm.transformer;
    eprintln!(
        "bench lm: {:?} sizes, d_model {}, {} layers, {} heads, dtype {:?}, {} threads; making random weights...",
        args.config,
        t.d_model,
        t.num_layers,
        t.num_heads,
        args.dtype,
        threads()
    );
    let made = Instant::now();
    let (model, tensors, params) = build_lm(&arch, args.dtype, &device, &args.scratch)?;
    let bytes = params as f64 * args.dtype.weight_bytes();
    eprintln!(
        "bench lm: {tensors} tensors, {:.3} B parameters, {:.2} GiB of weights, ready in {:.1} s",
        params as f64 / 1e9,
        bytes / (1u64 << 30) as f64,
        made.elapsed().as_secs_f64()
    );
    let settings = MoshiConfig {
        max_steps: args.steps + 16,
        ..MoshiConfig::default()
    };
    let generation = arch.generation();
    let mut state = new_state(&model, &generation, &settings, 0);
    let mut prev = generation.text_start_token;
    let mut rng = 0x5eed_u64;
    let mut ms = Vec::new();
    for i in 0..args.steps + 3 {
        let user: Vec<u32> = (0..CODEBOOKS)
            .map(|_| {
                rng = rng
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((rng >> 33) % 2048) as u32
            })
            .collect();
        let t0 = Instant::now();
        prev = state.step(prev, &user, None, None)?;
        // Reading the sampled codes back waits for the device.
        let _codes = state.last_audio_tokens();
        device.synchronize()?;
        if i >= 3 {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        if i == 0 {
            eprintln!(
                "bench lm: first step {:.1} ms",
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    println!(
        "LM ({:?} sizes, d_model {}, {} layers, depformer {}x{} layers, {:.3} B params, {:?}, random weights, {} threads, {} steps)",
        args.config,
        arch.lm.transformer.d_model,
        arch.lm.transformer.num_layers,
        CODEBOOKS,
        arch.lm
            .depformer
            .as_ref()
            .map_or(0, |d| d.transformer.num_layers),
        params as f64 / 1e9,
        args.dtype,
        threads(),
        args.steps
    );
    println!("{}", FrameTimes::from_ms(ms).line("LM step"));
    Ok(())
}
