//! The tick grid: tick `n` is due at `origin + n * period`. Deadlines are absolute, so a
//! late tick never pushes the ones after it (no drift), and a restarted voice actor picks
//! up the same grid.

use std::time::{Duration, Instant};

/// The fast loop's schedule, shared by every incarnation of the voice actor.
#[derive(Debug, Clone, Copy)]
pub struct TickClock {
    origin: Instant,
    period: Duration,
}

impl TickClock {
    pub fn new(origin: Instant, period: Duration) -> Self {
        assert!(!period.is_zero(), "a tick period of zero would spin");
        TickClock { origin, period }
    }

    /// When the brain started; face timestamps count from here.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// When tick `n` is due.
    pub fn deadline(&self, n: u64) -> Instant {
        self.origin
            + self
                .period
                .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// The last tick whose deadline is at or before `now`.
    pub fn due_at(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / self.period.as_nanos()) as u64
    }

    /// The first tick whose deadline is at or after `now`.
    pub fn next_at(&self, now: Instant) -> u64 {
        let due = self.due_at(now);
        if self.deadline(due) >= now {
            due
        } else {
            due + 1
        }
    }

    /// Milliseconds since the origin.
    pub fn elapsed_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_absolute() {
        let origin = Instant::now();
        let clock = TickClock::new(origin, Duration::from_millis(80));
        assert_eq!(clock.deadline(0), origin);
        assert_eq!(clock.deadline(1000), origin + Duration::from_secs(80));
        assert_eq!(clock.due_at(origin + Duration::from_millis(159)), 1);
        assert_eq!(clock.due_at(origin + Duration::from_millis(160)), 2);
        assert_eq!(clock.next_at(origin + Duration::from_millis(160)), 2);
        assert_eq!(clock.next_at(origin + Duration::from_millis(161)), 3);
    }
}
