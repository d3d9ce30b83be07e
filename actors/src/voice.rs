//! `voice`: the fast loop. Every 80 ms, on an absolute deadline, it takes one frame of the
//! user's audio, hands it to the model thread, and fans the result out: agent audio to the
//! speakers and phones, the monologue piece to `monologue`, frame stats to `face` and
//! `affect`. It only ever casts or pushes into a bounded feed; it never awaits another
//! actor, the disk or the network.
//!
//! Overrun policy: user audio is taken in on the tick grid; the model computes as fast as
//! it can. When the previous step is still running at a deadline, the tick counts as an
//! overrun and its frame waits in a backlog of at most `backlog_frames` frames (then the
//! oldest is dropped and counted), and the model catches up with back-to-back steps. So a
//! slow model costs bounded latency, never a drifting clock or a growing queue.
//!
//! A tick allocates nothing in steady state and sends no actor message: the ticker and the
//! model thread hand ticks and step results to the loop through preallocated
//! [`Feed`]s, and the loop hands frame stats to `face` and `affect` the same way (see
//! [`crate::feed`]). The loop's per-tick work runs in a task the actor incarnation owns (and
//! ends with it); the actor's mailbox carries only what is not per tick (typed text, a
//! failure of that task, and in tests a tick sent by hand). A text piece still allocates
//! (its `Arc<str>` and the cast to `monologue`): text is rare next to ticks.
//!
//! Each step's levels also feed the turn tracker ([`crate::turns`]): response latency,
//! barge-in reaction, backchannels and the brain's own latency per frame go into lock-free
//! histograms, and each finished turn is published with the newest ones through an
//! `ArcSwap` (one allocation per turn, like a text piece). A loop built with
//! `manual_ticks` has no ticker: whoever drives it (`creature run --fast`) ticks it by
//! hand, on a virtual clock.
//!
//! Nothing outside the loop's threads can delay a tick: user audio comes through a lock-free
//! ring, counters and status are atomics and `ArcSwap`s that readers (the API, `/metrics`)
//! read without sending the loop a message or taking a lock it takes, and each tick's
//! lateness is split into the host's part (the ticker's wake-up) and the brain's own (the
//! hand-off to the loop and the loop's work), so a slow tick says whose it was.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::affect::AffectHandle;
use crate::audio::{AgentFrame, AudioInbox, EnergyVad, rms};
use crate::clock::TickClock;
use crate::face::FaceHandle;
use crate::feed::{AbortOnDrop, Feed};
use crate::handle::{ActorHandle, Spawn, SpawnError, deref_to_actor_handle};
use crate::histogram::{LatencyHistogram, Percentiles};
use crate::monologue::MonologueHandle;
use crate::ports::{StepOutput, VoiceModel};
use crate::realtime::{
    LoopAllocations, LoopThread, Priority, host_steal, loop_allocations, mark_current_thread,
    promote_current_thread, promote_model_thread,
};
use crate::signals::{FrameStats, TextPiece};
use crate::slot::{CallError, Slot};
use crate::turns::{TurnFrame, TurnOutcome, TurnRecord, TurnTracker};
use crate::worker::{ModelWorker, STATUS_EVERY, StepDone, StepRequest};
use crate::{FRAME_PERIOD, FRAME_SAMPLES};

/// Voice loop settings: the loop's own keys of `[voice]` in the config file (the service
/// adds the backend's).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceConfig {
    /// User audio louder than this counts as voice activity.
    pub user_vad_dbfs: f32,
    /// Agent audio louder than this counts as the agent speaking.
    pub agent_speaking_dbfs: f32,
    /// Frames of quiet before activity ends.
    pub vad_hangover_frames: u32,
    /// Most user frames that may wait for a busy model.
    pub backlog_frames: usize,
    /// User audio buffered ahead of the loop, in frames; beyond it the oldest is dropped.
    pub inbox_frames: usize,
    /// Ask the OS for real-time scheduling of the loop's threads (see [`crate::realtime`]).
    pub realtime_priority: bool,
    /// Not a file key: no ticker thread; whoever drives the loop ticks it by hand with
    /// [`VoiceHandle::tick_by_hand`] (`creature run --fast`, on a virtual clock).
    #[serde(skip)]
    pub manual_ticks: bool,
}

impl Default for VoiceConfig {
    fn default() -> Self {
        VoiceConfig {
            user_vad_dbfs: -42.0,
            agent_speaking_dbfs: -45.0,
            vad_hangover_frames: 3,
            backlog_frames: 3,
            inbox_frames: 25,
            realtime_priority: true,
            manual_ticks: false,
        }
    }
}

/// Counters and histograms of the fast loop. They live outside the actor, so they survive
/// its restarts and anyone can read them without sending the loop a message.
#[derive(Debug)]
pub struct VoiceMetrics {
    pub ticks: AtomicU64,
    /// The first tick number not yet fired; a restarted ticker resumes from here.
    next_tick: AtomicU64,
    /// Ticks at which the previous step was still computing.
    pub overruns: AtomicU64,
    /// Deadlines that passed with no tick at all (the ticker woke a whole period late).
    pub missed_ticks: AtomicU64,
    /// User frames dropped from a full backlog.
    pub dropped_frames: AtomicU64,
    pub steps: AtomicU64,
    pub step_errors: AtomicU64,
    /// Results that arrived for a step this incarnation did not send (sent before a restart).
    pub orphan_steps: AtomicU64,
    pub text_pieces: AtomicU64,
    pub barge_ins: AtomicU64,
    pub speaking: AtomicBool,
    pub user_active: AtomicBool,
    /// Actual minus scheduled tick start.
    pub jitter: LatencyHistogram,
    /// Time between consecutive tick starts (80 ms when healthy).
    pub interval: LatencyHistogram,
    /// Model step wall time.
    pub compute: LatencyHistogram,
    /// Loop work per tick, model compute excluded.
    pub overhead: LatencyHistogram,
    /// User frame taken in -> agent frame out (includes any backlog wait).
    pub step_latency: LatencyHistogram,
    /// Tick deadline -> the ticker thread awake: the kernel's and the host's part of a
    /// tick's lateness.
    pub wake: LatencyHistogram,
    /// The ticker hands the tick over -> the loop starts handling it.
    pub handoff: LatencyHistogram,
    /// The loop's own work on a tick (take the user frame in, submit the step).
    pub tick_work: LatencyHistogram,
    /// Hand-off plus the loop's work, per tick: the brain's own part of the lateness.
    pub own: LatencyHistogram,
    /// User frame due (its tick's deadline) -> agent frame out, minus model compute and
    /// any wait for a busy model: the brain's own latency, per frame.
    pub own_latency: LatencyHistogram,
    /// End of the user's voice activity -> the agent's first loud frame, per answered turn
    /// (stream time; an answer begun inside the hangover counts as 0).
    pub turn_response: LatencyHistogram,
    /// The user's onset over the speaking agent -> the agent's output below the speaking
    /// threshold (stream time).
    pub barge_in_reaction: LatencyHistogram,
    /// A staged backend's answers (the `cascade`), stage by stage ([`crate::TurnStages`]),
    /// in the order [`STAGES`] names them (stream time).
    pub stages: [LatencyHistogram; 4],
    /// Turns measured ([`crate::turns`]), and how they went.
    pub turns: AtomicU64,
    pub unanswered_turns: AtomicU64,
    pub talked_over_turns: AtomicU64,
    pub backchannels: AtomicU64,
    /// Frames in which both voices were audible during user turns.
    pub overlap_frames: AtomicU64,
    /// A user turn is open: the user talks, or their turn waits for an answer.
    pub turn_open: AtomicBool,
    /// User samples the loop has taken from the inbox: the stream position of the next
    /// user frame (a file-driven run aligns its output with it).
    user_samples: AtomicU64,
    /// The newest turns, oldest first (swapped once per turn, never locked).
    recent_turns: ArcSwap<Vec<TurnRecord>>,
    /// Swapped, never locked: a reader can not hold up the loop that stores it.
    last_error: ArcSwapOption<String>,
    model_status: ArcSwap<serde_json::Value>,
    /// What the OS granted the ticker, the loop and the model threads ([`Priority`] as u8).
    scheduling: [AtomicU8; 3],
    /// The loop's own state, published after every message so snapshots never ask it.
    in_flight: AtomicU64,
    backlog: AtomicU64,
    heard_waiting: AtomicU64,
    inbox_dropped: AtomicU64,
    /// The host's steal time when the loop started, to report the steal since.
    steal_base: OnceLock<Option<Duration>>,
    /// A reader asked for the backend's status since the model last built one: the model
    /// builds it (allocating) only then, at most every [`STATUS_EVERY`] steps.
    status_wanted: AtomicBool,
}

/// `in_flight` when no step is in flight.
const NONE_IN_FLIGHT: u64 = u64::MAX;

fn priority_bits(p: Priority) -> u8 {
    match p {
        Priority::Normal => 0,
        Priority::Raised => 1,
        Priority::Realtime => 2,
    }
}

fn priority_of(bits: u8) -> Priority {
    match bits {
        2 => Priority::Realtime,
        1 => Priority::Raised,
        _ => Priority::Normal,
    }
}

/// The scheduling priority of the fast loop's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Scheduling {
    pub ticker: Priority,
    #[serde(rename = "loop")]
    pub voice_loop: Priority,
    pub model: Priority,
}

impl Default for Scheduling {
    fn default() -> Self {
        Scheduling {
            ticker: Priority::Normal,
            voice_loop: Priority::Normal,
            model: Priority::Normal,
        }
    }
}

/// Each tick's lateness in parts, as percentiles (ms). `wake` is the host's part; `handoff`
/// and `loop` are the brain's own, and `own` is their sum per tick.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatenessSplit {
    /// Deadline -> the ticker thread awake (kernel and host).
    pub wake_ms: Percentiles,
    /// Ticker sends -> the loop starts handling the tick.
    pub handoff_ms: Percentiles,
    /// The loop's work on the tick.
    pub loop_ms: Percentiles,
    /// Hand-off + loop, per tick.
    pub own_ms: Percentiles,
}

/// What the host took from the brain's machine.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HostReport {
    /// CPU time the hypervisor stole since the loop started, all CPUs together (ms);
    /// null where `/proc/stat` is not available.
    pub steal_ms: Option<f64>,
}

/// Allocations counted on the loop's threads (only when the binary counts them).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AllocationReport {
    #[serde(flatten)]
    pub by_thread: LoopAllocations,
    /// All three threads' allocations over the ticks counted so far.
    pub per_tick: f64,
}

/// The voice loop as `/api/state` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceReport {
    pub backend: &'static str,
    pub accepts_text: bool,
    pub ticks: u64,
    pub steps: u64,
    pub overruns: u64,
    pub missed_ticks: u64,
    pub dropped_frames: u64,
    pub step_errors: u64,
    pub orphan_steps: u64,
    pub text_pieces: u64,
    pub barge_ins: u64,
    pub speaking: bool,
    pub user_active: bool,
    pub jitter_ms: Percentiles,
    pub interval_ms: Percentiles,
    pub compute_ms: Percentiles,
    pub overhead_ms: Percentiles,
    pub step_latency_ms: Percentiles,
    /// Compute time over the 80 ms frame: above 1 the model is slower than real time.
    pub real_time_factor: RealTimeFactor,
    pub last_error: Option<String>,
    /// Backend-specific status (connection, context used, ...).
    pub model: serde_json::Value,
    /// The scheduling priority the OS granted the loop's threads.
    pub scheduling: Scheduling,
    /// Each tick's lateness split into the host's part and the brain's own.
    pub lateness: LatenessSplit,
    pub host: HostReport,
    /// Allocations on the loop's threads since counting began; null unless the binary
    /// was built to count them (`--features alloc-count`).
    pub allocations: Option<AllocationReport>,
    /// Turn taking, measured from the frames ([`crate::turns`]).
    pub turns: TurnsReport,
}

/// Turn taking as `/api/state` reports it: totals, percentiles, and the newest turns.
#[derive(Debug, Clone, Serialize)]
pub struct TurnsReport {
    /// User turns completed (answered or not).
    pub count: u64,
    pub answered: u64,
    pub no_answer: u64,
    /// Turns the agent talked through without yielding.
    pub talked_over: u64,
    /// Agent bursts that began while the user talked.
    pub backchannels: u64,
    /// Time both voices were audible during user turns.
    pub overlap_ms: f64,
    /// End of the user's activity -> the agent's first loud frame (stream time).
    pub response_ms: Percentiles,
    /// The user's onset over the agent -> the agent's output below the threshold.
    pub barge_in_reaction_ms: Percentiles,
    /// User frame due -> agent frame out, model compute excluded, per frame (wall time).
    pub own_latency_ms: Percentiles,
    /// A staged backend's answers, per stage (empty for the other backends).
    pub stages_ms: StagesReport,
    /// The newest turns, oldest first (at most [`RECENT_TURNS`]).
    pub recent: Vec<TurnRecord>,
}

/// The stages of [`crate::TurnStages`], as metrics and reports name them.
pub const STAGES: [&str; 4] = [
    "turn_wait",
    "stt_final",
    "llm_first_token",
    "tts_first_audio",
];

/// Percentiles of each stage of a staged backend's answers (stream time).
#[derive(Debug, Clone, Serialize)]
pub struct StagesReport {
    pub turn_wait: Percentiles,
    pub stt_final: Percentiles,
    pub llm_first_token: Percentiles,
    pub tts_first_audio: Percentiles,
}

/// Turns kept for `/api/state` and `GET /api/actors/voice`.
pub const RECENT_TURNS: usize = 20;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RealTimeFactor {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Default for VoiceMetrics {
    fn default() -> Self {
        VoiceMetrics {
            ticks: AtomicU64::default(),
            next_tick: AtomicU64::default(),
            overruns: AtomicU64::default(),
            missed_ticks: AtomicU64::default(),
            dropped_frames: AtomicU64::default(),
            steps: AtomicU64::default(),
            step_errors: AtomicU64::default(),
            orphan_steps: AtomicU64::default(),
            text_pieces: AtomicU64::default(),
            barge_ins: AtomicU64::default(),
            speaking: AtomicBool::default(),
            user_active: AtomicBool::default(),
            jitter: LatencyHistogram::new(),
            interval: LatencyHistogram::new(),
            compute: LatencyHistogram::new(),
            overhead: LatencyHistogram::new(),
            step_latency: LatencyHistogram::new(),
            wake: LatencyHistogram::new(),
            handoff: LatencyHistogram::new(),
            tick_work: LatencyHistogram::new(),
            own: LatencyHistogram::new(),
            own_latency: LatencyHistogram::new(),
            turn_response: LatencyHistogram::new(),
            barge_in_reaction: LatencyHistogram::new(),
            stages: std::array::from_fn(|_| LatencyHistogram::new()),
            turns: AtomicU64::default(),
            unanswered_turns: AtomicU64::default(),
            talked_over_turns: AtomicU64::default(),
            backchannels: AtomicU64::default(),
            overlap_frames: AtomicU64::default(),
            turn_open: AtomicBool::default(),
            user_samples: AtomicU64::default(),
            recent_turns: ArcSwap::from_pointee(Vec::new()),
            last_error: ArcSwapOption::empty(),
            model_status: ArcSwap::from_pointee(serde_json::Value::Null),
            scheduling: Default::default(),
            in_flight: AtomicU64::new(NONE_IN_FLIGHT),
            backlog: AtomicU64::default(),
            heard_waiting: AtomicU64::default(),
            inbox_dropped: AtomicU64::default(),
            steal_base: OnceLock::new(),
            status_wanted: AtomicBool::new(true),
        }
    }
}

impl VoiceMetrics {
    pub(crate) fn set_scheduling(&self, update: impl FnOnce(&mut Scheduling)) {
        let mut s = self.scheduling();
        update(&mut s);
        for (slot, p) in self
            .scheduling
            .iter()
            .zip([s.ticker, s.voice_loop, s.model])
        {
            slot.store(priority_bits(p), Ordering::Relaxed);
        }
    }

    pub fn scheduling(&self) -> Scheduling {
        let p = |i: usize| priority_of(self.scheduling[i].load(Ordering::Relaxed));
        Scheduling {
            ticker: p(0),
            voice_loop: p(1),
            model: p(2),
        }
    }

    /// What the model thread runs first: raise it like the loop (one level below) and
    /// mark it for allocation counting. Pass it to [`ModelWorker::spawn`].
    pub fn model_thread_setup(self: &Arc<Self>, realtime: bool) -> impl FnOnce() + Send + 'static {
        let metrics = Arc::clone(self);
        move || {
            mark_current_thread(LoopThread::Model);
            if realtime {
                let granted = promote_model_thread("voice-model");
                metrics.set_scheduling(|s| s.model = granted);
            }
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .load()
            .as_ref()
            .map(|e| e.as_str().to_string())
    }

    fn set_last_error(&self, error: String) {
        self.last_error.store(Some(Arc::new(error)));
    }

    /// Steal time since the loop started (first read then), if the host reports it.
    pub fn steal_since_start(&self) -> Option<Duration> {
        let base = (*self.steal_base.get_or_init(host_steal))?;
        Some(host_steal()?.saturating_sub(base))
    }

    /// The lateness split since the start.
    pub fn lateness(&self) -> LatenessSplit {
        LatenessSplit {
            wake_ms: self.wake.percentiles(),
            handoff_ms: self.handoff.percentiles(),
            loop_ms: self.tick_work.percentiles(),
            own_ms: self.own.percentiles(),
        }
    }

    /// The loop's state as it last published it (off the loop's thread, no message).
    pub fn snapshot(&self, backend: &'static str, accepts_text: bool) -> serde_json::Value {
        let mut value =
            serde_json::to_value(self.report(backend, accepts_text)).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            let in_flight = self.in_flight.load(Ordering::Relaxed);
            map.insert(
                "in_flight".into(),
                (in_flight != NONE_IN_FLIGHT).then_some(in_flight).into(),
            );
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            map.insert("backlog".into(), load(&self.backlog).into());
            map.insert("heard_waiting".into(), load(&self.heard_waiting).into());
            map.insert(
                "inbox_dropped_samples".into(),
                load(&self.inbox_dropped).into(),
            );
        }
        value
    }

    pub fn report(&self, backend: &'static str, accepts_text: bool) -> VoiceReport {
        // Ask for a fresh backend status for the next report.
        self.status_wanted.store(true, Ordering::Relaxed);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let compute = self.compute.percentiles();
        let frame_ms = FRAME_PERIOD.as_secs_f64() * 1000.0;
        VoiceReport {
            backend,
            accepts_text,
            ticks: load(&self.ticks),
            steps: load(&self.steps),
            overruns: load(&self.overruns),
            missed_ticks: load(&self.missed_ticks),
            dropped_frames: load(&self.dropped_frames),
            step_errors: load(&self.step_errors),
            orphan_steps: load(&self.orphan_steps),
            text_pieces: load(&self.text_pieces),
            barge_ins: load(&self.barge_ins),
            speaking: self.speaking.load(Ordering::Relaxed),
            user_active: self.user_active.load(Ordering::Relaxed),
            jitter_ms: self.jitter.percentiles(),
            interval_ms: self.interval.percentiles(),
            compute_ms: compute,
            overhead_ms: self.overhead.percentiles(),
            step_latency_ms: self.step_latency.percentiles(),
            real_time_factor: RealTimeFactor {
                p50: compute.p50_ms / frame_ms,
                p99: compute.p99_ms / frame_ms,
                max: compute.max_ms / frame_ms,
            },
            last_error: self.last_error(),
            model: serde_json::Value::clone(&self.model_status.load()),
            scheduling: self.scheduling(),
            lateness: self.lateness(),
            host: HostReport {
                steal_ms: self.steal_since_start().map(|d| d.as_secs_f64() * 1000.0),
            },
            allocations: loop_allocations().map(|by_thread| AllocationReport {
                by_thread,
                per_tick: by_thread.total() as f64 / load(&self.ticks).max(1) as f64,
            }),
            turns: self.turns_report(),
        }
    }

    /// Turn taking since the start, read from what the loop published.
    pub fn turns_report(&self) -> TurnsReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let count = load(&self.turns);
        let no_answer = load(&self.unanswered_turns);
        let talked_over = load(&self.talked_over_turns);
        TurnsReport {
            count,
            answered: count.saturating_sub(no_answer + talked_over),
            no_answer,
            talked_over,
            backchannels: load(&self.backchannels),
            overlap_ms: load(&self.overlap_frames) as f64 * FRAME_PERIOD.as_secs_f64() * 1000.0,
            response_ms: self.turn_response.percentiles(),
            barge_in_reaction_ms: self.barge_in_reaction.percentiles(),
            own_latency_ms: self.own_latency.percentiles(),
            stages_ms: StagesReport {
                turn_wait: self.stages[0].percentiles(),
                stt_final: self.stages[1].percentiles(),
                llm_first_token: self.stages[2].percentiles(),
                tts_first_audio: self.stages[3].percentiles(),
            },
            recent: self.recent_turns(),
        }
    }

    /// The newest turns, oldest first.
    pub fn recent_turns(&self) -> Vec<TurnRecord> {
        Vec::clone(&self.recent_turns.load())
    }

    /// Count a finished turn and publish it with the newest (allocates once per turn, on
    /// the loop's thread: turns are rare next to ticks, like text pieces).
    fn record_turn(&self, turn: TurnRecord) {
        self.turns.fetch_add(1, Ordering::Relaxed);
        match (turn.outcome, turn.response_ms) {
            (TurnOutcome::Answered, Some(ms)) => self
                .turn_response
                .record(Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
            (TurnOutcome::TalkedOver, _) => {
                self.talked_over_turns.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.unanswered_turns.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(st) = turn.stages {
            let ms = [
                st.turn_wait_ms,
                st.stt_final_ms,
                st.llm_first_token_ms,
                st.tts_first_audio_ms,
            ];
            for (h, ms) in self.stages.iter().zip(ms) {
                h.record(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
            }
        }
        self.backchannels
            .fetch_add(u64::from(turn.backchannels), Ordering::Relaxed);
        let frame_ms = FRAME_PERIOD.as_secs_f64() * 1000.0;
        self.overlap_frames.fetch_add(
            (turn.overlap_ms / frame_ms).round() as u64,
            Ordering::Relaxed,
        );
        let old = self.recent_turns.load();
        let skip = (old.len() + 1).saturating_sub(RECENT_TURNS);
        let mut recent = Vec::with_capacity(RECENT_TURNS);
        recent.extend(old.iter().skip(skip).copied());
        recent.push(turn);
        self.recent_turns.store(Arc::new(recent));
    }
}

/// Messages of the voice actor. Ticks and step results do not come this way (they come
/// through feeds, see the module docs).
#[derive(Debug)]
pub enum VoiceMsg {
    /// Tick `n` is due, sent at `sent`: for a loop ticked by hand (`manual_ticks`, and
    /// tests); the ticker hands its ticks over through a feed.
    Tick { n: u64, sent: Instant },
    /// The user typed `text` (heard by backends that accept text).
    Hear { text: String },
    /// The incarnation's loop task panicked (with this message): the actor fails, so its
    /// supervisor restarts it.
    LoopFailed(String),
    /// Test-only: panic inside the actor.
    #[cfg(feature = "fault-injection")]
    Crash,
}

/// Why typed text was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HearError {
    #[error("the {0} backend hears audio only; send audio to /ws/audio instead")]
    AudioOnly(&'static str),
    #[error("text is empty")]
    Empty,
    #[error("text is longer than {0} characters")]
    TooLong(usize),
    #[error("the voice loop is restarting; try again")]
    NotRunning,
}

#[cfg(feature = "fault-injection")]
impl crate::handle::FaultInjection for VoiceMsg {
    fn crash() -> Self {
        VoiceMsg::Crash
    }
}

/// The handle callers use to reach the voice loop; `stats` and `crash` come from
/// [`ActorHandle`]. Its `snapshot` reads what the loop publishes instead of asking it.
#[derive(Clone, Debug)]
pub struct VoiceHandle {
    actor: ActorHandle<VoiceMsg>,
    backend: &'static str,
    accepts_text: bool,
    metrics: Arc<VoiceMetrics>,
    taps: broadcast::Sender<StepTap>,
}

/// One step as a file-driven run sees it: which stretch of the user's stream it heard,
/// and the agent's frame for it.
#[derive(Debug, Clone)]
pub struct StepTap {
    pub tick: u64,
    /// Stream position of the frame's first user sample (samples taken from the inbox
    /// before it).
    pub user_from: u64,
    /// Real user samples in the frame; the rest was silence padding (nothing was waiting).
    pub user_samples: usize,
    pub agent: AgentFrame,
}

/// Steps a tap subscriber may lag before it skips ahead (as the audio outlet's listeners).
const TAP_FRAMES: usize = 16;

deref_to_actor_handle!(VoiceHandle, VoiceMsg);

impl VoiceHandle {
    /// Longest typed utterance accepted.
    pub const MAX_TEXT: usize = 500;

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn metrics(&self) -> &Arc<VoiceMetrics> {
        &self.metrics
    }

    pub fn report(&self) -> VoiceReport {
        self.metrics.report(self.backend, self.accepts_text)
    }

    /// Tick `n` now, by hand: for a loop built with `manual_ticks` (a run on a virtual
    /// clock) and for tests. False when the loop is not running.
    pub fn tick_by_hand(&self, n: u64) -> bool {
        self.actor.cast(VoiceMsg::Tick {
            n,
            sent: Instant::now(),
        })
    }

    /// Every step from now on, with its place in the user's stream (`creature run`).
    pub fn subscribe_steps(&self) -> broadcast::Receiver<StepTap> {
        self.taps.subscribe()
    }

    /// The user says `text`.
    pub fn hear(&self, text: &str) -> Result<(), HearError> {
        if !self.accepts_text {
            return Err(HearError::AudioOnly(self.backend));
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(HearError::Empty);
        }
        if text.chars().count() > Self::MAX_TEXT {
            return Err(HearError::TooLong(Self::MAX_TEXT));
        }
        if self.actor.cast(VoiceMsg::Hear {
            text: text.to_string(),
        }) {
            Ok(())
        } else {
            Err(HearError::NotRunning)
        }
    }

    /// The loop's state, read from what it publishes: the loop's thread never builds it
    /// (so a flood of requests costs the loop nothing). Never fails; the `Result` keeps the
    /// shape every actor's snapshot has.
    pub async fn snapshot(&self) -> Result<serde_json::Value, CallError> {
        Ok(self.metrics.snapshot(self.backend, self.accepts_text))
    }
}

/// What the voice loop is wired to: its model, its audio in and out, and the actors it
/// feeds.
pub struct VoiceWiring {
    /// A loaded, warmed-up model; it moves to its own thread.
    pub model: Box<dyn VoiceModel>,
    /// The tick schedule (the face stamps its frames with the same one).
    pub clock: TickClock,
    /// User audio, taken one frame per tick.
    pub inbox: Arc<AudioInbox>,
    /// Agent audio, one frame per step.
    pub audio_out: broadcast::Sender<AgentFrame>,
    /// Gets the monologue pieces.
    pub monologue: MonologueHandle,
    /// Gets the frame stats (as does `affect`).
    pub face: FaceHandle,
    pub affect: AffectHandle,
}

/// The voice actor: read-only wiring; all mutable state is in [`VoiceState`].
#[derive(Clone)]
pub struct Voice {
    config: VoiceConfig,
    clock: TickClock,
    /// The model's thread; it (and the loaded weights) outlives restarts of the actor.
    worker: Arc<ModelWorker>,
    /// Outside the actor, so the counters survive its restarts.
    metrics: Arc<VoiceMetrics>,
    /// Where this actor registers each incarnation (and counts its messages).
    slot: Slot<VoiceMsg>,
    /// Each step's tap, for whoever subscribed (a file-driven run); sent only when someone
    /// listens.
    taps: broadcast::Sender<StepTap>,
    /// Step results from the model thread. It outlives incarnations, like the thread: a
    /// result that comes while the loop restarts waits here for the next incarnation.
    steps: Arc<Feed<StepDone>>,
    inbox: Arc<AudioInbox>,
    audio_out: broadcast::Sender<AgentFrame>,
    monologue: MonologueHandle,
    face: FaceHandle,
    affect: AffectHandle,
}

impl Voice {
    /// A voice loop on `wiring.model`, whose thread starts here (at real-time priority
    /// when `config.realtime_priority`); the loop itself starts with [`Spawn::start`].
    pub fn new(config: VoiceConfig, wiring: VoiceWiring) -> Result<Voice, SpawnError> {
        let slot = Slot::new("voice");
        let metrics = Arc::new(VoiceMetrics::default());
        let steps = Arc::new(Feed::new(STEP_FEED));
        let deliver = {
            let steps = Arc::clone(&steps);
            let stats = Arc::clone(slot.stats());
            move |done| {
                if steps.push(done).is_err() {
                    // Only if no loop took results for STEP_FEED steps (none in flight
                    // could be sent meanwhile): counted, never waited for.
                    stats.count_undelivered();
                }
            }
        };
        let setup = metrics.model_thread_setup(config.realtime_priority);
        let worker = ModelWorker::spawn(wiring.model, setup, deliver).map_err(|source| {
            SpawnError::Thread {
                thread: "voice-model",
                source,
            }
        })?;
        Ok(Voice {
            config,
            clock: wiring.clock,
            worker: Arc::new(worker),
            metrics,
            slot,
            taps: broadcast::channel(TAP_FRAMES).0,
            steps,
            inbox: wiring.inbox,
            audio_out: wiring.audio_out,
            monologue: wiring.monologue,
            face: wiring.face,
            affect: wiring.affect,
        })
    }

    /// The handle that reaches every incarnation of this loop.
    pub fn handle(&self) -> VoiceHandle {
        VoiceHandle {
            actor: ActorHandle::new(self.slot.clone()),
            backend: self.worker.backend(),
            accepts_text: self.worker.accepts_text(),
            metrics: Arc::clone(&self.metrics),
            taps: self.taps.clone(),
        }
    }

    /// What stops and joins the model thread once the loop has stopped (the brain's stop).
    pub fn model_stopper(&self) -> Option<crate::worker::ModelStopper> {
        self.worker.stopper()
    }

    /// The loop's counters (the brain's loop thread records its priority there).
    pub fn metrics(&self) -> &Arc<VoiceMetrics> {
        &self.metrics
    }

    /// Build the loop and start it on the caller's runtime (under `supervisor`, if given).
    /// It ticks on `wiring.clock`'s grid from the first deadline after it starts.
    pub async fn spawn(
        config: VoiceConfig,
        wiring: VoiceWiring,
        supervisor: Option<ActorCell>,
    ) -> Result<VoiceHandle, SpawnError> {
        let voice = Voice::new(config, wiring)?;
        voice.start(supervisor).await?;
        Ok(voice.handle())
    }
}

impl Spawn for Voice {
    fn slot(&self) -> &Slot<VoiceMsg> {
        &self.slot
    }
}

/// A frame taken in on its tick, waiting for (or in) the model.
#[derive(Debug)]
struct UserFrame {
    tick: u64,
    samples: Vec<f32>,
    user_rms: f32,
    /// The frame crossed the voice threshold, and the detector (with its hangover) after it.
    user_loud: bool,
    user_active: bool,
    taken_at: Instant,
    /// When the frame was due: its tick's deadline (or, ticked by hand, when the tick was
    /// sent). The brain's own latency counts from here.
    due: Instant,
    /// Time it waited in the backlog for a busy model (not the brain's own latency).
    model_wait: Duration,
    /// Stream position of its first sample, and how many real samples it holds.
    user_from: u64,
    user_samples: usize,
    /// Loop time spent on this frame's tick, added to the step's own overhead.
    intake_overhead: Duration,
}

/// Step results the model thread may have waiting for the loop (one is in flight at a
/// time; the slack covers a result sent before a restart).
const STEP_FEED: usize = 4;

/// Ticks the ticker may have waiting for a busy loop; beyond it a tick is dropped and
/// counted as missed.
const TICK_FEED: usize = 8;

/// A tick handed from the ticker to the loop: its number and when it was handed over.
#[derive(Debug, Clone, Copy)]
struct Tick {
    n: u64,
    sent: Instant,
}

/// One incarnation of the loop: the actor's state. Dropping it (however the incarnation
/// ends) stops the ticker thread and the loop task.
pub struct VoiceIncarnation {
    /// None when the loop is ticked by hand.
    _ticker: Option<Ticker>,
    _task: AbortOnDrop,
    /// The loop's state, shared by the loop task and the actor's handler. Both run on the
    /// loop's thread and neither holds it across an await, so it is never waited for.
    state: Arc<Mutex<VoiceState>>,
}

pub struct VoiceState {
    in_flight: Option<UserFrame>,
    backlog: VecDeque<UserFrame>,
    heard: Vec<String>,
    last_tick_at: Option<Instant>,
    user_vad: EnergyVad,
    agent_vad: EnergyVad,
    user_was_active: bool,
    agent_was_speaking: bool,
    /// Spent frame buffers, reused so the loop does not allocate per tick.
    pool: Vec<Vec<f32>>,
    /// Agent frames sent before; one nobody holds any more is refilled instead of
    /// allocating a new one.
    agent_frames: Vec<AgentFrame>,
    /// Output buffers for the model, handed back with each result and reused.
    outputs: Vec<StepOutput>,
    /// Steps submitted since the last one that asked for the backend's status.
    steps_since_status: u64,
    /// Turn taking, measured from each step's frames.
    turns: TurnTracker,
}

/// Most agent frames kept for reuse: more than the audio outlet and its listeners hold.
const AGENT_FRAME_POOL: usize = 64;

/// An agent frame holding `samples`: a pooled one nobody else holds, refilled, when there
/// is one (no allocation), else a new one, kept for later.
fn agent_frame(pool: &mut Vec<AgentFrame>, samples: &[f32]) -> AgentFrame {
    for frame in pool.iter_mut() {
        if let Some(buf) = Arc::get_mut(frame) {
            if buf.len() == samples.len() {
                buf.copy_from_slice(samples);
                return Arc::clone(frame);
            }
        }
    }
    let frame: AgentFrame = Arc::from(samples);
    if pool.len() < AGENT_FRAME_POOL {
        pool.push(Arc::clone(&frame));
    }
    frame
}

/// Most typed utterances waiting for the next step.
const MAX_HEARD: usize = 8;

/// The ticker thread of one incarnation; dropping it (however the actor ends) stops it.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Hand `Tick { n }` to the loop at each absolute deadline, from a dedicated OS thread: the kernel's
/// sleep is precise to tens of microseconds, where an async timer rounds up to the next
/// millisecond. A wake-up so late that whole periods passed skips those ticks and counts
/// them as missed, so the loop never bursts to catch up.
///
/// The first incarnation starts at the next deadline. A new incarnation (after a restart)
/// continues the grid where the last one stopped: if the most recent deadline has not been
/// ticked yet, it fires at once, late, rather than leaving a hole of a whole period.
fn spawn_ticker(
    ticks: Arc<Feed<Tick>>,
    clock: TickClock,
    metrics: Arc<VoiceMetrics>,
    realtime: bool,
) -> std::io::Result<Ticker> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("voice-ticker".into())
        .spawn(move || {
            mark_current_thread(LoopThread::Ticker);
            if realtime {
                let granted = promote_current_thread("voice-ticker");
                metrics.set_scheduling(|s| s.ticker = granted);
            }
            // The steal baseline, read before the first tick (it opens a file).
            metrics.steal_base.get_or_init(host_steal);
            let next_unfired = metrics.next_tick.load(Ordering::Relaxed);
            let now = Instant::now();
            let mut n = if next_unfired == 0 {
                // The very first incarnation: the grid starts at the next deadline (the
                // brain's other actors took a moment to start).
                clock.next_at(now)
            } else {
                let due = clock.due_at(now);
                if due > next_unfired {
                    metrics
                        .missed_ticks
                        .fetch_add(due - next_unfired, Ordering::Relaxed);
                }
                due.max(next_unfired)
            };
            loop {
                let deadline = clock.deadline(n);
                let wait = deadline.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                if stopped.load(Ordering::Relaxed) {
                    return; // this incarnation is gone
                }
                let awake = Instant::now();
                metrics
                    .wake
                    .record(awake.saturating_duration_since(deadline));
                if ticks.push(Tick { n, sent: awake }).is_err() {
                    // The loop has not taken the last TICK_FEED ticks: this one is lost.
                    metrics.missed_ticks.fetch_add(1, Ordering::Relaxed);
                }
                metrics.next_tick.store(n + 1, Ordering::Relaxed);
                let due = clock.due_at(Instant::now());
                if due > n {
                    metrics.missed_ticks.fetch_add(due - n, Ordering::Relaxed);
                    n = due + 1;
                } else {
                    n += 1;
                }
            }
        })?;
    Ok(Ticker { stop })
}

impl Voice {
    fn on_tick(&self, state: &mut VoiceState, n: u64, sent: Instant) {
        let started = Instant::now();
        let m = &self.metrics;
        let handoff = started.saturating_duration_since(sent);
        m.handoff.record(handoff);
        m.ticks.fetch_add(1, Ordering::Relaxed);
        // A tick by hand has no deadline: jitter and interval are the ticker's.
        let due = if self.config.manual_ticks {
            sent
        } else {
            let deadline = self.clock.deadline(n);
            m.jitter.record(started.saturating_duration_since(deadline));
            if let Some(last) = state.last_tick_at {
                m.interval.record(started.saturating_duration_since(last));
            }
            deadline
        };
        state.last_tick_at = Some(started);

        let mut samples = state.pool.pop().unwrap_or_else(|| vec![0.0; FRAME_SAMPLES]);
        samples.resize(FRAME_SAMPLES, 0.0);
        let user_samples = self.inbox.pop_frame(&mut samples);
        let user_from = m
            .user_samples
            .fetch_add(user_samples as u64, Ordering::Relaxed);
        let user_rms = rms(&samples);
        let user_active = state.user_vad.update(user_rms);
        m.user_active.store(user_active, Ordering::Relaxed);
        state.backlog.push_back(UserFrame {
            tick: n,
            samples,
            user_rms,
            user_loud: state.user_vad.loud(),
            user_active,
            taken_at: started,
            due,
            model_wait: Duration::ZERO,
            user_from,
            user_samples,
            intake_overhead: Duration::ZERO,
        });
        if state.backlog.len() > self.config.backlog_frames.max(1) {
            if let Some(old) = state.backlog.pop_front() {
                m.dropped_frames.fetch_add(1, Ordering::Relaxed);
                state.pool.push(old.samples);
            }
        }
        if state.in_flight.is_some() {
            m.overruns.fetch_add(1, Ordering::Relaxed);
        } else {
            self.submit_next(state, Some(n));
        }
        let spent = started.elapsed();
        m.tick_work.record(spent);
        m.own.record(handoff + spent);
        match (&mut state.in_flight, state.backlog.back_mut()) {
            (_, Some(waiting)) if waiting.tick == n => waiting.intake_overhead = spent,
            (Some(flying), _) if flying.tick == n => flying.intake_overhead = spent,
            _ => m.overhead.record(spent),
        }
    }

    /// Submit the oldest waiting frame; `ticking` is the tick being handled, if any (a
    /// frame submitted later than its own tick waited for the model).
    fn submit_next(&self, state: &mut VoiceState, ticking: Option<u64>) {
        let Some(mut frame) = state.backlog.pop_front() else {
            return;
        };
        if ticking != Some(frame.tick) {
            frame.model_wait = frame.taken_at.elapsed();
        }
        let m = &self.metrics;
        let want_status = state.steps_since_status >= STATUS_EVERY
            && m.status_wanted.swap(false, Ordering::Relaxed);
        let req = StepRequest {
            tick: frame.tick,
            user: std::mem::take(&mut frame.samples),
            heard: std::mem::take(&mut state.heard),
            out: state.outputs.pop().unwrap_or_else(StepOutput::silence),
            want_status,
        };
        match self.worker.try_submit(req) {
            Ok(()) => {
                state.in_flight = Some(frame);
                state.steps_since_status = if want_status {
                    0
                } else {
                    state.steps_since_status + 1
                };
            }
            Err(mut req) => {
                // The thread still holds a request from a previous incarnation: try again
                // next tick, keeping the audio and the text.
                if want_status {
                    m.status_wanted.store(true, Ordering::Relaxed);
                }
                state.heard = std::mem::take(&mut req.heard);
                state.outputs.push(req.out);
                frame.samples = req.user;
                state.backlog.push_front(frame);
                self.metrics.overruns.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_step_done(&self, state: &mut VoiceState, mut done: StepDone) {
        let started = Instant::now();
        let m = &self.metrics;
        let frame = match state.in_flight.take() {
            Some(f) if f.tick == done.tick => f,
            other => {
                // A result for a step the previous incarnation sent.
                state.in_flight = other;
                m.orphan_steps.fetch_add(1, Ordering::Relaxed);
                state.pool.push(done.user);
                state.outputs.push(done.output);
                return;
            }
        };
        m.steps.fetch_add(1, Ordering::Relaxed);
        m.compute.record(done.compute);
        if let Some(error) = done.error {
            // Counted and kept here; logged by the model thread (the loop never writes to
            // a terminal or a file).
            m.step_errors.fetch_add(1, Ordering::Relaxed);
            m.set_last_error(error);
        }
        if let Some(status) = done.status {
            m.model_status.store(status);
        }
        state.pool.push(done.user);

        let agent = agent_frame(&mut state.agent_frames, &done.output.agent);
        let agent_rms = rms(&agent);
        let tap = (self.taps.receiver_count() > 0).then(|| Arc::clone(&agent));
        // Nobody listening is fine; a lagging listener skips frames on its own side.
        let _ = self.audio_out.send(agent);
        let own = frame
            .due
            .elapsed()
            .saturating_sub(done.compute)
            .saturating_sub(frame.model_wait);
        m.own_latency.record(own);
        let agent_speaking = state.agent_vad.update(agent_rms);
        let user_onset = frame.user_active && !state.user_was_active;
        let barge_in = user_onset && state.agent_was_speaking;
        state.user_was_active = frame.user_active;
        state.agent_was_speaking = agent_speaking;
        m.speaking.store(agent_speaking, Ordering::Relaxed);
        if barge_in {
            m.barge_ins.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(stages) = done.stages {
            state.turns.stages(stages);
        }
        let turn = state.turns.frame(TurnFrame {
            tick: done.tick,
            user_loud: frame.user_loud,
            user_active: frame.user_active,
            agent_loud: state.agent_vad.loud(),
            barge_in,
            own,
            compute: done.compute,
        });
        if let Some(reaction) = turn.barge_in_reaction {
            m.barge_in_reaction.record(reaction);
        }
        if let Some(finished) = turn.finished {
            m.record_turn(finished);
        }
        m.turn_open.store(state.turns.in_turn(), Ordering::Relaxed);

        let piece: Option<Arc<str>> = done
            .output
            .text
            .take()
            .filter(|t| !t.is_empty())
            .map(Arc::from);
        state.outputs.push(done.output);
        if let Some(text) = &piece {
            m.text_pieces.fetch_add(1, Ordering::Relaxed);
            self.monologue.text_piece(TextPiece {
                tick: done.tick,
                text: Arc::clone(text),
            });
        }
        let stats = FrameStats {
            tick: done.tick,
            agent_rms,
            user_rms: frame.user_rms,
            agent_speaking,
            user_active: frame.user_active,
            barge_in,
            piece,
            emitted_at: Instant::now(),
        };
        self.affect.frame(stats.clone());
        self.face.frame(stats);
        m.step_latency.record(frame.taken_at.elapsed());
        if let Some(agent) = tap {
            // Last, so a subscriber that sees the step also sees its turn published.
            let _ = self.taps.send(StepTap {
                tick: done.tick,
                user_from: frame.user_from,
                user_samples: frame.user_samples,
                agent,
            });
        }

        // Catch up: a frame that waited while the model was busy goes in right away.
        if !state.backlog.is_empty() {
            self.submit_next(state, None);
        }
        m.overhead.record(frame.intake_overhead + started.elapsed());
    }

    /// Publish what snapshots report, after each message (plain atomic stores).
    fn publish(&self, state: &VoiceState) {
        let m = &self.metrics;
        let in_flight = state.in_flight.as_ref().map_or(NONE_IN_FLIGHT, |f| f.tick);
        m.in_flight.store(in_flight, Ordering::Relaxed);
        m.backlog
            .store(state.backlog.len() as u64, Ordering::Relaxed);
        m.heard_waiting
            .store(state.heard.len() as u64, Ordering::Relaxed);
        m.inbox_dropped
            .store(self.inbox.dropped(), Ordering::Relaxed);
    }
}

impl Voice {
    /// Handle every tick and step result waiting in the feeds, then publish. Step results
    /// go first, so a tick that comes with the result of the step before it submits at once.
    fn drain(&self, state: &Mutex<VoiceState>, ticks: &Feed<Tick>) {
        let Ok(mut state) = state.lock() else {
            return;
        };
        loop {
            let mut handled = false;
            while let Some(done) = self.steps.pop() {
                self.on_step_done(&mut state, done);
                self.slot.stats().mark_handled();
                handled = true;
            }
            if let Some(Tick { n, sent }) = ticks.pop() {
                self.on_tick(&mut state, n, sent);
                self.slot.stats().mark_handled();
                handled = true;
            }
            if !handled {
                break;
            }
        }
        self.publish(&state);
    }

    /// The loop task of one incarnation: wait for a tick or a step result, handle what
    /// waits, again. A panic in the loop is caught here and fails the actor (its supervisor
    /// restarts it); catching costs nothing until something panics.
    async fn run_loop(
        self,
        state: Arc<Mutex<VoiceState>>,
        ticks: Arc<Feed<Tick>>,
        myself: ActorRef<VoiceMsg>,
    ) {
        loop {
            let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.drain(&state, &ticks)
            }));
            if let Err(panic) = drained {
                let what = crate::handle::panic_message(&*panic);
                let _ = myself.cast(VoiceMsg::LoopFailed(what));
                return;
            }
            tokio::select! {
                _ = ticks.pushed() => {}
                _ = self.steps.pushed() => {}
            }
        }
    }
}

impl Actor for Voice {
    type Msg = VoiceMsg;
    type State = VoiceIncarnation;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<VoiceMsg>,
        _: (),
    ) -> Result<VoiceIncarnation, ActorProcessingErr> {
        // This runs on the loop's thread: count its allocations (if anything counts).
        mark_current_thread(LoopThread::Loop);
        self.slot.set(myself.clone());
        let hang = self.config.vad_hangover_frames;
        let state = Arc::new(Mutex::new(VoiceState {
            in_flight: None,
            backlog: VecDeque::with_capacity(self.config.backlog_frames + 1),
            heard: Vec::new(),
            last_tick_at: None,
            user_vad: EnergyVad::new(self.config.user_vad_dbfs, hang),
            agent_vad: EnergyVad::new(self.config.agent_speaking_dbfs, hang),
            user_was_active: false,
            agent_was_speaking: false,
            pool: (0..self.config.backlog_frames + 2)
                .map(|_| vec![0.0; FRAME_SAMPLES])
                .collect(),
            agent_frames: Vec::with_capacity(AGENT_FRAME_POOL),
            outputs: (0..2).map(|_| StepOutput::silence()).collect(),
            steps_since_status: 0,
            turns: TurnTracker::new(),
        }));
        let ticks = Arc::new(Feed::new(TICK_FEED));
        let ticker = if self.config.manual_ticks {
            None
        } else {
            Some(spawn_ticker(
                Arc::clone(&ticks),
                self.clock,
                Arc::clone(&self.metrics),
                self.config.realtime_priority,
            )?)
        };
        // On the loop's runtime, like this actor.
        let task = tokio::spawn(self.clone().run_loop(Arc::clone(&state), ticks, myself));
        Ok(VoiceIncarnation {
            _ticker: ticker,
            _task: AbortOnDrop(task.abort_handle()),
            state,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<VoiceMsg>,
        msg: VoiceMsg,
        incarnation: &mut VoiceIncarnation,
    ) -> Result<(), ActorProcessingErr> {
        if let VoiceMsg::LoopFailed(what) = msg {
            return Err(format!("the voice loop panicked: {what}").into());
        }
        let Ok(mut state) = incarnation.state.lock() else {
            return Err("the voice loop's state was poisoned by a panic".into());
        };
        match msg {
            VoiceMsg::Tick { n, sent } => self.on_tick(&mut state, n, sent),
            VoiceMsg::Hear { text } => {
                if state.heard.len() < MAX_HEARD {
                    state.heard.push(text);
                } else {
                    tracing::warn!("typed text dropped: {MAX_HEARD} utterances already waiting");
                }
            }
            VoiceMsg::LoopFailed(_) => {}
            #[cfg(feature = "fault-injection")]
            VoiceMsg::Crash => panic!("injected fault in voice"),
        }
        self.publish(&state);
        self.slot.stats().mark_handled();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
