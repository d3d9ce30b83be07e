//! What every actor shares: [`ActorHandle`], the common part of the typed handles (the
//! restart-proof [`Slot`], the counters, the state snapshot, fault injection), and [`Spawn`],
//! which starts an incarnation of an actor into its slot, alone or under a supervisor. The
//! brain starts and restarts its children with [`Spawn::start`]; tests spawn one actor on its
//! own the same way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, Message, RpcReplyPort};

use crate::CALL_TIMEOUT;
use crate::slot::{ActorStats, ActorStatus, CallError, Slot};

/// What a caught panic said, for the error a supervisor or a log reports.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Why an actor could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The actor's `pre_start` failed (or the runtime refused it).
    #[error("actor {actor} did not start: {reason}")]
    Actor { actor: &'static str, reason: String },
    /// A thread the actor needs (the voice model's) could not be started.
    #[error("could not start the {thread} thread: {source}")]
    Thread {
        thread: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A message set whose actor answers a state snapshot from its own state.
pub trait SnapshotRequest: Message {
    fn snapshot(reply: RpcReplyPort<serde_json::Value>) -> Self;
}

/// A message set with a test-only message that makes the actor panic.
#[cfg(feature = "fault-injection")]
pub trait FaultInjection: Message {
    fn crash() -> Self;
}

/// The part every typed handle shares; each handle holds one and derefs to it, so
/// `stats`, `snapshot` and `crash` are written once. It holds no `ActorRef`: every call goes
/// through the [`Slot`], so a handle outlives restarts of its actor.
pub struct ActorHandle<M: Message> {
    slot: Slot<M>,
}

impl<M: Message> Clone for ActorHandle<M> {
    fn clone(&self) -> Self {
        ActorHandle {
            slot: self.slot.clone(),
        }
    }
}

impl<M: Message> std::fmt::Debug for ActorHandle<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorHandle")
            .field("name", &self.slot.name())
            .finish()
    }
}

impl<M: Message> ActorHandle<M> {
    pub(crate) fn new(slot: Slot<M>) -> Self {
        ActorHandle { slot }
    }

    /// The name the API uses for the actor.
    pub fn name(&self) -> &'static str {
        self.slot.name()
    }

    /// The actor's counters (they survive its restarts).
    pub fn stats(&self) -> &Arc<ActorStats> {
        self.slot.stats()
    }

    /// Whether an incarnation is up right now.
    pub fn is_running(&self) -> bool {
        self.slot.stats().status() == ActorStatus::Running
    }

    /// Stop the current incarnation and wait for it, at most `timeout`. For an actor
    /// spawned on its own (tests, tools): under the brain a stopped child counts as failed
    /// and is restarted; stop the brain instead.
    pub async fn stop(&self, timeout: Duration) {
        if let Some(actor) = self.slot.get() {
            let _ = actor.stop_and_wait(None, Some(timeout)).await;
        }
        self.slot.stats().set_status(ActorStatus::Stopped);
    }

    /// Operators' fault injection: stop the current incarnation with `reason`, as a crash
    /// would end it (its supervisor sees an unexpected stop and restarts it). Whether an
    /// incarnation was there to stop.
    pub fn fail(&self, reason: &str) -> bool {
        match self.slot.get() {
            Some(actor) => {
                actor.stop(Some(format!("fault injected: {reason}")));
                true
            }
            None => false,
        }
    }

    /// The slot itself (tests cast through it by hand).
    #[cfg(test)]
    pub(crate) fn slot(&self) -> &Slot<M> {
        &self.slot
    }

    /// Fire and forget (counted and dropped while the actor restarts).
    pub(crate) fn cast(&self, msg: M) -> bool {
        self.slot.cast(msg)
    }

    /// Ask and wait at most `timeout`.
    pub(crate) async fn call<R, F>(&self, build: F, timeout: Duration) -> Result<R, CallError>
    where
        R: Send + 'static,
        F: FnOnce(RpcReplyPort<R>) -> M,
    {
        self.slot.call(build, timeout).await
    }
}

impl<M: SnapshotRequest> ActorHandle<M> {
    /// The actor's own view of its state, for `GET /api/actors/{name}`.
    pub async fn snapshot(&self) -> Result<serde_json::Value, CallError> {
        self.slot.call(M::snapshot, CALL_TIMEOUT).await
    }
}

#[cfg(feature = "fault-injection")]
impl<M: FaultInjection> ActorHandle<M> {
    /// Test-only: make the actor panic (its supervisor restarts it).
    pub fn crash(&self) {
        self.slot.cast(M::crash());
    }
}

/// An actor's definition: its read-only config and the handles it sends to, cloned for
/// each incarnation. Every incarnation registers itself in [`Spawn::slot`] in its
/// `pre_start`, so the handles reach it from its first message on.
pub trait Spawn: Actor<Arguments = ()> + Clone {
    /// The slot every incarnation registers in.
    fn slot(&self) -> &Slot<Self::Msg>;

    /// Start an incarnation on the caller's runtime, linked to `supervisor` when given
    /// (its failure is then the supervisor's to handle), and mark the actor running.
    /// Returns once `pre_start` finished.
    fn start(
        &self,
        supervisor: Option<ActorCell>,
    ) -> impl Future<Output = Result<ActorCell, SpawnError>> + Send + 'static {
        let actor = self.clone();
        let stats = Arc::clone(self.slot().stats());
        async move {
            let name = incarnation_name(stats.name());
            let started = match supervisor {
                Some(supervisor) => Actor::spawn_linked(name, actor, (), supervisor).await,
                None => Actor::spawn(name, actor, ()).await,
            };
            // The join handle is not needed: the slot and the supervisor track the actor.
            let (actor, _join) = started.map_err(|e| SpawnError::Actor {
                actor: stats.name(),
                reason: e.to_string(),
            })?;
            stats.set_status(ActorStatus::Running);
            Ok(actor.get_cell())
        }
    }
}

/// The name an incarnation of `actor` is spawned under. With the `console` feature it is
/// `<actor>#<n>`, unique in the process (a restarted actor never collides with the
/// incarnation it replaces, nor one brain's with another's), and ractor gives its task that
/// name, which is what tokio-console shows. Without it actors are unnamed: a name is
/// entered in ractor's global registry, which nothing here uses.
fn incarnation_name(actor: &str) -> Option<String> {
    #[cfg(feature = "console")]
    {
        static INCARNATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = INCARNATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Some(format!("{actor}#{n}"))
    }
    #[cfg(not(feature = "console"))]
    {
        let _ = actor;
        None
    }
}

/// `impl Deref<Target = ActorHandle<$msg>> for $handle`, for a typed handle whose
/// `ActorHandle` is its `actor` field.
macro_rules! deref_to_actor_handle {
    ($handle:ty, $msg:ty) => {
        impl std::ops::Deref for $handle {
            type Target = $crate::handle::ActorHandle<$msg>;

            fn deref(&self) -> &Self::Target {
                &self.actor
            }
        }
    };
}
pub(crate) use deref_to_actor_handle;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::affect::{Affect, AffectConfig};
    use crate::clock::TickClock;
    use crate::face::{Face, FaceConfig};
    use crate::slot::CallError;

    /// The affect actor answers its snapshot itself (the face's is read from what it
    /// published, without asking it), so it shows the whole round trip.
    #[tokio::test]
    async fn an_actor_spawned_on_its_own_answers_until_stopped() {
        let clock = TickClock::new(Instant::now(), crate::FRAME_PERIOD);
        let face = Face::new(FaceConfig::default(), clock).handle();
        let affect = Affect::spawn(AffectConfig::default(), face, None)
            .await
            .expect("affect starts");
        assert!(affect.is_running());
        assert_eq!(affect.name(), "affect");
        let snapshot = affect.snapshot().await.expect("a running actor answers");
        assert_eq!(snapshot["events"], 0);
        assert_eq!(
            affect.stats().handled(),
            1,
            "the snapshot request was counted"
        );

        affect.stop(std::time::Duration::from_secs(1)).await;
        assert!(!affect.is_running());
        assert!(matches!(
            affect.snapshot().await,
            Err(CallError::NotRunning("affect"))
        ));
    }
}
