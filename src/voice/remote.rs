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

use creature_actors::config_duration::millis;
use creature_actors::{VoiceError, VoiceModel};
use serde::Deserialize;

use crate::config::ConfigError;

/// The backend's name as the API reports it.
pub const BACKEND: &str = "moshi-remote";

/// Settings of the remote backend: `[voice.remote]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// The Moshi server's `/api/chat` websocket (ws:// only: this build has no TLS client),
    /// without the sampling settings.
    pub url: String,
    // Sampled by the server; sent in the query string under these names (as Kyutai's
    // servers read them). Defaults are those of Kyutai's web client. Plain keys of the
    // section (no flattened struct), so a bad value's error names its key.
    pub text_temperature: f64,
    pub text_topk: u32,
    pub audio_temperature: f64,
    pub audio_topk: u32,
    /// Bias against the text pad token (0 leaves it alone).
    pub pad_mult: f32,
    pub repetition_penalty_context: u32,
    pub repetition_penalty: f32,
    /// `None`: the server picks a random seed.
    pub text_seed: Option<u64>,
    pub audio_seed: Option<u64>,
    /// Longest wait for the socket, and then for the server's handshake.
    #[serde(rename = "connect_timeout_ms", deserialize_with = "millis")]
    pub connect_timeout: Duration,
    /// Reconnect backoff: starts at the minimum, doubles up to the maximum.
    #[serde(rename = "backoff_min_ms", deserialize_with = "millis")]
    pub backoff_min: Duration,
    #[serde(rename = "backoff_max_ms", deserialize_with = "millis")]
    pub backoff_max: Duration,
    /// A connected server silent this long is considered gone.
    #[serde(rename = "idle_timeout_ms", deserialize_with = "millis")]
    pub idle_timeout: Duration,
    /// Most agent audio held for playout, in 80 ms frames (beyond: the oldest is dropped).
    pub jitter_buffer_frames: usize,
    /// Agent audio gathered before playing starts (again), in 80 ms frames.
    pub prefill_frames: usize,
    /// User frames waiting for the socket (beyond: new frames are dropped and counted).
    pub send_queue_frames: usize,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            url: "ws://127.0.0.1:8998/api/chat".into(),
            text_temperature: 0.7,
            text_topk: 25,
            audio_temperature: 0.8,
            audio_topk: 250,
            pad_mult: 0.0,
            repetition_penalty_context: 64,
            repetition_penalty: 1.0,
            text_seed: None,
            audio_seed: None,
            connect_timeout: Duration::from_millis(5_000),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_millis(10_000),
            idle_timeout: Duration::from_millis(10_000),
            jitter_buffer_frames: 8,
            prefill_frames: 1,
            send_queue_frames: 4,
        }
    }
}

impl RemoteConfig {
    /// Refuse values the remote backend cannot run with, naming the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.url.starts_with("wss://") {
            return invalid(
                "voice.remote.url",
                "wss:// needs TLS, which this build's websocket client lacks; use ws:// (a TLS proxy or an SSH tunnel can carry it)".into(),
            );
        }
        if !self.url.starts_with("ws://") || self.url.len() <= "ws://".len() {
            return invalid(
                "voice.remote.url",
                format!("{:?} is not a ws:// URL", self.url),
            );
        }
        for (key, t) in [
            ("voice.remote.text_temperature", self.text_temperature),
            ("voice.remote.audio_temperature", self.audio_temperature),
        ] {
            if !(t.is_finite() && (0.0..=10.0).contains(&t)) {
                return invalid(key, format!("{t} is outside 0..10"));
            }
        }
        for (key, k) in [
            ("voice.remote.text_topk", self.text_topk),
            ("voice.remote.audio_topk", self.audio_topk),
        ] {
            if k == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        if !self.pad_mult.is_finite() {
            return invalid(
                "voice.remote.pad_mult",
                format!("{} is not a number", self.pad_mult),
            );
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return invalid(
                "voice.remote.repetition_penalty",
                format!("{} is not positive", self.repetition_penalty),
            );
        }
        const HOUR_MS: u128 = 3_600_000;
        for (key, d) in [
            ("voice.remote.connect_timeout_ms", self.connect_timeout),
            ("voice.remote.backoff_min_ms", self.backoff_min),
            ("voice.remote.backoff_max_ms", self.backoff_max),
            ("voice.remote.idle_timeout_ms", self.idle_timeout),
        ] {
            let ms = d.as_millis();
            if !(1..=HOUR_MS).contains(&ms) {
                return invalid(key, format!("{ms} is outside 1..{HOUR_MS} ms"));
            }
        }
        if self.backoff_max < self.backoff_min {
            return invalid(
                "voice.remote.backoff_max_ms",
                "must not be below voice.remote.backoff_min_ms".into(),
            );
        }
        if !(2..=250).contains(&self.jitter_buffer_frames) {
            return invalid(
                "voice.remote.jitter_buffer_frames",
                format!("{} is outside 2..250", self.jitter_buffer_frames),
            );
        }
        if !(1..=self.jitter_buffer_frames).contains(&self.prefill_frames) {
            return invalid(
                "voice.remote.prefill_frames",
                format!(
                    "{} is outside 1..jitter_buffer_frames ({})",
                    self.prefill_frames, self.jitter_buffer_frames
                ),
            );
        }
        if !(1..=250).contains(&self.send_queue_frames) {
            return invalid(
                "voice.remote.send_queue_frames",
                format!("{} is outside 1..250", self.send_queue_frames),
            );
        }
        Ok(())
    }
}

/// Start the remote backend: check the settings and start the network thread. It connects
/// in the background; a server that is down is not an error here.
pub fn build(config: &RemoteConfig) -> Result<Box<dyn VoiceModel>, VoiceError> {
    config
        .check()
        .map_err(|e| VoiceError::Input(e.to_string()))?;
    #[cfg(feature = "opus")]
    {
        Ok(Box::new(RemoteVoice::start(config.clone())?))
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
            let session_url = wire::session_url(&config.url, &config);
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
            let mut out = StepOutput::silence();
            self.step_into(user, &mut out)?;
            Ok(out)
        }

        /// Plays out into the loop's buffer. The user frame still goes up as a buffer of
        /// its own (the network thread owns it while it encodes), one allocation a step.
        fn step_into(&mut self, user: &[f32], out: &mut StepOutput) -> Result<(), VoiceError> {
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
            out.agent.resize(FRAME_SAMPLES, 0.0);
            self.playout.next_frame(&mut out.agent);
            out.text = self.playout.next_piece();
            Ok(())
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

    fn build_error(config: &RemoteConfig) -> String {
        match build(config) {
            Ok(_) => panic!("the backend started"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_settings_are_refused_naming_the_key() {
        let config = RemoteConfig {
            url: "wss://gpu/api/chat".into(),
            ..Default::default()
        };
        assert!(build_error(&config).contains("voice.remote.url"));
        let config = RemoteConfig {
            backoff_min: Duration::ZERO,
            ..Default::default()
        };
        assert!(build_error(&config).contains("voice.remote.backoff_min_ms"));
    }

    #[test]
    fn the_config_keys_are_durations_and_sampling() {
        let c: RemoteConfig = toml::from_str("text_seed = 3\nbackoff_min_ms = 250\n").unwrap();
        assert_eq!(c.backoff_min, Duration::from_millis(250));
        assert_eq!(c.backoff_max, Duration::from_secs(10));
        assert_eq!(c.text_seed, Some(3));
        assert_eq!(c.audio_topk, 250);
        let err = toml::from_str::<RemoteConfig>("text_temperature = \"hot\"\n").unwrap_err();
        assert!(err.to_string().contains("text_temperature"), "{err}");
        let err = toml::from_str::<RemoteConfig>("audio_top_k = 3\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `audio_top_k`"),
            "{err}"
        );
    }

    #[cfg(not(feature = "opus"))]
    #[test]
    fn without_opus_the_backend_says_how_to_get_it() {
        let err = build_error(&RemoteConfig::default());
        assert!(
            err.contains("moshi-remote") && err.contains("--features opus"),
            "{err}"
        );
    }
}
