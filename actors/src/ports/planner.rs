//! The `Planner` port and the `do_physical_task` tool call it produces.

use serde::{Deserialize, Serialize};

/// What the body is asked to do. The JSON names are the `action` enum of
/// `schemas/do_physical_task.schema.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Fetch something and bring it to the person ("bring", "fetch", "get me").
    Bring,
    /// Pick something up and hold it ("pick up", "grab", "take").
    PickUp,
    /// Put down what is held ("put down", "drop", "set down").
    PutDown,
    /// Put something somewhere ("put the cup on the table").
    Place,
    /// Hand something over ("give", "hand").
    Give,
    /// Move something ("move", "push over").
    Move,
    /// Open something ("open the door").
    Open,
    /// Close something ("close the drawer").
    Close,
}

impl Action {
    /// Every action, in the order the schema lists them.
    pub const ALL: [Action; 8] = [
        Action::Bring,
        Action::PickUp,
        Action::PutDown,
        Action::Place,
        Action::Give,
        Action::Move,
        Action::Open,
        Action::Close,
    ];

    /// The wire name (`pick_up`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Bring => "bring",
            Action::PickUp => "pick_up",
            Action::PutDown => "put_down",
            Action::Place => "place",
            Action::Give => "give",
            Action::Move => "move",
            Action::Open => "open",
            Action::Close => "close",
        }
    }
}

/// The arguments of a `do_physical_task` tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhysicalTask {
    pub action: Action,
    /// The thing acted on, as spoken ("cup", "red ball").
    pub object: String,
    /// Where it should end up, when the phrase says ("table", "kitchen").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The phrase this was understood from, kept for the body's logs and for people.
    pub utterance: String,
    /// How sure the detector or planner is, 0..1.
    pub confidence: f32,
}

impl PhysicalTask {
    /// Longest object or destination name accepted.
    pub const MAX_NAME: usize = 80;
    /// Longest utterance accepted.
    pub const MAX_UTTERANCE: usize = 500;

    /// Check the limits the JSON Schema states, so a task built in code obeys the same
    /// contract as one parsed from the wire.
    pub fn validate(&self) -> Result<(), InvalidTask> {
        let object = self.object.trim();
        if object.is_empty() {
            return Err(InvalidTask::Empty("object"));
        }
        if object.chars().count() > Self::MAX_NAME {
            return Err(InvalidTask::TooLong {
                field: "object",
                max: Self::MAX_NAME,
            });
        }
        if let Some(dest) = &self.destination {
            if dest.trim().is_empty() {
                return Err(InvalidTask::EmptyDestination);
            }
            if dest.chars().count() > Self::MAX_NAME {
                return Err(InvalidTask::TooLong {
                    field: "destination",
                    max: Self::MAX_NAME,
                });
            }
        }
        if self.utterance.chars().count() > Self::MAX_UTTERANCE {
            return Err(InvalidTask::TooLong {
                field: "utterance",
                max: Self::MAX_UTTERANCE,
            });
        }
        if !(0.0..=1.0).contains(&self.confidence) || self.confidence.is_nan() {
            return Err(InvalidTask::Confidence(self.confidence));
        }
        Ok(())
    }
}

/// Which limit of `do_physical_task` a [`PhysicalTask`] breaks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidTask {
    #[error("`{0}` is empty")]
    Empty(&'static str),
    #[error("`destination` is empty (leave it out instead)")]
    EmptyDestination,
    #[error("`{field}` is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("`confidence` {0} is outside 0..1")]
    Confidence(f32),
}

/// A physical-task intent spotted in the inner monologue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// What the phrase asks for, already in tool-call shape.
    pub task: PhysicalTask,
    /// The voice tick on which the phrase completed.
    pub tick: u64,
    /// Which detector fired: `rules+classifier` (the grammar read it, the classifier
    /// agreed), `classifier` (a rescue) or `rules` (no classifier available).
    pub detector: String,
}

/// What a planner is given to think about.
#[derive(Debug, Clone)]
pub struct PlanContext {
    pub intent: Intent,
    /// The most recent monologue phrases, oldest first.
    pub recent_monologue: Vec<String>,
}

/// A planner's answer: the tool calls to make, in order.
#[derive(Debug, Clone)]
pub struct PlanOutcome {
    pub calls: Vec<PhysicalTask>,
    /// Which planner produced the calls (`rules`, `llm`).
    pub planner: &'static str,
    /// Why the planner fell back, if it did ("llm timed out after 8 s").
    pub fallback: Option<String>,
}

/// Why a plan could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlannerError {
    #[error("the intent is not something the creature can do: {0}")]
    Unplannable(String),
    #[error("planner failed: {0}")]
    Failed(String),
}

/// The slow loop's thinker: turns an intent into tool calls. May take seconds.
#[async_trait::async_trait]
pub trait Planner: Send + Sync + 'static {
    /// A short name for the API (`rules`, `llm`).
    fn name(&self) -> &'static str;

    /// Think about `ctx` and return the tool calls to make.
    async fn plan(&self, ctx: PlanContext) -> Result<PlanOutcome, PlannerError>;
}
