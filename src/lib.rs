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
//! - [`server`]: the axum router: JSON API, face and audio websockets, `/metrics`.
//! - [`voice`]: voice backends behind the `VoiceModel` port (the embedded `sim`, ...).
//! - [`store`]: the sled task ledger behind the `TaskStore` port.
//! - [`cli`]: `creature serve`, the client commands, and `creature bench`.
//! - [`bench`]: the fast-loop benchmark.

pub mod bench;
pub mod cli;
pub mod config;
pub mod schemas;
pub mod server;
pub mod service;
pub mod store;
pub mod voice;

pub use config::Config;
pub use service::Service;
