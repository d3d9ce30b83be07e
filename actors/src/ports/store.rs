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
    pub fn transition(&mut self, next: TaskState, detail: Option<String>) -> Result<(), String> {
        if !self.state.can_become(next) {
            return Err(format!(
                "task {} cannot go from {} to {}",
                self.id,
                self.state.as_str(),
                next.as_str()
            ));
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

/// Why the ledger could not read or write.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("task store I/O failed: {0}")]
    Io(String),
    #[error("task record {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
}

/// The durable task ledger. Calls block on the disk; the tasks actor runs them off the
/// async workers.
pub trait TaskStore: Send + Sync + 'static {
    /// A fresh number for a task id, never handed out before (also across restarts).
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Write `task`; when this returns `Ok`, the record is on disk (flushed).
    fn put(&self, task: &Task) -> Result<(), StoreError>;
    /// Write `task` without waiting for the disk: for changes that are recovered anyway if
    /// lost (a delivery, a body's interim report, which the body repeats on redelivery).
    fn put_lazy(&self, task: &Task) -> Result<(), StoreError> {
        self.put(task)
    }
    fn get(&self, id: &str) -> Result<Option<Task>, StoreError>;
    /// Every task, oldest first.
    fn list(&self) -> Result<Vec<Task>, StoreError>;
}

/// A `TaskStore` in memory, for the actors' own tests.
#[derive(Default)]
pub struct MemoryTaskStore {
    inner: Mutex<(u64, BTreeMap<String, Task>)>,
}

impl TaskStore for MemoryTaskStore {
    fn next_id(&self) -> Result<u64, StoreError> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        guard.0 += 1;
        Ok(guard.0)
    }

    fn put(&self, task: &Task) -> Result<(), StoreError> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        guard.1.insert(task.id.clone(), task.clone());
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let guard = self
            .inner
            .lock()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(guard.1.get(id).cloned())
    }

    fn list(&self) -> Result<Vec<Task>, StoreError> {
        let guard = self
            .inner
            .lock()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let mut tasks: Vec<Task> = guard.1.values().cloned().collect();
        tasks.sort_by_key(|t| t.created_ms);
        Ok(tasks)
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
        assert!(err.contains("pending to running"), "{err}");
        task.transition(TaskState::Dispatched, None).unwrap();
        task.transition(TaskState::Running, None).unwrap();
        assert!(task.transition(TaskState::Accepted, None).is_err());
        assert_eq!(task.history.len(), 3);
    }

    #[test]
    fn validation_follows_the_schema_limits() {
        assert!(args().validate().is_ok());
        let mut bad = args();
        bad.object = "  ".into();
        assert!(bad.validate().unwrap_err().contains("object"));
        let mut bad = args();
        bad.confidence = 1.5;
        assert!(bad.validate().unwrap_err().contains("confidence"));
        let mut bad = args();
        bad.destination = Some(String::new());
        assert!(bad.validate().unwrap_err().contains("destination"));
    }
}
