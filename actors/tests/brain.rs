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
use creature_actors::{
    BrainConfig, BrainError, BrainHandle, BrainPorts, FRAME_SAMPLES, SupervisionConfig,
};

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
        supervision: SupervisionConfig {
            max_restarts: 10,
            ..SupervisionConfig::default()
        },
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
        supervision: SupervisionConfig {
            max_restarts: 3,
            ..SupervisionConfig::default()
        },
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

/// How a [`HogPlanner`] misbehaves on the shared async workers.
#[derive(Debug, Clone, Copy)]
enum Hog {
    /// Burns the CPU inside the async fn, never awaiting (a local model run carelessly).
    Burn(Duration),
    /// Puts the worker thread to sleep inside the async fn (a blocking client).
    Block(Duration),
}

/// A planner that takes the shared async workers away from everyone else for a while,
/// then plans like the rules. It counts how many of its plans ran at once, so a test can
/// show that every worker really was taken.
struct HogPlanner {
    hog: Hog,
    rules: RulePlanner,
    running: std::sync::atomic::AtomicUsize,
    most_at_once: std::sync::atomic::AtomicUsize,
}

impl HogPlanner {
    fn new(hog: Hog) -> HogPlanner {
        HogPlanner {
            hog,
            rules: RulePlanner::default(),
            running: Default::default(),
            most_at_once: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl Planner for HogPlanner {
    fn name(&self) -> &'static str {
        "hog"
    }

    async fn plan(
        &self,
        ctx: creature_actors::ports::PlanContext,
    ) -> Result<creature_actors::ports::PlanOutcome, creature_actors::ports::PlannerError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        match self.hog {
            Hog::Burn(cpu) => {
                let until = Instant::now() + cpu;
                let mut x: u64 = 1;
                while Instant::now() < until {
                    for _ in 0..1_000 {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    }
                    std::hint::black_box(x);
                }
            }
            Hog::Block(time) => std::thread::sleep(time),
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.rules.plan_now(&ctx)
    }
}

/// Send `n` intents to a brain whose planner hogs the shared workers, and check that the
/// fast loop kept its beat the whole time: no gap between ticks over 120 ms (80 ms + the
/// budget's slack), no overrun, no missed tick.
async fn hogged_workers_never_delay_a_tick(hog: Hog, n: usize) {
    let planner = Arc::new(HogPlanner::new(hog));
    let brain = start_with(
        Parrot::default(),
        Arc::clone(&planner) as Arc<dyn Planner>,
        BrainConfig::default(),
    )
    .await;
    eventually(Duration::from_secs(2), "warm-up", || ticks(&brain) >= 3).await;
    let m = brain.voice.metrics();
    let before = m.interval.snapshot();
    let counters = || {
        (
            ticks(&brain),
            m.overruns.load(Ordering::Relaxed),
            m.missed_ticks.load(Ordering::Relaxed),
        )
    };
    let c0 = counters();
    let objects = ["cup", "ball", "book", "shoe", "hat", "pen", "sock", "key"];
    for object in objects.iter().cycle().take(n) {
        let task = PhysicalTask {
            action: Action::Bring,
            object: (*object).into(),
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
    let tasks = brain.tasks.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tasks.list().await.unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "the hogging plans never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c1 = counters();
    let window = m.interval.snapshot().since(&before).percentiles();
    assert!(
        planner.most_at_once.load(Ordering::SeqCst) >= 2,
        "the test's point: both async workers were taken at once"
    );
    assert!(c1.0 - c0.0 > 15, "{} ticks in the window", c1.0 - c0.0);
    assert!(
        window.max_ms < 120.0,
        "a tick gap of {} ms while the planner hogged the workers ({window:?})",
        window.max_ms
    );
    assert_eq!(c1.1 - c0.1, 0, "overruns");
    assert_eq!(c1.2 - c0.2, 0, "missed ticks");
    brain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_planner_never_delays_a_tick() {
    // 8 plans of 400 ms of CPU each on 2 workers: both cores busy for about 1.6 s.
    hogged_workers_never_delay_a_tick(Hog::Burn(Duration::from_millis(400)), 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_that_blocks_its_worker_never_delays_a_tick() {
    hogged_workers_never_delay_a_tick(Hog::Block(Duration::from_millis(500)), 6).await;
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

/// Each tick's lateness is split into the ticker's wake-up (the host's part) and the
/// hand-off plus the loop's work (the brain's own): the parts must add up to the jitter
/// measured on its own, tick for tick, and every tick must be in every part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lateness_split_adds_up_to_the_jitter() {
    let brain = start().await;
    eventually(Duration::from_secs(3), "20 ticks", || ticks(&brain) >= 20).await;
    brain.stop().await;
    let m = brain.voice.metrics();
    let n = m.jitter.count();
    assert!(n >= 20);
    for (part, h) in [
        ("wake", &m.wake),
        ("handoff", &m.handoff),
        ("loop", &m.tick_work),
        ("own", &m.own),
    ] {
        assert_eq!(h.count(), n, "{part} has a value for every tick");
    }
    // jitter = (awake - deadline) + (loop starts - awake), each recorded in whole µs.
    let parts = m.wake.sum_seconds() + m.handoff.sum_seconds();
    let slack = n as f64 * 2e-6;
    assert!(
        (m.jitter.sum_seconds() - parts).abs() <= slack,
        "jitter {} s vs wake + hand-off {} s",
        m.jitter.sum_seconds(),
        parts
    );
    // own = hand-off + the loop's work, so it is never below either.
    assert!(m.own.sum_seconds() + slack >= m.handoff.sum_seconds() + m.tick_work.sum_seconds());
    let report = brain.voice.report();
    assert_eq!(report.lateness.own_ms.count, n);
    assert!(report.lateness.wake_ms.max_ms <= report.jitter_ms.max_ms + 0.001);
}
