//! Connections that cannot lock anyone out, on real sockets: the audio and body seats go to
//! the newest client (the old one is closed with 4001), silent sockets are closed when idle
//! (4002), the face caps close the oldest face (4003), and a phone slow to take the voice
//! never holds up its microphone.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::{TestBrain, eventually, start_with};
use creature::config::{Config, DEV_BODY_TOKEN};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type RawSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Pings every 0.2 s; `idle` and `send` as given.
fn timing(config: &mut Config, idle: f64, send: f64) {
    config.server.ws_ping_interval_secs = 0.2;
    config.server.ws_idle_timeout_secs = idle;
    config.server.ws_send_timeout_secs = send;
}

async fn connect(brain: &TestBrain, path: &str) -> Socket {
    let mut req = brain.ws_url(path).into_client_request().unwrap();
    if path == "/ws/body" {
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {DEV_BODY_TOKEN}").parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// A websocket from a chosen local address (the whole of 127/8 is loopback).
async fn connect_from(brain: &TestBrain, path: &str, local: [u8; 4]) -> RawSocket {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((local, 0)))
        .expect("bind a loopback address");
    let tcp = socket.connect(brain.service.addr()).await.unwrap();
    tokio_tungstenite::client_async(brain.ws_url(path), tcp)
        .await
        .unwrap()
        .0
}

/// The next text message, as JSON (pings and binary frames skipped).
async fn next_json<S>(socket: &mut S) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, socket.next())
            .await
            .expect("a message within 5 s")
            .expect("the socket is open")
            .expect("a message");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Read (and skip) whatever is queued until the server's close frame: its code and reason.
async fn close_of<S>(socket: &mut S, within: Duration) -> (u16, String)
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.next()).await {
            Err(_) => panic!("no close frame within {within:?}"),
            Ok(other) => match other {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    panic!("the socket ended without a close reason: {other:?}")
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Whether a socket is still open after `wait`, reading (and so answering pings) meanwhile.
async fn still_open_after<S>(socket: &mut S, wait: Duration) -> bool
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return true,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return false,
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn state(brain: &TestBrain) -> Value {
    brain.get("/api/state").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_holding_the_audio_seat_is_replaced_by_a_new_client_within_a_second() {
    // Idle timeout far away: the new client must win by replacement, not by waiting.
    let brain = start_with(|c| timing(c, 30.0, 1.0)).await;
    let mut old = connect(&brain, "/ws/audio").await;
    assert_eq!(next_json(&mut old).await["type"], "ready");
    // The old client now says nothing and reads nothing.

    let started = Instant::now();
    let mut new = connect(&brain, "/ws/audio").await;
    let ready = next_json(&mut new).await;
    let took = started.elapsed();
    assert_eq!(ready["type"], "ready", "{ready}");
    assert!(
        took < Duration::from_secs(1),
        "the new client waited {took:?}"
    );

    let (code, reason) = close_of(&mut old, Duration::from_secs(5)).await;
    assert_eq!(
        (code, reason.as_str()),
        (4001, "replaced by a newer connection")
    );

    // The new client's microphone reaches the brain.
    let before = brain.service.brain().inbox().received();
    new.send(Message::binary(vec![0u8; 3840])).await.unwrap();
    eventually(Duration::from_secs(2), "the new client's audio", || async {
        (brain.service.brain().inbox().received() >= before + 1920).then_some(())
    })
    .await;
    assert_eq!(state(&brain).await["audio"]["session_open"], true);
    drop(new);
    eventually(Duration::from_secs(3), "the seat to be free", || async {
        (state(&brain).await["audio"]["session_open"] == false).then_some(())
    })
    .await;
    brain.service.shutdown().await;
}

/// The upgrade request of a body that then never reads a byte (nor answers a ping).
async fn dead_wifi_body(brain: &TestBrain) -> TcpStream {
    let addr = brain.service.addr();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /ws/body HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {DEV_BODY_TOKEN}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

async fn tool_call_ids(body: &mut Socket, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let msg = next_json(body).await;
        if msg["type"] == "tool_call" {
            ids.push(msg["id"].as_str().unwrap().to_string());
        }
    }
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_reading_is_replaced_when_the_robot_reconnects_and_gets_its_tasks_again()
{
    let brain = start_with(|c| timing(c, 30.0, 1.0)).await;
    let mut ids = Vec::new();
    for object in ["cup", "ball"] {
        let (s, t) = brain
            .post("/api/tasks", json!({"action": "bring", "object": object}))
            .await;
        assert_eq!(s, 201, "{t}");
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    ids.sort();

    // A body whose Wi-Fi died right after it connected: no FIN, no reads, no pongs.
    let mut dead = dead_wifi_body(&brain).await;
    eventually(Duration::from_secs(3), "the dead body attached", || async {
        let s = state(&brain).await;
        (s["body"]["attached"] == true && s["body"]["sessions"] == 1).then_some(())
    })
    .await;

    // The robot reconnects: it takes the seat at once and gets both tasks.
    let mut second = connect(&brain, "/ws/body").await;
    assert_eq!(next_json(&mut second).await["type"], "hello");
    assert_eq!(tool_call_ids(&mut second, 2).await, ids);
    // ...and then it, too, goes silent: the robot reconnects once more.
    let mut third = connect(&brain, "/ws/body").await;
    let hello = next_json(&mut third).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(
        tool_call_ids(&mut third, 2).await,
        ids,
        "every unfinished task is sent again"
    );
    let (code, reason) = close_of(&mut second, Duration::from_secs(5)).await;
    assert_eq!(
        (code, reason.as_str()),
        (4001, "replaced by a newer connection")
    );

    // The new body's reports count.
    let msg = json!({"type": "status", "id": ids[0], "state": "succeeded"});
    third.send(Message::text(msg.to_string())).await.unwrap();
    eventually(Duration::from_secs(3), "the report applied", || async {
        let (_, t) = brain.get(&format!("/api/tasks/{}", ids[0])).await;
        (t["state"] == "succeeded").then_some(())
    })
    .await;
    let (_, t) = brain.get(&format!("/api/tasks/{}", ids[1])).await;
    assert_eq!(t["state"], "dispatched", "{t}");
    let s = state(&brain).await;
    assert_eq!(s["body"]["attached"], true);
    assert_eq!(s["body"]["sessions"], 3);

    // The dead body's connection was let go (its close frame sits unread in its buffer).
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), dead.read_to_end(&mut seen)).await;
    assert!(ended.is_ok(), "the dead body's connection is still held");
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 101"),
        "{seen:?}"
    );
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_body_is_closed_when_idle_and_the_seat_freed() {
    let brain = start_with(|c| timing(c, 0.6, 1.0)).await;
    let mut body = connect(&brain, "/ws/body").await;
    assert_eq!(next_json(&mut body).await["type"], "hello");
    // Not read: no pongs go back.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (code, reason) = close_of(&mut body, Duration::from_secs(3)).await;
    assert_eq!((code, reason.as_str()), (4002, "idle"));
    eventually(Duration::from_secs(3), "the body detached", || async {
        (state(&brain).await["body"]["attached"] == false).then_some(())
    })
    .await;
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_face_sockets_are_closed_and_live_ones_stay() {
    let brain = start_with(|c| timing(c, 0.6, 1.0)).await;
    let mut silent = connect(&brain, "/ws/face").await;
    next_json(&mut silent).await;
    let mut live = connect(&brain, "/ws/face").await;
    next_json(&mut live).await;
    // The live phone keeps reading, which answers the pings; the silent one does not.
    assert!(
        still_open_after(&mut live, Duration::from_millis(1500)).await,
        "a face that answers pings is kept"
    );
    let (code, reason) = close_of(&mut silent, Duration::from_secs(3)).await;
    assert_eq!((code, reason.as_str()), (4002, "idle"));
    eventually(Duration::from_secs(3), "one face socket left", || async {
        (state(&brain).await["face"]["sockets"] == 1).then_some(())
    })
    .await;
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_total_face_cap_the_oldest_face_is_closed_to_seat_the_new_one() {
    let brain = start_with(|c| {
        timing(c, 30.0, 1.0);
        c.server.max_face_clients = 3;
    })
    .await;
    let mut faces = Vec::new();
    for _ in 0..3 {
        let mut face = connect(&brain, "/ws/face").await;
        next_json(&mut face).await;
        faces.push(face);
    }
    let mut newest = connect(&brain, "/ws/face").await;
    next_json(&mut newest).await;
    let (code, reason) = close_of(&mut faces[0], Duration::from_secs(3)).await;
    assert_eq!((code, reason.as_str()), (4003, "too many faces"));
    for face in &mut faces[1..] {
        assert!(still_open_after(face, Duration::from_millis(300)).await);
    }
    assert!(still_open_after(&mut newest, Duration::from_millis(300)).await);
    assert_eq!(state(&brain).await["face"]["sockets"], 3);
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_per_address_cap_the_oldest_face_of_that_address_is_closed() {
    let brain = start_with(|c| {
        timing(c, 30.0, 1.0);
        c.server.max_face_clients_per_addr = 2;
    })
    .await;
    let mut mine = Vec::new();
    for _ in 0..2 {
        let mut face = connect_from(&brain, "/ws/face", [127, 0, 0, 1]).await;
        next_json(&mut face).await;
        mine.push(face);
    }
    let mut other = connect_from(&brain, "/ws/face", [127, 0, 0, 2]).await;
    next_json(&mut other).await;
    let mut third = connect_from(&brain, "/ws/face", [127, 0, 0, 1]).await;
    next_json(&mut third).await;
    let (code, reason) = close_of(&mut mine[0], Duration::from_secs(3)).await;
    assert_eq!((code, reason.as_str()), (4003, "too many faces"));
    assert!(still_open_after(&mut mine[1], Duration::from_millis(300)).await);
    assert!(
        still_open_after(&mut other, Duration::from_millis(300)).await,
        "another address keeps its face"
    );
    assert!(still_open_after(&mut third, Duration::from_millis(300)).await);
    assert_eq!(state(&brain).await["face"]["sockets"], 3);
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_slow_to_take_the_voice_still_reaches_the_brain() {
    let brain = start_with(|c| timing(c, 30.0, 5.0)).await;
    // A small receive buffer, read slowly: the voice backs up on the brain's side.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(brain.service.addr()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(brain.ws_url("/ws/audio"), tcp)
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    assert_eq!(next_json(&mut rx).await["type"], "ready");
    let slow_reader = tokio::spawn(async move {
        let mut read = 0u64;
        while let Some(Ok(_)) = rx.next().await {
            read += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        read
    });
    brain
        .post("/api/hear", json!({"text": "hello there"}))
        .await;

    // Bad messages too: their replies queue up behind the voice and are never read in time.
    for _ in 0..500 {
        tx.send(Message::text("{not json")).await.unwrap();
    }
    // Three seconds of microphone at the real pace; every half second more has arrived.
    let mut last = brain.service.brain().inbox().received();
    let mut window = Instant::now();
    let mut frames = tokio::time::interval(Duration::from_millis(80));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        frames.tick().await;
        tx.send(Message::binary(vec![0u8; 3840])).await.unwrap();
        if window.elapsed() >= Duration::from_millis(500) {
            let (_, s) = brain.get("/api/state").await;
            let now = s["audio"]["received_samples"].as_u64().unwrap();
            assert!(
                now >= last + 3 * 1920,
                "the uplink stalled: {last} -> {now} in {:?}",
                window.elapsed()
            );
            last = now;
            window = Instant::now();
        }
    }
    assert_eq!(state(&brain).await["audio"]["session_open"], true);
    slow_reader.abort();
    brain.service.shutdown().await;
}
