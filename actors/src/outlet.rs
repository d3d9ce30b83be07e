//! [`Outlet`]: the newest value, published by a real-time thread to any number of readers
//! on other threads, without a lock the readers can hold.
//!
//! A `tokio::sync::watch` channel would do the job, but its value sits behind a lock every
//! reader takes, and waking its readers takes the lock of their waiting list: with a hundred
//! phones reading, a socket task preempted while holding either stalls the publisher. Here
//! the value is an [`ArcSwap`] (a reader's load never blocks a store), a version counter
//! says whether it changed, and the publisher wakes a single relay task, which wakes the
//! readers from an ordinary worker thread. The publisher's only shared wait list is the
//! relay's, which one task uses.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

struct Shared<T> {
    value: ArcSwap<T>,
    /// Values published; a reader compares it with the one it saw last.
    version: AtomicU64,
    /// Set when the last publisher is gone.
    closed: AtomicBool,
    /// Wakes the relay (one waiter: the relay task).
    publish: Notify,
    /// Wakes the readers; only the relay notifies it.
    readers: Notify,
    /// Readers subscribed right now.
    count: AtomicUsize,
    relay: OnceLock<()>,
}

/// The publishing side; clones publish to the same readers. When the last clone is
/// dropped, readers see [`Closed`].
pub struct Outlet<T> {
    owner: Arc<Owner<T>>,
}

struct Owner<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for Owner<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.publish.notify_one();
    }
}

impl<T> Clone for Outlet<T> {
    fn clone(&self) -> Self {
        Outlet {
            owner: Arc::clone(&self.owner),
        }
    }
}

impl<T> std::fmt::Debug for Outlet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlet")
            .field(
                "version",
                &self.owner.shared.version.load(Ordering::Relaxed),
            )
            .field("readers", &self.owner.shared.count.load(Ordering::Relaxed))
            .finish()
    }
}

/// The outlet is gone: nothing more will be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the outlet was closed")]
pub struct Closed;

impl<T: Send + Sync + 'static> Outlet<T> {
    /// An outlet holding `first`.
    pub fn new(first: Arc<T>) -> Self {
        Outlet {
            owner: Arc::new(Owner {
                shared: Arc::new(Shared {
                    value: ArcSwap::new(first),
                    version: AtomicU64::new(0),
                    closed: AtomicBool::new(false),
                    publish: Notify::new(),
                    readers: Notify::new(),
                    count: AtomicUsize::new(0),
                    relay: OnceLock::new(),
                }),
            }),
        }
    }

    /// Make `value` the newest and wake the readers (through the relay). Never waits; the
    /// value replaced is dropped here unless a reader still holds it.
    pub fn publish(&self, value: Arc<T>) {
        let shared = &self.owner.shared;
        shared.value.store(value);
        shared.version.fetch_add(1, Ordering::Release);
        shared.publish.notify_one();
    }

    /// The newest value.
    pub fn latest(&self) -> Arc<T> {
        self.owner.shared.value.load_full()
    }

    /// A reader that has seen the newest value. The first subscription starts the relay
    /// on the runtime it is made on (readers made outside a runtime can read, not wait).
    pub fn subscribe(&self) -> OutletReader<T> {
        let shared = Arc::clone(&self.owner.shared);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            shared.relay.get_or_init(|| {
                runtime.spawn(relay(Arc::clone(&shared)));
            });
        }
        shared.count.fetch_add(1, Ordering::Relaxed);
        let seen = shared.version.load(Ordering::Acquire);
        OutletReader { shared, seen }
    }

    /// Readers subscribed right now.
    pub fn readers(&self) -> usize {
        self.owner.shared.count.load(Ordering::Relaxed)
    }
}

/// Wakes every reader after each publication (however many came while it ran), until the
/// outlet closes.
async fn relay<T>(shared: Arc<Shared<T>>) {
    loop {
        shared.publish.notified().await;
        shared.readers.notify_waiters();
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
    }
}

/// One reader of an [`Outlet`].
pub struct OutletReader<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

impl<T> Drop for OutletReader<T> {
    fn drop(&mut self) {
        self.shared.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> OutletReader<T> {
    /// Wait until a value newer than the last one this reader took is published; [`Closed`]
    /// once nothing more can be.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            let notified = self.shared.readers.notified();
            tokio::pin!(notified);
            // Registered before the version is read, so a publication in between still
            // wakes this reader.
            notified.as_mut().enable();
            if self.shared.version.load(Ordering::Acquire) != self.seen {
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Closed);
            }
            notified.await;
        }
    }

    /// The newest value, marked as seen.
    pub fn borrow_and_update(&mut self) -> Arc<T> {
        self.seen = self.shared.version.load(Ordering::Acquire);
        self.shared.value.load_full()
    }

    /// The newest value, without marking it seen.
    pub fn borrow(&self) -> Arc<T> {
        self.shared.value.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn readers_see_the_newest_value_and_skip_the_ones_they_missed() {
        let outlet = Outlet::new(Arc::new(0u32));
        let mut fast = outlet.subscribe();
        let mut slow = outlet.subscribe();
        assert_eq!(outlet.readers(), 2);
        for n in 1..=3 {
            outlet.publish(Arc::new(n));
            tokio::time::timeout(Duration::from_secs(1), fast.changed())
                .await
                .expect("woken")
                .unwrap();
            assert_eq!(*fast.borrow_and_update(), n);
        }
        // The slow reader wakes once and reads only the newest.
        tokio::time::timeout(Duration::from_secs(1), slow.changed())
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(*slow.borrow_and_update(), 3);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), slow.changed())
                .await
                .is_err(),
            "nothing new: no wake-up"
        );
        drop(slow);
        assert_eq!(outlet.readers(), 1);
    }

    #[tokio::test]
    async fn readers_learn_when_the_outlet_is_gone() {
        let outlet = Outlet::new(Arc::new("a"));
        let mut reader = outlet.subscribe();
        let waiting = tokio::spawn(async move { reader.changed().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(outlet);
        let end = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(end, Err(Closed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publisher_on_another_thread_wakes_every_reader() {
        let outlet = Outlet::new(Arc::new(0u64));
        let readers: Vec<_> = (0..50)
            .map(|_| {
                let mut reader = outlet.subscribe();
                tokio::spawn(async move {
                    loop {
                        reader.changed().await.unwrap();
                        if *reader.borrow_and_update() == 100 {
                            return;
                        }
                    }
                })
            })
            .collect();
        let publisher = outlet.clone();
        std::thread::spawn(move || {
            for n in 1..=100 {
                publisher.publish(Arc::new(n));
                std::thread::sleep(Duration::from_micros(200));
            }
        })
        .join()
        .unwrap();
        for reader in readers {
            tokio::time::timeout(Duration::from_secs(2), reader)
                .await
                .expect("every reader reaches the last value")
                .unwrap();
        }
    }
}
