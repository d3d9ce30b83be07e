//! The actor tree end to end, on in-memory ports: a scripted voice model, the real rule
//! planner and an in-memory ledger. Timing assertions poll with deadlines; they never
//! sleep a fixed time and hope.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use creature_actors::ports::{
    Action, Intent, MemoryTaskStore, PhysicalTask, Planner, StepOutput, TaskState, VoiceError,
    VoiceModel,
};
use creature_actors::rules::RulePlanner;
use creature_actors::slot::ActorStatus;
use creature_actors::{BrainConfig, BrainError, BrainHandle, BrainPorts, FRAME_SAMPLES};

/// Says each heard line back as pieces, one word every third step, with a tone under it.
#[derive(Default)]
struct Parrot {
    words: VecDeque<String>,
    countdown: u32,
    phase: f32,
    step_delay: Duration,
    panic_on: Option<&'static str>,
}

impl VoiceModel for Parrot {
    fn backend(&self) -> &'static str {
        "parrot"
    }
    fn accepts_text(&self) -> bool {
        true
    }
    fn hear_text(&mut self, text: &str) -> Result<(), VoiceError> {
        if Some(text) == self.panic_on {
            panic!("the parrot choked on {text:?}");
        }
        self.words
            .extend(text.split_whitespace().map(|w| format!(" {w}")));
        Ok(())
    }
    fn step(&mut self, user: &[f32]) -> Result<StepOutput, VoiceError> {
        if user.len() != FRAME_SAMPLES {
            return Err(VoiceError::Input(format!("{} samples", user.len())));
        }
        if !self.step_delay.is_zero() {
            std::thread::sleep(self.step_delay);
        }
        let speaking = !self.words.is_empty() || self.countdown > 0;
        let mut text = None;
        if self.countdown == 0 {
            if let Some(w) = self.words.pop_front() {
                text = Some(w);
                self.countdown = 3;
            }
        } else {
            self.countdown -= 1;
        }
        let agent = (0..FRAME_SAMPLES)
            .map(|_| {
                self.phase += 2.0 * std::f32::consts::PI * 220.0 / 24_000.0;
                if speaking {
                    0.3 * self.phase.sin()
                } else {
                    0.0
                }
            })
            .collect();
        Ok(StepOutput { agent, text })
    }
    fn reset(&mut self) -> Result<(), VoiceError> {
        self.words.clear();
        Ok(())
    }
}

async fn start_with(model: Parrot, planner: Arc<dyn Planner>, config: BrainConfig) -> BrainHandle {
    let ports = BrainPorts {
        model: Box::new(model),
        planner,
        store: Arc::new(MemoryTaskStore::default()),
    };
    BrainHandle::start(config, ports)
        .await
        .expect("brain starts")
}

async fn start() -> BrainHandle {
    start_with(
        Parrot::default(),
        Arc::new(RulePlanner::default()),
        BrainConfig::default(),
    )
    .await
}

/// Poll `cond` every 10 ms until it holds or `limit` passes.
async fn eventually<F: FnMut() -> bool>(limit: Duration, what: &str, mut cond: F) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ticks(brain: &BrainHandle) -> u64 {
    brain.voice.metrics().ticks.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_actor_reports_running() {
    let brain = start().await;
    let names: Vec<_> = brain.actors().iter().map(|a| a.name).collect();
    assert_eq!(
        names,
        [
            "brain",
            "voice",
            "monologue",
            "reasoner",
            "tasks",
            "affect",
            "face"
        ]
    );
    assert!(
        brain
            .actors()
            .iter()
            .all(|a| a.status == ActorStatus::Running),
        "{:?}",
        brain.actors()
    );
    let start_ticks = ticks(&brain);
    eventually(Duration::from_secs(2), "ten ticks", || {
        ticks(&brain) >= start_ticks + 10
    })
    .await;
    brain.stop().await;
    assert!(
        brain
            .actors()
            .iter()
            .all(|a| a.status == ActorStatus::Stopped),
        "{:?}",
        brain.actors()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heard_words_become_a_task_through_the_whole_tree() {
    let brain = start().await;
    brain.voice.hear("Okay, I'll bring you the cup.").unwrap();
    let tasks = brain.tasks.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    let task = loop {
        let list = tasks.list().await.unwrap();
        if let Some(t) = list.into_iter().next() {
            break t;
        }
        assert!(Instant::now() < deadline, "no task within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(task.arguments.action.as_str(), "bring");
    assert_eq!(task.arguments.object, "cup");
    assert_eq!(task.state, TaskState::Pending);
    let mono = brain.monologue.snapshot().await.unwrap();
    assert_eq!(mono["intents_fired"], 1, "{mono}");
    assert!(
        mono["text"]
            .as_str()
            .unwrap()
            .contains("bring you the cup."),
        "{mono}"
    );
    brain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_child_is_restarted_and_the_tick_never_stops() {
    // Six failures in a row: above the default intensity limit of 5 in 10 s.
    let config = BrainConfig {
        max_restarts: 10,
        ..BrainConfig::default()
    };
    let brain = start_with(Parrot::default(), Arc::new(RulePlanner::default()), config).await;
    eventually(Duration::from_secs(2), "warm-up", || ticks(&brain) >= 5).await;
    for name in ["monologue", "reasoner", "tasks", "affect", "face", "voice"] {
        let before = ticks(&brain);
        let stats = brain.actors().into_iter().find(|a| a.name == name).unwrap();
        assert!(brain.inject_fault(name));
        eventually(
            Duration::from_secs(2),
            &format!("the restart of {name}"),
            || {
                let now = brain.actors().into_iter().find(|a| a.name == name).unwrap();
                now.restarts == stats.restarts + 1 && now.status == ActorStatus::Running
            },
        )
        .await;
        eventually(Duration::from_secs(2), "ticks after the restart", || {
            ticks(&brain) >= before + 5
        })
        .await;
        let summary = brain.actors().into_iter().find(|a| a.name == name).unwrap();
        assert!(
            summary.last_error.unwrap().contains("injected fault"),
            "{name}"
        );
    }
    let interval = brain.voice.report().interval_ms;
    assert!(
        interval.max_ms < 120.0,
        "a gap between ticks of {} ms",
        interval.max_ms
    );
    assert_eq!(brain.voice.report().missed_ticks, 0);
    // Everyone still works after all that: words still become tasks.
    brain.voice.hear("I'll pick up the red ball.").unwrap();
    let tasks = brain.tasks.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tasks.list().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no task after the restarts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    brain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_failures_stop_the_brain_with_an_error_naming_the_child() {
    let config = BrainConfig {
        max_restarts: 3,
        ..BrainConfig::default()
    };
    let brain = start_with(Parrot::default(), Arc::new(RulePlanner::default()), config).await;
    for i in 0..4 {
        brain.inject_fault("affect");
        if i < 3 {
            eventually(Duration::from_secs(2), "the restart", || {
                brain.affect.stats().restarts() == i + 1
                    && brain.affect.stats().status() == ActorStatus::Running
            })
            .await;
        }
    }
    let err = tokio::time::timeout(Duration::from_secs(5), brain.wait())
        .await
        .expect("brain stops")
        .unwrap_err();
    match &err {
        BrainError::RestartIntensity { child, limit, .. } => {
            assert_eq!(*child, "affect");
            assert_eq!(*limit, 3);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("`affect` failed 4 times"), "{err}");
    assert!(!brain.is_running());
    assert_eq!(brain.affect.stats().status(), ActorStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_planner_never_delays_a_tick() {
    let planner = RulePlanner {
        delay: Duration::from_secs(2),
        ..RulePlanner::default()
    };
    let brain = start_with(Parrot::default(), Arc::new(planner), BrainConfig::default()).await;
    eventually(Duration::from_secs(2), "warm-up", || ticks(&brain) >= 3).await;
    let before = brain.voice.report();
    for object in ["cup", "ball", "book", "shoe", "hat", "pen"] {
        let task = PhysicalTask {
            action: Action::Bring,
            object: object.into(),
            destination: None,
            utterance: format!("I'll bring you the {object}."),
            confidence: 0.9,
        };
        brain.reasoner.intent(
            Intent {
                task,
                tick: 0,
                detector: "rules".into(),
            },
            vec![],
        );
    }
    // Deliberations pile up behind the 2 s planner: 4 in flight, the rest queued.
    let reasoner = brain.reasoner.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = reasoner.snapshot().await.unwrap();
        if snap["in_flight"] == 4 && snap["queued"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliberations never piled up: {snap}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tasks = brain.tasks.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tasks.list().await.unwrap().len() < 6 {
        assert!(Instant::now() < deadline, "the slow plans never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = brain.voice.report();
    assert!(after.ticks - before.ticks > 30);
    assert!(
        after.interval_ms.max_ms < 120.0,
        "gap of {} ms",
        after.interval_ms.max_ms
    );
    assert_eq!(after.overruns, 0);
    brain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_frames_arrive_at_the_tick_rate_and_the_mouth_moves_with_the_voice() {
    let brain = start().await;
    let mut rx = brain.face.subscribe();
    brain.voice.hear("la la la la la la la la la la").unwrap();
    let started = Instant::now();
    let mut frames = 0;
    let mut max_mouth: f32 = 0.0;
    let mut last_seq = 0;
    while started.elapsed() < Duration::from_secs(1) {
        if tokio::time::timeout(Duration::from_millis(500), rx.changed())
            .await
            .is_err()
        {
            break;
        }
        let update = rx.borrow_and_update().clone();
        assert!(update.frame.seq > last_seq, "sequence goes forward");
        last_seq = update.frame.seq;
        frames += 1;
        max_mouth = max_mouth.max(update.frame.mouth);
        let json: serde_json::Value = serde_json::from_str(&update.json).unwrap();
        assert_eq!(json["seq"], update.frame.seq);
    }
    assert!(frames >= 11, "only {frames} face frames in a second");
    assert!(max_mouth > 0.3, "the mouth never opened: {max_mouth}");
    brain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_slower_than_real_time_costs_overruns_not_drift() {
    let model = Parrot {
        step_delay: Duration::from_millis(130),
        ..Parrot::default()
    };
    let brain = start_with(
        model,
        Arc::new(RulePlanner::default()),
        BrainConfig::default(),
    )
    .await;
    eventually(Duration::from_secs(5), "forty ticks", || {
        ticks(&brain) >= 40
    })
    .await;
    let report = brain.voice.report();
    assert!(report.overruns > 5, "{report:?}");
    assert!(
        report.dropped_frames > 0,
        "the backlog is bounded, so frames were dropped: {report:?}"
    );
    assert!(
        report.real_time_factor.p50 > 1.4,
        "{:?}",
        report.real_time_factor
    );
    // The grid held: ticks stayed 80 ms apart while the model lagged.
    assert!(
        (report.interval_ms.p50_ms - 80.0).abs() < 5.0,
        "{:?}",
        report.interval_ms
    );
    let snap = brain.voice.snapshot().await.unwrap();
    assert!(snap["backlog"].as_u64().unwrap() <= 3, "{snap}");
    brain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_model_is_caught_and_the_loop_goes_on() {
    let model = Parrot {
        panic_on: Some("boom"),
        ..Parrot::default()
    };
    let brain = start_with(
        model,
        Arc::new(RulePlanner::default()),
        BrainConfig::default(),
    )
    .await;
    brain.voice.hear("boom").unwrap();
    eventually(Duration::from_secs(2), "the step error", || {
        brain.voice.report().step_errors == 1
    })
    .await;
    let before = ticks(&brain);
    eventually(Duration::from_secs(2), "more ticks", || {
        ticks(&brain) > before + 5
    })
    .await;
    let report = brain.voice.report();
    assert!(
        report.last_error.unwrap().contains("choked on"),
        "the panic message is kept"
    );
    assert_eq!(
        brain.voice.stats().restarts(),
        0,
        "the actor itself never failed"
    );
    brain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_text_is_refused_with_reasons() {
    let brain = start().await;
    assert!(
        brain
            .voice
            .hear("   ")
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    assert!(
        brain
            .voice
            .hear(&"x".repeat(501))
            .unwrap_err()
            .to_string()
            .contains("longer than 500")
    );
    brain.stop().await;
}
