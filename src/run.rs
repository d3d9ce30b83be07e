//! `creature run --in user.wav --out agent.wav`: the whole brain driven from a recording.
//! The user's audio (any rate and channel count, made 24 kHz mono) goes into the voice
//! loop's inbox a few frames ahead of it; the agent's frames are placed in the output at
//! the stream position of the user audio each step heard, so the output is sample-aligned
//! with the input and exactly as long. Each turn is measured by the loop itself
//! ([`creature_actors::turns`]) and printed as a table.
//!
//! Two clocks: real time (the loop's own ticker, 80 ms a frame, as a phone would feed it),
//! or `--fast`, a virtual clock: the loop is ticked by hand as soon as the previous step is
//! done, so a run takes as long as the model computes. Turn times are stream times (whole
//! frames), so both clocks give the same turns; only wall-time figures (own latency,
//! compute) differ.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use creature_actors::histogram::Percentiles;
use creature_actors::turns::TurnRecord;
use creature_actors::voice::{StepTap, TurnsReport};
use creature_actors::{BrainHandle, FRAME_PERIOD, FRAME_SAMPLES, SAMPLE_RATE};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::config::{Backend, Config};
use crate::service::start_brain_with;
use crate::voice;
use crate::wav::{Wav, write_pcm16};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The user's side of the conversation: a WAV file (PCM 16/24/32 bit or 32-bit float,
    /// any rate, any channels).
    #[arg(long = "in", value_name = "WAV")]
    pub input: PathBuf,
    /// Where to write the agent's side: 24 kHz mono 16-bit PCM, as long as the input.
    #[arg(long = "out", value_name = "WAV")]
    pub output: PathBuf,
    /// Config file (see config/creature.toml); defaults apply without one.
    #[arg(long, env = "CREATURE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Voice backend (overrides voice.backend).
    #[arg(long, value_enum)]
    pub voice: Option<Backend>,
    /// Moshi checkpoint directory (overrides voice.moshi.dir; implies `--voice moshi`).
    #[arg(long)]
    pub moshi_dir: Option<PathBuf>,
    #[command(flatten)]
    pub cascade: crate::voice::cascade::CascadeArgs,
    /// A virtual clock: step as fast as the model allows instead of every 80 ms.
    #[arg(long)]
    pub fast: bool,
    /// Also write the turns and figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub backend: &'static str,
    /// "virtual" (`--fast`) or "real-time".
    pub clock: &'static str,
    /// Seconds of audio (24 kHz samples / 24000).
    pub audio_seconds: f64,
    /// Wall time of the run, seconds.
    pub wall_seconds: f64,
    pub steps: u64,
    pub overruns: u64,
    pub dropped_frames: u64,
    /// Steps after the input began that found less than a whole frame of it waiting (the
    /// feed fell behind the loop): the brain heard silence there, and the agent's audio of
    /// such a step is cut to the user audio it heard.
    pub partial_frames: u64,
    /// The tick that heard the input's first sample: turn ticks minus this are frames
    /// into the file.
    pub first_tick: u64,
    /// Every completed turn, in order.
    pub turns: Vec<TurnRecord>,
    /// The loop's turn figures over the run.
    pub summary: TurnsReport,
    pub compute_ms: Percentiles,
    /// Whether the last user turn was still open (talking, or waiting for an answer) when
    /// the audio ended; it is not in `turns`.
    pub open_turn_at_end: bool,
}

/// The agent's audio and what was measured.
#[derive(Debug)]
pub struct RunOutcome {
    /// As long as the user's audio, sample-aligned with it.
    pub agent: Vec<f32>,
    pub report: RunReport,
}

/// How long one step may take before a run gives up on the model.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames kept waiting in the inbox ahead of a real-time loop.
const LEAD_FRAMES: u64 = 3;
/// Steps that may find nothing waiting once the whole input was fed, before a real-time
/// run gives up (the input went missing, e.g. dropped from a full inbox).
const IDLE_STEPS_AFTER_END: u32 = 25;

/// `creature run`.
#[allow(clippy::print_stdout)]
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.moshi_dir {
        config.voice.moshi.dir = Some(dir.clone());
        config.voice.backend = Backend::Moshi;
    }
    if args.cascade.apply(&mut config.voice.cascade) {
        config.voice.backend = Backend::Cascade;
    }
    if let Some(voice) = args.voice {
        config.voice.backend = voice;
    }
    if args.fast
        && config.voice.backend == Backend::Cascade
        && config
            .voice
            .cascade
            .llm_endpoint(&config.reasoner.llm)
            .is_some()
    {
        eprintln!(
            "run: note: the cascade's LLM answers in wall time; on the virtual clock (--fast) its wait counts as however many steps pass meanwhile. Measure an LLM endpoint without --fast."
        );
    }
    let wav = Wav::read(&args.input)
        .with_context(|| format!("cannot use {} as the user's audio", args.input.display()))?;
    let user = wav.to_loop_audio();
    if user.is_empty() {
        bail!("{} holds no audio", args.input.display());
    }
    eprintln!(
        "run: {} ({} Hz, {} channel(s), {:.2} s) through the {} voice, {} clock",
        args.input.display(),
        wav.sample_rate,
        wav.channels,
        user.len() as f64 / f64::from(SAMPLE_RATE),
        config.voice.backend.as_str(),
        if args.fast { "virtual" } else { "real-time" }
    );
    let outcome = run_audio(config, &user, args.fast).await?;
    write_pcm16(&args.output, &outcome.agent, SAMPLE_RATE)?;
    print!("{}", turn_table(&outcome.report));
    println!(
        "wrote {} ({} samples at 24 kHz, as long as the input)",
        args.output.display(),
        outcome.agent.len()
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&outcome.report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Drive a brain built from `config` with `user` (24 kHz mono): on a virtual clock when
/// `fast`, else in real time. The task ledger lives in a temporary directory.
pub async fn run_audio(mut config: Config, user: &[f32], fast: bool) -> anyhow::Result<RunOutcome> {
    let data = std::env::temp_dir().join(format!(
        "creature-run-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    config.data_dir = data.clone();
    config.audio.device = false;
    config.voice.actor.manual_ticks = fast;
    // Enough room for the lead, whatever the file's config says.
    config.voice.actor.inbox_frames = config
        .voice
        .actor
        .inbox_frames
        .max(LEAD_FRAMES as usize + 2);
    let for_model = config.clone();
    let model = tokio::task::spawn_blocking(move || voice::build(&for_model))
        .await
        .context("the voice model loader died")?
        .context("cannot start the voice model")?;
    let brain = start_brain_with(&config, model, None).await?;
    let result = drive(&brain, user, fast).await;
    brain.stop().await;
    let _ = std::fs::remove_dir_all(&data);
    result
}

/// Runs in this process, so each gets its own ledger directory.
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The output being assembled, and the turns seen so far.
struct Collector {
    agent: Vec<f32>,
    /// Samples of the input the loop has heard.
    heard: u64,
    first_tick: Option<u64>,
    partial_frames: u64,
    turns: Vec<TurnRecord>,
}

impl Collector {
    fn new(len: usize) -> Self {
        Collector {
            agent: vec![0.0; len],
            heard: 0,
            first_tick: None,
            partial_frames: 0,
            turns: Vec::new(),
        }
    }

    /// Place a step's agent frame where its user audio was in the input.
    fn place(&mut self, tap: &StepTap) {
        if tap.user_samples == 0 {
            // A tick before the input began, or one that found nothing waiting.
            if self.first_tick.is_some() && self.heard < self.agent.len() as u64 {
                self.partial_frames += 1;
            }
            return;
        }
        if tap.user_from == 0 {
            self.first_tick = Some(tap.tick);
        }
        if tap.user_samples < FRAME_SAMPLES
            && tap.user_from + (tap.user_samples as u64) < self.agent.len() as u64
        {
            self.partial_frames += 1;
        }
        let from = tap.user_from as usize;
        let to = (from + tap.user_samples).min(self.agent.len());
        if from < to {
            self.agent[from..to].copy_from_slice(&tap.agent[..to - from]);
        }
        self.heard = self.heard.max(tap.user_from + tap.user_samples as u64);
    }

    /// Take the turns the loop published since the last look.
    fn take_turns(&mut self, brain: &BrainHandle) {
        let seen = self.turns.last().map_or(0, |t| t.index);
        let m = brain.voice.metrics();
        if m.turns.load(std::sync::atomic::Ordering::Relaxed) > seen {
            self.turns
                .extend(m.recent_turns().into_iter().filter(|t| t.index > seen));
        }
    }
}

async fn next_tap(taps: &mut tokio::sync::broadcast::Receiver<StepTap>) -> anyhow::Result<StepTap> {
    match tokio::time::timeout(STEP_TIMEOUT, taps.recv()).await {
        Ok(Ok(tap)) => Ok(tap),
        Ok(Err(RecvError::Lagged(n))) => {
            bail!("the run fell {n} steps behind the voice loop; its output would have holes")
        }
        Ok(Err(RecvError::Closed)) => bail!("the voice loop stopped during the run"),
        Err(_) => bail!(
            "the model took more than {} s for one step",
            STEP_TIMEOUT.as_secs()
        ),
    }
}

async fn drive(brain: &Arc<BrainHandle>, user: &[f32], fast: bool) -> anyhow::Result<RunOutcome> {
    let m = Arc::clone(brain.voice.metrics());
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let before = (load(&m.steps), load(&m.overruns), load(&m.dropped_frames));
    let compute_before = m.compute.snapshot();
    let mut taps = brain.voice.subscribe_steps();
    let mut out = Collector::new(user.len());
    let frames = user.len().div_ceil(FRAME_SAMPLES);
    let started = Instant::now();
    let mut frame = vec![0.0f32; FRAME_SAMPLES];
    let chunk = |k: usize, frame: &mut Vec<f32>| {
        let from = k * FRAME_SAMPLES;
        let to = (from + FRAME_SAMPLES).min(user.len());
        frame.clear();
        frame.extend_from_slice(&user[from..to]);
    };
    if fast {
        for k in 0..frames {
            chunk(k, &mut frame);
            brain.push_user_audio(&frame);
            let tick = k as u64 + 1;
            if !brain.voice.tick_by_hand(tick) {
                bail!("the voice loop is not running");
            }
            loop {
                let tap = next_tap(&mut taps).await?;
                out.place(&tap);
                if tap.tick >= tick {
                    break;
                }
            }
            out.take_turns(brain);
        }
    } else {
        // Keep a few whole frames waiting ahead of the loop's ticker, so every tick takes
        // a whole frame of the input.
        let inbox = Arc::clone(brain.inbox());
        let mut pushed = 0usize;
        let mut idle_after_end = 0u32;
        let lead = LEAD_FRAMES * FRAME_SAMPLES as u64;
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while out.heard < user.len() as u64 {
            while pushed < frames && inbox.buffered() < lead {
                chunk(pushed, &mut frame);
                inbox.push(&frame);
                pushed += 1;
            }
            tokio::select! {
                _ = poll.tick() => {}
                tap = next_tap(&mut taps) => {
                    let tap = tap?;
                    if pushed == frames && tap.user_samples == 0 {
                        idle_after_end += 1;
                        if idle_after_end > IDLE_STEPS_AFTER_END {
                            bail!(
                                "the voice loop stopped taking the input: {} of {} samples heard",
                                out.heard,
                                user.len()
                            );
                        }
                    }
                    out.place(&tap);
                    out.take_turns(brain);
                }
            }
        }
    }
    out.take_turns(brain);
    let wall = started.elapsed();
    let report = RunReport {
        backend: brain.voice.backend(),
        clock: if fast { "virtual" } else { "real-time" },
        audio_seconds: user.len() as f64 / f64::from(SAMPLE_RATE),
        wall_seconds: wall.as_secs_f64(),
        steps: load(&m.steps) - before.0,
        overruns: load(&m.overruns) - before.1,
        dropped_frames: load(&m.dropped_frames) - before.2,
        partial_frames: out.partial_frames,
        first_tick: out.first_tick.unwrap_or(1),
        summary: m.turns_report(),
        compute_ms: m.compute.snapshot().since(&compute_before).percentiles(),
        open_turn_at_end: m.turn_open.load(std::sync::atomic::Ordering::Relaxed),
        turns: out.turns,
    };
    Ok(RunOutcome {
        agent: out.agent,
        report,
    })
}

/// Milliseconds as the table shows them.
/// A stream-time figure in whole ms, or `-`.
pub(crate) fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// A wall-time figure (own latency) to the microsecond, or `-`.
pub(crate) fn own_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// The per-turn table `run` prints (and the bench, per backend).
pub fn turn_table(r: &RunReport) -> String {
    let frame_s = FRAME_PERIOD.as_secs_f64();
    let at = |tick: u64| tick.saturating_sub(r.first_tick) as f64 * frame_s;
    let mut out = format!(
        "{} voice, {} clock: {:.2} s of audio in {:.2} s, {} steps ({} overruns, {} dropped)\n",
        r.backend, r.clock, r.audio_seconds, r.wall_seconds, r.steps, r.overruns, r.dropped_frames
    );
    out.push_str(
        "turn  user from-to (s)   wait  response  gap (ms)  barge-in  reaction  backch  overlap  own (ms)  compute  outcome\n",
    );
    for t in &r.turns {
        out.push_str(&format!(
            "{:>4}  {:>6.2}-{:<8.2}  {:>4.0}  {:>8}  {:>8}  {:>8}  {:>8}  {:>6}  {:>7.0}  {:>8}  {:>7}  {}\n",
            t.index,
            at(t.user_start_tick),
            at(t.user_end_tick),
            t.turn_wait_ms,
            ms(t.response_ms),
            ms(t.gap_ms),
            if t.barge_in { "yes" } else { "-" },
            ms(t.barge_in_reaction_ms),
            t.backchannels,
            t.overlap_ms,
            own_ms(t.own_ms),
            t.compute_ms.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            t.outcome.label()
        ));
    }
    if r.turns.is_empty() {
        out.push_str("  (no complete user turn)\n");
    }
    if r.turns.iter().any(|t| t.stages.is_some()) {
        out.push_str(
            "stages (ms, stream time; mouth closes -> voice starts)\nturn  turn wait  stt final  llm first token  tts first audio    sum   gap  llm wall\n",
        );
        for t in &r.turns {
            if let Some(st) = &t.stages {
                out.push_str(&format!(
                    "{:>4}  {:>9.0}  {:>9.0}  {:>15.0}  {:>15.0}  {:>5.0}  {:>4}  {:>8.1}\n",
                    t.index,
                    st.turn_wait_ms,
                    st.stt_final_ms,
                    st.llm_first_token_ms,
                    st.tts_first_audio_ms,
                    st.total_ms(),
                    ms(t.gap_ms),
                    st.llm_wall_ms
                ));
            }
        }
    }
    if r.open_turn_at_end {
        out.push_str("  (the last user turn was still open when the audio ended)\n");
    }
    let s = &r.summary;
    out.push_str(&format!(
        "own latency per frame: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms; model compute p50 {:.2} ms  p99 {:.2} ms\n",
        s.own_latency_ms.p50_ms,
        s.own_latency_ms.p99_ms,
        s.own_latency_ms.max_ms,
        r.compute_ms.p50_ms,
        r.compute_ms.p99_ms
    ));
    if r.partial_frames > 0 {
        out.push_str(&format!(
            "  ({} steps heard a partial frame: the feed fell behind the loop)\n",
            r.partial_frames
        ));
    }
    out
}
