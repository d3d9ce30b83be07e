//! `BrainHandle::stop`: whoever serves on the brain hears of it first, and the voice
//! model's thread (which holds the weights) is joined, not left running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use creature_actors::ports::{MemoryTaskStore, StepOutput, VoiceError, VoiceModel};
use creature_actors::rules::RulePlanner;
use creature_actors::{BrainConfig, BrainHandle, BrainPorts, FRAME_SAMPLES};

/// A silent model that says when it is dropped: on its thread, as the thread ends.
struct Quiet {
    dropped: Arc<AtomicBool>,
}

impl Drop for Quiet {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

impl VoiceModel for Quiet {
    fn backend(&self) -> &'static str {
        "quiet"
    }
    fn step(&mut self, _: &[f32]) -> Result<StepOutput, VoiceError> {
        Ok(StepOutput {
            agent: vec![0.0; FRAME_SAMPLES],
            text: None,
        })
    }
    fn reset(&mut self) -> Result<(), VoiceError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_signals_the_sessions_and_joins_the_model_thread() {
    let dropped = Arc::new(AtomicBool::new(false));
    let ports = BrainPorts {
        model: Box::new(Quiet {
            dropped: Arc::clone(&dropped),
        }),
        planner: Arc::new(RulePlanner::default()),
        store: Arc::new(MemoryTaskStore::default()),
    };
    let brain = BrainHandle::start(BrainConfig::default(), ports)
        .await
        .unwrap();
    let stopping = tokio::spawn(brain.stopping());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "no stop yet");
    assert!(!brain.is_stopping());
    assert!(!brain.model_thread_joined());

    brain.stop().await;
    tokio::time::timeout(Duration::from_secs(1), stopping)
        .await
        .expect("the stopping signal fired")
        .unwrap();
    assert!(brain.is_stopping());
    assert!(brain.model_thread_joined(), "stop returns after the join");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the model went with its thread"
    );
    // A second stop is harmless.
    brain.stop().await;
}
