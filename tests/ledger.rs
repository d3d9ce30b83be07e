//! The task ledger as a person meets it: dense ids that keep increasing across restarts of
//! the `creature` binary (also for a ledger from an older version), paging that visits every
//! task once while tasks are being filed, the bound on unfinished tasks, cancelling them
//! all, and text from the network escaped on its way to the operator's terminal and log.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use creature_actors::ports::{Action, PhysicalTask, Task, TaskSource};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_creature");

/// A running `creature serve` and what it has logged so far.
struct Brain {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Brain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `creature serve` on a free port with `data` as its data dir and `config` (TOML) as its
/// config file.
fn serve(data: &Path, config: &str) -> Brain {
    let config_path = data.join("creature-test.toml");
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(&config_path)
        .arg("--data-dir")
        .arg(data)
        .env("CREATURE_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("creature serve starts");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let url = common::listen_url(stderr, Some(Arc::clone(&log)));
    Brain { child, url, log }
}

/// No rate limit: these tests file tasks faster than a person would.
const NO_RATE_LIMIT: &str = "[server]\nrate_limit_per_sec = 0.0\n";

fn cli(args: &[&str], url: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CREATURE_URL", url)
        .output()
        .unwrap()
}

async fn create(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let resp = http
        .post(format!("{url}/api/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.unwrap()
}

fn number(id: &Value) -> u64 {
    id.as_str()
        .and_then(|s| s.strip_prefix("task-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a task id: {id}"))
}

fn ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_increase_densely_across_seven_restarts_of_the_binary() {
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut seen = Vec::new();
    for round in 0..7 {
        let brain = serve(data.path(), NO_RATE_LIMIT);
        let (s, t) = create(
            &http,
            &brain.url,
            json!({"action": "bring", "object": format!("cup {round}")}),
        )
        .await;
        assert_eq!(s, 201, "{t}");
        seen.push(number(&t["id"]));
        // Every task so far, in creation order, numbered 1, 2, 3, ...
        let page = get(&http, &format!("{}/api/tasks?order=asc", brain.url)).await;
        let listed: Vec<u64> = page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| number(&t["id"]))
            .collect();
        assert_eq!(listed, seen, "round {round}");
        drop(brain); // kill -9: the counter was flushed with the task
    }
    assert_eq!(
        seen,
        (1..=7).collect::<Vec<_>>(),
        "dense, strictly increasing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_ledger_with_generated_ids_keeps_working_and_new_ids_come_after() {
    let data = tempfile::tempdir().unwrap();
    // The layout of earlier versions: one `tasks` tree keyed by the id string, ids from
    // sled's generator (2,000,000 apart after every restart).
    let old_ids = [
        "task-000001",
        "task-2000001",
        "task-4000001",
        "task-12000001",
    ];
    {
        let db = sled::open(data.path().join("tasks")).unwrap();
        let tree = db.open_tree("tasks").unwrap();
        for id in old_ids {
            let args = PhysicalTask {
                action: Action::Bring,
                object: "cup".into(),
                destination: None,
                utterance: "bring me the cup".into(),
                confidence: 0.9,
            };
            let task = Task::new(id.into(), args, TaskSource::Api, None);
            tree.insert(id.as_bytes(), serde_json::to_vec(&task).unwrap())
                .unwrap();
        }
        db.flush().unwrap();
    }
    let http = reqwest::Client::new();
    let brain = serve(data.path(), NO_RATE_LIMIT);
    let page = get(&http, &format!("{}/api/tasks?order=asc", brain.url)).await;
    assert_eq!(ids(&page), old_ids, "every old task, in creation order");
    let one = get(&http, &format!("{}/api/tasks/task-4000001", brain.url)).await;
    assert_eq!(one["id"], "task-4000001");
    let (s, t) = create(&http, &brain.url, json!({"utterance": "open the door"})).await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["id"], "task-12000002");
    drop(brain);

    let brain = serve(data.path(), NO_RATE_LIMIT);
    let (_, t) = create(&http, &brain.url, json!({"utterance": "close the door"})).await;
    assert_eq!(t["id"], "task-12000003", "dense from there on");
    let page = get(&http, &format!("{}/api/tasks", brain.url)).await;
    assert_eq!(page["total"], 6);
    assert_eq!(
        ids(&page)[..3],
        ["task-12000003", "task-12000002", "task-12000001"],
        "newest first, by number"
    );
}

/// Walk the ledger page by page from `cursor`; returns the ids seen and the last cursor.
async fn walk(
    http: &reqwest::Client,
    url: &str,
    order: &str,
    mut cursor: Option<String>,
    seen: &mut Vec<String>,
) -> Option<String> {
    loop {
        let mut q = format!("{url}/api/tasks?order={order}&limit=7");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page = get(http, &q).await;
        let got = ids(&page);
        seen.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return got.last().cloned().or(cursor),
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_every_task_exactly_once_while_tasks_are_added() {
    let data = tempfile::tempdir().unwrap();
    let brain = serve(
        data.path(),
        &format!("{NO_RATE_LIMIT}[tasks]\nmax_unfinished = 1000\n"),
    );
    let http = reqwest::Client::new();
    let mut before = Vec::new();
    for i in 0..40 {
        let (s, t) = create(
            &http,
            &brain.url,
            json!({"action": "bring", "object": format!("cup {i}")}),
        )
        .await;
        assert_eq!(s, 201, "{t}");
        before.push(t["id"].as_str().unwrap().to_string());
    }
    // Someone keeps filing tasks while we page, both ways.
    let adder = {
        let (http, url) = (http.clone(), brain.url.clone());
        tokio::spawn(async move {
            let mut added = Vec::new();
            for i in 0..60 {
                let (s, t) = create(
                    &http,
                    &url,
                    json!({"action": "give", "object": format!("ball {i}")}),
                )
                .await;
                assert_eq!(s, 201, "{t}");
                added.push(t["id"].as_str().unwrap().to_string());
            }
            added
        })
    };
    let mut asc = Vec::new();
    let last = walk(&http, &brain.url, "asc", None, &mut asc).await;
    let mut desc = Vec::new();
    walk(&http, &brain.url, "desc", None, &mut desc).await;
    let added = adder.await.unwrap();
    // Oldest first: whatever was filed since shows up after the last cursor.
    walk(&http, &brain.url, "asc", last, &mut asc).await;

    let all: Vec<String> = before.iter().chain(&added).cloned().collect();
    assert_eq!(asc, all, "oldest first: every task once, in creation order");
    let unique: HashSet<&String> = desc.iter().collect();
    assert_eq!(unique.len(), desc.len(), "newest first: no task twice");
    for id in &before {
        assert!(desc.contains(id), "{id} missing from the newest-first walk");
    }
    let numbers: Vec<u64> = desc.iter().map(|id| number(&json!(id))).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] > w[1]),
        "newest first: {numbers:?}"
    );
    let page = get(&http, &format!("{}/api/tasks?limit=1", brain.url)).await;
    assert_eq!(page["total"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unfinished_bound_refuses_with_429_and_cancel_all_makes_room() {
    let data = tempfile::tempdir().unwrap();
    let brain = serve(
        data.path(),
        &format!("{NO_RATE_LIMIT}[tasks]\nmax_unfinished = 5\n"),
    );
    let http = reqwest::Client::new();
    // Twelve at once: exactly five are filed, the rest refused whole.
    let tries = (0..12).map(|i| {
        let (http, url) = (http.clone(), brain.url.clone());
        tokio::spawn(async move {
            create(
                &http,
                &url,
                json!({"action": "bring", "object": format!("cup {i}")}),
            )
            .await
        })
    });
    let mut filed = 0;
    let mut refused = Vec::new();
    for t in tries {
        let (s, body) = t.await.unwrap();
        match s {
            201 => filed += 1,
            429 => refused.push(body),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(filed, 5);
    assert_eq!(refused.len(), 7);
    for body in &refused {
        common::assert_schema("error.schema.json", body);
        assert_eq!(body["error"], "too_many_unfinished", "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("5 tasks are unfinished") && detail.contains("creature cancel --all"),
            "{detail}"
        );
    }
    let page = get(&http, &format!("{}/api/tasks", brain.url)).await;
    assert_eq!(page["total"], 5, "nothing half-filed: {page}");
    let state = get(&http, &format!("{}/api/state", brain.url)).await;
    assert_eq!(state["tasks"]["by_state"]["pending"], 5);

    let out = cli(&["cancel", "--all"], &brain.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cancelled 5 tasks") && (1..=5).all(|n| text.contains(&format!("task-{n}"))),
        "{text}"
    );
    let page = get(&http, &format!("{}/api/tasks?state=unfinished", brain.url)).await;
    assert_eq!(page["total"], 0);
    let (s, t) = create(&http, &brain.url, json!({"utterance": "open the door"})).await;
    assert_eq!(s, 201, "room again: {t}");
    assert_eq!(t["id"], "task-6");
    // One task still by id, and nothing left to cancel after it.
    let out = cli(&["cancel", "task-6"], &brain.url);
    assert!(out.status.success());
    let out = cli(&["cancel", "--all"], &brain.url);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no unfinished tasks"));
    let out = cli(&["cancel"], &brain.url);
    assert!(!out.status.success(), "an id or --all is needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_the_network_reaches_the_terminal_and_the_log_escaped() {
    let data = tempfile::tempdir().unwrap();
    let brain = serve(data.path(), NO_RATE_LIMIT);
    let http = reqwest::Client::new();
    let (s, t) = create(
        &http,
        &brain.url,
        json!({
            "action": "bring",
            "object": "\u{0}\u{1b}[2J",
            "utterance": "bring it\nERROR forged log line \u{202e}evil",
        }),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["arguments"]["object"], "\u{0}\u{1b}[2J", "stored as sent");

    let out = cli(&["tasks"], &brain.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = &out.stdout;
    for raw in [&b"\x00"[..], b"\x1b", "\u{202e}".as_bytes()] {
        assert!(
            !bytes.windows(raw.len()).any(|w| w == raw),
            "raw {raw:?} in {bytes:?}"
        );
    }
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert_eq!(text.lines().count(), 2, "header and one row: {text}");
    assert!(text.contains("\\u{0}\\u{1b}[2J"), "{text}");
    assert!(
        text.contains("bring it\\u{a}ERROR forged log line \\u{202e}evil"),
        "{text}"
    );

    // The brain's own log line names the object escaped, on one line.
    let line = common::eventually(Duration::from_secs(5), "the task filed log line", || {
        let log = Arc::clone(&brain.log);
        async move {
            log.lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("task filed"))
                .cloned()
        }
    })
    .await;
    assert!(
        line.contains("\\u{0}\\u{1b}[2J") && !line.contains("\u{1b}[2J") && !line.contains('\0'),
        "{line:?}"
    );
}
