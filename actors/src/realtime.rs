//! Scheduling priority for the fast loop's threads (the ticker and the voice actor's
//! runtime). They mostly sleep and then must run within a fraction of a millisecond, so they
//! ask the OS for real-time scheduling (`SCHED_FIFO`), like audio threads do; where that is
//! not allowed they settle for the highest normal priority, and where even that is refused
//! they run as they are. The model's compute thread asks for real-time scheduling too, one
//! level below them: a step that waits behind a build is an overrun, and the kernel's
//! real-time throttling still leaves the rest of the machine a share of every second.
//!
//! Also here, because they are about what the host does to those threads: which thread is
//! which for a counting allocator (allocations on the loop's threads are counted, see
//! [`note_allocation`]), and the host's steal time from `/proc/stat`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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

/// The model's compute thread: real-time, but below the ticker and the loop, so they
/// always preempt it.
const MODEL_LEVEL: u8 = 30;

/// Raise the calling thread's priority as far as the OS allows.
pub fn promote_current_thread(what: &'static str) -> Priority {
    promote_current_thread_to(what, REALTIME_LEVEL)
}

/// The face sockets' writer thread: real-time below the model, so a frame reaches every
/// phone without waiting behind bulk work, while the loop and the model always preempt it.
/// Its work is bounded (one small write per phone per frame).
const FANOUT_LEVEL: u8 = 20;

/// Raise the face writers' thread (real-time below the model, where allowed).
pub fn promote_fanout_thread(what: &'static str) -> Priority {
    promote_current_thread_to(what, FANOUT_LEVEL)
}

/// Raise the model's compute thread (real-time one step below the loop, where allowed).
pub fn promote_model_thread(what: &'static str) -> Priority {
    promote_current_thread_to(what, MODEL_LEVEL)
}

fn promote_current_thread_to(what: &'static str, level: u8) -> Priority {
    let realtime = ThreadPriorityValue::try_from(level)
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

/// The fast loop's threads, as the allocation counter tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopThread {
    /// Sleeps to each deadline and hands the tick over.
    Ticker = 0,
    /// The voice (and face) actors' runtime thread.
    Loop = 1,
    /// The model's compute thread.
    Model = 2,
}

thread_local! {
    /// Which loop thread this is (`NOT_A_LOOP_THREAD` for every other thread). A plain
    /// `Cell` with a const initialiser: reading it never allocates, so an allocator may.
    static ROLE: Cell<u8> = const { Cell::new(NOT_A_LOOP_THREAD) };
}
const NOT_A_LOOP_THREAD: u8 = u8::MAX;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Mark the calling thread as one of the loop's threads, for allocation counting.
pub fn mark_current_thread(role: LoopThread) {
    let _ = ROLE.try_with(|r| r.set(role as u8));
}

/// Called by a counting global allocator on every allocation: counts it if the calling
/// thread is one of the loop's. Allocation-free and lock-free.
pub fn note_allocation() {
    let role = ROLE.try_with(Cell::get).unwrap_or(NOT_A_LOOP_THREAD);
    if let Some(counter) = ALLOCATIONS.get(usize::from(role)) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Say that a counting allocator is installed (the binary does, when built to count).
pub fn enable_allocation_counting() {
    COUNTING.store(true, Ordering::Relaxed);
}

/// Allocations made so far on each loop thread, if a counting allocator is installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LoopAllocations {
    pub ticker: u64,
    #[serde(rename = "loop")]
    pub voice_loop: u64,
    pub model: u64,
}

impl LoopAllocations {
    /// What was counted between `earlier` and `self`.
    pub fn since(&self, earlier: &LoopAllocations) -> LoopAllocations {
        LoopAllocations {
            ticker: self.ticker.saturating_sub(earlier.ticker),
            voice_loop: self.voice_loop.saturating_sub(earlier.voice_loop),
            model: self.model.saturating_sub(earlier.model),
        }
    }

    pub fn total(&self) -> u64 {
        self.ticker + self.voice_loop + self.model
    }
}

/// The allocation counts, or `None` when nothing counts them (no counting allocator).
pub fn loop_allocations() -> Option<LoopAllocations> {
    COUNTING.load(Ordering::Relaxed).then(|| {
        let n = |t: LoopThread| ALLOCATIONS[t as usize].load(Ordering::Relaxed);
        LoopAllocations {
            ticker: n(LoopThread::Ticker),
            voice_loop: n(LoopThread::Loop),
            model: n(LoopThread::Model),
        }
    })
}

/// Linux reports `/proc/stat` times in `USER_HZ` ticks, 100 per second on every
/// architecture it runs on.
const USER_HZ: f64 = 100.0;

/// CPU time the hypervisor gave to other guests while this machine's CPUs wanted to run
/// (the `steal` column of `/proc/stat`, all CPUs together, since boot). `None` where there
/// is no such file (not Linux). Read it off the loop's threads: it opens a file.
pub fn host_steal() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    steal_of(&stat)
}

fn steal_of(stat: &str) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    let steal: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(Duration::from_secs_f64(steal as f64 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_number_of_the_cpu_line() {
        let stat = "cpu  4705 150 1120 16250 520 0 30 250 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(steal_of(stat), Some(Duration::from_millis(2500)));
        assert_eq!(steal_of("intr 1 2 3\n"), None);
    }

    #[test]
    fn only_marked_threads_are_counted() {
        let before = ALLOCATIONS[LoopThread::Model as usize].load(Ordering::Relaxed);
        note_allocation(); // this test thread is no loop thread
        std::thread::spawn(|| {
            mark_current_thread(LoopThread::Model);
            note_allocation();
            note_allocation();
        })
        .join()
        .expect("marked thread");
        let after = ALLOCATIONS[LoopThread::Model as usize].load(Ordering::Relaxed);
        assert_eq!(after - before, 2);
    }
}
