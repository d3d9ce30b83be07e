//! The embedded `sim` voice backend: a stand-in for a full-duplex speech model so the
//! creature runs without weights or a GPU. It hears voice activity by energy, answers typed
//! utterances from a rule table, and says the answers word by word in a babbling creature
//! voice whose loudness follows its syllables.
//!
//! # Turn taking
//!
//! - A typed utterance is answered `reaction_ms` after it is heard (Moshi's latency floor
//!   by default), but not while the user is audibly talking: an answer started over the
//!   user would be cut off by its own barge-in rule at once.
//! - Answers play one after another; at most [`MAX_WAITING_ANSWERS`] wait.
//! - A spoken turn gets a short reply too (it cannot tell what was said, so it only
//!   acknowledges): when the user's voice activity ends (after the detector's hangover),
//!   `reply_delay_ms` later, from the first sample after the delay. That makes it the
//!   timing reference of [`creature_actors::turns`]: its measured response latency is its
//!   reply delay. No reply when nothing typed is waiting to be said anyway, when the turn
//!   was shorter than [`MIN_SPOKEN_TURN_FRAMES`] loud frames (a cough, a knock), or when the
//!   turn began by interrupting the creature (it yields the floor, and waits to be asked).
//! - After `backchannel_after_ms` of continuous user voice, with the creature silent, it
//!   hums a soft "mm-hm", at most once every `backchannel_every_ms`. The user talking over
//!   a backchannel is the point of it, so it is never interrupted and never counted as a
//!   barge-in.
//!
//! # Echo guard and barge-in
//!
//! On a speakerphone the microphone also hears the creature. While its own voice is on
//! the way out (either of its last two frames was not silent: the echo in this microphone
//! frame left the speaker up to two frames ago), a user frame counts as voice only when its
//! level reaches `max(vad_threshold_dbfs, L - barge_in_margin_db)`, where `L` is the louder of
//! those two output frames in dBFS. An echo, weakened by the room and the browser's echo
//! cancellation (usually 20 dB or more), stays below that; a person talking into the phone
//! is within a few dB of the creature and gets through. A user frame that reaches the
//! guarded threshold while an answer plays is a barge-in: that very step fades out in 5 ms
//! and is silent after, the rest of the answer and every waiting answer are dropped. The
//! guard's limit: an echo louder than `L - margin` (no echo cancellation, speaker turned
//! up) or delayed by more than two frames can still interrupt the creature.

use std::collections::VecDeque;

use creature_actors::audio::{EnergyVad, dbfs, rms};
use creature_actors::{FRAME_SAMPLES, SAMPLE_RATE, StepOutput, VoiceError, VoiceModel};
use serde_json::json;
use tracing::debug;

use super::rules;
use super::synth::{Rng, Score, Synth, VoiceShape, score_answer, score_backchannel};

/// Frames of quiet the voice detector waits before the user's turn ends, so the gaps
/// between syllables and words do not end it (240 ms).
const VAD_HANGOVER_FRAMES: u32 = 3;
/// Answers that may wait to be spoken; more is a caller flooding the backend.
pub const MAX_WAITING_ANSWERS: usize = 8;
/// Length of the fade that ends a barged-in answer without a click (5 ms).
const BARGE_IN_FADE_SAMPLES: usize = SAMPLE_RATE as usize / 200;
/// Output levels remembered for the echo guard: the echo path may lag up to this many frames.
const ECHO_FRAMES: usize = 2;
/// dBFS of a silent frame as [`dbfs`] reports it.
const SILENCE_DBFS: f32 = -120.0;
/// Loud frames a spoken turn needs before it gets a reply (160 ms).
pub const MIN_SPOKEN_TURN_FRAMES: u32 = 2;
/// What the creature says to a spoken turn, in rotation: acknowledgements, never a task.
const SPOKEN_REPLIES: [&str; 4] = ["I hear you.", "Mm, tell me more.", "I see.", "Okay."];

/// How the simulator behaves: `[voice.sim]` in the config file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Average speaking pace; longer words take longer. Clamped to 0.2..=20.
    pub words_per_second: f32,
    /// Delay between hearing a typed utterance and starting the answer.
    pub reaction_ms: u64,
    /// Reply to spoken turns (a short acknowledgement) as well as typed ones.
    pub answer_speech: bool,
    /// Delay from the end of the user's voice activity (after the detector's hangover) to
    /// the reply to a spoken turn.
    pub reply_delay_ms: u64,
    /// User frames at or above this level are voice.
    pub vad_threshold_dbfs: f32,
    /// How close to the creature's own output level the user must be to count as voice
    /// while the creature talks (see the echo guard in the module docs).
    pub barge_in_margin_db: f32,
    /// Continuous user voice before the creature says "mm-hm".
    pub backchannel_after_ms: u64,
    /// Least time between two backchannels.
    pub backchannel_every_ms: u64,
    /// Middle of the voice's pitch range. Clamped to 50..=1000 Hz.
    pub pitch_hz: f32,
    /// Seed of the voice's jitter and breath noise: the same seed and inputs give the same
    /// audio, sample for sample.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            words_per_second: 3.0,
            reaction_ms: 160,
            answer_speech: true,
            reply_delay_ms: 160,
            vad_threshold_dbfs: -42.0,
            barge_in_margin_db: 6.0,
            backchannel_after_ms: 2_500,
            backchannel_every_ms: 4_000,
            pitch_hz: 220.0,
            seed: 7,
        }
    }
}

impl SimConfig {
    /// Refuse values the simulator cannot run with, naming the key.
    pub fn check(&self) -> Result<(), crate::config::ConfigError> {
        if !(self.words_per_second > 0.2 && self.words_per_second <= 20.0) {
            return Err(crate::config::ConfigError::Invalid {
                key: "voice.sim.words_per_second",
                reason: format!("{} is outside 0.2..20", self.words_per_second),
            });
        }
        Ok(())
    }
}

/// What the simulator has done since it was built; kept across [`VoiceModel::reset`] so
/// the metrics built on them only ever grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Typed utterances accepted by `hear_text`.
    pub utterances_heard: u64,
    /// Answers cut short because the user started talking.
    pub barge_ins: u64,
    /// "mm-hm"s hummed while the user talked.
    pub backchannels: u64,
    /// Conversations forgotten by `reset`.
    pub resets: u64,
    /// Spoken turns replied to.
    pub spoken_replies: u64,
}

/// An answer waiting for its turn.
#[derive(Debug)]
struct WaitingAnswer {
    score: Score,
    /// Sample clock at which the reaction time is over.
    due: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Utterance {
    Answer,
    Backchannel,
}

/// What the creature is saying right now.
#[derive(Debug)]
struct Speech {
    score: Score,
    /// Samples of the score already played.
    pos: usize,
    kind: Utterance,
}

/// The `sim` backend. See the module docs for how it takes turns.
#[derive(Debug)]
pub struct SimVoice {
    cfg: SimConfig,
    shape: VoiceShape,
    vad: EnergyVad,
    synth: Synth,
    /// Jitter for new scores, separate from the synth's noise so both stay reproducible.
    rng: Rng,
    /// Samples stepped since the start of the conversation: the clock for reaction and
    /// backchannel spacing.
    clock: u64,
    waiting: VecDeque<WaitingAnswer>,
    speech: Option<Speech>,
    /// Levels of the last output frames, newest last, for the echo guard.
    recent_output_dbfs: [f32; ECHO_FRAMES],
    last_backchannel_at: Option<u64>,
    /// Loud frames in the user's current (or last) spoken turn.
    turn_loud_frames: u32,
    /// The current spoken turn began by interrupting an answer.
    turn_barged_in: bool,
    counters: SimCounters,
}

impl SimVoice {
    /// A silent simulator; non-finite or out-of-range settings fall back to sane values.
    pub fn new(cfg: SimConfig) -> SimVoice {
        let shape = VoiceShape {
            words_per_second: finite_or(cfg.words_per_second, 3.0).clamp(0.2, 20.0),
            pitch_hz: finite_or(cfg.pitch_hz, 220.0).clamp(50.0, 1_000.0),
        };
        let cfg = SimConfig {
            vad_threshold_dbfs: finite_or(cfg.vad_threshold_dbfs, -42.0),
            barge_in_margin_db: finite_or(cfg.barge_in_margin_db, 6.0),
            ..cfg
        };
        SimVoice {
            shape,
            vad: EnergyVad::new(cfg.vad_threshold_dbfs, VAD_HANGOVER_FRAMES),
            synth: Synth::new(cfg.seed),
            rng: Rng::new(cfg.seed),
            clock: 0,
            waiting: VecDeque::new(),
            speech: None,
            recent_output_dbfs: [SILENCE_DBFS; ECHO_FRAMES],
            last_backchannel_at: None,
            turn_loud_frames: 0,
            turn_barged_in: false,
            counters: SimCounters::default(),
            cfg,
        }
    }

    /// Lifetime counters (also in [`VoiceModel::status`]).
    pub fn counters(&self) -> SimCounters {
        self.counters
    }

    /// Whether an answer (not a backchannel) is being spoken.
    pub fn speaking(&self) -> bool {
        self.speech
            .as_ref()
            .is_some_and(|s| s.kind == Utterance::Answer)
    }

    /// Words not yet started, in the current answer and in those waiting.
    pub fn queued_words(&self) -> usize {
        let current = self
            .speech
            .as_ref()
            .filter(|s| s.kind == Utterance::Answer)
            .map_or(0, |s| s.score.words_after(s.pos));
        current
            + self
                .waiting
                .iter()
                .map(|w| w.score.words_after(0))
                .sum::<usize>()
    }

    /// The level a user frame must reach to count as voice now (the echo guard).
    fn voice_threshold_dbfs(&self) -> f32 {
        let echo = self
            .recent_output_dbfs
            .iter()
            .copied()
            .fold(SILENCE_DBFS, f32::max);
        if echo <= SILENCE_DBFS {
            self.cfg.vad_threshold_dbfs
        } else {
            self.cfg
                .vad_threshold_dbfs
                .max(echo - self.cfg.barge_in_margin_db)
        }
    }

    fn samples_of(ms: u64) -> u64 {
        ms.saturating_mul(u64::from(SAMPLE_RATE)) / 1_000
    }

    /// Start the next answer or a backchannel if it is time; returns where in this frame
    /// the new speech begins.
    fn start_speaking(&mut self, frame_start: u64, user_active: bool) -> usize {
        let frame_end = frame_start + FRAME_SAMPLES as u64;
        if !user_active
            && self
                .waiting
                .front()
                .is_some_and(|answer| answer.due < frame_end)
            && let Some(answer) = self.waiting.pop_front()
        {
            // Start on the sample the reaction time ends, not the next frame boundary.
            let offset = answer.due.saturating_sub(frame_start) as usize;
            self.speech = Some(Speech {
                score: answer.score,
                pos: 0,
                kind: Utterance::Answer,
            });
            return offset;
        }
        let talked_ms = u64::from(self.vad.run_frames()) * FRAME_SAMPLES as u64 * 1_000
            / u64::from(SAMPLE_RATE);
        let spaced = self.last_backchannel_at.is_none_or(|at| {
            frame_start.saturating_sub(at) >= Self::samples_of(self.cfg.backchannel_every_ms)
        });
        if user_active && talked_ms >= self.cfg.backchannel_after_ms && spaced {
            self.speech = Some(Speech {
                score: score_backchannel(self.shape.pitch_hz),
                pos: 0,
                kind: Utterance::Backchannel,
            });
            self.last_backchannel_at = Some(frame_start);
            self.counters.backchannels += 1;
            debug!(talked_ms, "sim backchannel");
        }
        0
    }

    /// Play the current speech into `agent` from `offset`; returns the text pieces of the
    /// words whose audio starts in this frame.
    fn speak(&mut self, agent: &mut [f32], offset: usize) -> Option<String> {
        let speech = self.speech.as_mut()?;
        let room = agent.len().saturating_sub(offset);
        let n = room.min(speech.score.len().saturating_sub(speech.pos));
        self.synth
            .render(&speech.score, speech.pos, &mut agent[offset..offset + n]);
        let text = speech.score.pieces_between(speech.pos, speech.pos + n);
        speech.pos += n;
        if speech.pos >= speech.score.len() {
            self.speech = None;
        }
        text
    }

    /// The user's voice activity ended at `frame_start`: queue a short reply, due
    /// `reply_delay_ms` later, unless the turn gets none (see the module docs).
    fn reply_to_spoken_turn(&mut self, frame_start: u64) {
        let busy = self.speaking() || !self.waiting.is_empty();
        if !self.cfg.answer_speech
            || busy
            || self.turn_barged_in
            || self.turn_loud_frames < MIN_SPOKEN_TURN_FRAMES
        {
            return;
        }
        let line =
            SPOKEN_REPLIES[(self.counters.spoken_replies % SPOKEN_REPLIES.len() as u64) as usize];
        let score = score_answer(line, self.shape, &mut self.rng);
        self.waiting.push_back(WaitingAnswer {
            score,
            due: frame_start.saturating_add(Self::samples_of(self.cfg.reply_delay_ms)),
        });
        self.counters.spoken_replies += 1;
        debug!(
            loud_frames = self.turn_loud_frames,
            "sim replies to a spoken turn"
        );
    }

    /// The user started talking over an answer: fade out within this frame and forget
    /// everything the creature meant to say.
    fn barge_in(&mut self, agent: &mut [f32], user_dbfs: f32) {
        let Some(speech) = self.speech.take() else {
            return;
        };
        let n = BARGE_IN_FADE_SAMPLES.min(speech.score.len().saturating_sub(speech.pos));
        self.synth
            .render(&speech.score, speech.pos, &mut agent[..n]);
        for (i, sample) in agent[..n].iter_mut().enumerate() {
            let x = i as f32 / BARGE_IN_FADE_SAMPLES as f32;
            *sample *= 0.5 + 0.5 * (std::f32::consts::PI * x).cos();
        }
        let dropped_words = speech.score.words_after(speech.pos)
            + self
                .waiting
                .iter()
                .map(|w| w.score.words_after(0))
                .sum::<usize>();
        self.waiting.clear();
        self.turn_barged_in = true;
        self.counters.barge_ins += 1;
        debug!(user_dbfs, dropped_words, "sim barge-in");
    }
}

fn finite_or(value: f32, fallback: f32) -> f32 {
    if value.is_finite() { value } else { fallback }
}

impl VoiceModel for SimVoice {
    fn backend(&self) -> &'static str {
        "sim"
    }

    fn accepts_text(&self) -> bool {
        true
    }

    fn hear_text(&mut self, text: &str) -> Result<(), VoiceError> {
        if text.trim().is_empty() {
            return Err(VoiceError::Input("nothing was said".into()));
        }
        let chars = text.chars().count();
        if chars > rules::MAX_HEARD_CHARS {
            return Err(VoiceError::Input(format!(
                "utterance of {chars} characters is longer than {}",
                rules::MAX_HEARD_CHARS
            )));
        }
        if self.waiting.len() >= MAX_WAITING_ANSWERS {
            return Err(VoiceError::Input(format!(
                "{MAX_WAITING_ANSWERS} answers are already waiting to be spoken"
            )));
        }
        let answer = rules::answer(text);
        let score = score_answer(&answer, self.shape, &mut self.rng);
        self.waiting.push_back(WaitingAnswer {
            score,
            due: self
                .clock
                .saturating_add(Self::samples_of(self.cfg.reaction_ms)),
        });
        self.counters.utterances_heard += 1;
        debug!(
            heard_chars = chars,
            answer_words = answer.split_whitespace().count(),
            "sim heard text"
        );
        Ok(())
    }

    fn step(&mut self, user: &[f32]) -> Result<StepOutput, VoiceError> {
        let mut out = StepOutput::silence();
        self.step_into(user, &mut out)?;
        Ok(out)
    }

    /// Writes into the caller's buffer: a step allocates nothing but the text of a word
    /// that starts in it.
    fn step_into(&mut self, user: &[f32], out: &mut StepOutput) -> Result<(), VoiceError> {
        if user.len() != FRAME_SAMPLES {
            return Err(VoiceError::Input(format!(
                "a user frame holds {FRAME_SAMPLES} samples, got {}",
                user.len()
            )));
        }
        // A NaN or infinite sample is a broken source, not a shout: treat the frame as quiet.
        let level = rms(user);
        let level = if level.is_finite() { level } else { 0.0 };
        let user_dbfs = dbfs(level);
        let threshold = self.voice_threshold_dbfs();
        let was_active = self.vad.active();
        let user_active = self.vad.update_with_threshold(level, threshold);
        if user_active && !was_active {
            self.turn_loud_frames = 0;
            self.turn_barged_in = false;
        }
        if user_dbfs >= threshold {
            self.turn_loud_frames = self.turn_loud_frames.saturating_add(1);
        }

        let frame_start = self.clock;
        if was_active && !user_active {
            self.reply_to_spoken_turn(frame_start);
        }
        self.clock += FRAME_SAMPLES as u64;
        out.agent.clear();
        out.agent.resize(FRAME_SAMPLES, 0.0);
        out.text = None;
        let agent = &mut out.agent;
        let mut text = None;

        // The onset itself, not the detector's hangover, interrupts: a turn the user
        // finished a moment ago must not cut the answer to it.
        if self.speaking() && user_dbfs >= threshold {
            self.barge_in(agent, user_dbfs);
        } else {
            let offset = if self.speech.is_none() {
                self.start_speaking(frame_start, user_active)
            } else {
                0
            };
            text = self.speak(agent, offset);
        }

        self.recent_output_dbfs.rotate_left(1);
        self.recent_output_dbfs[ECHO_FRAMES - 1] = dbfs(rms(agent));
        out.text = text;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), VoiceError> {
        let counters = SimCounters {
            resets: self.counters.resets + 1,
            ..self.counters
        };
        *self = SimVoice::new(self.cfg.clone());
        self.counters = counters;
        Ok(())
    }

    fn status(&self) -> serde_json::Value {
        json!({
            "speaking": self.speaking(),
            "backchanneling": self.speech.as_ref().is_some_and(|s| s.kind == Utterance::Backchannel),
            "queued_words": self.queued_words(),
            "user_active": self.vad.active(),
            "utterances_heard": self.counters.utterances_heard,
            "barge_ins": self.counters.barge_ins,
            "backchannels": self.counters.backchannels,
            "resets": self.counters.resets,
            "spoken_replies": self.counters.spoken_replies,
        })
    }
}

#[cfg(test)]
mod tests {
    use creature_actors::intent;
    use creature_actors::ports::Action;

    use super::*;

    const SILENCE: [f32; FRAME_SAMPLES] = [0.0; FRAME_SAMPLES];
    /// Steps in one second.
    const STEPS_PER_SECOND: usize = 1_000 / 80;

    fn sim() -> SimVoice {
        SimVoice::new(SimConfig::default())
    }

    /// A simulator that answers typed turns only (for tests of what it does while the
    /// user talks).
    fn sim_without_replies() -> SimVoice {
        SimVoice::new(SimConfig {
            answer_speech: false,
            ..SimConfig::default()
        })
    }

    fn level(frame: &[f32]) -> f32 {
        dbfs(rms(frame))
    }

    /// A 440 Hz tone at `dbfs` RMS, standing in for a user's loud voice.
    fn tone(dbfs: f32) -> Vec<f32> {
        let amplitude = 10f32.powf(dbfs / 20.0) * std::f32::consts::SQRT_2;
        (0..FRAME_SAMPLES)
            .map(|i| {
                amplitude * (std::f32::consts::TAU * 440.0 * i as f32 / SAMPLE_RATE as f32).sin()
            })
            .collect()
    }

    /// Noise whose loudness swells at a syllable rate, like someone talking: always above
    /// the voice threshold.
    fn talking(frame_index: usize, rng: &mut Rng) -> Vec<f32> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (frame_index * FRAME_SAMPLES + i) as f32 / SAMPLE_RATE as f32;
                let swell = 0.6 + 0.4 * (std::f32::consts::TAU * 4.0 * t).sin();
                0.25 * swell * rng.signed()
            })
            .collect()
    }

    /// Step with silence until the creature has said everything; returns each step's output.
    fn listen(voice: &mut SimVoice, max_steps: usize) -> Vec<StepOutput> {
        let mut outputs = Vec::new();
        for _ in 0..max_steps {
            outputs.push(voice.step(&SILENCE).expect("a well-formed frame"));
            if voice.speech.is_none() && voice.waiting.is_empty() {
                break;
            }
        }
        outputs
    }

    /// Step with `steps` frames of silence, whatever the creature does.
    fn quiet(voice: &mut SimVoice, steps: usize) -> Vec<StepOutput> {
        (0..steps)
            .map(|_| voice.step(&SILENCE).expect("a well-formed frame"))
            .collect()
    }

    fn said(outputs: &[StepOutput]) -> String {
        outputs.iter().filter_map(|o| o.text.as_deref()).collect()
    }

    #[test]
    fn bring_me_the_cup_is_answered_with_a_commitment_after_the_reaction_time() {
        let mut voice = sim();
        voice.hear_text("bring me the cup").expect("heard");
        let outputs = listen(&mut voice, 10 * STEPS_PER_SECOND);
        let first = outputs
            .iter()
            .position(|o| o.text.is_some())
            .expect("an answer");
        assert_eq!(first, 2, "160 ms reaction is two 80 ms steps of silence");
        assert!(
            outputs[..2]
                .iter()
                .all(|o| o.agent.iter().all(|&s| s == 0.0)),
            "quiet before answering"
        );
        assert_eq!(outputs[first].text.as_deref(), Some(" Okay,"));
        let text = said(&outputs);
        assert_eq!(text, " Okay, I'll bring you the cup.");
        let task = intent::parse(&text).expect("the monologue reads a task");
        assert_eq!((task.action, task.object.as_str()), (Action::Bring, "cup"));
        assert!(
            outputs.len() < 4 * STEPS_PER_SECOND,
            "answered within a few seconds"
        );
        assert!(
            outputs
                .iter()
                .filter_map(|o| o.text.as_deref())
                .all(|p| p.starts_with(' '))
        );
    }

    #[test]
    fn a_nine_word_answer_takes_about_three_seconds() {
        let mut voice = sim();
        voice
            .hear_text("put the red book on the shelf")
            .expect("heard");
        let outputs = listen(&mut voice, 10 * STEPS_PER_SECOND);
        let text = said(&outputs);
        assert_eq!(text, " Alright, I'll put the red book on the shelf.");
        assert_eq!(text.split_whitespace().count(), 9);
        let first = outputs
            .iter()
            .position(|o| o.text.is_some())
            .expect("speech");
        let last = outputs
            .iter()
            .rposition(|o| o.agent.iter().any(|&s| s != 0.0))
            .expect("speech");
        let seconds = (last + 1 - first) as f32 * 0.08;
        assert!((2.0..=4.5).contains(&seconds), "took {seconds} s");
    }

    #[test]
    fn loudness_follows_syllables_and_idle_is_exact_silence() {
        let mut voice = sim();
        for output in listen(&mut voice, 5) {
            assert_eq!(output.agent.len(), FRAME_SAMPLES);
            assert!(
                output.agent.iter().all(|&s| s == 0.0),
                "idle is exact silence"
            );
        }
        voice
            .hear_text("Hello there, how are you today?")
            .expect("heard");
        let outputs = listen(&mut voice, 10 * STEPS_PER_SECOND);
        let first = outputs
            .iter()
            .position(|o| o.text.is_some())
            .expect("speech");
        let last = outputs
            .iter()
            .rposition(|o| o.agent.iter().any(|&s| s != 0.0))
            .expect("speech");
        let speaking: Vec<f32> = outputs[first..=last]
            .iter()
            .map(|o| level(&o.agent))
            .collect();
        let loudest = speaking.iter().copied().fold(f32::MIN, f32::max);
        let quietest = speaking.iter().copied().fold(f32::MAX, f32::min);
        assert!(
            loudest - quietest > 20.0,
            "mouth opens and closes: {quietest}..{loudest} dBFS"
        );
        let stretch: Vec<f32> = outputs[first..=last]
            .iter()
            .flat_map(|o| o.agent.iter().copied())
            .collect();
        assert!(
            level(&stretch) > -30.0,
            "speech is clearly audible: {} dBFS",
            level(&stretch)
        );
        let voiced = speaking.iter().filter(|&&db| db > -30.0).count();
        assert!(
            voiced * 2 > speaking.len(),
            "most speaking frames are loud: {speaking:?}"
        );
        assert!(
            loudest > -24.0 && loudest < -6.0,
            "loudest frame {loudest} dBFS"
        );
        for output in &outputs {
            assert_eq!(output.agent.len(), FRAME_SAMPLES);
            assert!(output.agent.iter().all(|s| s.is_finite() && s.abs() < 0.9));
        }
        assert!(
            outputs
                .last()
                .is_some_and(|o| o.agent.iter().all(|&s| s == 0.0)),
            "silent when done"
        );
    }

    #[test]
    fn a_loud_user_barges_in_within_one_step() {
        let mut voice = sim();
        voice.hear_text("bring me the cup").expect("heard");
        voice.hear_text("hello").expect("heard");
        let mut outputs = Vec::new();
        while outputs.len() < 6 {
            outputs.push(voice.step(&SILENCE).expect("step"));
        }
        assert!(
            voice.speaking() && level(&outputs[5].agent) > -40.0,
            "mid-answer"
        );
        let before = said(&outputs);

        let interrupted = voice.step(&tone(-15.0)).expect("step");
        assert!(interrupted.text.is_none());
        assert!(
            level(&interrupted.agent) < -30.0,
            "mouth closes at once: {}",
            level(&interrupted.agent)
        );
        assert!(
            interrupted.agent[BARGE_IN_FADE_SAMPLES..]
                .iter()
                .all(|&s| s == 0.0),
            "silent after a 5 ms fade"
        );
        assert!(!voice.speaking());
        assert_eq!(voice.counters().barge_ins, 1);
        assert_eq!(voice.queued_words(), 0, "the waiting answer is dropped too");

        let after = listen(&mut voice, 3 * STEPS_PER_SECOND);
        assert_eq!(said(&after), "", "nothing more is said");
        assert!(after.iter().all(|o| o.agent.iter().all(|&s| s == 0.0)));
        assert!(
            before.len() < " Okay, I'll bring you the cup.".len(),
            "answer was cut: {before:?}"
        );
    }

    #[test]
    fn the_creatures_own_echo_does_not_barge_in() {
        let mut voice = sim();
        voice.hear_text("put the book on the shelf").expect("heard");
        let mut echo = SILENCE.to_vec();
        let mut outputs = Vec::new();
        for _ in 0..10 * STEPS_PER_SECOND {
            let output = voice.step(&echo).expect("step");
            // The speakerphone brings the last frame back 20 dB down.
            echo = output.agent.iter().map(|s| s * 0.1).collect();
            outputs.push(output);
            if voice.speech.is_none() && voice.waiting.is_empty() {
                break;
            }
        }
        assert_eq!(voice.counters().barge_ins, 0);
        assert_eq!(said(&outputs), " Alright, I'll put the book on the shelf.");
        assert_eq!(voice.counters().backchannels, 0);
    }

    #[test]
    fn long_user_speech_gets_exactly_one_soft_backchannel() {
        let mut voice = sim_without_replies();
        let mut rng = Rng::new(5);
        let mut outputs = Vec::new();
        for i in 0..3 * STEPS_PER_SECOND + 1 {
            outputs.push(voice.step(&talking(i, &mut rng)).expect("step"));
        }
        outputs.extend(listen(&mut voice, STEPS_PER_SECOND));
        let pieces: Vec<&str> = outputs.iter().filter_map(|o| o.text.as_deref()).collect();
        assert_eq!(pieces, [" mm-hm"]);
        let first = outputs
            .iter()
            .position(|o| o.text.is_some())
            .expect("backchannel");
        let talked_ms = (first + 1) * 80;
        assert!(
            talked_ms >= 2_500,
            "not before 2.5 s of talk (after {talked_ms} ms)"
        );
        let loudest = outputs
            .iter()
            .map(|o| level(&o.agent))
            .fold(f32::MIN, f32::max);
        assert!(
            loudest > -40.0 && loudest < -15.0,
            "audible but soft: {loudest} dBFS"
        );
        assert_eq!(voice.counters().backchannels, 1);
        assert_eq!(
            voice.counters().barge_ins,
            0,
            "talking over a backchannel is no barge-in"
        );
    }

    #[test]
    fn short_user_speech_gets_no_backchannel() {
        let mut voice = sim_without_replies();
        let mut rng = Rng::new(5);
        let mut outputs = Vec::new();
        for i in 0..STEPS_PER_SECOND {
            outputs.push(voice.step(&talking(i, &mut rng)).expect("step"));
        }
        outputs.extend(listen(&mut voice, 2 * STEPS_PER_SECOND));
        assert!(
            outputs
                .iter()
                .all(|o| o.text.is_none() && o.agent.iter().all(|&s| s == 0.0))
        );
        assert_eq!(voice.counters().backchannels, 0);
    }

    #[test]
    fn a_spoken_turn_gets_a_short_reply_after_the_reply_delay() {
        let mut voice = SimVoice::new(SimConfig {
            reply_delay_ms: 400,
            ..SimConfig::default()
        });
        let mut rng = Rng::new(3);
        let mut outputs = Vec::new();
        for i in 0..10 {
            outputs.push(voice.step(&talking(i, &mut rng)).expect("step"));
        }
        // Steps 10, 11, 12 are the detector's hangover; it lets go on step 13, and the
        // reply starts 400 ms (five steps) later, on the first sample of step 18.
        outputs.extend(quiet(&mut voice, 5 * STEPS_PER_SECOND));
        let first = outputs
            .iter()
            .position(|o| o.agent.iter().any(|&s| s != 0.0))
            .expect("a reply");
        assert_eq!(first, 18);
        assert!(
            outputs[18].agent[..48].iter().any(|&s| s != 0.0),
            "from the step's first samples (2 ms)"
        );
        assert_eq!(said(&outputs), " I hear you.");
        assert_eq!(voice.counters().spoken_replies, 1);
        assert_eq!(voice.status()["spoken_replies"], 1);

        // The next spoken turn gets the next line.
        for i in 0..10 {
            voice.step(&talking(i, &mut rng)).expect("step");
        }
        assert_eq!(
            said(&quiet(&mut voice, 5 * STEPS_PER_SECOND)),
            " Mm, tell me more."
        );
    }

    #[test]
    fn a_click_an_interruption_or_a_switched_off_setting_gets_no_spoken_reply() {
        // One loud frame is a click, not a turn.
        let mut voice = sim();
        voice.step(&tone(-15.0)).expect("step");
        assert_eq!(said(&quiet(&mut voice, 3 * STEPS_PER_SECOND)), "");
        assert!(
            quiet(&mut voice, STEPS_PER_SECOND)
                .iter()
                .all(|o| o.agent.iter().all(|&s| s == 0.0))
        );

        // A turn that interrupted the creature: it yields the floor.
        let mut voice = sim();
        voice
            .hear_text("put the red book on the shelf")
            .expect("heard");
        for _ in 0..8 {
            voice.step(&SILENCE).expect("step");
        }
        assert!(voice.speaking());
        let mut rng = Rng::new(4);
        for i in 0..10 {
            voice.step(&talking(i, &mut rng)).expect("step");
        }
        assert_eq!(voice.counters().barge_ins, 1);
        assert_eq!(said(&quiet(&mut voice, 3 * STEPS_PER_SECOND)), "");

        // Switched off.
        let mut voice = sim_without_replies();
        for i in 0..10 {
            voice.step(&talking(i, &mut rng)).expect("step");
        }
        assert_eq!(said(&quiet(&mut voice, 3 * STEPS_PER_SECOND)), "");
        assert_eq!(voice.counters().spoken_replies, 0);
    }

    #[test]
    fn an_answer_waits_for_the_user_to_finish_talking() {
        let mut voice = sim();
        let mut rng = Rng::new(2);
        voice.hear_text("open the door").expect("heard");
        for i in 0..10 {
            let output = voice.step(&talking(i, &mut rng)).expect("step");
            assert!(output.text.is_none(), "not over the user");
        }
        let outputs = listen(&mut voice, 5 * STEPS_PER_SECOND);
        assert_eq!(said(&outputs), " Sure, I'll open the door.");
        assert_eq!(voice.counters().barge_ins, 0);
    }

    #[test]
    fn queued_answers_play_in_order() {
        let mut voice = sim();
        voice.hear_text("hello").expect("heard");
        voice.hear_text("open the door").expect("heard");
        assert_eq!(voice.status()["queued_words"], 10);
        let outputs = listen(&mut voice, 10 * STEPS_PER_SECOND);
        assert_eq!(
            said(&outputs),
            " Hello! Nice to see you. Sure, I'll open the door."
        );
        let status = voice.status();
        assert_eq!(status["utterances_heard"], 2);
        assert_eq!(status["queued_words"], 0);
        assert_eq!(status["speaking"], false);
    }

    #[test]
    fn status_reports_speaking_and_reset_forgets_the_conversation() {
        let mut voice = sim();
        voice.hear_text("bring me the cup").expect("heard");
        for _ in 0..4 {
            voice.step(&SILENCE).expect("step");
        }
        let status = voice.status();
        assert_eq!(status["speaking"], true);
        assert_eq!(status["user_active"], false);
        assert_eq!(status["utterances_heard"], 1);
        voice.step(&tone(-15.0)).expect("step");
        assert_eq!(voice.status()["user_active"], true);

        voice.hear_text("hello").expect("heard");
        voice.reset().expect("reset");
        let status = voice.status();
        assert_eq!(status["speaking"], false);
        assert_eq!(status["queued_words"], 0);
        assert_eq!(status["user_active"], false);
        assert_eq!(status["barge_ins"], 1, "counters outlive a reset");
        assert_eq!(status["resets"], 1);
        let outputs = listen(&mut voice, 2 * STEPS_PER_SECOND);
        assert!(
            outputs
                .iter()
                .all(|o| o.text.is_none() && o.agent.iter().all(|&s| s == 0.0))
        );
    }

    #[test]
    fn the_same_seed_and_input_give_the_same_voice() {
        let run = |seed: u64| {
            let mut voice = SimVoice::new(SimConfig {
                seed,
                ..SimConfig::default()
            });
            let mut rng = Rng::new(1);
            let mut audio = Vec::new();
            let mut text = String::new();
            voice
                .hear_text("Hello! Please pick up the red ball.")
                .expect("heard");
            for i in 0..8 * STEPS_PER_SECOND {
                let user = if (60..100).contains(&i) {
                    talking(i, &mut rng)
                } else {
                    SILENCE.to_vec()
                };
                let output = voice.step(&user).expect("step");
                audio.extend(output.agent);
                text.extend(output.text);
            }
            (audio, text)
        };
        let (audio, text) = run(7);
        assert_eq!((audio.clone(), text.clone()), run(7));
        assert!(text.contains("pick up the red ball"));
        assert_ne!(audio, run(8).0, "the seed matters");
    }

    #[test]
    fn bad_input_is_refused_or_answered_never_a_panic() {
        let mut voice = sim();
        assert!(matches!(voice.hear_text(""), Err(VoiceError::Input(_))));
        assert!(matches!(
            voice.hear_text(" \n\t"),
            Err(VoiceError::Input(_))
        ));
        assert!(matches!(
            voice.hear_text(&"x".repeat(501)),
            Err(VoiceError::Input(_))
        ));
        let garbage: String = (0..500)
            .map(|i| char::from(b'!' + (i * 37 % 90) as u8))
            .collect();
        voice.hear_text(&garbage).expect("garbage gets an answer");
        voice
            .hear_text("茶を持ってきて 🙂 bring me the 茶!")
            .expect("unicode");
        voice
            .hear_text(&"é".repeat(500))
            .expect("500 two-byte characters");
        for frame in [
            vec![],
            vec![0.0; FRAME_SAMPLES - 1],
            vec![0.0; FRAME_SAMPLES + 1],
        ] {
            assert!(matches!(voice.step(&frame), Err(VoiceError::Input(_))));
        }
        let broken = [f32::NAN, f32::INFINITY].repeat(FRAME_SAMPLES / 2);
        let output = voice
            .step(&broken)
            .expect("a broken frame is quiet, not an error");
        assert_eq!(output.agent.len(), FRAME_SAMPLES);
        for _ in 0..MAX_WAITING_ANSWERS {
            let _ = voice.hear_text("hello");
        }
        assert!(
            matches!(voice.hear_text("hello"), Err(VoiceError::Input(_))),
            "the queue is bounded"
        );
        for output in listen(&mut voice, 120 * STEPS_PER_SECOND) {
            assert_eq!(output.agent.len(), FRAME_SAMPLES);
            assert!(output.agent.iter().all(|s| s.is_finite() && s.abs() < 0.9));
        }
        assert_eq!(voice.queued_words(), 0, "everything was eventually said");
    }

    #[test]
    fn extreme_settings_still_speak_sanely() {
        for cfg in [
            SimConfig {
                words_per_second: 20.0,
                pitch_hz: 1_000.0,
                reaction_ms: 0,
                ..SimConfig::default()
            },
            SimConfig {
                words_per_second: f32::NAN,
                pitch_hz: -5.0,
                reaction_ms: u64::MAX,
                ..SimConfig::default()
            },
            SimConfig {
                words_per_second: 0.2,
                pitch_hz: 50.0,
                ..SimConfig::default()
            },
        ] {
            let mut voice = SimVoice::new(cfg);
            voice.hear_text("bring me the cup").expect("heard");
            for _ in 0..5 * STEPS_PER_SECOND {
                let output = voice.step(&SILENCE).expect("step");
                assert!(output.agent.iter().all(|s| s.is_finite() && s.abs() < 0.9));
            }
        }
    }
}
