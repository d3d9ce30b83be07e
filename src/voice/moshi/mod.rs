//! The local `moshi` voice backend: Kyutai's Moshi on candle, stepped once per 80 ms frame.
//! Each step encodes the user's frame with Mimi (8 codes), runs one multistream LM step
//! (the inner-monologue text token, then the agent's 8 codes through the depformer, the
//! acoustic codebooks 2 steps behind), and decodes the agent's codes with Mimi.
//!
//! # Layout
//!
//! - `config`: `[voice.moshi]`, the backend's settings and their checks.
//! - [`loader`]: the checkpoint directory (Kyutai's layout), `config.json`, and checks.
//! - [`spm`]: SentencePiece `.model` files and the streaming text-piece decoder.
//! - [`tiny`]: `creature moshi tiny DIR`, a random-weight checkpoint that runs on a CPU.
//! - [`random`]: `creature moshi random --size ...`, random checkpoints of the real sizes.
//! - [`stt`] and [`tts`]: Kyutai's streaming speech-to-text and text-to-speech checkpoints
//!   (loaders and tiny writers), the two model stages of the `cascade` backend.
//! - [`bench`]: `creature bench mimi` and `creature bench lm`.
//!
//! # Long conversations
//!
//! The multistream state holds a fixed number of steps, and the LM attends to at most its
//! context (3000 steps, 4 minutes, for Moshi v0.1). Kyutai's own server stops when its step
//! limit is reached. Here, before a conversation reaches `max_steps` the model starts a new
//! one: the LM state (caches and token history) and Mimi's streaming state are reset, the
//! reset is logged and counted in the status, and the creature keeps talking. A failed step
//! resets the same way, since it may have advanced Mimi without the LM.

pub mod bench;
mod config;
pub mod loader;
pub mod random;
pub mod spm;
pub mod stt;
pub mod tiny;
pub mod tts;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_transformers::generation::{LogitsProcessor, Sampling};
use creature_actors::{FRAME_SAMPLES, StepOutput, VoiceError, VoiceModel};
use moshi::StreamTensor;
use moshi::candle::{DType, Device, IndexOp, Tensor};
use moshi::lm::LmModel;
use moshi::lm_generate_multistream::{self, State};
use moshi::mimi::Mimi;
use serde_json::json;
use tracing::{info, warn};

pub use config::{MoshiConfig, MoshiDevice, MoshiDtype};
use loader::{CODEBOOKS, Checkpoint, load_checkpoint};
use spm::TextDecoder;

/// Why a conversation was restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// Loading: the warm-up step is forgotten before the first tick (not counted).
    WarmUp,
    /// The step limit was about to be reached.
    StepLimit,
    /// The voice loop asked for it (after a panic, say).
    Requested,
    /// A step failed half-way.
    StepFailed,
}

impl Restart {
    fn as_str(self) -> &'static str {
        match self {
            Restart::WarmUp => "warm-up",
            Restart::StepLimit => "step limit",
            Restart::Requested => "requested",
            Restart::StepFailed => "step failed",
        }
    }
}

/// Moshi on candle behind the `VoiceModel` port.
pub struct MoshiVoice {
    mimi: Mimi,
    /// The LM as loaded and never stepped. Each conversation steps a clone of it: the
    /// weights are shared tensors, only the (empty) caches are copied.
    pristine_lm: LmModel,
    /// The current conversation: LM caches, token history and samplers.
    state: State,
    generation: lm_generate_multistream::Config,
    decoder: TextDecoder,
    /// The text token the LM emitted last step (the start token at the beginning).
    prev_text: u32,
    device: Device,
    dtype: DType,
    sampling: MoshiConfig,
    checkpoint: PathBuf,
    lm_file: PathBuf,
    /// The user's frame, padded or trimmed to exactly one frame.
    frame: Vec<f32>,
    /// Steps since the model was loaded, and in the current conversation.
    steps: u64,
    conversation_steps: usize,
    /// Conversations restarted (step limit, request or failure; not the warm-up).
    resets: u64,
    limit_resets: u64,
    last_reset: Option<&'static str>,
    /// Text pieces emitted, and agent frames that were silence because the LM had no audio
    /// for them yet (the first steps of a conversation, or a padding code).
    pieces: u64,
    silent_frames: u64,
    /// Agent samples that came out NaN or infinite and were zeroed.
    nonfinite_samples: u64,
}

impl std::fmt::Debug for MoshiVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoshiVoice")
            .field("checkpoint", &self.checkpoint)
            .field("steps", &self.steps)
            .finish()
    }
}

/// The device named in the config; an error says which build feature is missing.
pub fn open_device(kind: MoshiDevice) -> Result<Device, VoiceError> {
    let unsupported = |what: String| VoiceError::Unsupported {
        backend: "moshi",
        what,
    };
    match kind {
        MoshiDevice::Cpu => Ok(Device::Cpu),
        MoshiDevice::Cuda => Device::new_cuda(0).map_err(|e| {
            unsupported(format!(
                "device cuda: {e} (a build with `--features cuda` and a GPU are needed)"
            ))
        }),
        MoshiDevice::Metal => Device::new_metal(0).map_err(|e| {
            unsupported(format!(
                "device metal: {e} (a build with `--features metal` is needed)"
            ))
        }),
    }
}

fn device_name(kind: MoshiDevice) -> &'static str {
    match kind {
        MoshiDevice::Cpu => "cpu",
        MoshiDevice::Cuda => "cuda",
        MoshiDevice::Metal => "metal",
    }
}

/// The LM's dtype: bf16 on CUDA and f32 elsewhere unless the config says otherwise.
pub fn lm_dtype(device: &Device, choice: MoshiDtype) -> DType {
    match choice {
        MoshiDtype::Auto if device.is_cuda() => DType::BF16,
        MoshiDtype::Auto | MoshiDtype::F32 => DType::F32,
        MoshiDtype::F16 => DType::F16,
        MoshiDtype::Bf16 => DType::BF16,
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

fn model_error(e: moshi::candle::Error) -> VoiceError {
    VoiceError::Model(e.to_string().lines().next().unwrap_or_default().to_string())
}

impl MoshiVoice {
    /// Load the checkpoint in `settings.dir`, warm the model up with one step, and start
    /// a fresh conversation. Every problem with the files is a `VoiceError::Load` naming one.
    pub fn load(settings: &MoshiConfig) -> Result<Self, VoiceError> {
        let dir = settings.dir.as_deref().ok_or_else(|| {
            VoiceError::Input("the moshi backend needs a checkpoint: set [voice.moshi] dir or pass --moshi-dir DIR".into())
        })?;
        settings
            .check()
            .map_err(|e| VoiceError::Input(e.to_string()))?;
        let device = open_device(settings.device)?;
        let dtype = lm_dtype(&device, settings.dtype);
        let started = Instant::now();
        let checkpoint = load_checkpoint(dir, &device, dtype)?;
        let load_ms = started.elapsed().as_millis() as u64;
        let mut voice = MoshiVoice::from_checkpoint(checkpoint, settings, device, dtype);
        let warm = Instant::now();
        voice.step_frame(&[0.0; FRAME_SAMPLES]).map_err(|e| {
            loader::load_error(
                &voice.lm_file,
                format!(
                    "the warm-up step failed: {}",
                    e.to_string().lines().next().unwrap_or_default()
                ),
            )
        })?;
        voice.restart(Restart::WarmUp);
        info!(
            dir = %dir.display(),
            lm = %voice.lm_file.display(),
            device = device_name(settings.device),
            dtype = dtype_name(dtype),
            load_ms,
            warm_up_ms = warm.elapsed().as_millis() as u64,
            max_steps = settings.max_steps,
            "moshi loaded"
        );
        Ok(voice)
    }

    fn from_checkpoint(
        c: Checkpoint,
        settings: &MoshiConfig,
        device: Device,
        dtype: DType,
    ) -> Self {
        let generation = c.arch.generation();
        let decoder = TextDecoder::new(
            c.tokenizer,
            vec![generation.text_eop_token, generation.text_pad_token],
        );
        let state = new_state(&c.lm, &generation, settings, 0);
        MoshiVoice {
            mimi: c.mimi,
            pristine_lm: c.lm,
            state,
            prev_text: generation.text_start_token,
            generation,
            decoder,
            device,
            dtype,
            sampling: settings.clone(),
            checkpoint: c.dir,
            lm_file: c.lm_file,
            frame: vec![0.0; FRAME_SAMPLES],
            steps: 0,
            conversation_steps: 0,
            resets: 0,
            limit_resets: 0,
            last_reset: None,
            pieces: 0,
            silent_frames: 0,
            nonfinite_samples: 0,
        }
    }

    /// The checkpoint directory this model was loaded from.
    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    /// Conversations restarted so far (the warm-up not included).
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Start a new conversation: fresh LM state and samplers, Mimi's streams emptied.
    fn restart(&mut self, why: Restart) {
        if why != Restart::WarmUp {
            self.resets += 1;
            if why == Restart::StepLimit {
                self.limit_resets += 1;
            }
            self.last_reset = Some(why.as_str());
            info!(
                reason = why.as_str(),
                conversation_steps = self.conversation_steps,
                resets = self.resets,
                "moshi conversation reset; talking on with a fresh context"
            );
        }
        self.mimi.reset_state();
        self.state = new_state(
            &self.pristine_lm,
            &self.generation,
            &self.sampling,
            self.resets,
        );
        self.prev_text = self.generation.text_start_token;
        self.decoder.reset();
        self.conversation_steps = 0;
    }

    /// One step of the real model on one frame of user audio.
    fn step_frame(&mut self, user: &[f32]) -> moshi::candle::Result<StepOutput> {
        let n = user.len().min(FRAME_SAMPLES);
        self.frame[..n].copy_from_slice(&user[..n]);
        self.frame[n..].fill(0.0);
        let pcm = Tensor::from_slice(&self.frame, (1, 1, FRAME_SAMPLES), &self.device)?;
        let codes = self
            .mimi
            .encode_step(&StreamTensor::from_tensor(pcm), &().into())?;
        let Some(codes) = codes.as_option() else {
            // Mimi holds back a partial frame; with whole frames this does not happen.
            self.silent_frames += 1;
            return Ok(StepOutput {
                agent: vec![0.0; FRAME_SAMPLES],
                text: None,
            });
        };
        let user_codes: Vec<u32> = codes.i((0, .., 0))?.to_vec1()?;
        let text_token = self.state.step(self.prev_text, &user_codes, None, None)?;
        self.prev_text = text_token;
        self.conversation_steps += 1;
        let text = self.decoder.push(text_token);
        let mut agent = match self.state.last_audio_tokens() {
            Some(tokens) => {
                let tokens = Tensor::from_vec(
                    tokens[..CODEBOOKS].to_vec(),
                    (1, CODEBOOKS, 1),
                    &self.device,
                )?;
                let pcm = self
                    .mimi
                    .decode_step(&StreamTensor::from_tensor(tokens), &().into())?;
                match pcm.as_option() {
                    Some(pcm) => pcm.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                    None => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        if agent.is_empty() {
            self.silent_frames += 1;
        }
        // Defensive: the contract is exactly one frame in -1..1, whatever the weights do.
        agent.resize(FRAME_SAMPLES, 0.0);
        for s in &mut agent {
            if !s.is_finite() {
                *s = 0.0;
                self.nonfinite_samples += 1;
            }
            *s = s.clamp(-1.0, 1.0);
        }
        if text.is_some() {
            self.pieces += 1;
        }
        Ok(StepOutput { agent, text })
    }
}

pub(crate) fn sampler(seed: u64, temperature: f64, top_k: usize) -> LogitsProcessor {
    let sampling = if temperature <= 0.0 {
        Sampling::ArgMax
    } else {
        Sampling::TopK {
            k: top_k,
            temperature,
        }
    };
    LogitsProcessor::from_sampling(seed, sampling)
}

/// A fresh conversation on a clone of the loaded LM. The samplers' seeds move on with each
/// conversation so a restarted one does not replay the last.
fn new_state(
    lm: &LmModel,
    generation: &lm_generate_multistream::Config,
    s: &MoshiConfig,
    conversation: u64,
) -> State {
    State::new(
        lm.clone(),
        s.max_steps,
        sampler(s.seed.wrapping_add(conversation), s.temperature, s.top_k),
        sampler(
            s.text_seed.wrapping_add(conversation),
            s.text_temperature,
            s.text_top_k,
        ),
        None,
        None,
        None,
        generation.clone(),
    )
}

impl VoiceModel for MoshiVoice {
    fn backend(&self) -> &'static str {
        "moshi"
    }

    fn step(&mut self, user: &[f32]) -> Result<StepOutput, VoiceError> {
        // `max_steps` steps fit in the state; start afresh before the next would not.
        if self.conversation_steps >= self.sampling.max_steps {
            self.restart(Restart::StepLimit);
        }
        self.steps += 1;
        match self.step_frame(user) {
            Ok(out) => Ok(out),
            Err(e) => {
                let err = model_error(e);
                warn!(cause = %err, "moshi step failed; resetting the conversation");
                self.restart(Restart::StepFailed);
                Err(err)
            }
        }
    }

    fn reset(&mut self) -> Result<(), VoiceError> {
        self.restart(Restart::Requested);
        Ok(())
    }

    fn status(&self) -> serde_json::Value {
        json!({
            "checkpoint": self.checkpoint.display().to_string(),
            "lm_file": self.lm_file.file_name().map(|f| f.to_string_lossy().into_owned()),
            "quantized": self.pristine_lm.is_quantized(),
            "device": device_name(self.sampling.device),
            "dtype": dtype_name(self.dtype),
            "steps": self.steps,
            "conversation_steps": self.conversation_steps,
            "max_steps": self.sampling.max_steps,
            "steps_until_reset": self.sampling.max_steps.saturating_sub(self.conversation_steps),
            "resets": self.resets,
            "limit_resets": self.limit_resets,
            "last_reset": self.last_reset,
            "text_pieces": self.pieces,
            "silent_frames": self.silent_frames,
            "nonfinite_samples": self.nonfinite_samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creature_actors::audio::rms;

    fn tiny(max_steps: usize) -> (tempfile::TempDir, MoshiConfig) {
        let dir = tempfile::tempdir().unwrap();
        tiny::write_tiny_checkpoint(dir.path(), 7, false).unwrap();
        let settings = MoshiConfig {
            dir: Some(dir.path().to_path_buf()),
            max_steps,
            ..MoshiConfig::default()
        };
        (dir, settings)
    }

    fn voice_frame(i: usize) -> Vec<f32> {
        (0..FRAME_SAMPLES)
            .map(|n| 0.2 * ((i * FRAME_SAMPLES + n) as f32 * 0.05).sin())
            .collect()
    }

    #[test]
    fn the_tiny_checkpoint_runs_the_real_path_for_a_hundred_ticks() {
        let (_dir, settings) = tiny(3_000);
        let mut voice = MoshiVoice::load(&settings).unwrap();
        assert_eq!(voice.backend(), "moshi");
        assert!(!voice.accepts_text());
        let started = Instant::now();
        let mut pieces = Vec::new();
        let mut loud = 0;
        for i in 0..120 {
            // Every size of input frame is accepted and padded or trimmed.
            let user = match i % 3 {
                0 => voice_frame(i),
                1 => vec![0.0; 100],
                _ => vec![0.1; 3000],
            };
            let out = voice.step(&user).unwrap();
            assert_eq!(out.agent.len(), FRAME_SAMPLES);
            assert!(
                out.agent
                    .iter()
                    .all(|s| s.is_finite() && (-1.0..=1.0).contains(s))
            );
            if rms(&out.agent) > 1e-4 {
                loud += 1;
            }
            pieces.extend(out.text);
        }
        let per_step = started.elapsed() / 120;
        let status = voice.status();
        assert_eq!(status["steps"], 120, "{status}");
        assert_eq!(status["resets"], 0, "{status}");
        assert_eq!(status["device"], "cpu");
        assert_eq!(status["dtype"], "f32");
        assert_eq!(status["lm_file"], "model.safetensors");
        assert!(
            pieces.len() >= 10,
            "only {} pieces: {pieces:?}",
            pieces.len()
        );
        assert!(
            pieces
                .iter()
                .all(|p| !p.is_empty() && !p.contains('\u{2581}')),
            "{pieces:?}"
        );
        assert!(
            pieces.iter().any(|p| p.starts_with(' ')),
            "no word starts in {pieces:?}"
        );
        // The agent's audio starts after the acoustic delay, and random weights are not silent.
        assert!(loud > 60, "only {loud} audible frames");
        eprintln!(
            "tiny moshi: {per_step:?} a step; {} pieces, e.g. {:?}",
            pieces.len(),
            &pieces[..10]
        );
    }

    #[test]
    fn the_same_seeds_say_the_same_thing() {
        let (_dir, settings) = tiny(3_000);
        let run = || {
            let mut voice = MoshiVoice::load(&settings).unwrap();
            (0..30)
                .map(|i| voice.step(&voice_frame(i)).unwrap().text)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn a_conversation_is_reset_before_the_step_limit_and_talk_goes_on() {
        let (_dir, settings) = tiny(10);
        let mut voice = MoshiVoice::load(&settings).unwrap();
        assert_eq!(voice.status()["steps_until_reset"], 10);
        for i in 0..10 {
            voice.step(&voice_frame(i)).unwrap();
        }
        let status = voice.status();
        assert_eq!(status["steps_until_reset"], 0, "{status}");
        assert_eq!(status["resets"], 0, "{status}");
        // The next step would pass the limit: the state is reset first, and the step works.
        let mut audible_after = 0;
        for i in 10..45 {
            let out = voice.step(&voice_frame(i)).unwrap();
            assert_eq!(out.agent.len(), FRAME_SAMPLES);
            if rms(&out.agent) > 1e-4 {
                audible_after += 1;
            }
        }
        let status = voice.status();
        assert_eq!(status["steps"], 45, "{status}");
        // Conversations of 10 steps: resets before steps 11, 21, 31 and 41.
        assert_eq!(status["resets"], 4, "{status}");
        assert_eq!(status["limit_resets"], 4, "{status}");
        assert_eq!(status["last_reset"], "step limit", "{status}");
        assert_eq!(status["conversation_steps"], 5, "{status}");
        assert_eq!(status["steps_until_reset"], 5, "{status}");
        assert!(audible_after > 20, "{audible_after}");
        // An explicit reset is counted too.
        voice.reset().unwrap();
        assert_eq!(voice.status()["resets"], 5);
        assert_eq!(voice.status()["limit_resets"], 4);
        assert_eq!(voice.status()["conversation_steps"], 0);
    }

    #[test]
    fn an_8_bit_gguf_lm_loads_and_talks() {
        let dir = tempfile::tempdir().unwrap();
        tiny::write_tiny_checkpoint(dir.path(), 7, true).unwrap();
        assert!(!dir.path().join(loader::LM_SAFETENSORS).exists());
        let settings = MoshiConfig {
            dir: Some(dir.path().to_path_buf()),
            ..MoshiConfig::default()
        };
        let mut voice = MoshiVoice::load(&settings).unwrap();
        let mut pieces = 0;
        for i in 0..30 {
            let out = voice.step(&voice_frame(i)).unwrap();
            assert_eq!(out.agent.len(), FRAME_SAMPLES);
            assert!(out.agent.iter().all(|s| s.is_finite()));
            pieces += usize::from(out.text.is_some());
        }
        let status = voice.status();
        assert_eq!(status["lm_file"], "model.q8.gguf", "{status}");
        assert_eq!(status["quantized"], true, "{status}");
        assert!(pieces > 5, "{pieces}");
        // A truncated gguf is named.
        let gguf = dir.path().join(loader::LM_GGUF);
        let bytes = std::fs::read(&gguf).unwrap();
        std::fs::write(&gguf, &bytes[..bytes.len() / 3]).unwrap();
        let err = MoshiVoice::load(&settings).unwrap_err();
        assert!(
            matches!(&err, VoiceError::Load { path, reason } if path.ends_with("model.q8.gguf") && reason.contains("gguf")),
            "{err}"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_device_without_its_build_feature_is_refused_clearly() {
        let (_dir, settings) = tiny(3_000);
        let settings = MoshiConfig {
            device: MoshiDevice::Cuda,
            ..settings
        };
        let err = MoshiVoice::load(&settings).unwrap_err();
        assert!(
            matches!(
                err,
                VoiceError::Unsupported {
                    backend: "moshi",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }

    #[test]
    fn a_missing_directory_setting_is_an_input_error() {
        let err = MoshiVoice::load(&MoshiConfig::default()).unwrap_err();
        assert!(matches!(err, VoiceError::Input(_)), "{err}");
        assert!(err.to_string().contains("--moshi-dir"), "{err}");
    }
}
