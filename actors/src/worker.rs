//! The voice model's own OS thread. The voice actor hands it one frame at a time through a
//! bounded channel and gets the result back through `deliver` (the voice loop's
//! [`Feed`](crate::feed::Feed)); model compute never runs on the async workers, and the
//! thread (with the loaded weights) outlives restarts of the actor. A step allocates
//! nothing in steady state: the user frame and the output buffers travel back and forth
//! with the request and its result, the model writes into them
//! ([`VoiceModel::step_into`]), and the backend's status (a JSON value) is built only when
//! a reader asked for it since the last one, at most about once a second.
//! It runs at real-time priority where the OS allows (see [`crate::realtime`]): a step that
//! waits behind a neighbour's build is an overrun.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ports::{FRAME_SAMPLES, StepOutput, TurnStages, VoiceModel};

/// Build the backend's status at most this often (in steps), and only when asked: about
/// once a second.
pub const STATUS_EVERY: u64 = 12;

/// One frame for the model.
#[derive(Debug)]
pub struct StepRequest {
    /// The tick whose user audio this is.
    pub tick: u64,
    /// `FRAME_SAMPLES` samples of the user's audio.
    pub user: Vec<f32>,
    /// Typed utterances to hear before stepping.
    pub heard: Vec<String>,
    /// Where the model writes its output (buffers of an earlier step, reused).
    pub out: StepOutput,
    /// Build a fresh backend status with this step (someone asked for one).
    pub want_status: bool,
}

/// What came back from the model thread.
#[derive(Debug)]
pub struct StepDone {
    pub tick: u64,
    pub output: StepOutput,
    /// Wall time of `step` on the model thread.
    pub compute: Duration,
    /// The step failed (the output is silence) or hearing text failed.
    pub error: Option<String>,
    /// The user frame buffer, handed back for reuse.
    pub user: Vec<f32>,
    /// A fresh backend status, about once a second (built here, so the loop only swaps it
    /// in).
    pub status: Option<Arc<serde_json::Value>>,
    /// The stages of a turn this step began to answer (backends built of stages).
    pub stages: Option<TurnStages>,
}

/// What the model thread is asked to do.
enum Job {
    Step(StepRequest),
    /// Finish: the thread ends after the step it is on.
    Stop,
}

/// The model thread, once started; taken by whoever joins it.
type Thread = Arc<Mutex<Option<JoinHandle<()>>>>;

/// Owner of the model thread.
pub struct ModelWorker {
    tx: Option<SyncSender<Job>>,
    thread: Thread,
    backend: &'static str,
    accepts_text: bool,
}

/// Stops the model thread and waits for it, from outside the voice actor (the brain, when it
/// stops: the thread holds the weights and may be inside a step).
#[derive(Clone)]
pub struct ModelStopper {
    tx: SyncSender<Job>,
    thread: Thread,
    backend: &'static str,
}

impl std::fmt::Debug for ModelStopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStopper")
            .field("backend", &self.backend)
            .finish()
    }
}

impl ModelStopper {
    /// Tell the thread to finish after the step it is on, and wait until it has. Blocks (for
    /// as long as that step takes): call it off the async workers.
    pub fn stop(&self) {
        // Waits for room behind a request the thread has not taken yet; fails when the
        // thread is gone already.
        let _ = self.tx.send(Job::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!(backend = self.backend, "voice model thread panicked");
            } else {
                tracing::debug!(backend = self.backend, "voice model thread joined");
            }
        }
    }

    /// Whether the thread has been joined.
    pub fn joined(&self) -> bool {
        self.thread.lock().map(|t| t.is_none()).unwrap_or(false)
    }
}

impl std::fmt::Debug for ModelWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelWorker")
            .field("backend", &self.backend)
            .finish()
    }
}

impl ModelWorker {
    /// Start the thread. `on_start` runs first on the new thread (to raise its priority);
    /// `deliver` is called on the model thread with every result; it must not block (the
    /// voice handle's cast does not).
    pub fn spawn<S, F>(
        mut model: Box<dyn VoiceModel>,
        on_start: S,
        deliver: F,
    ) -> std::io::Result<Self>
    where
        S: FnOnce() + Send + 'static,
        F: Fn(StepDone) + Send + 'static,
    {
        let backend = model.backend();
        let accepts_text = model.accepts_text();
        // Capacity 1: the actor keeps at most one step in flight; the slot is slack for a
        // request sent in the instant before the thread returns to `recv`.
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        let thread = std::thread::Builder::new()
            .name("voice-model".into())
            .spawn(move || {
                on_start();
                tracing::info!(backend, "voice model thread started");
                let mut steps: u64 = 0;
                let mut errors = ErrorLog::default();
                while let Ok(Job::Step(req)) = rx.recv() {
                    // The first step brings the first status, so there is one to report.
                    let done = run_step(model.as_mut(), req, steps == 0);
                    steps += 1;
                    if let Some(error) = &done.error {
                        errors.note(done.tick, error);
                    }
                    deliver(done);
                }
                tracing::info!(backend, steps, "voice model thread finished");
            })?;
        Ok(ModelWorker {
            tx: Some(tx),
            thread: Arc::new(Mutex::new(Some(thread))),
            backend,
            accepts_text,
        })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn accepts_text(&self) -> bool {
        self.accepts_text
    }

    /// Hand a frame to the model, or give it back if the thread is still busy (or gone).
    pub fn try_submit(&self, req: StepRequest) -> Result<(), StepRequest> {
        let Some(tx) = &self.tx else {
            return Err(req);
        };
        match tx.try_send(Job::Step(req)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Job::Step(r)) | TrySendError::Disconnected(Job::Step(r))) => {
                Err(r)
            }
            // Only `Step` is sent here.
            Err(TrySendError::Full(Job::Stop) | TrySendError::Disconnected(Job::Stop)) => Ok(()),
        }
    }

    /// What stops and joins the thread from elsewhere ([`ModelStopper::stop`]).
    pub fn stopper(&self) -> Option<ModelStopper> {
        Some(ModelStopper {
            tx: self.tx.clone()?,
            thread: Arc::clone(&self.thread),
            backend: self.backend,
        })
    }

    /// Stop the thread and wait for it to finish its current step.
    pub fn shutdown(&mut self) {
        if let Some(stopper) = self.stopper() {
            stopper.stop();
        }
        self.tx.take();
    }
}

/// Step errors go to the log at most this often (the rest are counted in the metrics): a
/// model failing every step must not make its thread write 12 lines a second.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(5);

/// Rate-limited logging of step errors, on the model thread (the loop never logs).
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl ErrorLog {
    fn note(&mut self, tick: u64, error: &str) {
        if self.last.is_none_or(|at| at.elapsed() >= ERROR_LOG_EVERY) {
            tracing::warn!(tick, %error, more_since_last = self.unlogged, "voice step error");
            self.last = Some(Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
    }
}

fn run_step(model: &mut dyn VoiceModel, mut req: StepRequest, first: bool) -> StepDone {
    let mut errors = Vec::new();
    let mut out = std::mem::take(&mut req.out);
    out.text = None;
    if out.agent.len() != FRAME_SAMPLES {
        out.agent.resize(FRAME_SAMPLES, 0.0);
    }
    let started = Instant::now();
    // A panicking model must not take the thread (and the weights) down with it.
    let result = catch_unwind(AssertUnwindSafe(|| {
        for text in req.heard.drain(..) {
            if let Err(e) = model.hear_text(&text) {
                errors.push(e.to_string());
            }
        }
        model.step_into(&req.user, &mut out)
    }));
    let compute = started.elapsed();
    let output = match result {
        Ok(Ok(())) => {
            if out.agent.len() != FRAME_SAMPLES {
                errors.push(format!(
                    "model returned {} samples instead of {FRAME_SAMPLES}; padded",
                    out.agent.len()
                ));
                out.agent.resize(FRAME_SAMPLES, 0.0);
            }
            out
        }
        Ok(Err(e)) => {
            errors.push(e.to_string());
            silence(out)
        }
        Err(panic) => {
            let what = crate::handle::panic_message(&*panic);
            errors.push(format!("model panicked: {what}; state reset"));
            if let Err(e) = model.reset() {
                errors.push(format!("reset after panic failed: {e}"));
            }
            silence(out)
        }
    };
    let stages = catch_unwind(AssertUnwindSafe(|| model.take_turn_stages())).unwrap_or(None);
    let want_status = first || req.want_status || !errors.is_empty();
    let status = want_status.then(|| Arc::new(model.status()));
    StepDone {
        tick: req.tick,
        output,
        compute,
        error: if errors.is_empty() {
            None
        } else {
            Some(errors.join("; "))
        },
        user: req.user,
        status,
        stages,
    }
}

/// `out` made a silent frame (in place).
fn silence(mut out: StepOutput) -> StepOutput {
    out.agent.clear();
    out.agent.resize(FRAME_SAMPLES, 0.0);
    out.text = None;
    out
}

#[cfg(test)]
mod tests;
