//! The `creature` binary as a person runs it: `serve` in its own process, the client
//! commands against it, and the ledger surviving a hard kill.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_creature");

/// `creature serve` on a free port; returns the process and its base URL.
/// A brain process that is killed when the test ends, failed assertions included, so a
/// failing test never leaves a brain running.
struct Served(Child);

impl std::ops::Deref for Served {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn serve(data: &Path, extra: &[&str]) -> (Served, String) {
    let addr = if extra.contains(&"--addr") {
        vec![]
    } else {
        vec!["--addr", "127.0.0.1:0"]
    };
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(addr)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env("CREATURE_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("creature serve starts");
    let url = common::listen_url(child.stderr.take().unwrap(), None);
    (Served(child), url)
}

fn cli(args: &[&str], url: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CREATURE_URL", url)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn get(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_survives_a_hard_kill_with_nothing_lost() {
    let data = tempfile::tempdir().unwrap();
    let (mut first, url) = serve(data.path(), &[]);
    let http = reqwest::Client::new();
    let mut created = Vec::new();
    for utterance in [
        "bring me the cup",
        "pick up the red ball",
        "put the book on the shelf",
        "open the door",
    ] {
        let resp = http
            .post(format!("{url}/api/tasks"))
            .json(&json!({"utterance": utterance}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        created.push(resp.json::<Value>().await.unwrap());
    }
    // Created means durable: kill -9 right after the last 201.
    first.kill().unwrap();
    first.wait().unwrap();

    let (mut second, url) = serve(data.path(), &[]);
    let after = get(&format!("{url}/api/tasks?order=asc")).await;
    assert_eq!(
        after["tasks"].as_array().unwrap(),
        &created,
        "every task, unchanged, after the restart"
    );
    let state = get(&format!("{url}/api/state")).await;
    assert_eq!(state["tasks"]["total"], 4);
    // New ids never collide with the old ones.
    let resp = http
        .post(format!("{url}/api/tasks"))
        .json(&json!({"utterance": "close the window"}))
        .send()
        .await
        .unwrap();
    let new: Value = resp.json().await.unwrap();
    assert!(created.iter().all(|t| t["id"] != new["id"]), "{new}");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_print_readable_tables() {
    let data = tempfile::tempdir().unwrap();
    let (mut server, url) = serve(data.path(), &[]);

    let out = cli(&["actors"], &url);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ACTOR"), "{text}");
    for name in [
        "brain",
        "voice",
        "monologue",
        "reasoner",
        "tasks",
        "affect",
        "face",
    ] {
        // The tree: the root, then each child under it (`├─ voice`, `└─ face`).
        let line = text
            .lines()
            .find(|l| {
                l.trim_start_matches(['├', '└', '─', ' '])
                    .split_whitespace()
                    .next()
                    == Some(name)
            })
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(line.contains("running"), "{line}");
        if name != "brain" {
            assert!(
                line.starts_with('├') || line.starts_with('└'),
                "a child: {line}"
            );
        }
    }

    let out = cli(&["task", "bring me the cup"], &url);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("task-")
            && text.contains("bring")
            && text.contains("cup")
            && text.contains("pending"),
        "{text}"
    );

    let out = cli(&["task", "what a lovely day"], &url);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no_physical_task"),
        "{}",
        stderr(&out)
    );

    let out = cli(&["hear", "hello"], &url);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("heard: hello"), "{}", stdout(&out));

    let out = cli(&["state"], &url);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("voice backend") && text.contains("sim") && text.contains("tick jitter"),
        "{text}"
    );

    let out = cli(&["tasks"], &url);
    assert!(stdout(&out).lines().count() == 2, "{}", stdout(&out));

    let _ = server.kill();
    let _ = server.wait();
    let out = cli(&["actors"], &url);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the brain"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_config_file_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creature.toml");
    std::fs::write(&path, "[voice]\nbakend = \"sim\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bakend") && err.contains("creature.toml"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/creature.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read config file /nonexistent/creature.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["serve", "--addr", &addr, "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_the_local_microphone_either_works_or_says_why_not() {
    let result = common::start_with_result(|c| c.audio.device = true).await;
    match result {
        Ok(brain) => brain.service.shutdown().await, // this machine has sound devices
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(
                msg.contains("local microphone")
                    && (msg.contains("device") || msg.contains("feature")),
                "{msg}"
            );
        }
    }
}

/// A free port to reuse across a restart (the brain must come back where the body looks).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_in_flight_survives_kill_9_of_the_brain_and_is_done_exactly_once() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (mut brain, url) = serve(data.path(), &["--addr", &addr]);
    let body_log = tempfile::NamedTempFile::new().unwrap();
    let mut body = Served(
        Command::new(BIN)
            .args([
                "body-sim",
                "--url",
                &format!("ws://{addr}/ws/body"),
                "--failure-rate",
                "0",
                "--speed",
                "1.5",
            ])
            .stdout(body_log.reopen().unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{url}/api/tasks"))
        .json(&json!({"utterance": "bring me the cup"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let task_url = |base: &str| format!("{base}/api/tasks/{id}");
    common::eventually(
        Duration::from_secs(10),
        "the body to start the task",
        || async {
            let t = get(&task_url(&url)).await;
            (t["state"] == "running").then_some(())
        },
    )
    .await;

    // The brain dies hard while the body is busy, and comes back.
    brain.kill().unwrap();
    brain.wait().unwrap();
    let (mut brain, url) = serve(data.path(), &["--addr", &addr]);
    let done = common::eventually(
        Duration::from_secs(20),
        "the task to finish after the restart",
        || async {
            let t = get(&task_url(&url)).await;
            (t["state"] == "succeeded").then_some(t)
        },
    )
    .await;
    let all = get(&format!("{url}/api/tasks")).await;
    assert_eq!(
        all["tasks"].as_array().unwrap().len(),
        1,
        "exactly one task record: {all}"
    );
    let states = common::history(&done);
    assert_eq!(
        states.iter().filter(|s| **s == "running").count(),
        1,
        "{states:?}"
    );
    assert!(
        states.iter().any(|s| s == "accepted"),
        "reports from before the crash were kept: {states:?}"
    );
    let log = std::fs::read_to_string(body_log.path()).unwrap();
    assert_eq!(
        log.matches(&format!("{id}: bring the cup")).count(),
        1,
        "the body started it once:\n{log}"
    );
    assert!(
        log.matches("connected to").count() >= 2,
        "the body reconnected:\n{log}"
    );
    body.kill().unwrap();
    body.wait().unwrap();
    brain.kill().unwrap();
    brain.wait().unwrap();
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket to the brain at `url` (http://host:port).
async fn ws(url: &str, path: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws_url = format!("{}{path}", url.replacen("http://", "ws://", 1));
    let mut req = ws_url.into_client_request().unwrap();
    if path == "/ws/body" {
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", creature::config::DEV_BODY_TOKEN)
                .parse()
                .unwrap(),
        );
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// Read (and skip) what comes until the server's close frame: its code and reason.
async fn close_of(socket: &mut Socket, within: Duration) -> (u16, String) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.next()).await {
            Err(_) => panic!("no close frame within {within:?}"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                // Read on, so the answering close goes out (a browser answers at once).
                let _ = tokio::time::timeout(within, socket.next()).await;
                return (frame.code.into(), frame.reason.to_string());
            }
            Ok(Some(Ok(Message::Close(None)))) => panic!("a close frame without a reason"),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_session_with_a_reason_and_exits_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let (mut server, url) = serve(data.path(), &[]);
    let mut face = ws(&url, "/ws/face").await;
    let mut audio = ws(&url, "/ws/audio").await;
    let mut body = ws(&url, "/ws/body").await;
    // Every session is up (its first message arrived) before the signal.
    for socket in [&mut face, &mut audio, &mut body] {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a first message")
            .expect("open")
            .expect("a message");
    }
    let sent = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let signalled = Instant::now();
    let closes = [("face", face), ("audio", audio), ("body", body)].map(|(name, mut socket)| {
        tokio::spawn(async move { (name, close_of(&mut socket, Duration::from_secs(5)).await) })
    });
    for close in closes {
        let (name, (code, reason)) = close.await.unwrap();
        assert_eq!(
            (code, reason.as_str()),
            (1001, "the brain is stopping"),
            "{name}"
        );
    }
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(4),
            "serve still running 4 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "serve exited with {status:?}");
}
