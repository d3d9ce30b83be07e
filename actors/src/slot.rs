//! A restart-proof address for an actor, and the counters the API reports about it.
//!
//! Handles never hold an `ActorRef` directly: when the brain restarts a child, the new
//! incarnation gets a new ref. A [`Slot`] is the one place that ref lives; the brain swaps it
//! on restart and every handle clone sees the new one. Loading it is a lock-free atomic read,
//! so the voice loop can cast through a slot without ever waiting.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};
use serde::Serialize;

use crate::ports::now_ms;

/// An actor's life as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// Counters for one actor, shared by its handles, the actor itself and the brain.
#[derive(Debug)]
pub struct ActorStats {
    name: &'static str,
    status: AtomicU8,
    restarts: AtomicU32,
    /// Messages the actor finished handling.
    handled: AtomicU64,
    /// Messages handed to the actor's mailbox; `sent - handled` is the mailbox depth.
    sent: AtomicU64,
    /// Messages that could not be delivered (the actor was between incarnations).
    undelivered: AtomicU64,
    started_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What `GET /api/actors` shows for one actor.
#[derive(Debug, Clone, Serialize)]
pub struct ActorSummary {
    pub name: &'static str,
    pub status: ActorStatus,
    pub restarts: u32,
    pub handled: u64,
    pub mailbox: u64,
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
            undelivered: AtomicU64::new(0),
            started_ms: AtomicU64::new(now_ms()),
            last_error: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn status(&self) -> ActorStatus {
        ActorStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    pub fn set_status(&self, status: ActorStatus) {
        self.status.store(status.as_u8(), Ordering::Relaxed);
        if status == ActorStatus::Running {
            self.started_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Called by the actor at the end of each message.
    pub fn mark_handled(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
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
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
        if restarting {
            self.restarts.fetch_add(1, Ordering::Relaxed);
            self.set_status(ActorStatus::Restarting);
        } else {
            self.set_status(ActorStatus::Failed);
        }
        self.sent
            .store(self.handled.load(Ordering::Relaxed), Ordering::Relaxed);
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
        let sent = self.sent.load(Ordering::Relaxed);
        let status = self.status();
        ActorSummary {
            name: self.name,
            status,
            restarts: self.restarts(),
            handled,
            mailbox: sent.saturating_sub(handled),
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
            Some(actor) => actor.cast(msg).is_ok(),
            None => false,
        };
        if delivered {
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
        } else {
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
        match actor.cast(msg) {
            Ok(()) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(ractor::MessagingErr::SendErr(m)) => Err(m),
            // The other variants carry no message; a cast never produces them.
            Err(_) => {
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
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        match actor.call(build, Some(timeout)).await {
            Ok(CallResult::Success(reply)) => Ok(reply),
            Ok(CallResult::Timeout) => Err(CallError::Timeout(name, timeout)),
            Ok(CallResult::SenderError) => Err(CallError::Dropped(name)),
            Err(_) => {
                self.stats.sent.fetch_sub(1, Ordering::Relaxed);
                Err(CallError::NotRunning(name))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
