//! The `creature` binary: a thin shell around [`creature::cli`].

use std::process::ExitCode;

/// Counts allocations on the fast loop's threads (see `creature_actors::realtime`), in a
/// build with `--features alloc-count`. The tracker only bumps an atomic for threads marked
/// as the loop's, and never allocates itself.
#[cfg(feature = "alloc-count")]
mod alloc_count {
    use tracking_allocator::{AllocationGroupId, AllocationRegistry, AllocationTracker, Allocator};

    #[global_allocator]
    static GLOBAL: Allocator<std::alloc::System> = Allocator::system();

    struct LoopThreads;

    impl AllocationTracker for LoopThreads {
        fn allocated(
            &self,
            _addr: usize,
            _size: usize,
            _wrapped: usize,
            _group: AllocationGroupId,
        ) {
            creature_actors::realtime::note_allocation();
        }

        fn deallocated(
            &self,
            _addr: usize,
            _size: usize,
            _wrapped: usize,
            _source: AllocationGroupId,
            _current: AllocationGroupId,
        ) {
        }
    }

    pub(crate) fn install() {
        if AllocationRegistry::set_global_tracker(LoopThreads).is_ok() {
            AllocationRegistry::enable_tracking();
            creature_actors::realtime::enable_allocation_counting();
        }
    }
}

fn main() -> ExitCode {
    #[cfg(feature = "alloc-count")]
    alloc_count::install();
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
