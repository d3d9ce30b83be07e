//! # creature
//!
//! The brain service of a robot creature: a full-duplex voice loop ticking every 80 ms, an
//! inner-monologue watcher that turns what the creature says into physical tasks, a slow
//! reasoner, an affect state machine, and a phone face, all as supervised actors
//! (`creature-actors`). This crate is the service around them: configuration, the HTTP and
//! websocket API, the command line, and the adapters behind the actors' ports.
//!
//! # Layout
//!
//! - [`config`]: the one config file, with defaults in code.
//! - [`service`]: builds the ports from the config, starts the brain, serves the API.
//! - [`schemas`]: the JSON Schemas of every wire message, embedded, with validators.
//! - [`planner_llm`]: the LLM planner behind the `Planner` port (any OpenAI-compatible
//!   endpoint, `do_physical_task` tool calls checked against the schema, rule fallback).
//! - [`server`]: the axum router: JSON API, face and audio websockets, `/metrics`.
//! - [`voice`]: voice backends behind the `VoiceModel` port (the embedded `sim`, ...).
//! - [`store`]: the sled task ledger behind the `TaskStore` port.
//! - [`pairing`]: LAN mode's TLS certificate, the phone URL and its QR code.
//! - [`cli`]: `creature serve`, the client commands, and `creature bench`.
//! - [`bench`]: the fast-loop benchmark.
//! - [`run`]: `creature run`, the whole brain driven from a WAV file, turn by turn.
//! - [`wav`]: reading WAV files (PCM 16/24/32, float) as 24 kHz mono, writing PCM 16.
//! - [`top`]: `creature top`, the terminal view fed by the event stream, and the actor
//!   tree `creature actors` prints.
//! - [`body_sim`]: `creature body-sim`, a reference robot body for demos and tests.
//! - `audio_device` (feature `audio-device`): the local microphone and speaker via cpal.

#[cfg(feature = "audio-device")]
pub mod audio_device;
pub mod bench;
pub mod bench_load;
pub mod body_sim;
pub mod cli;
pub mod config;
pub mod pairing;
pub mod planner_llm;
pub mod run;
pub mod schemas;
pub mod server;
pub mod service;
pub mod store;
pub mod top;
pub mod voice;
pub mod wav;

pub use config::Config;
pub use service::Service;
