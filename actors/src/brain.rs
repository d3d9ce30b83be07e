//! `brain`: the root supervisor. It only wires: it builds each of the six children with the
//! handles of the actors it sends to, starts them with [`Spawn::start`], restarts one that
//! fails (one-for-one: the others keep running, the voice keeps ticking; the handles reach
//! the new incarnation through its slot), and gives up like an OTP supervisor when failures
//! come too fast: past `max_restarts` within `restart_window` it stops the whole tree with
//! an error that names the child.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::affect::{Affect, AffectConfig, AffectHandle};
use crate::audio::{AgentFrame, AudioInbox};
use crate::clock::TickClock;
use crate::events::{EventBus, InspectConfig, SAMPLE_PERIOD, Sampler};
use crate::face::{Face, FaceConfig, FaceHandle};
use crate::handle::Spawn;
use crate::monologue::{Monologue, MonologueConfig, MonologueHandle};
use crate::ports::{Planner, TaskStore, VoiceModel};
use crate::reasoner::{Reasoner, ReasonerConfig, ReasonerHandle};
use crate::ring::Ring;
use crate::slot::{ActorStats, ActorStatus, ActorSummary, CallError};
use crate::tasks::{Tasks, TasksConfig, TasksHandle};
use crate::voice::{Voice, VoiceConfig, VoiceHandle, VoiceMetrics, VoiceWiring};
use crate::{CALL_TIMEOUT, FRAME_PERIOD};

/// Restart intensity of the root supervisor: `[brain]` in the config file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// Restarts allowed within `restart_window` before the brain gives up.
    pub max_restarts: u32,
    #[serde(
        rename = "restart_window_secs",
        deserialize_with = "crate::config_duration::secs"
    )]
    pub restart_window: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            max_restarts: 5,
            restart_window: Duration::from_secs(10),
        }
    }
}

/// Supervision and loop settings.
#[derive(Debug, Clone)]
pub struct BrainConfig {
    pub supervision: SupervisionConfig,
    /// Agent frames a slow audio listener may lag before it skips ahead.
    pub audio_out_frames: usize,
    pub voice: VoiceConfig,
    pub monologue: MonologueConfig,
    pub reasoner: ReasonerConfig,
    pub tasks: TasksConfig,
    pub affect: AffectConfig,
    pub face: FaceConfig,
    /// The event stream's replay buffer and viewer lag.
    pub inspect: InspectConfig,
}

impl Default for BrainConfig {
    fn default() -> Self {
        BrainConfig {
            supervision: SupervisionConfig::default(),
            audio_out_frames: 16,
            voice: VoiceConfig::default(),
            monologue: MonologueConfig::default(),
            reasoner: ReasonerConfig::default(),
            tasks: TasksConfig::default(),
            affect: AffectConfig::default(),
            face: FaceConfig::default(),
            inspect: InspectConfig::default(),
        }
    }
}

/// The real-world parts the brain runs on.
pub struct BrainPorts {
    /// A loaded, warmed-up voice model; it moves to its own thread.
    pub model: Box<dyn VoiceModel>,
    pub planner: Arc<dyn Planner>,
    pub store: Arc<dyn TaskStore>,
}

/// Why the brain could not start or had to stop.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrainError {
    #[error("actor `{child}` failed to start: {reason}")]
    Start { child: &'static str, reason: String },
    #[error(
        "actor `{child}` failed {failures} times within {window:?} (restart limit {limit}); \
         the brain stopped. Last error: {last_error}"
    )]
    RestartIntensity {
        child: &'static str,
        failures: u32,
        limit: u32,
        window: Duration,
        last_error: String,
    },
    #[error("could not start the voice threads: {0}")]
    Worker(String),
}

/// The children, in the order the API lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Child {
    Voice,
    Monologue,
    Reasoner,
    Tasks,
    Affect,
    Face,
}

impl Child {
    pub const ALL: [Child; 6] = [
        Child::Voice,
        Child::Monologue,
        Child::Reasoner,
        Child::Tasks,
        Child::Affect,
        Child::Face,
    ];
    /// Consumers before producers, so nobody's first message goes to an empty slot.
    const START_ORDER: [Child; 6] = [
        Child::Tasks,
        Child::Face,
        Child::Affect,
        Child::Reasoner,
        Child::Monologue,
        Child::Voice,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Child::Voice => "voice",
            Child::Monologue => "monologue",
            Child::Reasoner => "reasoner",
            Child::Tasks => "tasks",
            Child::Affect => "affect",
            Child::Face => "face",
        }
    }

    pub fn from_name(name: &str) -> Option<Child> {
        Child::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The children's definitions, each cloned for every (re)start; each one's slot carries its
/// counters.
struct Children {
    voice: Voice,
    monologue: Monologue,
    reasoner: Reasoner,
    tasks: Tasks,
    affect: Affect,
    face: Face,
}

impl Children {
    fn stats(&self, child: Child) -> &Arc<ActorStats> {
        match child {
            Child::Voice => self.voice.slot().stats(),
            Child::Monologue => self.monologue.slot().stats(),
            Child::Reasoner => self.reasoner.slot().stats(),
            Child::Tasks => self.tasks.slot().stats(),
            Child::Affect => self.affect.slot().stats(),
            Child::Face => self.face.slot().stats(),
        }
    }
}

/// A single-threaded runtime on its own OS thread, home of the voice and face actors: the
/// fast loop never queues behind slow-loop or HTTP work on the shared async workers.
struct LoopRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopRuntime {
    fn start(realtime: bool, metrics: Arc<VoiceMetrics>) -> std::io::Result<LoopRuntime> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("voice-loop".into())
            .spawn(move || {
                if realtime {
                    let granted = crate::realtime::promote_current_thread("voice-loop");
                    metrics.set_scheduling(|s| s.voice_loop = granted);
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("the voice loop thread died at start"))??;
        Ok(LoopRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for LoopRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The root supervisor: it only wires and restarts its children.
struct Brain {
    /// Where the voice and face actors run (see [`LoopRuntime`]).
    voice_runtime: tokio::runtime::Handle,
    /// Supervision settings (the children's own are in their definitions).
    config: BrainConfig,
    children: Children,
    stats: Arc<ActorStats>,
    fatal: Arc<Mutex<Option<BrainError>>>,
}

/// How many restarts the snapshot lists.
const RESTART_HISTORY: usize = 32;

#[derive(Debug, Clone, Serialize)]
struct RestartRecord {
    child: Child,
    error: String,
    at_ms: u64,
}

struct BrainState {
    by_id: HashMap<ActorId, Child>,
    /// When recent restarts happened, for the intensity limit.
    restarts: VecDeque<Instant>,
    /// The most recent restarts, for the snapshot.
    history: Ring<RestartRecord>,
}

#[derive(Debug)]
enum BrainMsg {
    Snapshot(RpcReplyPort<serde_json::Value>),
}

/// Start an incarnation of `actor` under `supervisor`, on `runtime` when given (else on the
/// caller's).
async fn start_linked<A: Spawn>(
    actor: &A,
    supervisor: ractor::ActorCell,
    runtime: Option<&tokio::runtime::Handle>,
) -> Result<ActorId, String> {
    let start = actor.start(Some(supervisor));
    let started = match runtime {
        Some(rt) => rt.spawn(start).await.map_err(|e| e.to_string())?,
        None => start.await,
    };
    started.map(|cell| cell.get_id()).map_err(|e| e.to_string())
}

impl Brain {
    async fn spawn_child(
        &self,
        child: Child,
        myself: &ActorRef<BrainMsg>,
    ) -> Result<ActorId, String> {
        let sup = myself.get_cell();
        // Voice and face live on the fast loop's own runtime: a frame's stats reach every
        // phone without waiting for the shared async workers.
        let fast = Some(&self.voice_runtime);
        let c = &self.children;
        match child {
            Child::Voice => start_linked(&c.voice, sup, fast).await,
            Child::Monologue => start_linked(&c.monologue, sup, None).await,
            Child::Reasoner => start_linked(&c.reasoner, sup, None).await,
            Child::Tasks => start_linked(&c.tasks, sup, None).await,
            Child::Affect => start_linked(&c.affect, sup, None).await,
            Child::Face => start_linked(&c.face, sup, fast).await,
        }
    }

    /// A child died: restart it, unless failures are coming faster than the limit.
    async fn on_child_exit(
        &self,
        myself: &ActorRef<BrainMsg>,
        state: &mut BrainState,
        id: ActorId,
        error: String,
    ) {
        let Some(child) = state.by_id.remove(&id) else {
            return;
        };
        let stats = self.children.stats(child);
        tracing::error!(actor = child.name(), cause = %error, "actor failed");
        state.history.push(RestartRecord {
            child,
            error: error.clone(),
            at_ms: crate::ports::now_ms(),
        });
        let now = Instant::now();
        let window = self.config.supervision.restart_window;
        state.restarts.retain(|t| now.duration_since(*t) < window);
        let mut last_error = error;
        loop {
            if state.restarts.len() as u32 >= self.config.supervision.max_restarts {
                stats.record_failure(last_error.clone(), false);
                let fatal = BrainError::RestartIntensity {
                    child: child.name(),
                    failures: state.restarts.len() as u32 + 1,
                    limit: self.config.supervision.max_restarts,
                    window,
                    last_error,
                };
                tracing::error!(cause = %fatal, "restart intensity exceeded; stopping the brain");
                myself.stop(Some(fatal.to_string()));
                if let Ok(mut f) = self.fatal.lock() {
                    *f = Some(fatal);
                }
                return;
            }
            state.restarts.push_back(Instant::now());
            stats.record_failure(last_error.clone(), true);
            match self.spawn_child(child, myself).await {
                Ok(new_id) => {
                    tracing::info!(
                        actor = child.name(),
                        restarts = stats.restarts(),
                        "actor restarted"
                    );
                    state.by_id.insert(new_id, child);
                    return;
                }
                Err(e) => last_error = format!("restart failed: {e}"),
            }
        }
    }
}

impl Actor for Brain {
    type Msg = BrainMsg;
    type State = BrainState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<BrainMsg>,
        _: (),
    ) -> Result<BrainState, ActorProcessingErr> {
        let mut by_id = HashMap::new();
        for child in Child::START_ORDER {
            match self.spawn_child(child, &myself).await {
                Ok(id) => {
                    by_id.insert(id, child);
                }
                Err(reason) => {
                    myself.stop_children(None);
                    let err = BrainError::Start {
                        child: child.name(),
                        reason,
                    };
                    if let Ok(mut f) = self.fatal.lock() {
                        *f = Some(err.clone());
                    }
                    return Err(err.into());
                }
            }
        }
        self.stats.set_status(ActorStatus::Running);
        Ok(BrainState {
            by_id,
            restarts: VecDeque::new(),
            history: Ring::new(RESTART_HISTORY),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<BrainMsg>,
        _state: &mut BrainState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        let failed = self.fatal.lock().map(|f| f.is_some()).unwrap_or(false);
        for child in Child::ALL {
            let stats = self.children.stats(child);
            if stats.status() != ActorStatus::Failed {
                stats.set_status(ActorStatus::Stopped);
            }
        }
        self.stats.set_status(if failed {
            ActorStatus::Failed
        } else {
            ActorStatus::Stopped
        });
        tracing::info!("brain stopped");
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<BrainMsg>,
        msg: BrainMsg,
        state: &mut BrainState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BrainMsg::Snapshot(reply) => {
                let _ = reply.send(serde_json::json!({
                    "strategy": "one_for_one",
                    "max_restarts": self.config.supervision.max_restarts,
                    "restart_window_ms": self.config.supervision.restart_window.as_millis() as u64,
                    "recent_restarts": state.restarts.len(),
                    "children": Child::ALL.iter().map(|c| c.name()).collect::<Vec<_>>(),
                    "restart_history": state.history,
                }));
            }
        }
        self.stats.mark_handled();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<BrainMsg>,
        event: SupervisionEvent,
        state: &mut BrainState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                self.on_child_exit(&myself, state, cell.get_id(), err.to_string())
                    .await;
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let why = reason.unwrap_or_else(|| "no reason given".into());
                self.on_child_exit(
                    &myself,
                    state,
                    cell.get_id(),
                    format!("stopped unexpectedly: {why}"),
                )
                .await;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Why an actor snapshot could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "no actor named {0:?}; the actors are brain, voice, monologue, reasoner, tasks, affect, face"
    )]
    Unknown(String),
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Why an operator's fault injection was not done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FailError {
    #[error(
        "no actor named {0:?}; the children are voice, monologue, reasoner, tasks, affect, face"
    )]
    Unknown(String),
    #[error("the brain is the root supervisor; fail one of its children instead")]
    Root,
    #[error("actor {0} is not running (it may be restarting); try again in a moment")]
    NotRunning(&'static str),
}

/// How long [`BrainHandle::stop`] waits for the voice model's thread to finish its step.
const MODEL_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The running brain: typed handles to every actor and the audio plumbing.
pub struct BrainHandle {
    root: ActorRef<BrainMsg>,
    /// Stops the voice loop's thread when the handle goes (after the actors have stopped).
    _voice_runtime: LoopRuntime,
    join: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Joins the voice model's thread in [`BrainHandle::stop`].
    model: Option<crate::worker::ModelStopper>,
    /// Set when [`BrainHandle::stop`] begins: sessions served on the brain end on it.
    stopping: tokio::sync::watch::Sender<bool>,
    fatal: Arc<Mutex<Option<BrainError>>>,
    stats: Arc<ActorStats>,
    clock: TickClock,
    inbox: Arc<AudioInbox>,
    audio_out: broadcast::Sender<AgentFrame>,
    planner: &'static str,
    /// What the tree does, live (`GET /api/events`).
    events: EventBus,
    /// Publishes the loop's and the actors' figures once a second; stops when dropped.
    _sampler: Sampler,
    pub voice: VoiceHandle,
    pub monologue: MonologueHandle,
    pub reasoner: ReasonerHandle,
    pub tasks: TasksHandle,
    pub affect: AffectHandle,
    pub face: FaceHandle,
}

impl std::fmt::Debug for BrainHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrainHandle")
            .field("backend", &self.voice.backend())
            .finish()
    }
}

impl BrainHandle {
    /// Start the tree. Returns once every actor runs and the first tick is scheduled.
    pub async fn start(config: BrainConfig, ports: BrainPorts) -> Result<BrainHandle, BrainError> {
        let clock = TickClock::new(Instant::now(), FRAME_PERIOD);
        let inbox = Arc::new(AudioInbox::new(config.voice.inbox_frames));
        let (audio_out, _) = broadcast::channel(config.audio_out_frames.max(1));
        let planner = ports.planner.name();
        // Each actor is built with the handles of the actors it sends to, consumers first.
        let face = Face::new(config.face.clone(), clock);
        let affect = Affect::new(config.affect.clone(), face.handle());
        let tasks = Tasks::new(config.tasks.clone(), ports.store, affect.handle());
        let reasoner = Reasoner::new(config.reasoner.clone(), ports.planner, tasks.handle());
        let monologue =
            Monologue::new(config.monologue.clone(), reasoner.handle(), affect.handle());
        let voice = Voice::new(
            config.voice.clone(),
            VoiceWiring {
                model: ports.model,
                clock,
                inbox: Arc::clone(&inbox),
                audio_out: audio_out.clone(),
                monologue: monologue.handle(),
                face: face.handle(),
                affect: affect.handle(),
            },
        )
        .map_err(|e| BrainError::Worker(e.to_string()))?;
        let model = voice.model_stopper();
        let events = EventBus::new(
            config.inspect.replay_events,
            config.inspect.viewer_lag_events,
        );
        let stats = Arc::new(ActorStats::new("brain"));
        stats.attach_events(events.clone());
        let mut all_stats = vec![Arc::clone(&stats)];
        for child in Child::ALL {
            let child_stats = match child {
                Child::Voice => voice.slot().stats(),
                Child::Monologue => monologue.slot().stats(),
                Child::Reasoner => reasoner.slot().stats(),
                Child::Tasks => tasks.slot().stats(),
                Child::Affect => affect.slot().stats(),
                Child::Face => face.slot().stats(),
            };
            child_stats.attach_events(events.clone());
            all_stats.push(Arc::clone(child_stats));
        }
        let sampler = Sampler::start(
            events.clone(),
            Arc::clone(voice.metrics()),
            all_stats,
            SAMPLE_PERIOD,
        );
        let handles = (
            voice.handle(),
            monologue.handle(),
            reasoner.handle(),
            tasks.handle(),
            affect.handle(),
            face.handle(),
        );

        let fatal = Arc::new(Mutex::new(None));
        let voice_runtime =
            LoopRuntime::start(config.voice.realtime_priority, Arc::clone(voice.metrics()))
                .map_err(|e| BrainError::Worker(e.to_string()))?;
        let brain = Brain {
            voice_runtime: voice_runtime.handle.clone(),
            children: Children {
                voice,
                monologue,
                reasoner,
                tasks,
                affect,
                face,
            },
            config,
            stats: Arc::clone(&stats),
            fatal: Arc::clone(&fatal),
        };
        let (root, join) = match Actor::spawn(None, brain, ()).await {
            Ok(started) => started,
            Err(e) => {
                let known = fatal.lock().ok().and_then(|f| f.clone());
                return Err(known.unwrap_or(BrainError::Start {
                    child: "brain",
                    reason: e.to_string(),
                }));
            }
        };
        let (voice, monologue, reasoner, tasks, affect, face) = handles;
        Ok(BrainHandle {
            root,
            _voice_runtime: voice_runtime,
            join: tokio::sync::Mutex::new(Some(join)),
            model,
            stopping: tokio::sync::watch::Sender::new(false),
            fatal,
            stats,
            clock,
            inbox,
            audio_out,
            planner,
            events,
            _sampler: sampler,
            voice,
            monologue,
            reasoner,
            tasks,
            affect,
            face,
        })
    }

    /// Every actor's counters: the brain first, then its children.
    pub fn actors(&self) -> Vec<ActorSummary> {
        let mut all = vec![self.stats.summary()];
        all.extend(Child::ALL.iter().map(|c| self.child_stats(*c).summary()));
        all
    }

    /// Every actor's counters themselves, the brain first (for histograms).
    pub fn actor_stats(&self) -> Vec<&Arc<ActorStats>> {
        let mut all = vec![&self.stats];
        all.extend(Child::ALL.iter().map(|c| self.child_stats(*c)));
        all
    }

    fn child_stats(&self, child: Child) -> &Arc<ActorStats> {
        match child {
            Child::Voice => self.voice.stats(),
            Child::Monologue => self.monologue.stats(),
            Child::Reasoner => self.reasoner.stats(),
            Child::Tasks => self.tasks.stats(),
            Child::Affect => self.affect.stats(),
            Child::Face => self.face.stats(),
        }
    }

    /// One actor's own state snapshot, by the name the API uses.
    pub async fn snapshot(&self, name: &str) -> Result<serde_json::Value, SnapshotError> {
        let state = match name {
            "brain" => {
                let reply = self.root.call(BrainMsg::Snapshot, Some(CALL_TIMEOUT)).await;
                match reply {
                    Ok(ractor::rpc::CallResult::Success(v)) => v,
                    Ok(ractor::rpc::CallResult::Timeout) => {
                        return Err(CallError::Timeout("brain", CALL_TIMEOUT).into());
                    }
                    _ => return Err(CallError::NotRunning("brain").into()),
                }
            }
            "voice" => self.voice.snapshot().await?,
            "monologue" => self.monologue.snapshot().await?,
            "reasoner" => self.reasoner.snapshot().await?,
            "tasks" => self.tasks.snapshot().await?,
            "affect" => self.affect.snapshot().await?,
            "face" => self.face.snapshot().await?,
            other => return Err(SnapshotError::Unknown(other.to_string())),
        };
        let summary = if name == "brain" {
            self.stats.summary()
        } else {
            Child::from_name(name)
                .map(|c| self.child_stats(c).summary())
                .unwrap_or_else(|| self.stats.summary())
        };
        let mut value = serde_json::to_value(summary).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("state".into(), state);
        }
        Ok(value)
    }

    /// The live event stream.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Operators' fault injection: stop the named child's current incarnation with a
    /// reason, as a crash would end it; the brain counts it as a failure and restarts the
    /// child (restart intensity applies). The caller checks it is allowed.
    pub fn fail_actor(&self, name: &str, reason: &str) -> Result<(), FailError> {
        let failed = match Child::from_name(name) {
            Some(Child::Voice) => self.voice.fail(reason),
            Some(Child::Monologue) => self.monologue.fail(reason),
            Some(Child::Reasoner) => self.reasoner.fail(reason),
            Some(Child::Tasks) => self.tasks.fail(reason),
            Some(Child::Affect) => self.affect.fail(reason),
            Some(Child::Face) => self.face.fail(reason),
            None if name == "brain" => return Err(FailError::Root),
            None => return Err(FailError::Unknown(name.to_string())),
        };
        if failed {
            Ok(())
        } else {
            Err(FailError::NotRunning(
                Child::from_name(name).map_or("?", Child::name),
            ))
        }
    }

    /// The fast loop's schedule.
    pub fn clock(&self) -> TickClock {
        self.clock
    }

    /// Which planner the slow loop uses.
    pub fn planner(&self) -> &'static str {
        self.planner
    }

    /// Feed user audio (24 kHz mono f32) to the fast loop.
    pub fn push_user_audio(&self, samples: &[f32]) {
        self.inbox.push(samples);
    }

    pub fn inbox(&self) -> &Arc<AudioInbox> {
        &self.inbox
    }

    /// The agent's audio, one 80 ms frame per message.
    pub fn subscribe_audio(&self) -> broadcast::Receiver<AgentFrame> {
        self.audio_out.subscribe()
    }

    /// Whether the tree is up (false once it stopped, on purpose or not).
    pub fn is_running(&self) -> bool {
        self.stats.status() == ActorStatus::Running
    }

    /// Why the brain stopped on its own, if it did.
    pub fn fatal_error(&self) -> Option<BrainError> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Stop: tell whoever serves on the brain ([`BrainHandle::stopping`]), stop every actor
    /// and wait for them, then join the voice model's thread (after the step it is on).
    pub async fn stop(&self) {
        self.stopping.send_replace(true);
        if let Err(e) = self
            .root
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await
        {
            tracing::warn!(cause = %e, "brain did not stop cleanly");
        }
        if let Some(model) = self.model.clone() {
            let joined = tokio::time::timeout(
                MODEL_STOP_TIMEOUT,
                tokio::task::spawn_blocking(move || model.stop()),
            )
            .await;
            if joined.is_err() {
                tracing::warn!(
                    waited_secs = MODEL_STOP_TIMEOUT.as_secs(),
                    "the voice model thread is still inside a step; not waiting for it"
                );
            }
        }
    }

    /// Completes once [`BrainHandle::stop`] begins (or the handle is gone): the signal for
    /// sessions served on the brain to say goodbye.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    }

    /// Whether [`BrainHandle::stop`] has begun.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Whether the voice model's thread has been joined (after [`BrainHandle::stop`]).
    pub fn model_thread_joined(&self) -> bool {
        self.model.as_ref().is_none_or(|m| m.joined())
    }

    /// Wait until the brain stops; an error says why it stopped on its own.
    pub async fn wait(&self) -> Result<(), BrainError> {
        if let Some(join) = self.join.lock().await.take() {
            let _ = join.await;
        }
        match self.fatal.lock().ok().and_then(|f| f.clone()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Test-only: make the named actor panic. Returns false for an unknown name.
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&self, name: &str) -> bool {
        match Child::from_name(name) {
            Some(Child::Voice) => self.voice.crash(),
            Some(Child::Monologue) => self.monologue.crash(),
            Some(Child::Reasoner) => self.reasoner.crash(),
            Some(Child::Tasks) => self.tasks.crash(),
            Some(Child::Affect) => self.affect.crash(),
            Some(Child::Face) => self.face.crash(),
            None => return false,
        }
        true
    }
}
