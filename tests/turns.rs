//! Conversational timing, measured: scripted conversations with pauses of known length,
//! made here as audio, driven through the whole brain (`creature run` and a served brain),
//! and the turns the voice loop measured checked against what the script and the `sim`
//! voice's settings say they must be.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use creature::config::Config;
use creature::run::run_audio;
use creature::wav::{self, Wav};
use creature_actors::turns::TurnOutcome;
use creature_actors::{FRAME_SAMPLES, SAMPLE_RATE};
use serde_json::{Value, json};

use common::{assert_schema, eventually, speech_script, start_with};

const FRAME_MS: f64 = 80.0;
/// The loop's voice detector waits this many quiet frames before a turn ends.
const HANGOVER_MS: f64 = 240.0;

/// A conversation script at `rate` Hz (see [`speech_script`]).
fn script(rate: u32, pieces: &[(f64, bool)]) -> Vec<f32> {
    speech_script(rate, pieces)
}

/// Speech, a pause long enough for the reply, speech again 320 ms into the reply (a
/// barge-in), then a long turn with room for a backchannel, then time for its reply.
fn conversation(rate: u32) -> Vec<f32> {
    script(
        rate,
        &[
            (0.4, false),
            (1.2, true),
            // hangover 240 + reply delay 400 + 320 into the reply
            (0.96, false),
            (0.96, true),
            (1.2, false),
            (3.2, true),
            (2.4, false),
        ],
    )
}

fn sim_config(reply_delay_ms: u64) -> Config {
    let mut config = Config::default();
    config.voice.sim.reply_delay_ms = reply_delay_ms;
    config.voice.actor.realtime_priority = false;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sims_response_latency_is_its_reply_delay_and_a_barge_in_stops_it_within_a_frame() {
    let reply_delay = 400.0;
    let user = conversation(SAMPLE_RATE);
    let outcome = run_audio(sim_config(reply_delay as u64), &user, true)
        .await
        .expect("the run");
    let r = &outcome.report;
    assert_eq!(outcome.agent.len(), user.len(), "sample-aligned, as long");
    let kinds: Vec<(TurnOutcome, bool)> = r.turns.iter().map(|t| (t.outcome, t.barge_in)).collect();
    assert_eq!(
        kinds,
        [
            (TurnOutcome::Answered, false),
            (TurnOutcome::NoAnswer, true),
            (TurnOutcome::Answered, false)
        ],
        "{:#?}",
        r.turns
    );
    for t in r
        .turns
        .iter()
        .filter(|t| t.outcome == TurnOutcome::Answered)
    {
        let response = t.response_ms.unwrap();
        assert!(
            (response - reply_delay).abs() <= FRAME_MS,
            "response {response} ms for a reply delay of {reply_delay} ms: {t:?}"
        );
        assert_eq!(t.turn_wait_ms, HANGOVER_MS, "{t:?}");
        assert_eq!(t.gap_ms.unwrap(), t.turn_wait_ms + response, "{t:?}");
        assert!(t.own_ms.unwrap() >= 0.0 && t.compute_ms.unwrap() >= 0.0);
    }
    // The first turn: 1.2 s of speech starting 0.4 s in (frame 5, tick 6).
    let first = &r.turns[0];
    assert_eq!(first.user_start_tick - r.first_tick, 5);
    assert_eq!(first.last_voice_tick - first.user_start_tick, 14);
    let barge = &r.turns[1];
    let reaction = barge.barge_in_reaction_ms.expect("the creature went quiet");
    assert!(
        reaction <= FRAME_MS + HANGOVER_MS,
        "barge-in reaction {reaction} ms"
    );
    assert!(
        reaction <= FRAME_MS,
        "sim fades out in the onset's frame: {reaction} ms"
    );
    assert!(
        r.turns[2].backchannels >= 1,
        "a mm-hm in the long turn: {:?}",
        r.turns[2]
    );
    assert_eq!(r.summary.barge_in_reaction_ms.count, 1);
    assert_eq!(r.summary.response_ms.count, 2);
    assert!(!r.open_turn_at_end, "every turn closed");
    // The agent's audio is where the loop put it: silent until the first reply.
    let reply_at = (first.answer_tick.unwrap() - r.first_tick) as usize * FRAME_SAMPLES;
    assert!(outcome.agent[..reply_at].iter().all(|&s| s == 0.0));
    assert!(
        outcome.agent[reply_at..reply_at + FRAME_SAMPLES]
            .iter()
            .any(|&s| s.abs() > 0.01),
        "the reply starts on its frame"
    );
}

fn creature() -> Command {
    Command::new(env!("CARGO_BIN_EXE_creature"))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn wav_mode_writes_the_agent_as_long_as_the_input_at_24k_on_either_clock() {
    let dir = tempfile::tempdir().unwrap();
    // 48 kHz stereo PCM16 on the real-time clock: 1 s of speech, then a pause for the reply.
    let mono = script(48_000, &[(0.2, false), (1.0, true), (1.8, false)]);
    let stereo: Vec<f32> = mono.iter().flat_map(|&s| [s, s * 0.5]).collect();
    let input = dir.path().join("user-48k.wav");
    write(&input, &wav::encode(&stereo, 48_000, 2, wav::PCM, 16));
    let output = dir.path().join("agent.wav");
    let run = creature()
        .args(["run", "--in"])
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
    let agent = Wav::read(&output).unwrap();
    assert_eq!((agent.sample_rate, agent.channels), (SAMPLE_RATE, 1));
    assert_eq!(agent.samples.len(), 72_000, "3 s at 24 kHz");
    assert!(stdout.contains("real-time clock"), "{stdout}");
    assert!(stdout.contains("answered"), "the reply is a turn: {stdout}");
    assert!(
        agent.samples.iter().any(|s| s.abs() > 0.01),
        "the creature's reply is in the output"
    );

    // 44.1 kHz float mono on the virtual clock, with a length that is no whole frame.
    let input = dir.path().join("user-44k.wav");
    let audio = script(44_100, &[(0.5, true), (1.337, false)]);
    write(&input, &wav::encode(&audio, 44_100, 1, wav::FLOAT, 32));
    let json = dir.path().join("run.json");
    let run = creature()
        .args(["run", "--fast", "--in"])
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .arg("--json")
        .arg(&json)
        .env("CREATURE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let expected = (audio.len() as f64 * 24_000.0 / 44_100.0).round() as usize;
    assert_eq!(Wav::read(&output).unwrap().samples.len(), expected);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["clock"], "virtual");
    assert_eq!(report["turns"][0]["outcome"], "answered", "{report}");
}

#[test]
fn each_bad_wav_gets_its_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = wav::encode(&[0.1; 4_800], 24_000, 1, wav::PCM, 16);
    let mut zero_channels = good.clone();
    zero_channels[22..24].copy_from_slice(&0u16.to_le_bytes());
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "not-riff.wav",
            b"ID3\x04 an mp3, really".to_vec(),
            "not a RIFF file",
        ),
        ("zero.wav", zero_channels, "0 channels"),
        (
            "alaw.wav",
            wav::encode(&[0.1; 100], 8_000, 1, 0x0006, 8),
            "unsupported encoding: format tag 0x0006 with 8 bits",
        ),
        (
            "pcm8.wav",
            wav::encode(&[0.1; 100], 8_000, 1, wav::PCM, 8),
            "unsupported encoding",
        ),
        (
            "cut.wav",
            good[..good.len() / 2].to_vec(),
            "the \"data\" chunk is truncated",
        ),
    ];
    for (name, bytes, expected) in cases {
        let input = dir.path().join(name);
        write(&input, &bytes);
        let run = creature()
            .args(["run", "--fast", "--in"])
            .arg(&input)
            .arg("--out")
            .arg(dir.path().join("out.wav"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(stderr.contains(name), "the file is named: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = creature()
        .args([
            "run",
            "--in",
            "/nonexistent/user.wav",
            "--out",
            "/tmp/x.wav",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/user.wav"));
}

/// The value of an unlabelled sample in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turn_histograms_move_when_turns_happen_and_the_api_lists_the_turns() {
    let brain = start_with(|c| c.voice.actor.realtime_priority = false).await;
    let metrics = || async {
        let resp = reqwest::get(format!("{}/metrics", brain.url))
            .await
            .unwrap();
        resp.text().await.unwrap()
    };
    let before = metrics().await;
    for name in [
        "creature_turn_response_seconds_count",
        "creature_barge_in_reaction_seconds_count",
    ] {
        assert_eq!(metric(&before, name), 0.0, "{name}");
    }
    let inbox = std::sync::Arc::clone(brain.service.brain().inbox());
    // Feed audio as a microphone would: one frame every 80 ms.
    let feed = |audio: Vec<f32>| {
        let inbox = std::sync::Arc::clone(&inbox);
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(80));
            for frame in audio.chunks(FRAME_SAMPLES) {
                every.tick().await;
                inbox.push(frame);
            }
        }
    };
    // A spoken turn, and a pause for the reply.
    feed(script(SAMPLE_RATE, &[(1.0, true), (1.6, false)])).await;
    let voice = brain.service.brain().voice.clone();
    eventually(Duration::from_secs(5), "an answered turn", || async {
        (voice.report().turns.answered >= 1).then_some(())
    })
    .await;
    // The creature talks (typed); the user talks over it.
    brain
        .post(
            "/api/hear",
            json!({"text": "tell me a long story about the moon and the sea"}),
        )
        .await;
    eventually(Duration::from_secs(3), "the creature to talk", || async {
        voice.report().speaking.then_some(())
    })
    .await;
    feed(script(SAMPLE_RATE, &[(0.8, true), (0.4, false)])).await;
    eventually(Duration::from_secs(5), "a barge-in reaction", || async {
        (voice.report().turns.barge_in_reaction_ms.count >= 1).then_some(())
    })
    .await;

    let after = metrics().await;
    assert!(metric(&after, "creature_turn_response_seconds_count") >= 1.0);
    assert_eq!(
        metric(&after, "creature_barge_in_reaction_seconds_count"),
        1.0
    );
    assert!(metric(&after, "creature_voice_own_latency_seconds_count") > 30.0);
    let own_count = metric(&after, "creature_voice_own_latency_seconds_count");
    let own_fast = metric(
        &after,
        "creature_voice_own_latency_seconds_bucket{le=\"0.01\"}",
    );
    assert!(
        own_fast * 2.0 >= own_count,
        "the brain's own latency is mostly under 10 ms: {own_fast} of {own_count}"
    );
    let quick_answers = metric(&after, "creature_turn_response_seconds_bucket{le=\"0.25\"}");
    assert!(
        quick_answers >= 1.0,
        "a 160 ms answer is in the 0.25 s bucket"
    );
    assert!(metric(&after, "creature_turns_total") >= 1.0);
    let response = metric(&after, "creature_turn_response_seconds_sum");
    assert!(
        (response - 0.16).abs() <= 0.08 + 1e-9,
        "the default reply delay (160 ms) within a frame: {response} s"
    );
    let reaction = metric(&after, "creature_barge_in_reaction_seconds_sum");
    assert!(reaction <= 0.08 + 0.24, "barge-in reaction {reaction} s");

    let (_, state) = brain.get("/api/state").await;
    assert_schema("state.schema.json", &state);
    let turns = &state["voice"]["turns"];
    assert!(turns["count"].as_u64().unwrap() >= 1, "{turns}");
    assert_eq!(turns["recent"][0]["outcome"], "answered", "{turns}");
    let (status, actor) = brain.get("/api/actors/voice").await;
    assert_eq!(status, 200);
    assert_eq!(
        actor["state"]["turns"]["recent"], turns["recent"],
        "{actor}"
    );
    brain.service.shutdown().await;
}
