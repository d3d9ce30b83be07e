//! `reasoner`: the slow loop. Each intent becomes a deliberation: tracked, cancellable async
//! work that asks the [`Planner`] for tool calls (which may take seconds) and files them
//! with `tasks`. At most `max_in_flight` run at once; the rest wait in a bounded queue.
//! Results come back to the actor as messages, so it stays responsive, and nothing here is
//! ever awaited by the voice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::task::{AbortHandle, JoinSet};

use crate::CALL_TIMEOUT;
use crate::ports::{Action, Intent, NewTask, PlanContext, PlanStep, Planner, TaskSource, now_ms};
use crate::slot::{ActorStats, CallError, Slot};
use crate::tasks::TasksHandle;

/// Slow-loop settings (from `[reasoner]` in the config file).
#[derive(Debug, Clone)]
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

/// How a deliberation ended.
#[derive(Debug, Clone)]
pub struct Deliberated {
    pub planner: &'static str,
    pub fallback: Option<String>,
    pub task_ids: Vec<String>,
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
        result: Result<Deliberated, String>,
        took: Duration,
    },
    /// Cancel one deliberation (running or queued), or all of them; replies how many.
    Cancel {
        id: Option<u64>,
        reply: RpcReplyPort<usize>,
    },
    Snapshot(RpcReplyPort<serde_json::Value>),
    #[cfg(feature = "fault-injection")]
    Crash,
}

#[derive(Clone, Debug)]
pub struct ReasonerHandle {
    slot: Slot<ReasonerMsg>,
}

impl ReasonerHandle {
    pub(crate) fn new(slot: Slot<ReasonerMsg>) -> Self {
        ReasonerHandle { slot }
    }

    /// Think about `intent` in the background.
    pub fn intent(&self, intent: Intent, recent: Vec<String>) {
        self.slot.cast(ReasonerMsg::Intent { intent, recent });
    }

    /// Cancel deliberation `id`, or every one with `None`; returns how many were cancelled.
    pub async fn cancel(&self, id: Option<u64>) -> Result<usize, CallError> {
        self.slot
            .call(|reply| ReasonerMsg::Cancel { id, reply }, CALL_TIMEOUT)
            .await
    }

    pub async fn snapshot(&self) -> Result<serde_json::Value, CallError> {
        self.slot.call(ReasonerMsg::Snapshot, CALL_TIMEOUT).await
    }

    pub fn stats(&self) -> &Arc<ActorStats> {
        self.slot.stats()
    }

    #[cfg(feature = "fault-injection")]
    pub fn crash(&self) {
        self.slot.cast(ReasonerMsg::Crash);
    }
}

#[derive(Clone)]
pub struct Reasoner {
    pub(crate) config: ReasonerConfig,
    pub(crate) planner: Arc<dyn Planner>,
    pub(crate) tasks: TasksHandle,
    /// Where this actor registers each incarnation (and counts its messages).
    pub(crate) slot: Slot<ReasonerMsg>,
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
    tasks: Vec<String>,
    error: Option<String>,
    took_ms: u64,
}

struct Running {
    intent: IntentBrief,
    started: Instant,
    abort: AbortHandle,
}

pub struct ReasonerState {
    /// Every deliberation's task; dropping the state (however the actor ends) aborts them.
    work: JoinSet<()>,
    running: HashMap<u64, Running>,
    queue: VecDeque<(u64, PlanContext)>,
    next_id: u64,
    recent: VecDeque<Record>,
    planned: u64,
    failed: u64,
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
    ) {
        let brief = IntentBrief::from(&ctx.intent);
        let planner = Arc::clone(&self.planner);
        let tasks = self.tasks.clone();
        let me = myself.clone();
        let abort = state.work.spawn(async move {
            let started = Instant::now();
            let result = deliberate(planner.as_ref(), &tasks, id, ctx).await;
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
            },
        );
    }

    fn fill_slots(&self, myself: &ActorRef<ReasonerMsg>, state: &mut ReasonerState) {
        while state.running.len() < self.config.max_in_flight.max(1) {
            let Some((id, ctx)) = state.queue.pop_front() else {
                break;
            };
            self.start(myself, state, id, ctx);
        }
    }

    fn record(state: &mut ReasonerState, record: Record) {
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back(record);
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
            "cancelled": state.cancelled,
            "dropped": state.dropped,
            "fallbacks": state.fallbacks,
            "last_fallback": state.last_fallback,
            "running": running,
            "recent": state.recent,
        })
    }
}

/// One deliberation: plan, then file each tool call as a task, in order.
async fn deliberate(
    planner: &dyn Planner,
    tasks: &TasksHandle,
    id: u64,
    ctx: PlanContext,
) -> Result<Deliberated, String> {
    let outcome = planner.plan(ctx).await.map_err(|e| e.to_string())?;
    if outcome.calls.is_empty() {
        return Err(format!("the {} planner made no tool call", outcome.planner));
    }
    let steps = outcome.calls.len() as u32;
    let plan_id = format!("plan-{}-{id}", now_ms());
    let mut new = Vec::with_capacity(outcome.calls.len());
    for (i, call) in outcome.calls.into_iter().enumerate() {
        call.validate()
            .map_err(|e| format!("tool call {} rejected: {e}", i + 1))?;
        let plan = (steps > 1).then(|| PlanStep {
            plan: plan_id.clone(),
            step: i as u32 + 1,
            of: steps,
        });
        new.push(NewTask {
            arguments: call,
            source: TaskSource::Monologue,
            plan,
        });
    }
    // The whole plan or none of it (say, past the bound on unfinished tasks).
    let task_ids = tasks
        .create_many(new)
        .await
        .map_err(|e| format!("could not file the plan: {e}"))?
        .into_iter()
        .map(|t| t.id)
        .collect();
    Ok(Deliberated {
        planner: outcome.planner,
        fallback: outcome.fallback,
        task_ids,
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
            recent: VecDeque::with_capacity(RECENT),
            planned: 0,
            failed: 0,
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
                ));
                if state.queue.len() > self.config.queue_capacity.max(1) {
                    if let Some((dropped, ctx)) = state.queue.pop_front() {
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
                                tasks: done.task_ids,
                                error: None,
                                took_ms,
                            }
                        }
                        Err(error) => {
                            state.failed += 1;
                            tracing::warn!(id, error = %crate::text::printable(&error), "deliberation failed");
                            Record {
                                id,
                                intent: run.intent,
                                outcome: "failed",
                                planner: None,
                                fallback: None,
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
                        .chain(state.queue.iter().map(|(i, _)| *i))
                        .collect(),
                };
                for id in ids {
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
                                tasks: vec![],
                                error: None,
                                took_ms: run.started.elapsed().as_millis() as u64,
                            },
                        );
                        n += 1;
                    } else if let Some(pos) = state.queue.iter().position(|(i, _)| *i == id) {
                        state.queue.remove(pos);
                        n += 1;
                    }
                }
                state.cancelled += n as u64;
                let _ = reply.send(n);
                self.fill_slots(&myself, state);
            }
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
