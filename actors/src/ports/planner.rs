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
    /// Switch a device on ("switch the heater on", "turn on the lamp"). No destination.
    SwitchOn,
    /// Switch a device off ("turn the tv off"). No destination.
    SwitchOff,
    /// Go somewhere ("heading to the garage"): `destination` is where, and required;
    /// `object` names the same place or the thing gone to.
    GoTo,
    /// Pour something into a container ("pour you a glass of milk": `object` milk,
    /// `destination` glass). The destination is required.
    Pour,
    /// Clean, wipe, wash or tidy something ("wipe the table"). No destination.
    Clean,
    /// Throw something, maybe somewhere ("toss the wrapper in the bin").
    Throw,
    /// Look at or point at something ("let me look at that plant"). No destination.
    LookAt,
    /// Pull something, maybe somewhere ("pull the chair back to the table").
    Pull,
    /// Push something, maybe somewhere ("push the box into the corner").
    Push,
}

/// Whether an action takes a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationRule {
    /// It must have one ("place", "go_to", "pour").
    Required,
    /// It may have one ("bring the cup to the kitchen").
    Optional,
    /// A destination means nothing for it ("switch_on", "clean", "look_at").
    Forbidden,
}

impl Action {
    /// Every action, in the order the schema lists them.
    pub const ALL: [Action; 17] = [
        Action::Bring,
        Action::PickUp,
        Action::PutDown,
        Action::Place,
        Action::Give,
        Action::Move,
        Action::Open,
        Action::Close,
        Action::SwitchOn,
        Action::SwitchOff,
        Action::GoTo,
        Action::Pour,
        Action::Clean,
        Action::Throw,
        Action::LookAt,
        Action::Pull,
        Action::Push,
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
            Action::SwitchOn => "switch_on",
            Action::SwitchOff => "switch_off",
            Action::GoTo => "go_to",
            Action::Pour => "pour",
            Action::Clean => "clean",
            Action::Throw => "throw",
            Action::LookAt => "look_at",
            Action::Pull => "pull",
            Action::Push => "push",
        }
    }

    /// The action with this wire name, if there is one.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The argument rule for `destination` (the schema states the same rules).
    pub fn destination_rule(self) -> DestinationRule {
        match self {
            Action::Place | Action::GoTo | Action::Pour => DestinationRule::Required,
            Action::SwitchOn | Action::SwitchOff | Action::Clean | Action::LookAt => {
                DestinationRule::Forbidden
            }
            Action::Bring
            | Action::PickUp
            | Action::PutDown
            | Action::Give
            | Action::Move
            | Action::Open
            | Action::Close
            | Action::Throw
            | Action::Pull
            | Action::Push => DestinationRule::Optional,
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
        match (self.action.destination_rule(), &self.destination) {
            (DestinationRule::Required, None) => {
                return Err(InvalidTask::NeedsDestination(self.action.as_str()));
            }
            (DestinationRule::Forbidden, Some(_)) => {
                return Err(InvalidTask::NoDestination(self.action.as_str()));
            }
            _ => {}
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
    #[error("`{0}` needs a `destination`")]
    NeedsDestination(&'static str),
    #[error("`{0}` takes no `destination`")]
    NoDestination(&'static str),
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
