//! Ports: what the actors need from the outside world, as traits, plus the plain data that
//! crosses them. The service implements these with real dependencies (candle, an LLM client,
//! sled); the actors' own tests use the small in-memory implementations found here.

mod body;
mod planner;
mod store;
mod voice;

pub use body::{BodyCommand, BodyReport, BodyState};
pub use planner::{
    Action, DestinationRule, Intent, InvalidTask, PhysicalTask, PlanContext, PlanOutcome, Planner,
    PlannerError,
};
pub use store::{
    LifecycleError, MemoryTaskStore, NewTask, Page, PageOrder, PageQuery, PlanStep, Progress,
    StoreError, Task, TaskEvent, TaskSource, TaskState, TaskStore, id_number, now_ms, task_id,
};
pub use voice::{
    FRAME_PERIOD, FRAME_SAMPLES, SAMPLE_RATE, StepOutput, TurnStages, VoiceError, VoiceModel,
};
