//! The ledger on its own, on an in-memory store, with a channel for a body: the lifecycle
//! (what a body's reports may and may not do to a task) and the order in which unfinished
//! tasks reach a body (by number: `task-9` before `task-10`, whatever order the store lists
//! them in).

use std::time::Duration;

use super::*;
use crate::affect::AffectMsg;
use crate::ports::{Action, MemoryTaskStore};
use crate::slot::testing::{self, Recording};

/// A store that lists its tasks in the order of their ids as text (`task-1`, `task-10`,
/// `task-2`, ...), as a directory listing would: the ledger must not rely on the store's
/// order.
#[derive(Default)]
struct TextOrderStore(MemoryTaskStore);

impl TaskStore for TextOrderStore {
    fn create(&self, new: Vec<NewTask>) -> Result<Vec<Task>, StoreError> {
        self.0.create(new)
    }
    fn put(&self, task: &Task) -> Result<(), StoreError> {
        self.0.put(task)
    }
    fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.0.get(id)
    }
    fn list(&self) -> Result<Vec<Task>, StoreError> {
        let mut all = self.0.list()?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }
    fn delete(&self, ids: &[String]) -> Result<(), StoreError> {
        self.0.delete(ids)
    }
}

fn args(object: &str) -> PhysicalTask {
    PhysicalTask {
        action: Action::Bring,
        object: object.into(),
        destination: None,
        utterance: format!("I'll bring you the {object}."),
        confidence: 0.9,
    }
}

fn new_task(object: &str) -> NewTask {
    NewTask {
        intent_at: None,
        arguments: args(object),
        source: TaskSource::Api,
        plan: None,
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

/// The ledger under test, and the affect events it sent (the recorder's handle and channel).
async fn ledger(
    config: TasksConfig,
    store: Arc<dyn TaskStore>,
) -> (TasksHandle, (AffectHandle, Recording<AffectMsg>)) {
    let (affect, events) = testing::affect().await;
    let tasks = Tasks::spawn(config, store, affect.clone(), None)
        .await
        .unwrap();
    (tasks, (affect, events))
}

fn quiet() -> TasksConfig {
    TasksConfig {
        redeliver_after: Duration::from_secs(3600),
        ..TasksConfig::default()
    }
}

/// The ids of the tool calls waiting in a body's outbox.
fn tool_calls(rx: &mut mpsc::Receiver<BodyCommand>) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(cmd) = rx.try_recv() {
        match cmd {
            BodyCommand::ToolCall { id, .. } => ids.push(id),
            other => panic!("expected tool calls only, got {other:?}"),
        }
    }
    ids
}

fn numbered(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|n| format!("task-{n}")).collect()
}

#[test]
fn the_lifecycle_allows_exactly_the_documented_transitions() {
    use TaskState::*;
    // The diagram on `TaskState`, written out.
    let allowed = [
        (Pending, Dispatched),
        (Pending, Cancelled),
        (Dispatched, Accepted),
        (Dispatched, Running),
        (Dispatched, Succeeded),
        (Dispatched, Failed),
        (Dispatched, Rejected),
        (Dispatched, Cancelled),
        (Accepted, Running),
        (Accepted, Succeeded),
        (Accepted, Failed),
        (Accepted, Cancelled),
        (Running, Succeeded),
        (Running, Failed),
        (Running, Cancelled),
    ];
    for from in TaskState::ALL {
        for to in TaskState::ALL {
            assert_eq!(
                from.can_become(to),
                allowed.contains(&(from, to)),
                "{} -> {}",
                from.as_str(),
                to.as_str()
            );
        }
        if from.is_terminal() {
            assert!(
                TaskState::ALL.iter().all(|to| !from.can_become(*to)),
                "{} is final",
                from.as_str()
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn body_reports_move_a_task_forward_and_never_back() {
    let (tasks, (affect, mut events)) = ledger(quiet(), Arc::new(MemoryTaskStore::default())).await;
    let task = tasks
        .create(args("cup"), TaskSource::Api, None)
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Pending);
    let (tx, mut rx) = mpsc::channel(16);
    let session = tasks.attach_body(tx).await.unwrap();
    assert_eq!(tool_calls(&mut rx), [task.id.as_str()]);
    assert_eq!(
        tasks.get(&task.id).await.unwrap().state,
        TaskState::Dispatched
    );

    let id = task.id.as_str();
    let step = |state| tasks.body_report(session, report(id, state));
    assert_eq!(
        step(BodyState::Accepted).await.unwrap().state,
        TaskState::Accepted
    );
    assert_eq!(
        step(BodyState::Running).await.unwrap().state,
        TaskState::Running
    );
    // Backwards: refused, and the task stays where it was.
    let err = step(BodyState::Accepted).await.unwrap_err();
    assert!(matches!(err, TaskError::Lifecycle(_)), "{err:?}");
    assert!(err.to_string().contains("running"), "{err}");
    assert!(err.to_string().contains("accepted"), "{err}");
    assert_eq!(tasks.get(id).await.unwrap().state, TaskState::Running);
    // A repeat of the current state is harmless (delivery is at least once).
    assert_eq!(
        step(BodyState::Running).await.unwrap().state,
        TaskState::Running
    );
    let done = step(BodyState::Succeeded).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    let history: Vec<_> = done.history.iter().map(|e| e.state).collect();
    assert_eq!(
        history,
        [
            TaskState::Pending,
            TaskState::Dispatched,
            TaskState::Accepted,
            TaskState::Running,
            TaskState::Succeeded
        ]
    );
    // Finished is final: a late report and a cancel are both refused.
    let err = step(BodyState::Failed).await.unwrap_err();
    assert!(err.to_string().contains("too late"), "{err}");
    let err = tasks.cancel(id).await.unwrap_err();
    assert!(err.to_string().contains("nothing to cancel"), "{err}");
    assert_eq!(tasks.get(id).await.unwrap().state, TaskState::Succeeded);

    // Affect heard the start and the success, nothing for the refused reports.
    let heard: Vec<_> = testing::drain(affect.slot(), &mut events)
        .await
        .into_iter()
        .filter_map(|m| match m {
            AffectMsg::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(
        heard,
        [AffectEvent::TaskStarted, AffectEvent::TaskSucceeded]
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_task_refuses_the_bodys_reports_and_the_body_is_told() {
    let (tasks, _) = ledger(quiet(), Arc::new(MemoryTaskStore::default())).await;
    let (tx, mut rx) = mpsc::channel(16);
    let session = tasks.attach_body(tx).await.unwrap();
    let task = tasks
        .create(args("cup"), TaskSource::Api, None)
        .await
        .unwrap();
    assert_eq!(tool_calls(&mut rx), [task.id.as_str()]);
    let cancelled = tasks.cancel(&task.id).await.unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    match rx.try_recv() {
        Ok(BodyCommand::Cancel { id }) => assert_eq!(id, task.id),
        other => panic!("the body holds it, so it is told: {other:?}"),
    }
    let err = tasks
        .body_report(session, report(&task.id, BodyState::Running))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    assert_eq!(
        tasks.get(&task.id).await.unwrap().state,
        TaskState::Cancelled
    );

    // A pending task (never sent) is cancelled without telling the body.
    tasks.detach_body(session);
    let pending = tasks
        .create(args("ball"), TaskSource::Api, None)
        .await
        .unwrap();
    assert_eq!(
        tasks.cancel(&pending.id).await.unwrap().state,
        TaskState::Cancelled
    );
    let err = tasks.cancel("task-999").await.unwrap_err();
    assert!(matches!(err, TaskError::NotFound(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn unfinished_tasks_reach_a_new_body_in_numeric_order() {
    // Twelve tasks from before a restart, listed by the store as text: task-1, task-10,
    // task-11, task-12, task-2, ...; task-5 is finished and must not be sent.
    let store = Arc::new(TextOrderStore::default());
    let made = store
        .create((1..=12).map(|i| new_task(&format!("thing {i}"))).collect())
        .unwrap();
    let mut done = made[4].clone();
    done.transition(TaskState::Cancelled, None).unwrap();
    store.put(&done).unwrap();
    assert_eq!(
        store.list().unwrap()[1].id,
        "task-10",
        "the store's order is text"
    );

    let (tasks, _) = ledger(quiet(), store).await;
    let (tx, mut rx) = mpsc::channel(64);
    tasks.attach_body(tx).await.unwrap();
    let mut expected = numbered(1..=12);
    expected.retain(|id| id != "task-5");
    assert_eq!(tool_calls(&mut rx), expected);
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_tasks_are_sent_again_in_numeric_order() {
    let config = TasksConfig {
        // Everything sent is due again at the next check (every 50 ms of tokio time).
        redeliver_after: Duration::ZERO,
        ..TasksConfig::default()
    };
    let store = Arc::new(TextOrderStore::default());
    let (tasks, _) = ledger(config, store).await;
    let (tx, mut rx) = mpsc::channel(64);
    let session = tasks.attach_body(tx).await.unwrap();
    let mut filed = Vec::new();
    for i in 1..=11 {
        let t = tasks
            .create(args(&format!("thing {i}")), TaskSource::Api, None)
            .await
            .unwrap();
        filed.push(t.id);
    }
    assert_eq!(filed, numbered(1..=11));
    assert_eq!(tool_calls(&mut rx), filed, "each sent once when filed");
    // The body acknowledges task-3; the rest are sent again, by number.
    tasks
        .body_report(session, report("task-3", BodyState::Accepted))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(50)).await;
    let again = tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let mut resent = vec![match again {
        BodyCommand::ToolCall { id, .. } => id,
        other => panic!("{other:?}"),
    }];
    tasks.summary().await.unwrap(); // the redelivery round is over
    resent.extend(tool_calls(&mut rx));
    let mut expected = numbered(1..=11);
    expected.retain(|id| id != "task-3");
    assert_eq!(resent, expected);
    let snapshot = tasks.snapshot().await.unwrap();
    assert_eq!(snapshot["redeliveries"], 10, "{snapshot}");
    assert_eq!(tasks.get("task-10").await.unwrap().deliveries, 2);
}

#[tokio::test]
async fn intent_to_dispatch_is_timed_from_the_intent_to_the_bodys_tool_call() {
    let (tasks, _) = ledger(quiet(), Arc::new(MemoryTaskStore::default())).await;
    // Heard 50 ms ago; no body yet, so the task waits (and the wait counts).
    let heard = std::time::Instant::now() - Duration::from_millis(50);
    let from_intent = NewTask {
        intent_at: Some(heard),
        ..new_task("cup")
    };
    tasks
        .create_many(vec![from_intent, new_task("plate")])
        .await
        .unwrap();
    assert_eq!(
        tasks.intent_to_dispatch().count(),
        0,
        "nothing dispatched yet"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (tx, mut rx) = mpsc::channel(8);
    tasks.attach_body(tx).await.unwrap();
    assert_eq!(tool_calls(&mut rx), ["task-1", "task-2"]);
    // One timing: the task from an intent; the other has none.
    let timed = tasks.intent_to_dispatch().snapshot();
    assert_eq!(timed.count(), 1);
    assert!(
        timed.percentiles().max_ms >= 80.0,
        "the wait for a body counts: {:?}",
        timed.percentiles()
    );
}
