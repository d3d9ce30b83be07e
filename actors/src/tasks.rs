//! `tasks`: the task ledger. Every `do_physical_task` call becomes a [`Task`] that is
//! written to the [`TaskStore`] and flushed before anyone is told it exists; every state
//! change follows the lifecycle in [`TaskState::can_become`] and lands in the task's
//! history. Task outcomes are passed on to `affect`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::affect::{AffectEvent, AffectHandle};
use crate::ports::{PhysicalTask, PlanStep, StoreError, Task, TaskSource, TaskState, TaskStore};
use crate::slot::{ActorStats, CallError, Slot};
use crate::CALL_TIMEOUT;

/// A write waits for the disk; give it more room than an in-memory answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a ledger request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    #[error("no task with id {0:?}")]
    NotFound(String),
    #[error("invalid task: {0}")]
    Invalid(String),
    #[error("{0}")]
    Lifecycle(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Call(#[from] CallError),
}

#[derive(Debug)]
pub enum TasksMsg {
    /// File a new task; the reply comes once it is on disk.
    Create {
        args: PhysicalTask,
        source: TaskSource,
        plan: Option<PlanStep>,
        reply: RpcReplyPort<Result<Task, TaskError>>,
    },
    Get { id: String, reply: RpcReplyPort<Result<Task, TaskError>> },
    List { reply: RpcReplyPort<Result<Vec<Task>, TaskError>> },
    /// Move a task along its lifecycle.
    Update {
        id: String,
        state: TaskState,
        detail: Option<String>,
        reply: RpcReplyPort<Result<Task, TaskError>>,
    },
    /// Counts by state, kept in memory.
    Summary(RpcReplyPort<TaskSummary>),
    Snapshot(RpcReplyPort<serde_json::Value>),
    #[cfg(feature = "fault-injection")]
    Crash,
}

#[derive(Clone, Debug)]
pub struct TasksHandle {
    slot: Slot<TasksMsg>,
}

/// Counts of tasks by state, for `/api/state`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct TaskSummary {
    pub total: u64,
    pub by_state: BTreeMap<String, u64>,
    pub last_created: Option<String>,
}

impl TasksHandle {
    pub(crate) fn new(slot: Slot<TasksMsg>) -> Self {
        TasksHandle { slot }
    }

    pub async fn create(
        &self,
        args: PhysicalTask,
        source: TaskSource,
        plan: Option<PlanStep>,
    ) -> Result<Task, TaskError> {
        self.slot.call(|reply| TasksMsg::Create { args, source, plan, reply }, WRITE_TIMEOUT).await?
    }

    pub async fn get(&self, id: &str) -> Result<Task, TaskError> {
        let id = id.to_string();
        self.slot.call(|reply| TasksMsg::Get { id, reply }, CALL_TIMEOUT).await?
    }

    pub async fn list(&self) -> Result<Vec<Task>, TaskError> {
        self.slot.call(|reply| TasksMsg::List { reply }, WRITE_TIMEOUT).await?
    }

    pub async fn update(
        &self,
        id: &str,
        state: TaskState,
        detail: Option<String>,
    ) -> Result<Task, TaskError> {
        let id = id.to_string();
        self.slot.call(|reply| TasksMsg::Update { id, state, detail, reply }, WRITE_TIMEOUT).await?
    }

    pub async fn summary(&self) -> Result<TaskSummary, CallError> {
        self.slot.call(TasksMsg::Summary, CALL_TIMEOUT).await
    }

    pub async fn snapshot(&self) -> Result<serde_json::Value, CallError> {
        self.slot.call(TasksMsg::Snapshot, CALL_TIMEOUT).await
    }

    pub fn stats(&self) -> &Arc<ActorStats> {
        self.slot.stats()
    }

    #[cfg(feature = "fault-injection")]
    pub fn crash(&self) {
        self.slot.cast(TasksMsg::Crash);
    }
}

#[derive(Clone)]
pub struct Tasks {
    pub(crate) store: Arc<dyn TaskStore>,
    pub(crate) affect: AffectHandle,
    pub(crate) stats: Arc<ActorStats>,
}

pub struct TasksState {
    summary: TaskSummary,
    writes: u64,
    write_errors: u64,
}

/// Run a blocking store call on the blocking pool.
async fn blocking<T, F>(store: &Arc<dyn TaskStore>, f: F) -> Result<T, TaskError>
where
    T: Send + 'static,
    F: FnOnce(&dyn TaskStore) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| TaskError::Store(StoreError::Io(format!("store call died: {e}"))))?
        .map_err(TaskError::Store)
}

impl Tasks {
    async fn create(
        &self,
        state: &mut TasksState,
        args: PhysicalTask,
        source: TaskSource,
        plan: Option<PlanStep>,
    ) -> Result<Task, TaskError> {
        args.validate().map_err(TaskError::Invalid)?;
        let n = blocking(&self.store, |s| s.next_id()).await?;
        let task = Task::new(format!("task-{n:06}"), args, source, plan);
        self.write(state, task.clone()).await?;
        state.summary.total += 1;
        *state.summary.by_state.entry(TaskState::Pending.as_str().into()).or_default() += 1;
        state.summary.last_created = Some(task.id.clone());
        tracing::info!(id = %task.id, action = task.arguments.action.as_str(), object = %task.arguments.object, "task filed");
        Ok(task)
    }

    async fn write(&self, state: &mut TasksState, task: Task) -> Result<(), TaskError> {
        state.writes += 1;
        let result = blocking(&self.store, move |s| s.put(&task)).await;
        if result.is_err() {
            state.write_errors += 1;
        }
        result
    }

    async fn get(&self, id: String) -> Result<Task, TaskError> {
        let wanted = id.clone();
        blocking(&self.store, move |s| s.get(&wanted)).await?.ok_or(TaskError::NotFound(id))
    }

    async fn update(
        &self,
        state: &mut TasksState,
        id: String,
        next: TaskState,
        detail: Option<String>,
    ) -> Result<Task, TaskError> {
        let mut task = self.get(id).await?;
        let before = task.state;
        task.transition(next, detail).map_err(TaskError::Lifecycle)?;
        if next == TaskState::Dispatched {
            task.deliveries += 1;
        }
        self.write(state, task.clone()).await?;
        if let Some(n) = state.summary.by_state.get_mut(before.as_str()) {
            *n = n.saturating_sub(1);
        }
        *state.summary.by_state.entry(next.as_str().into()).or_default() += 1;
        match next {
            TaskState::Running if before != TaskState::Running => self.affect.event(AffectEvent::TaskStarted),
            TaskState::Succeeded => self.affect.event(AffectEvent::TaskSucceeded),
            TaskState::Failed | TaskState::Rejected => self.affect.event(AffectEvent::TaskFailed),
            _ => {}
        }
        Ok(task)
    }
}

impl Actor for Tasks {
    type Msg = TasksMsg;
    type State = TasksState;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<TasksMsg>, _: ()) -> Result<TasksState, ActorProcessingErr> {
        let tasks = blocking(&self.store, |s| s.list()).await?;
        let mut summary = TaskSummary::default();
        for st in TaskState::ALL {
            summary.by_state.insert(st.as_str().into(), 0);
        }
        for task in &tasks {
            summary.total += 1;
            *summary.by_state.entry(task.state.as_str().into()).or_default() += 1;
        }
        summary.last_created = tasks.last().map(|t| t.id.clone());
        Ok(TasksState { summary, writes: 0, write_errors: 0 })
    }

    async fn handle(
        &self,
        _myself: ActorRef<TasksMsg>,
        msg: TasksMsg,
        state: &mut TasksState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TasksMsg::Create { args, source, plan, reply } => {
                let _ = reply.send(self.create(state, args, source, plan).await);
            }
            TasksMsg::Get { id, reply } => {
                let _ = reply.send(self.get(id).await);
            }
            TasksMsg::List { reply } => {
                let _ = reply.send(blocking(&self.store, |s| s.list()).await);
            }
            TasksMsg::Update { id, state: next, detail, reply } => {
                let _ = reply.send(self.update(state, id, next, detail).await);
            }
            TasksMsg::Summary(reply) => {
                let _ = reply.send(state.summary.clone());
            }
            TasksMsg::Snapshot(reply) => {
                let _ = reply.send(serde_json::json!({
                    "summary": state.summary,
                    "writes": state.writes,
                    "write_errors": state.write_errors,
                }));
            }
            #[cfg(feature = "fault-injection")]
            TasksMsg::Crash => panic!("injected fault in tasks"),
        }
        self.stats.mark_handled();
        Ok(())
    }
}
