//! `GET /metrics`: Prometheus text exposition. Latencies are summaries in seconds (the
//! Prometheus convention), read straight from the loop's lock-free histograms; nothing here
//! sends the loop a message or takes a lock it takes. Each tick's lateness is split into the
//! host's part (`creature_tick_wake_lateness_seconds`, with the host's steal beside it) and
//! the brain's own (`creature_tick_handoff_seconds`, `creature_tick_loop_seconds`).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use creature_actors::histogram::LatencyHistogram;
use creature_actors::signals::Emotion;
use creature_actors::slot::ActorStatus;

use super::AppState;

/// Upper bounds (seconds) of the latency histograms' buckets: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

struct Exposition(String);

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn value(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.header(name, kind, help);
        self.value(name, "", v);
    }

    /// A Prometheus histogram (cumulative `le` buckets in seconds, `_sum`, `_count`), one
    /// series per `(labels, histogram)`.
    fn histogram(&mut self, name: &str, help: &str, series: &[(String, &LatencyHistogram)]) {
        self.header(name, "histogram", help);
        for (labels, h) in series {
            let snap = h.snapshot();
            let sep = if labels.is_empty() { "" } else { "," };
            for le in LATENCY_BUCKETS {
                let n = snap.count_at_most_us((le * 1e6).round() as u64);
                self.value(
                    &format!("{name}_bucket"),
                    &format!("{labels}{sep}le=\"{le}\""),
                    n,
                );
            }
            let count = snap.count();
            self.value(
                &format!("{name}_bucket"),
                &format!("{labels}{sep}le=\"+Inf\""),
                count,
            );
            self.value(&format!("{name}_sum"), labels, snap.sum_seconds());
            self.value(&format!("{name}_count"), labels, count);
        }
    }

    fn summary(&mut self, name: &str, help: &str, h: &LatencyHistogram) {
        self.header(name, "summary", help);
        for q in [0.5, 0.9, 0.99, 0.999] {
            self.value(
                name,
                &format!("quantile=\"{q}\""),
                h.quantile_us(q) as f64 / 1e6,
            );
        }
        self.value(&format!("{name}_sum"), "", h.sum_seconds());
        self.value(&format!("{name}_count"), "", h.count());
        let max = format!("{name}_max");
        self.header(&max, "gauge", &format!("Largest observation of {name}."));
        self.value(&max, "", h.max().as_secs_f64());
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let brain = state.brain();
    let m = brain.voice.metrics();
    let mut out = Exposition(String::with_capacity(8 * 1024));
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

    out.single(
        "creature_voice_ticks_total",
        "counter",
        "Fast-loop ticks.",
        load(&m.ticks),
    );
    out.single(
        "creature_voice_overruns_total",
        "counter",
        "Ticks at which the previous model step was still computing.",
        load(&m.overruns),
    );
    out.single(
        "creature_voice_missed_ticks_total",
        "counter",
        "Tick deadlines that passed without a tick.",
        load(&m.missed_ticks),
    );
    out.single(
        "creature_voice_dropped_frames_total",
        "counter",
        "User frames dropped from a full backlog.",
        load(&m.dropped_frames),
    );
    out.single(
        "creature_voice_steps_total",
        "counter",
        "Model steps completed.",
        load(&m.steps),
    );
    out.single(
        "creature_voice_step_errors_total",
        "counter",
        "Model steps that failed (silence was played).",
        load(&m.step_errors),
    );
    out.single(
        "creature_voice_text_pieces_total",
        "counter",
        "Inner-monologue pieces emitted.",
        load(&m.text_pieces),
    );
    out.single(
        "creature_voice_barge_ins_total",
        "counter",
        "Times the user started talking over the creature.",
        load(&m.barge_ins),
    );
    out.single(
        "creature_voice_speaking",
        "gauge",
        "1 while the creature is speaking.",
        u8::from(m.speaking.load(Ordering::Relaxed)),
    );
    out.single(
        "creature_voice_user_active",
        "gauge",
        "1 while the user's voice is active.",
        u8::from(m.user_active.load(Ordering::Relaxed)),
    );
    out.summary(
        "creature_voice_tick_jitter_seconds",
        "Actual minus scheduled tick start.",
        &m.jitter,
    );
    out.summary(
        "creature_voice_tick_interval_seconds",
        "Time between consecutive tick starts.",
        &m.interval,
    );
    out.summary(
        "creature_voice_compute_seconds",
        "Model step wall time.",
        &m.compute,
    );
    out.summary(
        "creature_voice_overhead_seconds",
        "Loop work per tick, model compute excluded.",
        &m.overhead,
    );
    out.summary(
        "creature_voice_step_latency_seconds",
        "User frame taken in to agent frame out.",
        &m.step_latency,
    );
    out.summary(
        "creature_tick_wake_lateness_seconds",
        "Tick deadline to the ticker thread awake: the kernel's and the host's part of a tick's lateness.",
        &m.wake,
    );
    out.summary(
        "creature_tick_handoff_seconds",
        "The ticker hands a tick over to the loop thread starting on it (the brain's own part).",
        &m.handoff,
    );
    out.summary(
        "creature_tick_loop_seconds",
        "The loop's own work on a tick (the brain's own part).",
        &m.tick_work,
    );
    out.summary(
        "creature_tick_own_lateness_seconds",
        "Hand-off plus the loop's work, per tick: the brain's own part of a tick's lateness.",
        &m.own,
    );
    out.histogram(
        "creature_turn_response_seconds",
        "End of the user's voice activity (after the hangover) to the agent's first frame above the speaking threshold, per answered turn (stream time; an answer begun in the hangover counts as 0).",
        &[(String::new(), &m.turn_response)],
    );
    let stages: Vec<(String, &LatencyHistogram)> = creature_actors::voice::STAGES
        .iter()
        .zip(&m.stages)
        .map(|(stage, h)| (format!("stage=\"{stage}\""), h))
        .collect();
    out.histogram(
        "creature_turn_stage_seconds",
        "A staged backend's (the cascade's) answers, stage by stage: mouth closes -> end of turn decided (turn_wait), -> transcript final (stt_final), -> the LLM's first token (llm_first_token), -> the answer's first loud frame (tts_first_audio); stream time, they add up to the turn's gap.",
        &stages,
    );
    out.histogram(
        "creature_barge_in_reaction_seconds",
        "The user's onset over the speaking agent to the agent's output below the speaking threshold (stream time).",
        &[(String::new(), &m.barge_in_reaction)],
    );
    out.histogram(
        "creature_voice_own_latency_seconds",
        "User frame due to agent frame out, minus model compute and any wait for a busy model: the brain's own latency, per frame.",
        &[(String::new(), &m.own_latency)],
    );
    out.single(
        "creature_turns_total",
        "counter",
        "User turns measured (answered or not).",
        load(&m.turns),
    );
    out.single(
        "creature_turns_unanswered_total",
        "counter",
        "User turns the agent did not answer before the user spoke again or 5 s passed.",
        load(&m.unanswered_turns),
    );
    out.single(
        "creature_turns_talked_over_total",
        "counter",
        "User turns the agent talked through without yielding (talking before the onset and after the end).",
        load(&m.talked_over_turns),
    );
    out.single(
        "creature_turn_backchannels_total",
        "counter",
        "Agent bursts that began while the user talked.",
        load(&m.backchannels),
    );
    if let Some(steal) = creature_actors::realtime::host_steal() {
        out.single(
            "creature_host_steal_seconds_total",
            "counter",
            "CPU time the hypervisor gave to other guests, all CPUs together, since boot (/proc/stat).",
            steal.as_secs_f64(),
        );
    }
    if let Some(a) = creature_actors::realtime::loop_allocations() {
        out.header(
            "creature_tick_allocations_total",
            "counter",
            "Heap allocations on the fast loop's threads (counted only in a build with alloc-count).",
        );
        for (thread, n) in [
            ("ticker", a.ticker),
            ("loop", a.voice_loop),
            ("model", a.model),
        ] {
            out.value(
                "creature_tick_allocations_total",
                &format!("thread=\"{thread}\""),
                n,
            );
        }
    }
    out.single(
        "creature_audio_inbox_dropped_samples_total",
        "counter",
        "User audio samples dropped because a source outran the loop.",
        brain.inbox().dropped(),
    );
    out.single(
        "creature_face_subscribers",
        "gauge",
        "Face sockets and other subscribers connected.",
        brain.face.subscribers(),
    );

    let actors = brain.actors();
    out.header("creature_actor_up", "gauge", "1 if the actor is running.");
    for a in &actors {
        out.value(
            "creature_actor_up",
            &format!("actor=\"{}\"", a.name),
            u8::from(a.status == ActorStatus::Running),
        );
    }
    out.header(
        "creature_actor_restarts_total",
        "counter",
        "Restarts by the supervisor.",
    );
    for a in &actors {
        out.value(
            "creature_actor_restarts_total",
            &format!("actor=\"{}\"", a.name),
            a.restarts,
        );
    }
    out.header(
        "creature_actor_handled_total",
        "counter",
        "Messages handled.",
    );
    for a in &actors {
        out.value(
            "creature_actor_handled_total",
            &format!("actor=\"{}\"", a.name),
            a.handled,
        );
    }
    out.header(
        "creature_actor_mailbox",
        "gauge",
        "Messages waiting in the mailbox.",
    );
    for a in &actors {
        out.value(
            "creature_actor_mailbox",
            &format!("actor=\"{}\"", a.name),
            a.mailbox,
        );
    }

    out.header(
        "creature_actor_mailbox_peak",
        "gauge",
        "Deepest the mailbox has been since the process started.",
    );
    for a in &actors {
        out.value(
            "creature_actor_mailbox_peak",
            &format!("actor=\"{}\"", a.name),
            a.mailbox_peak,
        );
    }
    let stats = brain.actor_stats();
    let series: Vec<(String, &LatencyHistogram)> = stats
        .iter()
        .map(|s| (format!("actor=\"{}\"", s.name()), s.latency()))
        .collect();
    out.histogram(
        "creature_actor_message_latency_seconds",
        "Message enqueued to handled, per actor (mailbox messages).",
        &series,
    );
    let bus = brain.events();
    for (name, help, v) in super::events::bus_figures(bus) {
        out.single(name, "counter", help, v);
    }
    out.single(
        "creature_event_viewers",
        "gauge",
        "Event-stream viewers connected now.",
        bus.viewers(),
    );
    out.header(
        "creature_task_transitions_total",
        "counter",
        "Tasks that entered each state (filing enters pending), by where they came from.",
    );
    for (st, source, n) in bus.counters().task_transitions() {
        out.value(
            "creature_task_transitions_total",
            &format!("state=\"{st}\",source=\"{source}\""),
            n,
        );
    }
    out.histogram(
        "creature_planner_call_duration_seconds",
        "One planner call (an LLM request, or the rule planner), from asked to answered or failed.",
        &[(
            format!("planner=\"{}\"", brain.reasoner.planner_name()),
            brain.reasoner.planner_calls(),
        )],
    );
    out.histogram(
        "creature_intent_to_dispatch_seconds",
        "An intent heard by the reasoner to its task's tool call handed to the body (a task waiting for a body counts the wait).",
        &[(String::new(), brain.tasks.intent_to_dispatch())],
    );
    out.histogram(
        "creature_face_fanout_latency_seconds",
        "A voice frame's stats emitted by the loop to its face frame written to a phone's socket.",
        &[(String::new(), state.face_latency())],
    );
    out.header(
        "creature_drops_total",
        "counter",
        "Items dropped so that nothing waits or grows, by place (each counts its own items: user frames, frame stats, messages, stream events).",
    );
    let skipped = bus.counters().skipped.load(Ordering::Relaxed);
    let undelivered: u64 = actors.iter().map(|a| a.undelivered).sum();
    for (place, n) in [
        ("voice_backlog", load(&m.dropped_frames)),
        ("face_feed", brain.face.frames_dropped()),
        ("affect_feed", brain.affect.frames_dropped()),
        ("actor_between_incarnations", undelivered),
        ("event_viewers", skipped),
    ] {
        out.value("creature_drops_total", &format!("place=\"{place}\""), n);
    }

    if let Ok(summary) = brain.tasks.summary().await {
        out.header("creature_tasks", "gauge", "Tasks in the ledger by state.");
        for (st, n) in &summary.by_state {
            out.value("creature_tasks", &format!("state=\"{st}\""), n);
        }
    }
    if let Ok(affect) = brain.affect.snapshot().await {
        let f = |k: &str| affect[k].as_f64().unwrap_or(0.0);
        out.single(
            "creature_affect_valence",
            "gauge",
            "Valence, -1 (unpleasant) to 1 (pleasant).",
            f("valence"),
        );
        out.single(
            "creature_affect_arousal",
            "gauge",
            "Arousal, -1 (calm) to 1 (excited).",
            f("arousal"),
        );
        out.header(
            "creature_affect_emotion",
            "gauge",
            "1 for the current Ekman label.",
        );
        for e in Emotion::ALL {
            let on = affect["emotion"].as_str() == Some(e.as_str());
            out.value(
                "creature_affect_emotion",
                &format!("emotion=\"{}\"", e.as_str()),
                u8::from(on),
            );
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.0,
    )
        .into_response()
}
