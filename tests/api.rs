//! The router, driven with `oneshot` (no socket): every contract of the JSON API, and every
//! kind of bad input getting the one error shape without hurting the service.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use creature::server::{AppState, app};
use creature::service::start_brain;
use creature_actors::BrainHandle;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use common::{assert_schema, test_config};

struct Api {
    router: Router,
    brain: Arc<BrainHandle>,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    api_with(|_| {}).await
}

async fn api_with(tweak: impl FnOnce(&mut creature::config::Config)) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    tweak(&mut config);
    let brain = start_brain(&config).await.unwrap();
    let router = app(AppState::new(Arc::clone(&brain), config));
    Api {
        router,
        brain,
        _dir: dir,
    }
}

impl Api {
    async fn call(&self, req: Request<Body>) -> (StatusCode, Value, String) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value, ctype)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        (s, v)
    }

    async fn post_raw(&self, uri: &str, body: impl Into<Body>, ctype: &str) -> (StatusCode, Value) {
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, ctype)
            .body(body.into())
            .unwrap();
        let (s, v, _) = self.call(req).await;
        (s, v)
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.post_raw(uri, body.to_string(), "application/json")
            .await
    }
}

fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_schema("error.schema.json", body);
    assert_eq!(body["error"], want_code, "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn health_actors_and_state_follow_their_schemas() {
    let api = api().await;
    let (s, body) = api.get("/healthz").await;
    assert_eq!(s, 200);
    assert_eq!(body["status"], "ok");

    let (s, actors) = api.get("/api/actors").await;
    assert_eq!(s, 200);
    assert_schema("actors.schema.json", &actors);
    let names: Vec<_> = actors
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
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
    for a in actors.as_array().unwrap() {
        assert_eq!(a["status"], "running", "{a}");
    }
    for name in &names {
        let (s, one) = api.get(&format!("/api/actors/{name}")).await;
        assert_eq!(s, 200, "{one}");
        assert_schema("actor.schema.json", &one);
        assert_eq!(&one["name"], name);
    }
    let (_, voice) = api.get("/api/actors/voice").await;
    assert_eq!(voice["state"]["backend"], "sim");

    let (s, state) = api.get("/api/state").await;
    assert_eq!(s, 200);
    assert_schema("state.schema.json", &state);
    assert_eq!(state["voice"]["backend"], "sim");
    api.brain.stop().await;
}

#[tokio::test]
async fn tasks_from_utterances_and_from_explicit_arguments() {
    let api = api().await;
    let (s, task) = api
        .post("/api/tasks", json!({"utterance": "bring me the cup"}))
        .await;
    assert_eq!(s, 201, "{task}");
    assert_schema("task.schema.json", &task);
    assert_eq!(task["arguments"]["action"], "bring");
    assert_eq!(task["arguments"]["object"], "cup");
    assert_eq!(task["state"], "pending");
    assert_eq!(task["source"], "api");

    let (s, placed) = api
        .post(
            "/api/tasks",
            json!({"action": "place", "object": "book", "destination": "shelf", "confidence": 0.8}),
        )
        .await;
    assert_eq!(s, 201, "{placed}");
    assert_schema("task.schema.json", &placed);
    assert_eq!(placed["arguments"]["destination"], "shelf");

    let (s, got) = api
        .get(&format!("/api/tasks/{}", task["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(got, task);
    let (s, page) = api.get("/api/tasks").await;
    assert_eq!(s, 200);
    assert_schema("task_page.schema.json", &page);
    let all = page["tasks"].as_array().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["id"], placed["id"], "newest first");
    assert_eq!(page["total"], 2);
    assert_eq!(page["next_cursor"], Value::Null);
    for t in all {
        assert_schema("task.schema.json", t);
    }
    api.brain.stop().await;
}

#[tokio::test]
async fn the_ledger_pages_filters_and_cancels_in_bulk() {
    // More POSTs than the rate limit's burst: this test is about the ledger.
    let api = api_with(|c| c.server.rate_limit_per_sec = 0.0).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let (s, t) = api
            .post(
                "/api/tasks",
                json!({"action": "bring", "object": format!("cup {i}")}),
            )
            .await;
        assert_eq!(s, 201, "{t}");
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let numbers: Vec<u64> = ids.iter().map(|id| id[5..].parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "dense: {ids:?}"
    );

    // Newest first, five at a time, each task once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, page) = api
            .get(&format!("/api/tasks?limit=5&cursor={cursor}"))
            .await;
        assert_eq!(s, 200, "{page}");
        assert_schema("task_page.schema.json", &page);
        assert_eq!(page["total"], 12);
        for t in page["tasks"].as_array().unwrap() {
            seen.push(t["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    // Oldest first from a cursor.
    let (_, page) = api
        .get(&format!("/api/tasks?order=asc&limit=3&cursor={}", ids[8]))
        .await;
    let got: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [&ids[9], &ids[10], &ids[11]]);
    assert_eq!(page["next_cursor"], Value::Null);

    // Cancel two, then filter by state.
    for id in &ids[..2] {
        let (s, _) = api
            .post(&format!("/api/tasks/{id}/cancel"), json!({}))
            .await;
        assert_eq!(s, 200);
    }
    let (_, page) = api.get("/api/tasks?state=cancelled").await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["tasks"][0]["id"], ids[1].as_str());
    let (_, page) = api.get("/api/tasks?state=pending,running&limit=500").await;
    assert_eq!(page["total"], 10);
    assert_eq!(page["tasks"].as_array().unwrap().len(), 10);
    let (_, same) = api.get("/api/tasks?state=unfinished&limit=5000").await;
    assert_eq!(same, page);

    // Bad parameters are refused, clearly.
    for bad in [
        "limit=0",
        "limit=-1",
        "limit=x",
        "order=sideways",
        "state=sleeping",
        "cursor=nope",
        "colour=red",
    ] {
        let (s, b) = api.get(&format!("/api/tasks?{bad}")).await;
        assert_error(s, &b, 400, "invalid_query");
    }

    // Cancel in bulk: by source (none from the monologue), then everything left.
    let (s, b) = api
        .post("/api/tasks/cancel", json!({"source": "monologue"}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_schema("task_cancel.schema.json", &b);
    assert_eq!(b["cancelled"], json!([]));
    let (s, b) = api
        .post("/api/tasks/cancel", json!({"state": "finished"}))
        .await;
    assert_error(s, &b, 422, "invalid_body");
    let (s, b) = api.post("/api/tasks/cancel", json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert_schema("task_cancel.schema.json", &b);
    assert_eq!(b["cancelled"], json!(ids[2..]));
    let (_, page) = api.get("/api/tasks?state=unfinished").await;
    assert_eq!(page["total"], 0);
    let (s, b, _) = api
        .call(
            Request::post("/api/tasks/cancel")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, 200, "an empty body is fine: {b}");
    assert_eq!(b["cancelled"], json!([]));
    api.brain.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_the_service_stays_up() {
    let api = api().await;
    let (s, b) = api
        .post_raw("/api/tasks", "{\"utterance\": ", "application/json")
        .await;
    assert_error(s, &b, 400, "malformed_json");
    let (s, b) = api
        .post(
            "/api/tasks",
            json!({"utterance": "bring me the cup", "colour": "red"}),
        )
        .await;
    assert_error(s, &b, 422, "invalid_body");
    assert!(
        b["detail"].as_str().unwrap().contains("colour"),
        "the unknown field is named: {b}"
    );
    let (s, b) = api
        .post("/api/tasks", json!({"action": "fly", "object": "kite"}))
        .await;
    assert_error(s, &b, 422, "invalid_body");
    assert!(b["detail"].as_str().unwrap().contains("fly"), "{b}");
    let (s, b) = api
        .post("/api/tasks", json!({"utterance": "what a lovely day"}))
        .await;
    assert_error(s, &b, 422, "no_physical_task");
    let (s, b) = api.post("/api/tasks", json!({"action": "bring"})).await;
    assert_error(s, &b, 422, "invalid_task");
    let (s, b) = api
        .post(
            "/api/tasks",
            json!({"action": "bring", "object": "cup", "confidence": 3}),
        )
        .await;
    assert_error(s, &b, 422, "invalid_task");
    let (s, b) = api.post("/api/tasks", json!({})).await;
    assert_error(s, &b, 422, "invalid_task");
    let big = json!({"utterance": "x".repeat(70 * 1024)}).to_string();
    let (s, b) = api.post_raw("/api/tasks", big, "application/json").await;
    assert_error(s, &b, 413, "body_too_large");
    let (s, b) = api.post_raw("/api/tasks", "{}", "text/plain").await;
    assert_error(s, &b, 415, "unsupported_media_type");
    let (s, b) = api
        .post_raw(
            "/api/hear",
            [0xff_u8, 0xfe, 0x00].to_vec(),
            "application/json",
        )
        .await;
    assert!(s.is_client_error(), "{s} {b}");
    assert_schema("error.schema.json", &b);
    let (s, b) = api.post("/api/hear", json!({"text": "   "})).await;
    assert_error(s, &b, 422, "invalid_text");
    let (s, b) = api
        .post("/api/hear", json!({"text": "hi", "volume": 11}))
        .await;
    assert_error(s, &b, 422, "invalid_body");
    let (s, b) = api.get("/api/actors/nobody").await;
    assert_error(s, &b, 404, "not_found");
    assert!(
        b["detail"].as_str().unwrap().contains("voice"),
        "the known names are listed: {b}"
    );
    let (s, b) = api.get("/api/tasks/task-999999").await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = api.get("/api/tasks/../../etc/passwd").await;
    assert!(s == 404, "{s} {b}");
    let (s, b) = api.get("/nowhere").await;
    assert_error(s, &b, 404, "not_found");
    let (s, b, _) = api
        .call(Request::delete("/api/tasks").body(Body::empty()).unwrap())
        .await;
    assert_error(s, &b, 405, "method_not_allowed");

    // Nothing above hurt anybody.
    let (s, _) = api.get("/healthz").await;
    assert_eq!(s, 200);
    assert!(
        api.brain.actors().iter().all(|a| a.restarts == 0),
        "{:?}",
        api.brain.actors()
    );
    let (s, b) = api
        .post("/api/tasks", json!({"utterance": "pick up the red ball"}))
        .await;
    assert_eq!(s, 201, "{b}");
    api.brain.stop().await;
}

#[tokio::test]
async fn hear_is_accepted_and_answered_202() {
    let api = api().await;
    let (s, b) = api.post("/api/hear", json!({"text": "hello there"})).await;
    assert_eq!(s, 202, "{b}");
    assert_schema("hear_response.schema.json", &b);
    assert_eq!(b["backend"], "sim");
    api.brain.stop().await;
}

#[tokio::test]
async fn the_pages_are_served() {
    let api = api().await;
    for path in ["/face", "/inspector"] {
        let (s, body, ctype) = api
            .call(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(s, 200, "{path}");
        assert!(ctype.starts_with("text/html"), "{path}: {ctype}");
        assert!(body.as_str().unwrap().contains("<html"), "{path}");
    }
    let (s, _, _) = api
        .call(Request::get("/").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::TEMPORARY_REDIRECT);
    api.brain.stop().await;
}

/// Parse one sample (`name{labels} value`) out of the exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no {series} in metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_are_present_and_plausible() {
    let api = api().await;
    // Let the loop run a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while api.brain.voice.report().ticks < 13 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (s, _, ctype) = api
        .call(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, 200);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let resp = api
        .router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let ticks = sample(&text, "creature_voice_ticks_total");
    let report = api.brain.voice.report();
    assert!(
        ticks >= 13.0 && ticks <= report.ticks as f64,
        "ticks {ticks} vs {}",
        report.ticks
    );
    // Seconds, not milliseconds or microseconds: a healthy loop is well under a tick late.
    let p99 = sample(
        &text,
        "creature_voice_tick_jitter_seconds{quantile=\"0.99\"}",
    );
    assert!(p99 > 0.0 && p99 < 0.08, "jitter p99 {p99} s");
    let interval = sample(
        &text,
        "creature_voice_tick_interval_seconds{quantile=\"0.5\"}",
    );
    assert!(
        (interval - 0.08).abs() < 0.01,
        "tick interval p50 {interval} s"
    );
    let count = sample(&text, "creature_voice_tick_jitter_seconds_count");
    assert!(
        count >= ticks - 1.0,
        "every tick is in the histogram: {count} vs {ticks}"
    );
    assert_eq!(sample(&text, "creature_actor_up{actor=\"voice\"}"), 1.0);
    assert_eq!(
        sample(&text, "creature_actor_restarts_total{actor=\"face\"}"),
        0.0
    );
    assert_eq!(sample(&text, "creature_tasks{state=\"pending\"}"), 0.0);
    assert_eq!(
        sample(&text, "creature_affect_emotion{emotion=\"neutral\"}"),
        1.0
    );
    // Every line is a comment or `series value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad line {line:?}");
    }
    api.brain.stop().await;
}
