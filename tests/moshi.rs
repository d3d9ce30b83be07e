//! The local `moshi` backend end to end: a tiny random-weight checkpoint written by
//! `creature moshi tiny`, loaded by the service through the same loader as a real one, and
//! run in the real fast loop on the CPU.

mod common;

use std::time::Duration;

use creature::config::Backend;
use creature::voice::moshi::tiny::write_tiny_checkpoint;
use serde_json::Value;

use common::{assert_schema, eventually, start_with, start_with_result};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiny_moshi_ticks_in_the_fast_loop_and_its_pieces_reach_the_monologue() {
    let checkpoint = tempfile::tempdir().unwrap();
    write_tiny_checkpoint(checkpoint.path(), 7, false).unwrap();
    let brain = start_with(|c| {
        c.voice.backend = Backend::Moshi;
        c.voice.moshi.dir = Some(checkpoint.path().to_path_buf());
    })
    .await;

    // 100 ticks at 12.5 Hz: 8 s.
    let state: Value = eventually(Duration::from_secs(30), "100 model steps", || async {
        let (_, s) = brain.get("/api/state").await;
        (s["voice"]["steps"].as_u64()? >= 100 && s["voice"]["model"]["steps"].as_u64()? >= 90)
            .then_some(s)
    })
    .await;
    assert_schema("state.schema.json", &state);
    let voice = &state["voice"];
    assert_eq!(voice["backend"], "moshi", "{voice}");
    assert_eq!(voice["step_errors"], 0, "{voice}");
    let p50 = voice["compute_ms"]["p50_ms"].as_f64().unwrap();
    let p99 = voice["compute_ms"]["p99_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 >= p50, "{voice}");
    // A tiny model keeps up with real time even in a debug build.
    assert!(p50 < 80.0, "{voice}");
    assert!(
        voice["real_time_factor"]["p50"].as_f64().unwrap() < 1.0,
        "{voice}"
    );
    let model = &voice["model"];
    assert_eq!(model["device"], "cpu", "{model}");
    assert_eq!(model["dtype"], "f32", "{model}");
    assert_eq!(model["resets"], 0, "{model}");
    assert!(model["text_pieces"].as_u64().unwrap() > 0, "{model}");
    assert!(voice["text_pieces"].as_u64().unwrap() > 0, "{voice}");

    let (status, mono) = brain.get("/api/actors/monologue").await;
    assert_eq!(status, 200, "{mono}");
    let pieces = mono["state"]["recent_pieces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!pieces.is_empty(), "{mono}");
    eprintln!(
        "tiny moshi in the loop: compute p50 {p50:.2} ms, p99 {p99:.2} ms; monologue: {:?}",
        mono["state"]["text"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(120)
            .collect::<String>()
    );
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_checkpoint_stops_startup_with_an_error_naming_the_file() {
    let checkpoint = tempfile::tempdir().unwrap();
    write_tiny_checkpoint(checkpoint.path(), 7, false).unwrap();
    let mimi = checkpoint
        .path()
        .join("tokenizer-e351c8d8-checkpoint125.safetensors");
    let bytes = std::fs::read(&mimi).unwrap();
    std::fs::write(&mimi, &bytes[..bytes.len() / 2]).unwrap();
    let result = start_with_result(|c| {
        c.voice.backend = Backend::Moshi;
        c.voice.moshi.dir = Some(checkpoint.path().to_path_buf());
    })
    .await;
    let err = match result {
        Ok(_) => panic!("a truncated Mimi file was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("tokenizer-e351c8d8-checkpoint125.safetensors"),
        "{err}"
    );
    assert!(err.contains("not a readable safetensors file"), "{err}");

    let result = start_with_result(|c| c.voice.backend = Backend::Moshi).await;
    let err = format!(
        "{:#}",
        result.err().expect("no checkpoint directory was accepted")
    );
    assert!(err.contains("--moshi-dir"), "{err}");
}
