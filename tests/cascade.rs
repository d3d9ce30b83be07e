//! The `cascade` backend (Kyutai streaming STT -> LLM or built-in responder -> Kyutai
//! streaming TTS) on tiny random checkpoints written here in Kyutai's layouts, driven
//! through the whole brain: it answers every turn after the user's silence, its stages add
//! up to the gap the loop measured, a barge-in stops its voice within a frame, its
//! figures reach `/api/state` and `/metrics`, and a streamed OpenAI-compatible LLM's words
//! become the creature's speech and deeds.

mod common;

use std::path::Path;

use creature::config::{Backend, Config};
use creature::run::run_audio;
use creature::voice::cascade::EndOfTurn;
use creature::voice::moshi::{stt, tts};
use creature_actors::audio::{dbfs, rms};
use creature_actors::turns::TurnOutcome;
use creature_actors::{FRAME_SAMPLES, SAMPLE_RATE};

const FRAME_MS: f64 = 80.0;

/// (seconds, speaking) pieces at 24 kHz (see [`common::speech_script`]).
fn script(pieces: &[(f64, bool)]) -> Vec<f32> {
    common::speech_script(SAMPLE_RATE, pieces)
}

/// Tiny STT and TTS checkpoints in `dir`.
fn checkpoints(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let stt_dir = dir.join("stt");
    let tts_dir = dir.join("tts");
    stt::write_tiny_stt(&stt_dir, 5).expect("tiny STT");
    tts::write_tiny_tts(&tts_dir, 9).expect("tiny TTS");
    (stt_dir, tts_dir)
}

fn cascade_config(dir: &Path) -> Config {
    let (stt_dir, tts_dir) = checkpoints(dir);
    let mut config = Config::default();
    config.voice.backend = Backend::Cascade;
    config.voice.actor.realtime_priority = false;
    let c = &mut config.voice.cascade;
    c.stt_dir = Some(stt_dir);
    c.tts_dir = Some(tts_dir);
    // The tiny STT's pause heads are random: the energy rule decides here.
    c.end_of_turn = EndOfTurn::Silence;
    c.silence_ms = 480;
    c.responder_delay_ms = 320;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cascade_answers_every_turn_after_the_silence_and_its_stages_add_up_to_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let config = cascade_config(dir.path());
    let user = script(&[
        (0.4, false),
        (1.2, true),
        (5.0, false),
        (0.8, true),
        (5.0, false),
        (2.0, true),
        (5.0, false),
    ]);
    let outcome = run_audio(config, &user, true).await.expect("the run");
    let r = &outcome.report;
    assert_eq!(r.backend, "cascade");
    assert_eq!(outcome.agent.len(), user.len());
    assert_eq!(r.turns.len(), 3, "{:#?}", r.turns);
    for t in &r.turns {
        assert_eq!(t.outcome, TurnOutcome::Answered, "{t:#?}");
        let gap = t.gap_ms.expect("an answer has a gap");
        let stages = t.stages.expect("the cascade reports its stages");
        // The answer comes after the user's silence, never into it.
        assert!(
            stages.turn_wait_ms >= FRAME_MS && stages.turn_wait_ms <= 480.0,
            "{stages:?}"
        );
        assert!(gap >= stages.turn_wait_ms, "{t:#?}");
        assert!(
            (stages.total_ms() - gap).abs() <= 2.0 * FRAME_MS,
            "stages {stages:?} add up to {} ms, the loop measured a gap of {gap} ms",
            stages.total_ms()
        );
        // The built-in responder's stand-in delay is stream time: exact.
        assert_eq!(stages.llm_first_token_ms, 320.0, "{stages:?}");
        assert!(stages.tts_first_audio_ms >= 0.0 && stages.stt_final_ms >= 0.0);
        eprintln!("turn {}: gap {gap} ms, stages {stages:?}", t.index);
    }
    assert_eq!(r.summary.response_ms.count, 3);
    // Silent until the first answer, audible at it.
    let first = &r.turns[0];
    let at = (first.answer_tick.unwrap() - r.first_tick) as usize * FRAME_SAMPLES;
    assert!(outcome.agent[..at].iter().all(|&s| s == 0.0));
    let level = dbfs(rms(&outcome.agent[at..at + FRAME_SAMPLES]));
    assert!(level >= -50.0, "the answer's first frame at {level} dBFS");
}

/// Level of each 80 ms frame of `audio`, dBFS.
fn levels(audio: &[f32]) -> Vec<f32> {
    audio.chunks(FRAME_SAMPLES).map(|f| dbfs(rms(f))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barge_in_during_the_cascades_speech_stops_its_voice_within_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let config = cascade_config(dir.path());
    let agent_dbfs = config.voice.actor.agent_speaking_dbfs;
    // First, where does the answer to a turn begin, and how long does it last?
    let lead = [(0.4, false), (1.2, true)];
    let mut probe = lead.to_vec();
    probe.push((8.0, false));
    let first = run_audio(config.clone(), &script(&probe), true)
        .await
        .expect("the probe run");
    let answer_frame =
        (first.report.turns[0].answer_tick.expect("answered") - first.report.first_tick) as usize;
    let loud: Vec<usize> = levels(&first.agent)
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= agent_dbfs)
        .map(|(i, _)| i)
        .collect();
    let last_loud = *loud.last().unwrap();
    assert!(
        last_loud >= answer_frame + 6,
        "the reply lasts a while: frames {answer_frame}..={last_loud}"
    );
    // Then the same, with the user talking again three frames into the reply.
    let onset_frame = answer_frame + 3;
    let mut barge = lead.to_vec();
    barge.push(((onset_frame - 20) as f64 * 0.08, false));
    barge.push((1.0, true));
    barge.push((6.0, false));
    let outcome = run_audio(config, &script(&barge), true)
        .await
        .expect("the barge-in run");
    let r = &outcome.report;
    let t = r
        .turns
        .iter()
        .find(|t| t.barge_in)
        .unwrap_or_else(|| panic!("a barge-in turn: {:#?}", r.turns));
    assert_eq!(
        t.user_start_tick - r.first_tick,
        onset_frame as u64,
        "{t:#?}"
    );
    let reaction = t.barge_in_reaction_ms.expect("the creature went quiet");
    assert!(reaction <= FRAME_MS, "barge-in reaction {reaction} ms");
    // From the onset's next frame on, the creature's voice is gone for the user's turn.
    let after = levels(&outcome.agent);
    for (i, l) in after.iter().enumerate().skip(onset_frame + 1).take(12) {
        assert!(*l < agent_dbfs, "frame {i} still at {l} dBFS");
    }
}

/// A stand-in for an OpenAI-compatible chat endpoint: `POST /v1/chat/completions` with
/// `"stream": true` answers, after `delay`, with `reply` word by word as server-sent
/// events (one every `pace`), then `[DONE]`. It keeps each request body, and notes when a
/// reply stream was dropped before its end (the client hung up).
mod stub_llm {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Json;
    use axum::extract::State;
    use axum::response::sse::{Event, Sse};
    use axum::routing::post;
    use futures::stream::{self, Stream};
    use serde_json::{Value, json};

    #[derive(Clone)]
    pub(crate) struct Stub {
        pub(crate) requests: Arc<Mutex<Vec<Value>>>,
        pub(crate) hung_up: Arc<AtomicUsize>,
        pub(crate) completed: Arc<AtomicUsize>,
        reply: &'static str,
        delay: Duration,
        pace: Duration,
    }

    /// Counts a stream dropped before its last event.
    struct Watch {
        done: bool,
        hung_up: Arc<AtomicUsize>,
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            if !self.done {
                self.hung_up.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn chunk(content: &str) -> String {
        json!({
            "id": "chatcmpl-stub",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "stub",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
        })
        .to_string()
    }

    async fn chat(
        State(stub): State<Stub>,
        Json(body): Json<Value>,
    ) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
        assert_eq!(body["stream"], true, "{body}");
        stub.requests.lock().unwrap().push(body);
        let words: Vec<String> = stub
            .reply
            .split_inclusive(' ')
            .map(str::to_string)
            .collect();
        let watch = Watch {
            done: false,
            hung_up: stub.hung_up.clone(),
        };
        let state = (0usize, words, watch, stub.clone());
        Sse::new(stream::unfold(
            state,
            |(i, words, mut watch, stub)| async move {
                tokio::time::sleep(if i == 0 { stub.delay } else { stub.pace }).await;
                let event = match words.get(i) {
                    Some(word) => Event::default().data(chunk(word)),
                    None if i == words.len() => {
                        watch.done = true;
                        stub.completed.fetch_add(1, Ordering::SeqCst);
                        Event::default().data("[DONE]")
                    }
                    None => return None,
                };
                Some((Ok(event), (i + 1, words, watch, stub)))
            },
        ))
    }

    /// Serve the stub on a free port; returns its API base (`http://.../v1`).
    pub(crate) async fn serve(
        reply: &'static str,
        delay: Duration,
        pace: Duration,
    ) -> (String, Stub) {
        let stub = Stub {
            requests: Arc::default(),
            hung_up: Arc::default(),
            completed: Arc::default(),
            reply,
            delay,
            pace,
        };
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/v1"), stub)
    }
}

/// The next event of `llm`, waited for up to 10 s.
async fn next_event(
    llm: &creature::voice::cascade::llm::LlmTurns,
    what: &str,
) -> creature::voice::cascade::llm::LlmEvent {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(e) = llm.poll() {
            return e;
        }
        assert!(std::time::Instant::now() < deadline, "no {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_llm_turn_arrives_piece_by_piece_and_a_cancel_hangs_up_on_it() {
    use creature::voice::cascade::llm::{ChatSettings, LlmEvent, LlmTurns, Role};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    let (url, stub) = stub_llm::serve(
        "Okay, I'll bring you the cup.",
        Duration::from_millis(150),
        Duration::from_millis(20),
    )
    .await;
    let llm = LlmTurns::start(ChatSettings {
        base_url: url,
        model: "stub".into(),
        api_key: None,
        timeout: Duration::from_secs(5),
        max_tokens: 50,
        temperature: 0.5,
        system_prompt: "be brief".into(),
    })
    .unwrap();
    let asked = Instant::now();
    llm.ask(
        1,
        vec![
            (Role::User, "hello".into()),
            (Role::Assistant, "Hi!".into()),
            (Role::User, "bring me the cup".into()),
        ],
    );
    let mut events = Vec::new();
    loop {
        let e = next_event(&llm, "the reply").await;
        assert!(
            matches!(e, LlmEvent::Piece { id: 1, .. } | LlmEvent::Done { id: 1 }),
            "{e:?}"
        );
        events.push(e);
        if matches!(events.last(), Some(LlmEvent::Done { .. })) {
            break;
        }
    }
    assert!(asked.elapsed() >= Duration::from_millis(150));
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            LlmEvent::Piece { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Okay, I'll bring you the cup.");
    assert!(events.len() >= 6, "piece by piece: {events:?}");
    assert_eq!(events.last(), Some(&LlmEvent::Done { id: 1 }));
    let body = stub.requests.lock().unwrap()[0].clone();
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"], "{body}");
    assert_eq!(body["messages"][3]["content"], "bring me the cup");

    // A slow reply, cancelled after its first piece: the stream is dropped, and nothing
    // more arrives for it.
    let (slow_url, slow) = stub_llm::serve(
        "one two three four five six seven eight nine ten",
        Duration::from_millis(50),
        Duration::from_millis(200),
    )
    .await;
    let llm2 = LlmTurns::start(ChatSettings {
        base_url: slow_url,
        ..llm.settings().clone()
    })
    .unwrap();
    llm2.ask(7, vec![(Role::User, "count".into())]);
    let first = next_event(&llm2, "a first piece").await;
    assert!(matches!(first, LlmEvent::Piece { id: 7, .. }), "{first:?}");
    llm2.cancel(7);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut late = Vec::new();
    while let Some(e) = llm2.poll() {
        late.push(e);
    }
    assert!(
        late.len() <= 1,
        "at most a piece already on its way: {late:?}"
    );
    assert!(!late.iter().any(|e| matches!(e, LlmEvent::Done { .. })));
    assert_eq!(slow.hung_up.load(Ordering::SeqCst), 1, "the client hung up");
    assert_eq!(slow.completed.load(Ordering::SeqCst), 0);

    // Nobody listening: the request fails with a reason, it does not hang.
    let dead = LlmTurns::start(ChatSettings {
        base_url: "http://127.0.0.1:9/v1".into(),
        ..llm.settings().clone()
    })
    .unwrap();
    dead.ask(3, vec![(Role::User, "hello?".into())]);
    let failed = next_event(&dead, "the failure").await;
    match failed {
        LlmEvent::Failed { id: 3, why } => assert!(why.contains("refused"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_with_an_llm_the_cascades_words_become_deeds_and_its_stages_reach_the_api() {
    use common::{assert_schema, eventually, start_with};
    use serde_json::json;
    use std::time::Duration;

    let (url, stub) = stub_llm::serve(
        "Okay, I'll bring you the cup.",
        Duration::from_millis(200),
        Duration::from_millis(10),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cascade = cascade_config(dir.path()).voice;
    let brain = start_with(move |c| {
        c.voice = cascade;
        c.voice.cascade.llm_url = url;
        c.voice.cascade.llm_model = "stub".into();
    })
    .await;
    let (_, state) = brain.get("/api/state").await;
    assert_eq!(state["voice"]["backend"], "cascade", "{state}");

    // Typed: the LLM's streamed reply is spoken, and its commitment becomes a task.
    let (status, body) = brain
        .post("/api/hear", json!({"text": "could you bring me the cup?"}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["backend"], "cascade");
    let task = eventually(Duration::from_secs(20), "the cup task", || async {
        let (_, page) = brain.get("/api/tasks").await;
        page["tasks"].as_array().and_then(|l| l.first().cloned())
    })
    .await;
    assert_eq!(task["arguments"]["action"], "bring", "{task}");
    assert_eq!(task["arguments"]["object"], "cup", "{task}");
    assert_eq!(task["source"], "monologue");
    let asked = stub.requests.lock().unwrap()[0].clone();
    let last = asked["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"], "could you bring me the cup?", "{asked}");

    // Spoken: a turn fed as a microphone would, answered through the endpoint.
    let voice = brain.service.brain().voice.clone();
    let inbox = std::sync::Arc::clone(brain.service.brain().inbox());
    let mut every = tokio::time::interval(Duration::from_millis(80));
    for frame in script(&[(1.0, true), (4.0, false)]).chunks(FRAME_SAMPLES) {
        every.tick().await;
        inbox.push(frame);
    }
    let turn = eventually(Duration::from_secs(10), "an answered turn", || async {
        voice
            .report()
            .turns
            .recent
            .into_iter()
            .find(|t| t.outcome == TurnOutcome::Answered)
    })
    .await;
    let stages = turn.stages.expect("stages");
    assert!(
        stages.llm_wall_ms >= 200.0,
        "the endpoint's 200 ms delay is in its time to first token: {stages:?}"
    );
    assert!(
        stages.llm_first_token_ms >= 160.0,
        "and in the stream-time stage, within a frame: {stages:?}"
    );
    assert!(
        (stages.total_ms() - turn.gap_ms.unwrap()).abs() <= 2.0 * FRAME_MS,
        "{turn:#?}"
    );
    let (_, state) = brain.get("/api/state").await;
    assert_schema("state.schema.json", &state);
    let turns = &state["voice"]["turns"];
    assert!(
        turns["stages_ms"]["llm_first_token"]["count"]
            .as_u64()
            .unwrap()
            >= 1,
        "{turns}"
    );
    // The backend's status (refreshed about once a second) tells the exchange.
    let status = eventually(
        Duration::from_secs(5),
        "the status of both answers",
        || async {
            let (_, state) = brain.get("/api/state").await;
            let status = state["voice"]["model"].clone();
            (status["answered"].as_u64() >= Some(2) && status["replying"] == false)
                .then_some(status)
        },
    )
    .await;
    assert_eq!(status["llm"]["model"], "stub", "{status}");
    assert_eq!(
        status["last_reply"], "Okay, I'll bring you the cup.",
        "{status}"
    );
    let metrics = reqwest::get(format!("{}/metrics", brain.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |stage: &str| -> f64 {
        let name = format!("creature_turn_stage_seconds_count{{stage=\"{stage}\"}}");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str())?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    for stage in [
        "turn_wait",
        "stt_final",
        "llm_first_token",
        "tts_first_audio",
    ] {
        assert!(count(stage) >= 1.0, "{stage}");
    }
    // `creature state` tells the stages and the last exchange.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_creature"))
        .arg("state")
        .env("CREATURE_URL", &brain.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("cascade stages"), "{stdout}");
    assert!(stdout.contains("Okay, I'll bring you the cup."), "{stdout}");
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_turn_runs_sim_moshi_and_the_cascade_on_one_script_side_by_side() {
    use clap::Parser;
    use creature::bench::{BenchSize, TurnBenchArgs, run_turn};

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        turn: TurnBenchArgs,
    }
    let args = Args::parse_from(["bench", "--fast"]).turn;
    assert_eq!(args.size, BenchSize::Tiny);
    let report = run_turn(&args).await.expect("the bench");
    let backends: Vec<&str> = report.runs.iter().map(|r| r.backend).collect();
    assert_eq!(backends, ["sim", "moshi", "cascade"]);
    let cascade = &report.runs[2];
    let answered: Vec<_> = cascade
        .turns
        .iter()
        .filter(|t| t.outcome == TurnOutcome::Answered)
        .collect();
    assert!(answered.len() >= 3, "{:#?}", cascade.turns);
    assert!(answered.iter().all(|t| t.stages.is_some()));
    let budget = |what: &str| {
        report
            .budgets
            .iter()
            .find(|b| b.what == what)
            .unwrap_or_else(|| panic!("no budget {what}"))
    };
    assert!(budget("cascade: stages add up to the gap").pass);
    assert!(budget("sim: response latency = reply delay").pass);
    // The cascade is slower to answer than the simulator's reply delay, by its stages.
    let sim_gap = report.runs[0].turns[0].gap_ms.unwrap();
    let cascade_gap = answered[0].gap_ms.unwrap();
    assert!(cascade_gap > sim_gap, "{cascade_gap} vs {sim_gap}");

    // Real sizes need the checkpoints named; nothing is downloaded.
    let real = Args::parse_from(["bench", "--fast", "--size", "real", "--voices", "cascade"]).turn;
    let err = run_turn(&real).await.unwrap_err().to_string();
    assert!(err.contains("--stt-dir"), "{err}");
}

#[test]
fn creature_run_drives_the_cascade_from_a_wav_and_prints_its_stages() {
    use creature::wav::{self, Wav};
    use std::process::Command;

    let bin = env!("CARGO_BIN_EXE_creature");
    let dir = tempfile::tempdir().unwrap();
    // The tiny checkpoints, written by the CLI as a user would.
    for kind in ["stt", "tts"] {
        let out = Command::new(bin)
            .args(["moshi", "tiny", "--kind", kind])
            .arg(dir.path().join(kind))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("config.json"), "{kind}: {stdout}");
    }
    assert!(dir.path().join("tts").join(tts::TTS_LM_FILE).is_file());
    let config = dir.path().join("creature.toml");
    std::fs::write(
        &config,
        "[voice.cascade]\nend_of_turn = \"silence\"\n[voice]\nrealtime_priority = false\n",
    )
    .unwrap();
    let input = dir.path().join("user.wav");
    let user = script(&[(0.4, false), (1.2, true), (4.0, false)]);
    std::fs::write(&input, wav::encode(&user, SAMPLE_RATE, 1, wav::PCM, 16)).unwrap();
    let output = dir.path().join("agent.wav");
    let run = Command::new(bin)
        .args(["run", "--fast", "--config"])
        .arg(&config)
        .arg("--stt-dir")
        .arg(dir.path().join("stt"))
        .arg("--tts-dir")
        .arg(dir.path().join("tts"))
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .env("CREATURE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("cascade voice, virtual clock"), "{stdout}");
    assert!(stdout.contains("stages (ms, stream time"), "{stdout}");
    assert!(stdout.contains("answered"), "{stdout}");
    let agent = Wav::read(&output).unwrap();
    assert_eq!(agent.samples.len(), user.len());
    assert!(
        agent.samples.iter().any(|s| s.abs() > 0.01),
        "the reply is in the output"
    );

    // Without its checkpoints the cascade says which key is missing.
    let run = Command::new(bin)
        .args(["run", "--fast", "--voice", "cascade", "--in"])
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .env("CREATURE_LOG", "warn")
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("stt_dir"), "{stderr}");
}
