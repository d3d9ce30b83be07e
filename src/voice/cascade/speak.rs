//! The cascade's voice: Kyutai's streaming text-to-speech fed word by word as the reply
//! arrives, and decoded by Mimi into 80 ms frames that wait in a short queue to be played.
//!
//! The model (a delayed-streams LM with a depformer, like Moshi's) reads a text stream and
//! writes the audio codebooks `text_audio_delay_in_tokens + acoustic_delay` steps behind
//! it. Each step this side chooses what the text stream may hold:
//!
//! - a token of the word being fed (`Text`), one per step, until the word is in;
//! - between words, pad or end-of-padding (`PadOrEpad`): the model decides when the next
//!   word starts (end-of-padding), so the pace and pauses are its own;
//! - `Pad` while the reply has no next word yet (the LLM is still writing it), and after
//!   the last word until its audio is out.
//!
//! The first word of an utterance is preceded by the beginning-of-turn token. The TTS runs
//! ahead of real time by up to `steps_per_frame` steps a frame while the queue has room,
//! so the text-to-audio delay costs compute, not whole frames, where the device is fast.
//! Stopping (a barge-in) drops the queue and the utterance at once.

use std::collections::VecDeque;

use creature_actors::{FRAME_SAMPLES, VoiceError};
use moshi::StreamTensor;
use moshi::candle::{DType, Device, Tensor};
use moshi::lm::LmModel;
use moshi::mimi::Mimi;
use moshi::transformer::CaSrc;
use moshi::tts_streaming::{self, AllowedTokens};

use crate::voice::moshi::sampler;
use crate::voice::moshi::spm::SentencePieceModel;
use crate::voice::moshi::tts::TtsCheckpoint;

/// Steps one utterance may take (2 minutes); a reply longer than that is cut.
const MAX_UTTERANCE_STEPS: usize = 1_500;

fn tts_error(e: moshi::candle::Error) -> VoiceError {
    VoiceError::Model(format!(
        "the TTS model failed a step: {}",
        e.to_string().lines().next().unwrap_or_default()
    ))
}

/// What the speaker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No utterance.
    Idle,
    /// Feeding words; more may come.
    Speaking,
    /// Every word is in: this many steps remain until the last word's audio is out.
    Tail(usize),
}

/// Sampling of the TTS's audio codes and its pad-or-next-word choice.
#[derive(Debug, Clone, Copy)]
pub struct SpeakerSampling {
    pub temperature: f64,
    pub top_k: usize,
    pub seed: u64,
}

/// Kyutai's streaming TTS behind a word queue and a frame queue.
pub struct Speaker {
    pristine: LmModel,
    ca_src: Option<CaSrc>,
    mimi: Mimi,
    tokenizer: SentencePieceModel,
    generation: tts_streaming::Config,
    sampling: SpeakerSampling,
    device: Device,
    state: Option<tts_streaming::State>,
    phase: Phase,
    /// Words of the reply not yet fed, with their token ids.
    words: VecDeque<(String, Vec<u32>)>,
    /// The word being fed and how many of its tokens are in.
    feeding: Option<(Vec<u32>, usize)>,
    /// No word has been fed in this utterance yet (the next gets the turn's start token).
    first_word: bool,
    prev_text: u32,
    /// Decoded frames waiting to be played, and spent buffers to reuse.
    frames: VecDeque<Vec<f32>>,
    spare: Vec<Vec<f32>>,
    /// Frames the queue may hold ahead of playback.
    lookahead: usize,
    steps_per_frame: usize,
    utterances: u64,
    steps: u64,
    stopped: u64,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("phase", &self.phase)
            .field("steps", &self.steps)
            .finish()
    }
}

impl Speaker {
    /// A speaker over a loaded TTS checkpoint; it runs up to `steps_per_frame` model
    /// steps a frame and keeps up to `lookahead` frames queued.
    pub fn new(
        checkpoint: TtsCheckpoint,
        sampling: SpeakerSampling,
        steps_per_frame: usize,
        lookahead: usize,
    ) -> Speaker {
        let device = checkpoint.lm.device().clone();
        let generation = checkpoint.config.streaming();
        Speaker {
            pristine: checkpoint.lm,
            ca_src: checkpoint.ca_src,
            mimi: checkpoint.mimi,
            tokenizer: checkpoint.tokenizer,
            prev_text: generation.text_start_token,
            generation,
            sampling,
            device,
            state: None,
            phase: Phase::Idle,
            words: VecDeque::new(),
            feeding: None,
            first_word: true,
            frames: VecDeque::new(),
            spare: Vec::new(),
            lookahead: lookahead.max(1),
            steps_per_frame: steps_per_frame.max(1),
            utterances: 0,
            steps: 0,
            stopped: 0,
        }
    }

    /// Steps the text runs ahead of its audio.
    pub fn audio_delay_steps(&self) -> usize {
        self.generation.text_audio_delay_in_tokens + self.generation.acoustic_delay
    }

    /// An utterance is under way or still has frames to play.
    pub fn active(&self) -> bool {
        self.phase != Phase::Idle || !self.frames.is_empty()
    }

    /// Utterances begun, steps taken, utterances stopped by a barge-in.
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.utterances, self.steps, self.stopped)
    }

    /// Frames decoded and waiting.
    pub fn queued_frames(&self) -> usize {
        self.frames.len()
    }

    /// Begin a new utterance (any earlier one is dropped).
    pub fn start(&mut self) {
        self.drop_utterance();
        let sampling = self.sampling;
        let seed = sampling.seed.wrapping_add(self.utterances);
        self.state = Some(tts_streaming::State::new(
            self.pristine.clone(),
            self.ca_src.clone(),
            MAX_UTTERANCE_STEPS,
            sampler(seed, sampling.temperature, sampling.top_k),
            sampler(seed.wrapping_add(1), sampling.temperature, sampling.top_k),
            None,
            self.generation.clone(),
        ));
        self.mimi.reset_state();
        self.prev_text = self.generation.text_start_token;
        self.first_word = true;
        self.phase = Phase::Speaking;
        self.utterances += 1;
    }

    /// Queue one word of the reply (whitespace inside is not expected; it is kept).
    pub fn push_word(&mut self, word: &str) {
        if self.phase != Phase::Speaking || word.is_empty() {
            return;
        }
        let ids = self.tokenizer.encode_word(word);
        if !ids.is_empty() {
            self.words.push_back((word.to_string(), ids));
        }
    }

    /// The reply is complete: after its last word, the speaker runs until the audio is out.
    pub fn finish(&mut self) {
        if self.phase == Phase::Speaking {
            self.phase = Phase::Tail(usize::MAX);
        }
    }

    /// Stop at once (a barge-in): the queue and the rest of the utterance are dropped.
    pub fn stop(&mut self) {
        if self.active() {
            self.stopped += 1;
        }
        self.drop_utterance();
    }

    fn drop_utterance(&mut self) {
        self.state = None;
        self.phase = Phase::Idle;
        self.words.clear();
        self.feeding = None;
        while let Some(frame) = self.frames.pop_front() {
            self.spare.push(frame);
        }
    }

    /// Run the model ahead while the queue has room: up to `steps_per_frame` steps. The
    /// words whose first token went in are appended to `said` (each with a leading space,
    /// as the monologue wants them).
    pub fn advance(&mut self, said: &mut String) -> Result<(), VoiceError> {
        for _ in 0..self.steps_per_frame {
            if self.phase == Phase::Idle || self.frames.len() >= self.lookahead {
                break;
            }
            if let Err(e) = self.step_once(said) {
                self.drop_utterance();
                return Err(e);
            }
        }
        Ok(())
    }

    fn step_once(&mut self, said: &mut String) -> Result<(), VoiceError> {
        let Some(state) = self.state.as_mut() else {
            self.phase = Phase::Idle;
            return Ok(());
        };
        let g = &self.generation;
        let allowed = match self.feeding.as_mut() {
            Some((ids, at)) => {
                let token = ids[*at];
                *at += 1;
                if *at == ids.len() {
                    self.feeding = None;
                }
                AllowedTokens::Text(token)
            }
            None if !self.words.is_empty() => AllowedTokens::PadOrEpad,
            None => AllowedTokens::Pad,
        };
        let token = state
            .step(self.prev_text, allowed, None)
            .map_err(tts_error)?;
        self.prev_text = token;
        self.steps += 1;
        if allowed == AllowedTokens::PadOrEpad && token == g.text_eop_token {
            // The model ends the pause: the next word starts on the next step.
            if let Some((text, mut ids)) = self.words.pop_front() {
                if self.first_word {
                    ids.insert(0, g.text_bos_token);
                    self.first_word = false;
                }
                said.push(' ');
                said.push_str(&text);
                self.feeding = Some((ids, 0));
            }
        }
        let all_in = self.words.is_empty() && self.feeding.is_none();
        if let Phase::Tail(left) = self.phase
            && all_in
        {
            // After the last word: the model pads until the audio of that word is out.
            let left = if left == usize::MAX {
                g.extra_steps + g.text_audio_delay_in_tokens + g.acoustic_delay + 1
            } else {
                left
            };
            self.phase = if left <= 1 {
                Phase::Idle
            } else {
                Phase::Tail(left - 1)
            };
        }
        let codes = if state.step_idx() > g.text_audio_delay_in_tokens + g.acoustic_delay {
            state.last_audio_tokens()
        } else {
            None
        };
        if state.step_idx() + 2 >= MAX_UTTERANCE_STEPS {
            self.phase = Phase::Idle;
        }
        if self.phase == Phase::Idle {
            self.state = None;
        }
        if let Some(codes) = codes {
            let frame = self.decode(codes)?;
            self.frames.push_back(frame);
        }
        Ok(())
    }

    fn decode(&mut self, codes: Vec<u32>) -> Result<Vec<f32>, VoiceError> {
        let n = codes.len();
        let tokens = Tensor::from_vec(codes, (1, n, 1), &self.device).map_err(tts_error)?;
        let pcm = self
            .mimi
            .decode_step(&StreamTensor::from_tensor(tokens), &().into())
            .map_err(tts_error)?;
        let mut frame = self.spare.pop().unwrap_or_default();
        frame.clear();
        if let Some(pcm) = pcm.as_option() {
            let samples = pcm
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(tts_error)?;
            frame.extend(samples.iter().map(|s| {
                if s.is_finite() {
                    s.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            }));
        }
        frame.resize(FRAME_SAMPLES, 0.0);
        Ok(frame)
    }

    /// The next frame to play into `out` (silence when none is ready); `true` if a
    /// decoded frame was played.
    pub fn pop_frame(&mut self, out: &mut [f32]) -> bool {
        match self.frames.pop_front() {
            Some(frame) => {
                let n = out.len().min(frame.len());
                out[..n].copy_from_slice(&frame[..n]);
                out[n..].fill(0.0);
                self.spare.push(frame);
                true
            }
            None => {
                out.fill(0.0);
                false
            }
        }
    }
}
