//! The `creature` binary: a thin shell around [`creature::cli`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    creature::cli::main().await
}
