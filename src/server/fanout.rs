//! The face sockets' writers, on a thread of their own.
//!
//! Every 80 ms a face frame goes out to every phone: a hundred phones are a hundred small
//! writes in a row, each a task wake-up and a syscall. On the shared async workers those
//! writes queue behind whatever else runs there (HTTP, the slow loop's deliberations, event
//! viewers), and a frame reaches the last phone late. So the writers run on a
//! single-threaded runtime of their own, whose only work is this; the readers (which only
//! notice that a phone is alive) stay on the shared workers. The thread runs at real-time
//! priority below the loop and the model (where the OS allows, as they do), so bulk work
//! beside the brain (a build, vision) does not hold a frame back.

use tokio::sync::oneshot;

/// The writers' runtime; dropping it ends the thread (and any writer still on it).
#[derive(Debug)]
pub(super) struct FaceWriters {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaceWriters {
    /// Start the thread, at real-time priority below the fast loop's threads when
    /// `realtime` (and the OS allows), else at the highest normal priority. Fails only if
    /// the OS refuses a thread or a runtime.
    pub(super) fn start(realtime: bool) -> std::io::Result<FaceWriters> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("face-writers".into())
            .spawn(move || {
                if realtime {
                    creature_actors::realtime::promote_fanout_thread("face-writers");
                } else {
                    creature_actors::realtime::raise_current_thread("face-writers");
                }
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(FaceWriters {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where writers are spawned.
    pub(super) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for FaceWriters {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The runtime drops with the thread's closure; joining from a runtime thread would
        // block it, so only a plain thread waits.
        if let Some(thread) = self.thread.take() {
            if tokio::runtime::Handle::try_current().is_err() {
                let _ = thread.join();
            }
        }
    }
}
