//! Test-only plumbing for spawning one actor on its own with in-memory ports: a recorder
//! that stands in for any actor the one under test sends to (its messages come out of a
//! channel, where the test reads them and answers any reply port itself), handles to such
//! recorders, and a deadline-bounded wait.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, Message};
use tokio::sync::mpsc;

use super::{ActorStats, ActorStatus, Slot};
use crate::affect::{Affect, AffectConfig, AffectHandle, AffectMsg};
use crate::clock::TickClock;
use crate::face::{Face, FaceConfig, FaceHandle, FaceMsg};
use crate::monologue::{Monologue, MonologueConfig, MonologueHandle, MonologueMsg};
use crate::ports::MemoryTaskStore;
use crate::reasoner::{Reasoner, ReasonerConfig, ReasonerHandle, ReasonerMsg};
use crate::rules::RulePlanner;
use crate::tasks::{Tasks, TasksConfig, TasksHandle, TasksMsg};

/// What a recorder's messages come out of.
pub(crate) type Recording<M> = mpsc::UnboundedReceiver<M>;

/// An actor that hands every message it gets to the test, and counts it handled.
pub(crate) struct Recorder<M>(PhantomData<fn() -> M>);

impl<M: Message> Actor for Recorder<M> {
    type Msg = M;
    type State = (mpsc::UnboundedSender<M>, Arc<ActorStats>);
    type Arguments = (mpsc::UnboundedSender<M>, Arc<ActorStats>);

    async fn pre_start(
        &self,
        _: ActorRef<M>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<M>,
        msg: M,
        (out, stats): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = out.send(msg);
        stats.mark_handled();
        Ok(())
    }
}

/// Put a recorder in `slot` (in place of the actor it stands for) and return the channel
/// its messages come out of.
pub(crate) async fn record<M: Message>(slot: &Slot<M>) -> Recording<M> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(None, Recorder(PhantomData), (tx, Arc::clone(slot.stats())))
        .await
        .expect("a recorder always starts");
    slot.set(actor);
    slot.stats().set_status(ActorStatus::Running);
    rx
}

/// Every message sent to the recorder in `slot` so far (waits until it has passed them
/// all on, so "nothing else arrived" is a fact, not a race).
pub(crate) async fn drain<M: Message>(slot: &Slot<M>, rx: &mut Recording<M>) -> Vec<M> {
    eventually(Duration::from_secs(5), "the recorder to catch up", || {
        slot.stats().summary().mailbox == 0
    })
    .await;
    let mut got = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        got.push(msg);
    }
    got
}

/// The next message the recorder got, within `within` (tokio time: no real wait when
/// paused).
pub(crate) async fn next<M>(rx: &mut Recording<M>, within: Duration) -> M {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no message within {within:?}"))
        .expect("the recorder is alive")
}

/// Poll `condition` until it holds, failing after `within` of real time. It yields rather
/// than sleeps on tokio's clock, so under `tokio::time::pause()` waiting never moves time
/// (and never fires an actor's timer early).
pub(crate) async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::task::yield_now().await;
        // Something on another OS thread (the model's) may be what we wait for.
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn clock() -> TickClock {
    TickClock::new(Instant::now(), crate::FRAME_PERIOD)
}

/// A face handle whose messages the test reads.
pub(crate) async fn face() -> (FaceHandle, Recording<FaceMsg>) {
    let face = Face::new(FaceConfig::default(), clock()).handle();
    let rx = record(face.slot()).await;
    (face, rx)
}

/// An affect handle whose messages the test reads.
pub(crate) async fn affect() -> (AffectHandle, Recording<AffectMsg>) {
    let face = Face::new(FaceConfig::default(), clock()).handle();
    let affect = Affect::new(AffectConfig::default(), face).handle();
    let rx = record(affect.slot()).await;
    (affect, rx)
}

/// A ledger handle whose messages the test reads (and answers).
pub(crate) async fn tasks() -> (TasksHandle, Recording<TasksMsg>) {
    let (affect, _) = affect().await;
    let store = Arc::new(MemoryTaskStore::default());
    let tasks = Tasks::new(TasksConfig::default(), store, affect).handle();
    let rx = record(tasks.slot()).await;
    (tasks, rx)
}

/// A reasoner handle whose messages the test reads.
pub(crate) async fn reasoner() -> (ReasonerHandle, Recording<ReasonerMsg>) {
    let (tasks, _) = tasks().await;
    let planner = Arc::new(RulePlanner::default());
    let reasoner = Reasoner::new(ReasonerConfig::default(), planner, tasks).handle();
    let rx = record(reasoner.slot()).await;
    (reasoner, rx)
}

/// A monologue handle whose messages the test reads.
pub(crate) async fn monologue() -> (MonologueHandle, Recording<MonologueMsg>) {
    let (reasoner, _) = reasoner().await;
    let (affect, _) = affect().await;
    let monologue = Monologue::new(MonologueConfig::default(), reasoner, affect).handle();
    let rx = record(monologue.slot()).await;
    (monologue, rx)
}
