//! The phone face in a real browser: headless Chromium opens `/face` from a real brain and
//! is driven over the DevTools protocol; the page reports what it received and rendered.
//! `./.ci/test` installs Chromium; without it this test fails and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn chromium() -> PathBuf {
    for candidate in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "Chromium is needed for the face test; ./.ci/test installs it (apt-get install chromium)"
    );
}

/// Chromium, killed when dropped.
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--window-size=390,844",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        Browser { child, profile }
    }

    /// The DevTools websocket of the page it opened.
    async fn page_socket(&self) -> String {
        let port_file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                if let Some(port) = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<u16>().ok())
                {
                    break port;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium never opened its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        loop {
            let list: Value = match reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await
            {
                Ok(resp) => resp.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let page = list
                .as_array()
                .and_then(|l| l.iter().find(|t| t["type"] == "page").cloned());
            if let Some(ws) =
                page.and_then(|p| p["webSocketDebuggerUrl"].as_str().map(String::from))
            {
                return ws;
            }
            assert!(Instant::now() < deadline, "no page target in chromium");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct DevTools {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl DevTools {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.socket
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(text) = msg {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    return v["result"].clone();
                }
            }
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_face_page_follows_the_brain_in_a_real_browser() {
    let brain = common::start().await;
    let browser = Browser::open(&format!("{}/face", brain.url));
    let (socket, _) = tokio_tungstenite::connect_async(browser.page_socket().await)
        .await
        .unwrap();
    let mut tools = DevTools { socket, next_id: 0 };

    // The page connects and counts frames at the tick rate.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = tools.eval("JSON.stringify({c: document.body.dataset.connected, f: +document.body.dataset.frames})").await;
        let state: Value = serde_json::from_str(state.as_str().unwrap_or("{}")).unwrap_or_default();
        if state["c"] == "true" && state["f"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the face never connected: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let frames = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let f0 = frames(&tools.eval("document.body.dataset.frames").await);
    let t0 = Instant::now();

    // Make it talk and watch the mouth on the page.
    let (status, _) = brain
        .post("/api/hear", json!({"text": "how are you today"}))
        .await;
    assert_eq!(status, 202);
    let mut max_mouth: f64 = 0.0;
    let mut saw_speaking = false;
    while t0.elapsed() < Duration::from_secs(4) {
        let s = tools.eval("JSON.stringify(document.body.dataset)").await;
        let d: Value = serde_json::from_str(s.as_str().unwrap()).unwrap();
        max_mouth = max_mouth.max(
            d["mouth"]
                .as_str()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0.0),
        );
        saw_speaking |= d["speaking"] == "true";
        assert_eq!(d["bad"], "0", "the page rejected a brain message: {d}");
        assert!(
            [
                "neutral", "happy", "sad", "anger", "fear", "surprise", "disgust"
            ]
            .contains(&d["emotion"].as_str().unwrap()),
            "{d}"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let f1 = frames(&tools.eval("document.body.dataset.frames").await);
    let rate = (f1 - f0) as f64 / t0.elapsed().as_secs_f64();
    assert!(rate >= 10.0, "the page got {rate:.1} frames/s");
    assert!(saw_speaking, "the page saw the creature speak");
    assert!(max_mouth > 0.2, "the page's mouth opened: {max_mouth}");
    let renders = frames(&tools.eval("document.body.dataset.renders").await);
    assert!(renders > 10, "the face kept animating: {renders} renders");

    // A screenshot, for people reviewing the test run.
    let shot = tools
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    if let Some(data) = shot["data"].as_str() {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("face.png");
        let _ = std::fs::write(&out, base64_decode(data));
    }
    drop(browser);
    brain.service.shutdown().await;
}

/// Standard base64, enough for a screenshot (no dependency just for this).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
