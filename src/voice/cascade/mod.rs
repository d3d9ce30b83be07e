//! The `cascade` voice backend: the seed's Lab 5a pipeline (voice activity -> speech to
//! text -> LLM -> text to speech) built from Kyutai's streaming STT and TTS on the same
//! Mimi codec and 80 ms frames as Moshi, stepped in the same fast loop and measured by the
//! same turn tracker, so the two designs can be compared turn for turn.
//!
//! Each step, on the model thread:
//!
//! 1. The user's frame goes through the STT (always: it is a streaming model). Its words
//!    arrive `audio_delay` after the audio that held them.
//! 2. The end of the user's turn is decided from the frames: the STT's pause prediction
//!    where the checkpoint has it ([`EndOfTurn::PausePrediction`]), or `silence_ms` of
//!    quiet after the last loud frame. The transcript is final once the STT's delay has
//!    passed over the last loud frame; after the end of turn the rest of that delay is run
//!    on silence ahead of real time (`stt_flush_steps_per_frame` extra steps a frame), as
//!    Kyutai's Unmute flushes its STT.
//! 3. The transcript goes to the LLM (an OpenAI-compatible endpoint, streamed, on its own
//!    runtime: [`llm`]) or, without one, to the built-in responder (the `sim` voice's
//!    answers, after a fixed `responder_delay_ms` of stream time, a stated stand-in for
//!    an LLM's time to first token).
//! 4. The reply's words go to the TTS as they arrive ([`speak`]); its frames are played
//!    one per step, and each word goes to the inner monologue as the TTS starts saying it,
//!    exactly as Moshi's text does, so the creature's words still become deeds.
//!
//! The user talking over the reply ([`CascadeConfig::barge_in_frames`] loud frames) stops
//! the TTS on that very step and cancels the LLM request. Talking again before the reply
//! began cancels it too, and the words heard stay with the turn that goes on.
//!
//! # Timing
//!
//! Stage boundaries are steps (stream time), so the stages add up exactly to the loop's
//! "mouth closes -> voice starts" (`gap_ms`) of the same turn: mouth closes (after the
//! last loud frame) -> end of turn decided (`turn_wait`) -> transcript final (`stt_final`)
//! -> the reply's first token on the model thread (`llm_first_token`) -> the reply's
//! first loud frame (`tts_first_audio`). The LLM's own time to first token is also kept in
//! wall time (`llm_wall_ms`). With an endpoint, the LLM runs in wall time: a `--fast` run
//! (virtual clock) then counts its wait in however many steps pass meanwhile; the built-in
//! responder counts in steps and gives the same figures on both clocks.

pub mod config;
pub mod llm;
pub mod speak;

use std::time::Instant;

use creature_actors::audio::{dbfs, rms};
use creature_actors::{FRAME_SAMPLES, StepOutput, TurnStages, VoiceError, VoiceModel};
use serde_json::json;
use tracing::{info, warn};

pub use config::{CascadeArgs, CascadeConfig, EndOfTurn};
use llm::{ChatSettings, LlmEvent, LlmTurns, Role};
use speak::{Speaker, SpeakerSampling};

use super::moshi::stt::Stt;
use super::moshi::{lm_dtype, open_device, tts};
use super::rules;

/// Loud frames a turn needs before it is answered (160 ms: not a cough or a knock).
const MIN_TURN_FRAMES: u32 = 2;
/// What the creature says to a turn whose words it did not catch.
const NOT_CAUGHT: &str = "Sorry, I didn't catch that.";
/// STT steps after which the STT starts afresh at the next quiet moment (20 minutes),
/// well inside its position limit.
const STT_RESET_STEPS: u64 = 15_000;
/// Longest transcript kept for one turn, in characters.
const MAX_TRANSCRIPT_CHARS: usize = 2_000;
/// A frame of silence, for flushing the STT.
const SILENT_FRAME: [f32; FRAME_SAMPLES] = [0.0; FRAME_SAMPLES];
/// dBFS of a silent frame as [`dbfs`] reports it.
const SILENCE_DBFS: f32 = -120.0;

/// The reply to one user turn, from the end of the turn until its audio is out.
#[derive(Debug)]
struct Reply {
    id: u64,
    /// Steps: the user's last loud frame + 1 ("mouth closes"), the end of turn, and the
    /// transcript's final step; `None` for a typed utterance (no turn to time).
    mouth_closed: Option<u64>,
    end_of_turn: u64,
    final_at: u64,
    /// The transcript, once final.
    transcript: Option<String>,
    sent_at: Option<Instant>,
    /// When the built-in responder's answer is due, and the answer.
    builtin: Option<(u64, String)>,
    first_token: Option<u64>,
    llm_wall_ms: f64,
    /// Text of the reply not yet cut into words, and the whole reply so far.
    partial: String,
    said: String,
    llm_done: bool,
    /// The TTS has been started for this reply.
    speaking: bool,
    audible: bool,
}

/// Kyutai STT + an LLM (or the built-in responder) + Kyutai TTS, behind the `VoiceModel`
/// port.
pub struct CascadeVoice {
    stt: Stt,
    speaker: Speaker,
    llm: Option<LlmTurns>,
    settings: CascadeConfig,
    /// The loop's thresholds: user voice, and the agent speaking.
    user_dbfs: f32,
    agent_dbfs: f32,
    end_of_turn: EndOfTurn,
    step: u64,
    /// The user's turn being heard: words so far, loud frames, the last loud step.
    heard: String,
    loud_frames: u32,
    last_loud: Option<u64>,
    loud_run: u32,
    /// Levels of the last two output frames (dBFS), newest last, for the echo guard.
    out_levels: [f32; 2],
    reply: Option<Reply>,
    next_id: u64,
    /// Exchanges for the LLM's context, oldest first.
    history: Vec<(Role, String)>,
    stages: Option<TurnStages>,
    said: String,
    // Counters for the status.
    turns: u64,
    answered: u64,
    barge_ins: u64,
    cancelled: u64,
    llm_failures: u64,
    words_heard: u64,
    last_transcript: String,
    last_reply: String,
    last_stages: Option<TurnStages>,
    last_error: Option<String>,
    stt_resets: u64,
    /// STT steps run on silence ahead of real time to flush its delay.
    flushed_steps: u64,
}

impl std::fmt::Debug for CascadeVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CascadeVoice")
            .field("step", &self.step)
            .field("turns", &self.turns)
            .finish()
    }
}

impl CascadeVoice {
    /// Load both checkpoints and warm them up. `user_dbfs` and `agent_dbfs` are the voice
    /// loop's thresholds, so the cascade's idea of "loud" is the loop's.
    /// `llm` is where the replies come from ([`CascadeConfig::llm_endpoint`]): an endpoint,
    /// its model and the variable holding its key; `None`: the built-in responder.
    pub fn load(
        settings: &CascadeConfig,
        llm: Option<(String, String, String)>,
        user_dbfs: f32,
        agent_dbfs: f32,
    ) -> Result<CascadeVoice, VoiceError> {
        settings
            .check()
            .map_err(|e| VoiceError::Input(e.to_string()))?;
        let need = |dir: &Option<std::path::PathBuf>, key: &str| {
            dir.clone().ok_or_else(|| {
                VoiceError::Input(format!(
                    "the cascade backend needs [voice.cascade] {key} (write tiny ones with `creature moshi tiny --kind stt|tts DIR`)"
                ))
            })
        };
        let stt_dir = need(&settings.stt_dir, "stt_dir")?;
        let tts_dir = need(&settings.tts_dir, "tts_dir")?;
        let device = open_device(settings.device)?;
        let dtype = lm_dtype(&device, settings.dtype);
        let started = Instant::now();
        let mut stt = Stt::load(&stt_dir, &device, dtype)?;
        let checkpoint = tts::load_tts(&tts_dir, settings.tts_voice.as_deref(), &device, dtype)?;
        let speaker = Speaker::new(
            checkpoint,
            SpeakerSampling {
                temperature: settings.tts_temperature,
                top_k: settings.tts_top_k,
                seed: settings.seed,
            },
            settings.tts_steps_per_frame,
            settings.tts_lookahead_frames,
        );
        let has_heads = stt.config().extra_heads_num_heads.unwrap_or(0) > settings.pause_head;
        let end_of_turn = match settings.end_of_turn {
            EndOfTurn::Auto if has_heads => EndOfTurn::PausePrediction,
            EndOfTurn::Auto => EndOfTurn::Silence,
            EndOfTurn::PausePrediction if !has_heads => {
                return Err(VoiceError::Input(format!(
                    "[voice.cascade] end_of_turn = \"pause_prediction\" needs the STT's voice-activity head {} and {} has {}",
                    settings.pause_head,
                    stt_dir.display(),
                    stt.config().extra_heads_num_heads.unwrap_or(0)
                )));
            }
            other => other,
        };
        // Warm-up: one STT step (the TTS warms up on its first reply).
        stt.step(&[0.0; FRAME_SAMPLES])?;
        stt.reset()?;
        let endpoint = llm.as_ref().map(|(url, _, _)| url.clone());
        let llm = match llm {
            None => None,
            Some((url, model, key_env)) => {
                let api_key = std::env::var(key_env.trim()).ok().filter(|k| !k.is_empty());
                Some(LlmTurns::start(ChatSettings {
                    base_url: url.trim().trim_end_matches('/').to_string(),
                    model,
                    api_key,
                    timeout: std::time::Duration::from_secs_f64(settings.llm_timeout_secs),
                    max_tokens: settings.llm_max_tokens,
                    temperature: settings.llm_temperature,
                    system_prompt: settings.system_prompt.clone(),
                })?)
            }
        };
        info!(
            stt = %stt_dir.display(),
            tts = %tts_dir.display(),
            end_of_turn = ?end_of_turn,
            llm = endpoint.as_deref().unwrap_or("built-in responder"),
            load_ms = started.elapsed().as_millis() as u64,
            "cascade loaded"
        );
        Ok(CascadeVoice {
            stt,
            speaker,
            llm,
            settings: settings.clone(),
            user_dbfs,
            agent_dbfs,
            end_of_turn,
            step: 0,
            heard: String::new(),
            loud_frames: 0,
            last_loud: None,
            loud_run: 0,
            out_levels: [SILENCE_DBFS; 2],
            reply: None,
            next_id: 1,
            history: Vec::new(),
            stages: None,
            said: String::new(),
            turns: 0,
            answered: 0,
            barge_ins: 0,
            cancelled: 0,
            llm_failures: 0,
            words_heard: 0,
            last_transcript: String::new(),
            last_reply: String::new(),
            last_stages: None,
            last_error: None,
            stt_resets: 0,
            flushed_steps: 0,
        })
    }

    /// How the end of a turn is decided here (`auto` resolved).
    pub fn end_of_turn(&self) -> EndOfTurn {
        self.end_of_turn
    }

    /// Drop the reply under way (the user barged in or went on talking): the TTS stops,
    /// the LLM request is cancelled. A reply not yet spoken gives its words back to the
    /// turn that goes on.
    fn cancel_reply(&mut self) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        if let Some(llm) = &self.llm
            && reply.sent_at.is_some()
            && !reply.llm_done
        {
            llm.cancel(reply.id);
        }
        if reply.speaking {
            self.speaker.stop();
            self.barge_ins += 1;
            if !reply.said.trim().is_empty() {
                // What was said before the cut is what the user heard.
                self.remember(Role::Assistant, reply.said.trim().to_string());
            }
        } else {
            self.cancelled += 1;
            if let Some(mut transcript) = reply.transcript {
                if !self.heard.is_empty() {
                    transcript.push(' ');
                    transcript.push_str(&self.heard);
                }
                self.heard = transcript;
            }
            // The turn goes on, and what was said of it before counts.
            if reply.mouth_closed.is_some() {
                self.loud_frames = self.loud_frames.max(MIN_TURN_FRAMES);
            }
        }
    }

    fn remember(&mut self, role: Role, text: String) {
        self.history.push((role, text));
        let keep = self.settings.history_turns * 2;
        if self.history.len() > keep {
            let extra = self.history.len() - keep;
            self.history.drain(..extra);
        }
    }

    /// The user's turn ended on this step: a reply starts waiting for the transcript.
    fn end_turn(&mut self, last_loud: u64) {
        let id = self.next_id;
        self.next_id += 1;
        self.turns += 1;
        let delay = self.stt.config().delay_steps() as u64;
        self.reply = Some(Reply {
            id,
            mouth_closed: Some(last_loud + 1),
            end_of_turn: self.step,
            // The word that ended at the last loud frame comes out `delay` steps later,
            // and is closed by the step after it.
            final_at: (last_loud + 1 + delay).max(self.step),
            transcript: None,
            sent_at: None,
            builtin: None,
            first_token: None,
            llm_wall_ms: 0.0,
            partial: String::new(),
            said: String::new(),
            llm_done: false,
            speaking: false,
            audible: false,
        });
        self.loud_frames = 0;
        self.last_loud = None;
    }

    /// After the end of a turn, run the STT's remaining delay on silence ahead of real
    /// time (at most `stt_flush_steps_per_frame` steps this frame), as Kyutai's Unmute
    /// does, so the last words come out now rather than when the audio clock gets there.
    /// The STT's stream then holds that much more silence than the microphone gave.
    fn flush_stt(&mut self, step: u64) -> Result<(), VoiceError> {
        let Some(reply) = self.reply.as_ref() else {
            return Ok(());
        };
        if reply.transcript.is_some() || step >= reply.final_at {
            return Ok(());
        }
        let due = (reply.final_at - step).min(self.settings.stt_flush_steps_per_frame as u64);
        for _ in 0..due {
            let heard = self.stt.step(&SILENT_FRAME)?;
            self.flushed_steps += 1;
            for word in heard.words {
                self.hear_word(&word.text);
            }
            if let Some(reply) = self.reply.as_mut() {
                reply.final_at -= 1;
            }
        }
        Ok(())
    }

    /// A word the STT closed, onto the turn being heard.
    fn hear_word(&mut self, word: &str) {
        self.words_heard += 1;
        if self.heard.len() + word.len() < MAX_TRANSCRIPT_CHARS {
            if !self.heard.is_empty() {
                self.heard.push(' ');
            }
            self.heard.push_str(word);
        }
    }

    /// The transcript is final: ask for the reply.
    fn ask(&mut self, transcript: String) {
        let step = self.step;
        let delay = self.settings.responder_delay_frames();
        let history: Vec<(Role, String)> = self.history.clone();
        let Some(reply) = self.reply.as_mut() else {
            return;
        };
        reply.transcript = Some(transcript.clone());
        self.last_transcript = transcript.clone();
        if transcript.trim().is_empty() {
            // Voice but no words: nothing to ask an LLM; the creature asks again.
            reply.builtin = Some((step, NOT_CAUGHT.to_string()));
            return;
        }
        match &self.llm {
            Some(llm) => {
                let mut lines = history;
                lines.push((Role::User, transcript.clone()));
                reply.sent_at = Some(Instant::now());
                llm.ask(reply.id, lines);
            }
            None => reply.builtin = Some((step + delay, rules::answer(&transcript))),
        }
        self.remember(Role::User, transcript);
    }

    /// Take what the LLM sent for the current reply (pieces of another are stale).
    fn poll_llm(&mut self) {
        let Some(llm) = &self.llm else {
            return;
        };
        while let Some(event) = llm.poll() {
            let Some(reply) = self.reply.as_mut() else {
                continue;
            };
            match event {
                LlmEvent::Piece { id, text } if id == reply.id => {
                    if reply.first_token.is_none() {
                        reply.first_token = Some(self.step);
                        reply.llm_wall_ms = reply
                            .sent_at
                            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
                    }
                    reply.partial.push_str(&text);
                }
                LlmEvent::Done { id } if id == reply.id => reply.llm_done = true,
                LlmEvent::Failed { id, why } if id == reply.id => {
                    warn!(%why, "the cascade's LLM failed; the built-in responder answers");
                    self.llm_failures += 1;
                    self.last_error = Some(format!("LLM: {why}"));
                    let transcript = reply.transcript.clone().unwrap_or_default();
                    reply.partial = rules::answer(&transcript);
                    reply.first_token.get_or_insert(self.step);
                    reply.llm_done = true;
                }
                _ => {}
            }
        }
    }

    /// Move the reply's text on to the TTS: whole words as they arrive, the rest at the end.
    fn feed_speaker(&mut self) {
        let step = self.step;
        let Some(reply) = self.reply.as_mut() else {
            return;
        };
        if let Some((due, answer)) = &reply.builtin
            && step >= *due
            && reply.first_token.is_none()
        {
            reply.partial = answer.clone();
            reply.first_token = Some(step);
            reply.llm_done = true;
        }
        if reply.first_token.is_none() {
            return;
        }
        if !reply.speaking {
            self.speaker.start();
            reply.speaking = true;
        }
        // Whole words: everything up to the last whitespace, or all of it when done.
        let cut = if reply.llm_done {
            reply.partial.len()
        } else {
            reply
                .partial
                .rfind(char::is_whitespace)
                .map_or(0, |i| i + 1)
        };
        if cut > 0 {
            let text: String = reply.partial.drain(..cut).collect();
            for word in text.split_whitespace() {
                self.speaker.push_word(word);
            }
            reply.said.push_str(&text);
            if !text.ends_with(char::is_whitespace) {
                reply.said.push(' ');
            }
        }
        if reply.llm_done && reply.partial.is_empty() {
            self.speaker.finish();
        }
    }

    fn step_frame(&mut self, user: &[f32], out: &mut StepOutput) -> Result<(), VoiceError> {
        if user.len() != FRAME_SAMPLES {
            return Err(VoiceError::Input(format!(
                "a frame holds {FRAME_SAMPLES} samples, got {}",
                user.len()
            )));
        }
        let step = self.step;
        // The echo guard: while its own voice is on the way out, the creature's echo in
        // the microphone is not the user.
        let echo = self.out_levels[0].max(self.out_levels[1]);
        let threshold = if echo <= SILENCE_DBFS {
            self.user_dbfs
        } else {
            self.user_dbfs.max(echo - self.settings.barge_in_margin_db)
        };
        let loud = dbfs(rms(user)) >= threshold;
        self.loud_run = if loud { self.loud_run + 1 } else { 0 };

        // The user talks over the reply, or goes on before it began: it is dropped.
        if self.loud_run >= self.settings.barge_in_frames && self.reply.is_some() {
            self.cancel_reply();
        }

        // 1. The STT hears every frame.
        let heard = self.stt.step(user)?;
        for word in &heard.words {
            self.hear_word(&word.text);
        }

        // 2. The end of the user's turn.
        if loud {
            self.loud_frames += 1;
            self.last_loud = Some(step);
        }
        if self.reply.is_none()
            && self.loud_frames >= MIN_TURN_FRAMES
            && let Some(last) = self.last_loud
            && turn_over(&self.settings, self.end_of_turn, step - last, &heard.pause)
        {
            self.end_turn(last);
        }
        self.flush_stt(step)?;
        if let Some(reply) = &self.reply
            && reply.transcript.is_none()
            && step >= reply.final_at
        {
            let transcript = std::mem::take(&mut self.heard);
            self.ask(transcript);
        }

        // 3. The reply: LLM pieces in, words to the TTS, the TTS run ahead.
        self.poll_llm();
        self.feed_speaker();
        self.said.clear();
        let mut said = std::mem::take(&mut self.said);
        let advanced = self.speaker.advance(&mut said);
        if let Err(e) = advanced {
            self.last_error = Some(e.to_string());
            self.reply = None;
            self.said = said;
            return Err(e);
        }
        let played = self.speaker.pop_frame(&mut out.agent);
        out.text = (!said.is_empty()).then(|| said.clone());
        self.said = said;
        let level = if played {
            dbfs(rms(&out.agent))
        } else {
            SILENCE_DBFS
        };
        self.out_levels = [self.out_levels[1], level];

        // 4. The answer's first loud frame closes the stages.
        if let Some(reply) = self.reply.as_mut() {
            if played && !reply.audible && level >= self.agent_dbfs {
                reply.audible = true;
                self.answered += 1;
                if let (Some(closed), Some(token)) = (reply.mouth_closed, reply.first_token) {
                    let ms = |from: u64, to: u64| (to.saturating_sub(from) * 80) as f64;
                    let final_step = reply.final_at.max(reply.end_of_turn);
                    let stages = TurnStages {
                        turn_wait_ms: ms(closed, reply.end_of_turn),
                        stt_final_ms: ms(reply.end_of_turn, final_step),
                        llm_first_token_ms: ms(final_step, token),
                        tts_first_audio_ms: ms(token, step),
                        llm_wall_ms: reply.llm_wall_ms,
                    };
                    self.stages = Some(stages);
                    self.last_stages = Some(stages);
                }
            }
            if reply.llm_done && reply.partial.is_empty() && !self.speaker.active() {
                // The reply is out.
                let said = reply.said.trim().to_string();
                self.last_reply = said.clone();
                self.reply = None;
                if !said.is_empty() {
                    self.remember(Role::Assistant, said);
                }
            }
        }

        if self.reply.is_none() && self.loud_frames == 0 && self.stt.steps() >= STT_RESET_STEPS {
            self.stt.reset()?;
            self.stt_resets += 1;
        }
        self.step += 1;
        Ok(())
    }
}

/// Whether the user's turn is over after `quiet` frames since their last loud one, given
/// the STT's pause probabilities of this step (`rule` is `auto` resolved).
fn turn_over(settings: &CascadeConfig, rule: EndOfTurn, quiet: u64, pause: &[f32]) -> bool {
    let predicted = rule == EndOfTurn::PausePrediction
        && quiet >= settings.min_silence_frames()
        && pause
            .get(settings.pause_head)
            .is_some_and(|p| *p >= settings.pause_threshold);
    quiet >= settings.silence_frames() || predicted
}

impl VoiceModel for CascadeVoice {
    fn backend(&self) -> &'static str {
        "cascade"
    }

    fn accepts_text(&self) -> bool {
        true
    }

    /// A typed utterance skips the STT: it is the transcript of a turn that ends now.
    fn hear_text(&mut self, text: &str) -> Result<(), VoiceError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(VoiceError::Input("nothing to hear".into()));
        }
        if text.chars().count() > rules::MAX_HEARD_CHARS {
            return Err(VoiceError::Input(format!(
                "an utterance holds at most {} characters",
                rules::MAX_HEARD_CHARS
            )));
        }
        self.cancel_reply();
        self.end_turn(self.step);
        if let Some(reply) = self.reply.as_mut() {
            reply.mouth_closed = None;
            reply.final_at = self.step;
        }
        self.ask(text.to_string());
        Ok(())
    }

    fn step(&mut self, user: &[f32]) -> Result<StepOutput, VoiceError> {
        let mut out = StepOutput::silence();
        self.step_into(user, &mut out)?;
        Ok(out)
    }

    fn step_into(&mut self, user: &[f32], out: &mut StepOutput) -> Result<(), VoiceError> {
        let result = self.step_frame(user, out);
        if result.is_err() {
            out.agent.fill(0.0);
            self.step += 1;
        }
        result
    }

    fn take_turn_stages(&mut self) -> Option<TurnStages> {
        self.stages.take()
    }

    fn reset(&mut self) -> Result<(), VoiceError> {
        self.cancel_reply();
        self.speaker.stop();
        self.heard.clear();
        self.loud_frames = 0;
        self.last_loud = None;
        self.history.clear();
        self.stt.reset()
    }

    fn status(&self) -> serde_json::Value {
        let (utterances, tts_steps, tts_stopped) = self.speaker.counts();
        json!({
            "stt": self.stt.dir().display().to_string(),
            "end_of_turn": match self.end_of_turn {
                EndOfTurn::PausePrediction => "pause_prediction",
                _ => "silence",
            },
            "stt_delay_ms": self.stt.config().delay_steps() * 80,
            "tts_delay_ms": self.speaker.audio_delay_steps() * 80,
            "llm": match &self.llm {
                Some(llm) => json!({"endpoint": llm.settings().base_url, "model": llm.settings().model}),
                None => json!({"builtin_responder_delay_ms": self.settings.responder_delay_ms}),
            },
            "turns": self.turns,
            "answered": self.answered,
            "barge_ins": self.barge_ins,
            "cancelled_replies": self.cancelled,
            "llm_failures": self.llm_failures,
            "words_heard": self.words_heard,
            "hearing": self.heard,
            "replying": self.reply.is_some(),
            "tts_utterances": utterances,
            "tts_steps": tts_steps,
            "tts_stopped": tts_stopped,
            "tts_queued_frames": self.speaker.queued_frames(),
            "stt_resets": self.stt_resets,
            "stt_flushed_steps": self.flushed_steps,
            "last_transcript": self.last_transcript,
            "last_reply": self.last_reply,
            "last_stages": self.last_stages,
            "last_error": self.last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::moshi::stt::write_tiny_stt;
    use crate::voice::moshi::tts::write_tiny_tts;

    fn tiny(dir: &std::path::Path) -> CascadeConfig {
        write_tiny_stt(&dir.join("stt"), 5).unwrap();
        write_tiny_tts(&dir.join("tts"), 9).unwrap();
        CascadeConfig {
            stt_dir: Some(dir.join("stt")),
            tts_dir: Some(dir.join("tts")),
            end_of_turn: EndOfTurn::Silence,
            ..CascadeConfig::default()
        }
    }

    fn load(c: &CascadeConfig) -> Result<CascadeVoice, VoiceError> {
        CascadeVoice::load(c, None, -42.0, -45.0)
    }

    #[test]
    fn a_turn_ends_on_silence_or_earlier_on_a_confident_pause_prediction() {
        let c = CascadeConfig::default(); // silence 480 ms (6 frames), min 160 ms, head 1, 0.6
        let sure = [0.1, 0.9, 0.2, 0.1];
        let unsure = [0.9, 0.3, 0.9, 0.9];
        for rule in [EndOfTurn::Silence, EndOfTurn::PausePrediction] {
            assert!(!turn_over(&c, rule, 5, &unsure));
            assert!(
                turn_over(&c, rule, 6, &unsure),
                "silence ends it either way"
            );
        }
        // The energy rule ignores the heads.
        assert!(!turn_over(&c, EndOfTurn::Silence, 2, &sure));
        // The prediction ends it once its head is sure and the quiet is long enough.
        assert!(!turn_over(&c, EndOfTurn::PausePrediction, 1, &sure));
        assert!(turn_over(&c, EndOfTurn::PausePrediction, 2, &sure));
        assert!(!turn_over(&c, EndOfTurn::PausePrediction, 2, &unsure));
        // A step without the heads' figures waits for the silence.
        assert!(!turn_over(&c, EndOfTurn::PausePrediction, 3, &[]));
    }

    /// Stages of the first answer to 1 s of loud noise then silence.
    fn first_stages(c: &CascadeConfig) -> TurnStages {
        let mut voice = load(c).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for i in 0..100 {
            let frame: Vec<f32> = (0..FRAME_SAMPLES)
                .map(|_| if i < 12 { noise() } else { 0.0 })
                .collect();
            voice.step(&frame).unwrap();
            if let Some(stages) = voice.take_turn_stages() {
                return stages;
            }
        }
        panic!("no answer: {}", voice.status());
    }

    #[test]
    fn the_stt_delay_is_flushed_ahead_of_real_time_after_the_end_of_turn() {
        let dir = tempfile::tempdir().unwrap();
        // The turn ends after 160 ms of quiet; the tiny STT's text lags 480 ms (6 frames),
        // so 5 frames of its delay are still to run then.
        let c = CascadeConfig {
            silence_ms: 160,
            min_silence_ms: 80,
            ..tiny(dir.path())
        };
        let waiting = first_stages(&CascadeConfig {
            stt_flush_steps_per_frame: 0,
            ..c.clone()
        });
        assert_eq!(waiting.turn_wait_ms, 80.0, "{waiting:?}");
        assert_eq!(waiting.stt_final_ms, 400.0, "{waiting:?}");
        let flushed = first_stages(&CascadeConfig {
            stt_flush_steps_per_frame: 2,
            ..c.clone()
        });
        // The 5 frames left go 3 a frame (2 flushed besides the real one): the transcript
        // is final on the frame after the end of turn.
        assert_eq!(flushed.stt_final_ms, 80.0, "2 steps a frame: {flushed:?}");
        let at_once = first_stages(&CascadeConfig {
            stt_flush_steps_per_frame: 8,
            ..c
        });
        assert_eq!(at_once.stt_final_ms, 0.0, "{at_once:?}");
        assert_eq!(at_once.llm_first_token_ms, 320.0);
    }

    #[test]
    fn missing_checkpoints_are_named_and_bad_files_name_themselves() {
        let err = load(&CascadeConfig::default()).unwrap_err().to_string();
        assert!(err.contains("stt_dir"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let mut c = tiny(dir.path());
        c.tts_dir = None;
        assert!(load(&c).unwrap_err().to_string().contains("tts_dir"));
        let c = tiny(dir.path());
        std::fs::write(dir.path().join("tts").join(tts::TTS_LM_FILE), b"garbage").unwrap();
        let err = load(&c).unwrap_err().to_string();
        assert!(err.contains(tts::TTS_LM_FILE), "{err}");
        // The tiny STT has the pause heads: `auto` uses them; a head it lacks is refused.
        let c = CascadeConfig {
            end_of_turn: EndOfTurn::Auto,
            ..tiny(dir.path())
        };
        assert_eq!(load(&c).unwrap().end_of_turn(), EndOfTurn::PausePrediction);
        let c = CascadeConfig {
            end_of_turn: EndOfTurn::PausePrediction,
            pause_head: 7,
            ..tiny(dir.path())
        };
        let err = load(&c).unwrap_err().to_string();
        assert!(err.contains("head 7"), "{err}");
    }

    #[test]
    fn a_typed_utterance_is_answered_in_words_that_reach_the_monologue() {
        let dir = tempfile::tempdir().unwrap();
        let mut voice = load(&tiny(dir.path())).unwrap();
        assert!(voice.accepts_text());
        assert!(matches!(voice.hear_text("   "), Err(VoiceError::Input(_))));
        assert!(matches!(
            voice.hear_text(&"a".repeat(rules::MAX_HEARD_CHARS + 1)),
            Err(VoiceError::Input(_))
        ));
        voice.hear_text("bring me the cup").unwrap();
        let silence = [0.0; FRAME_SAMPLES];
        let mut said = String::new();
        let mut loud = 0;
        for _ in 0..150 {
            let out = voice.step(&silence).unwrap();
            assert_eq!(out.agent.len(), FRAME_SAMPLES);
            assert!(out.agent.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
            if dbfs(rms(&out.agent)) >= -45.0 {
                loud += 1;
            }
            said.push_str(out.text.as_deref().unwrap_or(""));
        }
        assert_eq!(said.trim(), rules::answer("bring me the cup"));
        assert!(said.contains("bring"), "{said}");
        assert!(loud >= 5, "the reply is heard: {loud} loud frames");
        // A typed turn has no mouth to close: no stages.
        assert!(voice.take_turn_stages().is_none());
        let status = voice.status();
        assert_eq!(
            status["last_reply"],
            rules::answer("bring me the cup"),
            "{status}"
        );
        assert_eq!(status["replying"], false);
        assert!(matches!(voice.step(&[0.0; 7]), Err(VoiceError::Input(_))));
        voice.reset().unwrap();
    }
}

#[cfg(test)]
mod llm_down {
    use super::*;

    #[test]
    fn with_its_llm_down_the_cascade_still_answers_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        crate::voice::moshi::stt::write_tiny_stt(&dir.path().join("stt"), 5).unwrap();
        crate::voice::moshi::tts::write_tiny_tts(&dir.path().join("tts"), 9).unwrap();
        let c = CascadeConfig {
            stt_dir: Some(dir.path().join("stt")),
            tts_dir: Some(dir.path().join("tts")),
            end_of_turn: EndOfTurn::Silence,
            ..CascadeConfig::default()
        };
        let dead = (
            "http://127.0.0.1:9/v1".into(),
            "m".into(),
            "NO_SUCH_KEY".into(),
        );
        let mut voice = CascadeVoice::load(&c, Some(dead), -42.0, -45.0).unwrap();
        voice.hear_text("open the door").unwrap();
        let mut said = String::new();
        for _ in 0..400 {
            let out = voice.step(&[0.0; FRAME_SAMPLES]).unwrap();
            said.push_str(out.text.as_deref().unwrap_or(""));
            if !said.is_empty() && voice.reply.is_none() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(said.trim(), rules::answer("open the door"));
        let status = voice.status();
        assert_eq!(status["llm_failures"], 1, "{status}");
        assert!(
            status["last_error"].as_str().unwrap().contains("LLM"),
            "{status}"
        );
    }
}
