//! The creature's actors: a fast voice loop and the slower actors it feeds, joined only by
//! messages. This crate is pure orchestration; the service (`creature`) supplies the real
//! model, planner and store behind the ports defined here.
//!
//! # Layout
//!
//! - [`ports`]: the traits this crate needs from the outside world ([`VoiceModel`],
//!   [`Planner`], [`TaskStore`]) and the plain data that crosses them.
//! - [`brain`]: the root supervisor. It starts the six children, restarts a failed one
//!   (one-for-one, with a restart-intensity limit) and hands out a [`BrainHandle`].
//! - [`voice`]: the fast loop, ticking every 80 ms on absolute deadlines; model compute runs
//!   on the dedicated thread in [`worker`].
//! - [`monologue`]: the inner-monologue watcher; [`intent`] holds its phrase grammar and
//!   [`classifier`] the trained model that confirms, vetoes or rescues what the grammar reads.
//! - [`reasoner`]: the slow loop that turns intents into `do_physical_task` tool calls;
//!   [`rules`] is its embedded planner.
//! - [`tasks`]: the durable task ledger and the task lifecycle.
//! - [`affect`]: the affect state machine (Ekman label plus a valence/arousal point).
//! - [`signals`]: the data that crosses actors (frame stats, text pieces, emotions, events),
//!   so actor files import only the handles of the actors they send to.
//! - [`face`]: merges mouth, affect and speaking into one message for every phone face.
//! - [`slot`]: the restart-proof address every handle uses, and the per-actor counters;
//!   [`handle`]: what every actor shares: the generic part of the handles, and
//!   [`Spawn`](handle::Spawn), which starts an actor alone or under the brain.
//! - [`events`]: the live event stream (status changes, restarts, monologue, tasks,
//!   affect, loop and per-actor figures) behind `GET /api/events`, with its replay buffer.
//! - [`ring`]: the bounded list (newest items kept, the oldest dropped and counted) behind
//!   every actor's recent history.
//! - [`feed`]: the preallocated single-producer queue (with a drop counter and a wake-up)
//!   that carries the fast loop's per-tick data between its threads instead of messages.
//! - [`clock`], [`histogram`], [`audio`]: tick deadlines, lock-free latency histograms, and
//!   the bounded audio plumbing around the fast loop; [`realtime`]: its threads' priority,
//!   the host's steal time and the per-thread allocation count.
//! - [`config_duration`]: how the config file's `_secs`/`_ms` keys become durations.
//! - [`text`]: escaping untrusted text before it reaches a terminal or a log.
//! - [`turns`]: turn taking measured from the voice loop's frames (response latency,
//!   barge-in reaction, backchannels, overlaps, turns with no answer).

pub mod affect;
pub mod audio;
pub mod brain;
pub mod classifier;
pub mod clock;
pub mod config_duration;
pub mod events;
pub mod face;
pub mod feed;
pub mod handle;
pub mod histogram;
pub mod intent;
pub mod monologue;
pub mod outlet;
pub mod ports;
pub mod realtime;
pub mod reasoner;
pub mod ring;
pub mod rules;
pub mod signals;
pub mod slot;
pub mod tasks;
pub mod text;
pub mod turns;
pub mod voice;
pub mod worker;

pub use brain::{BrainConfig, BrainError, BrainHandle, BrainPorts, Child, SupervisionConfig};
pub use ports::{
    FRAME_PERIOD, FRAME_SAMPLES, Planner, PlannerError, SAMPLE_RATE, StepOutput, StoreError,
    TaskStore, TurnStages, VoiceError, VoiceModel,
};

/// How long a request/response call to an actor may take before the caller gives up.
/// Actors answer from memory, so anything slower means the actor is wedged or restarting.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(2_000);
