//! What the brain and a robot body say to each other (`docs/body-protocol.md`): the brain
//! sends tool calls and cancels, the body answers with status reports. The transport (a
//! websocket in the service) is not the actors' business; they see these values.

use serde::{Deserialize, Serialize};

use super::planner::PhysicalTask;

/// Brain -> body.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BodyCommand {
    /// Do this. `id` is the task id, the idempotency key: the same id may arrive more
    /// than once (delivery is at least once) and means the same task.
    ToolCall {
        id: String,
        name: String,
        arguments: PhysicalTask,
    },
    /// Stop working on task `id`; the brain already counts it as cancelled.
    Cancel { id: String },
}

/// What a body says about a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyState {
    Accepted,
    Running,
    /// Still running, with news (`detail`, `progress`).
    Progress,
    Succeeded,
    Failed,
    Rejected,
}

/// Body -> brain: a status report on task `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BodyReport {
    pub id: String,
    pub state: BodyState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// 0..1, with `progress` reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f32>,
}
