//! The `VoiceModel` port: one 80 ms step of a full-duplex speech model.

use std::time::Duration;

/// Audio sample rate everywhere in the brain: Mimi's 24 kHz mono.
pub const SAMPLE_RATE: u32 = 24_000;
/// Samples in one 80 ms frame at 24 kHz: one Mimi codec step.
pub const FRAME_SAMPLES: usize = 1_920;
/// The fast loop's period: one Mimi frame at 12.5 Hz.
pub const FRAME_PERIOD: Duration = Duration::from_millis(80);

/// What one step of the model produced.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    /// The agent's audio for this frame, `FRAME_SAMPLES` samples of f32 in -1..1.
    /// Silence is a frame of zeros, never an empty vector.
    pub agent: Vec<f32>,
    /// A piece of the inner monologue, as decoded text (a leading space marks a word start).
    pub text: Option<String>,
}

impl StepOutput {
    /// A silent frame and no text.
    pub fn silence() -> StepOutput {
        StepOutput {
            agent: vec![0.0; FRAME_SAMPLES],
            text: None,
        }
    }
}

/// Where the time of one answered turn went, for a backend built of stages (the
/// `cascade`: end of turn -> speech-to-text -> LLM -> text-to-speech), each in ms of stream
/// time (whole 80 ms frames) from the end of the previous one. They start at the user's
/// last loud frame ("mouth closes") and end at the answer's first loud frame ("voice
/// starts"), so they add up to the turn's `gap_ms` as the loop measures it.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct TurnStages {
    /// The user's last loud frame -> the backend decided the turn was over.
    pub turn_wait_ms: f64,
    /// End of turn -> the transcript is final (the speech-to-text's delay still to run).
    pub stt_final_ms: f64,
    /// Transcript final -> the reply's first token reached the model thread.
    pub llm_first_token_ms: f64,
    /// First token -> the reply's first loud frame.
    pub tts_first_audio_ms: f64,
    /// The LLM's time to first token in wall time (request sent -> first token received).
    pub llm_wall_ms: f64,
}

impl TurnStages {
    /// The stages' sum: mouth closes -> voice starts, as this backend saw it.
    pub fn total_ms(&self) -> f64 {
        self.turn_wait_ms + self.stt_final_ms + self.llm_first_token_ms + self.tts_first_audio_ms
    }
}

/// Why a voice model could not load or step.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VoiceError {
    /// The backend cannot do this at all (typed text on a pure audio model, say).
    #[error("not supported by the {backend} backend: {what}")]
    Unsupported { backend: &'static str, what: String },
    /// The caller handed the model something malformed.
    #[error("bad input: {0}")]
    Input(String),
    /// A model file is missing, corrupt or does not fit the configuration.
    #[error("cannot load {path}: {reason}")]
    Load { path: String, reason: String },
    /// The model failed while computing a step.
    #[error("model step failed: {0}")]
    Model(String),
    /// A remote model is not reachable right now; the step produced silence.
    #[error("disconnected: {0}")]
    Disconnected(String),
}

/// A speech model stepped once per 80 ms frame. Implementations run on the voice worker's
/// own OS thread, so `step` may block for its compute time but must never wait on the
/// network or the disk for longer than a frame.
pub trait VoiceModel: Send + 'static {
    /// The backend's name as the API reports it: `sim`, `moshi` or `moshi-remote`.
    fn backend(&self) -> &'static str;

    /// Whether [`VoiceModel::hear_text`] is supported (the `sim` backend hears typed text).
    fn accepts_text(&self) -> bool {
        false
    }

    /// The user says `text` (typed rather than spoken).
    fn hear_text(&mut self, text: &str) -> Result<(), VoiceError> {
        let _ = text;
        Err(VoiceError::Unsupported {
            backend: self.backend(),
            what: "typed text".into(),
        })
    }

    /// Consume one frame of user audio (`FRAME_SAMPLES` samples) and produce the agent's
    /// frame plus an optional inner-monologue piece.
    fn step(&mut self, user: &[f32]) -> Result<StepOutput, VoiceError>;

    /// [`VoiceModel::step`] into buffers the caller owns and reuses, so a step need not
    /// allocate: the model thread calls this one. `out.agent` comes in holding
    /// `FRAME_SAMPLES` samples (of an earlier frame) and `out.text` empty; the model
    /// overwrites the samples and sets the text. The default calls `step` and moves its
    /// result in (allocating); a backend that writes in place overrides it.
    fn step_into(&mut self, user: &[f32], out: &mut StepOutput) -> Result<(), VoiceError> {
        *out = self.step(user)?;
        Ok(())
    }

    /// The stages of the turn answered in the step just taken, once (backends built of
    /// stages report them on the step whose frame starts the answer; others never do).
    fn take_turn_stages(&mut self) -> Option<TurnStages> {
        None
    }

    /// Forget the conversation and start afresh (used before a model's context runs out).
    fn reset(&mut self) -> Result<(), VoiceError>;

    /// Backend-specific state for the API (connection, steps until the next reset, ...).
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
