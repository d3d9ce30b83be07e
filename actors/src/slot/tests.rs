//! Restart hand-over through a [`Slot`]: each incarnation of a stand-in actor registers
//! itself in `pre_start` (as every real actor does), so a handle made before a restart
//! reaches whichever incarnation is current.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Notify;

use super::*;

const NAME: &str = "echo";

#[derive(Debug)]
enum EchoMsg {
    /// Reply with the incarnation number.
    Who(RpcReplyPort<u32>),
    /// Remember `n` (a cast).
    Note(u32),
    /// Reply with every note so far.
    Notes(RpcReplyPort<Vec<u32>>),
}

/// A stand-in actor: registers in its slot first, then (optionally) waits for `ready` before
/// it finishes starting, like an actor whose start takes a while.
struct Echo {
    incarnation: u32,
    slot: Slot<EchoMsg>,
    ready: Option<Arc<Notify>>,
}

impl Actor for Echo {
    type Msg = EchoMsg;
    type State = Vec<u32>;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<EchoMsg>,
        _: (),
    ) -> Result<Vec<u32>, ActorProcessingErr> {
        self.slot.set(myself);
        if let Some(ready) = &self.ready {
            ready.notified().await;
        }
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _: ActorRef<EchoMsg>,
        msg: EchoMsg,
        notes: &mut Vec<u32>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EchoMsg::Who(reply) => {
                let _ = reply.send(self.incarnation);
            }
            EchoMsg::Note(n) => notes.push(n),
            EchoMsg::Notes(reply) => {
                let _ = reply.send(notes.clone());
            }
        }
        self.slot.stats().mark_handled();
        Ok(())
    }
}

async fn start(slot: &Slot<EchoMsg>, incarnation: u32) -> ActorRef<EchoMsg> {
    let echo = Echo {
        incarnation,
        slot: slot.clone(),
        ready: None,
    };
    let (actor, _) = Actor::spawn(None, echo, ()).await.unwrap();
    actor
}

async fn who(slot: &Slot<EchoMsg>, timeout: Duration) -> Result<u32, CallError> {
    slot.call(EchoMsg::Who, timeout).await
}

#[tokio::test(start_paused = true)]
async fn a_new_incarnation_is_in_the_slot_before_it_handles_anything() {
    let slot = Slot::new(NAME);
    let ready = Arc::new(Notify::new());
    let echo = Echo {
        incarnation: 1,
        slot: slot.clone(),
        ready: Some(Arc::clone(&ready)),
    };
    let starting = tokio::spawn(async move { Actor::spawn(None, echo, ()).await });
    // Registered while still starting: nothing sent from now on can miss it.
    for _ in 0..100 {
        if slot.get().is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(slot.get().is_some(), "registered in pre_start");
    assert!(
        slot.cast(EchoMsg::Note(7)),
        "a cast during the start is delivered"
    );
    assert_eq!(slot.stats().summary().undelivered, 0);

    ready.notify_one();
    let (actor, _) = starting.await.unwrap().unwrap();
    assert_eq!(
        slot.get().map(|a| a.get_id()),
        Some(actor.get_id()),
        "the slot holds the incarnation that started"
    );
    let notes = slot.call(EchoMsg::Notes, CALL).await.unwrap();
    assert_eq!(
        notes,
        [7],
        "the early cast was handled first, by this incarnation"
    );
}

const CALL: Duration = Duration::from_millis(200);

#[tokio::test(start_paused = true)]
async fn a_call_during_the_gap_times_out_with_the_actors_name() {
    let slot = Slot::new(NAME);
    let ready = Arc::new(Notify::new());
    let echo = Echo {
        incarnation: 2,
        slot: slot.clone(),
        ready: Some(Arc::clone(&ready)),
    };
    let starting = tokio::spawn(async move { Actor::spawn(None, echo, ()).await });
    while slot.get().is_none() {
        tokio::task::yield_now().await;
    }
    // The incarnation is registered but not yet handling: the call waits and then says who
    // did not answer, and for how long it waited (paused time: no real wait).
    let err = who(&slot, Duration::from_millis(50)).await.unwrap_err();
    assert!(
        matches!(err, CallError::Timeout(NAME, t) if t == Duration::from_millis(50)),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "actor echo did not answer within 50ms");

    ready.notify_one();
    starting.await.unwrap().unwrap();
    assert_eq!(who(&slot, CALL).await.unwrap(), 2, "answers once started");
}

#[tokio::test(start_paused = true)]
async fn calls_through_an_old_handle_reach_the_new_incarnation() {
    let slot = Slot::new(NAME);
    let handle = slot.clone(); // made before any restart, like every handle in the brain
    let first = start(&slot, 1).await;
    assert_eq!(who(&handle, CALL).await.unwrap(), 1);

    // The first incarnation dies; until the next one registers, calls say it is not running
    // (at once, not after the timeout).
    first.stop_and_wait(None, None).await.unwrap();
    slot.stats()
        .record_failure("killed by the test".into(), true);
    let started = tokio::time::Instant::now();
    let err = who(&handle, Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, CallError::NotRunning(NAME)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "no wait for a dead actor"
    );

    let second = start(&slot, 2).await;
    assert_eq!(
        who(&handle, CALL).await.unwrap(),
        2,
        "the old handle reaches the new incarnation"
    );
    assert!(handle.cast(EchoMsg::Note(1)));
    assert_eq!(handle.call(EchoMsg::Notes, CALL).await.unwrap(), [1]);
    assert_eq!(slot.stats().restarts(), 1);
    assert_eq!(slot.get().map(|a| a.get_id()), Some(second.get_id()));
}

#[tokio::test(start_paused = true)]
async fn an_empty_slot_counts_casts_undelivered_and_hands_try_casts_back() {
    let slot: Slot<EchoMsg> = Slot::new(NAME);
    assert!(!slot.cast(EchoMsg::Note(1)));
    assert!(!slot.cast(EchoMsg::Note(2)));
    assert_eq!(slot.stats().summary().undelivered, 2);
    match slot.try_cast(EchoMsg::Note(3)) {
        Err(EchoMsg::Note(3)) => {}
        other => panic!("expected the message back, got {other:?}"),
    }
    assert_eq!(
        slot.stats().summary().undelivered,
        2,
        "try_cast counts nothing"
    );
    let err = who(&slot, CALL).await.unwrap_err();
    assert!(matches!(err, CallError::NotRunning(NAME)), "{err:?}");
    assert_eq!(err.to_string(), "actor echo is not running");
}

#[tokio::test(start_paused = true)]
async fn a_failure_forgets_the_dead_mailbox() {
    let slot = Slot::new(NAME);
    let ready = Arc::new(Notify::new());
    let echo = Echo {
        incarnation: 1,
        slot: slot.clone(),
        ready: Some(Arc::clone(&ready)),
    };
    let starting = tokio::spawn(async move { Actor::spawn(None, echo, ()).await });
    while slot.get().is_none() {
        tokio::task::yield_now().await;
    }
    for n in 0..3 {
        assert!(slot.cast(EchoMsg::Note(n)));
    }
    assert_eq!(slot.stats().summary().mailbox, 3, "three waiting");
    slot.stats()
        .record_failure("died while starting".into(), true);
    let summary = slot.stats().summary();
    assert_eq!(summary.mailbox, 0, "their messages went down with it");
    assert_eq!(summary.status, ActorStatus::Restarting);
    assert_eq!(summary.last_error.as_deref(), Some("died while starting"));
    starting.abort();
}

#[test]
fn the_counters_keep_mailbox_depth_its_peak_and_each_messages_wait() {
    let stats = ActorStats::new(NAME);
    for _ in 0..3 {
        let seq = stats.enqueue();
        stats.enqueued(seq);
    }
    assert_eq!(stats.mailbox(), 3);
    std::thread::sleep(Duration::from_millis(20));
    for _ in 0..3 {
        stats.mark_handled();
    }
    // A timer message the actor sent itself: handled, never enqueued through the slot.
    stats.mark_handled();
    let summary = stats.summary();
    assert_eq!(summary.mailbox, 0, "never below empty");
    assert_eq!(summary.mailbox_peak, 3);
    assert_eq!(summary.handled, 4);
    assert_eq!(summary.latency_ms.count, 3, "one wait per mailbox message");
    assert!(
        summary.latency_ms.p50_ms >= 19.0,
        "they waited the 20 ms: {:?}",
        summary.latency_ms
    );
    let figures = stats.figures();
    assert_eq!(figures.mailbox_recent_peak, 3);
    assert_eq!(
        stats.figures().mailbox_recent_peak,
        0,
        "a new window begins"
    );
}
