//! The ledger and body delivery through the real tasks actor, spawned on its own on an
//! in-memory store (no brain, no voice loop, no real-time threads).

use std::sync::Arc;
use std::time::{Duration, Instant};

use creature_actors::FRAME_PERIOD;
use creature_actors::affect::{Affect, AffectConfig};
use creature_actors::clock::TickClock;
use creature_actors::face::{Face, FaceConfig};
use creature_actors::ports::{
    Action, BodyCommand, BodyReport, BodyState, MemoryTaskStore, PhysicalTask, TaskSource,
    TaskState,
};
use creature_actors::tasks::{TaskError, Tasks, TasksConfig, TasksHandle};
use tokio::sync::mpsc;

/// The tasks actor alone. Its affect events go to an affect actor that is never started
/// (they are counted as undelivered): these tests are about the ledger.
struct Ledger {
    tasks: TasksHandle,
}

impl Ledger {
    async fn start(config: TasksConfig) -> Ledger {
        let face = Face::new(
            FaceConfig::default(),
            TickClock::new(Instant::now(), FRAME_PERIOD),
        );
        let affect = Affect::new(AffectConfig::default(), face.handle()).handle();
        let store = Arc::new(MemoryTaskStore::default());
        let tasks = Tasks::spawn(config, store, affect, None).await.unwrap();
        Ledger { tasks }
    }

    async fn stop(&self) {
        self.tasks.stop(Duration::from_secs(5)).await;
    }
}

async fn ledger(redeliver_after: Duration) -> Ledger {
    Ledger::start(TasksConfig {
        redeliver_after,
        ..TasksConfig::default()
    })
    .await
}

fn args(object: &str) -> PhysicalTask {
    PhysicalTask {
        action: Action::Bring,
        object: object.into(),
        destination: None,
        utterance: format!("bring me the {object}"),
        confidence: 0.9,
    }
}

fn report(id: &str, state: BodyState) -> BodyReport {
    BodyReport {
        id: id.into(),
        state,
        detail: None,
        progress: None,
    }
}

async fn next_call(rx: &mut mpsc::Receiver<BodyCommand>) -> BodyCommand {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a command for the body")
        .unwrap()
}

fn id_of(cmd: &BodyCommand) -> &str {
    match cmd {
        BodyCommand::ToolCall { id, .. } | BodyCommand::Cancel { id } => id,
    }
}

#[tokio::test]
async fn tasks_reach_the_body_and_its_reports_walk_the_lifecycle() {
    let ledger = ledger(Duration::from_secs(60)).await;
    let tasks = ledger.tasks.clone();
    let waiting = tasks
        .create(args("cup"), TaskSource::Api, None)
        .await
        .unwrap();
    assert_eq!(waiting.state, TaskState::Pending, "no body yet");

    let (tx, mut rx) = mpsc::channel(16);
    let session = tasks.attach_body(tx).await.unwrap();
    let first = next_call(&mut rx).await;
    assert!(
        matches!(&first, BodyCommand::ToolCall { id, name, arguments }
        if *id == waiting.id && name == "do_physical_task" && arguments.object == "cup")
    );
    assert_eq!(
        tasks.get(&waiting.id).await.unwrap().state,
        TaskState::Dispatched
    );

    // Filed while attached: sent at once.
    let live = tasks
        .create(args("ball"), TaskSource::Api, None)
        .await
        .unwrap();
    assert_eq!(id_of(&next_call(&mut rx).await), live.id);
    assert_eq!(tasks.get(&live.id).await.unwrap().deliveries, 1);

    let t = tasks
        .body_report(session, report(&live.id, BodyState::Accepted))
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Accepted);
    // A repeat is harmless (delivery is at least once).
    tasks
        .body_report(session, report(&live.id, BodyState::Accepted))
        .await
        .unwrap();
    tasks
        .body_report(session, report(&live.id, BodyState::Running))
        .await
        .unwrap();
    let p = BodyReport {
        progress: Some(0.5),
        detail: Some("halfway".into()),
        ..report(&live.id, BodyState::Progress)
    };
    let t = tasks.body_report(session, p).await.unwrap();
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.progress.as_ref().unwrap().fraction, Some(0.5));
    let t = tasks
        .body_report(session, report(&live.id, BodyState::Succeeded))
        .await
        .unwrap();
    let states: Vec<_> = t.history.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [
            TaskState::Pending,
            TaskState::Dispatched,
            TaskState::Accepted,
            TaskState::Running,
            TaskState::Succeeded
        ]
    );

    // Out of order, unknown, stale session, out of range: refused with reasons, nothing changes.
    let err = tasks
        .body_report(session, report(&live.id, BodyState::Running))
        .await
        .unwrap_err();
    assert!(matches!(err, TaskError::Lifecycle(_)), "{err}");
    assert!(err.to_string().contains("already succeeded"), "{err}");
    let err = tasks
        .body_report(session, report("task-424242", BodyState::Accepted))
        .await
        .unwrap_err();
    assert!(matches!(err, TaskError::NotFound(_)));
    let err = tasks
        .body_report(session + 1, report(&waiting.id, BodyState::Accepted))
        .await
        .unwrap_err();
    assert!(matches!(err, TaskError::Detached));
    let bad = BodyReport {
        progress: Some(7.0),
        ..report(&waiting.id, BodyState::Progress)
    };
    assert!(matches!(
        tasks.body_report(session, bad).await.unwrap_err(),
        TaskError::Invalid(_)
    ));
    assert_eq!(
        tasks.get(&live.id).await.unwrap().state,
        TaskState::Succeeded
    );
    ledger.stop().await;
}

#[tokio::test]
async fn a_new_body_replaces_the_old_one_and_gets_every_unfinished_task_again() {
    let ledger = ledger(Duration::from_secs(60)).await;
    let tasks = ledger.tasks.clone();
    let (tx, mut rx) = mpsc::channel(16);
    let first = tasks.attach_body(tx).await.unwrap();

    let a = tasks
        .create(args("cup"), TaskSource::Api, None)
        .await
        .unwrap();
    let b = tasks
        .create(args("ball"), TaskSource::Api, None)
        .await
        .unwrap();
    next_call(&mut rx).await;
    next_call(&mut rx).await;
    tasks
        .body_report(first, report(&a.id, BodyState::Running))
        .await
        .unwrap();
    tasks
        .body_report(first, report(&b.id, BodyState::Failed))
        .await
        .unwrap();

    // The robot reconnects while its old session still looks attached (its Wi-Fi dropped
    // without a word): the new one takes the seat, and gets the unfinished task again,
    // not the failed one.
    let (tx2, mut rx2) = mpsc::channel(16);
    let second = tasks.attach_body(tx2).await.unwrap();
    assert_ne!(first, second);
    let again = next_call(&mut rx2).await;
    assert_eq!(id_of(&again), a.id);
    // Attaching sends every unfinished task before it answers: what is not here now was
    // not sent (no waiting for something that should not come).
    assert!(rx2.try_recv().is_err(), "only the unfinished one");
    // The old session's outbox is closed (its socket is closed with it), and what it still
    // says is refused.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .expect("the old outbox closes")
            .is_none()
    );
    assert!(matches!(
        tasks
            .body_report(first, report(&a.id, BodyState::Succeeded))
            .await
            .unwrap_err(),
        TaskError::Detached
    ));
    // The old session's late goodbye does not detach the new body.
    tasks.detach_body(first);
    tasks
        .body_report(second, report(&a.id, BodyState::Running))
        .await
        .unwrap();
    assert!(tasks.summary().await.unwrap().body_attached);
    let t = tasks.get(&a.id).await.unwrap();
    assert_eq!((t.state, t.deliveries), (TaskState::Running, 2));

    // A body that drops off and comes back gets it once more.
    tasks.detach_body(second);
    drop(rx2);
    let (tx3, mut rx3) = mpsc::channel(16);
    let third = tasks.attach_body(tx3).await.unwrap();
    assert_ne!(second, third);
    assert_eq!(id_of(&next_call(&mut rx3).await), a.id);
    ledger.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_task_is_sent_again_and_cancel_reaches_the_body() {
    let ledger = ledger(Duration::from_millis(300)).await;
    let tasks = ledger.tasks.clone();
    let (tx, mut rx) = mpsc::channel(16);
    let session = tasks.attach_body(tx).await.unwrap();
    let t = tasks
        .create(args("cup"), TaskSource::Api, None)
        .await
        .unwrap();
    assert_eq!(id_of(&next_call(&mut rx).await), t.id);
    // No answer: it comes again.
    assert_eq!(id_of(&next_call(&mut rx).await), t.id);
    assert!(tasks.get(&t.id).await.unwrap().deliveries >= 2);
    tasks
        .body_report(session, report(&t.id, BodyState::Accepted))
        .await
        .unwrap();

    let cancelled = tasks.cancel(&t.id).await.unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    loop {
        if let BodyCommand::Cancel { id } = next_call(&mut rx).await {
            assert_eq!(id, t.id);
            break;
        }
    }
    let err = tasks
        .body_report(session, report(&t.id, BodyState::Succeeded))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    assert!(
        tasks
            .cancel(&t.id)
            .await
            .unwrap_err()
            .to_string()
            .contains("already cancelled")
    );
    let snapshot = tasks.snapshot().await.unwrap();
    assert!(
        snapshot["redeliveries"].as_u64().unwrap() >= 1,
        "{snapshot}"
    );
    ledger.stop().await;
}

/// A ledger with the given bounds.
async fn bounded(max_unfinished: usize, retain_finished: usize) -> Ledger {
    Ledger::start(TasksConfig {
        redeliver_after: Duration::from_secs(60),
        max_unfinished,
        retain_finished,
    })
    .await
}

fn new(object: &str) -> creature_actors::ports::NewTask {
    creature_actors::ports::NewTask {
        intent_at: None,
        arguments: args(object),
        source: TaskSource::Api,
        plan: None,
    }
}

#[tokio::test]
async fn the_bound_on_unfinished_tasks_refuses_whole_plans_and_counts_exactly() {
    let ledger = bounded(5, 100).await;
    let tasks = ledger.tasks.clone();
    let made = tasks
        .create_many((0..3).map(|i| new(&format!("cup {i}"))).collect())
        .await
        .unwrap();
    assert_eq!(made.len(), 3);
    // A plan of three does not fit next to three unfinished: none of it is filed.
    let err = tasks
        .create_many((0..3).map(|i| new(&format!("ball {i}"))).collect())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TaskError::TooManyUnfinished {
                unfinished: 3,
                max: 5,
                wanted: 3
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("cancel --all"), "{err}");
    assert_eq!(tasks.list().await.unwrap().len(), 3, "nothing half-filed");
    // An invalid step refuses the whole plan too.
    let mut bad = new("");
    bad.arguments.object = " ".into();
    let err = tasks.create_many(vec![new("pen"), bad]).await.unwrap_err();
    assert!(matches!(err, TaskError::Invalid(_)), "{err}");
    assert_eq!(tasks.list().await.unwrap().len(), 3);
    // Two fit exactly; the next one is refused.
    tasks.create_many(vec![new("a"), new("b")]).await.unwrap();
    let err = tasks
        .create(args("c"), TaskSource::Api, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TaskError::TooManyUnfinished { unfinished: 5, .. }),
        "{err}"
    );
    // Cancelling makes room.
    let cancelled = tasks
        .cancel_all(creature_actors::tasks::CancelFilter::default())
        .await
        .unwrap();
    assert_eq!(
        cancelled,
        ["task-1", "task-2", "task-3", "task-4", "task-5"]
    );
    let t = tasks
        .create(args("c"), TaskSource::Api, None)
        .await
        .unwrap();
    assert_eq!(t.id, "task-6", "ids stay dense");
}

#[tokio::test]
async fn cancel_all_follows_its_filter_and_tells_the_body() {
    let ledger = bounded(100, 100).await;
    let tasks = ledger.tasks.clone();
    let pending = tasks
        .create(args("cup"), TaskSource::Api, None)
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let _session = tasks.attach_body(tx).await.unwrap();
    assert_eq!(id_of(&next_call(&mut rx).await), pending.id);
    let from_monologue = tasks
        .create(args("ball"), TaskSource::Monologue, None)
        .await
        .unwrap();
    assert_eq!(id_of(&next_call(&mut rx).await), from_monologue.id);
    let filter = creature_actors::tasks::CancelFilter {
        states: vec![TaskState::Dispatched],
        source: Some(TaskSource::Monologue),
    };
    assert_eq!(
        tasks.cancel_all(filter).await.unwrap(),
        std::slice::from_ref(&from_monologue.id)
    );
    assert!(
        matches!(next_call(&mut rx).await, BodyCommand::Cancel { id } if id == from_monologue.id)
    );
    assert_eq!(
        tasks.get(&pending.id).await.unwrap().state,
        TaskState::Dispatched,
        "the other one is left alone"
    );
    let page = tasks
        .page(creature_actors::ports::PageQuery {
            after: None,
            limit: 10,
            order: creature_actors::ports::PageOrder::Desc,
            states: vec![TaskState::Cancelled],
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.tasks[0].id, from_monologue.id);
}

#[tokio::test]
async fn finished_tasks_past_retention_leave_the_ledger_unfinished_ones_stay() {
    let ledger = bounded(100, 3).await;
    let tasks = ledger.tasks.clone();
    for i in 0..12 {
        let t = tasks
            .create(args(&format!("cup {i}")), TaskSource::Api, None)
            .await
            .unwrap();
        if i % 2 == 0 {
            tasks.cancel(&t.id).await.unwrap();
        }
    }
    let ids: Vec<String> = tasks
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    // Unfinished: 2, 4, 6, 8, 10, 12; the newest three finished: 7, 9, 11.
    assert_eq!(
        ids,
        [
            "task-2", "task-4", "task-6", "task-7", "task-8", "task-9", "task-10", "task-11",
            "task-12"
        ]
    );
    let summary = tasks.summary().await.unwrap();
    assert_eq!(summary.total, 9);
    assert_eq!(summary.by_state["cancelled"], 3);
    // Numeric order in memory too: task-10 after task-9 on the way to a body.
    let (tx, mut rx) = mpsc::channel(16);
    tasks.attach_body(tx).await.unwrap();
    let mut sent = Vec::new();
    for _ in 0..6 {
        sent.push(id_of(&next_call(&mut rx).await).to_string());
    }
    assert_eq!(
        sent,
        ["task-2", "task-4", "task-6", "task-8", "task-10", "task-12"]
    );
}
