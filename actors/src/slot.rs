//! A restart-proof address for an actor, and the counters the API reports about it.
//!
//! Handles never hold an `ActorRef` directly: when the brain restarts a child, the new
//! incarnation gets a new ref. A [`Slot`] is the one place that ref lives; the brain swaps it
//! on restart and every handle clone sees the new one. Loading it is a lock-free atomic read,
//! so the voice loop can cast through a slot without ever waiting.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::events::{Event, EventBus};
use crate::histogram::{LatencyHistogram, Percentiles};
use crate::ports::now_ms;

/// An actor's life as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    Starting,
    Running,
    /// Failed and being started again by the brain.
    Restarting,
    /// Stopped on purpose (shutdown).
    Stopped,
    /// Failed and not restarted (restart intensity exceeded).
    Failed,
}

impl ActorStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => ActorStatus::Starting,
            1 => ActorStatus::Running,
            2 => ActorStatus::Restarting,
            3 => ActorStatus::Stopped,
            _ => ActorStatus::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ActorStatus::Starting => "starting",
            ActorStatus::Running => "running",
            ActorStatus::Restarting => "restarting",
            ActorStatus::Stopped => "stopped",
            ActorStatus::Failed => "failed",
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            ActorStatus::Starting => 0,
            ActorStatus::Running => 1,
            ActorStatus::Restarting => 2,
            ActorStatus::Stopped => 3,
            ActorStatus::Failed => 4,
        }
    }
}

/// How many enqueue times a slot remembers: a message that waited behind more than this
/// many others is handled without its latency being recorded.
const STAMPS: usize = 1024;
/// The low bits of a stamp hold the low bits of its message's sequence number, so a
/// stamp overwritten by a later message (or not yet written) is recognised.
const TAG_BITS: u32 = 16;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// Counters for one actor, shared by its handles, the actor itself and the brain. Every
/// figure is an atomic (or, for the rare error text, a mutex no hot path takes): readers
/// never ask the actor, and the voice loop's casts only add to atomics.
#[derive(Debug)]
pub struct ActorStats {
    name: &'static str,
    status: AtomicU8,
    restarts: AtomicU32,
    /// Messages the actor finished handling (mailbox messages, and for the voice and the
    /// face the items their feeds hand over).
    handled: AtomicU64,
    /// Messages handed to the actor's mailbox through its slot; also the sequence number
    /// of the next one.
    sent: AtomicU64,
    /// How many of the `sent` messages have been handled (or went down with a failed
    /// incarnation); `sent - taken` is the mailbox depth. Self-sent messages (timers) are
    /// handled but never sent through the slot, so this is not `handled`.
    taken: AtomicU64,
    /// When message `seq` was enqueued, at `seq % STAMPS`: microseconds since `epoch`
    /// shifted up by `TAG_BITS`, tagged with `seq`'s low bits.
    stamps: Box<[AtomicU64]>,
    epoch: Instant,
    /// Enqueue -> handled, for messages through the mailbox.
    latency: LatencyHistogram,
    /// Deepest mailbox since the process started.
    mailbox_peak: AtomicU64,
    /// Deepest mailbox since the sampler last looked (for the per-second sparkline).
    window_peak: AtomicU64,
    /// Messages handled per second over the sampler's last period (f64 bits).
    rate: AtomicU64,
    /// Messages that could not be delivered (the actor was between incarnations).
    undelivered: AtomicU64,
    started_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Where status changes and failures are published; set once by the brain.
    events: OnceLock<EventBus>,
}

/// One actor's figures as the event stream and `creature top` report them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorFigures {
    pub name: String,
    pub status: ActorStatus,
    pub restarts: u32,
    pub handled: u64,
    pub mailbox: u64,
    /// Deepest mailbox since the process started.
    pub mailbox_peak: u64,
    /// Deepest mailbox over the last second.
    pub mailbox_recent_peak: u64,
    pub messages_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub uptime_ms: u64,
    pub undelivered: u64,
}

/// What `GET /api/actors` shows for one actor.
#[derive(Debug, Clone, Serialize)]
pub struct ActorSummary {
    pub name: &'static str,
    pub status: ActorStatus,
    pub restarts: u32,
    pub handled: u64,
    pub mailbox: u64,
    /// Deepest mailbox since the process started.
    pub mailbox_peak: u64,
    pub messages_per_sec: f64,
    /// Enqueue -> handled, over the actor's whole life.
    pub latency_ms: Percentiles,
    pub undelivered: u64,
    pub uptime_ms: u64,
    pub last_error: Option<String>,
}

impl ActorStats {
    pub fn new(name: &'static str) -> Self {
        ActorStats {
            name,
            status: AtomicU8::new(ActorStatus::Starting.as_u8()),
            restarts: AtomicU32::new(0),
            handled: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            stamps: (0..STAMPS).map(|_| AtomicU64::new(u64::MAX)).collect(),
            epoch: Instant::now(),
            latency: LatencyHistogram::new(),
            mailbox_peak: AtomicU64::new(0),
            window_peak: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            undelivered: AtomicU64::new(0),
            started_ms: AtomicU64::new(now_ms()),
            last_error: Mutex::new(None),
            events: OnceLock::new(),
        }
    }

    /// Publish this actor's status changes and failures on `bus` from now on (once).
    pub fn attach_events(&self, bus: EventBus) {
        let _ = self.events.set(bus);
    }

    /// The bus this actor publishes on, once the brain attached one.
    pub fn events(&self) -> Option<&EventBus> {
        self.events.get()
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX >> TAG_BITS)
    }

    /// Take sequence number `seq` for a message about to be enqueued, and remember when.
    fn enqueue(&self) -> u64 {
        let seq = self.sent.fetch_add(1, Ordering::Relaxed);
        let stamp = (self.now_us() << TAG_BITS) | (seq & TAG_MASK);
        self.stamps[seq as usize % STAMPS].store(stamp, Ordering::Release);
        seq
    }

    /// The message `seq` is in the mailbox: note how deep the mailbox is.
    fn enqueued(&self, seq: u64) {
        let depth = (seq + 1).saturating_sub(self.taken.load(Ordering::Relaxed));
        self.mailbox_peak.fetch_max(depth, Ordering::Relaxed);
        self.window_peak.fetch_max(depth, Ordering::Relaxed);
    }

    /// The message could not be enqueued after all.
    fn not_enqueued(&self) {
        self.sent.fetch_sub(1, Ordering::Relaxed);
    }

    /// The mailbox's messages are handled in order: the oldest not yet taken is the one
    /// just handled, unless it was a self-sent one (then the next mailbox message is
    /// counted a little early, and one latency is recorded short).
    fn take_one(&self) {
        let sent = self.sent.load(Ordering::Relaxed);
        let taken = self.taken.load(Ordering::Relaxed);
        if taken >= sent
            || self
                .taken
                .compare_exchange(taken, taken + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let stamp = self.stamps[taken as usize % STAMPS].load(Ordering::Acquire);
        if stamp & TAG_MASK == taken & TAG_MASK {
            let waited = self.now_us().saturating_sub(stamp >> TAG_BITS);
            self.latency.record_us(waited);
        }
    }

    /// Enqueue -> handled, over the actor's life.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Messages waiting in the mailbox now.
    pub fn mailbox(&self) -> u64 {
        self.sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.taken.load(Ordering::Relaxed))
    }

    /// Set by the sampler once a period.
    pub(crate) fn set_rate(&self, per_sec: f64) {
        self.rate.store(per_sec.to_bits(), Ordering::Relaxed);
    }

    pub fn messages_per_sec(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    /// The figures for the event stream; starts a new window for the recent peak.
    pub fn figures(&self) -> ActorFigures {
        let summary = self.summary();
        let latency = self.latency.percentiles();
        let recent = self.window_peak.swap(summary.mailbox, Ordering::Relaxed);
        ActorFigures {
            name: self.name.to_string(),
            status: summary.status,
            restarts: summary.restarts,
            handled: summary.handled,
            mailbox: summary.mailbox,
            mailbox_peak: summary.mailbox_peak,
            mailbox_recent_peak: recent.max(summary.mailbox),
            messages_per_sec: summary.messages_per_sec,
            latency_p50_ms: latency.p50_ms,
            latency_p99_ms: latency.p99_ms,
            latency_max_ms: latency.max_ms,
            uptime_ms: summary.uptime_ms,
            undelivered: summary.undelivered,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn status(&self) -> ActorStatus {
        ActorStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    pub fn set_status(&self, status: ActorStatus) {
        let before = self.status.swap(status.as_u8(), Ordering::Relaxed);
        if status == ActorStatus::Running {
            self.started_ms.store(now_ms(), Ordering::Relaxed);
        }
        if before != status.as_u8()
            && let Some(bus) = self.events.get()
        {
            bus.publish(Event::ActorStatus {
                actor: self.name.to_string(),
                status,
                restarts: self.restarts(),
            });
        }
    }

    /// Called by the actor at the end of each message.
    pub fn mark_handled(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.take_one();
    }

    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// A failure: remember why, count the restart, and forget the dead mailbox (its
    /// messages went down with the old incarnation).
    pub fn record_failure(&self, error: String, restarting: bool) {
        if restarting {
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(bus) = self.events.get() {
            bus.publish(Event::ActorFailed {
                actor: self.name.to_string(),
                reason: error.clone(),
                restarting,
                restarts: self.restarts(),
            });
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
        if restarting {
            self.set_status(ActorStatus::Restarting);
        } else {
            self.set_status(ActorStatus::Failed);
        }
        self.taken
            .store(self.sent.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// A message that could not be delivered to any incarnation.
    pub fn count_undelivered(&self) {
        self.undelivered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn summary(&self) -> ActorSummary {
        let handled = self.handled.load(Ordering::Relaxed);
        let status = self.status();
        ActorSummary {
            name: self.name,
            status,
            restarts: self.restarts(),
            handled,
            mailbox: self.mailbox(),
            mailbox_peak: self.mailbox_peak.load(Ordering::Relaxed),
            messages_per_sec: self.messages_per_sec(),
            latency_ms: self.latency.percentiles(),
            undelivered: self.undelivered.load(Ordering::Relaxed),
            uptime_ms: if status == ActorStatus::Running {
                now_ms().saturating_sub(self.started_ms.load(Ordering::Relaxed))
            } else {
                0
            },
            last_error: self.last_error(),
        }
    }
}

/// Why a request to an actor got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("actor {0} is not running")]
    NotRunning(&'static str),
    #[error("actor {0} did not answer within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("actor {0} dropped the request")]
    Dropped(&'static str),
}

/// The current incarnation of one actor, plus its counters.
pub struct Slot<M: Message> {
    current: Arc<ArcSwapOption<ActorRef<M>>>,
    stats: Arc<ActorStats>,
}

impl<M: Message> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Slot {
            current: Arc::clone(&self.current),
            stats: Arc::clone(&self.stats),
        }
    }
}

impl<M: Message> std::fmt::Debug for Slot<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("name", &self.stats.name)
            .finish()
    }
}

impl<M: Message> Slot<M> {
    /// An empty slot; the brain fills it when the actor starts.
    pub fn new(name: &'static str) -> Self {
        Slot {
            current: Arc::new(ArcSwapOption::empty()),
            stats: Arc::new(ActorStats::new(name)),
        }
    }

    pub fn stats(&self) -> &Arc<ActorStats> {
        &self.stats
    }

    pub fn name(&self) -> &'static str {
        self.stats.name
    }

    /// Publish the event `make` builds, if the brain attached an event bus; `make` runs
    /// only then. For the slow actors' hooks (the voice loop publishes nothing).
    pub fn publish_with(&self, make: impl FnOnce() -> Event) {
        if let Some(bus) = self.stats.events() {
            bus.publish(make());
        }
    }

    /// Point the slot at a (new) incarnation.
    pub fn set(&self, actor: ActorRef<M>) {
        self.current.store(Some(Arc::new(actor)));
    }

    /// The current incarnation, if one is running.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.current.load_full().map(|a| (*a).clone())
    }

    /// Fire and forget. A message to an actor between incarnations is counted and dropped:
    /// the sender never waits for the restart.
    pub fn cast(&self, msg: M) -> bool {
        let guard = self.current.load();
        let delivered = match guard.as_ref() {
            Some(actor) => {
                let seq = self.stats.enqueue();
                let ok = actor.cast(msg).is_ok();
                if ok {
                    self.stats.enqueued(seq);
                } else {
                    self.stats.not_enqueued();
                }
                ok
            }
            None => false,
        };
        if !delivered {
            self.stats.undelivered.fetch_add(1, Ordering::Relaxed);
        }
        delivered
    }

    /// Cast, handing the message back when no incarnation can take it (the caller may
    /// retry). Nothing is counted as undelivered.
    pub fn try_cast(&self, msg: M) -> Result<(), M> {
        let guard = self.current.load();
        let Some(actor) = guard.as_ref() else {
            return Err(msg);
        };
        let seq = self.stats.enqueue();
        match actor.cast(msg) {
            Ok(()) => {
                self.stats.enqueued(seq);
                Ok(())
            }
            Err(ractor::MessagingErr::SendErr(m)) => {
                self.stats.not_enqueued();
                Err(m)
            }
            // The other variants carry no message; a cast never produces them.
            Err(_) => {
                self.stats.not_enqueued();
                self.stats.undelivered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Ask and wait for the answer, at most `timeout`.
    pub async fn call<R, F>(&self, build: F, timeout: Duration) -> Result<R, CallError>
    where
        R: Send + 'static,
        F: FnOnce(RpcReplyPort<R>) -> M,
    {
        let name = self.stats.name;
        let actor = self.get().ok_or(CallError::NotRunning(name))?;
        let seq = self.stats.enqueue();
        self.stats.enqueued(seq);
        match actor.call(build, Some(timeout)).await {
            Ok(CallResult::Success(reply)) => Ok(reply),
            Ok(CallResult::Timeout) => Err(CallError::Timeout(name, timeout)),
            Ok(CallResult::SenderError) => Err(CallError::Dropped(name)),
            Err(_) => {
                self.stats.not_enqueued();
                Err(CallError::NotRunning(name))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
