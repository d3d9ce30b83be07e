//! The live event stream (`GET /api/events`), operators' fault injection, the per-actor
//! figures, and the terminal views (`creature top --once`, `creature actors`), against a
//! real brain on a real port.

mod common;

use std::time::{Duration, Instant};

use common::{assert_schema, eventually, start, start_with};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// A reader of one server-sent event stream.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(brain: &common::TestBrain, last_event_id: Option<u64>) -> Events {
        let mut req = brain.http.get(format!("{}/api/events", brain.url));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.expect("the stream opens");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            resp,
            buf: String::new(),
        }
    }

    /// The next event's data (comments and keep-alives skipped), or `None` after `within`.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                let event: Value = serde_json::from_str(&data.join("\n")).expect("JSON data");
                assert_schema("event.schema.json", &event);
                // The SSE fields agree with the data.
                let kind = block.lines().find_map(|l| l.strip_prefix("event:"));
                assert_eq!(kind.map(str::trim), event["kind"].as_str(), "{block}");
                if let Some(seq) = event["seq"].as_u64() {
                    let id = block.lines().find_map(|l| l.strip_prefix("id:"));
                    assert_eq!(id.map(str::trim), Some(seq.to_string().as_str()));
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Events until one `matches`, within `within` (panics otherwise); every event read.
    async fn until(
        &mut self,
        within: Duration,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.next(left).await else {
                panic!(
                    "no {what} within {within:?}; saw {} events: {:?}",
                    seen.len(),
                    kinds(&seen)
                );
            };
            let hit = matches(&event);
            seen.push(event);
            if hit {
                return seen;
            }
        }
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_viewer_sees_the_recent_past_in_order_then_live_figures() {
    let brain = start().await;
    // Let the brain start and publish a couple of seconds of figures.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let mut stream = Events::open(&brain, None).await;
    let mut events = Vec::new();
    // The replay, then at least two live loop figures.
    let mut loops = 0;
    while loops < 4 {
        let e = stream
            .next(Duration::from_secs(3))
            .await
            .expect("events keep coming");
        if e["kind"] == "loop" {
            loops += 1;
        }
        events.push(e);
    }
    let s = seqs(&events);
    assert!(s.len() >= 10, "{:?}", kinds(&events));
    assert!(
        s.windows(2).all(|w| w[1] == w[0] + 1),
        "replay then live, in order, no gap, no repeat: {s:?}"
    );
    assert_eq!(s[0], 1, "the whole short past is replayed");
    // The tree came up: every actor reported running.
    let running: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "actor_status" && e["status"] == "running")
        .filter_map(|e| e["actor"].as_str())
        .collect();
    for name in [
        "brain",
        "voice",
        "monologue",
        "reasoner",
        "tasks",
        "affect",
        "face",
    ] {
        assert!(running.contains(&name), "{name} running in {running:?}");
    }
    // The loop ticks at 12.5 Hz and says so every second.
    let figures: Vec<&Value> = events.iter().filter(|e| e["kind"] == "loop").collect();
    let last = figures.last().unwrap();
    let rate = last["ticks_per_sec"].as_f64().unwrap();
    assert!((10.0..15.0).contains(&rate), "{last}");
    let ticks: Vec<u64> = figures
        .iter()
        .map(|f| f["ticks"].as_u64().unwrap())
        .collect();
    assert!(ticks.windows(2).all(|w| w[1] > w[0]), "{ticks:?}");
    // Every actor's figures, once a second, with the loop's own rate among them.
    let actors = events
        .iter()
        .rev()
        .find(|e| e["kind"] == "actors")
        .expect("actor figures");
    let list = actors["actors"].as_array().unwrap();
    assert_eq!(list.len(), 7);
    let voice = list.iter().find(|a| a["name"] == "voice").unwrap();
    assert!(
        voice["messages_per_sec"].as_f64().unwrap() >= 10.0,
        "the voice handles a tick every 80 ms: {voice}"
    );

    // A viewer that comes back after an event it saw gets what followed, and only that.
    let resume_after = s[4];
    drop(stream);
    let mut again = Events::open(&brain, Some(resume_after)).await;
    let first = again.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(first["seq"].as_u64(), Some(resume_after + 1));

    // A Last-Event-ID that is not a number is refused clearly.
    let resp = brain
        .http
        .get(format!("{}/api/events", brain.url))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_last_event_id");
    drop(again);
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_when_the_service_stops_without_holding_it_up() {
    let brain = start().await;
    let mut stream = Events::open(&brain, None).await;
    stream.next(Duration::from_secs(3)).await.expect("an event");
    let stopping = Instant::now();
    // The stream ends (the rest of the replay, then the end of the body) while it stops.
    let ((), ended) = tokio::join!(
        brain.service.shutdown(),
        tokio::time::timeout(Duration::from_secs(3), async {
            while stream.next(Duration::from_secs(3)).await.is_some() {}
        })
    );
    assert!(ended.is_ok(), "the stream ended when the service stopped");
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "the open stream did not hold the stop for the drain time: {:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heard_request_shows_its_phrase_intent_and_the_task_it_filed() {
    let brain = start().await;
    let mut stream = Events::open(&brain, None).await;
    let (status, _) = brain
        .post("/api/hear", json!({"text": "bring me the cup"}))
        .await;
    assert_eq!(status, 202);
    let seen = stream
        .until(Duration::from_secs(10), "a task event", |e| {
            e["kind"] == "task"
        })
        .await;
    let phrase = seen
        .iter()
        .find(|e| e["kind"] == "phrase" && !e["intent"].is_null())
        .unwrap_or_else(|| {
            panic!(
                "a phrase with an intent before the task: {:?}",
                kinds(&seen)
            )
        });
    assert_eq!(phrase["intent"]["action"], "bring");
    assert_eq!(phrase["intent"]["object"], "cup");
    assert_eq!(phrase["intent"]["repeat"], false);
    assert!(
        seen.iter().any(|e| e["kind"] == "piece"),
        "the pieces the phrase was made of came first"
    );
    let task = seen.last().unwrap();
    assert_eq!(task["source"], "monologue");
    assert_eq!(task["state"], "pending");
    assert!(task["previous"].is_null(), "just filed");
    assert_eq!(task["object"], "cup");
    assert_eq!(
        task["utterance"], phrase["text"],
        "the task carries the phrase that filed it"
    );
    // And the ledger agrees.
    let id = task["id"].as_str().unwrap();
    let (status, stored) = brain.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["arguments"]["object"], "cup");

    // Cancelling it is a transition on the stream too.
    let (status, _) = brain
        .post(&format!("/api/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    let seen = stream
        .until(Duration::from_secs(5), "the cancellation", |e| {
            e["kind"] == "task" && e["id"] == id && e["state"] == "cancelled"
        })
        .await;
    assert_eq!(seen.last().unwrap()["previous"], "pending");
    drop(stream);
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_failure_is_on_the_stream_and_the_child_comes_back() {
    let brain = start_with(|c| c.inspect.fault_injection = true).await;
    let mut stream = Events::open(&brain, None).await;
    let before = metric(&brain, "creature_actor_restarts_total{actor=\"monologue\"}").await;
    assert_eq!(before, Some(0.0));
    let sent = Instant::now();
    let (status, body) = brain
        .post(
            "/api/actors/monologue/fail",
            json!({"reason": "watching supervision"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let seen = stream
        .until(Duration::from_secs(5), "the failure", |e| {
            e["kind"] == "actor_failed"
        })
        .await;
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "on the stream within 1 s"
    );
    let failed = seen.last().unwrap();
    assert_eq!(failed["actor"], "monologue");
    assert_eq!(failed["restarting"], true);
    assert_eq!(failed["restarts"], 1);
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("fault injected: watching supervision"),
        "{failed}"
    );
    stream
        .until(Duration::from_secs(5), "it running again", |e| {
            e["kind"] == "actor_status" && e["actor"] == "monologue" && e["status"] == "running"
        })
        .await;
    let (_, actors) = brain.get("/api/actors").await;
    assert_schema("actors.schema.json", &actors);
    let monologue = actors
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "monologue")
        .unwrap();
    assert_eq!(monologue["status"], "running");
    assert_eq!(monologue["restarts"], 1);
    assert_eq!(
        metric(&brain, "creature_actor_restarts_total{actor=\"monologue\"}").await,
        Some(1.0)
    );
    // The new incarnation works: a phrase still becomes a task.
    brain
        .post("/api/hear", json!({"text": "bring me the cup"}))
        .await;
    stream
        .until(
            Duration::from_secs(10),
            "a task from the new watcher",
            |e| e["kind"] == "task" && e["source"] == "monologue",
        )
        .await;

    // Bad names are refused clearly.
    let (status, body) = brain.post("/api/actors/kidney/fail", json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("voice, monologue")
    );
    let (status, body) = brain.post("/api/actors/brain/fail", json!({})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "not_a_child");
    drop(stream);
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_is_refused_unless_the_config_turns_it_on() {
    let brain = start().await;
    let (status, body) = brain.post("/api/actors/tasks/fail", json!({})).await;
    assert_eq!(status, 409);
    assert_schema("error.schema.json", &body);
    assert_eq!(body["error"], "fault_injection_off");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("[inspect] fault_injection = true"),
        "{body}"
    );
    let (_, actors) = brain.get("/api/actors").await;
    let tasks = actors
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "tasks")
        .unwrap();
    assert_eq!(tasks["restarts"], 0, "nothing failed");
    brain.service.shutdown().await;
}

/// `/metrics` as text.
async fn metrics(brain: &common::TestBrain) -> String {
    brain
        .http
        .get(format!("{}/metrics", brain.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample line (`name{labels}` exactly as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// The value of one sample line of a fresh `/metrics`.
async fn metric(brain: &common::TestBrain, series: &str) -> Option<f64> {
    sample(&metrics(brain).await, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_that_never_read_do_not_slow_the_loop_and_the_cap_holds() {
    let brain = start_with(|c| c.inspect.max_viewers = 21).await;
    let mut watcher = Events::open(&brain, None).await;
    // Twenty viewers that ask for the stream and never read a byte of it.
    let mut stuck = Vec::new();
    for _ in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let mut conn = socket.connect(brain.service.addr()).await.unwrap();
        conn.write_all(
            format!(
                "GET /api/events HTTP/1.1\r\nHost: {}\r\n\r\n",
                brain.service.addr()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        stuck.push(conn);
    }
    eventually(Duration::from_secs(5), "21 viewers", || async {
        (metric(&brain, "creature_event_viewers").await == Some(21.0)).then_some(())
    })
    .await;
    // The 22nd is refused, clearly.
    let resp = brain
        .http
        .get(format!("{}/api/events", brain.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("max_viewers"),
        "{body}"
    );

    // Meanwhile the loop keeps its beat and the reading viewer keeps getting its figures.
    let missed_before = metric(&brain, "creature_voice_missed_ticks_total")
        .await
        .unwrap();
    let mut worst_p99: f64 = 0.0;
    let mut seconds = 0;
    while seconds < 4 {
        let figures = watcher
            .until(Duration::from_secs(3), "loop figures", |e| {
                e["kind"] == "loop"
            })
            .await;
        let f = figures.last().unwrap();
        worst_p99 = worst_p99.max(f["jitter_p99_ms"].as_f64().unwrap());
        seconds += 1;
    }
    eprintln!("worst per-second tick jitter p99 with 20 stuck viewers: {worst_p99:.2} ms");
    let missed_after = metric(&brain, "creature_voice_missed_ticks_total")
        .await
        .unwrap();
    assert_eq!(missed_before, missed_after, "no tick was missed");
    // A loop that waited on a viewer would be seconds late; the bound leaves room for a
    // busy host (see DESIGN.md: a build beside the loop alone gives p99 ~12 ms).
    assert!(
        worst_p99 < 25.0,
        "tick jitter p99 stayed low with 20 stuck viewers: {worst_p99} ms"
    );
    drop(stuck);
    eventually(
        Duration::from_secs(5),
        "the stuck viewers to be gone",
        || async { (metric(&brain, "creature_event_viewers").await == Some(1.0)).then_some(()) },
    )
    .await;
    drop(watcher);
    brain.service.shutdown().await;
}

/// `/metrics` read by a Prometheus text-format parser.
async fn scrape(brain: &common::TestBrain) -> prometheus_parse::Scrape {
    let text = metrics(brain).await;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("/metrics is Prometheus text")
}

/// The `+Inf` count of histogram `name` with label `label` (if given), checking that its
/// buckets are cumulative.
fn histogram_count(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    label: Option<(&str, &str)>,
) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no histogram {name} {label:?}"));
    let prometheus_parse::Value::Histogram(buckets) = &sample.value else {
        panic!("{name} is not a histogram: {:?}", sample.value);
    };
    let mut buckets = buckets.clone();
    buckets.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "{name}: buckets are cumulative: {buckets:?}"
    );
    let inf = buckets.last().expect("buckets");
    assert!(inf.less_than.is_infinite(), "{name} has a +Inf bucket");
    inf.count
}

fn counter(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v) => v,
        ref other => panic!("{name} is not a counter: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_histograms_and_counters_move_when_their_events_happen() {
    let brain = start().await;
    let before = scrape(&brain).await;
    let latency = "creature_actor_message_latency_seconds";
    let tasks_before = histogram_count(&before, latency, Some(("actor", "tasks")));
    let face_before = histogram_count(&before, "creature_face_fanout_latency_seconds", None);
    let filed_before = counter(
        &before,
        "creature_task_transitions_total",
        &[("state", "pending"), ("source", "api")],
    );
    for a in [
        "brain",
        "voice",
        "monologue",
        "reasoner",
        "tasks",
        "affect",
        "face",
    ] {
        histogram_count(&before, latency, Some(("actor", a)));
    }

    // A task filed through the API: a message to the tasks actor, a filing counted.
    let (status, _) = brain
        .post("/api/tasks", json!({"action": "bring", "object": "cup"}))
        .await;
    assert_eq!(status, 201);
    // A phone face for a moment: face frames written to its socket.
    let (mut face, _) = tokio_tungstenite::connect_async(brain.ws_url("/ws/face"))
        .await
        .expect("the face socket opens");
    use futures::StreamExt;
    for _ in 0..6 {
        tokio::time::timeout(Duration::from_secs(2), face.next())
            .await
            .expect("face frames come")
            .expect("a frame")
            .expect("a frame");
    }
    drop(face);

    let after = scrape(&brain).await;
    assert!(
        histogram_count(&after, latency, Some(("actor", "tasks"))) > tasks_before,
        "the filing's message latency was counted"
    );
    assert!(
        histogram_count(&after, "creature_face_fanout_latency_seconds", None) >= face_before + 3.0,
        "the frames sent to the phone were timed (all but the first)"
    );
    assert_eq!(
        counter(
            &after,
            "creature_task_transitions_total",
            &[("state", "pending"), ("source", "api")],
        ),
        filed_before + 1.0
    );
    assert_eq!(
        counter(
            &after,
            "creature_actor_restarts_total",
            &[("actor", "tasks")]
        ),
        0.0
    );
    counter(
        &after,
        "creature_drops_total",
        &[("place", "voice_backlog")],
    );

    // A spoken request becomes an intent, and the planner is asked: its call is timed.
    let planner = "creature_planner_call_duration_seconds";
    let calls_before = histogram_count(&after, planner, Some(("planner", "rules")));
    let (status, _) = brain
        .post("/api/hear", json!({"text": "please bring me the cup"}))
        .await;
    assert_eq!(status, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(&brain).await;
        if histogram_count(&now, planner, Some(("planner", "rules"))) > calls_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the planner call was never timed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (_, actors) = brain.get("/api/actors").await;
    assert_schema("actors.schema.json", &actors);
    let tasks = actors
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "tasks")
        .unwrap();
    assert!(
        tasks["latency_ms"]["count"].as_u64().unwrap() >= 1,
        "{tasks}"
    );
    assert!(tasks["mailbox_peak"].as_u64().unwrap() >= 1, "{tasks}");
    brain.service.shutdown().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_creature");

/// Run `creature <args> --url <brain> --data-dir <its dir>`; its stdout, or a panic with
/// its stderr.
async fn creature(brain: &common::TestBrain, args: &[&str]) -> String {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .arg("--url")
        .arg(&brain.url)
        .arg("--data-dir")
        .arg(brain.dir.path())
        .env_remove("CREATURE_TOKEN")
        .env_remove("CREATURE_URL")
        .output()
        .await
        .expect("creature runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "creature {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A brain that has heard a request, filed its task and restarted an actor.
async fn eventful_brain() -> (common::TestBrain, String) {
    let brain = start_with(|c| c.inspect.fault_injection = true).await;
    brain
        .post("/api/hear", json!({"text": "bring me the cup"}))
        .await;
    let id = eventually(Duration::from_secs(10), "the task", || async {
        let (_, page) = brain.get("/api/tasks").await;
        page["tasks"][0]["id"].as_str().map(String::from)
    })
    .await;
    let (status, _) = brain
        .post("/api/actors/affect/fail", json!({"reason": "top test"}))
        .await;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(5), "affect back", || async {
        let (_, a) = brain.get("/api/actors/affect").await;
        (a["status"] == "running" && a["restarts"] == 1).then_some(())
    })
    .await;
    // One more second: the figures after the restart are published.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    (brain, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_and_actors_print_what_the_brain_is_doing() {
    let (brain, id) = eventful_brain().await;

    let frame = creature(&brain, &["top", "--once"]).await;
    for expected in [
        "supervision tree",
        "├─ voice",
        "├─ monologue",
        "├─ reasoner",
        "├─ tasks",
        "├─ affect",
        "└─ face",
        "fault injected: top test",
        "→ bring cup",
        id.as_str(),
        "monologue",
    ] {
        assert!(frame.contains(expected), "{expected:?} in:\n{frame}");
    }
    let tree_rows: Vec<&str> = frame.lines().filter(|l| l.contains(" running ")).collect();
    assert_eq!(tree_rows.len(), 7, "seven running actors:\n{frame}");
    let affect = frame.lines().find(|l| l.contains("├─ affect")).unwrap();
    assert!(
        affect.split_whitespace().any(|w| w == "1"),
        "one restart: {affect}"
    );
    let voice = frame.lines().find(|l| l.contains("├─ voice")).unwrap();
    let rate: f64 = voice.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(rate >= 10.0, "the voice handles 12.5 ticks/s: {voice}");
    assert!(frame.lines().count() <= 36 && frame.lines().all(|l| l.chars().count() <= 110));

    let tree = creature(&brain, &["actors"]).await;
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 8, "a header and seven actors:\n{tree}");
    assert!(lines[0].starts_with("ACTOR"), "{tree}");
    assert!(lines[1].starts_with("brain "), "{tree}");
    assert!(lines[7].starts_with("└─ face"), "{tree}");
    let affect = lines.iter().find(|l| l.starts_with("├─ affect")).unwrap();
    assert!(affect.contains("running"), "{affect}");
    assert!(affect.contains("fault injected: top test"), "{affect}");
    brain.service.shutdown().await;
}

/// `creature top` in a real terminal (tmux): it draws, keeps updating, and quits on `q`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_runs_live_in_a_terminal_and_quits_on_q() {
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        panic!("tmux is needed for this test (apt-get install tmux)");
    }
    let brain = start().await;
    let session = format!("creature-top-{}", std::process::id());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux runs")
    };
    let command = format!(
        "{BIN} top --url {} --data-dir {}",
        brain.url,
        brain.dir.path().display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "40",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    let capture = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    let ticks_in = |screen: &str| -> Option<u64> {
        let line = screen.lines().find(|l| l.contains("ticks "))?;
        let after = line.split("ticks ").nth(1)?;
        after.split_whitespace().next()?.parse().ok()
    };
    let first = eventually(Duration::from_secs(10), "top to draw the tree", || async {
        let screen = capture();
        (screen.contains("└─ face") && ticks_in(&screen).is_some()).then_some(screen)
    })
    .await;
    let t0 = ticks_in(&first).unwrap();
    eventually(Duration::from_secs(5), "the tick count to move", || async {
        ticks_in(&capture()).filter(|t| *t > t0)
    })
    .await;
    tmux(&["send-keys", "-t", &session, "q"]);
    eventually(Duration::from_secs(5), "top to quit", || async {
        let alive = tmux(&["has-session", "-t", &session]).status.success();
        (!alive).then_some(())
    })
    .await;
    brain.service.shutdown().await;
}

/// Turns the loop's turn tracker measures reach the stream (from the 1 s sampler, never
/// from the loop's thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_turn_is_published_with_its_timings() {
    use futures::SinkExt;
    let brain = start().await;
    let mut stream = Events::open(&brain, None).await;
    let (mut audio, _) = tokio_tungstenite::connect_async(brain.ws_url("/ws/audio"))
        .await
        .expect("the audio socket opens");
    // One 80 ms frame of PCM16: a 440 Hz tone at a third of full scale, or silence.
    let frame = |n: usize, loud: bool| -> Vec<u8> {
        (0..1920)
            .flat_map(|i| {
                let t = (n * 1920 + i) as f32 / 24_000.0;
                let v = if loud {
                    (t * 440.0 * std::f32::consts::TAU).sin() * 0.33
                } else {
                    0.0
                };
                ((v * 32767.0) as i16).to_le_bytes()
            })
            .collect()
    };
    // Speak 1 s, pause 1.2 s, speak again 1 s: the first turn is over, answered or not.
    let mut n = 0;
    let mut paced = tokio::time::interval(Duration::from_millis(80));
    for (frames, loud) in [(12, true), (15, false), (12, true), (5, false)] {
        for _ in 0..frames {
            paced.tick().await;
            audio
                .send(tokio_tungstenite::tungstenite::Message::binary(frame(
                    n, loud,
                )))
                .await
                .expect("audio is taken");
            n += 1;
        }
    }
    let seen = stream
        .until(Duration::from_secs(8), "a turn", |e| e["kind"] == "turn")
        .await;
    let turn = &seen.last().unwrap()["figures"];
    assert_eq!(turn["index"], 1, "{turn}");
    assert!(turn["outcome"].is_string(), "{turn}");
    assert!(turn["turn_wait_ms"].as_f64().is_some(), "{turn}");
    drop(audio);
    drop(stream);
    brain.service.shutdown().await;
}
