//! The `moshi-remote` backend against an in-test Moshi server on 127.0.0.1 that speaks the
//! `/api/chat` wire with real Ogg/Opus both ways (its own `ogg` + `opus` code, independent of
//! the backend's): audio and text flow, the sampling settings reach the query string, the
//! link survives a dropped connection, every kind of malformed message, a busy server and a
//! server that is down, and the whole service reports it.
#![cfg(feature = "opus")]

mod common;

use std::collections::VecDeque;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use creature::config::Backend;
use creature::voice::remote::{RemoteConfig, RemoteVoice};
use creature_actors::{FRAME_SAMPLES, VoiceModel};
use futures::{SinkExt, StreamExt};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const RATE: f32 = 24_000.0;
/// What the test server's creature says, one piece every third frame.
const PIECES: [&str; 5] = [" hello", " there", " little", " creature", "."];

// ---------------------------------------------------------------------------------------
// The test server
// ---------------------------------------------------------------------------------------

/// What the server does with one connection.
#[derive(Debug, Clone)]
enum Plan {
    /// Metadata, handshake, then answer every audio message with an 80 ms tone frame (two
    /// Ogg pages of one 40 ms packet) and every third one with a text piece; with
    /// `drop_after`, vanish (no close frame) after that many frames.
    Talk { drop_after: Option<usize> },
    /// Handshake, then this message.
    Garbage(Message),
}

#[derive(Default)]
struct ServerState {
    /// Plans for the next connections, in order; then `Talk` forever.
    plans: Mutex<VecDeque<Plan>>,
    /// Model a real Kyutai server: a second session while one is live is refused.
    refuse_concurrent: bool,
    active: AtomicUsize,
    connections: AtomicUsize,
    queries: Mutex<Vec<String>>,
    /// The raw Ogg bytes each talking session received from the client.
    received: Mutex<Vec<Vec<u8>>>,
}

struct TestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start(plans: Vec<Plan>, refuse_concurrent: bool) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState {
            plans: Mutex::new(plans.into()),
            refuse_concurrent,
            ..Default::default()
        });
        let s = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(serve_connection(stream, Arc::clone(&s)));
            }
        });
        TestServer { addr, state, task }
    }

    fn url(&self) -> String {
        format!("ws://{}/api/chat", self.addr)
    }

    fn queries(&self) -> Vec<String> {
        self.state.queries.lock().unwrap().clone()
    }

    fn received(&self, session: usize) -> Vec<u8> {
        self.state
            .received
            .lock()
            .unwrap()
            .get(session)
            .cloned()
            .unwrap_or_default()
    }
}

struct ActiveGuard(Arc<ServerState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<ServerState>) {
    let query = Arc::new(Mutex::new(String::new()));
    let q = Arc::clone(&query);
    // The signature is tungstenite's: its error type is a whole HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| {
        *q.lock().unwrap() = req.uri().query().unwrap_or_default().to_string();
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    state.connections.fetch_add(1, Ordering::SeqCst);
    state
        .queries
        .lock()
        .unwrap()
        .push(query.lock().unwrap().clone());

    if state.active.fetch_add(1, Ordering::SeqCst) > 0 && state.refuse_concurrent {
        state.active.fetch_sub(1, Ordering::SeqCst);
        let _ = ws
            .send(Message::binary(
                b"\x05busy: this server serves one session at a time".to_vec(),
            ))
            .await;
        let _ = ws.close(None).await;
        return;
    }
    let _guard = ActiveGuard(Arc::clone(&state));
    let plan = state
        .plans
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Plan::Talk { drop_after: None });
    match plan {
        Plan::Garbage(message) => {
            ws.send(Message::binary(vec![0u8])).await.unwrap();
            let _ = ws.send(message).await;
            // Wait for the client to hang up.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while ws.next().await.is_some() {}
            })
            .await;
        }
        Plan::Talk { drop_after } => talk(ws, &state, drop_after).await,
    }
}

async fn talk(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    state: &ServerState,
    drop_after: Option<usize>,
) {
    // As Kyutai's Rust server does: metadata first, then the handshake (8 bytes of versions).
    let metadata = br#"{"text_temperature":0.7,"instance_name":"test"}"#;
    ws.send(Message::binary([&[4u8][..], metadata].concat()))
        .await
        .unwrap();
    ws.send(Message::binary(vec![0u8; 9])).await.unwrap();
    let session = {
        let mut received = state.received.lock().unwrap();
        received.push(Vec::new());
        received.len() - 1
    };
    let mut agent = AgentEncoder::new();
    let mut frames = 0usize;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
    {
        let Message::Binary(bytes) = message else {
            continue;
        };
        if bytes.first() != Some(&1) {
            continue;
        }
        state.received.lock().unwrap()[session].extend_from_slice(&bytes[1..]);
        frames += 1;
        if ws
            .send(Message::binary([&[1u8][..], &agent.frame()].concat()))
            .await
            .is_err()
        {
            return;
        }
        if frames % 3 == 0 {
            let piece = PIECES[(frames / 3 - 1) % PIECES.len()];
            if ws
                .send(Message::binary([&[2u8][..], piece.as_bytes()].concat()))
                .await
                .is_err()
            {
                return;
            }
        }
        if drop_after == Some(frames) {
            // Vanish without a close frame, as a crashed server would.
            return;
        }
    }
}

/// The server's voice: a 660 Hz tone, as Ogg/Opus pages.
struct AgentEncoder {
    encoder: opus::Encoder,
    pages: PacketWriter<'static, Vec<u8>>,
    phase: usize,
    granule: u64,
}

const SERVER_SERIAL: u32 = 0x5EED;

impl AgentEncoder {
    fn new() -> Self {
        let encoder =
            opus::Encoder::new(24_000, opus::Channels::Mono, opus::Application::Audio).unwrap();
        let mut pages = PacketWriter::new(Vec::new());
        pages
            .write_packet(opus_head(), SERVER_SERIAL, PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        pages
            .write_packet(opus_tags(), SERVER_SERIAL, PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        AgentEncoder {
            encoder,
            pages,
            phase: 0,
            granule: 0,
        }
    }

    /// One 80 ms frame: two pages of one 40 ms packet each (the headers before the first).
    fn frame(&mut self) -> Vec<u8> {
        for _ in 0..2 {
            let pcm = tone(660.0, self.phase, 960);
            self.phase += 960;
            let packet = self.encoder.encode_vec_float(&pcm, 4000).unwrap();
            self.granule += 1920;
            self.pages
                .write_packet(
                    packet,
                    SERVER_SERIAL,
                    PacketWriteEndInfo::EndPage,
                    self.granule,
                )
                .unwrap();
        }
        std::mem::take(self.pages.inner_mut())
    }
}

fn opus_head() -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.extend_from_slice(&[1, 1]);
    h.extend_from_slice(&3840u16.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&[0, 0, 0]);
    h
}

fn opus_tags() -> Vec<u8> {
    let mut t = b"OpusTags".to_vec();
    t.extend_from_slice(&4u32.to_le_bytes());
    t.extend_from_slice(b"test");
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

/// Decode what a client sent: whether OpusHead and OpusTags came first, and the PCM.
fn decode_client_audio(bytes: &[u8]) -> (bool, Vec<f32>) {
    let mut reader = ogg::reading::PacketReader::new(Cursor::new(bytes.to_vec()));
    let mut decoder = opus::Decoder::new(24_000, opus::Channels::Mono).unwrap();
    let mut packets = Vec::new();
    while let Ok(Some(packet)) = reader.read_packet() {
        packets.push(packet.data);
    }
    let headers_first = packets.len() >= 2
        && packets[0].starts_with(b"OpusHead")
        && packets[1].starts_with(b"OpusTags");
    let mut pcm = Vec::new();
    let mut buf = vec![0f32; 5760];
    for packet in packets.iter().skip(2) {
        let n = decoder.decode_float(packet, &mut buf, false).unwrap();
        pcm.extend_from_slice(&buf[..n]);
    }
    (headers_first, pcm)
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn tone(freq: f32, start: usize, len: usize) -> Vec<f32> {
    (start..start + len)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * freq * i as f32 / RATE).sin())
        .collect()
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

fn zero_crossing_hz(x: &[f32]) -> f32 {
    let crossings = x
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    crossings as f32 / 2.0 / (x.len() as f32 / RATE)
}

/// Fast settings for tests: short backoff and timeouts.
fn section(url: &str) -> RemoteConfig {
    RemoteConfig {
        url: url.to_string(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(80),
        connect_timeout: Duration::from_millis(2_000),
        idle_timeout: Duration::from_millis(3_000),
        ..RemoteConfig::default()
    }
}

fn start(config: &RemoteConfig) -> RemoteVoice {
    RemoteVoice::start(config.clone()).unwrap()
}

/// Drives a backend like the voice loop would (faster than real time), recording what
/// comes back and how long each step took.
struct Driver {
    voice: RemoteVoice,
    phase: usize,
    steps: usize,
    /// Steps slower than 5 ms, and the slowest.
    slow_steps: usize,
    slowest: Duration,
    loud_frames: usize,
    text: String,
}

impl Driver {
    fn new(voice: RemoteVoice) -> Self {
        Driver {
            voice,
            phase: 0,
            steps: 0,
            slow_steps: 0,
            slowest: Duration::ZERO,
            loud_frames: 0,
            text: String::new(),
        }
    }

    /// One step with 80 ms of a 440 Hz tone; returns the agent frame's RMS.
    fn step(&mut self) -> f32 {
        let user = tone(440.0, self.phase, FRAME_SAMPLES);
        self.phase += FRAME_SAMPLES;
        let started = Instant::now();
        let out = self.voice.step(&user).unwrap();
        let took = started.elapsed();
        self.steps += 1;
        self.slowest = self.slowest.max(took);
        if took > Duration::from_millis(5) {
            self.slow_steps += 1;
        }
        assert_eq!(out.agent.len(), FRAME_SAMPLES);
        if let Some(piece) = out.text {
            self.text.push_str(&piece);
        }
        let level = rms(&out.agent);
        if level > 0.05 {
            self.loud_frames += 1;
        }
        level
    }

    fn status(&self) -> Value {
        self.voice.status()
    }

    /// Step every few milliseconds until `done` holds, or panic after `limit`.
    async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&mut Driver) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            self.step();
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; status {}",
                self.status()
            );
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
    }

    /// Steps never wait on the network: a rare scheduler hiccup on a loaded machine is
    /// tolerated, blocking is not.
    fn assert_steps_never_blocked(&self) {
        assert!(
            self.slowest < Duration::from_millis(25),
            "a step took {:?}",
            self.slowest
        );
        assert!(
            self.slow_steps * 50 <= self.steps,
            "{} of {} steps took over 5 ms",
            self.slow_steps,
            self.steps
        );
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_text_flow_both_ways_as_ogg_opus() {
    let server = TestServer::start(vec![], false).await;
    let mut s = section(&server.url());
    s.text_seed = Some(11);
    s.audio_seed = Some(12);
    s.text_topk = 30;
    let mut d = Driver::new(start(&s));

    d.until(Duration::from_secs(8), "agent audio and text", |d| {
        d.loud_frames >= 6 && d.text.contains(" hello there little")
    })
    .await;
    d.until(
        Duration::from_secs(5),
        "the server to hear a second of audio",
        |_| decode_client_audio(&server.received(0)).1.len() >= 24_000,
    )
    .await;

    // Upstream: real Ogg/Opus, headers first, carrying the tone the loop was given.
    let (headers_first, pcm) = decode_client_audio(&server.received(0));
    assert!(
        headers_first,
        "the first audio message carries OpusHead and OpusTags"
    );
    let steady = &pcm[4_800..];
    let level = rms(steady);
    assert!(
        (0.15..0.3).contains(&level),
        "decoded user rms {level} (sent 0.212)"
    );
    let hz = zero_crossing_hz(steady);
    assert!(
        (410.0..470.0).contains(&hz),
        "decoded user tone at {hz} Hz (sent 440)"
    );

    // The sampling settings travel in the query string, under the servers' names.
    let query = &server.queries()[0];
    for param in [
        "text_temperature=0.7",
        "text_topk=30",
        "audio_temperature=0.8",
        "audio_topk=250",
        "pad_mult=0",
        "repetition_penalty_context=64",
        "repetition_penalty=1",
        "text_seed=11",
        "audio_seed=12",
    ] {
        assert!(
            query.split('&').any(|kv| kv == param),
            "{param} missing from {query}"
        );
    }

    let status = d.status();
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["state"], "connected");
    assert_eq!(status["server"], server.url());
    assert_eq!(status["malformed_messages"], 0);
    assert_eq!(
        status["server_metadata"]["instance_name"], "test",
        "{status}"
    );
    assert!(status["frames_sent"].as_u64().unwrap() >= 12, "{status}");
    assert!(status["frames_played"].as_u64().unwrap() >= 6, "{status}");
    d.assert_steps_never_blocked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_means_silence_then_a_reconnect() {
    let server = TestServer::start(
        vec![Plan::Talk {
            drop_after: Some(8),
        }],
        false,
    )
    .await;
    let mut s = section(&server.url());
    // Long enough to see the gap.
    s.backoff_min = Duration::from_millis(300);
    s.backoff_max = Duration::from_millis(600);
    let mut d = Driver::new(start(&s));

    d.until(
        Duration::from_secs(5),
        "the first session to play audio",
        |d| d.loud_frames >= 2,
    )
    .await;
    d.until(
        Duration::from_secs(5),
        "the dropped connection to be noticed",
        |d| d.status()["connected"] == false,
    )
    .await;
    let status = d.status();
    assert!(
        matches!(status["state"].as_str(), Some("backoff" | "connecting")),
        "{status}"
    );
    assert!(status["last_error"].is_string(), "{status}");

    // While disconnected: silence, at once.
    let mut silent_steps = 0;
    d.until(Duration::from_secs(5), "a reconnect", |d| {
        if d.status()["connected"] == true {
            return true;
        }
        silent_steps += 1;
        false
    })
    .await;
    assert!(
        silent_steps >= 3,
        "the backoff gap lasted {silent_steps} steps"
    );
    let loud_before = d.loud_frames;
    d.until(Duration::from_secs(5), "audio from the new session", |d| {
        d.loud_frames > loud_before + 2
    })
    .await;

    let status = d.status();
    assert_eq!(status["reconnects"], 1, "{status}");
    assert_eq!(status["disconnects"], 1, "{status}");
    assert_eq!(status["malformed_messages"], 0, "{status}");
    assert!(server.state.connections.load(Ordering::SeqCst) >= 2);
    // The new session started a new Ogg stream: headers first again.
    let (headers_first, _) = decode_client_audio(&server.received(1));
    assert!(headers_first);
    d.assert_steps_never_blocked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_counted_reset_the_connection_and_it_recovers() {
    // Valid headers, then a page whose CRC no longer matches.
    let mut good = AgentEncoder::new();
    let mut bad_crc = good.frame();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x5A;
    // Valid headers, then a packet libopus refuses (63 frames of 20 ms).
    let mut pw = PacketWriter::new(Vec::new());
    pw.write_packet(opus_head(), 9, PacketWriteEndInfo::EndPage, 0)
        .unwrap();
    pw.write_packet(opus_tags(), 9, PacketWriteEndInfo::EndPage, 0)
        .unwrap();
    pw.write_packet(vec![0xFF, 0xFF], 9, PacketWriteEndInfo::EndPage, 960)
        .unwrap();
    let bad_opus = pw.into_inner();

    let garbage = vec![
        Message::binary(Vec::<u8>::new()),
        Message::binary(vec![9u8, 1, 2, 3]),
        Message::binary(
            [
                &[1u8][..],
                b"this is not an ogg page at all, not even close",
            ]
            .concat(),
        ),
        Message::binary([&[1u8][..], &bad_crc].concat()),
        Message::binary([&[1u8][..], &bad_opus].concat()),
        Message::binary(vec![2u8, 0xFF, 0xFE, 0xFD]),
        Message::text("a text frame"),
        Message::binary([&[4u8][..], b"{not json"].concat()),
    ];
    let malformed = garbage.len() as u64;
    let mut plans: Vec<Plan> = garbage.into_iter().map(Plan::Garbage).collect();
    plans.push(Plan::Garbage(Message::binary(
        b"\x05model crashed".to_vec(),
    )));
    let server = TestServer::start(plans, false).await;
    let mut d = Driver::new(start(&section(&server.url())));

    d.until(Duration::from_secs(8), "recovery after the garbage", |d| {
        d.loud_frames >= 3
    })
    .await;
    let status = d.status();
    assert_eq!(status["malformed_messages"], malformed, "{status}");
    assert_eq!(status["server_errors"], 1, "{status}");
    assert_eq!(status["last_server_error"], "model crashed", "{status}");
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["sessions"], malformed + 2, "{status}");
    assert_eq!(
        server.state.connections.load(Ordering::SeqCst) as u64,
        malformed + 2
    );
    d.assert_steps_never_blocked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_refuses_a_second_session_and_the_client_says_so() {
    let server = TestServer::start(vec![], true).await;
    let mut first = Driver::new(start(&section(&server.url())));
    first
        .until(Duration::from_secs(5), "the first session", |d| {
            d.status()["connected"] == true
        })
        .await;

    let mut s = section(&server.url());
    s.backoff_min = Duration::from_millis(50);
    s.backoff_max = Duration::from_millis(100);
    let mut second = Driver::new(start(&s));
    second
        .until(Duration::from_secs(5), "the refusal", |d| {
            d.status()["server_errors"].as_u64() >= Some(1)
        })
        .await;
    let status = second.status();
    assert_eq!(status["connected"], false, "{status}");
    assert_eq!(status["sessions"], 0, "{status}");
    assert!(
        status["last_server_error"]
            .as_str()
            .unwrap()
            .contains("one session at a time"),
        "{status}"
    );
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("server reported an error"),
        "{status}"
    );
    for _ in 0..5 {
        assert_eq!(second.step(), 0.0, "a refused client is silent");
    }
    first.step();
    assert_eq!(
        first.status()["connected"],
        true,
        "the first session is not disturbed"
    );

    // The first client leaves: the second gets in by itself.
    drop(first);
    second
        .until(Duration::from_secs(5), "the second client's turn", |d| {
            d.status()["connected"] == true
        })
        .await;
    second.assert_steps_never_blocked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_leaves_the_creature_silent_and_retrying() {
    // A port with nobody listening.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut d = Driver::new(start(&section(&format!("ws://{addr}/api/chat"))));
    d.until(Duration::from_secs(5), "a few failed attempts", |d| {
        d.status()["connect_failures"].as_u64() >= Some(3)
    })
    .await;
    for _ in 0..10 {
        assert_eq!(d.step(), 0.0);
    }
    let status = d.status();
    assert_eq!(status["connected"], false);
    assert!(
        matches!(status["state"].as_str(), Some("backoff" | "connecting")),
        "{status}"
    );
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{status}"
    );
    assert_eq!(
        status["audio_in_dropped"], 0,
        "nothing is queued for a server that is not there"
    );
    d.assert_steps_never_blocked();

    // Dropping the backend stops its thread promptly.
    let started = Instant::now();
    drop(d);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_reports_the_remote_backend_and_its_pieces_reach_the_monologue() {
    let server = TestServer::start(vec![], false).await;
    let url = server.url();
    let brain = common::start_with(|c| {
        c.voice.backend = Backend::MoshiRemote;
        c.voice.remote = section(&url);
    })
    .await;

    let state = common::eventually(Duration::from_secs(8), "voice.model.connected", || async {
        let (_, state) = brain.get("/api/state").await;
        (state["voice"]["model"]["connected"] == true).then_some(state)
    })
    .await;
    assert_eq!(state["voice"]["backend"], "moshi-remote");
    assert_eq!(state["voice"]["model"]["server"], url);
    common::assert_schema("state.schema.json", &state);

    let pieces = common::eventually(
        Duration::from_secs(8),
        "pieces in the monologue",
        || async {
            let (_, mono) = brain.get("/api/actors/monologue").await;
            let pieces: Vec<String> = mono["state"]["recent_pieces"]
                .as_array()?
                .iter()
                .filter_map(|p| p["text"].as_str().map(str::to_string))
                .collect();
            (pieces.concat().contains(" hello there")).then_some(pieces)
        },
    )
    .await;
    assert!(
        pieces.iter().all(|p| PIECES.contains(&p.as_str())),
        "one piece per step: {pieces:?}"
    );
    brain.service.shutdown().await;
}
