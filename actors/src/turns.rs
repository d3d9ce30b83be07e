//! Turn taking, measured in the voice loop from each step's frame stats, the same way for
//! every backend: a small state machine fed one frame at a time, that allocates nothing.
//!
//! Time here is stream time: tick `n`'s frame covers `n * 80 ms .. (n + 1) * 80 ms` of the
//! conversation, whatever the wall clock did (a real-time run and a `--fast` run of the
//! same audio give the same turns). What it measures, per user turn:
//!
//! - *response latency*: from the end of the user's voice activity (the tick at which the
//!   loop's detector lets go, after its hangover) to the first agent frame above the
//!   speaking threshold. Negative when the agent started before the detector let go (it
//!   talked into the hangover).
//! - *gap*: from the end of the user's last loud frame ("mouth closes") to that same agent
//!   frame ("voice starts"): the hangover plus the response latency.
//! - *barge-in reaction*: when the user's turn began over the speaking agent, from that
//!   onset to the first agent frame below the speaking threshold.
//! - *backchannels*: agent bursts that begin while the user talks; *overlap*: frames where
//!   both are audible.
//! - *no answer*: the user's turn ended and the agent said nothing before the user spoke
//!   again or [`NO_ANSWER_FRAMES`] passed; *talked over*: the agent talked from before the
//!   user's onset to past the end of their turn (it never yielded, so nothing answered).
//!
//! The brain's own latency (user frame due -> agent frame out, model compute excluded) is
//! measured by the loop per frame; a turn keeps that of the frame that carried its answer.

use std::time::Duration;

use serde::Serialize;

use crate::{FRAME_PERIOD, TurnStages};

/// Frames after the end of a user turn with no agent voice before it counts as
/// unanswered (5 s).
pub const NO_ANSWER_FRAMES: u64 = 62;

/// Quiet agent frames that still belong to one burst (the gap inside "mm-hm", between
/// words): a burst begins only after more quiet than this, like the detectors' hangover.
pub const AGENT_GAP_FRAMES: u32 = 3;

/// How a user turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    /// The agent's voice followed the user's turn.
    Answered,
    /// The user spoke again, or [`NO_ANSWER_FRAMES`] passed, with no agent voice.
    NoAnswer,
    /// The agent talked through the whole turn: it was already talking at the user's
    /// onset and still was when the user's activity ended (it never yielded the floor).
    TalkedOver,
}

impl TurnOutcome {
    /// As the turn tables print it.
    pub fn label(self) -> &'static str {
        match self {
            TurnOutcome::Answered => "answered",
            TurnOutcome::NoAnswer => "no answer",
            TurnOutcome::TalkedOver => "talked over",
        }
    }
}

/// One user turn and what the agent did with it. Times in milliseconds of stream time
/// (whole frames of 80 ms), except `own_ms` and `compute_ms`, which are wall time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TurnRecord {
    /// Turns measured since the loop started, this one included.
    pub index: u64,
    /// The tick whose frame held the user's onset.
    pub user_start_tick: u64,
    /// The tick of the user's last loud frame.
    pub last_voice_tick: u64,
    /// The tick at which the user's voice activity ended (after the hangover).
    pub user_end_tick: u64,
    pub outcome: TurnOutcome,
    /// The tick of the answer's first agent frame above the speaking threshold.
    pub answer_tick: Option<u64>,
    /// End of the user's activity -> the answer's first loud frame (negative: the agent
    /// started inside the hangover).
    pub response_ms: Option<f64>,
    /// The user's last loud frame ends -> the answer's first loud frame begins ("mouth
    /// closes -> voice starts"): `turn_wait_ms + response_ms`.
    pub gap_ms: Option<f64>,
    /// The user's last loud frame ends -> their activity ends: the detector's hangover,
    /// a structural wait every backend pays.
    pub turn_wait_ms: f64,
    /// The user began this turn over the speaking agent.
    pub barge_in: bool,
    /// The onset -> the first agent frame below the speaking threshold; null if the agent
    /// never went quiet during the user's turn (or there was no barge-in).
    pub barge_in_reaction_ms: Option<f64>,
    /// Agent bursts that began while the user talked.
    pub backchannels: u32,
    /// Frames in which both the user and the agent were audible, as ms.
    pub overlap_ms: f64,
    /// The brain's own latency for the answer's first frame (wall time).
    pub own_ms: Option<f64>,
    /// Model compute of the answer's first frame (wall time).
    pub compute_ms: Option<f64>,
    /// Where the answer's time went, for a backend built of stages (the `cascade`); they
    /// add up to `gap_ms`.
    pub stages: Option<TurnStages>,
}

/// One step as the turn tracker sees it.
#[derive(Debug, Clone, Copy)]
pub struct TurnFrame {
    pub tick: u64,
    /// The user's frame crossed the loop's voice threshold ([`EnergyVad::loud`]).
    ///
    /// [`EnergyVad::loud`]: crate::audio::EnergyVad::loud
    pub user_loud: bool,
    /// The loop's voice-activity detector (with its hangover) after this frame.
    pub user_active: bool,
    /// The agent's frame crossed the loop's speaking threshold.
    pub agent_loud: bool,
    /// The voice loop's barge-in flag: the user's onset over the speaking agent.
    pub barge_in: bool,
    /// The brain's own latency for this frame, and the model's compute.
    pub own: Duration,
    pub compute: Duration,
}

/// What one frame completed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TurnUpdate {
    /// A turn that is now complete (answered or not).
    pub finished: Option<TurnRecord>,
    /// A barge-in reaction measured on this frame.
    pub barge_in_reaction: Option<Duration>,
}

/// The user turn being measured.
#[derive(Debug, Clone, Copy)]
struct OpenTurn {
    start: u64,
    last_voice: u64,
    /// Set when the user's activity ends: the turn now waits for an answer.
    end: Option<u64>,
    barge_in: bool,
    /// The barge-in onset, while the agent has not yet gone quiet.
    barge_pending: bool,
    reaction_frames: Option<u64>,
    backchannels: u32,
    overlap_frames: u64,
    /// The latest agent burst began during this turn (and was counted as a backchannel).
    burst_counted: bool,
}

impl Default for TurnTracker {
    fn default() -> Self {
        Self::new()
    }
}

/// The turn state machine: feed it every step, in tick order, with [`TurnTracker::frame`].
#[derive(Debug, Clone)]
pub struct TurnTracker {
    user_was_active: bool,
    /// Quiet agent frames in a row, up to just past [`AGENT_GAP_FRAMES`].
    agent_quiet_frames: u32,
    /// Where the latest agent burst began.
    burst_start: Option<u64>,
    last_user_loud: Option<u64>,
    turn: Option<OpenTurn>,
    turns: u64,
    /// Stages the backend reported for the answer that starts on the next frame.
    stages: Option<TurnStages>,
}

impl TurnTracker {
    /// A tracker fed the loop's own detectors' verdicts ([`TurnFrame`]).
    pub fn new() -> Self {
        TurnTracker {
            user_was_active: false,
            agent_quiet_frames: AGENT_GAP_FRAMES + 1,
            burst_start: None,
            last_user_loud: None,
            turn: None,
            turns: 0,
            stages: None,
        }
    }

    /// Turns completed so far.
    pub fn turns(&self) -> u64 {
        self.turns
    }

    /// Whether a user turn is open (the user talks, or the turn waits for an answer).
    pub fn in_turn(&self) -> bool {
        self.turn.is_some()
    }

    fn ms(&self, frames: i64) -> f64 {
        frames as f64 * FRAME_PERIOD.as_secs_f64() * 1000.0
    }

    /// The backend's stages for the answer beginning on the frame fed next; they go to
    /// the turn that frame answers (and are dropped if it answers none).
    pub fn stages(&mut self, stages: TurnStages) {
        self.stages = Some(stages);
    }

    /// Take one step's stats; returns what it completed.
    pub fn frame(&mut self, f: TurnFrame) -> TurnUpdate {
        let mut update = TurnUpdate::default();
        let (user_loud, agent_loud) = (f.user_loud, f.agent_loud);
        if user_loud {
            self.last_user_loud = Some(f.tick);
        }
        let burst_began = agent_loud && self.agent_quiet_frames > AGENT_GAP_FRAMES;
        if burst_began {
            self.burst_start = Some(f.tick);
        }
        self.agent_quiet_frames = if agent_loud {
            0
        } else {
            (self.agent_quiet_frames + 1).min(AGENT_GAP_FRAMES + 1)
        };

        // The user's onset: a turn left waiting is unanswered; a new one opens.
        if f.user_active && !self.user_was_active {
            if let Some(waiting) = self.turn.take() {
                update.finished = Some(self.finish(waiting, None, f));
            }
            self.turn = Some(OpenTurn {
                start: f.tick,
                last_voice: self.last_user_loud.unwrap_or(f.tick),
                end: None,
                barge_in: f.barge_in,
                barge_pending: f.barge_in,
                reaction_frames: None,
                backchannels: 0,
                overlap_frames: 0,
                burst_counted: false,
            });
        }

        if let Some(mut turn) = self.turn {
            if turn.barge_pending && !agent_loud {
                let frames = f.tick.saturating_sub(turn.start);
                turn.reaction_frames = Some(frames);
                turn.barge_pending = false;
                update.barge_in_reaction = Some(FRAME_PERIOD.saturating_mul(frames as u32));
            }
            if turn.end.is_none() {
                if user_loud {
                    turn.last_voice = f.tick;
                }
                if f.user_active {
                    if agent_loud && user_loud {
                        turn.overlap_frames += 1;
                    }
                    if burst_began {
                        // A burst that begins while the user talks (not the agent being
                        // cut off: that burst began before the onset).
                        turn.backchannels += 1;
                        turn.burst_counted = true;
                    }
                    self.turn = Some(turn);
                } else {
                    // The user's activity ended on this frame.
                    turn.end = Some(f.tick);
                    turn.barge_pending = false;
                    if agent_loud {
                        // The agent was already talking as the user finished: that burst is
                        // the answer, not a backchannel.
                        if turn.burst_counted {
                            turn.backchannels = turn.backchannels.saturating_sub(1);
                        }
                        let began = self.burst_start.unwrap_or(f.tick);
                        self.turn = None;
                        update.finished = Some(if began <= turn.start {
                            self.finish_talked_over(turn, f)
                        } else {
                            self.finish(turn, Some(began), f)
                        });
                    } else {
                        self.turn = Some(turn);
                    }
                }
            } else if let Some(end) = turn.end {
                if agent_loud {
                    self.turn = None;
                    update.finished = Some(self.finish(turn, Some(f.tick), f));
                } else if f.tick.saturating_sub(end) >= NO_ANSWER_FRAMES {
                    self.turn = None;
                    update.finished = Some(self.finish(turn, None, f));
                } else {
                    self.turn = Some(turn);
                }
            }
        }

        self.user_was_active = f.user_active;
        // Stages belong to the frame they came with.
        self.stages = None;
        update
    }

    /// The record of a turn the agent talked through.
    fn finish_talked_over(&mut self, turn: OpenTurn, f: TurnFrame) -> TurnRecord {
        TurnRecord {
            outcome: TurnOutcome::TalkedOver,
            ..self.finish(turn, None, f)
        }
    }

    /// The record of `turn`, answered at `answer` (or not); `f` is the frame that ended it.
    fn finish(&mut self, turn: OpenTurn, answer: Option<u64>, f: TurnFrame) -> TurnRecord {
        self.turns += 1;
        let end = turn.end.unwrap_or(f.tick);
        let voice_end = turn.last_voice + 1;
        let response = answer.map(|a| a as i64 - end as i64);
        let gap = answer.map(|a| a as i64 - voice_end as i64);
        // Own latency and compute are those of the answer's first loud frame when that is
        // this frame (the usual case); an answer that began in an earlier frame (during
        // the hangover) reports this one's.
        let answered = answer.is_some();
        let stages = self.stages.take().filter(|_| answered);
        TurnRecord {
            index: self.turns,
            user_start_tick: turn.start,
            last_voice_tick: turn.last_voice,
            user_end_tick: end,
            outcome: if answered {
                TurnOutcome::Answered
            } else {
                TurnOutcome::NoAnswer
            },
            answer_tick: answer,
            response_ms: response.map(|r| self.ms(r)),
            gap_ms: gap.map(|g| self.ms(g)),
            turn_wait_ms: self.ms(end as i64 - voice_end as i64),
            barge_in: turn.barge_in,
            barge_in_reaction_ms: turn.reaction_frames.map(|r| self.ms(r as i64)),
            backchannels: turn.backchannels,
            overlap_ms: self.ms(turn.overlap_frames as i64),
            own_ms: answered.then_some(f.own.as_secs_f64() * 1000.0),
            compute_ms: answered.then_some(f.compute.as_secs_f64() * 1000.0),
            stages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::EnergyVad;

    const LOUD: f32 = 0.1; // -20 dBFS
    const HANGOVER: u32 = 3;

    /// Plays a script of (user loud, agent loud) frames through the loop's own detectors
    /// and the tracker, as the voice loop does.
    struct Script {
        tracker: TurnTracker,
        user_vad: EnergyVad,
        agent_vad: EnergyVad,
        user_was_active: bool,
        agent_was_speaking: bool,
        tick: u64,
        finished: Vec<TurnRecord>,
        reactions: Vec<Duration>,
    }

    impl Script {
        fn new() -> Self {
            Script {
                tracker: TurnTracker::new(),
                user_vad: EnergyVad::new(-42.0, HANGOVER),
                agent_vad: EnergyVad::new(-45.0, HANGOVER),
                user_was_active: false,
                agent_was_speaking: false,
                tick: 0,
                finished: Vec::new(),
                reactions: Vec::new(),
            }
        }

        fn play(&mut self, frames: usize, user: bool, agent: bool) -> &mut Self {
            for _ in 0..frames {
                self.tick += 1;
                let user_rms = if user { LOUD } else { 0.0 };
                let agent_rms = if agent { LOUD } else { 0.0 };
                let user_active = self.user_vad.update(user_rms);
                let agent_speaking = self.agent_vad.update(agent_rms);
                let barge_in = user_active && !self.user_was_active && self.agent_was_speaking;
                self.user_was_active = user_active;
                self.agent_was_speaking = agent_speaking;
                let update = self.tracker.frame(TurnFrame {
                    tick: self.tick,
                    user_loud: self.user_vad.loud(),
                    user_active,
                    agent_loud: self.agent_vad.loud(),
                    barge_in,
                    own: Duration::from_micros(300),
                    compute: Duration::from_millis(2),
                });
                self.finished.extend(update.finished);
                self.reactions.extend(update.barge_in_reaction);
            }
            self
        }
    }

    #[test]
    fn response_latency_runs_from_the_end_of_the_hangover_to_the_first_loud_agent_frame() {
        let mut s = Script::new();
        // User talks on ticks 1..=10; the detector lets go at tick 14 (3 frames of
        // hangover after 11, 12, 13); the agent answers from tick 19.
        s.play(10, true, false)
            .play(8, false, false)
            .play(5, false, true);
        assert_eq!(s.finished.len(), 1, "{:?}", s.finished);
        let t = s.finished[0];
        assert_eq!(t.outcome, TurnOutcome::Answered);
        assert_eq!(
            (t.user_start_tick, t.last_voice_tick, t.user_end_tick),
            (1, 10, 14)
        );
        assert_eq!(t.answer_tick, Some(19));
        assert_eq!(t.response_ms, Some(400.0));
        assert_eq!(t.turn_wait_ms, 240.0, "the hangover");
        assert_eq!(t.gap_ms, Some(640.0), "mouth closes -> voice starts");
        assert_eq!((t.backchannels, t.barge_in), (0, false));
        assert_eq!(t.own_ms, Some(0.3));
        assert_eq!(t.compute_ms, Some(2.0));
    }

    #[test]
    fn a_barge_in_reaction_is_the_frames_until_the_agent_drops() {
        let mut s = Script::new();
        // The agent talks; the user starts over it at tick 11; the agent goes quiet from
        // tick 13 (two frames later), the user talks on to tick 20 and gets an answer.
        s.play(10, false, true)
            .play(2, true, true)
            .play(8, true, false)
            .play(4, false, false)
            .play(3, false, true);
        assert_eq!(s.reactions, [Duration::from_millis(160)]);
        assert_eq!(s.finished.len(), 1, "{:?}", s.finished);
        let t = s.finished[0];
        assert!(t.barge_in);
        assert_eq!(t.barge_in_reaction_ms, Some(160.0));
        assert_eq!(
            t.backchannels, 0,
            "the agent being cut off is no backchannel"
        );
        assert_eq!(t.overlap_ms, 160.0, "two frames of both voices");
        assert_eq!(t.user_end_tick, 24);
        assert_eq!(
            t.response_ms,
            Some(80.0),
            "the agent answered one frame after"
        );
    }

    #[test]
    fn a_short_burst_during_user_speech_is_a_backchannel_and_silence_is_no_answer() {
        let mut s = Script::new();
        // A long user turn with a "mm-hm" (ticks 21..=23) in the middle; no answer after.
        s.play(20, true, false)
            .play(3, true, true)
            .play(10, true, false)
            .play(4 + NO_ANSWER_FRAMES as usize, false, false);
        assert_eq!(s.finished.len(), 1, "{:?}", s.finished);
        let t = s.finished[0];
        assert_eq!(t.outcome, TurnOutcome::NoAnswer);
        assert_eq!(t.backchannels, 1);
        assert_eq!(t.overlap_ms, 240.0);
        assert_eq!((t.response_ms, t.own_ms), (None, None));
        assert!(!t.barge_in);
    }

    #[test]
    fn a_two_part_mm_hm_is_one_backchannel() {
        let mut s = Script::new();
        // "mm" (2 frames), one quiet frame, "hm" (2 frames), all over the user's turn.
        s.play(20, true, false)
            .play(2, true, true)
            .play(1, true, false)
            .play(2, true, true)
            .play(5, true, false)
            .play(4, false, false)
            .play(1, false, true);
        assert_eq!(s.finished.len(), 1, "{:?}", s.finished);
        assert_eq!(s.finished[0].backchannels, 1);
        assert_eq!(s.finished[0].overlap_ms, 320.0);
    }

    #[test]
    fn speaking_again_before_an_answer_closes_the_turn_unanswered() {
        let mut s = Script::new();
        s.play(5, true, false)
            .play(6, false, false)
            .play(5, true, false)
            .play(4, false, false)
            .play(2, false, true);
        let outcomes: Vec<TurnOutcome> = s.finished.iter().map(|t| t.outcome).collect();
        assert_eq!(outcomes, [TurnOutcome::NoAnswer, TurnOutcome::Answered]);
        assert_eq!(s.finished[1].user_start_tick, 12);
        assert_eq!(s.finished[1].index, 2);
        assert_eq!(s.tracker.turns(), 2);
    }

    #[test]
    fn an_agent_that_talks_into_the_hangover_answers_early() {
        let mut s = Script::new();
        // The agent starts one frame after the user's last loud frame, inside the hangover.
        s.play(6, true, false)
            .play(1, false, false)
            .play(6, false, true);
        assert_eq!(s.finished.len(), 1, "{:?}", s.finished);
        let t = s.finished[0];
        assert_eq!(t.outcome, TurnOutcome::Answered);
        assert_eq!(t.backchannels, 0, "it was the answer");
        assert_eq!(t.answer_tick, Some(8));
        assert_eq!(t.user_end_tick, 10);
        assert_eq!(t.response_ms, Some(-160.0));
        assert_eq!(t.gap_ms, Some(80.0));
    }

    #[test]
    fn an_agent_that_never_stops_talks_the_turn_over() {
        let mut s = Script::new();
        s.play(10, false, true)
            .play(8, true, true)
            .play(6, false, true);
        assert_eq!(s.finished.len(), 1, "{:?}", s.finished);
        let t = s.finished[0];
        assert_eq!(t.outcome, TurnOutcome::TalkedOver);
        assert!(t.barge_in);
        assert_eq!((t.response_ms, t.barge_in_reaction_ms), (None, None));
        assert_eq!(t.overlap_ms, 640.0);
    }

    #[test]
    fn the_agent_alone_makes_no_turns() {
        let mut s = Script::new();
        s.play(50, false, true).play(100, false, false);
        assert!(s.finished.is_empty());
        assert!(!s.tracker.in_turn());
    }
}
