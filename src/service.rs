//! Assembling the brain from the config: pick the voice backend, open the ledger, start
//! the actor tree, and serve the API. `creature serve`, the benchmarks and the integration
//! tests all start the service through here, so they run the same thing.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use creature_actors::rules::RulePlanner;
use creature_actors::{BrainHandle, BrainPorts, Planner, VoiceModel};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Config, PlannerKind};
use crate::planner_llm::LlmPlanner;
use crate::server::{self, AppState};
use crate::store::SledTaskStore;
use crate::voice;

/// Start the actor tree on the configured ports.
pub async fn start_brain(config: &Config) -> anyhow::Result<Arc<BrainHandle>> {
    // Loading real weights takes seconds and blocks: keep it off the async workers.
    let for_model = config.clone();
    let model = tokio::task::spawn_blocking(move || voice::build(&for_model))
        .await
        .context("the voice model loader died")?
        .context("cannot start the voice model")?;
    start_brain_with(config, model, None).await
}

/// Start the actor tree with a given model (and optionally planner): for tests and benches.
pub async fn start_brain_with(
    config: &Config,
    model: Box<dyn VoiceModel>,
    planner: Option<Arc<dyn Planner>>,
) -> anyhow::Result<Arc<BrainHandle>> {
    let brain_config = config.brain_config()?;
    let ledger = config.data_dir.join("tasks");
    let store = SledTaskStore::open(&ledger)
        .with_context(|| format!("cannot open the task ledger in {}", ledger.display()))?;
    let planner = match planner {
        Some(planner) => planner,
        None => build_planner(config)?,
    };
    let ports = BrainPorts {
        model,
        planner,
        store: Arc::new(store),
    };
    let brain = BrainHandle::start(brain_config, ports).await?;
    Ok(Arc::new(brain))
}

/// The planner `[reasoner] planner` names.
fn build_planner(config: &Config) -> anyhow::Result<Arc<dyn Planner>> {
    Ok(match config.reasoner.planner {
        PlannerKind::Rules => Arc::new(RulePlanner {
            min_confidence: config.reasoner.min_confidence,
            ..RulePlanner::default()
        }),
        PlannerKind::Llm => Arc::new(
            LlmPlanner::from_config(&config.reasoner).context("cannot build the LLM planner")?,
        ),
    })
}

#[cfg(feature = "audio-device")]
fn start_local_audio(brain: &BrainHandle) -> anyhow::Result<Box<dyn std::any::Any + Send>> {
    let audio =
        crate::audio_device::LocalAudio::start(Arc::clone(brain.inbox()), brain.subscribe_audio())
            .context("cannot use the local microphone and speaker ([audio] device = true)")?;
    Ok(Box::new(audio))
}

#[cfg(not(feature = "audio-device"))]
fn start_local_audio(_: &BrainHandle) -> anyhow::Result<Box<dyn std::any::Any + Send>> {
    anyhow::bail!(
        "[audio] device = true needs a build with the `audio-device` feature \
         (cargo build --features audio-device; Debian: apt-get install libasound2-dev pkg-config)"
    )
}

/// A running brain with its API on a socket.
pub struct Service {
    brain: Arc<BrainHandle>,
    /// What the API's handlers share (for figures only the server side measures).
    state: AppState,
    /// The local microphone and speaker, when `[audio] device = true`; dropping stops them.
    _local_audio: Option<Box<dyn std::any::Any + Send>>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Service {
    /// Start the brain and serve the API on `config.server.addr` (port 0 picks a free one).
    pub async fn start(config: Config) -> anyhow::Result<Service> {
        let brain = start_brain(&config).await?;
        Self::serve(config, brain).await
    }

    /// Serve the API for an already started brain.
    pub async fn serve(config: Config, brain: Arc<BrainHandle>) -> anyhow::Result<Service> {
        let listener = TcpListener::bind(config.server.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.addr))?;
        let addr = listener.local_addr()?;
        let local_audio = if config.audio.device {
            Some(start_local_audio(&brain)?)
        } else {
            None
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let state = AppState::new(Arc::clone(&brain), config);
        if local_audio.is_some() {
            // The microphone already feeds the loop: a phone's audio would be mixed into it.
            state.reserve_audio("the local microphone");
        }
        let server = tokio::spawn(server::serve(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Ok(Service {
            brain,
            state,
            _local_audio: local_audio,
            addr,
            stop: Some(stop),
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Voice loop -> face frame written to a phone's socket, per frame and socket.
    pub fn face_latency(&self) -> &creature_actors::histogram::LatencyHistogram {
        self.state.face_latency()
    }

    pub fn brain(&self) -> &Arc<BrainHandle> {
        &self.brain
    }

    /// Run until `shutdown` completes or the brain stops on its own; then stop both.
    /// An error says why the brain stopped, if it was not asked to.
    pub async fn run_until<F: std::future::Future<Output = ()>>(
        mut self,
        shutdown: F,
    ) -> anyhow::Result<()> {
        let brain = Arc::clone(&self.brain);
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down"),
            result = brain.wait() => {
                if let Err(e) = result {
                    tracing::error!(cause = %e, "the brain stopped");
                }
            }
        }
        self.stop_server().await;
        self.brain.stop().await;
        match self.brain.fatal_error() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn stop_server(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(cause = %e, "server error"),
            Err(e) => tracing::error!(cause = %e, "server task failed"),
        }
    }

    /// Stop serving and stop the brain.
    pub async fn shutdown(mut self) {
        self.stop_server().await;
        self.brain.stop().await;
    }
}
