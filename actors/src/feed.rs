//! [`Feed`]: how the fast loop's threads hand data to each other per tick without a message,
//! a lock another thread can hold, or an allocation. A ractor cast boxes every message (an
//! allocation per tick on the sender's thread), so the per-tick paths (ticker -> loop,
//! model -> loop, loop -> face and affect) go through a feed instead: a bounded
//! single-producer single-consumer queue whose storage is allocated once, with a drop
//! counter, and a [`Notify`] that wakes the consumer's task.
//!
//! Each slot is a `Mutex<Option<T>>`, but the indices give the producer and the consumer
//! different slots, so no lock is ever waited for: both sides only `try_lock`, and a slot
//! found locked (which the protocol rules out) counts as full or empty. So a consumer on a
//! shared async worker can never hold up a real-time producer. Moving a value in and out of
//! a slot moves it; nothing is allocated after [`Feed::new`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// A bounded single-producer single-consumer queue that never allocates after it is made.
pub struct Feed<T> {
    slots: Box<[Mutex<Option<T>>]>,
    /// Items pushed (one past the newest); only the producer moves it.
    head: AtomicU64,
    /// Items taken; only the consumer moves it.
    tail: AtomicU64,
    /// Items refused because the queue was full.
    dropped: AtomicU64,
    /// Wakes the consumer after a push (a wake-up sent while it is busy is kept for it).
    wake: Notify,
}

impl<T> std::fmt::Debug for Feed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("capacity", &self.slots.len())
            .field("len", &self.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl<T> Feed<T> {
    /// An empty feed of `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        Feed {
            slots: (0..capacity.max(1)).map(|_| Mutex::new(None)).collect(),
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn slot(&self, index: u64) -> &Mutex<Option<T>> {
        &self.slots[(index % self.slots.len() as u64) as usize]
    }

    /// Queue `item` (without waking anyone); hands it back, counted as dropped, when the
    /// feed is full.
    pub fn push_quiet(&self, item: T) -> Result<(), T> {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        if head - tail >= self.slots.len() as u64 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(item);
        }
        match self.slot(head).try_lock() {
            Ok(mut slot) => *slot = Some(item),
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(item);
            }
        }
        self.head.store(head + 1, Ordering::Release);
        Ok(())
    }

    /// Queue `item` and wake the consumer; hands it back (counted) when the feed is full.
    pub fn push(&self, item: T) -> Result<(), T> {
        let pushed = self.push_quiet(item);
        self.wake.notify_one();
        pushed
    }

    /// Wake the consumer (after [`Feed::push_quiet`]s).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// The oldest item, if any.
    pub fn pop(&self) -> Option<T> {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        if tail == head {
            return None;
        }
        let item = self.slot(tail).try_lock().ok()?.take();
        self.tail.store(tail + 1, Ordering::Release);
        item
    }

    /// Wait until something was pushed since the last wait (returns at once if a push came
    /// while the consumer was busy).
    pub async fn pushed(&self) {
        self.wake.notified().await;
    }

    pub fn len(&self) -> usize {
        let head = self.head.load(Ordering::Acquire);
        head.saturating_sub(self.tail.load(Ordering::Acquire)) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items refused because the feed was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Aborts a task when dropped: a task an actor incarnation runs ends with it, however the
/// incarnation ends.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn items_come_out_in_order_and_a_full_feed_refuses_and_counts() {
        let feed = Feed::new(3);
        for i in 0..3 {
            assert!(feed.push(i).is_ok());
        }
        assert_eq!(feed.push(9), Err(9));
        assert_eq!(feed.dropped(), 1);
        assert_eq!(feed.len(), 3);
        assert_eq!(feed.pop(), Some(0));
        assert!(feed.push(3).is_ok(), "room again");
        let rest: Vec<_> = std::iter::from_fn(|| feed.pop()).collect();
        assert_eq!(rest, [1, 2, 3]);
        assert!(feed.is_empty());
    }

    #[tokio::test]
    async fn a_consumer_on_another_thread_gets_every_item_once() {
        let feed = Arc::new(Feed::new(8));
        let producer = {
            let feed = Arc::clone(&feed);
            std::thread::spawn(move || {
                let mut i = 0u64;
                while i < 10_000 {
                    if feed.push(i).is_ok() {
                        i += 1;
                    } else {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut next = 0u64;
        while next < 10_000 {
            while let Some(i) = feed.pop() {
                assert_eq!(i, next);
                next += 1;
            }
            if next < 10_000 {
                tokio::time::timeout(std::time::Duration::from_millis(50), feed.pushed())
                    .await
                    .ok();
            }
        }
        producer.join().unwrap();
    }
}
