//! The live event stream: what the tree does, as it happens, for the inspector page,
//! `creature top` and anyone else watching `GET /api/events`.
//!
//! Publishers (the slow actors' one-line hooks, the slots' status changes, the 1 s
//! [`Sampler`]) hand an [`Event`] to the [`EventBus`]; it numbers it, keeps the newest
//! `replay_events` for viewers that arrive later, and fans it out to every viewer through a
//! bounded broadcast channel. Nothing waits for a viewer: one that falls behind skips ahead
//! and is told how many events it missed. The voice loop publishes nothing itself: its
//! figures are read once a second from the lock-free [`VoiceMetrics`] by the sampler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::histogram::HistogramSnapshot;
use crate::ports::{Task, TaskState, now_ms};
use crate::ring::Ring;
use crate::slot::{ActorFigures, ActorStats, ActorStatus};
use crate::voice::VoiceMetrics;

/// Inspector settings: `[inspect]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InspectConfig {
    /// Let an operator (with the token) make a chosen actor fail, to watch supervision
    /// work: `POST /api/actors/{name}/fail`. Off unless set.
    pub fault_injection: bool,
    /// Events kept for a viewer that connects later (it sees them first, in order).
    pub replay_events: usize,
    /// Events a viewer may fall behind before it skips ahead (and is told how many).
    pub viewer_lag_events: usize,
    /// Event-stream viewers at once; more are refused with 503.
    pub max_viewers: usize,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            fault_injection: false,
            replay_events: 512,
            viewer_lag_events: 256,
            max_viewers: 32,
        }
    }
}

/// One thing that happened, as the stream carries it (`kind` names the variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// An actor's status changed (starting, running, restarting, stopped, failed).
    ActorStatus {
        actor: String,
        status: ActorStatus,
        restarts: u32,
    },
    /// An actor failed; `restarting` says whether its supervisor starts it again.
    ActorFailed {
        actor: String,
        reason: String,
        restarting: bool,
        restarts: u32,
    },
    /// A piece of the inner monologue, as the voice model said it.
    Piece { tick: u64, text: String },
    /// A phrase the watcher closed, with the intent it read in it, if any.
    Phrase(PhraseEvent),
    /// A task was filed or changed state.
    Task(TaskEvent),
    /// The affect point moved or its label changed.
    Affect {
        emotion: String,
        valence: f32,
        arousal: f32,
    },
    /// The fast loop's figures, once a second.
    Loop(LoopFigures),
    /// Every actor's counters, once a second.
    Actors { actors: Vec<ActorFigures> },
    /// One user turn's timings, as the loop's turn tracker recorded it (`TurnRecord`),
    /// published by the sampler within a second of the turn's end.
    Turn { figures: serde_json::Value },
    /// Only ever sent to one viewer: it fell behind and skipped `skipped` events.
    Lagged { skipped: u64 },
}

impl Event {
    /// The `kind` tag, for the stream's `event:` field and the metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ActorStatus { .. } => "actor_status",
            Event::ActorFailed { .. } => "actor_failed",
            Event::Piece { .. } => "piece",
            Event::Phrase(_) => "phrase",
            Event::Task(_) => "task",
            Event::Affect { .. } => "affect",
            Event::Loop(_) => "loop",
            Event::Actors { .. } => "actors",
            Event::Turn { .. } => "turn",
            Event::Lagged { .. } => "lagged",
        }
    }

    /// A closed phrase, from the watcher's own record of it (any serializable shape with
    /// `text`, `tick`, `closed_by` and an optional `intent`).
    pub fn phrase(record: &impl Serialize) -> Event {
        let value = serde_json::to_value(record).unwrap_or_default();
        Event::Phrase(serde_json::from_value(value).unwrap_or_default())
    }

    /// A task just written, `before` being its previous state (`None`: just filed).
    pub fn task(task: &Task, before: Option<TaskState>) -> Event {
        Event::Task(TaskEvent {
            id: task.id.clone(),
            state: task.state.as_str().to_string(),
            previous: before.map(|b| b.as_str().to_string()),
            action: task.arguments.action.as_str().to_string(),
            object: task.arguments.object.clone(),
            destination: task.arguments.destination.clone(),
            utterance: task.arguments.utterance.clone(),
            source: match task.source {
                crate::ports::TaskSource::Monologue => "monologue".into(),
                crate::ports::TaskSource::Api => "api".into(),
            },
            plan: task.plan.as_ref().map(|p| p.plan.clone()),
            created_ms: task.created_ms,
        })
    }
}

/// A closed phrase of the inner monologue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhraseEvent {
    pub text: String,
    /// The tick of the piece that closed it.
    pub tick: u64,
    /// `punctuation`, `pause` or `length`.
    pub closed_by: String,
    pub intent: Option<PhraseIntent>,
}

/// The intent read in a phrase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhraseIntent {
    pub action: String,
    pub object: String,
    pub destination: Option<String>,
    pub confidence: f32,
    /// Which detector read it; `vetoed` when the classifier judged it a near-miss.
    pub detector: String,
    pub score: f32,
    /// Ignored as a repeat of one fired moments ago (so no task was filed for it).
    pub repeat: bool,
}

/// A task as the stream reports a change of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub id: String,
    pub state: String,
    pub previous: Option<String>,
    pub action: String,
    pub object: String,
    pub destination: Option<String>,
    /// The words that asked for it: for a monologue task, the phrase that filed it.
    pub utterance: String,
    /// `monologue` or `api`.
    pub source: String,
    pub plan: Option<String>,
    pub created_ms: u64,
}

/// The fast loop over the last second (percentiles of that second only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopFigures {
    pub ticks: u64,
    pub overruns: u64,
    pub missed_ticks: u64,
    pub dropped_frames: u64,
    pub text_pieces: u64,
    pub speaking: bool,
    pub user_active: bool,
    /// Ticks in the last second.
    pub ticks_per_sec: f64,
    pub jitter_p50_ms: f64,
    pub jitter_p99_ms: f64,
    pub jitter_max_ms: f64,
    pub compute_p50_ms: f64,
    pub compute_p99_ms: f64,
}

/// One published event: its place in the stream, and its JSON (made once, for every
/// viewer).
#[derive(Debug)]
pub struct Published {
    pub seq: u64,
    pub kind: &'static str,
    /// `{"seq":..,"t_ms":..,"kind":..,...}`.
    pub json: String,
}

/// What a new viewer gets: the recent past, then the live stream.
pub struct Subscription {
    /// Replayed events, oldest first.
    pub replay: Vec<Arc<Published>>,
    /// Every event published after the last replayed one.
    pub live: broadcast::Receiver<Arc<Published>>,
    /// Events after the viewer's `after` that are no longer kept (it resumed too late).
    pub missed: u64,
}

/// The counters `/metrics` reports about the stream.
#[derive(Debug, Default)]
pub struct BusCounters {
    pub published: AtomicU64,
    /// Events viewers skipped because they fell behind.
    pub skipped: AtomicU64,
    /// Viewers cut off because they stopped reading.
    pub viewers_dropped: AtomicU64,
    /// Tasks that entered each state, by [`TaskState::ALL`] index then source
    /// (monologue, api): filings count as entering `pending`.
    task_transitions: [[AtomicU64; 2]; TaskState::ALL.len()],
}

impl BusCounters {
    /// `(state, source, count)` of every task transition seen, for `/metrics`.
    pub fn task_transitions(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (i, state) in TaskState::ALL.iter().enumerate() {
            for (j, source) in ["monologue", "api"].iter().enumerate() {
                out.push((
                    state.as_str(),
                    *source,
                    self.task_transitions[i][j].load(Ordering::Relaxed),
                ));
            }
        }
        out
    }

    fn count_task(&self, task: &TaskEvent) {
        let state = TaskState::ALL.iter().position(|s| s.as_str() == task.state);
        let source = usize::from(task.source != "monologue");
        if let Some(i) = state {
            self.task_transitions[i][source].fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct BusInner {
    /// The replay ring and the next sequence number; held only to number, store and send
    /// one event, so the order in the ring and on the channel is the same.
    replay: Mutex<(Ring<Arc<Published>>, u64)>,
    live: broadcast::Sender<Arc<Published>>,
    counters: BusCounters,
}

/// The event bus. Cheap to clone; every clone publishes to the same viewers.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("viewers", &self.viewers())
            .finish()
    }
}

impl EventBus {
    /// A bus that replays the newest `replay` events and lets a viewer lag `lag` events.
    pub fn new(replay: usize, lag: usize) -> Self {
        let (live, _) = broadcast::channel(lag.max(1));
        EventBus {
            inner: Arc::new(BusInner {
                replay: Mutex::new((Ring::new(replay.max(1)), 1)),
                live,
                counters: BusCounters::default(),
            }),
        }
    }

    /// Number the event, keep it for replay and send it to every viewer. Never waits for
    /// a viewer; the lock is held only to number, store and send it.
    pub fn publish(&self, event: Event) {
        let kind = event.kind();
        if let Event::Task(task) = &event {
            self.inner.counters.count_task(task);
        }
        let body = match serde_json::to_string(&event) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(kind, cause = %e, "an event could not be written as JSON");
                return;
            }
        };
        let t_ms = now_ms();
        let Ok(mut replay) = self.inner.replay.lock() else {
            return;
        };
        let seq = replay.1;
        replay.1 += 1;
        // `body` is an object starting with `{"kind":`: put the envelope fields first.
        let json = format!("{{\"seq\":{seq},\"t_ms\":{t_ms},{}", &body[1..]);
        let published = Arc::new(Published { seq, kind, json });
        replay.0.push(Arc::clone(&published));
        // No viewer is not an error.
        let _ = self.inner.live.send(published);
        drop(replay);
        self.inner
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Start watching: the kept events after `after` (all of them for `None`), then
    /// everything published from now on, with no gap and no repeat between the two.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let replay = match self.inner.replay.lock() {
            Ok(replay) => replay,
            Err(poisoned) => poisoned.into_inner(),
        };
        let live = self.inner.live.subscribe();
        let kept: Vec<Arc<Published>> = replay
            .0
            .iter()
            .filter(|p| after.is_none_or(|a| p.seq > a))
            .cloned()
            .collect();
        let missed = match (after, kept.first()) {
            (Some(a), Some(first)) => first.seq.saturating_sub(a + 1),
            (Some(a), None) => replay.1.saturating_sub(a + 1),
            (None, _) => 0,
        };
        Subscription {
            replay: kept,
            live,
            missed,
        }
    }

    /// Viewers subscribed now.
    pub fn viewers(&self) -> usize {
        self.inner.live.receiver_count()
    }

    pub fn counters(&self) -> &BusCounters {
        &self.inner.counters
    }
}

/// The 1 s task that publishes the loop's and the actors' figures, read from lock-free
/// counters (it never sends the fast loop a message). It ends when dropped.
pub struct Sampler {
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").finish()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often the sampler publishes.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

impl Sampler {
    /// Publish the figures of `voice` and `actors` on `bus` every `period`, on the
    /// caller's runtime.
    pub fn start(
        bus: EventBus,
        voice: Arc<VoiceMetrics>,
        actors: Vec<Arc<ActorStats>>,
        period: Duration,
    ) -> Sampler {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last = LoopSample::take(&voice);
            let mut handled: Vec<u64> = actors.iter().map(|a| a.handled()).collect();
            let mut counted_at = Instant::now();
            // Turns already on the stream (the tracker numbers them from 1).
            let mut turns_seen = voice.turns.load(Ordering::Relaxed);
            loop {
                tick.tick().await;
                let now = LoopSample::take(&voice);
                bus.publish(Event::Loop(now.figures_since(&last, &voice)));
                last = now;
                turns_seen = publish_new_turns(&bus, &voice, turns_seen);
                let secs = counted_at.elapsed().as_secs_f64().max(1e-3);
                counted_at = Instant::now();
                let figures = actors
                    .iter()
                    .zip(handled.iter_mut())
                    .map(|(stats, before)| {
                        let h = stats.handled();
                        let rate = h.saturating_sub(*before) as f64 / secs;
                        *before = h;
                        stats.set_rate(rate);
                        stats.figures()
                    })
                    .collect();
                bus.publish(Event::Actors { actors: figures });
            }
        });
        Sampler { task }
    }
}

/// Publish the turns the loop's turn tracker finished since turn `seen` (read from the
/// turns it keeps in [`VoiceMetrics`], lock-free); returns the newest turn's index. Turns
/// older than the kept ones are skipped.
fn publish_new_turns(bus: &EventBus, voice: &VoiceMetrics, seen: u64) -> u64 {
    let count = voice.turns.load(Ordering::Relaxed);
    if count <= seen {
        return seen;
    }
    let mut newest = seen;
    for turn in voice.recent_turns() {
        if turn.index > seen {
            newest = newest.max(turn.index);
            bus.publish(Event::Turn {
                figures: serde_json::to_value(turn).unwrap_or_default(),
            });
        }
    }
    newest.max(count)
}

/// The loop's counters at one moment, to report the second since.
struct LoopSample {
    at: Instant,
    ticks: u64,
    jitter: HistogramSnapshot,
    compute: HistogramSnapshot,
}

impl LoopSample {
    fn take(voice: &VoiceMetrics) -> LoopSample {
        LoopSample {
            at: Instant::now(),
            ticks: voice.ticks.load(Ordering::Relaxed),
            jitter: voice.jitter.snapshot(),
            compute: voice.compute.snapshot(),
        }
    }

    fn figures_since(&self, earlier: &LoopSample, voice: &VoiceMetrics) -> LoopFigures {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
        let jitter = self.jitter.since(&earlier.jitter).percentiles();
        let compute = self.compute.since(&earlier.compute).percentiles();
        LoopFigures {
            ticks: self.ticks,
            overruns: load(&voice.overruns),
            missed_ticks: load(&voice.missed_ticks),
            dropped_frames: load(&voice.dropped_frames),
            text_pieces: load(&voice.text_pieces),
            speaking: voice.speaking.load(Ordering::Relaxed),
            user_active: voice.user_active.load(Ordering::Relaxed),
            ticks_per_sec: self.ticks.saturating_sub(earlier.ticks) as f64 / secs,
            jitter_p50_ms: jitter.p50_ms,
            jitter_p99_ms: jitter.p99_ms,
            jitter_max_ms: jitter.max_ms,
            compute_p50_ms: compute.p50_ms,
            compute_p99_ms: compute.p99_ms,
        }
    }
}

#[cfg(test)]
mod tests;
