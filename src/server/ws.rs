//! The two websockets. `/ws/face` pushes face frames (latest value: a slow phone skips
//! frames, it never holds anyone up). `/ws/audio` carries the phone's microphone in and the
//! creature's voice out as PCM16 LE, 24 kHz mono. Sessions are written over any
//! `Sink`/`Stream` of messages, so tests can drive them with channels.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use creature_actors::audio::{AgentFrame, AudioInbox};
use creature_actors::face::FaceUpdate;
use creature_actors::histogram::LatencyHistogram;
use creature_actors::{FRAME_SAMPLES, SAMPLE_RATE};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::AppState;
use super::error::ApiError;

/// A phone that takes longer than this to accept one message is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Protocol-level cap on any websocket message; the per-kind limits below are stricter
/// and answered with a readable error instead of a closed socket.
const MAX_WS_MESSAGE: usize = 1 << 20;

/// Holds one unit of a counted resource (a face socket, the audio session) until dropped.
struct Seat<F: FnMut()>(F);

impl<F: FnMut()> Drop for Seat<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

pub(super) async fn face(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    let max = state.config().server.max_face_clients;
    if state.inner.face_clients.fetch_add(1, Ordering::SeqCst) >= max {
        state.inner.face_clients.fetch_sub(1, Ordering::SeqCst);
        return ApiError::unavailable(format!("{max} faces are connected already")).into_response();
    }
    let seat_state = state.clone();
    let seat = Seat(move || {
        seat_state.inner.face_clients.fetch_sub(1, Ordering::SeqCst);
    });
    let rx = state.brain().face.subscribe();
    ws.max_message_size(16 * 1024)
        .on_upgrade(move |socket| async move {
            let _seat = seat;
            let (sink, stream) = socket.split();
            face_session(sink, stream, rx, state.face_latency()).await;
        })
}

/// Send every new face frame until the phone goes away, recording in `latency` how long
/// each took from the voice loop to the socket. What the phone sends is read only to notice
/// that it closed.
pub async fn face_session<Si, St, E>(
    mut sink: Si,
    mut stream: St,
    mut rx: watch::Receiver<Arc<FaceUpdate>>,
    latency: &LatencyHistogram,
) where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
{
    let first = rx.borrow_and_update().json.clone();
    if !send_text(&mut sink, &first).await {
        return;
    }
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break; // the brain is gone
                }
                let update = rx.borrow_and_update().clone();
                if !send_text(&mut sink, &update.json).await {
                    break;
                }
                if let Some(at) = update.source_at {
                    latency.record(at.elapsed());
                }
            }
            incoming = stream.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn send_text<Si: Sink<Message> + Unpin>(sink: &mut Si, text: &str) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

pub(super) async fn audio(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    if state.inner.audio_busy.swap(true, Ordering::SeqCst) {
        return ApiError::new(
            StatusCode::CONFLICT,
            "audio_busy",
            "another device is already streaming audio; one audio session at a time",
        )
        .into_response();
    }
    let seat_state = state.clone();
    let seat = Seat(move || seat_state.inner.audio_busy.store(false, Ordering::SeqCst));
    let brain = Arc::clone(state.brain());
    let max_bytes = state.config().server.max_audio_message_bytes;
    ws.max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _seat = seat;
            let (sink, stream) = socket.split();
            let ready = json!({
                "type": "ready",
                "sample_rate": SAMPLE_RATE,
                "channels": 1,
                "format": "pcm16le",
                "frame_samples": FRAME_SAMPLES,
                "backend": brain.voice.backend(),
            });
            audio_session(
                sink,
                stream,
                brain.inbox(),
                brain.subscribe_audio(),
                max_bytes,
                ready,
            )
            .await;
        })
}

/// The optional first text message of an audio session.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hello {
    #[serde(rename = "type")]
    kind: String,
    sample_rate: u32,
    #[serde(default = "pcm16le")]
    format: String,
    #[serde(default = "mono")]
    channels: u16,
}

fn pcm16le() -> String {
    "pcm16le".into()
}

fn mono() -> u16 {
    1
}

fn error_json(error: &str, detail: String) -> String {
    json!({"error": error, "detail": detail}).to_string()
}

/// Microphone in, voice out. Bad messages get a JSON error on the socket and are skipped;
/// the session, the audio already received and the brain carry on.
pub async fn audio_session<Si, St, E>(
    mut sink: Si,
    mut stream: St,
    inbox: &AudioInbox,
    mut voice: broadcast::Receiver<AgentFrame>,
    max_bytes: usize,
    ready: serde_json::Value,
) where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
{
    if !send_text(&mut sink, &ready.to_string()).await {
        return;
    }
    // Until a hello says otherwise, audio is assumed to be in the documented format.
    let mut format_ok = true;
    let mut samples = Vec::with_capacity(FRAME_SAMPLES);
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let reply = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Binary(bytes))) => {
                        if !format_ok {
                            Some(error_json("bad_audio", "the last hello announced a format this brain cannot take; send a hello with sample_rate 24000, format pcm16le, channels 1".into()))
                        } else if bytes.len() > max_bytes {
                            Some(error_json("audio_too_large", format!("{} bytes in one message; the limit is {max_bytes} (send 80 ms frames of 3840 bytes)", bytes.len())))
                        } else if bytes.len() % 2 != 0 {
                            Some(error_json("bad_audio", format!("{} bytes is not a whole number of 16-bit samples", bytes.len())))
                        } else {
                            pcm16_to_f32(&bytes, &mut samples);
                            inbox.push(&samples);
                            None
                        }
                    }
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<Hello>(&text) {
                        Ok(h) if h.kind == "hello" => {
                            let problems: Vec<String> = [
                                (h.sample_rate != SAMPLE_RATE).then(|| format!("sample_rate {} (need {SAMPLE_RATE})", h.sample_rate)),
                                (h.format != "pcm16le").then(|| format!("format {:?} (need \"pcm16le\")", h.format)),
                                (h.channels != 1).then(|| format!("{} channels (need 1)", h.channels)),
                            ].into_iter().flatten().collect();
                            format_ok = problems.is_empty();
                            Some(if format_ok {
                                json!({"type": "hello_ok"}).to_string()
                            } else {
                                error_json("unsupported_format", format!("unsupported audio: {}; resample to 24 kHz mono PCM16 LE", problems.join(", ")))
                            })
                        }
                        Ok(h) => Some(error_json("unknown_message", format!("unknown message type {:?}; only \"hello\" is understood", h.kind))),
                        Err(e) => Some(error_json("malformed_json", format!("{e}"))),
                    },
                    Some(Ok(_)) => None,
                };
                if let Some(reply) = reply {
                    if !send_text(&mut sink, &reply).await {
                        break;
                    }
                }
            }
            frame = voice.recv() => match frame {
                Ok(frame) => {
                    let bytes = f32_to_pcm16(&frame);
                    let sent = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Binary(bytes.into()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                }
                // A phone that fell behind skips ahead to the live voice.
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::debug!(skipped = n, "audio listener lagged"),
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}

/// PCM16 little-endian bytes to f32 samples in -1..1 (`out` is cleared first).
pub fn pcm16_to_f32(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
    );
}

/// f32 samples to PCM16 little-endian bytes, clamping out-of-range values.
pub fn f32_to_pcm16(samples: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm16_round_trips_within_one_step() {
        let samples = [0.0, 0.5, -0.5, 0.999, -1.0, 1.5, -2.0];
        let bytes = f32_to_pcm16(&samples);
        assert_eq!(bytes.len(), samples.len() * 2);
        let mut back = Vec::new();
        pcm16_to_f32(&bytes, &mut back);
        for (a, b) in samples.iter().zip(&back) {
            assert!(
                (a.clamp(-1.0, 1.0) - b).abs() < 1.0 / 16_000.0,
                "{a} -> {b}"
            );
        }
    }
}
