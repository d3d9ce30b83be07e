//! The ledger and body delivery through the real tasks actor, on an in-memory store.

use std::sync::Arc;
use std::time::Duration;

use creature_actors::ports::{
    Action, BodyCommand, BodyReport, BodyState, MemoryTaskStore, PhysicalTask, StepOutput,
    TaskSource, TaskState, VoiceError, VoiceModel,
};
use creature_actors::rules::RulePlanner;
use creature_actors::tasks::{TaskError, TasksConfig};
use creature_actors::{BrainConfig, BrainHandle, BrainPorts, FRAME_SAMPLES};
use tokio::sync::mpsc;

struct Quiet;

impl VoiceModel for Quiet {
    fn backend(&self) -> &'static str {
        "quiet"
    }
    fn step(&mut self, _: &[f32]) -> Result<StepOutput, VoiceError> {
        Ok(StepOutput {
            agent: vec![0.0; FRAME_SAMPLES],
            text: None,
        })
    }
    fn reset(&mut self) -> Result<(), VoiceError> {
        Ok(())
    }
}

async fn brain(redeliver_after: Duration) -> BrainHandle {
    let config = BrainConfig {
        tasks: TasksConfig { redeliver_after },
        ..BrainConfig::default()
    };
    let ports = BrainPorts {
        model: Box::new(Quiet),
        planner: Arc::new(RulePlanner::default()),
        store: Arc::new(MemoryTaskStore::default()),
    };
    BrainHandle::start(config, ports).await.unwrap()
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
    let brain = brain(Duration::from_secs(60)).await;
    let tasks = brain.tasks.clone();
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
    brain.stop().await;
}

#[tokio::test]
async fn one_body_at_a_time_and_a_new_body_gets_every_unfinished_task_again() {
    let brain = brain(Duration::from_secs(60)).await;
    let tasks = brain.tasks.clone();
    let (tx, mut rx) = mpsc::channel(16);
    let first = tasks.attach_body(tx).await.unwrap();
    let (tx2, _rx2) = mpsc::channel(16);
    assert!(matches!(
        tasks.attach_body(tx2).await.unwrap_err(),
        TaskError::BodyBusy
    ));

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

    // The body drops off and comes back: the unfinished task is sent again, the failed one not.
    tasks.detach_body(first);
    drop(rx);
    let (tx3, mut rx3) = mpsc::channel(16);
    let second = tasks.attach_body(tx3).await.unwrap();
    assert_ne!(first, second);
    let again = next_call(&mut rx3).await;
    assert_eq!(id_of(&again), a.id);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx3.recv())
            .await
            .is_err(),
        "only the unfinished one"
    );
    let t = tasks.get(&a.id).await.unwrap();
    assert_eq!((t.state, t.deliveries), (TaskState::Running, 2));
    brain.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_task_is_sent_again_and_cancel_reaches_the_body() {
    let brain = brain(Duration::from_millis(300)).await;
    let tasks = brain.tasks.clone();
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
    brain.stop().await;
}
