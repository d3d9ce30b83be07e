//! `affect`: the affect state machine. Events (the user starts talking, an intent is
//! spotted, a task fails, ...) set a target emotion: an Ekman label plus a point on the
//! valence/arousal plane, held for a while. The current point glides towards the target
//! every frame, so expressions blend instead of snapping, and the label falls back to
//! neutral when the hold runs out. Frame stats from `voice` are both an event source and
//! the clock; the result goes to `face`.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::FRAME_PERIOD;
use crate::face::FaceHandle;
use crate::feed::{AbortOnDrop, Feed};
use crate::handle::{ActorHandle, SnapshotRequest, Spawn, SpawnError, deref_to_actor_handle};
use crate::ring::Ring;
use crate::signals::{AffectEvent, Emotion, FrameStats, Mood, WordCue};
use crate::slot::Slot;

/// The response to an event: a label, a target point, how long to hold it, and a priority
/// (a held response is only replaced by one of equal or higher priority).
#[derive(Debug, Clone, Copy)]
struct Response {
    emotion: Emotion,
    valence: f32,
    arousal: f32,
    hold: Duration,
    priority: u8,
}

fn response(event: AffectEvent) -> Response {
    let r = |emotion, valence, arousal, hold_ms, priority| Response {
        emotion,
        valence,
        arousal,
        hold: Duration::from_millis(hold_ms),
        priority,
    };
    match event {
        // Attentive: a little brighter and more awake, label unchanged from neutral.
        AffectEvent::UserSpeaking => r(Emotion::Neutral, 0.15, 0.35, 1_500, 1),
        AffectEvent::AgentSpeaking => r(Emotion::Happy, 0.35, 0.3, 1_200, 1),
        AffectEvent::BargeIn => r(Emotion::Surprise, 0.05, 0.65, 1_200, 2),
        // Excited at having something to do.
        AffectEvent::IntentDetected => r(Emotion::Happy, 0.6, 0.75, 2_000, 3),
        // Focused: engaged and alert.
        AffectEvent::TaskStarted => r(Emotion::Happy, 0.45, 0.65, 2_500, 3),
        AffectEvent::TaskSucceeded => r(Emotion::Happy, 0.85, 0.6, 4_000, 4),
        AffectEvent::TaskFailed => r(Emotion::Sad, -0.65, -0.35, 4_000, 4),
        // Sleepy: low arousal until something happens.
        AffectEvent::LongIdle => r(Emotion::Neutral, -0.1, -0.6, 3_600_000, 0),
    }
}

/// The response to a feeling in the creature's own words: the cue's label, at a point on
/// the way from rest to the label's preset (60 % of the way for the weakest cue, all of it
/// for the strongest), held 3 s. Priority 3 lets words override the cheer of speaking (1)
/// and a barge-in (2), ties with a spotted intent or a started task (the later one wins;
/// the watcher casts the cue after the intent, so the words show), and yields to a task's
/// outcome (4). A calm cue ("let me think") sets neutral at a slightly lowered arousal.
fn word_response(cue: WordCue) -> Response {
    let (valence, arousal) = match cue.emotion {
        Emotion::Neutral => (0.0, -0.1),
        other => other.preset(),
    };
    let reach = 0.6 + 0.4 * cue.strength.clamp(0.0, 1.0);
    Response {
        emotion: cue.emotion,
        valence: valence * reach,
        arousal: arousal * reach,
        hold: Duration::from_millis(3_000),
        priority: 3,
    }
}

/// Affect settings: `[affect]` in the config file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffectConfig {
    /// No speech from either side for this long is a long idle.
    #[serde(
        rename = "idle_after_secs",
        deserialize_with = "crate::config_duration::secs"
    )]
    pub idle_after: Duration,
    /// Fraction of the way to the target covered each frame (0..1).
    pub glide: f32,
}

impl Default for AffectConfig {
    fn default() -> Self {
        AffectConfig {
            idle_after: Duration::from_secs(20),
            glide: 0.18,
        }
    }
}

#[derive(Debug)]
pub enum AffectMsg {
    /// Frame stats wait in the feed (also the state machine's clock): take them all. Sent
    /// by the incarnation's own forwarder task, on the shared workers, never by the voice
    /// loop (which hands frames over without a message, see [`AffectHandle::frame`]).
    Frames,
    Event(AffectEvent),
    /// A feeling shown by the creature's own words (from the monologue watcher).
    Words(WordCue),
    Snapshot(RpcReplyPort<serde_json::Value>),
    #[cfg(feature = "fault-injection")]
    Crash,
}

impl SnapshotRequest for AffectMsg {
    fn snapshot(reply: RpcReplyPort<serde_json::Value>) -> Self {
        AffectMsg::Snapshot(reply)
    }
}

#[cfg(feature = "fault-injection")]
impl crate::handle::FaultInjection for AffectMsg {
    fn crash() -> Self {
        AffectMsg::Crash
    }
}

/// The affect state machine's handle; `stats`, `snapshot` and `crash` come from
/// [`ActorHandle`].
#[derive(Clone, Debug)]
pub struct AffectHandle {
    actor: ActorHandle<AffectMsg>,
    frames: Arc<Feed<FrameStats>>,
}

deref_to_actor_handle!(AffectHandle, AffectMsg);

impl AffectHandle {
    /// Stats of one voice frame. The voice loop calls this every tick: the stats go into a
    /// preallocated feed (no message, no allocation, no lock the affect actor can hold);
    /// a task of the affect incarnation wakes and tells the actor to take them. With the
    /// actor behind by [`FRAME_FEED`] frames the newest are dropped and counted
    /// ([`AffectHandle::frames_dropped`]).
    pub fn frame(&self, stats: FrameStats) {
        let _ = self.frames.push(stats);
    }

    /// Frame stats dropped because the affect actor had not taken the earlier ones.
    pub fn frames_dropped(&self) -> u64 {
        self.frames.dropped()
    }

    pub fn event(&self, event: AffectEvent) {
        self.actor.cast(AffectMsg::Event(event));
    }

    /// A feeling the creature's words showed: a cast, like every message to this actor.
    pub fn words(&self, cue: WordCue) {
        self.actor.cast(AffectMsg::Words(cue));
    }
}

/// The affect actor: read-only wiring; all mutable state is in [`AffectState`].
#[derive(Clone)]
pub struct Affect {
    config: AffectConfig,
    /// Where the mood goes when it changes.
    face: FaceHandle,
    /// Where this actor registers each incarnation (and counts its messages).
    slot: Slot<AffectMsg>,
    /// Frame stats from the voice loop; outlives incarnations.
    frames: Arc<Feed<FrameStats>>,
}

/// Frame stats that may wait for the affect actor (about 2 s of frames).
pub const FRAME_FEED: usize = 25;

impl Affect {
    /// An affect state machine that tells `face` its mood.
    pub fn new(config: AffectConfig, face: FaceHandle) -> Self {
        Affect {
            config,
            face,
            slot: Slot::new("affect"),
            frames: Arc::new(Feed::new(FRAME_FEED)),
        }
    }

    /// The handle that reaches every incarnation of this actor.
    pub fn handle(&self) -> AffectHandle {
        AffectHandle {
            actor: ActorHandle::new(self.slot.clone()),
            frames: Arc::clone(&self.frames),
        }
    }

    /// Build the actor and start it (under `supervisor`, if given).
    pub async fn spawn(
        config: AffectConfig,
        face: FaceHandle,
        supervisor: Option<ActorCell>,
    ) -> Result<AffectHandle, SpawnError> {
        let affect = Affect::new(config, face);
        affect.start(supervisor).await?;
        Ok(affect.handle())
    }
}

impl Spawn for Affect {
    fn slot(&self) -> &Slot<AffectMsg> {
        &self.slot
    }
}

#[derive(Debug, Clone, Serialize)]
struct EventRecord {
    event: AffectEvent,
    tick: u64,
    emotion: Emotion,
    /// False when a stronger held response kept this one from taking over.
    applied: bool,
}

pub struct AffectState {
    mood: Mood,
    target: Response,
    /// Tick until which `target` holds.
    hold_until: u64,
    tick: u64,
    last_activity: u64,
    idle: bool,
    user_active: bool,
    agent_speaking: bool,
    published: Option<Mood>,
    events: u64,
    recent: Ring<EventRecord>,
    /// Feelings from words, newest last.
    recent_words: Ring<WordRecord>,
    /// The incarnation's forwarder task (turns a wake-up of the frame feed into
    /// [`AffectMsg::Frames`]); ends with the incarnation.
    forwarder: Option<AbortOnDrop>,
}

const RECENT: usize = 24;

#[derive(Debug, Clone, Serialize)]
struct WordRecord {
    cue: WordCue,
    tick: u64,
    /// False when a stronger held response kept this one from taking over.
    applied: bool,
}

impl AffectState {
    /// Neutral, calm, nothing held.
    fn new() -> Self {
        let rest = Response {
            emotion: Emotion::Neutral,
            valence: 0.0,
            arousal: 0.0,
            hold: Duration::ZERO,
            priority: 0,
        };
        AffectState {
            mood: Mood {
                emotion: Emotion::Neutral,
                valence: 0.0,
                arousal: 0.0,
            },
            target: rest,
            hold_until: 0,
            tick: 0,
            last_activity: 0,
            idle: false,
            user_active: false,
            agent_speaking: false,
            published: None,
            events: 0,
            recent: Ring::new(RECENT),
            recent_words: Ring::new(RECENT),
            forwarder: None,
        }
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() / FRAME_PERIOD.as_millis()) as u64
}

impl Affect {
    fn apply(&self, state: &mut AffectState, event: AffectEvent) {
        state.events += 1;
        let r = response(event);
        let applied = Self::take(state, r);
        state.recent.push(EventRecord {
            event,
            tick: state.tick,
            emotion: r.emotion,
            applied,
        });
    }

    /// Make `r` the target unless a held response of higher priority keeps it out.
    fn take(state: &mut AffectState, r: Response) -> bool {
        let held = state.tick < state.hold_until;
        let applied = !held || r.priority >= state.target.priority;
        if applied {
            state.target = r;
            state.hold_until = state.tick + ticks(r.hold).max(1);
            state.mood.emotion = r.emotion;
        }
        applied
    }

    fn apply_words(&self, state: &mut AffectState, cue: WordCue) {
        state.events += 1;
        let applied = Self::take(state, word_response(cue));
        state.recent_words.push(WordRecord {
            cue,
            tick: state.tick,
            applied,
        });
    }

    fn on_frame(&self, state: &mut AffectState, stats: &FrameStats) {
        state.tick = stats.tick;
        if stats.user_active && !state.user_active {
            self.apply(state, AffectEvent::UserSpeaking);
        }
        if stats.agent_speaking && !state.agent_speaking {
            self.apply(state, AffectEvent::AgentSpeaking);
        }
        if stats.barge_in {
            self.apply(state, AffectEvent::BargeIn);
        }
        state.user_active = stats.user_active;
        state.agent_speaking = stats.agent_speaking;
        if stats.user_active || stats.agent_speaking {
            state.last_activity = stats.tick;
            if state.idle {
                state.idle = false;
                // Waking up ends the sleepy hold at once.
                state.hold_until = state.tick;
            }
        } else if !state.idle
            && stats.tick.saturating_sub(state.last_activity) >= ticks(self.config.idle_after)
        {
            state.idle = true;
            self.apply(state, AffectEvent::LongIdle);
        }
        if state.tick >= state.hold_until {
            state.target = Response {
                emotion: Emotion::Neutral,
                valence: 0.0,
                arousal: 0.0,
                hold: Duration::ZERO,
                priority: 0,
            };
            state.mood.emotion = Emotion::Neutral;
        }
        let g = self.config.glide.clamp(0.0, 1.0);
        state.mood.valence += (state.target.valence - state.mood.valence) * g;
        state.mood.arousal += (state.target.arousal - state.mood.arousal) * g;
        self.publish(state);
    }

    fn publish(&self, state: &mut AffectState) {
        let mood = state.mood;
        let changed = match state.published {
            None => true,
            Some(p) => {
                p.emotion != mood.emotion
                    || (p.valence - mood.valence).abs() > 0.005
                    || (p.arousal - mood.arousal).abs() > 0.005
            }
        };
        if changed {
            self.slot.publish_with(|| crate::events::Event::Affect {
                emotion: mood.emotion.as_str().into(),
                valence: mood.valence,
                arousal: mood.arousal,
            });
            self.face.mood(mood);
            state.published = Some(mood);
        }
    }
}

impl Actor for Affect {
    type Msg = AffectMsg;
    type State = AffectState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<AffectMsg>,
        _: (),
    ) -> Result<AffectState, ActorProcessingErr> {
        // Registered before the first message is handled, so no reply can miss it.
        self.slot.set(myself.clone());
        let frames = Arc::clone(&self.frames);
        // On the shared workers, like this actor: the cast (and its allocation) happens
        // here, not on the voice loop's thread.
        let forwarder = tokio::spawn(async move {
            loop {
                frames.pushed().await;
                if myself.cast(AffectMsg::Frames).is_err() {
                    return;
                }
            }
        });
        let mut state = AffectState::new();
        state.forwarder = Some(AbortOnDrop(forwarder.abort_handle()));
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<AffectMsg>,
        msg: AffectMsg,
        state: &mut AffectState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AffectMsg::Frames => {
                while let Some(stats) = self.frames.pop() {
                    self.on_frame(state, &stats);
                }
            }
            AffectMsg::Event(event) => {
                self.apply(state, event);
                self.publish(state);
            }
            AffectMsg::Words(cue) => {
                self.apply_words(state, cue);
                self.publish(state);
            }
            AffectMsg::Snapshot(reply) => {
                let _ = reply.send(serde_json::json!({
                    "emotion": state.mood.emotion,
                    "valence": state.mood.valence,
                    "arousal": state.mood.arousal,
                    "target": {
                        "emotion": state.target.emotion,
                        "valence": state.target.valence,
                        "arousal": state.target.arousal,
                        "priority": state.target.priority,
                    },
                    "hold_ticks_left": state.hold_until.saturating_sub(state.tick),
                    "idle": state.idle,
                    "events": state.events,
                    "recent_events": state.recent,
                    "recent_words": state.recent_words,
                    "frames_dropped": self.frames.dropped(),
                }));
            }
            #[cfg(feature = "fault-injection")]
            AffectMsg::Crash => panic!("injected fault in affect"),
        }
        self.slot.stats().mark_handled();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> (Affect, AffectState) {
        let face = crate::face::Face::new(
            crate::face::FaceConfig::default(),
            crate::clock::TickClock::new(std::time::Instant::now(), FRAME_PERIOD),
        );
        let affect = Affect::new(
            AffectConfig {
                idle_after: Duration::from_secs(2),
                glide: 0.5,
            },
            face.handle(),
        );
        let state = AffectState::new();
        (affect, state)
    }

    fn frame(tick: u64, user: bool, agent: bool, barge_in: bool) -> FrameStats {
        FrameStats {
            tick,
            agent_rms: 0.0,
            user_rms: 0.0,
            agent_speaking: agent,
            user_active: user,
            barge_in,
            piece: None,
            emitted_at: std::time::Instant::now(),
        }
    }

    #[test]
    fn outcomes_set_the_label_and_the_point_glides_towards_it() {
        let (affect, mut st) = machine();
        affect.apply(&mut st, AffectEvent::TaskSucceeded);
        assert_eq!(st.mood.emotion, Emotion::Happy);
        assert_eq!(st.mood.valence, 0.0, "the point has not moved yet");
        let mut last = 0.0;
        for t in 1..6 {
            affect.on_frame(&mut st, &frame(t, false, false, false));
            assert!(st.mood.valence > last, "valence rises step by step");
            last = st.mood.valence;
        }
        assert!(
            st.mood.valence > 0.8 && st.mood.valence <= 0.85,
            "{}",
            st.mood.valence
        );
        affect.apply(&mut st, AffectEvent::TaskFailed);
        assert_eq!(st.mood.emotion, Emotion::Sad);
    }

    #[test]
    fn a_weaker_event_does_not_override_a_held_stronger_one() {
        let (affect, mut st) = machine();
        affect.apply(&mut st, AffectEvent::TaskFailed);
        affect.on_frame(&mut st, &frame(1, true, false, false)); // the user starts talking
        assert_eq!(st.mood.emotion, Emotion::Sad, "sadness is held");
        assert!(
            st.recent
                .iter()
                .any(|r| r.event == AffectEvent::UserSpeaking && !r.applied)
        );
        // Once the hold runs out the face goes back to neutral.
        let hold = ticks(response(AffectEvent::TaskFailed).hold);
        for t in 2..hold + 3 {
            affect.on_frame(&mut st, &frame(t, false, false, false));
        }
        assert_eq!(st.mood.emotion, Emotion::Neutral);
    }

    #[test]
    fn words_reach_every_expression_and_move_the_point_towards_its_preset() {
        for emotion in Emotion::ALL {
            let (affect, mut st) = machine();
            affect.on_frame(&mut st, &frame(1, false, true, false)); // speaking: happy
            affect.apply_words(
                &mut st,
                WordCue {
                    emotion,
                    strength: 1.0,
                },
            );
            assert_eq!(
                st.mood.emotion, emotion,
                "words override the cheer of speaking"
            );
            for t in 2..12 {
                affect.on_frame(&mut st, &frame(t, false, true, false));
            }
            assert_eq!(st.mood.emotion, emotion, "held");
            let (v, a) = match emotion {
                Emotion::Neutral => (0.0, -0.1),
                other => other.preset(),
            };
            assert!(
                (st.mood.valence - v).abs() < 0.05 && (st.mood.arousal - a).abs() < 0.05,
                "{emotion:?} at ({}, {}), preset ({v}, {a})",
                st.mood.valence,
                st.mood.arousal
            );
        }
    }

    #[test]
    fn a_weak_cue_moves_the_point_less_and_an_outcome_outranks_words() {
        let weak = word_response(WordCue {
            emotion: Emotion::Anger,
            strength: 0.0,
        });
        let strong = word_response(WordCue {
            emotion: Emotion::Anger,
            strength: 1.0,
        });
        assert!(weak.arousal < strong.arousal && weak.valence > strong.valence);
        let (affect, mut st) = machine();
        affect.apply(&mut st, AffectEvent::TaskFailed);
        affect.apply_words(
            &mut st,
            WordCue {
                emotion: Emotion::Happy,
                strength: 1.0,
            },
        );
        assert_eq!(
            st.mood.emotion,
            Emotion::Sad,
            "a failed task outranks a cheerful word"
        );
        assert!(st.recent_words.iter().any(|r| !r.applied));
    }

    #[test]
    fn speech_edges_barge_in_and_idling_are_events() {
        let (affect, mut st) = machine();
        affect.on_frame(&mut st, &frame(1, false, true, false));
        assert_eq!(st.mood.emotion, Emotion::Happy, "speaking cheerfully");
        affect.on_frame(&mut st, &frame(2, true, true, true));
        assert_eq!(st.mood.emotion, Emotion::Surprise, "interrupted");
        // Two seconds (25 frames) of silence: drowsy, low arousal.
        for t in 3..40 {
            affect.on_frame(&mut st, &frame(t, false, false, false));
        }
        assert!(st.idle);
        assert!(st.mood.arousal < -0.4, "{}", st.mood.arousal);
        // Someone talks: awake again.
        affect.on_frame(&mut st, &frame(40, true, false, false));
        assert!(!st.idle);
        assert!(st.recent.iter().any(|r| r.event == AffectEvent::LongIdle));
    }
}
