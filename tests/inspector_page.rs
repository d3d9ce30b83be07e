//! The inspector page in a real (headless) Chromium, driven over the DevTools protocol: it
//! renders the supervision tree from the event stream, moves without a reload, shows an
//! injected failure in its restart timeline within a second, links a phrase to the task it
//! filed, cancels a task from its button, logs no console errors, and never asks for the
//! whole task ledger or polls the collections.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in ["/usr/bin", "/usr/local/bin", "/snap/bin"] {
            let p = PathBuf::from(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("no chromium found (apt-get install chromium)");
}

/// A headless Chromium on a blank page, killed when dropped.
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
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        Browser { child, profile }
    }

    /// DevTools on its page, with console, log and page events on.
    async fn tools(&self) -> Page {
        let port_file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium opened no DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let ws = loop {
            let list: Value = match reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await
            {
                Ok(resp) => resp.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let found = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|p| p["webSocketDebuggerUrl"].as_str().map(String::from))
            });
            if let Some(ws) = found {
                break ws;
            }
            assert!(Instant::now() < deadline, "no page in chromium");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
        let mut page = Page {
            socket,
            next_id: 0,
            events: Vec::new(),
        };
        for domain in [
            "Runtime.enable",
            "Log.enable",
            "Page.enable",
            "Network.enable",
        ] {
            page.call(domain, json!({})).await;
        }
        page
    }
}

struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    events: Vec<Value>,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(msg)).await.unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .unwrap()
                .unwrap();
            if let Message::Text(text) = msg {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    return v["result"].clone();
                }
                if v.get("method").is_some() {
                    self.events.push(v);
                }
            }
        }
    }

    /// The value of `expression` (JSON strings are parsed).
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        let raw = r["result"]["value"].clone();
        raw.as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .filter(|v| v.is_object() || v.is_array())
            .unwrap_or(raw)
    }

    /// Poll `expression` until `ok` holds; panic with the last value after `limit`.
    async fn wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        expression: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(expression).await;
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}: {v}; console: {:?}",
                self.console_errors()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn console_errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str()? {
                "Runtime.consoleAPICalled" if e["params"]["type"] == "error" => {
                    Some(format!("console.error {}", e["params"]["args"]))
                }
                "Runtime.exceptionThrown" => {
                    Some(format!("exception {}", e["params"]["exceptionDetails"]))
                }
                "Log.entryAdded" if e["params"]["entry"]["level"] == "error" => Some(format!(
                    "log {} {}",
                    e["params"]["entry"]["text"], e["params"]["entry"]["url"]
                )),
                _ => None,
            })
            .collect()
    }
}

const TREE_STATE: &str = "JSON.stringify([...document.querySelectorAll('#tree .node')].map(n => ({name: n.dataset.actor, status: n.dataset.status})))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_page_lives_on_the_event_stream() {
    let brain = common::start_with(|c| c.inspect.fault_injection = true).await;
    let browser = Browser::start();
    let mut page = browser.tools().await;
    page.call(
        "Page.navigate",
        json!({"url": format!("{}/inspector", brain.url)}),
    )
    .await;

    // The tree: the root and its six children, all running.
    let tree = page
        .wait_for(
            Duration::from_secs(15),
            "seven running actors",
            TREE_STATE,
            |v| {
                v.as_array()
                    .is_some_and(|a| a.len() == 7 && a.iter().all(|n| n["status"] == "running"))
            },
        )
        .await;
    let names: Vec<&str> = tree
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
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

    // The tick counter moves without a reload.
    let first = page
        .wait_for(
            Duration::from_secs(5),
            "a tick count",
            "+(document.getElementById('ticks').dataset.ticks || 0)",
            |v| v.as_u64().unwrap_or(0) > 0,
        )
        .await
        .as_u64()
        .unwrap();
    page.wait_for(
        Duration::from_secs(5),
        "the tick count to move",
        "+(document.getElementById('ticks').dataset.ticks || 0)",
        |v| v.as_u64().unwrap_or(0) > first,
    )
    .await;

    // An injected failure shows in the timeline within a second, and the child comes back.
    page.eval("document.querySelector('button.fail[data-actor=reasoner]').click()")
        .await;
    let clicked = Instant::now();
    page.wait_for(
        Duration::from_secs(1),
        "the restart in the timeline",
        "document.querySelectorAll('#timeline li.restart[data-actor=reasoner]').length",
        |v| v.as_u64() == Some(1),
    )
    .await;
    assert!(clicked.elapsed() < Duration::from_secs(1));
    page.wait_for(
        Duration::from_secs(5),
        "the reasoner running again",
        TREE_STATE,
        |v| {
            v.as_array().is_some_and(|a| {
                a.iter()
                    .any(|n| n["name"] == "reasoner" && n["status"] == "running")
            })
        },
    )
    .await;
    let (_, reasoner) = brain.get("/api/actors/reasoner").await;
    assert_eq!(reasoner["restarts"], 1, "{reasoner}");

    // A phrase and the task it filed appear, linked.
    brain
        .post("/api/hear", json!({"text": "bring me the cup"}))
        .await;
    // The live face preview opens its mouth while the creature answers aloud.
    page.wait_for(
        Duration::from_secs(5),
        "the preview's mouth to open",
        "+(document.getElementById('mini').dataset.mouth || 0)",
        |v| v.as_f64().unwrap_or(0.0) > 0.1,
    )
    .await;
    let linked = page
        .wait_for(
            Duration::from_secs(10),
            "the phrase linked to its task",
            "JSON.stringify([...document.querySelectorAll('#transcript a.tasklink')].map(a => ({task: a.dataset.task, phrase: a.closest('p').textContent, row: !!document.getElementById('task-' + a.dataset.task)})))",
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    let link = &linked[0];
    assert_eq!(link["row"], true, "the link points at a task row: {link}");
    assert!(
        link["phrase"].as_str().unwrap().contains("bring cup"),
        "the intent is highlighted: {link}"
    );
    let id = link["task"].as_str().unwrap().to_string();
    let (_, task) = brain.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(task["source"], "monologue");
    assert_eq!(task["arguments"]["object"], "cup");

    // Cancel from the page cancels.
    page.eval(&format!(
        "document.querySelector('button.cancel[data-task=\"{id}\"]').click()"
    ))
    .await;
    page.wait_for(
        Duration::from_secs(5),
        "the row to say cancelled",
        &format!("document.getElementById('task-{id}').dataset.state"),
        |v| v == "cancelled",
    )
    .await;
    let (_, task) = brain.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(task["state"], "cancelled");

    // What the page asked for: one page of tasks, never the whole ledger, and no polling.
    page.eval("1").await; // collect the events sent so far
    let requests: Vec<&str> = page
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .filter_map(|e| e["params"]["request"]["url"].as_str())
        .collect();
    let tasks: Vec<&&str> = requests
        .iter()
        .filter(|r| r.contains("/api/tasks?") || r.ends_with("/api/tasks"))
        .collect();
    assert_eq!(tasks.len(), 1, "one page of tasks: {requests:?}");
    assert!(tasks[0].contains("limit=20"), "{requests:?}");
    for polled in ["/api/actors", "/api/state"] {
        assert!(
            !requests.iter().any(|r| r.ends_with(polled)),
            "{polled} is never polled: {requests:?}"
        );
    }
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.ends_with("/api/events"))
            .count(),
        1,
        "one stream, never reconnected: {requests:?}"
    );
    let errors = page.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    drop(page);
    drop(browser);
    brain.service.shutdown().await;
}
