//! `tasks`: the task ledger and delivery to the body. Every `do_physical_task` call becomes
//! a [`Task`] that is written to the [`TaskStore`] and flushed before anyone is told it
//! exists; every state change follows the lifecycle in [`TaskState::can_become`] and lands
//! in the task's history.
//!
//! Delivery is at least once, with the task id as the idempotency key: a task is sent to
//! the body when it is filed (if a body is attached), every unfinished task is sent again
//! when a body attaches (after a reconnect or a brain restart), and a task the body has not
//! acknowledged within `redeliver_after` is sent again. One body at a time: a body that
//! attaches replaces the attached one (a robot reconnecting after its Wi-Fi dropped) and
//! gets every unfinished task again. Task outcomes are passed on to `affect`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::CALL_TIMEOUT;
use crate::affect::AffectHandle;
use crate::handle::{ActorHandle, SnapshotRequest, Spawn, SpawnError, deref_to_actor_handle};
use crate::histogram::LatencyHistogram;
use crate::ports::{
    BodyCommand, BodyReport, BodyState, NewTask, PageOrder, PageQuery, PhysicalTask, PlanStep,
    Progress, StoreError, Task, TaskSource, TaskState, TaskStore, id_number, now_ms,
};
use crate::signals::AffectEvent;
use crate::slot::{CallError, Slot};
use crate::text::printable;

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
    #[error("this body session is no longer attached")]
    Detached,
    /// Filing would take the unfinished tasks past `[tasks] max_unfinished`; nothing was filed.
    #[error(
        "{unfinished} tasks are unfinished, the most allowed is {max}, so {wanted} more cannot be \
         filed; wait for the body to finish some, or cancel them (`creature cancel --all`, \
         POST /api/tasks/cancel)"
    )]
    TooManyUnfinished {
        unfinished: usize,
        max: usize,
        wanted: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Ledger settings: `[tasks]` in the config file, but for `redeliver_after`, which the
/// file keeps with the body's link (`[body] redeliver_after_secs`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// A task sent to the body and not acknowledged within this is sent again.
    #[serde(skip)]
    pub redeliver_after: Duration,
    /// At most this many unfinished tasks; filing more is refused.
    pub max_unfinished: usize,
    /// Keep this many finished tasks (the newest); older finished ones leave the ledger.
    pub retain_finished: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            redeliver_after: Duration::from_secs(5),
            max_unfinished: 100,
            retain_finished: 10_000,
        }
    }
}

/// Which unfinished tasks to cancel at once; an empty filter cancels every one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CancelFilter {
    /// Only tasks in one of these (unfinished) states; empty: any.
    pub states: Vec<TaskState>,
    pub source: Option<TaskSource>,
}

impl CancelFilter {
    fn matches(&self, task: &Task) -> bool {
        (self.states.is_empty() || self.states.contains(&task.state))
            && self.source.is_none_or(|s| s == task.source)
    }
}

/// One page of the ledger (`GET /api/tasks`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// The id to pass as the cursor for the next page; `None`: this was the last one.
    pub next_cursor: Option<String>,
    /// How many tasks in the ledger match the filter.
    pub total: u64,
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
    Get {
        id: String,
        reply: RpcReplyPort<Result<Task, TaskError>>,
    },
    /// File several tasks (a plan) at once: all of them, or none.
    CreateMany {
        new: Vec<NewTask>,
        reply: RpcReplyPort<Result<Vec<Task>, TaskError>>,
    },
    /// The tasks of plan `plan`, in step order (none: it was never filed). Answered after
    /// every message sent before it, so after a `CreateMany` whose answer was not awaited.
    Plan {
        plan: String,
        reply: RpcReplyPort<Result<Vec<Task>, TaskError>>,
    },
    List {
        reply: RpcReplyPort<Result<Vec<Task>, TaskError>>,
    },
    Page {
        query: PageQuery,
        reply: RpcReplyPort<Result<TaskPage, TaskError>>,
    },
    /// Cancel every unfinished task the filter matches; replies with their ids.
    CancelAll {
        filter: CancelFilter,
        reply: RpcReplyPort<Result<Vec<String>, TaskError>>,
    },
    /// Cancel a task that has not finished (and tell the body, if it has it).
    Cancel {
        id: String,
        reply: RpcReplyPort<Result<Task, TaskError>>,
    },
    /// A body connected; tool calls go to `outbox`. Replies with the session number.
    AttachBody {
        outbox: mpsc::Sender<BodyCommand>,
        reply: RpcReplyPort<Result<u64, TaskError>>,
    },
    /// The body of `session` went away.
    DetachBody {
        session: u64,
    },
    /// The body of `session` reports on a task.
    BodyReport {
        session: u64,
        report: BodyReport,
        reply: RpcReplyPort<Result<Task, TaskError>>,
    },
    /// Send again what the body has not acknowledged (from the actor's own timer).
    Redeliver,
    /// Counts by state, kept in memory.
    Summary(RpcReplyPort<TaskSummary>),
    Snapshot(RpcReplyPort<serde_json::Value>),
    #[cfg(feature = "fault-injection")]
    Crash,
}

/// Counts of tasks by state, for `/api/state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskSummary {
    pub total: u64,
    pub by_state: BTreeMap<String, u64>,
    pub last_created: Option<String>,
    /// Whether a body is attached right now.
    #[serde(default)]
    pub body_attached: bool,
}

impl SnapshotRequest for TasksMsg {
    fn snapshot(reply: RpcReplyPort<serde_json::Value>) -> Self {
        TasksMsg::Snapshot(reply)
    }
}

#[cfg(feature = "fault-injection")]
impl crate::handle::FaultInjection for TasksMsg {
    fn crash() -> Self {
        TasksMsg::Crash
    }
}

/// The ledger's handle; `stats`, `snapshot` and `crash` come from [`ActorHandle`].
#[derive(Clone, Debug)]
pub struct TasksHandle {
    actor: ActorHandle<TasksMsg>,
    intent_to_dispatch: Arc<LatencyHistogram>,
}

deref_to_actor_handle!(TasksHandle, TasksMsg);

impl TasksHandle {
    /// Intent heard -> its task's tool call handed to the body (tasks from the monologue;
    /// a task waiting for a body counts the wait).
    pub fn intent_to_dispatch(&self) -> &LatencyHistogram {
        &self.intent_to_dispatch
    }

    pub async fn create(
        &self,
        args: PhysicalTask,
        source: TaskSource,
        plan: Option<PlanStep>,
    ) -> Result<Task, TaskError> {
        self.actor
            .call(
                |reply| TasksMsg::Create {
                    args,
                    source,
                    plan,
                    reply,
                },
                WRITE_TIMEOUT,
            )
            .await?
    }

    pub async fn get(&self, id: &str) -> Result<Task, TaskError> {
        let id = id.to_string();
        self.actor
            .call(|reply| TasksMsg::Get { id, reply }, CALL_TIMEOUT)
            .await?
    }

    /// File the steps of a plan in one go: every one, or (refused, invalid, or past the
    /// bound on unfinished tasks) none.
    pub async fn create_many(&self, new: Vec<NewTask>) -> Result<Vec<Task>, TaskError> {
        self.actor
            .call(|reply| TasksMsg::CreateMany { new, reply }, WRITE_TIMEOUT)
            .await?
    }

    /// The tasks the ledger holds for plan `plan` (its [`PlanStep::plan`]), in step order;
    /// empty if it was never filed. The actor answers messages in order, so this answer
    /// comes after that of any `create_many` sent before it, even one whose caller stopped
    /// waiting: it says for sure whether that plan was filed.
    pub async fn plan(&self, plan: &str) -> Result<Vec<Task>, TaskError> {
        let plan = plan.to_string();
        self.actor
            .call(|reply| TasksMsg::Plan { plan, reply }, WRITE_TIMEOUT)
            .await?
    }

    /// Every task, oldest first (tests and small ledgers; the API pages).
    pub async fn list(&self) -> Result<Vec<Task>, TaskError> {
        self.actor
            .call(|reply| TasksMsg::List { reply }, WRITE_TIMEOUT)
            .await?
    }

    pub async fn page(&self, query: PageQuery) -> Result<TaskPage, TaskError> {
        self.actor
            .call(|reply| TasksMsg::Page { query, reply }, WRITE_TIMEOUT)
            .await?
    }

    pub async fn cancel_all(&self, filter: CancelFilter) -> Result<Vec<String>, TaskError> {
        self.actor
            .call(|reply| TasksMsg::CancelAll { filter, reply }, WRITE_TIMEOUT)
            .await?
    }

    pub async fn cancel(&self, id: &str) -> Result<Task, TaskError> {
        let id = id.to_string();
        self.actor
            .call(|reply| TasksMsg::Cancel { id, reply }, WRITE_TIMEOUT)
            .await?
    }

    /// Attach a body; every unfinished task is sent to `outbox` right away.
    pub async fn attach_body(&self, outbox: mpsc::Sender<BodyCommand>) -> Result<u64, TaskError> {
        self.actor
            .call(
                |reply| TasksMsg::AttachBody { outbox, reply },
                WRITE_TIMEOUT,
            )
            .await?
    }

    pub fn detach_body(&self, session: u64) {
        self.actor.cast(TasksMsg::DetachBody { session });
    }

    pub async fn body_report(&self, session: u64, report: BodyReport) -> Result<Task, TaskError> {
        self.actor
            .call(
                |reply| TasksMsg::BodyReport {
                    session,
                    report,
                    reply,
                },
                WRITE_TIMEOUT,
            )
            .await?
    }

    pub async fn summary(&self) -> Result<TaskSummary, CallError> {
        self.actor.call(TasksMsg::Summary, CALL_TIMEOUT).await
    }
}

/// The ledger actor: read-only wiring; all mutable state is in [`TasksState`].
#[derive(Clone)]
pub struct Tasks {
    config: TasksConfig,
    store: Arc<dyn TaskStore>,
    /// Told about task outcomes.
    affect: AffectHandle,
    /// Where this actor registers each incarnation (and counts its messages).
    slot: Slot<TasksMsg>,
    /// Intent -> dispatch times (outlive incarnations).
    intent_to_dispatch: Arc<LatencyHistogram>,
}

impl Tasks {
    /// A ledger kept in `store` that tells `affect` about task outcomes.
    pub fn new(config: TasksConfig, store: Arc<dyn TaskStore>, affect: AffectHandle) -> Self {
        Tasks {
            config,
            store,
            affect,
            slot: Slot::new("tasks"),
            intent_to_dispatch: Arc::new(LatencyHistogram::new()),
        }
    }

    /// The handle that reaches every incarnation of this actor.
    pub fn handle(&self) -> TasksHandle {
        TasksHandle {
            actor: ActorHandle::new(self.slot.clone()),
            intent_to_dispatch: Arc::clone(&self.intent_to_dispatch),
        }
    }

    /// Build the ledger and start it (under `supervisor`, if given). It reads the store
    /// before it returns.
    pub async fn spawn(
        config: TasksConfig,
        store: Arc<dyn TaskStore>,
        affect: AffectHandle,
        supervisor: Option<ActorCell>,
    ) -> Result<TasksHandle, SpawnError> {
        let tasks = Tasks::new(config, store, affect);
        tasks.start(supervisor).await?;
        Ok(tasks.handle())
    }
}

impl Spawn for Tasks {
    fn slot(&self) -> &Slot<TasksMsg> {
        &self.slot
    }
}

struct Body {
    session: u64,
    outbox: mpsc::Sender<BodyCommand>,
    since_ms: u64,
}

/// Aborts a timer task when the state that owns it is dropped.
struct TimerGuard(tokio::task::JoinHandle<()>);

impl Drop for TimerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct TasksState {
    summary: TaskSummary,
    /// Every unfinished task, by id number then id: creation order.
    open: BTreeMap<(u64, String), Task>,
    body: Option<Body>,
    next_session: u64,
    writes: u64,
    write_errors: u64,
    deliveries: u64,
    redeliveries: u64,
    /// Tool calls that found the body's outbox full (they are retried).
    outbox_full: u64,
    reports: u64,
    rejected_reports: u64,
    /// When the intent behind each undispatched monologue task was heard.
    intent_at: HashMap<String, std::time::Instant>,
    _redeliver_timer: TimerGuard,
}

/// The key of a task in `TasksState::open`: numeric, so `task-10` comes after `task-9`.
fn open_key(id: &str) -> (u64, String) {
    (id_number(id).unwrap_or(u64::MAX), id.to_string())
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
        let new = vec![NewTask {
            intent_at: None,
            arguments: args,
            source,
            plan,
        }];
        let mut made = self.create_many(state, new).await?;
        made.pop()
            .ok_or_else(|| TaskError::Store(StoreError::Io("the ledger filed nothing".into())))
    }

    async fn create_many(
        &self,
        state: &mut TasksState,
        new: Vec<NewTask>,
    ) -> Result<Vec<Task>, TaskError> {
        for (i, n) in new.iter().enumerate() {
            n.arguments.validate().map_err(|e| {
                TaskError::Invalid(if new.len() > 1 {
                    format!("step {}: {e}", i + 1)
                } else {
                    e.to_string()
                })
            })?;
        }
        let unfinished = state.open.len();
        if unfinished + new.len() > self.config.max_unfinished {
            tracing::warn!(
                unfinished,
                wanted = new.len(),
                max = self.config.max_unfinished,
                "refused to file tasks: too many unfinished"
            );
            return Err(TaskError::TooManyUnfinished {
                unfinished,
                max: self.config.max_unfinished,
                wanted: new.len(),
            });
        }
        state.writes += 1;
        let heard: Vec<Option<std::time::Instant>> = new.iter().map(|n| n.intent_at).collect();
        let made = match blocking(&self.store, move |s| s.create(new)).await {
            Ok(made) => made,
            Err(e) => {
                state.write_errors += 1;
                return Err(e);
            }
        };
        for task in &made {
            self.track(state, task, None);
            state.summary.total += 1;
            state.summary.last_created = Some(task.id.clone());
            tracing::info!(
                id = %task.id,
                action = task.arguments.action.as_str(),
                object = %printable(&task.arguments.object),
                "task filed"
            );
        }
        for (task, heard) in made.iter().zip(heard) {
            if let Some(at) = heard {
                state.intent_at.insert(task.id.clone(), at);
            }
        }
        for task in &made {
            self.deliver(state, task.clone()).await;
        }
        Ok(made)
    }

    /// Keep the in-memory views in step with a task just written (`before`: its previous
    /// state, `None` for a new task).
    fn track(&self, state: &mut TasksState, task: &Task, before: Option<TaskState>) {
        if before != Some(task.state) {
            self.slot
                .publish_with(|| crate::events::Event::task(task, before));
            if let Some(b) = before {
                if let Some(n) = state.summary.by_state.get_mut(b.as_str()) {
                    *n = n.saturating_sub(1);
                }
            }
            *state
                .summary
                .by_state
                .entry(task.state.as_str().into())
                .or_default() += 1;
        }
        if task.state.is_terminal() {
            state.intent_at.remove(&task.id);
            state.open.remove(&open_key(&task.id));
        } else {
            state.open.insert(open_key(&task.id), task.clone());
        }
    }

    fn finished(state: &TasksState) -> u64 {
        TaskState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| state.summary.by_state.get(s.as_str()).copied().unwrap_or(0))
            .sum()
    }

    /// Drop the oldest finished tasks beyond `retain_finished` from the ledger.
    async fn retain(&self, state: &mut TasksState) {
        let keep = self.config.retain_finished as u64;
        let excess = Self::finished(state).saturating_sub(keep) as usize;
        if excess == 0 {
            return;
        }
        let dropped = blocking(&self.store, move |s| {
            let old = s.oldest_finished(excess)?;
            let ids: Vec<String> = old.iter().map(|(id, _)| id.clone()).collect();
            s.delete(&ids)?;
            Ok(old)
        })
        .await;
        match dropped {
            Ok(old) => {
                for (_, st) in &old {
                    if let Some(n) = state.summary.by_state.get_mut(st.as_str()) {
                        *n = n.saturating_sub(1);
                    }
                }
                state.summary.total = state.summary.total.saturating_sub(old.len() as u64);
                tracing::debug!(
                    dropped = old.len(),
                    keep,
                    "finished tasks past retention dropped"
                );
            }
            Err(e) => tracing::error!(cause = %e, "could not drop old finished tasks"),
        }
    }

    /// A page of the ledger. Unfinished tasks come from memory; the rest from the store.
    async fn page(&self, state: &TasksState, query: PageQuery) -> Result<TaskPage, TaskError> {
        let total = if query.states.is_empty() {
            state.summary.total
        } else {
            query
                .states
                .iter()
                .map(|s| state.summary.by_state.get(s.as_str()).copied().unwrap_or(0))
                .sum()
        };
        let from_memory = !query.states.is_empty() && query.states.iter().all(|s| !s.is_terminal());
        let (tasks, more) = if from_memory {
            let matching = state
                .open
                .iter()
                .filter(|((n, _), t)| query.beyond_cursor(*n) && query.matches(t));
            let mut tasks: Vec<Task> = match query.order {
                PageOrder::Asc => matching
                    .take(query.limit + 1)
                    .map(|(_, t)| t.clone())
                    .collect(),
                PageOrder::Desc => matching
                    .rev()
                    .take(query.limit + 1)
                    .map(|(_, t)| t.clone())
                    .collect(),
            };
            let more = tasks.len() > query.limit;
            tasks.truncate(query.limit);
            (tasks, more)
        } else {
            let page = blocking(&self.store, move |s| s.page(&query)).await?;
            (page.tasks, page.more)
        };
        let next_cursor = if more {
            tasks.last().map(|t| t.id.clone())
        } else {
            None
        };
        Ok(TaskPage {
            tasks,
            next_cursor,
            total,
        })
    }

    /// Cancel every unfinished task `filter` matches, in one flushed write.
    async fn cancel_all(
        &self,
        state: &mut TasksState,
        filter: CancelFilter,
    ) -> Result<Vec<String>, TaskError> {
        let mut changed = Vec::new();
        for task in state.open.values().filter(|t| filter.matches(t)) {
            let mut task = task.clone();
            let before = task.state;
            task.transition(
                TaskState::Cancelled,
                Some("cancelled on request (cancel all)".into()),
            )
            .map_err(|e| TaskError::Lifecycle(e.to_string()))?;
            changed.push((before, task));
        }
        if changed.is_empty() {
            return Ok(vec![]);
        }
        state.writes += 1;
        let records: Vec<Task> = changed.iter().map(|(_, t)| t.clone()).collect();
        if let Err(e) = blocking(&self.store, move |s| s.put_all(&records)).await {
            state.write_errors += 1;
            return Err(e);
        }
        let mut ids = Vec::with_capacity(changed.len());
        for (before, task) in &changed {
            self.track(state, task, Some(*before));
            if *before != TaskState::Pending {
                if let Some(body) = &state.body {
                    if body
                        .outbox
                        .try_send(BodyCommand::Cancel {
                            id: task.id.clone(),
                        })
                        .is_err()
                    {
                        tracing::warn!(id = %task.id, "could not tell the body to cancel; it will be refused on its next report");
                    }
                }
            }
            ids.push(task.id.clone());
        }
        tracing::info!(cancelled = ids.len(), "unfinished tasks cancelled");
        self.retain(state).await;
        Ok(ids)
    }

    /// Write `task`, flushed to disk before this returns, and keep the in-memory views in
    /// step (`before`: its previous state).
    async fn write(
        &self,
        state: &mut TasksState,
        task: &Task,
        before: Option<TaskState>,
    ) -> Result<(), TaskError> {
        self.store_task(state, task, before, true).await
    }

    /// Like [`Tasks::write`]; with `durable` false it does not wait for the disk. Only the
    /// delivery bookkeeping is written that way: if a crash loses it, the task is still
    /// unfinished on disk and is simply delivered again.
    async fn store_task(
        &self,
        state: &mut TasksState,
        task: &Task,
        before: Option<TaskState>,
        durable: bool,
    ) -> Result<(), TaskError> {
        state.writes += 1;
        let record = task.clone();
        let written = blocking(&self.store, move |s| {
            if durable {
                s.put(&record)
            } else {
                s.put_lazy(&record)
            }
        })
        .await;
        if let Err(e) = written {
            state.write_errors += 1;
            return Err(e);
        }
        self.track(state, task, before);
        if task.state.is_terminal() && before.is_some_and(|b| !b.is_terminal()) {
            self.retain(state).await;
        }
        Ok(())
    }

    /// Send `task` to the attached body, if any; a pending task becomes dispatched.
    async fn deliver(&self, state: &mut TasksState, mut task: Task) {
        let Some(body) = &state.body else { return };
        let cmd = BodyCommand::ToolCall {
            id: task.id.clone(),
            name: task.tool.clone(),
            arguments: task.arguments.clone(),
        };
        match body.outbox.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                state.outbox_full += 1;
                return; // still unacknowledged: the redelivery timer tries again
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                state.body = None;
                return;
            }
        }
        state.deliveries += 1;
        if task.deliveries > 0 {
            state.redeliveries += 1;
        }
        task.deliveries += 1;
        let before = task.state;
        if before == TaskState::Pending {
            // Cannot fail: pending may always become dispatched.
            let _ = task.transition(TaskState::Dispatched, None);
            if let Some(heard) = state.intent_at.remove(&task.id) {
                self.intent_to_dispatch.record(heard.elapsed());
            }
        } else {
            task.updated_ms = now_ms();
        }
        if let Err(e) = self.store_task(state, &task, Some(before), false).await {
            tracing::error!(id = %task.id, cause = %e, "could not record a delivery");
        }
    }

    async fn find(&self, state: &TasksState, id: &str) -> Result<Task, TaskError> {
        if let Some(task) = state.open.get(&open_key(id)) {
            return Ok(task.clone());
        }
        let wanted = id.to_string();
        blocking(&self.store, move |s| s.get(&wanted))
            .await?
            .ok_or_else(|| TaskError::NotFound(id.to_string()))
    }

    async fn transition(
        &self,
        state: &mut TasksState,
        mut task: Task,
        next: TaskState,
        detail: Option<String>,
    ) -> Result<Task, TaskError> {
        let before = task.state;
        task.transition(next, detail)
            .map_err(|e| TaskError::Lifecycle(e.to_string()))?;
        self.write(state, &task, Some(before)).await?;
        match next {
            TaskState::Running => self.affect.event(AffectEvent::TaskStarted),
            TaskState::Succeeded => self.affect.event(AffectEvent::TaskSucceeded),
            TaskState::Failed | TaskState::Rejected => self.affect.event(AffectEvent::TaskFailed),
            _ => {}
        }
        Ok(task)
    }

    async fn cancel(&self, state: &mut TasksState, id: String) -> Result<Task, TaskError> {
        let task = self.find(state, &id).await?;
        let was = task.state;
        if was.is_terminal() {
            return Err(TaskError::Lifecycle(format!(
                "task {id} already {}; nothing to cancel",
                was.as_str()
            )));
        }
        let task = self
            .transition(
                state,
                task,
                TaskState::Cancelled,
                Some("cancelled on request".into()),
            )
            .await?;
        if was != TaskState::Pending {
            if let Some(body) = &state.body {
                if body
                    .outbox
                    .try_send(BodyCommand::Cancel { id: id.clone() })
                    .is_err()
                {
                    tracing::warn!(%id, "could not tell the body to cancel; it will be refused on its next report");
                }
            }
        }
        Ok(task)
    }

    async fn attach(
        &self,
        state: &mut TasksState,
        outbox: mpsc::Sender<BodyCommand>,
    ) -> Result<u64, TaskError> {
        // The newest body wins. Dropping the old session's outbox closes its socket (4001),
        // and its reports are refused from now on (`Detached`).
        if let Some(old) = state.body.take() {
            tracing::info!(old = old.session, "a new body replaces the attached one");
        }
        state.next_session += 1;
        let session = state.next_session;
        state.body = Some(Body {
            session,
            outbox,
            since_ms: now_ms(),
        });
        state.summary.body_attached = true;
        let unfinished: Vec<Task> = state.open.values().cloned().collect();
        tracing::info!(
            session,
            unfinished = unfinished.len(),
            "body attached; sending unfinished tasks"
        );
        for task in unfinished {
            self.deliver(state, task).await;
        }
        Ok(session)
    }

    async fn report(
        &self,
        state: &mut TasksState,
        session: u64,
        report: BodyReport,
    ) -> Result<Task, TaskError> {
        state.reports += 1;
        if state.body.as_ref().map(|b| b.session) != Some(session) {
            return Err(TaskError::Detached);
        }
        let mut task = self.find(state, &report.id).await?;
        let next = match report.state {
            BodyState::Accepted => TaskState::Accepted,
            BodyState::Running | BodyState::Progress => TaskState::Running,
            BodyState::Succeeded => TaskState::Succeeded,
            BodyState::Failed => TaskState::Failed,
            BodyState::Rejected => TaskState::Rejected,
        };
        if let Some(p) = report.progress {
            if !(0.0..=1.0).contains(&p) {
                return Err(TaskError::Invalid(format!("progress {p} is outside 0..1")));
            }
        }
        if task.state == TaskState::Cancelled {
            return Err(TaskError::Lifecycle(format!(
                "task {} was cancelled; stop working on it",
                task.id
            )));
        }
        // The body has it, whatever the ledger last recorded (say, before a restart).
        if task.state == TaskState::Pending {
            task = self
                .transition(
                    state,
                    task,
                    TaskState::Dispatched,
                    Some("reported by the body".into()),
                )
                .await?;
        }
        let news = report.detail.is_some() || report.progress.is_some();
        if task.state == next {
            // A repeat (redelivery makes these normal) or progress news: no state change.
            if next == TaskState::Running && news {
                task.progress = Some(Progress {
                    fraction: report.progress,
                    detail: report.detail,
                    at_ms: now_ms(),
                });
                task.updated_ms = now_ms();
                self.write(state, &task, Some(next)).await?;
            }
            return Ok(task);
        }
        if task.state.is_terminal() {
            return Err(TaskError::Lifecycle(format!(
                "task {} already {}; a report of {} comes too late",
                task.id,
                task.state.as_str(),
                next.as_str()
            )));
        }
        if next == TaskState::Running && news {
            task.progress = Some(Progress {
                fraction: report.progress,
                detail: report.detail.clone(),
                at_ms: now_ms(),
            });
        }
        self.transition(state, task, next, report.detail).await
    }

    async fn redeliver(&self, state: &mut TasksState) {
        if state.body.is_none() {
            return;
        }
        let cutoff = now_ms().saturating_sub(self.config.redeliver_after.as_millis() as u64);
        let due: Vec<Task> = state
            .open
            .values()
            .filter(|t| {
                matches!(t.state, TaskState::Pending | TaskState::Dispatched)
                    && t.updated_ms <= cutoff
            })
            .cloned()
            .collect();
        for task in due {
            tracing::info!(id = %task.id, deliveries = task.deliveries, "no answer from the body; sending again");
            self.deliver(state, task).await;
        }
    }

    fn snapshot(&self, state: &TasksState) -> serde_json::Value {
        serde_json::json!({
            "summary": state.summary,
            "open": state.open.values().map(|t| &t.id).collect::<Vec<_>>(),
            "body": state.body.as_ref().map(|b| serde_json::json!({"session": b.session, "since_ms": b.since_ms})),
            "deliveries": state.deliveries,
            "redeliveries": state.redeliveries,
            "outbox_full": state.outbox_full,
            "reports": state.reports,
            "rejected_reports": state.rejected_reports,
            "writes": state.writes,
            "write_errors": state.write_errors,
            "redeliver_after_ms": self.config.redeliver_after.as_millis() as u64,
            "max_unfinished": self.config.max_unfinished,
            "retain_finished": self.config.retain_finished,
        })
    }
}

impl Actor for Tasks {
    type Msg = TasksMsg;
    type State = TasksState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<TasksMsg>,
        _: (),
    ) -> Result<TasksState, ActorProcessingErr> {
        // Registered before the first message is handled, so no reply can miss it.
        self.slot.set(myself.clone());
        let tasks = blocking(&self.store, |s| s.list()).await?;
        let mut summary = TaskSummary::default();
        for st in TaskState::ALL {
            summary.by_state.insert(st.as_str().into(), 0);
        }
        let mut open = BTreeMap::new();
        for task in &tasks {
            summary.total += 1;
            *summary
                .by_state
                .entry(task.state.as_str().into())
                .or_default() += 1;
            if !task.state.is_terminal() {
                open.insert(open_key(&task.id), task.clone());
            }
        }
        summary.last_created = tasks.last().map(|t| t.id.clone());
        let period = (self.config.redeliver_after / 2).max(Duration::from_millis(50));
        let timer = myself.send_interval(period, || TasksMsg::Redeliver);
        let mut state = TasksState {
            summary,
            open,
            body: None,
            next_session: 0,
            writes: 0,
            write_errors: 0,
            deliveries: 0,
            redeliveries: 0,
            outbox_full: 0,
            reports: 0,
            rejected_reports: 0,
            intent_at: HashMap::new(),
            _redeliver_timer: TimerGuard(timer),
        };
        self.retain(&mut state).await;
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<TasksMsg>,
        msg: TasksMsg,
        state: &mut TasksState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TasksMsg::Create {
                args,
                source,
                plan,
                reply,
            } => {
                let _ = reply.send(self.create(state, args, source, plan).await);
            }
            TasksMsg::Get { id, reply } => {
                let _ = reply.send(self.find(state, &id).await);
            }
            TasksMsg::CreateMany { new, reply } => {
                let _ = reply.send(self.create_many(state, new).await);
            }
            TasksMsg::Plan { plan, reply } => {
                let _ = reply.send(blocking(&self.store, move |s| s.plan(&plan)).await);
            }
            TasksMsg::List { reply } => {
                let _ = reply.send(blocking(&self.store, |s| s.list()).await);
            }
            TasksMsg::Page { query, reply } => {
                let _ = reply.send(self.page(state, query).await);
            }
            TasksMsg::CancelAll { filter, reply } => {
                let _ = reply.send(self.cancel_all(state, filter).await);
            }
            TasksMsg::Cancel { id, reply } => {
                let _ = reply.send(self.cancel(state, id).await);
            }
            TasksMsg::AttachBody { outbox, reply } => {
                let _ = reply.send(self.attach(state, outbox).await);
            }
            TasksMsg::DetachBody { session } => {
                if state.body.as_ref().map(|b| b.session) == Some(session) {
                    tracing::info!(session, "body detached");
                    state.body = None;
                    state.summary.body_attached = false;
                }
            }
            TasksMsg::BodyReport {
                session,
                report,
                reply,
            } => {
                let result = self.report(state, session, report).await;
                if result.is_err() {
                    state.rejected_reports += 1;
                }
                let _ = reply.send(result);
            }
            TasksMsg::Redeliver => self.redeliver(state).await,
            TasksMsg::Summary(reply) => {
                let _ = reply.send(state.summary.clone());
            }
            TasksMsg::Snapshot(reply) => {
                let _ = reply.send(self.snapshot(state));
            }
            #[cfg(feature = "fault-injection")]
            TasksMsg::Crash => panic!("injected fault in tasks"),
        }
        self.slot.stats().mark_handled();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
