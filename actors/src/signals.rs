//! The data that crosses actors: what the voice loop hears and says ([`TextPiece`],
//! [`FrameStats`]) and what the creature feels ([`Emotion`], [`Mood`], [`AffectEvent`]).
//! It lives here, not in the file of the actor that makes it, so an actor file imports only
//! the handles of the actors it sends to and no two actor files import each other.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A piece of the inner monologue, as the model emitted it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextPiece {
    /// The tick whose step produced it.
    pub tick: u64,
    pub text: Arc<str>,
}

/// What one step sounded like, for the face and the affect state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameStats {
    pub tick: u64,
    /// RMS of the agent's frame (0..1).
    pub agent_rms: f32,
    /// RMS of the user's frame (0..1).
    pub user_rms: f32,
    pub agent_speaking: bool,
    pub user_active: bool,
    /// The user started talking while the agent was talking.
    pub barge_in: bool,
    /// The monologue piece of this step, if any (the face shapes visemes from it).
    pub piece: Option<Arc<str>>,
    /// When the voice loop sent these stats (to measure how fast they reach a phone).
    pub emitted_at: Instant,
}

/// Ekman's basic emotions plus neutral: the labels the face has presets for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Emotion {
    #[default]
    Neutral,
    Happy,
    Sad,
    Anger,
    Fear,
    Surprise,
    Disgust,
}

impl Emotion {
    pub const ALL: [Emotion; 7] = [
        Emotion::Neutral,
        Emotion::Happy,
        Emotion::Sad,
        Emotion::Anger,
        Emotion::Fear,
        Emotion::Surprise,
        Emotion::Disgust,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Emotion::Neutral => "neutral",
            Emotion::Happy => "happy",
            Emotion::Sad => "sad",
            Emotion::Anger => "anger",
            Emotion::Fear => "fear",
            Emotion::Surprise => "surprise",
            Emotion::Disgust => "disgust",
        }
    }

    /// Where the label sits on the valence/arousal plane (Russell's circumplex).
    pub fn preset(self) -> (f32, f32) {
        match self {
            Emotion::Neutral => (0.0, 0.0),
            Emotion::Happy => (0.75, 0.5),
            Emotion::Sad => (-0.65, -0.4),
            Emotion::Anger => (-0.6, 0.75),
            Emotion::Fear => (-0.7, 0.65),
            Emotion::Surprise => (0.2, 0.85),
            Emotion::Disgust => (-0.7, 0.25),
        }
    }
}

/// Things that happen to the creature and move its affect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffectEvent {
    UserSpeaking,
    AgentSpeaking,
    BargeIn,
    IntentDetected,
    TaskStarted,
    TaskSucceeded,
    TaskFailed,
    LongIdle,
}

/// A feeling the creature's own words show ("yuck", "hooray", "stop that right now!"),
/// read from a closed monologue phrase by the watcher and cast to `affect`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WordCue {
    pub emotion: Emotion,
    /// How strongly it was said, 0..1: more cue words, an exclamation or an intensifier
    /// ("so gross!") raise it. It scales how far the face's point moves.
    pub strength: f32,
}

/// The affect state as the API and the face see it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mood {
    pub emotion: Emotion,
    pub valence: f32,
    pub arousal: f32,
}
