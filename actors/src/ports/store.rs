//! The `TaskStore` port: the durable ledger of physical tasks.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::planner::PhysicalTask;

/// Milliseconds since the Unix epoch, the timestamp unit of every task record.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a task is in its life.
///
/// ```text
/// pending -> dispatched -> accepted -> running -> succeeded | failed
///    |            |           |          |
///    +------------+-----------+----------+-> cancelled;  dispatched -> rejected
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Durable, not yet handed to a body.
    Pending,
    /// Sent to the body, not yet acknowledged.
    Dispatched,
    /// The body took it on.
    Accepted,
    /// The body is doing it.
    Running,
    Succeeded,
    Failed,
    /// The body refused it.
    Rejected,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Pending,
        TaskState::Dispatched,
        TaskState::Accepted,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Dispatched => "dispatched",
            TaskState::Accepted => "accepted",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// A finished task never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Rejected | TaskState::Cancelled
        )
    }

    /// Whether the lifecycle allows going from `self` to `next`. A body may skip steps
    /// (report `running` without `accepted`), but nothing moves backwards; a redelivery
    /// leaves the state as it is.
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Pending, Dispatched | Cancelled)
                | (
                    Dispatched,
                    Accepted | Running | Succeeded | Failed | Rejected | Cancelled
                )
                | (Accepted, Running | Succeeded | Failed | Cancelled)
                | (Running, Succeeded | Failed | Cancelled)
        )
    }
}

/// Who asked for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskSource {
    /// The inner-monologue watcher spotted a commitment and the reasoner planned it.
    Monologue,
    /// A person asked through the API or CLI.
    Api,
}

/// Where a task sits in a multi-step plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    /// Shared by every task of one plan.
    pub plan: String,
    /// 1-based position in the plan.
    pub step: u32,
    pub of: u32,
}

/// One entry of a task's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub state: TaskState,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A `do_physical_task` call and everything that happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Stable id, also the idempotency key the body sees.
    pub id: String,
    pub state: TaskState,
    /// Always `do_physical_task` today; kept so the record is self-describing.
    pub tool: String,
    pub arguments: PhysicalTask,
    pub source: TaskSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanStep>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// How many times it was sent to a body.
    pub deliveries: u32,
    /// The body's latest progress report while it works on the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    pub history: Vec<TaskEvent>,
}

/// How far along the body says it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0..1, when the body can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at_ms: u64,
}

impl Task {
    pub const TOOL: &'static str = "do_physical_task";

    /// A new pending task.
    pub fn new(
        id: String,
        arguments: PhysicalTask,
        source: TaskSource,
        plan: Option<PlanStep>,
    ) -> Self {
        let at_ms = now_ms();
        Task {
            id,
            state: TaskState::Pending,
            tool: Self::TOOL.to_string(),
            arguments,
            source,
            plan,
            created_ms: at_ms,
            updated_ms: at_ms,
            deliveries: 0,
            progress: None,
            history: vec![TaskEvent {
                state: TaskState::Pending,
                at_ms,
                detail: None,
            }],
        }
    }

    /// Move to `next`, recording it in the history; refuses what the lifecycle forbids.
    pub fn transition(
        &mut self,
        next: TaskState,
        detail: Option<String>,
    ) -> Result<(), LifecycleError> {
        if !self.state.can_become(next) {
            return Err(LifecycleError {
                id: self.id.clone(),
                from: self.state,
                to: next,
            });
        }
        let at_ms = now_ms();
        self.state = next;
        self.updated_ms = at_ms;
        self.history.push(TaskEvent {
            state: next,
            at_ms,
            detail,
        });
        Ok(())
    }
}

/// A state change the lifecycle forbids ([`TaskState::can_become`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {id} cannot go from {} to {}", from.as_str(), to.as_str())]
pub struct LifecycleError {
    pub id: String,
    pub from: TaskState,
    pub to: TaskState,
}

/// Why the ledger could not read or write.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("task store I/O failed: {0}")]
    Io(String),
    #[error("task record {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
}

/// The number in a task id (`task-42` -> 42; the zero-padded `task-000042` of older ledgers
/// too): ids are numbered in creation order, so this is the order of the ledger.
pub fn id_number(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("task-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The id of the `n`th task.
pub fn task_id(n: u64) -> String {
    format!("task-{n}")
}

/// What a new task is made of; the ledger gives it its id.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub arguments: PhysicalTask,
    pub source: TaskSource,
    pub plan: Option<PlanStep>,
    /// When the intent it carries out was heard (tasks from the monologue), to time
    /// intent -> dispatch; never stored.
    pub intent_at: Option<std::time::Instant>,
}

/// Which way a page runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageOrder {
    /// Oldest first; tasks filed while paging show up at the end.
    Asc,
    /// Newest first (the default).
    #[default]
    Desc,
}

/// One page of the ledger: tasks after (asc) or before (desc) `after`, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct PageQuery {
    /// The id number of the last task of the previous page; `None`: from the start (asc)
    /// or from the newest (desc).
    pub after: Option<u64>,
    pub limit: usize,
    pub order: PageOrder,
    /// Only tasks in one of these states; empty: every state.
    pub states: Vec<TaskState>,
}

impl PageQuery {
    pub fn matches(&self, task: &Task) -> bool {
        self.states.is_empty() || self.states.contains(&task.state)
    }

    /// Whether an id number lies beyond the cursor in the page's direction.
    pub fn beyond_cursor(&self, n: u64) -> bool {
        match (self.after, self.order) {
            (None, _) => true,
            (Some(c), PageOrder::Asc) => n > c,
            (Some(c), PageOrder::Desc) => n < c,
        }
    }
}

/// A page of tasks, and whether more follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub tasks: Vec<Task>,
    pub more: bool,
}

/// The durable task ledger. Calls block on the disk; the tasks actor runs them off the
/// async workers.
///
/// Ids are dense and increase for ever: `task-1`, `task-2`, ..., from a counter the ledger
/// keeps and writes together with the tasks it numbers. Their numbers are the creation
/// order ([`id_number`]).
pub trait TaskStore: Send + Sync + 'static {
    /// File new tasks: number them with the next ids (above every id the ledger ever gave
    /// out) and write them and the counter at once, flushed. All or nothing.
    fn create(&self, new: Vec<NewTask>) -> Result<Vec<Task>, StoreError>;
    /// Write `task`; when this returns `Ok`, the record is on disk (flushed).
    fn put(&self, task: &Task) -> Result<(), StoreError>;
    /// Write several tasks at once, flushed; all or nothing where the store can (the
    /// default writes them one by one).
    fn put_all(&self, tasks: &[Task]) -> Result<(), StoreError> {
        tasks.iter().try_for_each(|t| self.put(t))
    }
    /// Write `task` without waiting for the disk: for changes that are recovered anyway if
    /// lost (a delivery, a body's interim report, which the body repeats on redelivery).
    fn put_lazy(&self, task: &Task) -> Result<(), StoreError> {
        self.put(task)
    }
    fn get(&self, id: &str) -> Result<Option<Task>, StoreError>;
    /// Every task, oldest first.
    fn list(&self) -> Result<Vec<Task>, StoreError>;
    /// A page of tasks, in id order.
    fn page(&self, query: &PageQuery) -> Result<Page, StoreError> {
        let mut all = self.list()?;
        if query.order == PageOrder::Desc {
            all.reverse();
        }
        let mut tasks = Vec::new();
        let mut more = false;
        for task in all {
            let n = id_number(&task.id).unwrap_or(0);
            if !query.beyond_cursor(n) || !query.matches(&task) {
                continue;
            }
            if tasks.len() == query.limit {
                more = true;
                break;
            }
            tasks.push(task);
        }
        Ok(Page { tasks, more })
    }
    /// The tasks of one plan ([`PlanStep::plan`]), in step order; empty if none was filed.
    fn plan(&self, plan: &str) -> Result<Vec<Task>, StoreError> {
        let mut steps: Vec<Task> = self
            .list()?
            .into_iter()
            .filter(|t| t.plan.as_ref().is_some_and(|p| p.plan == plan))
            .collect();
        steps.sort_by_key(|t| t.plan.as_ref().map_or(0, |p| p.step));
        Ok(steps)
    }
    /// Up to `count` of the oldest finished tasks: their ids and states.
    fn oldest_finished(&self, count: usize) -> Result<Vec<(String, TaskState)>, StoreError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|t| t.state.is_terminal())
            .take(count)
            .map(|t| (t.id, t.state))
            .collect())
    }
    /// Forget these tasks (retention of finished ones).
    fn delete(&self, ids: &[String]) -> Result<(), StoreError>;
}

/// A `TaskStore` in memory, for the actors' own tests.
#[derive(Default)]
pub struct MemoryTaskStore {
    inner: Mutex<MemoryLedger>,
}

/// The last id number handed out, and the tasks by (id number, id).
type MemoryLedger = (u64, BTreeMap<(u64, String), Task>);

impl MemoryTaskStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemoryLedger>, StoreError> {
        self.inner.lock().map_err(|e| StoreError::Io(e.to_string()))
    }
}

fn key(id: &str) -> (u64, String) {
    (id_number(id).unwrap_or(u64::MAX), id.to_string())
}

impl TaskStore for MemoryTaskStore {
    fn create(&self, new: Vec<NewTask>) -> Result<Vec<Task>, StoreError> {
        let mut guard = self.lock()?;
        let mut made = Vec::with_capacity(new.len());
        for n in new {
            guard.0 += 1;
            let task = Task::new(task_id(guard.0), n.arguments, n.source, n.plan);
            guard.1.insert(key(&task.id), task.clone());
            made.push(task);
        }
        Ok(made)
    }

    fn put(&self, task: &Task) -> Result<(), StoreError> {
        self.lock()?.1.insert(key(&task.id), task.clone());
        Ok(())
    }

    fn put_all(&self, tasks: &[Task]) -> Result<(), StoreError> {
        // Under one lock: nobody sees some of them written and not the rest.
        let mut guard = self.lock()?;
        for task in tasks {
            guard.1.insert(key(&task.id), task.clone());
        }
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        Ok(self.lock()?.1.get(&key(id)).cloned())
    }

    fn list(&self) -> Result<Vec<Task>, StoreError> {
        Ok(self.lock()?.1.values().cloned().collect())
    }

    fn delete(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut guard = self.lock()?;
        for id in ids {
            guard.1.remove(&key(id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Action;

    fn args() -> PhysicalTask {
        PhysicalTask {
            action: Action::Bring,
            object: "cup".into(),
            destination: None,
            utterance: "I'll bring you the cup".into(),
            confidence: 0.9,
        }
    }

    #[test]
    fn lifecycle_moves_forward_and_records_history() {
        let mut task = Task::new("t-1".into(), args(), TaskSource::Api, None);
        task.transition(TaskState::Dispatched, None).unwrap();
        task.transition(TaskState::Accepted, None).unwrap();
        task.transition(TaskState::Running, Some("on my way".into()))
            .unwrap();
        task.transition(TaskState::Succeeded, None).unwrap();
        let states: Vec<_> = task.history.iter().map(|e| e.state).collect();
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
        assert!(
            task.transition(TaskState::Running, None).is_err(),
            "terminal is final"
        );
    }

    #[test]
    fn lifecycle_refuses_backwards_and_skipping_dispatch() {
        let mut task = Task::new("t-2".into(), args(), TaskSource::Api, None);
        let err = task.transition(TaskState::Running, None).unwrap_err();
        assert_eq!((err.from, err.to), (TaskState::Pending, TaskState::Running));
        assert!(err.to_string().contains("pending to running"), "{err}");
        task.transition(TaskState::Dispatched, None).unwrap();
        task.transition(TaskState::Running, None).unwrap();
        assert!(task.transition(TaskState::Accepted, None).is_err());
        assert_eq!(task.history.len(), 3);
    }

    #[test]
    fn id_numbers_order_numerically_not_as_strings() {
        assert_eq!(id_number("task-9"), Some(9));
        assert_eq!(id_number("task-10"), Some(10));
        assert_eq!(id_number("task-000042"), Some(42));
        assert_eq!(id_number("task-12000001"), Some(12_000_001));
        assert!("task-10" < "task-9", "strings sort the other way");
        for bad in ["task-", "task-x", "task--1", "job-1", "task-1a", "task-+1"] {
            assert_eq!(id_number(bad), None, "{bad}");
        }
        assert_eq!(task_id(7), "task-7");
    }

    #[test]
    fn the_memory_store_numbers_densely_and_pages_both_ways() {
        let store = MemoryTaskStore::default();
        let new = |o: &str| NewTask {
            intent_at: None,
            arguments: PhysicalTask {
                object: o.into(),
                ..args()
            },
            source: TaskSource::Api,
            plan: None,
        };
        let made = store
            .create((0..12).map(|i| new(&format!("thing {i}"))).collect())
            .unwrap();
        let ids: Vec<_> = made.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids[0], "task-1");
        assert_eq!(ids[11], "task-12");
        let page = store
            .page(&PageQuery {
                after: Some(10),
                limit: 5,
                order: PageOrder::Desc,
                states: vec![],
            })
            .unwrap();
        let ids: Vec<_> = page.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["task-9", "task-8", "task-7", "task-6", "task-5"]);
        assert!(page.more);
        let page = store
            .page(&PageQuery {
                after: Some(9),
                limit: 5,
                order: PageOrder::Asc,
                states: vec![],
            })
            .unwrap();
        let ids: Vec<_> = page.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["task-10", "task-11", "task-12"]);
        assert!(!page.more);
    }

    #[test]
    fn validation_follows_the_schema_limits() {
        assert!(args().validate().is_ok());
        let mut bad = args();
        bad.object = "  ".into();
        assert_eq!(
            bad.validate(),
            Err(crate::ports::InvalidTask::Empty("object"))
        );
        let mut bad = args();
        bad.confidence = 1.5;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("confidence")
        );
        let mut bad = args();
        bad.destination = Some(String::new());
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("destination")
        );
    }
}
