//! `moshi-remote`: the voice model is a Kyutai Moshi server, reached over its `/api/chat`
//! websocket ([`wire`]) with Ogg/Opus audio both ways. `step` hands the user's frame to the
//! connection and takes whatever agent audio and text have arrived; it never waits on the
//! network. While the server is unreachable the creature stays up and silent, the link
//! reconnects with exponential backoff, and `status()` (under `/api/state` `voice.model`)
//! says where it is. Kyutai's servers end a session after a few minutes (the Rust one at
//! 360 s); the link then reconnects after the shortest backoff, and the conversation starts
//! afresh.
//!
//! # Threads
//!
//! The connection runs on the backend's own OS thread (`moshi-remote`) with a
//! single-threaded tokio runtime, rather than on the service's runtime. The voice path then
//! never queues behind the slow loop's work on the shared workers, the backend works
//! whatever runtime (if any) builds it, and its lifetime is plain: dropping the backend
//! signals the thread and joins it. No task is spawned; one future per session drives the
//! upload and the download together.
//!
//! # Layout
//!
//! - [`wire`]: the message kinds, their parsing, and the session URL with its sampling
//!   settings.
//! - `link`: the network thread: connect, handshake, stream, reconnect.
//! - `playout`: the step's jitter buffer and text queue.
//!
//! Without the `opus` cargo feature (libopus) the backend compiles, but [`build`] refuses.

pub mod wire;

#[cfg(feature = "opus")]
mod link;
#[cfg(feature = "opus")]
mod playout;

use std::time::Duration;

use creature_actors::{VoiceError, VoiceModel};

use crate::config::RemoteSection;
use wire::SamplingParams;

/// The backend's name as the API reports it.
pub const BACKEND: &str = "moshi-remote";

/// Settings of the remote backend (from `[voice.remote]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// The server's `/api/chat` URL, without the sampling settings.
    pub url: String,
    pub sampling: SamplingParams,
    /// Longest wait for the socket, and then for the handshake.
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A connected server silent this long is considered gone.
    pub idle_timeout: Duration,
    /// Most agent audio held, in 80 ms frames.
    pub jitter_buffer_frames: usize,
    /// Agent audio gathered before playing, in 80 ms frames.
    pub prefill_frames: usize,
    /// User frames waiting for the socket.
    pub send_queue_frames: usize,
}

impl RemoteConfig {
    /// The settings of a checked `[voice.remote]` section.
    pub fn from_section(s: &RemoteSection) -> Self {
        let ms = |v: u64| Duration::from_millis(v.max(1));
        RemoteConfig {
            url: s.url.clone(),
            sampling: SamplingParams {
                text_temperature: s.text_temperature,
                text_topk: s.text_topk,
                audio_temperature: s.audio_temperature,
                audio_topk: s.audio_topk,
                pad_mult: s.pad_mult,
                repetition_penalty_context: s.repetition_penalty_context,
                repetition_penalty: s.repetition_penalty,
                text_seed: s.text_seed,
                audio_seed: s.audio_seed,
            },
            connect_timeout: ms(s.connect_timeout_ms),
            backoff_min: ms(s.backoff_min_ms),
            backoff_max: ms(s.backoff_max_ms.max(s.backoff_min_ms)),
            idle_timeout: ms(s.idle_timeout_ms),
            jitter_buffer_frames: s.jitter_buffer_frames,
            prefill_frames: s.prefill_frames,
            send_queue_frames: s.send_queue_frames.max(1),
        }
    }
}

/// Start the remote backend: check the settings and start the network thread. It connects
/// in the background; a server that is down is not an error here.
pub fn build(section: &RemoteSection) -> Result<Box<dyn VoiceModel>, VoiceError> {
    section
        .check()
        .map_err(|e| VoiceError::Input(e.to_string()))?;
    #[cfg(feature = "opus")]
    {
        Ok(Box::new(RemoteVoice::start(RemoteConfig::from_section(
            section,
        ))?))
    }
    #[cfg(not(feature = "opus"))]
    {
        Err(VoiceError::Unsupported {
            backend: BACKEND,
            what:
                "this build has no Opus support; rebuild with --features opus (needs libopus-dev)"
                    .into(),
        })
    }
}

#[cfg(feature = "opus")]
pub use backend::RemoteVoice;

#[cfg(feature = "opus")]
mod backend {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc::{self, Receiver};
    use std::thread::JoinHandle;

    use creature_actors::{FRAME_SAMPLES, StepOutput, VoiceError, VoiceModel};
    use tokio::sync::{mpsc as tokio_mpsc, watch};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use super::link::{Downlink, DownlinkEvent, Link, LinkShared};
    use super::playout::Playout;
    use super::{BACKEND, RemoteConfig, wire};

    /// Downlink messages (decoded packets and pieces) in flight to the step, beyond what the
    /// jitter buffer holds: about a second of 40 ms packets.
    const DOWNLINK_MESSAGES: usize = 32;

    /// The `moshi-remote` voice model: the step side of the link.
    pub struct RemoteVoice {
        config: RemoteConfig,
        shared: Arc<LinkShared>,
        /// User frames to the network thread (bounded; full means dropped and counted).
        uplink: tokio_mpsc::Sender<Vec<f32>>,
        /// Agent audio and text from the network thread.
        downlink: Receiver<Downlink>,
        playout: Playout,
        /// The session whose audio the playout holds.
        playing_session: u64,
        audio_in_dropped: u64,
        /// Tells the network thread to stop (on drop).
        shutdown: watch::Sender<bool>,
        /// Bumped by `reset()`: the network thread ends the session and reconnects.
        reset: watch::Sender<u64>,
        thread: Option<JoinHandle<()>>,
    }

    impl std::fmt::Debug for RemoteVoice {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RemoteVoice")
                .field("server", &self.config.url)
                .finish()
        }
    }

    impl RemoteVoice {
        /// Start the network thread; it connects in the background.
        pub fn start(config: RemoteConfig) -> Result<Self, VoiceError> {
            let session_url = wire::session_url(&config.url, &config.sampling);
            session_url.as_str().into_client_request().map_err(|e| {
                VoiceError::Input(format!(
                    "voice.remote.url {:?} is not usable: {e}",
                    config.url
                ))
            })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    VoiceError::Model(format!(
                        "cannot start the moshi-remote network runtime: {e}"
                    ))
                })?;
            let shared = Arc::new(LinkShared::default());
            let (uplink, uplink_rx) = tokio_mpsc::channel(config.send_queue_frames);
            let (downlink_tx, downlink) = mpsc::sync_channel(DOWNLINK_MESSAGES);
            let (shutdown, shutdown_rx) = watch::channel(false);
            let (reset, reset_rx) = watch::channel(0u64);
            let link = Link {
                config: config.clone(),
                session_url,
                shared: Arc::clone(&shared),
                uplink: uplink_rx,
                downlink: downlink_tx,
                shutdown: shutdown_rx,
                reset: reset_rx,
            };
            let thread = std::thread::Builder::new()
                .name("moshi-remote".into())
                .spawn(move || runtime.block_on(link.run()))
                .map_err(|e| {
                    VoiceError::Model(format!("cannot start the moshi-remote network thread: {e}"))
                })?;
            Ok(RemoteVoice {
                playout: Playout::new(config.jitter_buffer_frames, config.prefill_frames),
                config,
                shared,
                uplink,
                downlink,
                playing_session: 0,
                audio_in_dropped: 0,
                shutdown,
                reset,
                thread: Some(thread),
            })
        }

        /// Move what the network thread delivered into the playout, keeping only the live
        /// session's output.
        fn collect(&mut self) {
            let live = self.shared.live_session.load(Ordering::Relaxed);
            if live != self.playing_session {
                self.playout.clear();
                self.playing_session = live;
            }
            while let Ok(Downlink { session, event }) = self.downlink.try_recv() {
                if session != live {
                    continue;
                }
                match event {
                    DownlinkEvent::Audio(pcm) => self.playout.push_audio(&pcm),
                    DownlinkEvent::Piece(piece) => self.playout.push_piece(piece),
                }
            }
        }
    }

    impl VoiceModel for RemoteVoice {
        fn backend(&self) -> &'static str {
            BACKEND
        }

        fn step(&mut self, user: &[f32]) -> Result<StepOutput, VoiceError> {
            if user.len() != FRAME_SAMPLES {
                return Err(VoiceError::Input(format!(
                    "a user frame holds {FRAME_SAMPLES} samples, got {}",
                    user.len()
                )));
            }
            // User audio goes up only while a session is live: the server starts each
            // session afresh, so what is said while disconnected is not worth queueing.
            if self.shared.live_session.load(Ordering::Relaxed) != 0
                && self.uplink.try_send(user.to_vec()).is_err()
            {
                self.audio_in_dropped += 1;
            }
            self.collect();
            let mut agent = vec![0.0; FRAME_SAMPLES];
            self.playout.next_frame(&mut agent);
            Ok(StepOutput {
                agent,
                text: self.playout.next_piece(),
            })
        }

        fn reset(&mut self) -> Result<(), VoiceError> {
            self.playout.clear();
            self.reset.send_modify(|epoch| *epoch += 1);
            Ok(())
        }

        fn status(&self) -> serde_json::Value {
            let s = &self.shared;
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let notes = s.notes();
            let state = s.state();
            let frame = FRAME_SAMPLES as u64;
            let out_dropped_samples =
                self.playout.dropped_samples + load(&s.downlink_dropped_samples);
            serde_json::json!({
                "connected": state == super::link::LinkState::Connected,
                "state": state.as_str(),
                "server": self.config.url,
                "sessions": load(&s.sessions),
                "reconnects": load(&s.sessions).saturating_sub(1),
                "connect_attempts": load(&s.connect_attempts),
                "connect_failures": load(&s.connect_failures),
                "disconnects": load(&s.disconnects),
                "malformed_messages": load(&s.malformed_messages),
                "server_errors": load(&s.server_errors),
                "last_error": notes.last_error,
                "last_server_error": notes.last_server_error,
                "backoff_ms": load(&s.backoff_ms),
                "frames_sent": load(&s.frames_sent),
                "frames_played": self.playout.frames_played,
                "underruns": self.playout.underruns,
                "buffered_ms": self.playout.buffered_ms(),
                "audio_in_dropped": self.audio_in_dropped,
                "audio_out_dropped": out_dropped_samples.div_ceil(frame),
                "pieces_received": self.playout.pieces_received,
                "text_dropped": self.playout.pieces_dropped + load(&s.downlink_dropped_pieces),
                "server_metadata": notes.metadata,
            })
        }
    }

    impl Drop for RemoteVoice {
        fn drop(&mut self) {
            self.shutdown.send_replace(true);
            if let Some(thread) = self.thread.take() {
                if thread.join().is_err() {
                    tracing::error!(server = %self.config.url, "the moshi-remote network thread panicked");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_error(section: &RemoteSection) -> String {
        match build(section) {
            Ok(_) => panic!("the backend started"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_settings_are_refused_naming_the_key() {
        let section = RemoteSection {
            url: "wss://gpu/api/chat".into(),
            ..Default::default()
        };
        assert!(build_error(&section).contains("voice.remote.url"));
        let section = RemoteSection {
            backoff_min_ms: 0,
            ..Default::default()
        };
        assert!(build_error(&section).contains("voice.remote.backoff_min_ms"));
    }

    #[test]
    fn the_config_section_maps_to_durations_and_sampling() {
        let c = RemoteConfig::from_section(&RemoteSection {
            text_seed: Some(3),
            ..Default::default()
        });
        assert_eq!(c.backoff_min, Duration::from_millis(500));
        assert_eq!(c.backoff_max, Duration::from_secs(10));
        assert_eq!(c.sampling.text_seed, Some(3));
        assert_eq!(c.sampling.audio_topk, 250);
    }

    #[cfg(not(feature = "opus"))]
    #[test]
    fn without_opus_the_backend_says_how_to_get_it() {
        let err = build_error(&RemoteSection::default());
        assert!(
            err.contains("moshi-remote") && err.contains("--features opus"),
            "{err}"
        );
    }
}
