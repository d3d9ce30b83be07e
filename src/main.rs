//! The `creature` binary: a thin shell around [`creature::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    // The async workers carry the face fan-out and the API: they get the highest normal
    // priority (best effort). The fast loop's own threads ask for more (see
    // `creature_actors::realtime`); CPU-heavy background work asks for less.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("creature-worker")
        .on_thread_start(|| {
            creature_actors::realtime::raise_current_thread("async-worker");
        })
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(creature::cli::main()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
