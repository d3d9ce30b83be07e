//! Access control over the whole router and every socket: the token (401, nothing done),
//! the Host allow-list and the same-origin check (403), the security headers, and the rate
//! limit on state-changing requests (429 with Retry-After, nothing half-done). First with
//! `oneshot` on the router, then on a real socket.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use creature::config::DEV_BODY_TOKEN;
use creature::server::{AppState, TOKEN_FILE, app};
use creature::service::start_brain;
use creature_actors::BrainHandle;
use futures::SinkExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tower::ServiceExt;

use common::{TestBrain, start, start_with, test_config};

/// One route of `app()`: the pattern as the router spells it, a concrete path for it, and
/// what a call needs.
struct Route {
    method: &'static str,
    pattern: &'static str,
    path: &'static str,
    /// Answers without the token (the static pages and `/healthz`).
    open: bool,
    /// A websocket: called as an upgrade.
    ws: bool,
    body: Option<Value>,
}

const fn get(pattern: &'static str, path: &'static str) -> Route {
    Route {
        method: "GET",
        pattern,
        path,
        open: false,
        ws: false,
        body: None,
    }
}

/// Every route and socket of the router. `every_route_of_the_router_is_in_the_table` fails
/// when a route is added without an entry here.
fn routes() -> Vec<Route> {
    let open = |r: Route| Route { open: true, ..r };
    let ws = |r: Route| Route { ws: true, ..r };
    let post = |pattern, path, body: Value| Route {
        method: "POST",
        body: Some(body),
        ..get(pattern, path)
    };
    vec![
        open(get("/", "/")),
        open(get("/healthz", "/healthz")),
        open(get("/face", "/face")),
        open(get("/inspector", "/inspector")),
        open(get("/static/{*path}", "/static/manifest.webmanifest")),
        ws(get("/ws/face", "/ws/face")),
        ws(get("/ws/audio", "/ws/audio")),
        ws(get("/ws/body", "/ws/body")),
        get("/api/actors", "/api/actors"),
        get("/api/actors/{name}", "/api/actors/voice"),
        post(
            "/api/actors/{name}/fail",
            "/api/actors/tasks/fail",
            json!({}),
        ),
        get("/api/events", "/api/events"),
        get("/api/state", "/api/state"),
        get("/api/pair", "/api/pair"),
        get("/api/tasks", "/api/tasks"),
        post(
            "/api/tasks",
            "/api/tasks",
            json!({"action": "bring", "object": "cup"}),
        ),
        post("/api/tasks/cancel", "/api/tasks/cancel", json!({})),
        get("/api/tasks/{id}", "/api/tasks/task-1"),
        post(
            "/api/tasks/{id}/cancel",
            "/api/tasks/task-1/cancel",
            json!({}),
        ),
        post(
            "/api/hear",
            "/api/hear",
            json!({"text": "bring me the cup"}),
        ),
        get("/metrics", "/metrics"),
    ]
}

/// `(method, pattern)` of every `.route(...)` call in `src/server/*.rs`.
fn routes_in_source() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (start, _) in text.match_indices(".route(") {
            // The call's arguments: up to the parenthesis that closes `.route(`.
            let args = &text[start + ".route(".len()..];
            let mut depth = 1;
            let end = args
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap();
            let args = &args[..end];
            let pattern = args.split('"').nth(1).unwrap().to_string();
            for method in ["get", "post", "put", "patch", "delete", "any"] {
                let call = format!("{method}(");
                let used = args.match_indices(&call).any(|(i, _)| {
                    i == 0
                        || !args.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && args.as_bytes()[i - 1] != b'_'
                });
                if used {
                    found.push((method.to_uppercase(), pattern.clone()));
                }
            }
        }
    }
    found
}

#[test]
fn every_route_of_the_router_is_in_the_table() {
    let table = routes();
    let found = routes_in_source();
    assert!(
        found.len() >= 15,
        "the route scan found too little: {found:?}"
    );
    for (method, pattern) in found {
        assert!(
            table
                .iter()
                .any(|r| r.method == method && r.pattern == pattern),
            "{method} {pattern} is served but not in tests/security.rs's table: add it there"
        );
    }
}

struct Api {
    router: Router,
    brain: Arc<BrainHandle>,
    token: String,
    _dir: tempfile::TempDir,
}

/// A router with auth on and the token it generated into its data dir.
async fn api() -> Api {
    api_with(|_| {}).await
}

async fn api_with(tweak: impl FnOnce(&mut creature::config::Config)) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.require_token = true;
    tweak(&mut config);
    let brain = start_brain(&config).await.unwrap();
    let router = app(AppState::new(Arc::clone(&brain), config));
    let token = std::fs::read_to_string(dir.path().join(TOKEN_FILE))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.len(), 43, "{token}");
    Api {
        router,
        brain,
        token,
        _dir: dir,
    }
}

#[derive(Default)]
struct Call<'a> {
    bearer: Option<&'a str>,
    host: Option<&'a str>,
    origin: Option<&'a str>,
}

impl Api {
    fn request(&self, route: &Route, call: &Call<'_>) -> Request<Body> {
        let mut req = Request::builder().method(route.method).uri(route.path);
        if let Some(token) = call.bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(host) = call.host {
            req = req.header(header::HOST, host);
        }
        if let Some(origin) = call.origin {
            req = req.header(header::ORIGIN, origin);
        }
        if route.ws {
            req = req
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_VERSION, "13")
                .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
        }
        match &route.body {
            Some(body) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        }
    }

    async fn call(&self, route: &Route, call: Call<'_>) -> (StatusCode, Value) {
        let req = self.request(route, &call);
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let what = format!("{} {} -> {status}", route.method, route.path);
        assert_security_headers(resp.headers(), &what);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = resp.headers()[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1, "{what}: Retry-After {retry}");
        }
        // The event stream never ends: its status and headers are the answer.
        let streaming = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if streaming {
            return (status, Value::Null);
        }
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn task_count(&self) -> usize {
        self.brain.tasks.list().await.unwrap().len()
    }
}

fn assert_security_headers(headers: &axum::http::HeaderMap, what: &str) {
    let value = |name: header::HeaderName| {
        headers
            .get(&name)
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let csp = value(header::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    for directive in csp.split(';') {
        for source in directive.split_whitespace().skip(1) {
            assert!(
                source.starts_with('\'')
                    || ["data:", "blob:"].contains(&source)
                    || source.starts_with("ws://")
                    || source.starts_with("wss://"),
                "{what}: an outside source in the CSP: {source}"
            );
        }
    }
    assert_eq!(value(header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{what}");
    assert_eq!(value(header::REFERRER_POLICY), "no-referrer", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_token_every_closed_route_is_401_and_nothing_is_done() {
    let api = api().await;
    let before = api.task_count().await;
    for route in routes() {
        for bearer in [None, Some("wrong"), Some(&api.token[..42])] {
            let (status, body) = api
                .call(
                    &route,
                    Call {
                        bearer,
                        ..Call::default()
                    },
                )
                .await;
            let what = format!("{} {} with {bearer:?}", route.method, route.path);
            if route.open {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what}: an open route answered {status}"
                );
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
                assert_eq!(body["error"], "unauthorized", "{what}");
                assert!(body["detail"].is_string(), "{what}");
            }
        }
    }
    // An unknown route does not tell a stranger it is unknown.
    let (status, _) = api
        .call(&get("/nowhere", "/api/nowhere"), Call::default())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.task_count().await,
        before,
        "a refused request did something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_opens_every_route() {
    let api = api().await;
    for route in routes() {
        let (status, body) = api
            .call(
                &route,
                Call {
                    bearer: Some(&api.token),
                    ..Call::default()
                },
            )
            .await;
        let what = format!("{} {}: {status} {body}", route.method, route.path);
        assert!(
            status != StatusCode::UNAUTHORIZED
                && status != StatusCode::FORBIDDEN
                && status != StatusCode::TOO_MANY_REQUESTS,
            "{what}"
        );
        if route.method == "POST" && route.path == "/api/tasks" {
            assert_eq!(status, StatusCode::CREATED, "{what}");
        }
    }
    assert!(api.task_count().await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_origins_are_403_on_every_route() {
    // Many POSTs in a row here: the rate limit is another test's business.
    let api = api_with(|config| config.server.rate_limit_burst = 10_000).await;
    let token = Some(api.token.as_str());
    for route in routes() {
        let what = format!("{} {}", route.method, route.path);
        for host in ["evil.example", "evil.example:8080", "0.0.0.0:8080"] {
            let before = api.task_count().await;
            let (status, body) = api
                .call(
                    &route,
                    Call {
                        bearer: token,
                        host: Some(host),
                        ..Call::default()
                    },
                )
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{what} Host {host}");
            assert_eq!(body["error"], "forbidden_host", "{what}");
            assert_eq!(
                api.task_count().await,
                before,
                "{what} Host {host} did something"
            );
        }
        for host in ["127.0.0.1:8080", "LOCALHOST:8080", "[::1]:8080"] {
            let (status, _) = api
                .call(
                    &route,
                    Call {
                        bearer: token,
                        host: Some(host),
                        ..Call::default()
                    },
                )
                .await;
            assert_ne!(status, StatusCode::FORBIDDEN, "{what} Host {host}");
        }
        let checked = route.ws || route.method != "GET";
        for origin in ["http://evil.example", "null", "http://127.0.0.1:9999"] {
            let before = api.task_count().await;
            let (status, body) = api
                .call(
                    &route,
                    Call {
                        bearer: token,
                        host: Some("127.0.0.1:8080"),
                        origin: Some(origin),
                    },
                )
                .await;
            if checked {
                assert_eq!(status, StatusCode::FORBIDDEN, "{what} Origin {origin}");
                assert_eq!(body["error"], "forbidden_origin", "{what}");
                assert_eq!(
                    api.task_count().await,
                    before,
                    "{what} Origin {origin} did something"
                );
            } else {
                // A page may link to or load a GET; it cannot read the answer (no CORS).
                assert_ne!(status, StatusCode::FORBIDDEN, "{what} Origin {origin}");
            }
        }
        for origin in ["http://127.0.0.1:8080", "https://127.0.0.1:8080"] {
            let (status, _) = api
                .call(
                    &route,
                    Call {
                        bearer: token,
                        host: Some("127.0.0.1:8080"),
                        origin: Some(origin),
                    },
                )
                .await;
            assert_ne!(status, StatusCode::FORBIDDEN, "{what} Origin {origin}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_flood_on_the_router_is_cut_at_the_burst_with_nothing_half_done() {
    let api = api().await;
    let before = api.task_count().await;
    let route = Route {
        method: "POST",
        body: Some(json!({"action": "bring", "object": "cup"})),
        ..get("/api/tasks", "/api/tasks")
    };
    let (mut created, mut limited) = (0, 0);
    for _ in 0..100 {
        let (status, body) = api
            .call(
                &route,
                Call {
                    bearer: Some(&api.token),
                    ..Call::default()
                },
            )
            .await;
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"], "rate_limited");
                limited += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(limited > 0, "100 POSTs at once were all accepted");
    assert!(created >= 20, "the burst (20) was not allowed: {created}");
    assert_eq!(api.task_count().await - before, created);
    // GETs are not limited.
    let (status, _) = api
        .call(
            &get("/api/state", "/api/state"),
            Call {
                bearer: Some(&api.token),
                ..Call::default()
            },
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

// ---- On a real socket ----------------------------------------------------------------

async fn start_locked() -> (TestBrain, String) {
    let brain = start_with(|config| config.server.require_token = true).await;
    let token = std::fs::read_to_string(brain.dir.path().join(TOKEN_FILE))
        .unwrap()
        .trim()
        .to_string();
    (brain, token)
}

enum Presented<'a> {
    None,
    Bearer(&'a str),
    Subprotocol(&'a str),
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(
    brain: &TestBrain,
    path: &str,
    presented: Presented<'_>,
    origin: Option<&str>,
) -> Result<(Socket, Option<String>), WsError> {
    let mut req = brain.ws_url(path).into_client_request().unwrap();
    let headers = req.headers_mut();
    match presented {
        Presented::None => {}
        Presented::Bearer(t) => {
            headers.insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        Presented::Subprotocol(t) => {
            headers.insert(
                "Sec-WebSocket-Protocol",
                format!("creature, token.{t}").parse().unwrap(),
            );
        }
    }
    if let Some(origin) = origin {
        headers.insert("Origin", origin.parse().unwrap());
    }
    let (socket, resp) = tokio_tungstenite::connect_async(req).await?;
    let protocol = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((socket, protocol))
}

fn refused_with(result: Result<(Socket, Option<String>), WsError>, status: u16, what: &str) {
    match result {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), status, "{what}"),
        Err(other) => panic!("{what}: expected {status}, got {other}"),
        Ok(_) => panic!("{what}: expected {status}, but the socket opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_take_the_token_as_bearer_or_subprotocol_and_refuse_everyone_else() {
    let (brain, token) = start_locked().await;
    let before = brain.service.brain().tasks.list().await.unwrap().len();
    let own = format!("http://{}", brain.service.addr());
    for path in ["/ws/face", "/ws/audio", "/ws/body"] {
        refused_with(
            ws_connect(&brain, path, Presented::None, None).await,
            401,
            &format!("{path} without a token"),
        );
        refused_with(
            ws_connect(&brain, path, Presented::Bearer("wrong"), None).await,
            401,
            &format!("{path} with a wrong token"),
        );
        refused_with(
            ws_connect(&brain, path, Presented::Subprotocol("wrong"), None).await,
            401,
            &format!("{path} with a wrong subprotocol token"),
        );
        for origin in ["http://evil.example", "null"] {
            refused_with(
                ws_connect(&brain, path, Presented::Subprotocol(&token), Some(origin)).await,
                403,
                &format!("{path} from {origin}"),
            );
        }
        // A browser: the token as a subprotocol, its own origin; the server picks `creature`.
        let (mut socket, protocol) =
            ws_connect(&brain, path, Presented::Subprotocol(&token), Some(&own))
                .await
                .unwrap_or_else(|e| panic!("{path} with the subprotocol token: {e}"));
        assert_eq!(protocol.as_deref(), Some("creature"), "{path}");
        socket.close(None).await.ok();
        drop(socket);
        // A program: the bearer header.
        let (mut socket, _) = ws_connect(&brain, path, Presented::Bearer(&token), None)
            .await
            .unwrap_or_else(|e| panic!("{path} with the bearer token: {e}"));
        socket.send(Message::Close(None)).await.ok();
    }
    // With auth on, the development body token opens nothing.
    refused_with(
        ws_connect(&brain, "/ws/body", Presented::Bearer(DEV_BODY_TOKEN), None).await,
        401,
        "/ws/body with the development token",
    );
    assert_eq!(
        brain.service.brain().tasks.list().await.unwrap().len(),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_body_token_opens_the_body_socket_only() {
    let brain = start_with(|config| {
        config.server.require_token = true;
        config.body.token = "body-secret-for-this-test".into();
    })
    .await;
    let (mut body, _) = ws_connect(
        &brain,
        "/ws/body",
        Presented::Bearer("body-secret-for-this-test"),
        None,
    )
    .await
    .unwrap();
    body.send(Message::Close(None)).await.ok();
    refused_with(
        ws_connect(
            &brain,
            "/ws/face",
            Presented::Bearer("body-secret-for-this-test"),
            None,
        )
        .await,
        401,
        "/ws/face with the body token",
    );
    let resp = brain
        .http
        .get(format!("{}/api/state", brain.url))
        .bearer_auth("body-secret-for-this-test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_the_token_opens_and_strangers_get_401_403() {
    let (brain, token) = start_locked().await;
    let http = &brain.http;
    let url = |path: &str| format!("{}{path}", brain.url);
    let resp = http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_security_headers(resp.headers(), "/healthz");
    let resp = http.get(url("/face")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http.get(url("/api/state")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_security_headers(resp.headers(), "401");
    let resp = http
        .get(url("/api/state"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http
        .get(url("/healthz"))
        .header("Host", "rebound.evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "forbidden_host");
    let resp = http
        .post(url("/api/tasks"))
        .bearer_auth(&token)
        .header("Origin", "http://evil.example")
        .json(&json!({"action": "bring", "object": "knife"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(brain.service.brain().tasks.list().await.unwrap().is_empty());
    let resp = http
        .post(url("/api/tasks"))
        .bearer_auth(&token)
        .header("Origin", format!("http://{}", brain.service.addr()))
        .json(&json!({"action": "bring", "object": "cup"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_flood_over_the_network_gets_429s_and_exactly_the_accepted_tasks() {
    let (brain, token) = start_locked().await;
    let (mut created, mut limited) = (0usize, 0usize);
    for _ in 0..100 {
        let resp = brain
            .http
            .post(format!("{}/api/tasks", brain.url))
            .bearer_auth(&token)
            .json(&json!({"action": "bring", "object": "cup"}))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            201 => created += 1,
            429 => {
                let retry: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"], "rate_limited");
                limited += 1;
            }
            other => panic!("{other}: {}", resp.text().await.unwrap()),
        }
    }
    assert!(limited > 0, "100 POSTs at once were all accepted");
    assert!(created >= 20, "the burst was not allowed: {created}");
    assert_eq!(
        brain.service.brain().tasks.list().await.unwrap().len(),
        created,
        "tasks in the ledger vs 201s"
    );
    // The rate comes back: a second later a POST is accepted again.
    common::eventually(Duration::from_secs(3), "the bucket to refill", || async {
        let resp = brain
            .http
            .post(format!("{}/api/tasks", brain.url))
            .bearer_auth(&token)
            .json(&json!({"action": "bring", "object": "cup"}))
            .send()
            .await
            .unwrap();
        (resp.status() == 201).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_plain_loopback_no_token_is_asked_and_the_host_is_still_checked() {
    let brain = start().await;
    let (status, _) = brain.get("/api/state").await;
    assert_eq!(status, 200);
    let port = brain.service.addr().port();
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let resp = brain
            .http
            .get(format!("{}/api/state", brain.url))
            .header("Host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
    }
    let resp = brain
        .http
        .get(format!("{}/api/state", brain.url))
        .header("Host", format!("attacker.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = brain
        .http
        .post(format!("{}/api/tasks", brain.url))
        .header("Origin", "http://attacker.example")
        .json(&json!({"action": "bring", "object": "knife"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    refused_with(
        ws_connect(
            &brain,
            "/ws/audio",
            Presented::None,
            Some("http://attacker.example"),
        )
        .await,
        403,
        "/ws/audio from another site",
    );
    assert!(brain.service.brain().tasks.list().await.unwrap().is_empty());
}
