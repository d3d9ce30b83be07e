//! The slow loop and the ledger agree on every plan: filed whole or not at all, and a
//! filing the reasoner stopped waiting for is reported as the ledger has it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use creature_actors::ports::{
    Action, Intent, MemoryTaskStore, NewTask, Page, PageQuery, PhysicalTask, StepOutput,
    StoreError, Task, TaskState, TaskStore, VoiceError, VoiceModel,
};
use creature_actors::rules::RulePlanner;
use creature_actors::tasks::TasksConfig;
use creature_actors::{BrainConfig, BrainHandle, BrainPorts, FRAME_SAMPLES};
use serde_json::Value;

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

/// An in-memory ledger whose filing takes `delay`: longer than the tasks actor's write
/// timeout, so whoever files through it stops waiting before it is done.
struct SlowStore {
    inner: MemoryTaskStore,
    delay: Duration,
    /// A filing has begun: the plan is with the ledger.
    filing: std::sync::atomic::AtomicBool,
}

impl TaskStore for SlowStore {
    fn create(&self, new: Vec<NewTask>) -> Result<Vec<Task>, StoreError> {
        self.filing.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.inner.create(new)
    }
    fn put(&self, task: &Task) -> Result<(), StoreError> {
        self.inner.put(task)
    }
    fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.inner.get(id)
    }
    fn list(&self) -> Result<Vec<Task>, StoreError> {
        self.inner.list()
    }
    fn page(&self, query: &PageQuery) -> Result<Page, StoreError> {
        self.inner.page(query)
    }
    fn delete(&self, ids: &[String]) -> Result<(), StoreError> {
        self.inner.delete(ids)
    }
}

async fn brain(store: Arc<dyn TaskStore>, tasks: TasksConfig) -> BrainHandle {
    let config = BrainConfig {
        tasks,
        ..BrainConfig::default()
    };
    let ports = BrainPorts {
        model: Box::new(Quiet),
        planner: Arc::new(RulePlanner::default()),
        store,
    };
    BrainHandle::start(config, ports).await.unwrap()
}

fn intent(object: &str) -> Intent {
    Intent {
        task: PhysicalTask {
            action: Action::Bring,
            object: object.into(),
            destination: None,
            utterance: format!("I'll bring you the {object}"),
            confidence: 0.9,
        },
        tick: 1,
        detector: "rules".into(),
    }
}

/// The reasoner's record of deliberation `id`, once it has one.
async fn record(brain: &BrainHandle, id: u64, within: Duration) -> (Value, Value) {
    let deadline = Instant::now() + within;
    loop {
        let snap = brain.reasoner.snapshot().await.unwrap();
        if let Some(r) = snap["recent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
        {
            return (r.clone(), snap);
        }
        assert!(
            Instant::now() < deadline,
            "no outcome within {within:?}: {snap}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_filed_after_the_call_timed_out_is_reported_as_filed() {
    // 6.5 s: past the 5 s the reasoner waits for the ledger's answer.
    let store = Arc::new(SlowStore {
        inner: MemoryTaskStore::default(),
        delay: Duration::from_millis(6_500),
        filing: Default::default(),
    });
    let brain = brain(store.clone(), TasksConfig::default()).await;
    brain.reasoner.intent(intent("cup"), vec![]);
    // Once the plan is with the ledger it is too late to cancel the deliberation (the
    // ledger's answer decides), so nothing is cancelled.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.filing.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the plan never reached the ledger"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(brain.reasoner.cancel(Some(1)).await.unwrap(), 0);

    let (record, snap) = record(&brain, 1, Duration::from_secs(30)).await;
    assert_eq!(record["outcome"], "planned", "{record}");
    assert!(
        record["took_ms"].as_u64().unwrap() >= 5_000,
        "the call really timed out first: {record}"
    );
    assert_eq!(snap["failed"], 0, "{snap}");
    assert_eq!(snap["unknown"], 0, "{snap}");

    // The ledger holds exactly what the reasoner says it filed.
    let ledger = store.list().unwrap();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    let task = &ledger[0];
    assert_eq!(record["tasks"], serde_json::json!([task.id]), "{record}");
    let step = task
        .plan
        .as_ref()
        .expect("a plan id on every reasoner task");
    assert_eq!(record["plan"], step.plan.as_str(), "{record}");
    assert_eq!((step.step, step.of), (1, 1));
    assert_eq!(task.state, TaskState::Pending);
    let by_plan = brain.tasks.plan(&step.plan).await.unwrap();
    assert_eq!(by_plan, ledger);
    brain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_the_ledger_refuses_is_failed_and_nothing_is_filed() {
    let store = Arc::new(MemoryTaskStore::default());
    let config = TasksConfig {
        max_unfinished: 0,
        ..TasksConfig::default()
    };
    let brain = brain(store.clone(), config).await;
    brain.reasoner.intent(intent("cup"), vec![]);
    let (record, snap) = record(&brain, 1, Duration::from_secs(10)).await;
    assert_eq!(record["outcome"], "failed", "{record}");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("could not file the plan"),
        "{record}"
    );
    assert_eq!(record["tasks"], serde_json::json!([]), "{record}");
    assert_eq!(snap["failed"], 1, "{snap}");
    assert!(store.list().unwrap().is_empty());
    brain.stop().await;
}
