//! The fast loop on its own, with a scripted model and recorders for the actors it feeds.
//! The loop's own ticker is given a period of an hour, so it never fires: the test sends
//! each tick itself, and a step is "slow" because the model waits for the test to let it
//! finish. So the overrun policy and the barge-in edge are checked tick by tick, with no
//! real time measured and nothing left to the scheduler.

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::monologue::MonologueMsg;
use crate::ports::{StepOutput, VoiceError, VoiceModel};
use crate::slot::testing::{self, Recording};

/// One scripted step: the agent's level, and whether the step waits for the test.
#[derive(Clone, Copy)]
struct Act {
    agent: f32,
    held: bool,
}

/// A model that plays a script (then answers silence), records the user level of every
/// frame it steps, and holds a step marked `held` until the test lets it go.
struct Scripted {
    script: Vec<Act>,
    steps: usize,
    seen: Arc<Mutex<Vec<f32>>>,
    started: Arc<AtomicUsize>,
    release: std::sync::mpsc::Receiver<()>,
}

impl VoiceModel for Scripted {
    fn backend(&self) -> &'static str {
        "scripted"
    }

    fn step(&mut self, user: &[f32]) -> Result<StepOutput, VoiceError> {
        let act = self.script.get(self.steps).copied().unwrap_or(Act {
            agent: 0.0,
            held: false,
        });
        self.steps += 1;
        self.started.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(user[0]);
        if act.held {
            self.release
                .recv_timeout(Duration::from_secs(10))
                .expect("the test lets a held step go");
        }
        Ok(StepOutput {
            agent: vec![act.agent; FRAME_SAMPLES],
            text: None,
        })
    }

    fn reset(&mut self) -> Result<(), VoiceError> {
        Ok(())
    }
}

struct Rig {
    voice: VoiceHandle,
    inbox: Arc<AudioInbox>,
    seen: Arc<Mutex<Vec<f32>>>,
    started: Arc<AtomicUsize>,
    release: std::sync::mpsc::Sender<()>,
    face: FaceHandle,
    _face: Recording<crate::face::FaceMsg>,
    _monologue: Recording<MonologueMsg>,
}

async fn rig(config: VoiceConfig, script: Vec<Act>) -> Rig {
    let (release, gate) = std::sync::mpsc::channel();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(AtomicUsize::new(0));
    let model = Scripted {
        script,
        steps: 0,
        seen: Arc::clone(&seen),
        started: Arc::clone(&started),
        release: gate,
    };
    let (face, frames) = testing::face().await;
    let (affect, _) = testing::affect().await;
    let (monologue, pieces) = testing::monologue().await;
    let inbox = Arc::new(AudioInbox::new(32));
    let wiring = VoiceWiring {
        model: Box::new(model),
        // A period of an hour: the ticker never fires; the test ticks.
        clock: TickClock::new(Instant::now(), Duration::from_secs(3600)),
        inbox: Arc::clone(&inbox),
        audio_out: broadcast::channel(16).0,
        monologue,
        face: face.clone(),
        affect,
    };
    let voice = Voice::spawn(config, wiring, None).await.unwrap();
    Rig {
        voice,
        inbox,
        seen,
        started,
        release,
        face,
        _face: frames,
        _monologue: pieces,
    }
}

fn config(backlog_frames: usize) -> VoiceConfig {
    VoiceConfig {
        backlog_frames,
        realtime_priority: false,
        manual_ticks: true,
        ..VoiceConfig::default()
    }
}

const WAIT: Duration = Duration::from_secs(5);

impl Rig {
    fn metric(&self, pick: impl Fn(&VoiceMetrics) -> &AtomicU64) -> u64 {
        pick(self.voice.metrics()).load(Ordering::SeqCst)
    }

    /// Tick `n`, its user frame at `level` (every sample), and wait until the loop took it.
    async fn tick(&self, n: u64, level: f32) {
        self.inbox.push(&vec![level; FRAME_SAMPLES]);
        assert!(self.voice.actor.slot().cast(VoiceMsg::Tick {
            n,
            sent: Instant::now(),
        }));
        testing::eventually(WAIT, &format!("tick {n} taken"), || {
            self.metric(|m| &m.ticks) >= n
        })
        .await;
    }

    async fn steps_done(&self, steps: u64) {
        testing::eventually(WAIT, &format!("{steps} steps"), || {
            self.metric(|m| &m.steps) >= steps
        })
        .await;
    }

    /// The frame stats handed to the face, in order (the test takes them from the face's
    /// feed in its place).
    async fn frames(&mut self) -> Vec<FrameStats> {
        std::iter::from_fn(|| self.face.take_frame()).collect()
    }
}

fn held(agent: f32) -> Act {
    Act { agent, held: true }
}

fn free(agent: f32) -> Act {
    Act { agent, held: false }
}

#[tokio::test]
async fn a_slow_step_counts_overruns_and_the_backlog_drops_its_oldest_frame() {
    let mut r = rig(config(3), vec![held(0.0)]).await;
    r.tick(1, 0.01).await;
    testing::eventually(WAIT, "step 1 started", || {
        r.started.load(Ordering::SeqCst) == 1
    })
    .await;
    // Five ticks while step 1 is still computing: each is an overrun; the backlog keeps
    // the newest three of them and drops the oldest two (ticks 2 and 3).
    for n in 2..=6 {
        r.tick(n, n as f32 / 100.0).await;
    }
    assert_eq!(r.metric(|m| &m.overruns), 5);
    assert_eq!(r.metric(|m| &m.dropped_frames), 2);
    let s = r.voice.snapshot().await.unwrap();
    assert_eq!(s["backlog"], 3, "{s}");
    assert_eq!(s["in_flight"], 1, "{s}");
    assert_eq!(
        r.started.load(Ordering::SeqCst),
        1,
        "nothing else reached the model"
    );

    // Step 1 ends: the model catches up on the backlog back to back, oldest first.
    r.release.send(()).unwrap();
    r.steps_done(4).await;
    assert_eq!(*r.seen.lock().unwrap(), [0.01, 0.04, 0.05, 0.06]);
    let ticks: Vec<u64> = r.frames().await.iter().map(|f| f.tick).collect();
    assert_eq!(ticks, [1, 4, 5, 6], "every step fanned out, in tick order");
    assert_eq!(
        r.metric(|m| &m.overruns),
        5,
        "catching up is not an overrun"
    );
    assert_eq!(r.metric(|m| &m.dropped_frames), 2);
    let s = r.voice.snapshot().await.unwrap();
    assert_eq!(s["backlog"], 0, "{s}");
    assert_eq!(s["in_flight"], serde_json::Value::Null, "{s}");

    // A fast model from here on: a tick, a step, no overrun.
    r.tick(7, 0.07).await;
    r.steps_done(5).await;
    assert_eq!(r.metric(|m| &m.overruns), 5);
}

#[tokio::test]
async fn the_backlog_holds_at_most_backlog_frames() {
    let r = rig(config(1), vec![held(0.0)]).await;
    r.tick(1, 0.01).await;
    testing::eventually(WAIT, "step 1 started", || {
        r.started.load(Ordering::SeqCst) == 1
    })
    .await;
    for n in 2..=4 {
        r.tick(n, n as f32 / 100.0).await;
    }
    assert_eq!(r.metric(|m| &m.overruns), 3);
    assert_eq!(r.metric(|m| &m.dropped_frames), 2, "ticks 2 and 3");
    assert_eq!(r.voice.snapshot().await.unwrap()["backlog"], 1);
    r.release.send(()).unwrap();
    r.steps_done(2).await;
    assert_eq!(
        *r.seen.lock().unwrap(),
        [0.01, 0.04],
        "only the newest waited"
    );
}

#[tokio::test]
async fn barge_in_is_set_on_exactly_the_frame_where_the_user_starts_over_the_agent() {
    // Tick:   1    2    3    4    5    6    7    8    9    10
    // agent:  on   on   on   on   off  off  off  off  off  off
    // user:   -    -    ON   on   on   -    -    -    -    ON (agent silent: no barge-in)
    let loud = 0.3;
    let script = vec![
        free(loud),
        free(loud),
        free(loud),
        free(loud),
        free(0.0),
        free(0.0),
        free(0.0),
        free(0.0),
        free(0.0),
        free(0.0),
    ];
    let user = [0.0, 0.0, loud, loud, loud, 0.0, 0.0, 0.0, 0.0, loud];
    let mut r = rig(config(3), script).await;
    for (i, level) in user.iter().enumerate() {
        let n = i as u64 + 1;
        r.tick(n, *level).await;
        r.steps_done(n).await;
    }
    let frames = r.frames().await;
    assert_eq!(frames.len(), 10);
    let barge: Vec<u64> = frames
        .iter()
        .filter(|f| f.barge_in)
        .map(|f| f.tick)
        .collect();
    assert_eq!(barge, [3], "only the user's onset over the speaking agent");
    assert!(frames[2].user_active && frames[1].agent_speaking);
    assert!(
        frames[9].user_active && !frames[8].agent_speaking,
        "the control onset"
    );
    assert_eq!(r.metric(|m| &m.barge_ins), 1);
    assert_eq!(r.metric(|m| &m.overruns), 0);
}

#[tokio::test]
async fn a_turn_is_measured_from_the_frames_and_published_for_readers() {
    // Tick:   1..=5 user talks; 6, 7, 8 hangover; 9 the detector lets go; the agent is
    // silent until it answers on tick 12: a response of 3 frames (240 ms).
    let loud = 0.3;
    let mut script = vec![free(0.0); 11];
    script.extend([free(loud); 3]);
    let mut r = rig(config(3), script).await;
    let mut tap = r.voice.subscribe_steps();
    for n in 1..=14u64 {
        let level = if n <= 5 { loud } else { 0.0 };
        r.tick(n, level).await;
        r.steps_done(n).await;
    }
    let report = r.voice.report().turns;
    assert_eq!(report.count, 1, "{report:?}");
    assert_eq!(report.answered, 1);
    let turn = report.recent[0];
    assert_eq!((turn.user_start_tick, turn.user_end_tick), (1, 9));
    assert_eq!(turn.answer_tick, Some(12));
    assert_eq!(turn.response_ms, Some(240.0));
    assert_eq!(report.response_ms.count, 1);
    assert!(
        (report.response_ms.p50_ms - 240.0).abs() < 240.0 * 0.07,
        "{report:?}"
    );
    assert_eq!(report.own_latency_ms.count, 14, "one per step");
    let s = r.voice.snapshot().await.unwrap();
    assert_eq!(s["turns"]["count"], 1, "{s}");
    assert_eq!(s["turns"]["recent"][0]["outcome"], "answered", "{s}");
    // The tap saw every step with its place in the user's stream.
    let mut from = Vec::new();
    while let Ok(step) = tap.try_recv() {
        assert_eq!(step.user_samples, FRAME_SAMPLES);
        from.push(step.user_from);
    }
    let expected: Vec<u64> = (0..14).map(|i| i * FRAME_SAMPLES as u64).collect();
    assert_eq!(from, expected);
    let _ = r.frames().await;
}
