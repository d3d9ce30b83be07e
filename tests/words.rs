//! Affect from words, end to end on a real socket: the user says something through
//! `POST /api/hear`, the sim voice answers in words that carry a feeling ("Yuck! That's
//! disgusting."), the monologue watcher reads the feeling in its own closed phrase and
//! casts it to `affect`, and the phone on `/ws/face` shows it. Each of the seven
//! expressions is reached this way.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::{TestBrain, eventually, start};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn face(brain: &TestBrain) -> Socket {
    tokio_tungstenite::connect_async(brain.ws_url("/ws/face"))
        .await
        .expect("the face socket opens")
        .0
}

/// Face frames until one satisfies `wanted` (returned), or panic after `limit`.
async fn face_until(
    socket: &mut Socket,
    limit: Duration,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    let mut last = Value::Null;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(other) => panic!("the face socket ended: {other:?}"),
            Err(_) => panic!("no face frame showed {what} within {limit:?}; last {last}"),
        };
        if let Message::Text(text) = msg {
            let frame: Value = serde_json::from_str(&text).expect("face frames are JSON");
            if wanted(&frame) {
                return frame;
            }
            last = frame;
        }
    }
}

/// The cues `affect` took from words, newest last: (emotion, applied).
async fn word_cues(brain: &TestBrain) -> Vec<(String, bool)> {
    let (status, snapshot) = brain.get("/api/actors/affect").await;
    assert_eq!(status, 200, "{snapshot}");
    let state = if snapshot.get("state").is_some() {
        &snapshot["state"]
    } else {
        &snapshot
    };
    state["recent_words"]
        .as_array()
        .map(|cues| {
            cues.iter()
                .map(|c| {
                    (
                        c["cue"]["emotion"].as_str().unwrap_or_default().to_string(),
                        c["applied"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_of_the_seven_expressions_is_reached_from_what_the_creature_says() {
    let brain = start().await;
    let mut socket = face(&brain).await;
    // What the user says, what the creature answers (the sim voice's rule table), and the
    // expression its words should put on the face.
    let cases = [
        ("I'm going to hit you", "anger"),
        ("there's a spider on the wall", "fear"),
        ("the milk is rotten", "disgust"),
        ("guess what happened", "surprise"),
        ("it's my birthday today", "happy"),
        ("my old dog died", "sad"),
        ("calm down a little", "neutral"),
    ];
    for (n, (heard, expression)) in cases.into_iter().enumerate() {
        let (status, body) = brain.post("/api/hear", json!({ "text": heard })).await;
        assert_eq!(status, 202, "{body}");
        // The words' cue reaches `affect` and takes over the face.
        eventually(
            Duration::from_secs(15),
            &format!("a {expression} cue from the answer to {heard:?}"),
            || async {
                let cues = word_cues(&brain).await;
                (cues.len() > n && cues.iter().skip(n).any(|(e, ok)| e == expression && *ok))
                    .then_some(())
            },
        )
        .await;
        let frame = face_until(&mut socket, Duration::from_secs(5), expression, |f| {
            f["emotion"] == expression
        })
        .await;
        common::assert_schema("face_frame.schema.json", &frame);
        match expression {
            // Speaking alone brightens the face a little (valence 0.35); joy in the words
            // takes it further.
            "happy" => {
                face_until(&mut socket, Duration::from_secs(3), "joy", |f| {
                    f["emotion"] == "happy" && f["valence"].as_f64().unwrap_or(0.0) > 0.5
                })
                .await;
            }
            "anger" | "fear" | "disgust" | "sad" => {
                face_until(
                    &mut socket,
                    Duration::from_secs(3),
                    "a negative point",
                    |f| f["emotion"] == expression && f["valence"].as_f64().unwrap_or(0.0) < -0.3,
                )
                .await;
            }
            "surprise" => {
                face_until(&mut socket, Duration::from_secs(3), "high arousal", |f| {
                    f["emotion"] == "surprise" && f["arousal"].as_f64().unwrap_or(0.0) > 0.6
                })
                .await;
            }
            _ => {}
        }
    }
    // The watcher recorded the feeling on the phrase that carried it.
    let (_, monologue) = brain.get("/api/actors/monologue").await;
    let text = monologue.to_string();
    assert!(text.contains("\"feeling\""), "{monologue}");
    // None of these answers is a task.
    let (_, tasks) = brain.get("/api/tasks").await;
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(0), "{tasks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_the_user_is_heard_but_never_filed_as_the_creatures_task() {
    let brain = start().await;
    // The sim voice's answer to a request is a commitment ("Okay, I'll switch on the
    // heater."), which the watcher files; the user's own words never pass through it.
    let (status, _) = brain
        .post("/api/hear", json!({ "text": "switch on the heater" }))
        .await;
    assert_eq!(status, 202);
    let task = eventually(Duration::from_secs(15), "the heater task", || async {
        let (_, page) = brain.get("/api/tasks").await;
        page["tasks"].as_array().and_then(|l| l.first().cloned())
    })
    .await;
    assert_eq!(task["arguments"]["action"], "switch_on");
    assert_eq!(task["arguments"]["object"], "heater");
    assert_eq!(task["source"], "monologue");
    // An explicit task breaking an argument rule gets the one error shape.
    let (status, body) = brain
        .post(
            "/api/tasks",
            json!({"action": "go_to", "object": "garage", "confidence": 0.9}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("destination"),
        "{body}"
    );
}
