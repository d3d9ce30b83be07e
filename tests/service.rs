//! The service on a real socket (127.0.0.1, port 0): what a person using the creature
//! would see through HTTP and the websockets.

mod common;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::{TestBrain, assert_schema, eventually, start};

async fn tasks(brain: &TestBrain) -> Vec<Value> {
    let (status, page) = brain.get("/api/tasks?order=asc&limit=500").await;
    assert_eq!(status, 200);
    page["tasks"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saying_bring_me_the_cup_files_a_bring_cup_task_within_five_seconds() {
    let brain = start().await;
    let started = Instant::now();
    let (status, body) = brain
        .post("/api/hear", json!({"text": "bring me the cup"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let task = eventually(Duration::from_secs(5), "a task", || async {
        tasks(&brain).await.into_iter().next()
    })
    .await;
    eprintln!("task filed {:?} after hearing", started.elapsed());
    assert_schema("task.schema.json", &task);
    assert_eq!(task["arguments"]["action"], "bring");
    assert_eq!(task["arguments"]["object"], "cup");
    assert_eq!(task["source"], "monologue");
    // The creature said so first: the commitment is in its inner monologue.
    let (_, mono) = brain.get("/api/actors/monologue").await;
    let said: String = mono["state"]["text"].as_str().unwrap().to_string();
    assert!(said.to_lowercase().contains("bring you the cup"), "{said}");
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_face_socket_streams_valid_frames_at_the_tick_rate_and_the_mouth_moves_when_speaking() {
    let brain = start().await;
    let (mut socket, _) = tokio_tungstenite::connect_async(brain.ws_url("/ws/face"))
        .await
        .unwrap();
    // Make it talk, then count a second of frames.
    brain
        .post("/api/hear", json!({"text": "how are you today"}))
        .await;
    let mut frames = Vec::new();
    let started = Instant::now();
    let window = Duration::from_secs(3);
    while started.elapsed() < window {
        let msg = tokio::time::timeout(Duration::from_secs(1), socket.next())
            .await
            .expect("a frame")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = msg {
            let frame: Value = serde_json::from_str(&text).unwrap();
            assert_schema("face_frame.schema.json", &frame);
            frames.push((started.elapsed(), frame));
        }
    }
    let last_second = frames
        .iter()
        .filter(|(at, _)| *at >= window - Duration::from_secs(1))
        .count();
    assert!(last_second >= 11, "{last_second} frames in the last second");
    let seqs: Vec<u64> = frames
        .iter()
        .map(|(_, f)| f["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "seq increases");
    let speaking: Vec<&Value> = frames
        .iter()
        .map(|(_, f)| f)
        .filter(|f| f["speaking"] == true)
        .collect();
    assert!(!speaking.is_empty(), "the creature spoke within 3 s");
    let max_mouth = speaking
        .iter()
        .map(|f| f["mouth"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        max_mouth > 0.3,
        "the mouth opened while speaking: {max_mouth}"
    );
    let quiet = frames
        .iter()
        .take_while(|(_, f)| f["speaking"] == false)
        .count();
    assert!(
        quiet >= 1 && frames[0].1["mouth"].as_f64().unwrap() < 0.05,
        "closed mouth before speaking"
    );
    socket.close(None).await.ok();
    brain.service.shutdown().await;
}

/// Loud, speech-like noise: amplitude-modulated, well above the VAD threshold.
fn speechy(frames: usize, seed: &mut u32) -> Vec<u8> {
    let mut pcm = Vec::with_capacity(frames * 1920);
    for i in 0..frames * 1920 {
        *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (*seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
        let envelope = 0.5 + 0.5 * (i as f32 * 2.0 * std::f32::consts::PI * 4.0 / 24_000.0).sin();
        pcm.push(0.4 * noise * envelope);
    }
    creature::server::f32_to_pcm16(&pcm)
}

async fn next_text(
    socket: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(2), socket.next())
            .await
            .expect("a message")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audio_socket_takes_the_microphone_plays_the_voice_and_refuses_bad_audio_clearly() {
    let brain = start().await;
    let (mut socket, _) = tokio_tungstenite::connect_async(brain.ws_url("/ws/audio"))
        .await
        .unwrap();
    let ready = next_text(&mut socket).await;
    assert_schema("audio_control.schema.json", &ready);
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["frame_samples"], 1920);

    // A second device takes the seat (the newest wins); the first is closed with a reason.
    let (mut second, _) = tokio_tungstenite::connect_async(brain.ws_url("/ws/audio"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut second).await["type"], "ready");
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(3), socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, Some(4001), "replaced by a newer connection");
    let mut socket = second;

    // Wrong formats get errors that say what to do, and lose nothing.
    socket
        .send(Message::text(
            json!({"type": "hello", "sample_rate": 48000}).to_string(),
        ))
        .await
        .unwrap();
    let err = next_text(&mut socket).await;
    assert_schema("audio_control.schema.json", &err);
    assert_eq!(err["error"], "unsupported_format");
    assert!(err["detail"].as_str().unwrap().contains("48000"), "{err}");
    socket.send(Message::binary(vec![0u8; 3840])).await.unwrap();
    assert_eq!(
        next_text(&mut socket).await["error"],
        "bad_audio",
        "audio after a bad hello is refused"
    );
    socket
        .send(Message::text(
            json!({"type": "hello", "sample_rate": 24000, "format": "pcm16le", "channels": 1})
                .to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next_text(&mut socket).await["type"], "hello_ok");
    socket.send(Message::binary(vec![0u8; 3841])).await.unwrap();
    let err = next_text(&mut socket).await;
    assert_eq!(err["error"], "bad_audio");
    socket
        .send(Message::binary(vec![0u8; 100_000]))
        .await
        .unwrap();
    assert_eq!(next_text(&mut socket).await["error"], "audio_too_large");
    socket.send(Message::text("{not json")).await.unwrap();
    assert_eq!(next_text(&mut socket).await["error"], "malformed_json");

    // Good audio goes in; the creature's voice comes out as 80 ms PCM16 frames.
    let before = brain.service.brain().inbox().received();
    socket.send(Message::binary(vec![0u8; 3840])).await.unwrap();
    eventually(Duration::from_secs(2), "the microphone audio", || async {
        (brain.service.brain().inbox().received() >= before + 1920).then_some(())
    })
    .await;
    brain.post("/api/hear", json!({"text": "hello"})).await;
    let mut loud_frames = 0;
    let deadline = Instant::now() + Duration::from_secs(4);
    while loud_frames < 3 && Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Binary(bytes)))) =
            tokio::time::timeout(Duration::from_secs(1), socket.next()).await
        {
            assert_eq!(bytes.len(), 3840, "one 80 ms frame of PCM16");
            let mut samples = Vec::new();
            creature::server::pcm16_to_f32(&bytes, &mut samples);
            if creature_actors::audio::rms(&samples) > 0.01 {
                loud_frames += 1;
            }
        }
    }
    assert!(
        loud_frames >= 3,
        "the creature's voice came back over the socket"
    );
    let (status, _) = brain.get("/healthz").await;
    assert_eq!(status, 200);
    drop(socket);
    // The seat is free again once the phone leaves.
    eventually(
        Duration::from_secs(2),
        "the audio seat to free up",
        || async {
            let (_, state) = brain.get("/api/state").await;
            (state["audio"]["session_open"] == false).then_some(())
        },
    )
    .await;
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talking_over_the_creature_stops_it_and_long_speech_gets_a_backchannel() {
    let brain = start().await;
    let (mut socket, _) = tokio_tungstenite::connect_async(brain.ws_url("/ws/audio"))
        .await
        .unwrap();
    next_text(&mut socket).await; // ready
    brain
        .post(
            "/api/hear",
            json!({"text": "what is your name and how do you feel today and what do you like"}),
        )
        .await;
    let voice = brain.service.brain().voice.clone();
    eventually(Duration::from_secs(3), "the creature to talk", || async {
        voice.report().speaking.then_some(())
    })
    .await;
    let pieces_before = voice.report().text_pieces;
    // Barge in: loud speech for half a second, paced like a real microphone.
    let mut seed = 1;
    for _ in 0..6 {
        socket
            .send(Message::binary(speechy(1, &mut seed)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    eventually(Duration::from_secs(2), "a barge-in", || async {
        (voice.report().barge_ins >= 1).then_some(())
    })
    .await;
    // It stopped talking: no more words from that answer.
    let after_barge = voice.report().text_pieces;
    assert!(
        after_barge - pieces_before <= 2,
        "kept talking after the barge-in"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, mono) = brain.get("/api/actors/monologue").await;
    let mid_answer = mono["state"]["phrase_in_progress"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        voice.report().text_pieces - after_barge <= 1,
        "no more words after it was interrupted: {mid_answer:?}"
    );

    // Long user speech while it is quiet: it says "mm-hm" without being asked.
    let start_pieces = voice.report().text_pieces;
    for _ in 0..45 {
        socket
            .send(Message::binary(speechy(1, &mut seed)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let (_, mono) = brain.get("/api/actors/monologue").await;
    let pieces: Vec<String> = mono["state"]["recent_pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        voice.report().text_pieces > start_pieces,
        "something was said during 3.6 s of user speech"
    );
    assert!(
        pieces.iter().any(|p| p.contains("mm-hm")),
        "a backchannel in {pieces:?}"
    );
    assert!(
        brain.service.brain().tasks.list().await.unwrap().is_empty(),
        "a backchannel is not a task"
    );
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_actor_shows_its_restart_in_the_api() {
    let brain = start().await;
    assert!(brain.service.brain().inject_fault("affect"));
    let affect = eventually(Duration::from_secs(3), "the restart", || async {
        let (_, list) = brain.get("/api/actors").await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "affect" && a["restarts"] == 1 && a["status"] == "running")
            .cloned()
    })
    .await;
    assert!(
        affect["last_error"]
            .as_str()
            .unwrap()
            .contains("injected fault"),
        "{affect}"
    );
    let (_, brain_snapshot) = brain.get("/api/actors/brain").await;
    assert_eq!(
        brain_snapshot["state"]["restart_history"][0]["child"],
        "affect"
    );
    let (status, _) = brain.get("/healthz").await;
    assert_eq!(status, 200);
    brain.service.shutdown().await;
}
