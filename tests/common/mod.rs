//! Shared helpers for the integration tests: a real brain on a temp ledger, schema checks,
//! and polling with deadlines.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::{Duration, Instant};

use creature::Service;
use creature::config::Config;
use creature::schemas;
use serde_json::Value;

/// A brain serving on 127.0.0.1 with its own temporary ledger.
pub struct TestBrain {
    pub service: Service,
    pub url: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut server = Config::default().server;
    server.addr = "127.0.0.1:0".parse().unwrap();
    Config {
        data_dir: dir.to_path_buf(),
        server,
        ..Config::default()
    }
}

pub async fn start() -> TestBrain {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBrain {
    start_with_result(tweak).await.expect("the service starts")
}

pub async fn start_with_result(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<TestBrain> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    tweak(&mut config);
    let service = Service::start(config).await?;
    let url = format!("http://{}", service.addr());
    Ok(TestBrain {
        service,
        url,
        http: reqwest::Client::new(),
        dir,
    })
}

impl TestBrain {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.service.addr())
    }
}

/// Panic with every violation if `instance` does not follow `schema`.
pub fn assert_schema(schema: &str, instance: &Value) {
    let validator = schemas::validator(schema).unwrap();
    let errors = schemas::violations(&validator, instance);
    assert!(
        errors.is_empty(),
        "{schema} violated by {instance}:\n{}",
        errors.join("\n")
    );
}

/// Poll `check` until it returns `Some`, or panic after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The states in a task's history, oldest first.
pub fn history(task: &Value) -> Vec<String> {
    task["history"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["state"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Read a `creature serve` child's stderr on a thread of its own: every line goes to `log`
/// (when given), and the URL of the banner's first line (`creature: listening on URL`) is
/// returned as soon as it appears (panics after 30 s).
pub fn listen_url(
    stderr: std::process::ChildStderr,
    log: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
) -> String {
    use std::io::{BufRead, BufReader};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("creature: listening on ") {
                let url = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(url.to_string());
            }
            if let Some(log) = &log {
                log.lock().unwrap().push(line);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("serve prints where it listens")
}

/// A deterministic noise source (xorshift), so every run hears the same "speech".
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// A conversation script at `rate` Hz: (seconds, speaking) pieces. Speech is loud noise
/// swelling at a syllable rate (every 80 ms of it well above any voice threshold, and
/// louder than the creature, so it can interrupt it); pauses are digital silence.
pub fn speech_script(rate: u32, pieces: &[(f64, bool)]) -> Vec<f32> {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    for &(seconds, speaking) in pieces {
        let n = (seconds * f64::from(rate)).round() as usize;
        for i in 0..n {
            out.push(if speaking {
                let t = i as f32 / rate as f32;
                let swell = 0.8 + 0.2 * (std::f32::consts::TAU * 4.0 * t).sin();
                0.9 * swell * noise.next()
            } else {
                0.0
            });
        }
    }
    out
}
