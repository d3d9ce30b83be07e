//! Scheduling priority for the fast loop's threads (the ticker and the voice actor's
//! runtime). They mostly sleep and then must run within a fraction of a millisecond, so they
//! ask the OS for real-time scheduling (`SCHED_FIFO`), like audio threads do; where that is
//! not allowed they settle for the highest normal priority, and where even that is refused
//! they run as they are. The model's compute thread is left alone: it is heavy, and giving
//! it real-time priority could starve the rest of the machine.

use serde::Serialize;
use thread_priority::{
    RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    set_current_thread_priority, set_thread_priority_and_policy, thread_native_id,
};

/// What the OS granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Real-time, first-in first-out.
    Realtime,
    /// The highest normal (time-sharing) priority.
    Raised,
    /// Nothing changed (not permitted, or not asked for).
    Normal,
}

/// A mid-range real-time priority on the portable 0..99 scale: above ordinary threads, below
/// the kernel's own interrupt threads.
const REALTIME_LEVEL: u8 = 40;

/// Raise the calling thread's priority as far as the OS allows.
pub fn promote_current_thread(what: &'static str) -> Priority {
    let realtime = ThreadPriorityValue::try_from(REALTIME_LEVEL)
        .map_err(|e| e.to_string())
        .and_then(|level| {
            set_thread_priority_and_policy(
                thread_native_id(),
                ThreadPriority::Crossplatform(level),
                ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
            )
            .map_err(|e| format!("{e:?}"))
        });
    match realtime {
        Ok(()) => {
            tracing::debug!(thread = what, "real-time scheduling");
            Priority::Realtime
        }
        Err(why) => match set_current_thread_priority(ThreadPriority::Max) {
            Ok(()) => {
                tracing::debug!(thread = what, %why, "no real-time scheduling; raised priority");
                Priority::Raised
            }
            Err(e) => {
                tracing::info!(thread = what, cause = ?e, "cannot raise the thread priority; timing may suffer under load");
                Priority::Normal
            }
        },
    }
}

/// Lower the calling thread to background priority (nice 10): for CPU-heavy slow-loop work
/// (a planner that computes locally, say), so it takes what the faster loops leave and
/// never competes with them for a core.
pub fn demote_current_thread(what: &'static str) -> bool {
    match ThreadPriorityValue::try_from(BACKGROUND_LEVEL) {
        Ok(level) => match set_current_thread_priority(ThreadPriority::Crossplatform(level)) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(thread = what, cause = ?e, "cannot lower the thread priority");
                false
            }
        },
        Err(_) => false,
    }
}

/// Background level on the portable 0..99 scale (maps to a positive nice value).
const BACKGROUND_LEVEL: u8 = 25;

/// Raise the calling thread to the highest normal priority (nice -20), without real-time
/// scheduling: for the service's async workers, which carry the face fan-out and the API
/// and should win the CPU over bulk work, but must not lock out the rest of the machine.
pub fn raise_current_thread(what: &'static str) -> Priority {
    match set_current_thread_priority(ThreadPriority::Max) {
        Ok(()) => Priority::Raised,
        Err(e) => {
            tracing::debug!(thread = what, cause = ?e, "cannot raise the thread priority");
            Priority::Normal
        }
    }
}
