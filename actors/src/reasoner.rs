//! `reasoner`: the slow loop. Each intent becomes a deliberation: tracked, cancellable async
//! work that asks the [`Planner`] for tool calls (which may take seconds) and files them
//! with `tasks`. At most `max_in_flight` run at once; the rest wait in a bounded queue.
//! Results come back to the actor as messages, so it stays responsive, and nothing here is
//! ever awaited by the voice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::task::{AbortHandle, JoinSet};

use crate::CALL_TIMEOUT;
use crate::handle::{ActorHandle, SnapshotRequest, Spawn, SpawnError, deref_to_actor_handle};
use crate::histogram::LatencyHistogram;
use crate::ports::{
    Action, Intent, InvalidTask, NewTask, PlanContext, PlanStep, Planner, PlannerError, Task,
    TaskSource, now_ms,
};
use crate::ring::Ring;
use crate::slot::{CallError, Slot};
use crate::tasks::{TaskError, TasksHandle};

/// Slow-loop settings: the reasoner's own keys of `[reasoner]` in the config file (the
/// service adds the planner's).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReasonerConfig {
    /// Deliberations running at once.
    pub max_in_flight: usize,
    /// Intents waiting for a free slot; beyond this the oldest waiting one is dropped.
    pub queue_capacity: usize,
}

impl Default for ReasonerConfig {
    fn default() -> Self {
        ReasonerConfig {
            max_in_flight: 4,
            queue_capacity: 64,
        }
    }
}

const RECENT: usize = 32;

/// After the ledger did not answer a plan's filing in time, ask it this many times (each
/// within the ledger's write timeout) whether the plan was filed before giving up.
const CONFIRM_ATTEMPTS: u32 = 6;
/// Pause between two such questions.
const CONFIRM_PAUSE: Duration = Duration::from_millis(500);
/// After a deliberation ends `unknown`, the ledger is asked again after this pause, then
/// after twice as long each time (at most [`SETTLE_MAX_PAUSE`]), until it answers or
/// [`SETTLE_ATTEMPTS`] questions went unanswered (about ten minutes); the record then
/// shows what the ledger holds.
const SETTLE_FIRST_PAUSE: Duration = Duration::from_secs(2);
const SETTLE_MAX_PAUSE: Duration = Duration::from_secs(60);
const SETTLE_ATTEMPTS: u32 = 14;

/// How a deliberation ended.
#[derive(Debug, Clone)]
pub struct Deliberated {
    pub planner: &'static str,
    pub fallback: Option<String>,
    /// The plan's id in the ledger ([`PlanStep::plan`]), shared by its tasks.
    pub plan: String,
    pub task_ids: Vec<String>,
}

/// Why a deliberation filed nothing (or cannot tell whether it did).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliberationError {
    #[error(transparent)]
    Planner(#[from] PlannerError),
    #[error("the {0} planner made no tool call")]
    NoCall(&'static str),
    #[error("tool call {step} rejected: {error}")]
    Rejected { step: usize, error: InvalidTask },
    /// The ledger refused the plan, or said after a late answer that it was not filed.
    #[error("could not file the plan: {0}")]
    NotFiled(TaskError),
    /// The ledger never answered whether plan `plan` was filed: it may have been. Its
    /// tasks, if any, carry this plan id.
    #[error("the ledger did not say whether plan {plan} was filed: {cause}")]
    Unconfirmed { plan: String, cause: TaskError },
}

impl DeliberationError {
    /// The outcome a record of it shows: `unknown` when the ledger may hold the plan.
    fn outcome(&self) -> &'static str {
        match self {
            DeliberationError::Unconfirmed { .. } => "unknown",
            _ => "failed",
        }
    }
}

#[derive(Debug)]
pub enum ReasonerMsg {
    /// A physical-task intent (from `monologue`) with the phrases before it.
    Intent {
        intent: Intent,
        recent: Vec<String>,
    },
    /// A deliberation finished (from its own task).
    Finished {
        id: u64,
        result: Result<Deliberated, DeliberationError>,
        took: Duration,
    },
    /// Cancel one deliberation (running or queued), or all of them; replies how many.
    Cancel {
        id: Option<u64>,
        reply: RpcReplyPort<usize>,
    },
    /// The ledger answered, late, for a deliberation that ended `unknown`: the ids of the
    /// tasks it holds for its plan (none: the plan was never filed).
    Settled {
        id: u64,
        task_ids: Vec<String>,
    },
    Snapshot(RpcReplyPort<serde_json::Value>),
    #[cfg(feature = "fault-injection")]
    Crash,
}

impl SnapshotRequest for ReasonerMsg {
    fn snapshot(reply: RpcReplyPort<serde_json::Value>) -> Self {
        ReasonerMsg::Snapshot(reply)
    }
}

#[cfg(feature = "fault-injection")]
impl crate::handle::FaultInjection for ReasonerMsg {
    fn crash() -> Self {
        ReasonerMsg::Crash
    }
}

/// The slow loop's handle; `stats`, `snapshot` and `crash` come from [`ActorHandle`].
#[derive(Clone, Debug)]
pub struct ReasonerHandle {
    actor: ActorHandle<ReasonerMsg>,
    planner_calls: Arc<LatencyHistogram>,
    planner_name: &'static str,
}

deref_to_actor_handle!(ReasonerHandle, ReasonerMsg);

impl ReasonerHandle {
    /// How long each planner call took (an LLM request, or the rule planner), answered or
    /// failed; cancelled calls are not counted.
    pub fn planner_calls(&self) -> &LatencyHistogram {
        &self.planner_calls
    }

    /// The planner's name, as `/metrics` labels its calls.
    pub fn planner_name(&self) -> &'static str {
        self.planner_name
    }

    /// Think about `intent` in the background.
    pub fn intent(&self, intent: Intent, recent: Vec<String>) {
        self.actor.cast(ReasonerMsg::Intent { intent, recent });
    }

    /// Cancel deliberation `id`, or every one with `None`; returns how many were cancelled.
    pub async fn cancel(&self, id: Option<u64>) -> Result<usize, CallError> {
        self.actor
            .call(|reply| ReasonerMsg::Cancel { id, reply }, CALL_TIMEOUT)
            .await
    }
}

/// The slow loop: read-only wiring; all mutable state is in [`ReasonerState`].
#[derive(Clone)]
pub struct Reasoner {
    config: ReasonerConfig,
    planner: Arc<dyn Planner>,
    /// Where plans are filed.
    tasks: TasksHandle,
    /// Where this actor registers each incarnation (and counts its messages).
    slot: Slot<ReasonerMsg>,
    /// Planner call durations (outlive incarnations).
    planner_calls: Arc<LatencyHistogram>,
}

impl Reasoner {
    /// A slow loop that asks `planner` and files plans with `tasks`.
    pub fn new(config: ReasonerConfig, planner: Arc<dyn Planner>, tasks: TasksHandle) -> Self {
        Reasoner {
            config,
            planner,
            tasks,
            slot: Slot::new("reasoner"),
            planner_calls: Arc::new(LatencyHistogram::new()),
        }
    }

    /// The handle that reaches every incarnation of this actor.
    pub fn handle(&self) -> ReasonerHandle {
        ReasonerHandle {
            actor: ActorHandle::new(self.slot.clone()),
            planner_calls: Arc::clone(&self.planner_calls),
            planner_name: self.planner.name(),
        }
    }

    /// Build the slow loop and start it (under `supervisor`, if given).
    pub async fn spawn(
        config: ReasonerConfig,
        planner: Arc<dyn Planner>,
        tasks: TasksHandle,
        supervisor: Option<ActorCell>,
    ) -> Result<ReasonerHandle, SpawnError> {
        let reasoner = Reasoner::new(config, planner, tasks);
        Spawn::start(&reasoner, supervisor).await?;
        Ok(reasoner.handle())
    }
}

impl Spawn for Reasoner {
    fn slot(&self) -> &Slot<ReasonerMsg> {
        &self.slot
    }
}

#[derive(Debug, Clone, Serialize)]
struct IntentBrief {
    action: Action,
    object: String,
    destination: Option<String>,
    utterance: String,
}

impl From<&Intent> for IntentBrief {
    fn from(i: &Intent) -> Self {
        IntentBrief {
            action: i.task.action,
            object: i.task.object.clone(),
            destination: i.task.destination.clone(),
            utterance: i.task.utterance.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Record {
    id: u64,
    intent: IntentBrief,
    outcome: &'static str,
    planner: Option<&'static str>,
    fallback: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<String>,
    tasks: Vec<String>,
    error: Option<String>,
    took_ms: u64,
}

struct Running {
    intent: IntentBrief,
    started: Instant,
    abort: AbortHandle,
    /// Set once the plan went to the ledger: past that point a cancel would leave the
    /// ledger and this actor disagreeing, so the deliberation runs to its end.
    filing: Arc<AtomicBool>,
}

pub struct ReasonerState {
    /// Every deliberation's task; dropping the state (however the actor ends) aborts them.
    work: JoinSet<()>,
    running: HashMap<u64, Running>,
    /// Waiting deliberations: id, what to think about, when its intent was heard.
    queue: VecDeque<(u64, PlanContext, Instant)>,
    next_id: u64,
    recent: Ring<Record>,
    planned: u64,
    failed: u64,
    /// Deliberations whose filing the ledger never confirmed nor denied.
    unknown: u64,
    cancelled: u64,
    dropped: u64,
    fallbacks: u64,
    last_fallback: Option<String>,
}

impl Reasoner {
    fn start(
        &self,
        myself: &ActorRef<ReasonerMsg>,
        state: &mut ReasonerState,
        id: u64,
        ctx: PlanContext,
        heard: Instant,
    ) {
        let brief = IntentBrief::from(&ctx.intent);
        let planner = Arc::clone(&self.planner);
        let calls = Arc::clone(&self.planner_calls);
        let tasks = self.tasks.clone();
        let me = myself.clone();
        let filing = Arc::new(AtomicBool::new(false));
        let filing_flag = Arc::clone(&filing);
        let abort = state.work.spawn(async move {
            let started = Instant::now();
            let result = deliberate(
                planner.as_ref(),
                &calls,
                &tasks,
                (id, heard),
                ctx,
                &filing_flag,
            )
            .await;
            let _ = me.cast(ReasonerMsg::Finished {
                id,
                result,
                took: started.elapsed(),
            });
        });
        state.running.insert(
            id,
            Running {
                intent: brief,
                started: Instant::now(),
                abort,
                filing,
            },
        );
    }

    fn fill_slots(&self, myself: &ActorRef<ReasonerMsg>, state: &mut ReasonerState) {
        while state.running.len() < self.config.max_in_flight.max(1) {
            let Some((id, ctx, heard)) = state.queue.pop_front() else {
                break;
            };
            self.start(myself, state, id, ctx, heard);
        }
    }

    /// Keep asking the ledger whether it holds plan `plan` of deliberation `id` (which
    /// ended `unknown`) until it says; the answer comes back as [`ReasonerMsg::Settled`].
    fn settle(
        &self,
        myself: &ActorRef<ReasonerMsg>,
        state: &mut ReasonerState,
        id: u64,
        plan: String,
    ) {
        let tasks = self.tasks.clone();
        let me = myself.clone();
        state.work.spawn(async move {
            let mut pause = SETTLE_FIRST_PAUSE;
            for _ in 0..SETTLE_ATTEMPTS {
                tokio::time::sleep(pause).await;
                match tasks.plan(&plan).await {
                    Ok(filed) => {
                        let task_ids = filed.into_iter().map(|t| t.id).collect();
                        let _ = me.cast(ReasonerMsg::Settled { id, task_ids });
                        return;
                    }
                    Err(e) => tracing::debug!(id, %plan, error = %e, "the ledger still does not say whether it holds the plan"),
                }
                pause = (pause * 2).min(SETTLE_MAX_PAUSE);
            }
            tracing::warn!(id, %plan, "the ledger never said whether it holds the plan; its outcome stays unknown");
        });
    }

    /// Turn deliberation `id`'s `unknown` into what the ledger holds.
    fn settled(state: &mut ReasonerState, id: u64, task_ids: Vec<String>) {
        let filed = !task_ids.is_empty();
        state.unknown = state.unknown.saturating_sub(1);
        if filed {
            state.planned += 1;
        } else {
            state.failed += 1;
        }
        tracing::info!(
            id,
            filed,
            tasks = task_ids.len(),
            "the ledger settled an unknown deliberation"
        );
        if let Some(record) = state
            .recent
            .iter_mut()
            .find(|r| r.id == id && r.outcome == "unknown")
        {
            if filed {
                record.outcome = "planned";
                record.error = None;
            } else {
                record.outcome = "failed";
                record.error = Some(format!(
                    "the ledger holds no task of plan {}",
                    record.plan.as_deref().unwrap_or("?")
                ));
            }
            record.tasks = task_ids;
        }
    }

    fn record(state: &mut ReasonerState, record: Record) {
        state.recent.push(record);
    }

    fn snapshot(&self, state: &ReasonerState) -> serde_json::Value {
        let running: Vec<_> = state
            .running
            .iter()
            .map(|(id, r)| {
                serde_json::json!({
                    "id": id,
                    "intent": r.intent,
                    "running_ms": r.started.elapsed().as_millis() as u64,
                })
            })
            .collect();
        serde_json::json!({
            "planner": self.planner.name(),
            "max_in_flight": self.config.max_in_flight,
            "in_flight": state.running.len(),
            "queued": state.queue.len(),
            "queue_capacity": self.config.queue_capacity,
            "planned": state.planned,
            "failed": state.failed,
            "unknown": state.unknown,
            "cancelled": state.cancelled,
            "dropped": state.dropped,
            "fallbacks": state.fallbacks,
            "last_fallback": state.last_fallback,
            "running": running,
            "recent": state.recent,
        })
    }
}

/// One deliberation (number `id`, for an intent heard at `heard`): plan, then file every
/// tool call as one plan, all or nothing. The plan id goes with each task, so the ledger
/// can say later whether it holds the plan; the planner call is timed into `calls`.
async fn deliberate(
    planner: &dyn Planner,
    calls: &LatencyHistogram,
    tasks: &TasksHandle,
    (id, heard): (u64, Instant),
    ctx: PlanContext,
    filing: &AtomicBool,
) -> Result<Deliberated, DeliberationError> {
    let asked = Instant::now();
    let outcome = planner.plan(ctx).await;
    calls.record(asked.elapsed());
    let outcome = outcome?;
    if outcome.calls.is_empty() {
        return Err(DeliberationError::NoCall(outcome.planner));
    }
    let steps = outcome.calls.len() as u32;
    let plan_id = format!("plan-{}-{id}", now_ms());
    let mut new = Vec::with_capacity(outcome.calls.len());
    for (i, call) in outcome.calls.into_iter().enumerate() {
        call.validate()
            .map_err(|error| DeliberationError::Rejected { step: i + 1, error })?;
        new.push(NewTask {
            intent_at: Some(heard),
            arguments: call,
            source: TaskSource::Monologue,
            plan: Some(PlanStep {
                plan: plan_id.clone(),
                step: i as u32 + 1,
                of: steps,
            }),
        });
    }
    filing.store(true, Ordering::SeqCst);
    let filed = match tasks.create_many(new).await {
        Ok(filed) => filed,
        // No answer in time, or the ledger restarted: it may have filed the plan or not.
        // Ask it; it answers in order, so after it is done with the plan.
        Err(TaskError::Call(late)) => {
            tracing::warn!(plan = %plan_id, cause = %late, "the ledger did not answer in time; asking whether the plan was filed");
            confirm(tasks, &plan_id, TaskError::Call(late)).await?
        }
        // The ledger refused the plan (past the bound on unfinished tasks, say): nothing filed.
        Err(refused) => return Err(DeliberationError::NotFiled(refused)),
    };
    Ok(Deliberated {
        planner: outcome.planner,
        fallback: outcome.fallback,
        plan: plan_id,
        task_ids: filed.into_iter().map(|t| t.id).collect(),
    })
}

/// Whether the ledger holds plan `plan`: its tasks if so, `NotFiled(late)` if not, and
/// `Unconfirmed` if the ledger does not say within [`CONFIRM_ATTEMPTS`] questions.
async fn confirm(
    tasks: &TasksHandle,
    plan: &str,
    late: TaskError,
) -> Result<Vec<Task>, DeliberationError> {
    let mut cause = late.clone();
    for attempt in 0..CONFIRM_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(CONFIRM_PAUSE).await;
        }
        match tasks.plan(plan).await {
            Ok(filed) if filed.is_empty() => return Err(DeliberationError::NotFiled(late)),
            Ok(filed) => {
                tracing::info!(%plan, steps = filed.len(), "the ledger filed the plan after all");
                return Ok(filed);
            }
            Err(e) => cause = e,
        }
    }
    Err(DeliberationError::Unconfirmed {
        plan: plan.to_string(),
        cause,
    })
}

impl Actor for Reasoner {
    type Msg = ReasonerMsg;
    type State = ReasonerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<ReasonerMsg>,
        _: (),
    ) -> Result<ReasonerState, ActorProcessingErr> {
        // Registered before the first message is handled, so no reply can miss it.
        self.slot.set(myself.clone());
        Ok(ReasonerState {
            work: JoinSet::new(),
            running: HashMap::new(),
            queue: VecDeque::new(),
            next_id: 1,
            recent: Ring::new(RECENT),
            planned: 0,
            failed: 0,
            unknown: 0,
            cancelled: 0,
            dropped: 0,
            fallbacks: 0,
            last_fallback: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ReasonerMsg>,
        msg: ReasonerMsg,
        state: &mut ReasonerState,
    ) -> Result<(), ActorProcessingErr> {
        // Reap finished deliberation tasks so the set does not grow.
        while state.work.try_join_next().is_some() {}
        match msg {
            ReasonerMsg::Intent { intent, recent } => {
                let id = state.next_id;
                state.next_id += 1;
                state.queue.push_back((
                    id,
                    PlanContext {
                        intent,
                        recent_monologue: recent,
                    },
                    Instant::now(),
                ));
                if state.queue.len() > self.config.queue_capacity.max(1) {
                    if let Some((dropped, ctx, _)) = state.queue.pop_front() {
                        state.dropped += 1;
                        tracing::warn!(id = dropped, "reasoner queue full; oldest intent dropped");
                        Self::record(
                            state,
                            Record {
                                id: dropped,
                                intent: IntentBrief::from(&ctx.intent),
                                outcome: "dropped",
                                planner: None,
                                fallback: None,
                                plan: None,
                                tasks: vec![],
                                error: Some("queue full".into()),
                                took_ms: 0,
                            },
                        );
                    }
                }
                self.fill_slots(&myself, state);
            }
            ReasonerMsg::Finished { id, result, took } => {
                if let Some(run) = state.running.remove(&id) {
                    let took_ms = took.as_millis() as u64;
                    let record = match result {
                        Ok(done) => {
                            state.planned += 1;
                            if let Some(why) = &done.fallback {
                                state.fallbacks += 1;
                                state.last_fallback = Some(why.clone());
                                // The planner already warned, with its own details.
                                tracing::debug!(id, reason = %crate::text::printable(why), "planner fell back to rules");
                            }
                            Record {
                                id,
                                intent: run.intent,
                                outcome: "planned",
                                planner: Some(done.planner),
                                fallback: done.fallback,
                                plan: Some(done.plan),
                                tasks: done.task_ids,
                                error: None,
                                took_ms,
                            }
                        }
                        Err(error) => {
                            let outcome = error.outcome();
                            let plan = match &error {
                                DeliberationError::Unconfirmed { plan, .. } => {
                                    state.unknown += 1;
                                    self.settle(&myself, state, id, plan.clone());
                                    Some(plan.clone())
                                }
                                _ => {
                                    state.failed += 1;
                                    None
                                }
                            };
                            let error = error.to_string();
                            tracing::warn!(id, outcome, error = %crate::text::printable(&error), "deliberation failed");
                            Record {
                                id,
                                intent: run.intent,
                                outcome,
                                planner: None,
                                fallback: None,
                                plan,
                                tasks: vec![],
                                error: Some(error),
                                took_ms,
                            }
                        }
                    };
                    Self::record(state, record);
                }
                self.fill_slots(&myself, state);
            }
            ReasonerMsg::Cancel { id, reply } => {
                let mut n = 0;
                let ids: Vec<u64> = match id {
                    Some(id) => vec![id],
                    None => state
                        .running
                        .keys()
                        .copied()
                        .chain(state.queue.iter().map(|(i, _, _)| *i))
                        .collect(),
                };
                for id in ids {
                    // A plan already handed to the ledger is past cancelling here: its outcome
                    // is the ledger's (cancel its tasks instead).
                    if state
                        .running
                        .get(&id)
                        .is_some_and(|run| run.filing.load(Ordering::SeqCst))
                    {
                        tracing::info!(id, "deliberation is filing its plan; not cancelled");
                        continue;
                    }
                    if let Some(run) = state.running.remove(&id) {
                        run.abort.abort();
                        Self::record(
                            state,
                            Record {
                                id,
                                intent: run.intent,
                                outcome: "cancelled",
                                planner: None,
                                fallback: None,
                                plan: None,
                                tasks: vec![],
                                error: None,
                                took_ms: run.started.elapsed().as_millis() as u64,
                            },
                        );
                        n += 1;
                    } else if let Some(pos) = state.queue.iter().position(|(i, _, _)| *i == id) {
                        state.queue.remove(pos);
                        n += 1;
                    }
                }
                state.cancelled += n as u64;
                let _ = reply.send(n);
                self.fill_slots(&myself, state);
            }
            ReasonerMsg::Settled { id, task_ids } => Self::settled(state, id, task_ids),
            ReasonerMsg::Snapshot(reply) => {
                let _ = reply.send(self.snapshot(state));
            }
            #[cfg(feature = "fault-injection")]
            ReasonerMsg::Crash => panic!("injected fault in reasoner"),
        }
        self.slot.stats().mark_handled();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
