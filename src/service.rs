//! Assembling the brain from the config: pick the voice backend, open the ledger, start
//! the actor tree, and serve the API. `creature serve`, the benchmarks and the integration
//! tests all start the service through here, so they run the same thing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use creature_actors::rules::RulePlanner;
use creature_actors::{BrainHandle, BrainPorts, Planner, VoiceModel};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Config, PlannerKind, ServerConfig};
use crate::pairing::{self, CertNames, Pairing, TlsFiles};
use crate::planner_llm::LlmPlanner;
use crate::server::names;
use crate::server::{self, AppState, CloseReason, LinkTiming, SessionEnd};
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

/// Where to listen: `[server] addr`, except that LAN mode with the default loopback address
/// listens on every interface (on the same port).
pub fn bind_addr(server: &ServerConfig) -> SocketAddr {
    if server.lan && server.addr.ip().is_loopback() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), server.addr.port())
    } else {
        server.addr
    }
}

/// The certificate to serve: `[server] tls_cert`/`tls_key` when set (with or without LAN
/// mode), else in LAN mode the self-signed one in `<data_dir>/tls/` (made or renewed for
/// this machine's current names); none (plain HTTP) otherwise.
fn tls_files(config: &Config) -> anyhow::Result<Option<TlsFiles>> {
    let server = &config.server;
    match (&server.tls_cert, &server.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            generated: false,
        })),
        (Some(_), None) => anyhow::bail!("[server] tls_cert is set without tls_key (--tls-key)"),
        (None, Some(_)) => anyhow::bail!("[server] tls_key is set without tls_cert (--tls-cert)"),
        (None, None) if server.lan => {
            let names = CertNames::for_machine(&names::local_names(), &server.allowed_hosts);
            let files =
                pairing::ensure_self_signed(&config.data_dir, &names).with_context(|| {
                    format!(
                        "cannot keep a TLS certificate in {}",
                        config.data_dir.join(pairing::TLS_DIR).display()
                    )
                })?;
            Ok(Some(files))
        }
        (None, None) => Ok(None),
    }
}

/// A running brain with its API on a socket.
pub struct Service {
    brain: Arc<BrainHandle>,
    /// What the API's handlers share (for figures only the server side measures).
    state: AppState,
    /// The local microphone and speaker, when `[audio] device = true`; dropping stops them.
    _local_audio: Option<Box<dyn std::any::Any + Send>>,
    addr: SocketAddr,
    /// The certificate and key served, when serving HTTPS.
    tls: Option<TlsFiles>,
    /// The phone links `/api/pair` and the banner show.
    pairing: Arc<Pairing>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Service {
    /// Start the brain and serve the API on `config.server.addr` (port 0 picks a free one).
    pub async fn start(config: Config) -> anyhow::Result<Service> {
        let brain = start_brain(&config).await?;
        Self::serve(config, brain).await
    }

    /// Start the brain and serve the API on `bind` (`serve --lan --addr`).
    pub async fn start_on(config: Config, bind: SocketAddr) -> anyhow::Result<Service> {
        let brain = start_brain(&config).await?;
        Self::serve_on(config, brain, bind).await
    }

    /// Serve the API for an already started brain, on the address [`bind_addr`] picks.
    pub async fn serve(config: Config, brain: Arc<BrainHandle>) -> anyhow::Result<Service> {
        let bind = bind_addr(&config.server);
        Self::serve_on(config, brain, bind).await
    }

    /// Serve the API for an already started brain on `bind` (`--lan --addr` given).
    pub async fn serve_on(
        mut config: Config,
        brain: Arc<BrainHandle>,
        bind: SocketAddr,
    ) -> anyhow::Result<Service> {
        // Certificate problems are the operator's to fix: say so before taking the port.
        let tls = tls_files(&config)?;
        let tls_config = match &tls {
            Some(files) => Some(pairing::server_config(&files.cert, &files.key)?),
            None => None,
        };
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on {bind}"))?;
        let addr = listener.local_addr()?;
        // What the handlers and the Host allow-list see is where we really listen.
        config.server.addr = addr;
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
        let pairing = Arc::new(Pairing::new(
            addr,
            tls.is_some(),
            &names::local_names(),
            state.access_token(),
        ));
        let server = tokio::spawn(server::serve(
            listener,
            state.clone(),
            tls_config,
            Some(Arc::clone(&pairing)),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Service {
            brain,
            state,
            _local_audio: local_audio,
            addr,
            tls,
            pairing,
            stop: Some(stop),
            server,
        })
    }

    /// The base URL that reaches the API from this machine, e.g. `https://127.0.0.1:8443`
    /// (loopback when listening on all interfaces).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv6() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!("{scheme}://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The certificate served over HTTPS (the one to trust or pin), if serving HTTPS.
    pub fn cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|files| files.cert.as_path())
    }

    /// The TLS certificate and key served, and whether this start made them.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The phone links (with the token in the fragment when auth is on).
    pub fn pairing(&self) -> &Pairing {
        &self.pairing
    }

    /// The access token, when auth is on or one is configured.
    pub fn access_token(&self) -> Option<&str> {
        self.state.access_token()
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
        self.stop_brain().await;
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

    /// Stop the brain, which ends every websocket session with a close frame (1001, "the
    /// brain is stopping"), and wait for the sessions to finish saying so.
    async fn stop_brain(&self) {
        self.brain.stop().await;
        // Each session gives its goodbye a bounded time; a little more for all of them.
        let timing = LinkTiming::from_config(&self.state.config().server);
        let within = server::goodbye_within(SessionEnd::Closed(CloseReason::Shutdown), timing)
            + std::time::Duration::from_secs(1);
        if !self.state.sessions_closed(within).await {
            tracing::warn!(
                open = self.state.open_sessions(),
                "websocket sessions still open after the brain stopped"
            );
        }
    }

    /// Stop serving and stop the brain; every websocket session is closed with a reason.
    pub async fn shutdown(mut self) {
        self.stop_server().await;
        self.stop_brain().await;
    }
}
