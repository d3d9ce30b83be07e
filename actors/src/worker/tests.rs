//! The model thread on its own, with scripted models: a panic inside `step` is caught,
//! reported with its message and followed by a reset, and the thread goes on stepping;
//! results come back one per request, in order, with their buffers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, channel};

use super::*;
use crate::ports::VoiceError;

/// What a scripted model does on one step.
#[derive(Clone)]
enum Act {
    /// Answer with the first user sample as the agent's level and `text`.
    Echo,
    /// Panic with this message (a `String` payload).
    Panic(String),
    /// Panic with a `&'static str` payload.
    PanicStr,
    /// Fail with an error.
    Fail,
    /// Answer with too few samples.
    Short,
}

/// A model that follows a script, one act per step (then echoes), and counts resets.
struct Scripted {
    script: Vec<Act>,
    steps: usize,
    resets: Arc<AtomicU32>,
    reset_fails: bool,
}

impl Scripted {
    fn new(script: Vec<Act>) -> (Self, Arc<AtomicU32>) {
        let resets = Arc::new(AtomicU32::new(0));
        let model = Scripted {
            script,
            steps: 0,
            resets: Arc::clone(&resets),
            reset_fails: false,
        };
        (model, resets)
    }
}

impl VoiceModel for Scripted {
    fn backend(&self) -> &'static str {
        "scripted"
    }

    fn step(&mut self, user: &[f32]) -> Result<StepOutput, VoiceError> {
        let act = self.script.get(self.steps).cloned().unwrap_or(Act::Echo);
        self.steps += 1;
        match act {
            Act::Echo => Ok(StepOutput {
                agent: vec![user[0]; FRAME_SAMPLES],
                text: Some(format!("step {}", self.steps)),
            }),
            Act::Panic(why) => panic!("{why}"),
            Act::PanicStr => panic!("a static panic"),
            Act::Fail => Err(VoiceError::Model("scripted failure".into())),
            Act::Short => Ok(StepOutput {
                agent: vec![0.5; 10],
                text: None,
            }),
        }
    }

    fn reset(&mut self) -> Result<(), VoiceError> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        if self.reset_fails {
            Err(VoiceError::Model("cannot reset".into()))
        } else {
            Ok(())
        }
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "steps": self.steps })
    }
}

fn worker(model: Scripted) -> (ModelWorker, Receiver<StepDone>) {
    let (tx, rx) = channel();
    let worker = ModelWorker::spawn(
        Box::new(model),
        || {},
        move |done| {
            let _ = tx.send(done);
        },
    )
    .unwrap();
    (worker, rx)
}

/// A frame whose every sample is `level`, so the result says which frame it came from.
fn request(tick: u64, level: f32) -> StepRequest {
    StepRequest {
        tick,
        user: vec![level; FRAME_SAMPLES],
        heard: Vec::new(),
        out: StepOutput::silence(),
        want_status: false,
    }
}

const WAIT: Duration = Duration::from_secs(5);

/// Submit one frame and wait for its result.
fn step(worker: &ModelWorker, rx: &Receiver<StepDone>, tick: u64) -> StepDone {
    worker
        .try_submit(request(tick, tick as f32 / 100.0))
        .unwrap();
    rx.recv_timeout(WAIT).expect("a result")
}

#[test]
fn a_model_that_panics_mid_step_is_caught_reported_and_reset() {
    let (model, resets) = Scripted::new(vec![Act::Echo, Act::Panic("tensor on fire".into())]);
    let (mut worker, rx) = worker(model);

    let ok = step(&worker, &rx, 1);
    assert!(ok.error.is_none(), "{:?}", ok.error);
    assert_eq!(resets.load(Ordering::SeqCst), 0);

    let panicked = step(&worker, &rx, 2);
    assert_eq!(panicked.tick, 2, "the result of the step that panicked");
    assert_eq!(
        panicked.error.as_deref(),
        Some("model panicked: tensor on fire; state reset")
    );
    assert_eq!(
        resets.load(Ordering::SeqCst),
        1,
        "reset once, after the panic"
    );
    assert_eq!(panicked.output.agent, vec![0.0; FRAME_SAMPLES], "silence");
    assert_eq!(panicked.output.text, None);
    assert_eq!(panicked.user.len(), FRAME_SAMPLES, "the buffer comes back");
    assert!(panicked.status.is_some(), "an error brings a fresh status");

    // The thread (and the weights) survived: the next step runs as normal.
    let after = step(&worker, &rx, 3);
    assert!(after.error.is_none(), "{:?}", after.error);
    assert_eq!(after.output.agent[0], 0.03);
    assert_eq!(after.output.text.as_deref(), Some("step 3"));
    assert_eq!(resets.load(Ordering::SeqCst), 1);
    worker.shutdown();
}

#[test]
fn a_panic_with_a_static_message_and_a_failing_reset_are_both_reported() {
    let (mut model, resets) = Scripted::new(vec![Act::PanicStr]);
    model.reset_fails = true;
    let (mut worker, rx) = worker(model);
    let done = step(&worker, &rx, 1);
    assert_eq!(
        done.error.as_deref(),
        Some(
            "model panicked: a static panic; state reset; \
             reset after panic failed: model step failed: cannot reset"
        )
    );
    assert_eq!(resets.load(Ordering::SeqCst), 1);
    assert!(step(&worker, &rx, 2).error.is_none(), "still stepping");
    worker.shutdown();
}

#[test]
fn a_failed_or_short_step_is_reported_without_a_reset() {
    let (model, resets) = Scripted::new(vec![Act::Fail, Act::Short]);
    let (mut worker, rx) = worker(model);
    let failed = step(&worker, &rx, 1);
    assert_eq!(
        failed.error.as_deref(),
        Some("model step failed: scripted failure")
    );
    assert_eq!(failed.output.agent, vec![0.0; FRAME_SAMPLES]);
    let short = step(&worker, &rx, 2);
    assert_eq!(
        short.error.as_deref(),
        Some(&*format!(
            "model returned 10 samples instead of {FRAME_SAMPLES}; padded"
        ))
    );
    assert_eq!(short.output.agent.len(), FRAME_SAMPLES);
    assert_eq!(short.output.agent[..10], [0.5; 10]);
    assert_eq!(resets.load(Ordering::SeqCst), 0, "only a panic resets");
    worker.shutdown();
}

#[test]
fn results_come_back_in_order_each_with_its_own_frame() {
    // Every third step panics, so recovery is in the sequence too.
    let script = (0..30)
        .map(|i| {
            if i % 3 == 2 {
                Act::Panic(format!("step {i}"))
            } else {
                Act::Echo
            }
        })
        .collect();
    let (model, resets) = Scripted::new(script);
    let (mut worker, rx) = worker(model);
    // Submit as fast as the channel takes them: the thread is often busy, and a full
    // channel hands the request back.
    for tick in 0..30u64 {
        let mut req = request(tick, tick as f32 / 100.0);
        loop {
            match worker.try_submit(req) {
                Ok(()) => break,
                Err(back) => {
                    req = back;
                    std::thread::yield_now();
                }
            }
        }
    }
    let results: Vec<StepDone> = (0..30).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    let ticks: Vec<u64> = results.iter().map(|d| d.tick).collect();
    assert_eq!(ticks, (0..30).collect::<Vec<_>>(), "in submission order");
    for d in &results {
        let level = d.tick as f32 / 100.0;
        assert_eq!(d.user[0], level, "tick {}: its own buffer", d.tick);
        if d.tick % 3 == 2 {
            assert_eq!(
                d.error.as_deref(),
                Some(&*format!("model panicked: step {}; state reset", d.tick))
            );
        } else {
            assert!(d.error.is_none(), "tick {}: {:?}", d.tick, d.error);
            assert_eq!(d.output.agent[0], level, "tick {}: its own output", d.tick);
        }
    }
    assert_eq!(resets.load(Ordering::SeqCst), 10);
    worker.shutdown();
    assert!(rx.try_recv().is_err(), "one result per request");
}

#[test]
fn heard_text_reaches_a_model_that_accepts_it_before_the_step() {
    struct Listener {
        heard: Arc<std::sync::Mutex<Vec<String>>>,
    }
    impl VoiceModel for Listener {
        fn backend(&self) -> &'static str {
            "listener"
        }
        fn accepts_text(&self) -> bool {
            true
        }
        fn hear_text(&mut self, text: &str) -> Result<(), VoiceError> {
            self.heard.lock().unwrap().push(text.to_string());
            Ok(())
        }
        fn step(&mut self, _: &[f32]) -> Result<StepOutput, VoiceError> {
            let said = self.heard.lock().unwrap().join(" ");
            Ok(StepOutput {
                agent: vec![0.0; FRAME_SAMPLES],
                text: Some(said),
            })
        }
        fn reset(&mut self) -> Result<(), VoiceError> {
            Ok(())
        }
    }
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    let model = Listener {
        heard: Arc::clone(&heard),
    };
    let mut worker = ModelWorker::spawn(
        Box::new(model),
        || {},
        move |d| {
            let _ = tx.send(d);
        },
    )
    .unwrap();
    assert!(worker.accepts_text());
    let mut req = request(1, 0.0);
    req.heard = vec!["hello".into(), "there".into()];
    worker.try_submit(req).unwrap();
    let done = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(done.output.text.as_deref(), Some("hello there"));
    worker.shutdown();
}
