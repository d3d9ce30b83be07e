//! The phone face and the inspector in a real browser: headless Chromium opens `/face` and
//! `/inspector` from a real brain and is driven over the DevTools protocol; the pages report
//! what they received and rendered.
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
    /// A phone-sized headless Chromium on `url`, with the given extra flags.
    fn launch(url: &str, extra: &[String]) -> Browser {
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
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        Browser { child, profile }
    }

    fn open(url: &str) -> Browser {
        Browser::launch(url, &[])
    }

    /// Chromium with a fake camera and microphone that it may use without asking (the
    /// microphone plays a beep; the camera plays `video`, or a test pattern), on a blank
    /// page: the test attaches, listens for console errors, then navigates.
    fn with_media(video: Option<&Path>) -> Browser {
        let mut flags = vec![
            "--ignore-certificate-errors".to_string(),
            "--use-fake-ui-for-media-stream".to_string(),
            "--use-fake-device-for-media-stream".to_string(),
            "--autoplay-policy=no-user-gesture-required".to_string(),
        ];
        if let Some(video) = video {
            flags.push(format!(
                "--use-file-for-fake-video-capture={}",
                video.display()
            ));
        }
        Browser::launch("about:blank", &flags)
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

    /// DevTools on its page, with console and log events recorded.
    async fn tools(&self) -> DevTools {
        let (socket, _) = tokio_tungstenite::connect_async(self.page_socket().await)
            .await
            .unwrap();
        let mut tools = DevTools {
            socket,
            next_id: 0,
            events: Vec::new(),
        };
        tools.call("Runtime.enable", json!({})).await;
        tools.call("Log.enable", json!({})).await;
        tools.call("Page.enable", json!({})).await;
        tools
    }
}

struct DevTools {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    /// Every event seen so far (console messages, exceptions, log entries, ...).
    events: Vec<Value>,
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

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Run `expression` as if the person tapped (user activation: audio may start).
    async fn tap(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "userGesture": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    async fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r["errorText"].is_null(), "navigating to {url}: {r}");
    }

    /// Poll `expression` (a JSON string on the page) until `ok` holds, or panic with the
    /// last value after `limit`.
    async fn wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        expression: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let raw = self.eval(expression).await;
            let v: Value = raw
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .filter(|v| v.is_object() || v.is_array())
                .unwrap_or(raw);
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}: {v}; console: {:?}",
                self.console_errors()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Console errors, uncaught exceptions and error log entries (failed loads, CSP
    /// violations) seen so far.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_face_page_follows_the_brain_in_a_real_browser() {
    let brain = common::start().await;
    let browser = Browser::open(&format!("{}/face", brain.url));
    let (socket, _) = tokio_tungstenite::connect_async(browser.page_socket().await)
        .await
        .unwrap();
    let mut tools = DevTools {
        socket,
        next_id: 0,
        events: Vec::new(),
    };

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

/// A brain as a phone meets it: LAN mode (HTTPS with its self-signed certificate, the access
/// token on), listening on loopback only. Returns the brain (its client pins the certificate
/// and sends the token) and the pairing link's token.
async fn start_lan() -> (common::TestBrain, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.server.lan = true;
    let service = creature::Service::start_on(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the service starts in LAN mode");
    let url = service.url();
    assert!(url.starts_with("https://"), "{url}");
    let token = service
        .access_token()
        .expect("LAN mode has a token")
        .to_string();
    let pem = std::fs::read(service.cert_path().expect("serving https")).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .default_headers(headers)
        .build()
        .unwrap();
    (
        common::TestBrain {
            service,
            url,
            http,
            dir,
        },
        token,
    )
}

/// The phone's face page: everything it loads comes from the brain (manifest, icons), the
/// screen's wake lock is held, and nothing goes to the console as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_face_page_is_an_app_with_a_wake_lock_and_no_console_errors() {
    let (brain, token) = start_lan().await;
    let browser = Browser::with_media(None);
    let mut tools = browser.tools().await;
    tools
        .navigate(&format!("{}/face#token={token}", brain.url))
        .await;
    tools
        .wait_for(
            Duration::from_secs(20),
            "the face to connect",
            "JSON.stringify({c: document.body.dataset.connected, f: +document.body.dataset.frames})",
            |v| v["c"] == "true" && v["f"].as_u64().unwrap_or(0) > 0,
        )
        .await;

    // The manifest: linked, served with its type, full screen, icons that load.
    let manifest_url = tools
        .eval("document.querySelector('link[rel=manifest]').href")
        .await;
    assert_eq!(
        manifest_url.as_str(),
        Some(format!("{}/static/manifest.webmanifest", brain.url).as_str())
    );
    let app = tools.call("Page.getAppManifest", json!({})).await;
    assert_eq!(app["errors"], json!([]), "manifest errors: {app}");
    let manifest: Value = serde_json::from_str(app["data"].as_str().unwrap_or("{}")).unwrap();
    assert_eq!(manifest["display"], "fullscreen", "{manifest}");
    for icon in manifest["icons"].as_array().expect("icons") {
        let src = icon["src"].as_str().unwrap();
        let resp = brain
            .http
            .get(format!("{}{src}", brain.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{src}");
        assert_eq!(
            resp.headers()["content-type"],
            icon["type"].as_str().unwrap(),
            "{src}"
        );
    }
    let resp = brain
        .http
        .get(format!("{}/static/manifest.webmanifest", brain.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/manifest+json");
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age="),
        "static files are cached"
    );
    let (status, body) = brain.get("/static/nothing-here.js").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");

    // The screen stays on while the face is shown.
    tools
        .wait_for(
            Duration::from_secs(10),
            "the wake lock",
            "document.body.dataset.wakeLock",
            |v| v == "held",
        )
        .await;

    // A few seconds of life, then nothing may have gone wrong on the page.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tools.eval("1").await;
    let errors = tools.console_errors();
    assert!(errors.is_empty(), "console errors on /face: {errors:#?}");
    drop(browser);
    brain.service.shutdown().await;
}

/// The pairing link's token: taken from the fragment, kept, and taken off the address bar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pairing_token_moves_from_the_link_into_storage() {
    let brain = common::start().await;
    let browser = Browser::with_media(None);
    let mut tools = browser.tools().await;
    let token = "T0ken-from_the-pairing-link";
    tools
        .navigate(&format!("{}/inspector#token={token}", brain.url))
        .await;
    let seen = tools
        .wait_for(
            Duration::from_secs(10),
            "the token to be stored",
            "JSON.stringify({hash: location.hash, href: location.href, kept: localStorage.getItem('creature.token')})",
            |v| v["kept"].is_string(),
        )
        .await;
    assert_eq!(seen["kept"], token, "{seen}");
    assert_eq!(seen["hash"], "", "the token left the address bar: {seen}");
    assert!(!seen["href"].as_str().unwrap().contains(token), "{seen}");
    drop(browser);
    brain.service.shutdown().await;
}

/// The talk button streams the microphone (Chromium's fake device beeps) to `/ws/audio`,
/// and the brain's voice activity detector hears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_talk_button_streams_a_microphone_the_brain_hears() {
    let (brain, token) = start_lan().await;
    let voice = brain.service.brain().voice.clone();
    assert!(!voice.report().user_active, "silence before anyone talks");
    let browser = Browser::with_media(None);
    let mut tools = browser.tools().await;
    tools
        .navigate(&format!("{}/face#token={token}", brain.url))
        .await;
    tools
        .wait_for(
            Duration::from_secs(20),
            "the face to connect",
            "document.body.dataset.connected",
            |v| v == "true",
        )
        .await;
    tools
        .tap("document.getElementById('btnTalk').click()")
        .await;
    tools
        .wait_for(
            Duration::from_secs(15),
            "the audio session",
            "document.body.dataset.audio",
            |v| v == "on",
        )
        .await;
    // The beep comes about once a second: the detector hears it within a few.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut heard = false;
    while Instant::now() < deadline {
        if voice.report().user_active {
            heard = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = tools.eval("window.faceState.audioStats.sent").await;
    assert!(
        sent.as_u64().unwrap_or(0) > 0,
        "the page sent no audio frames"
    );
    assert!(
        heard,
        "the voice activity detector never heard the microphone ({sent} frames sent); console: {:?}",
        tools.console_errors()
    );
    let errors = tools.console_errors();
    assert!(
        errors.is_empty(),
        "console errors while talking: {errors:#?}"
    );
    drop(browser);
    brain.service.shutdown().await;
}

/// With no `FaceDetector` in the browser, the vendored detector finds a real face in the
/// camera and the eyes follow it: a face on the camera's left is a person standing at the
/// creature's left (the viewer's right), so both pupils move to the creature's left, which
/// is the screen's right (+x).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eyes_follow_a_face_in_the_camera_without_face_detector() {
    let clip = tempfile::tempdir().unwrap();
    let video = clip.path().join("face-left.y4m");
    write_face_clip(&video, 0.25);
    let (brain, token) = start_lan().await;
    let browser = Browser::with_media(Some(&video));
    let mut tools = browser.tools().await;
    // `still`: the eyes rest at the centre unless they follow someone.
    tools
        .navigate(&format!("{}/face?still=1#token={token}", brain.url))
        .await;
    let native = tools.eval("'FaceDetector' in window").await;
    assert_eq!(
        native, false,
        "this Chromium has FaceDetector: the test would not test the vendored one"
    );
    let pupils = "JSON.stringify([...document.querySelectorAll('.pupil')].map(p => +/translate\\(([-\\d.]+)/.exec(p.getAttribute('transform') || 'translate(0 0)')[1]))";
    let rest = tools
        .wait_for(
            Duration::from_secs(10),
            "the eyes to be drawn",
            pupils,
            |v| v.as_array().is_some_and(|a| a.len() == 2),
        )
        .await;
    for x in rest.as_array().unwrap() {
        assert!(
            x.as_f64().unwrap().abs() < 3.0,
            "the eyes rest at the centre: {rest}"
        );
    }
    tools
        .tap("document.getElementById('btnGaze').click()")
        .await;
    let st = tools
        .wait_for(
            Duration::from_secs(40),
            "the vendored detector to find the face",
            "JSON.stringify({gaze: faceState.gaze, detector: faceState.detector, n: faceState.detections})",
            |v| v["n"].as_u64().unwrap_or(0) >= 2 || v["gaze"] == "unavailable",
        )
        .await;
    assert_eq!(st["detector"], "vendored", "{st}");
    assert_eq!(st["gaze"], "tracking", "{st}");
    tools
        .wait_for(Duration::from_secs(10), "the pupils to move", pupils, |v| {
            v.as_array()
                .is_some_and(|a| a.iter().all(|x| x.as_f64().unwrap_or(0.0) > 8.0))
        })
        .await;
    let errors = tools.console_errors();
    assert!(
        errors.is_empty(),
        "console errors while following: {errors:#?}"
    );
    save_screenshot(&mut tools, "face-following.png").await;
    drop(browser);
    brain.service.shutdown().await;
}

/// With auth on: a page without the token says how to get it; the pairing link's token
/// connects the face; the inspector uses it for the paged task list and shows full task ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_need_the_pairing_token_and_use_it() {
    let token = "pairing-token_0123456789abcdefghijklmnopqrstu";
    let brain = common::start_with(|c| {
        c.server.require_token = true;
        c.server.token = Some(token.to_string());
    })
    .await;
    let browser = Browser::with_media(None);
    let mut tools = browser.tools().await;

    // No token: the face cannot connect and says what to do.
    tools.navigate(&format!("{}/face", brain.url)).await;
    let denied = tools
        .wait_for(
            Duration::from_secs(15),
            "the face to ask for the pairing link",
            "JSON.stringify({auth: document.body.dataset.auth, badge: document.getElementById('badge').textContent, c: document.body.dataset.connected})",
            |v| v["auth"] == "denied",
        )
        .await;
    assert_eq!(denied["c"], "false", "{denied}");
    assert!(
        denied["badge"].as_str().unwrap().contains("creature pair"),
        "{denied}"
    );

    // The pairing link: the face connects, and the token leaves the address bar.
    tools
        .navigate(&format!("{}/face#token={token}", brain.url))
        .await;
    let ok = tools
        .wait_for(
            Duration::from_secs(20),
            "the face to connect with the token",
            "JSON.stringify({c: document.body.dataset.connected, f: +document.body.dataset.frames, hash: location.hash})",
            |v| v["c"] == "true" && v["f"].as_u64().unwrap_or(0) > 0,
        )
        .await;
    assert_eq!(ok["hash"], "", "{ok}");

    // The inspector on the same origin has the token too.
    let created: Value = brain
        .http
        .post(format!("{}/api/tasks", brain.url))
        .bearer_auth(token)
        .json(&json!({"utterance": "bring me the cup"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("a task id").to_string();
    tools.navigate(&format!("{}/inspector", brain.url)).await;
    let ids = tools
        .wait_for(
            Duration::from_secs(15),
            "the inspector to list the task",
            "JSON.stringify({online: document.body.dataset.online, auth: document.body.dataset.auth, ids: [...document.querySelectorAll('.taskid')].map(e => e.textContent)})",
            |v| v["ids"].as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    assert_eq!(ids["auth"], "ok", "{ids}");
    assert_eq!(ids["ids"], json!([id]), "the full task id is shown: {ids}");

    // The pairing box shows the QR code (or says the brain has no pairing yet).
    tools
        .eval("document.getElementById('pairBox').open = true")
        .await;
    let pair = tools
        .wait_for(
            Duration::from_secs(10),
            "the pairing box",
            "JSON.stringify({qr: !!document.getElementById('pairQr'), text: document.getElementById('pairBody').textContent})",
            |v| v["qr"] == true || v["text"].as_str().is_some_and(|t| t.contains("pairing") || t.contains("https")),
        )
        .await;
    let pair_status = brain
        .http
        .get(format!("{}/api/pair", brain.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status();
    if pair_status == 200 {
        assert_eq!(pair["qr"], true, "the QR code is shown: {pair}");
    }
    tools
        .eval("document.getElementById('pair').scrollIntoView()")
        .await;
    save_screenshot(&mut tools, "inspector.png").await;
    drop(browser);
    brain.service.shutdown().await;
}

/// A 320x240 y4m clip of a real face (NASA's portrait of Eileen Collins, public domain, as
/// scikit-image ships it) with its centre at `centre_x` of the width, on a grey wall.
fn write_face_clip(path: &Path, centre_x: f64) {
    let (fw, fh, face) =
        read_ppm(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/astronaut-face.ppm"));
    let (w, h) = (320usize, 240usize);
    let mut rgb = vec![[92u8, 100, 110]; w * h];
    let left = (centre_x * w as f64) as usize - fw / 2;
    let top = (h - fh) / 2;
    for y in 0..fh {
        for x in 0..fw {
            let i = (y * fw + x) * 3;
            rgb[(top + y) * w + left + x] = [face[i], face[i + 1], face[i + 2]];
        }
    }
    // BT.601 studio range, 4:2:0 (chroma averaged over 2x2)
    let luma = |[r, g, b]: [u8; 3]| {
        (16.0 + 0.257 * f64::from(r) + 0.504 * f64::from(g) + 0.098 * f64::from(b)).round() as u8
    };
    let mut frame = Vec::with_capacity(w * h * 3 / 2);
    frame.extend(rgb.iter().map(|&p| luma(p)));
    for plane in 0..2 {
        for y in (0..h).step_by(2) {
            for x in (0..w).step_by(2) {
                let mut sum = 0.0;
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let [r, g, b] = rgb[(y + dy) * w + x + dx].map(f64::from);
                    sum += if plane == 0 {
                        128.0 - 0.148 * r - 0.291 * g + 0.439 * b
                    } else {
                        128.0 + 0.439 * r - 0.368 * g - 0.071 * b
                    };
                }
                frame.push((sum / 4.0).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    let mut out = format!("YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n").into_bytes();
    for _ in 0..10 {
        out.extend_from_slice(b"FRAME\n");
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out).unwrap();
}

/// A binary PPM (P6, 8 bits): width, height, RGB bytes.
fn read_ppm(path: &Path) -> (usize, usize, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        if bytes[i] == b'#' {
            while bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i].is_ascii_whitespace() {
            i += 1;
        } else {
            let start = i;
            while !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            fields.push(String::from_utf8(bytes[start..i].to_vec()).unwrap());
        }
    }
    assert_eq!(fields[0], "P6", "{}", path.display());
    assert_eq!(fields[3], "255");
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let data = bytes[i + 1..].to_vec();
    assert_eq!(data.len(), w * h * 3, "{}", path.display());
    (w, h, data)
}

/// A screenshot in the test's temporary directory, for people reviewing the run.
async fn save_screenshot(tools: &mut DevTools, name: &str) {
    let shot = tools
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    if let Some(data) = shot["data"].as_str() {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::write(&out, base64_decode(data));
    }
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

// ---------------------------------------------------------------- the inspector page
// It renders the supervision tree from the event stream, moves without a reload, shows an
// injected failure in its restart timeline within a second, links a phrase to the task it
// filed, cancels a task from its button, logs no console errors, and never asks for the
// whole task ledger or polls the collections.

const TREE_STATE: &str = "JSON.stringify([...document.querySelectorAll('#tree .node')].map(n => ({name: n.dataset.actor, status: n.dataset.status})))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_page_lives_on_the_event_stream() {
    let brain = common::start_with(|c| c.inspect.fault_injection = true).await;
    let browser = Browser::open("about:blank");
    let mut page = browser.tools().await;
    // Every request the page makes is recorded from the first one on.
    page.call("Network.enable", json!({})).await;
    page.navigate(&format!("{}/inspector", brain.url)).await;

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
