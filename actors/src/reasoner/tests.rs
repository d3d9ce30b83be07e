//! The slow loop on its own: a planner the test answers by hand (or never), and a ledger
//! that is a recorder, so the test sees every plan filed and answers it. Time is tokio's
//! paused clock: a planner that never answers costs no real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::ports::{PhysicalTask, PlanOutcome, PlannerError, Task};
use crate::slot::testing::{self, Recording};
use crate::tasks::TasksMsg;

/// One question to the planner: the intent's object, and where its answer goes.
struct Asked {
    object: String,
    answer: oneshot::Sender<Result<PlanOutcome, PlannerError>>,
}

/// A planner that hands every question to the test and waits for the test's answer; a
/// question whose answer is dropped is never answered. It counts questions abandoned
/// (their future dropped: a cancel).
struct HandPlanner {
    asked: mpsc::UnboundedSender<Asked>,
    abandoned: Arc<AtomicUsize>,
}

/// Counts a deliberation whose planner call was dropped before it answered.
struct Abandoned(Arc<AtomicUsize>, bool);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait::async_trait]
impl Planner for HandPlanner {
    fn name(&self) -> &'static str {
        "hand"
    }

    async fn plan(&self, ctx: PlanContext) -> Result<PlanOutcome, PlannerError> {
        let mut guard = Abandoned(Arc::clone(&self.abandoned), false);
        let (answer, answered) = oneshot::channel();
        let _ = self.asked.send(Asked {
            object: ctx.intent.task.object.clone(),
            answer,
        });
        let result = match answered.await {
            Ok(result) => result,
            Err(_) => std::future::pending().await,
        };
        guard.1 = true;
        result
    }
}

struct Loop {
    reasoner: ReasonerHandle,
    asked: mpsc::UnboundedReceiver<Asked>,
    abandoned: Arc<AtomicUsize>,
    tasks: TasksHandle,
    ledger: Recording<TasksMsg>,
}

async fn slow_loop(max_in_flight: usize, queue_capacity: usize) -> Loop {
    let (tx, asked) = mpsc::unbounded_channel();
    let abandoned = Arc::new(AtomicUsize::new(0));
    let planner = Arc::new(HandPlanner {
        asked: tx,
        abandoned: Arc::clone(&abandoned),
    });
    let (tasks, ledger) = testing::tasks().await;
    let config = ReasonerConfig {
        max_in_flight,
        queue_capacity,
    };
    let reasoner = Reasoner::spawn(config, planner, tasks.clone(), None)
        .await
        .unwrap();
    Loop {
        reasoner,
        asked,
        abandoned,
        tasks,
        ledger,
    }
}

fn bring(object: &str) -> PhysicalTask {
    PhysicalTask {
        action: Action::Bring,
        object: object.into(),
        destination: None,
        utterance: format!("I'll bring you the {object}."),
        confidence: 0.9,
    }
}

fn plan_of(objects: &[&str]) -> PlanOutcome {
    PlanOutcome {
        calls: objects.iter().map(|o| bring(o)).collect(),
        planner: "hand",
        fallback: None,
    }
}

impl Loop {
    fn intent(&self, object: &str) {
        let intent = Intent {
            task: bring(object),
            tick: 1,
            detector: "rules".into(),
        };
        self.reasoner.intent(intent, Vec::new());
    }

    async fn snapshot(&self) -> serde_json::Value {
        self.reasoner.snapshot().await.unwrap()
    }

    /// The first snapshot (within a second of the paused clock) for which `ready` holds,
    /// or the last one taken.
    async fn snapshot_when(&self, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let mut snap = self.snapshot().await;
        for _ in 0..100 {
            if ready(&snap) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            snap = self.snapshot().await;
        }
        snap
    }

    /// The questions the planner has been asked and not yet shown, once the reasoner has
    /// handled everything sent to it and its deliberations had their turn.
    async fn questions(&mut self) -> Vec<Asked> {
        self.snapshot().await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let mut got = Vec::new();
        while let Ok(q) = self.asked.try_recv() {
            got.push(q);
        }
        got
    }

    /// Answer the ledger's next `CreateMany` by filing it; returns the objects filed.
    async fn file_next_plan(&mut self) -> Vec<String> {
        match testing::next(&mut self.ledger, Duration::from_secs(1)).await {
            TasksMsg::CreateMany { new, reply } => {
                let objects = new.iter().map(|n| n.arguments.object.clone()).collect();
                let filed = new
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| {
                        Task::new(format!("task-{}", i + 1), n.arguments, n.source, n.plan)
                    })
                    .collect();
                let _ = reply.send(Ok(filed));
                objects
            }
            other => panic!("expected a plan to file, got {other:?}"),
        }
    }
}

fn objects(asked: &[Asked]) -> Vec<&str> {
    asked.iter().map(|a| a.object.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn no_more_than_max_in_flight_deliberations_run_at_once() {
    let mut l = slow_loop(2, 10).await;
    for o in ["a", "b", "c", "d", "e"] {
        l.intent(o);
    }
    let asked = l.questions().await;
    assert_eq!(objects(&asked), ["a", "b"], "two at once");
    let s = l.snapshot().await;
    assert_eq!(
        (s["in_flight"].as_u64(), s["queued"].as_u64()),
        (Some(2), Some(3)),
        "{s}"
    );

    // One finishes: exactly one more starts, the oldest waiting.
    let mut asked = asked.into_iter();
    let a = asked.next().unwrap();
    a.answer.send(Ok(plan_of(&["a"]))).unwrap();
    assert_eq!(l.file_next_plan().await, ["a"]);
    let more = l.questions().await;
    assert_eq!(objects(&more), ["c"]);
    let s = l.snapshot().await;
    assert_eq!(s["planned"], 1, "{s}");
    assert_eq!(
        (s["in_flight"].as_u64(), s["queued"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_the_oldest_waiting_intent() {
    let mut l = slow_loop(1, 2).await;
    for o in ["a", "b", "c", "d", "e"] {
        l.intent(o);
    }
    let asked = l.questions().await;
    assert_eq!(objects(&asked), ["a"]);
    let s = l.snapshot().await;
    assert_eq!(s["queued"], 2, "{s}");
    assert_eq!(s["dropped"], 2, "{s}");
    let dropped: Vec<_> = s["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "dropped")
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["intent"]["object"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dropped,
        [(2, "b"), (3, "c")],
        "the oldest waiting ones: {s}"
    );
    assert!(
        s["recent"][0]["error"]
            .as_str()
            .unwrap()
            .contains("queue full")
    );

    // The newest two are still waiting, in order.
    asked
        .into_iter()
        .next()
        .unwrap()
        .answer
        .send(Ok(plan_of(&["a"])))
        .unwrap();
    l.file_next_plan().await;
    assert_eq!(objects(&l.questions().await), ["d"]);
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_a_deliberation_and_frees_its_slot() {
    let mut l = slow_loop(1, 10).await;
    for o in ["a", "b", "c"] {
        l.intent(o);
    }
    let first = l.questions().await;
    assert_eq!(objects(&first), ["a"]);

    assert_eq!(l.reasoner.cancel(Some(1)).await.unwrap(), 1);
    let next = l.questions().await;
    assert_eq!(objects(&next), ["b"], "the slot went to the next intent");
    assert_eq!(
        l.abandoned.load(Ordering::SeqCst),
        1,
        "the planner call was dropped"
    );
    assert!(
        first[0].answer.is_closed(),
        "nobody waits for its answer any more"
    );

    assert_eq!(
        l.reasoner.cancel(Some(99)).await.unwrap(),
        0,
        "no such deliberation"
    );
    assert_eq!(l.reasoner.cancel(Some(3)).await.unwrap(), 1, "a queued one");
    let s = l.snapshot().await;
    assert_eq!(
        (s["in_flight"].as_u64(), s["queued"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );

    for o in ["d", "e"] {
        l.intent(o);
    }
    assert_eq!(
        l.reasoner.cancel(None).await.unwrap(),
        3,
        "b running, d and e queued"
    );
    let s = l.snapshot().await;
    assert_eq!(s["cancelled"], 5, "{s}");
    assert_eq!(
        (s["in_flight"].as_u64(), s["queued"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert!(
        l.questions().await.is_empty(),
        "nothing started after cancel-all"
    );
    assert_eq!(l.abandoned.load(Ordering::SeqCst), 2);
    // Nothing was filed.
    assert!(
        testing::drain(l.tasks.slot(), &mut l.ledger)
            .await
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn a_planner_that_never_answers_holds_its_slot_until_cancelled() {
    // The reasoner has no planner timeout of its own (a planner that can hang, like the
    // LLM one, carries its own and falls back): a silent planner keeps its slot, however
    // long, and the intent behind it waits; cancel is the way out.
    let mut l = slow_loop(1, 10).await;
    l.intent("a");
    l.intent("b");
    let asked = l.questions().await;
    assert_eq!(objects(&asked), ["a"]);
    tokio::time::advance(Duration::from_secs(3600)).await;
    let s = l.snapshot().await;
    assert_eq!(
        (s["in_flight"].as_u64(), s["queued"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["failed"], 0, "{s}");
    assert!(l.questions().await.is_empty());

    assert_eq!(l.reasoner.cancel(Some(1)).await.unwrap(), 1);
    assert_eq!(objects(&l.questions().await), ["b"]);
    assert!(asked[0].answer.is_closed(), "the silent call was dropped");
}

#[tokio::test(start_paused = true)]
async fn a_plan_goes_to_the_ledger_whole_in_one_call() {
    let mut l = slow_loop(1, 10).await;
    l.intent("a");
    let asked = l.questions().await;
    asked
        .into_iter()
        .next()
        .unwrap()
        .answer
        .send(Ok(plan_of(&["cup", "plate"])))
        .unwrap();
    match testing::next(&mut l.ledger, Duration::from_secs(1)).await {
        TasksMsg::CreateMany { new, reply } => {
            let steps: Vec<_> = new
                .iter()
                .map(|n| {
                    let p = n.plan.as_ref().unwrap();
                    (n.arguments.object.as_str(), p.step, p.of, p.plan.clone())
                })
                .collect();
            assert_eq!(steps.len(), 2);
            assert_eq!((steps[0].0, steps[0].1, steps[0].2), ("cup", 1, 2));
            assert_eq!((steps[1].0, steps[1].1, steps[1].2), ("plate", 2, 2));
            assert_eq!(steps[0].3, steps[1].3, "one plan id");
            drop(reply);
        }
        other => panic!("expected one CreateMany, got {other:?}"),
    }
    // The reply was dropped; whatever the reasoner does next, it files nothing step by step.
    for msg in testing::drain(l.tasks.slot(), &mut l.ledger).await {
        assert!(
            !matches!(msg, TasksMsg::Create { .. } | TasksMsg::CreateMany { .. }),
            "{msg:?}"
        );
    }
}

/// Drive one deliberation to `unknown`: its plan's filing and every question about it go
/// unanswered. Returns the plan id.
async fn deliberation_left_unknown(l: &mut Loop) -> String {
    l.intent("a");
    let asked = l.questions().await;
    let _ = asked
        .into_iter()
        .next()
        .unwrap()
        .answer
        .send(Ok(plan_of(&["cup", "plate"])));
    let plan = match testing::next(&mut l.ledger, Duration::from_secs(1)).await {
        TasksMsg::CreateMany { new, reply } => {
            drop(reply);
            new[0].plan.as_ref().unwrap().plan.clone()
        }
        other => panic!("expected a plan to file, got {other:?}"),
    };
    for _ in 0..CONFIRM_ATTEMPTS {
        match testing::next(&mut l.ledger, Duration::from_secs(10)).await {
            TasksMsg::Plan { plan: asked, reply } => {
                assert_eq!(asked, plan);
                drop(reply);
            }
            other => panic!("expected a question about the plan, got {other:?}"),
        }
    }
    // The last unanswered question ends the deliberation.
    let snap = l.snapshot_when(|s| s["unknown"] == 1).await;
    assert_eq!(snap["unknown"], 1, "{snap}");
    assert_eq!(snap["recent"][0]["outcome"], "unknown", "{snap}");
    assert_eq!(snap["recent"][0]["plan"], plan.as_str(), "{snap}");
    plan
}

/// Answer the next question about `plan` with `filed` tasks.
async fn answer_plan(l: &mut Loop, plan: &str, filed: &[&str]) {
    match testing::next(&mut l.ledger, Duration::from_secs(30)).await {
        TasksMsg::Plan { plan: asked, reply } => {
            assert_eq!(asked, plan);
            let tasks = filed
                .iter()
                .enumerate()
                .map(|(i, object)| {
                    Task::new(
                        format!("task-{}", i + 1),
                        bring(object),
                        TaskSource::Monologue,
                        None,
                    )
                })
                .collect();
            let _ = reply.send(Ok(tasks));
        }
        other => panic!("expected a question about the plan, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_unknown_plan_becomes_planned_when_the_ledger_later_says_it_holds_it() {
    let mut l = slow_loop(1, 10).await;
    let plan = deliberation_left_unknown(&mut l).await;
    // The ledger is asked again later; its first answer settles the outcome.
    answer_plan(&mut l, &plan, &["cup", "plate"]).await;
    let snap = l.snapshot_when(|s| s["unknown"] == 0).await;
    assert_eq!(snap["unknown"], 0, "{snap}");
    assert_eq!(snap["planned"], 1, "{snap}");
    let record = &snap["recent"][0];
    assert_eq!(record["outcome"], "planned", "{snap}");
    assert_eq!(record["tasks"], serde_json::json!(["task-1", "task-2"]));
    assert!(record["error"].is_null(), "{snap}");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_plan_becomes_failed_when_the_ledger_later_says_it_never_filed_it() {
    let mut l = slow_loop(1, 10).await;
    let plan = deliberation_left_unknown(&mut l).await;
    // Still no answer the first time; the next question is answered: nothing filed.
    match testing::next(&mut l.ledger, Duration::from_secs(30)).await {
        TasksMsg::Plan { reply, .. } => drop(reply),
        other => panic!("expected a question about the plan, got {other:?}"),
    }
    assert_eq!(l.snapshot().await["unknown"], 1);
    answer_plan(&mut l, &plan, &[]).await;
    let snap = l.snapshot_when(|s| s["unknown"] == 0).await;
    assert_eq!(snap["unknown"], 0, "{snap}");
    assert_eq!(snap["failed"], 1, "{snap}");
    let record = &snap["recent"][0];
    assert_eq!(record["outcome"], "failed", "{snap}");
    assert!(
        record["error"].as_str().unwrap().contains(&plan),
        "the record says which plan is not in the ledger: {snap}"
    );
}
