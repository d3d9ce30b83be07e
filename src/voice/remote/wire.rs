//! The `/api/chat` websocket wire of Kyutai's Moshi servers (`moshi.server` in Python,
//! `moshi-backend` in Rust): every message is binary, its first byte says what it is.
//!
//! | byte | kind      | payload                                                       |
//! |------|-----------|---------------------------------------------------------------|
//! | 0    | handshake | none (Python) or 8 bytes of protocol/model version (Rust)     |
//! | 1    | audio     | Ogg/Opus bytes, 24 kHz mono; the first carries OpusHead/Tags  |
//! | 2    | text      | one UTF-8 text piece, the `▁` word marker already a space     |
//! | 3    | control   | one action byte (start, end turn, pause, restart)             |
//! | 4    | metadata  | JSON (the Rust server's sampling settings and build)          |
//! | 5    | error     | UTF-8 message                                                 |
//! | 6    | ping      | none                                                          |
//!
//! Sampling settings go in the query string of the upgrade request, named as the Rust
//! server's `SessionConfigReq` and the web client name them; the Python server ignores them.

use std::fmt::Write as _;

/// The one-byte message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Handshake = 0,
    Audio = 1,
    Text = 2,
    Control = 3,
    Metadata = 4,
    Error = 5,
    Ping = 6,
}

impl MessageKind {
    pub fn from_byte(byte: u8) -> Option<MessageKind> {
        Some(match byte {
            0 => MessageKind::Handshake,
            1 => MessageKind::Audio,
            2 => MessageKind::Text,
            3 => MessageKind::Control,
            4 => MessageKind::Metadata,
            5 => MessageKind::Error,
            6 => MessageKind::Ping,
            _ => return None,
        })
    }

    pub fn byte(self) -> u8 {
        self as u8
    }
}

/// A message from the server whose framing has been checked (the audio payload is checked
/// when it is decoded).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage<'a> {
    /// The server is ready: audio may flow.
    Handshake,
    /// Ogg/Opus bytes, possibly part of a page.
    Audio(&'a [u8]),
    /// A piece of the inner monologue.
    Text(&'a str),
    /// A control action; clients of a full-duplex model ignore them.
    Control(&'a [u8]),
    /// The session's settings as the server reports them.
    Metadata(serde_json::Value),
    /// The server gave up on this session and says why.
    Error(String),
    /// Keep-alive.
    Ping,
}

/// Longest server error text kept (the rest is cut).
const MAX_ERROR_CHARS: usize = 200;

/// Why a server message is malformed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty message")]
    Empty,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("text piece is not UTF-8: {0}")]
    TextNotUtf8(String),
    #[error("metadata is not JSON: {0}")]
    MetadataNotJson(String),
    #[error("a websocket text frame; this protocol sends binary messages only")]
    TextFrame,
    #[error("{0:?} message before the handshake")]
    BeforeHandshake(MessageKind),
    #[error("bad audio: {0}")]
    Audio(String),
}

/// Check a binary message from the server.
pub fn parse(message: &[u8]) -> Result<ServerMessage<'_>, ProtocolError> {
    let (&first, payload) = message.split_first().ok_or(ProtocolError::Empty)?;
    let kind = MessageKind::from_byte(first).ok_or(ProtocolError::UnknownKind(first))?;
    Ok(match kind {
        MessageKind::Handshake => ServerMessage::Handshake,
        MessageKind::Audio => ServerMessage::Audio(payload),
        MessageKind::Text => ServerMessage::Text(
            std::str::from_utf8(payload).map_err(|e| ProtocolError::TextNotUtf8(e.to_string()))?,
        ),
        MessageKind::Control => ServerMessage::Control(payload),
        MessageKind::Metadata => ServerMessage::Metadata(
            serde_json::from_slice(payload)
                .map_err(|e| ProtocolError::MetadataNotJson(e.to_string()))?,
        ),
        MessageKind::Error => ServerMessage::Error(
            String::from_utf8_lossy(payload)
                .chars()
                .take(MAX_ERROR_CHARS)
                .collect(),
        ),
        MessageKind::Ping => ServerMessage::Ping,
    })
}

/// An audio message carrying these Ogg bytes.
pub fn audio_message(ogg: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(1 + ogg.len());
    message.push(MessageKind::Audio.byte());
    message.extend_from_slice(ogg);
    message
}

/// The URL to open: `base` with the config's sampling keys added to its query string (after any
/// query `base` already has, such as an auth id).
pub fn session_url(base: &str, params: &super::RemoteConfig) -> String {
    let mut url = base.to_string();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    let mut add = |name: &str, value: &dyn std::fmt::Display| {
        // Writing to a String cannot fail.
        let _ = write!(url, "{sep}{name}={value}");
        sep = '&';
    };
    add("text_temperature", &params.text_temperature);
    add("text_topk", &params.text_topk);
    add("audio_temperature", &params.audio_temperature);
    add("audio_topk", &params.audio_topk);
    add("pad_mult", &params.pad_mult);
    add(
        "repetition_penalty_context",
        &params.repetition_penalty_context,
    );
    add("repetition_penalty", &params.repetition_penalty);
    if let Some(seed) = params.text_seed {
        add("text_seed", &seed);
    }
    if let Some(seed) = params.audio_seed {
        add("audio_seed", &seed);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> super::super::RemoteConfig {
        super::super::RemoteConfig {
            audio_seed: Some(42),
            ..Default::default()
        }
    }

    #[test]
    fn the_query_string_uses_the_servers_names() {
        let url = session_url("ws://h:8998/api/chat", &params());
        assert_eq!(
            url,
            "ws://h:8998/api/chat?text_temperature=0.7&text_topk=25&audio_temperature=0.8&audio_topk=250\
             &pad_mult=0&repetition_penalty_context=64&repetition_penalty=1&audio_seed=42"
        );
        let url = session_url("ws://h/api/chat?worker_auth_id=x", &params());
        assert!(
            url.starts_with("ws://h/api/chat?worker_auth_id=x&text_temperature=0.7&"),
            "{url}"
        );
    }

    #[test]
    fn messages_parse_by_their_first_byte() {
        assert_eq!(parse(&[0]), Ok(ServerMessage::Handshake));
        assert_eq!(
            parse(&[0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Ok(ServerMessage::Handshake)
        );
        assert_eq!(parse(&[1, 9, 8]), Ok(ServerMessage::Audio(&[9, 8])));
        assert_eq!(parse(b"\x02 hello"), Ok(ServerMessage::Text(" hello")));
        assert_eq!(
            parse(b"\x04{\"a\":1}"),
            Ok(ServerMessage::Metadata(serde_json::json!({"a": 1})))
        );
        assert_eq!(parse(b"\x05busy"), Ok(ServerMessage::Error("busy".into())));
        assert_eq!(parse(&[6]), Ok(ServerMessage::Ping));
        assert_eq!(parse(&[3, 1]), Ok(ServerMessage::Control(&[1])));
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        assert_eq!(parse(&[]), Err(ProtocolError::Empty));
        assert_eq!(parse(&[9, 1]), Err(ProtocolError::UnknownKind(9)));
        assert!(matches!(
            parse(&[2, 0xFF, 0xFE]),
            Err(ProtocolError::TextNotUtf8(_))
        ));
        assert!(matches!(
            parse(b"\x04{nope"),
            Err(ProtocolError::MetadataNotJson(_))
        ));
        let long = [&[5u8][..], &[b'x'; 1000][..]].concat();
        assert!(matches!(parse(&long), Ok(ServerMessage::Error(e)) if e.len() == MAX_ERROR_CHARS));
    }

    #[test]
    fn audio_messages_lead_with_kind_1() {
        assert_eq!(audio_message(b"OggS"), b"\x01OggS");
    }
}
