//! `brain`: the root supervisor. It starts the six children, restarts one that fails
//! (one-for-one: the others keep running, the voice keeps ticking), and gives up like an
//! OTP supervisor when failures come too fast: past `max_restarts` within `restart_window`
//! it stops the whole tree with an error that names the child.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::affect::{Affect, AffectConfig, AffectHandle, AffectMsg};
use crate::audio::{AgentFrame, AudioInbox};
use crate::clock::TickClock;
use crate::face::{Face, FaceConfig, FaceHandle, FaceMsg, face_outlet};
use crate::monologue::{Monologue, MonologueConfig, MonologueHandle, MonologueMsg};
use crate::ports::{Planner, TaskStore, VoiceModel};
use crate::reasoner::{Reasoner, ReasonerConfig, ReasonerHandle, ReasonerMsg};
use crate::slot::{ActorStats, ActorStatus, ActorSummary, CallError, Slot};
use crate::tasks::{Tasks, TasksConfig, TasksHandle, TasksMsg};
use crate::voice::{Voice, VoiceConfig, VoiceHandle, VoiceMetrics, VoiceMsg};
use crate::worker::ModelWorker;
use crate::{CALL_TIMEOUT, FRAME_PERIOD};

/// Supervision and loop settings.
#[derive(Debug, Clone)]
pub struct BrainConfig {
    /// Restarts allowed within `restart_window` before the brain gives up.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// User audio the inbox holds before dropping the oldest, in frames.
    pub audio_inbox_frames: usize,
    /// Agent frames a slow audio listener may lag before it skips ahead.
    pub audio_out_frames: usize,
    pub voice: VoiceConfig,
    pub monologue: MonologueConfig,
    pub reasoner: ReasonerConfig,
    pub tasks: TasksConfig,
    pub affect: AffectConfig,
    pub face: FaceConfig,
}

impl Default for BrainConfig {
    fn default() -> Self {
        BrainConfig {
            max_restarts: 5,
            restart_window: Duration::from_secs(10),
            audio_inbox_frames: 25,
            audio_out_frames: 16,
            voice: VoiceConfig::default(),
            monologue: MonologueConfig::default(),
            reasoner: ReasonerConfig::default(),
            tasks: TasksConfig::default(),
            affect: AffectConfig::default(),
            face: FaceConfig::default(),
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

#[derive(Clone)]
struct Slots {
    voice: Slot<VoiceMsg>,
    monologue: Slot<MonologueMsg>,
    reasoner: Slot<ReasonerMsg>,
    tasks: Slot<TasksMsg>,
    affect: Slot<AffectMsg>,
    face: Slot<FaceMsg>,
}

impl Slots {
    fn stats(&self, child: Child) -> &Arc<ActorStats> {
        match child {
            Child::Voice => self.voice.stats(),
            Child::Monologue => self.monologue.stats(),
            Child::Reasoner => self.reasoner.stats(),
            Child::Tasks => self.tasks.stats(),
            Child::Affect => self.affect.stats(),
            Child::Face => self.face.stats(),
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

/// The root supervisor: the children's definitions, cloned for each (re)start.
struct Brain {
    /// Where the voice actor runs (see [`LoopRuntime`]).
    voice_runtime: tokio::runtime::Handle,
    config: BrainConfig,
    voice: Voice,
    monologue: Monologue,
    reasoner: Reasoner,
    tasks: Tasks,
    affect: Affect,
    face: Face,
    slots: Slots,
    stats: Arc<ActorStats>,
    fatal: Arc<Mutex<Option<BrainError>>>,
}

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
    history: VecDeque<RestartRecord>,
}

#[derive(Debug)]
enum BrainMsg {
    Snapshot(RpcReplyPort<serde_json::Value>),
}

/// Start `actor` under `supervisor`, on `runtime` when given (else on the caller's).
async fn spawn_linked<A: Actor<Arguments = ()>>(
    actor: A,
    supervisor: ractor::ActorCell,
    runtime: Option<&tokio::runtime::Handle>,
) -> Result<ActorId, String> {
    let start = async move {
        Actor::spawn_linked(None, actor, (), supervisor)
            .await
            .map(|(actor, _)| actor.get_id())
            .map_err(|e| e.to_string())
    };
    match runtime {
        Some(rt) => rt.spawn(start).await.map_err(|e| e.to_string())?,
        None => start.await,
    }
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
        let id = match child {
            Child::Voice => spawn_linked(self.voice.clone(), sup, fast).await?,
            Child::Monologue => spawn_linked(self.monologue.clone(), sup, None).await?,
            Child::Reasoner => spawn_linked(self.reasoner.clone(), sup, None).await?,
            Child::Tasks => spawn_linked(self.tasks.clone(), sup, None).await?,
            Child::Affect => spawn_linked(self.affect.clone(), sup, None).await?,
            Child::Face => spawn_linked(self.face.clone(), sup, fast).await?,
        };
        self.slots.stats(child).set_status(ActorStatus::Running);
        Ok(id)
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
        let stats = self.slots.stats(child);
        tracing::error!(actor = child.name(), cause = %error, "actor failed");
        if state.history.len() == 32 {
            state.history.pop_front();
        }
        state.history.push_back(RestartRecord {
            child,
            error: error.clone(),
            at_ms: crate::ports::now_ms(),
        });
        let now = Instant::now();
        let window = self.config.restart_window;
        state.restarts.retain(|t| now.duration_since(*t) < window);
        let mut last_error = error;
        loop {
            if state.restarts.len() as u32 >= self.config.max_restarts {
                stats.record_failure(last_error.clone(), false);
                let fatal = BrainError::RestartIntensity {
                    child: child.name(),
                    failures: state.restarts.len() as u32 + 1,
                    limit: self.config.max_restarts,
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
            history: VecDeque::new(),
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
            let stats = self.slots.stats(child);
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
                    "max_restarts": self.config.max_restarts,
                    "restart_window_ms": self.config.restart_window.as_millis() as u64,
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

/// The running brain: typed handles to every actor and the audio plumbing.
pub struct BrainHandle {
    root: ActorRef<BrainMsg>,
    /// The children's addresses and counters.
    slots: Slots,
    /// Stops the voice loop's thread when the handle goes (after the actors have stopped).
    _voice_runtime: LoopRuntime,
    join: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    fatal: Arc<Mutex<Option<BrainError>>>,
    stats: Arc<ActorStats>,
    clock: TickClock,
    inbox: Arc<AudioInbox>,
    audio_out: broadcast::Sender<AgentFrame>,
    planner: &'static str,
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
        let slots = Slots {
            voice: Slot::new("voice"),
            monologue: Slot::new("monologue"),
            reasoner: Slot::new("reasoner"),
            tasks: Slot::new("tasks"),
            affect: Slot::new("affect"),
            face: Slot::new("face"),
        };
        let metrics = Arc::new(VoiceMetrics::default());
        let backend = ports.model.backend();
        let accepts_text = ports.model.accepts_text();
        let voice = VoiceHandle::new(
            slots.voice.clone(),
            backend,
            accepts_text,
            Arc::clone(&metrics),
        );
        let deliver = voice.clone();
        let setup = metrics.model_thread_setup(config.voice.realtime_priority);
        let worker = ModelWorker::spawn(ports.model, setup, move |done| deliver.step_done(done))
            .map_err(|e| BrainError::Worker(e.to_string()))?;

        let outlet = face_outlet();
        let face = FaceHandle::new(slots.face.clone(), Arc::clone(&outlet));
        let affect = AffectHandle::new(slots.affect.clone());
        let tasks = TasksHandle::new(slots.tasks.clone());
        let reasoner = ReasonerHandle::new(slots.reasoner.clone());
        let monologue = MonologueHandle::new(slots.monologue.clone());
        let inbox = Arc::new(AudioInbox::new(config.audio_inbox_frames));
        let (audio_out, _) = broadcast::channel(config.audio_out_frames.max(1));
        let planner = ports.planner.name();

        let stats = Arc::new(ActorStats::new("brain"));
        let fatal = Arc::new(Mutex::new(None));
        let voice_runtime =
            LoopRuntime::start(config.voice.realtime_priority, Arc::clone(&metrics))
                .map_err(|e| BrainError::Worker(e.to_string()))?;
        let brain = Brain {
            voice_runtime: voice_runtime.handle.clone(),
            voice: Voice {
                config: config.voice.clone(),
                clock,
                worker: Arc::new(worker),
                metrics,
                slot: slots.voice.clone(),
                inbox: Arc::clone(&inbox),
                audio_out: audio_out.clone(),
                monologue: monologue.clone(),
                face: face.clone(),
                affect: affect.clone(),
            },
            monologue: Monologue {
                config: config.monologue.clone(),
                reasoner: reasoner.clone(),
                affect: affect.clone(),
                slot: slots.monologue.clone(),
            },
            reasoner: Reasoner {
                config: config.reasoner.clone(),
                planner: ports.planner,
                tasks: tasks.clone(),
                slot: slots.reasoner.clone(),
            },
            tasks: Tasks {
                config: config.tasks.clone(),
                store: ports.store,
                affect: affect.clone(),
                slot: slots.tasks.clone(),
            },
            affect: Affect {
                config: config.affect.clone(),
                face: face.clone(),
                slot: slots.affect.clone(),
            },
            face: Face {
                config: config.face.clone(),
                clock,
                outlet,
                slot: slots.face.clone(),
            },
            slots: slots.clone(),
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
        Ok(BrainHandle {
            root,
            slots,
            _voice_runtime: voice_runtime,
            join: tokio::sync::Mutex::new(Some(join)),
            fatal,
            stats,
            clock,
            inbox,
            audio_out,
            planner,
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

    fn child_stats(&self, child: Child) -> &Arc<ActorStats> {
        self.slots.stats(child)
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

    /// Stop every actor and wait for them.
    pub async fn stop(&self) {
        if let Err(e) = self
            .root
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await
        {
            tracing::warn!(cause = %e, "brain did not stop cleanly");
        }
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
