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

use crate::config::Config;
use crate::server::{self, AppState};
use crate::store::SledTaskStore;
use crate::voice;

/// Start the actor tree on the configured ports.
pub async fn start_brain(config: &Config) -> anyhow::Result<Arc<BrainHandle>> {
    let model = voice::build(config).context("cannot start the voice model")?;
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
    let store = SledTaskStore::open(&ledger).with_context(|| format!("cannot open the task ledger in {}", ledger.display()))?;
    let planner = planner.unwrap_or_else(|| {
        Arc::new(RulePlanner { min_confidence: config.reasoner.min_confidence, ..RulePlanner::default() })
    });
    let ports = BrainPorts { model, planner, store: Arc::new(store) };
    let brain = BrainHandle::start(brain_config, ports).await?;
    Ok(Arc::new(brain))
}

/// A running brain with its API on a socket.
pub struct Service {
    brain: Arc<BrainHandle>,
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
        let (stop, stopped) = oneshot::channel::<()>();
        let state = AppState::new(Arc::clone(&brain), config);
        let server = tokio::spawn(server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Ok(Service { brain, addr, stop: Some(stop), server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn brain(&self) -> &Arc<BrainHandle> {
        &self.brain
    }

    /// Run until `shutdown` completes or the brain stops on its own; then stop both.
    /// An error says why the brain stopped, if it was not asked to.
    pub async fn run_until<F: std::future::Future<Output = ()>>(mut self, shutdown: F) -> anyhow::Result<()> {
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
