//! A tick allocates nothing on the fast loop's threads (the ticker, the loop thread that
//! also runs the face, the model thread), counted by a global allocator that counts only
//! the threads the loop marks (as the binary's `alloc-count` build does). This test binary
//! has the allocator to itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use creature_actors::ports::{MemoryTaskStore, StepOutput, VoiceError, VoiceModel};
use creature_actors::realtime::{
    LoopAllocations, enable_allocation_counting, loop_allocations, note_allocation,
};
use creature_actors::rules::RulePlanner;
use creature_actors::voice::VoiceConfig;
use creature_actors::{BrainConfig, BrainHandle, BrainPorts, FRAME_SAMPLES};
use tracking_allocator::{AllocationGroupId, AllocationRegistry, AllocationTracker, Allocator};

#[global_allocator]
static GLOBAL: Allocator<std::alloc::System> = Allocator::system();

/// Counts what the loop's threads allocate (the realtime module tells them apart).
struct LoopThreads;

impl AllocationTracker for LoopThreads {
    fn allocated(&self, _addr: usize, _size: usize, _wrapped: usize, _group: AllocationGroupId) {
        note_allocation();
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

/// A model that hums (loud enough to move the face's mouth) into the caller's buffer.
struct Hum {
    phase: f32,
}

impl VoiceModel for Hum {
    fn backend(&self) -> &'static str {
        "hum"
    }

    fn step(&mut self, user: &[f32]) -> Result<StepOutput, VoiceError> {
        let mut out = StepOutput {
            agent: vec![0.0; FRAME_SAMPLES],
            text: None,
        };
        self.step_into(user, &mut out)?;
        Ok(out)
    }

    fn step_into(&mut self, _user: &[f32], out: &mut StepOutput) -> Result<(), VoiceError> {
        for sample in out.agent.iter_mut() {
            self.phase += 2.0 * std::f32::consts::PI * 220.0 / 24_000.0;
            *sample = 0.3 * self.phase.sin();
        }
        out.text = None;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), VoiceError> {
        Ok(())
    }
}

async fn ticks_reach(brain: &BrainHandle, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while brain.voice.metrics().ticks.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "timed out waiting for tick {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_allocates_nothing_on_the_loop_threads() {
    AllocationRegistry::set_global_tracker(LoopThreads).expect("the only tracker");
    AllocationRegistry::enable_tracking();
    enable_allocation_counting();
    let config = BrainConfig {
        voice: VoiceConfig {
            realtime_priority: false,
            ..VoiceConfig::default()
        },
        ..BrainConfig::default()
    };
    let ports = BrainPorts {
        model: Box::new(Hum { phase: 0.0 }),
        planner: Arc::new(RulePlanner::default()),
        store: Arc::new(MemoryTaskStore::default()),
    };
    let brain = BrainHandle::start(config, ports)
        .await
        .expect("brain starts");
    // A phone's worth of face traffic: each frame is taken and held a moment, as a socket
    // does while it writes.
    let mut faces = brain.face.subscribe();
    let phone = tokio::spawn(async move {
        while faces.changed().await.is_ok() {
            let update = faces.borrow_and_update().clone();
            tokio::time::sleep(Duration::from_millis(2)).await;
            drop(update);
        }
    });

    // Warm up: pools fill, the first backend status is built (the test never asks for
    // another: reading the report would).
    let warm = 20;
    ticks_reach(&brain, warm).await;
    let before = loop_allocations().expect("this binary counts");
    ticks_reach(&brain, warm + 25).await;
    let after = loop_allocations().expect("this binary counts");
    let steps = brain.voice.metrics().steps.load(Ordering::Relaxed);

    phone.abort();
    brain.stop().await;
    assert!(
        steps >= warm + 20,
        "the model stepped along ({steps} steps)"
    );
    assert_eq!(
        after.since(&before),
        LoopAllocations::default(),
        "allocations on the loop's threads over 25 ticks"
    );
}
