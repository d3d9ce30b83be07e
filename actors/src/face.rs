//! `face`: merges the latest mouth (agent loudness), viseme, affect and speaking into one
//! [`FaceFrame`] per voice frame and publishes it to every connected phone. Fan-out is
//! latest-value (an [`Outlet`]: no lock a socket task can hold): a slow or stalled phone
//! simply misses frames, and nobody, least of all the voice loop, waits for it. Each frame
//! is serialized once.
//!
//! A frame allocates nothing in steady state: the voice loop hands its stats over through a
//! preallocated [`Feed`] (no actor message; a ractor cast boxes it) to a task the face's
//! incarnation runs on the loop's thread, and the face writes each frame's JSON into the
//! buffers of a small pool of [`FaceUpdate`]s, reusing one that no socket holds any more.
//! Only the mood (from `affect`, when it changes) comes as a message.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use serde::Serialize;

use crate::audio::dbfs;
use crate::clock::TickClock;
use crate::feed::{AbortOnDrop, Feed};
use crate::handle::{ActorHandle, Spawn, SpawnError, deref_to_actor_handle};
use crate::outlet::{Outlet, OutletReader};
use crate::signals::{Emotion, FrameStats, Mood};
use crate::slot::{CallError, Slot};

/// Mouth shapes, a reduced Preston Blair set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Viseme {
    #[serde(rename = "rest")]
    Rest,
    /// Open: a, i as in "high".
    A,
    /// Spread: e.
    E,
    /// Narrow spread: i, y.
    I,
    /// Rounded open: o.
    O,
    /// Rounded closed: u, w, q.
    U,
    /// Lips together: m, b, p.
    #[serde(rename = "MBP")]
    Mbp,
    /// Lip on teeth: f, v.
    #[serde(rename = "FV")]
    Fv,
    /// Tongue up: l, t, d, n, th.
    L,
    /// Other consonants: slightly open, teeth together.
    #[serde(rename = "etc")]
    Etc,
}

impl Viseme {
    fn of_letter(c: char) -> Option<Viseme> {
        Some(match c.to_ascii_lowercase() {
            'a' => Viseme::A,
            'e' => Viseme::E,
            'i' | 'y' => Viseme::I,
            'o' => Viseme::O,
            'u' | 'w' | 'q' => Viseme::U,
            'm' | 'b' | 'p' => Viseme::Mbp,
            'f' | 'v' => Viseme::Fv,
            'l' | 't' | 'd' | 'n' => Viseme::L,
            c if c.is_ascii_alphabetic() => Viseme::Etc,
            _ => return None,
        })
    }

    /// The shapes of a spoken piece, repeated letters merged ("hello" -> L E L O).
    pub fn sequence(text: &str) -> Vec<Viseme> {
        let mut out = VecDeque::new();
        Viseme::sequence_into(text, &mut out);
        out.into()
    }

    /// [`Viseme::sequence`] into `out` (emptied first; no allocation within its capacity).
    fn sequence_into(text: &str, out: &mut VecDeque<Viseme>) {
        out.clear();
        for v in text.chars().filter_map(Viseme::of_letter) {
            if out.back() != Some(&v) {
                out.push_back(v);
            }
        }
    }
}

/// The message every phone face receives, 12.5 times a second
/// (`schemas/face_frame.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaceFrame {
    pub seq: u64,
    /// Milliseconds since the brain started.
    pub t_ms: u64,
    pub emotion: Emotion,
    /// Mouth openness 0..1 from the agent's voice loudness.
    pub mouth: f32,
    pub speaking: bool,
    /// The user is talking (the face nods along instead of talking).
    pub listening: bool,
    pub valence: f32,
    pub arousal: f32,
    pub viseme: Viseme,
}

/// A frame plus its JSON text, serialized once for every socket.
#[derive(Debug, Clone)]
pub struct FaceUpdate {
    pub frame: FaceFrame,
    pub json: String,
    /// When the voice loop emitted the stats behind this frame (none for the idle frame).
    pub source_at: Option<Instant>,
}

/// Room for a frame's JSON (about 150 bytes), so rewriting it never grows the buffer.
const JSON_CAPACITY: usize = 256;

impl FaceUpdate {
    fn new(frame: FaceFrame, source_at: Option<Instant>) -> Self {
        let mut update = FaceUpdate {
            frame,
            json: String::with_capacity(JSON_CAPACITY),
            source_at,
        };
        update.write_json();
        update
    }

    /// Make this update hold `frame` (its JSON rewritten in place).
    fn refill(&mut self, frame: FaceFrame, source_at: Option<Instant>) {
        self.frame = frame;
        self.source_at = source_at;
        self.write_json();
    }

    fn write_json(&mut self) {
        let mut bytes = std::mem::take(&mut self.json).into_bytes();
        bytes.clear();
        if serde_json::to_writer(&mut bytes, &self.frame).is_err() {
            bytes.clear();
            bytes.extend_from_slice(b"{}");
        }
        // serde_json writes UTF-8; the fallback keeps the buffer anyway.
        self.json = String::from_utf8(bytes).unwrap_or_else(|e| {
            let mut bytes = e.into_bytes();
            bytes.clear();
            bytes.extend_from_slice(b"{}");
            String::from_utf8(bytes).unwrap_or_default()
        });
    }
}

/// Most face updates kept for reuse: more than the sockets hold at once in steady state
/// (each holds the one it is sending, most the same newest one).
const UPDATE_POOL: usize = 8;

/// An update holding `frame`: a pooled one that only the pool holds, refilled (no
/// allocation), when there is one; else a new one, kept for later while the pool has room.
fn pooled_update(
    pool: &mut Vec<Arc<FaceUpdate>>,
    frame: FaceFrame,
    source_at: Option<Instant>,
) -> Arc<FaceUpdate> {
    for update in pool.iter_mut() {
        if let Some(free) = Arc::get_mut(update) {
            free.refill(frame, source_at);
            return Arc::clone(update);
        }
    }
    let update = Arc::new(FaceUpdate::new(frame, source_at));
    if pool.len() < UPDATE_POOL {
        pool.push(Arc::clone(&update));
    }
    update
}

/// Where face frames are published; lives outside the actor so sockets survive its restarts.
pub type FaceOutlet = Outlet<FaceUpdate>;

fn face_outlet() -> FaceOutlet {
    Outlet::new(Arc::new(FaceUpdate::new(idle_frame(0, 0), None)))
}

fn idle_frame(seq: u64, t_ms: u64) -> FaceFrame {
    FaceFrame {
        seq,
        t_ms,
        emotion: Emotion::Neutral,
        mouth: 0.0,
        speaking: false,
        listening: false,
        valence: 0.0,
        arousal: 0.0,
        viseme: Viseme::Rest,
    }
}

/// Face settings: `[face]` in the config file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaceConfig {
    /// Agent loudness at which the mouth starts to open.
    pub mouth_floor_dbfs: f32,
    /// Agent loudness at which the mouth is fully open.
    pub mouth_ceil_dbfs: f32,
    /// Smoothing towards a more open mouth (0..1 of the way per frame).
    pub mouth_attack: f32,
    /// Smoothing towards a more closed mouth.
    pub mouth_release: f32,
}

impl Default for FaceConfig {
    fn default() -> Self {
        FaceConfig {
            mouth_floor_dbfs: -48.0,
            mouth_ceil_dbfs: -14.0,
            mouth_attack: 0.7,
            mouth_release: 0.45,
        }
    }
}

/// Messages of the face. Frame stats do not come this way: they come through
/// [`FaceHandle::frame`]'s feed.
#[derive(Debug)]
pub enum FaceMsg {
    /// The affect state changed.
    Mood(Mood),
    /// The incarnation's frame task panicked (with this message): the face fails, so its
    /// supervisor restarts it.
    FramesFailed(String),
    #[cfg(feature = "fault-injection")]
    Crash,
}

#[cfg(feature = "fault-injection")]
impl crate::handle::FaultInjection for FaceMsg {
    fn crash() -> Self {
        FaceMsg::Crash
    }
}

/// The face's handle; `stats`, `snapshot` and `crash` come from [`ActorHandle`].
#[derive(Clone, Debug)]
pub struct FaceHandle {
    actor: ActorHandle<FaceMsg>,
    outlet: FaceOutlet,
    frames: Arc<Feed<FrameStats>>,
}

deref_to_actor_handle!(FaceHandle, FaceMsg);

impl FaceHandle {
    /// Stats of one voice frame: the face publishes a frame for it. No message and no
    /// allocation (a feed); with the face stalled the newest stats are dropped, counted in
    /// [`FaceHandle::frames_dropped`].
    pub fn frame(&self, stats: FrameStats) {
        let _ = self.frames.push(stats);
    }

    /// Frame stats dropped because the face had not taken the earlier ones.
    pub fn frames_dropped(&self) -> u64 {
        self.frames.dropped()
    }

    /// The stats handed over and not yet taken (tests stand in for the face with this).
    #[cfg(test)]
    pub(crate) fn take_frame(&self) -> Option<FrameStats> {
        self.frames.pop()
    }

    pub fn mood(&self, mood: Mood) {
        self.actor.cast(FaceMsg::Mood(mood));
    }

    /// The face's state, read from the frame it last published: the face runs on the fast
    /// loop's thread, which never answers HTTP. Never fails; the `Result` keeps the shape
    /// every actor's snapshot has.
    pub async fn snapshot(&self) -> Result<serde_json::Value, CallError> {
        let last = self.outlet.latest().frame.clone();
        Ok(serde_json::json!({
            "last_frame": last,
            "published": last.seq,
            "subscribers": self.outlet.readers(),
            "frames_dropped": self.frames.dropped(),
        }))
    }

    /// A receiver of face frames; it always holds the newest one.
    pub fn subscribe(&self) -> OutletReader<FaceUpdate> {
        self.outlet.subscribe()
    }

    /// Phones (and other subscribers) connected right now.
    pub fn subscribers(&self) -> usize {
        self.outlet.readers()
    }
}

/// The face actor: read-only wiring; all mutable state is in [`FaceState`].
#[derive(Clone)]
pub struct Face {
    config: FaceConfig,
    /// Stamps each frame with the time since the brain started.
    clock: TickClock,
    /// Lives outside the actor, so phones stay subscribed across its restarts.
    outlet: FaceOutlet,
    /// Where this actor registers each incarnation (and counts its messages).
    slot: Slot<FaceMsg>,
    /// Frame stats from the voice loop; outlives incarnations like the outlet.
    frames: Arc<Feed<FrameStats>>,
}

/// Frame stats that may wait for the face (it runs on the loop's thread, so in service it
/// is behind by at most one while the loop works; 16 frames is 1.3 s).
const FRAME_FEED: usize = 16;

impl Face {
    /// A face publishing on an outlet of its own.
    pub fn new(config: FaceConfig, clock: TickClock) -> Self {
        Face {
            config,
            clock,
            outlet: face_outlet(),
            slot: Slot::new("face"),
            frames: Arc::new(Feed::new(FRAME_FEED)),
        }
    }

    /// The handle that reaches every incarnation of this face.
    pub fn handle(&self) -> FaceHandle {
        FaceHandle {
            actor: ActorHandle::new(self.slot.clone()),
            outlet: self.outlet.clone(),
            frames: Arc::clone(&self.frames),
        }
    }

    /// Build a face and start it (under `supervisor`, if given).
    pub async fn spawn(
        config: FaceConfig,
        clock: TickClock,
        supervisor: Option<ActorCell>,
    ) -> Result<FaceHandle, SpawnError> {
        let face = Face::new(config, clock);
        face.start(supervisor).await?;
        Ok(face.handle())
    }
}

impl Spawn for Face {
    fn slot(&self) -> &Slot<FaceMsg> {
        &self.slot
    }
}

/// One incarnation of the face: the actor's state. Dropping it (however the incarnation
/// ends) ends its frame task.
pub struct FaceIncarnation {
    _task: AbortOnDrop,
    /// Shared by the frame task and the actor's handler; both run on the loop's thread and
    /// neither holds it across an await, so it is never waited for.
    state: Arc<Mutex<FaceState>>,
}

pub struct FaceState {
    seq: u64,
    mouth: f32,
    mood: Mood,
    visemes: VecDeque<Viseme>,
    last: FaceFrame,
    /// Updates published before, refilled once no socket holds them.
    pool: Vec<Arc<FaceUpdate>>,
}

/// Longest viseme sequence kept without growing (a piece is a word or two).
const VISEMES: usize = 64;

impl Face {
    fn mouth_target(&self, rms: f32) -> f32 {
        let span = (self.config.mouth_ceil_dbfs - self.config.mouth_floor_dbfs).max(1.0);
        ((dbfs(rms) - self.config.mouth_floor_dbfs) / span).clamp(0.0, 1.0)
    }

    fn on_frame(&self, state: &mut FaceState, stats: FrameStats) {
        let target = self.mouth_target(stats.agent_rms);
        let k = if target > state.mouth {
            self.config.mouth_attack
        } else {
            self.config.mouth_release
        };
        state.mouth += (target - state.mouth) * k.clamp(0.0, 1.0);
        if state.mouth < 0.005 {
            state.mouth = 0.0;
        }
        if let Some(piece) = &stats.piece {
            Viseme::sequence_into(piece, &mut state.visemes);
        }
        let viseme = if state.mouth < 0.05 {
            Viseme::Rest
        } else {
            state.visemes.pop_front().unwrap_or(if state.mouth > 0.5 {
                Viseme::A
            } else {
                Viseme::Etc
            })
        };
        state.seq += 1;
        let frame = FaceFrame {
            seq: state.seq,
            t_ms: self.clock.elapsed_ms(Instant::now()),
            emotion: state.mood.emotion,
            mouth: (state.mouth * 1000.0).round() / 1000.0,
            speaking: stats.agent_speaking,
            listening: stats.user_active,
            valence: (state.mood.valence * 1000.0).round() / 1000.0,
            arousal: (state.mood.arousal * 1000.0).round() / 1000.0,
            viseme,
        };
        state.last = frame.clone();
        let update = pooled_update(&mut state.pool, frame, Some(stats.emitted_at));
        self.outlet.publish(update);
    }

    /// The frame task of one incarnation: publish a frame for each frame stats handed over.
    /// A panic is caught here and fails the face (its supervisor restarts it).
    async fn run_frames(self, state: Arc<Mutex<FaceState>>, myself: ActorRef<FaceMsg>) {
        loop {
            let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let Ok(mut state) = state.lock() else {
                    return;
                };
                while let Some(stats) = self.frames.pop() {
                    self.on_frame(&mut state, stats);
                    self.slot.stats().mark_handled();
                }
            }));
            if let Err(panic) = drained {
                let what = crate::handle::panic_message(&*panic);
                let _ = myself.cast(FaceMsg::FramesFailed(what));
                return;
            }
            self.frames.pushed().await;
        }
    }
}

impl Actor for Face {
    type Msg = FaceMsg;
    type State = FaceIncarnation;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<FaceMsg>,
        _: (),
    ) -> Result<FaceIncarnation, ActorProcessingErr> {
        // Registered before the first message is handled, so no reply can miss it.
        self.slot.set(myself.clone());
        // Continue the sequence of a previous incarnation, so phones see no jump backwards.
        let last = self.outlet.latest().frame.clone();
        let state = Arc::new(Mutex::new(FaceState {
            seq: last.seq,
            mouth: 0.0,
            mood: Mood {
                emotion: last.emotion,
                valence: last.valence,
                arousal: last.arousal,
            },
            visemes: VecDeque::with_capacity(VISEMES),
            last,
            pool: Vec::with_capacity(UPDATE_POOL),
        }));
        // On the runtime this actor runs on (the loop's).
        let task = tokio::spawn(self.clone().run_frames(Arc::clone(&state), myself));
        Ok(FaceIncarnation {
            _task: AbortOnDrop(task.abort_handle()),
            state,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<FaceMsg>,
        msg: FaceMsg,
        incarnation: &mut FaceIncarnation,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FaceMsg::Mood(mood) => match incarnation.state.lock() {
                Ok(mut state) => state.mood = mood,
                Err(_) => return Err("the face's state was poisoned by a panic".into()),
            },
            FaceMsg::FramesFailed(what) => {
                return Err(format!("the face's frame task panicked: {what}").into());
            }
            #[cfg(feature = "fault-injection")]
            FaceMsg::Crash => panic!("injected fault in face"),
        }
        self.slot.stats().mark_handled();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face() -> (Face, FaceState) {
        let outlet = face_outlet();
        let face = Face {
            config: FaceConfig::default(),
            clock: TickClock::new(Instant::now(), crate::FRAME_PERIOD),
            outlet,
            slot: Slot::new("face"),
            frames: Arc::new(Feed::new(FRAME_FEED)),
        };
        let state = FaceState {
            seq: 0,
            mouth: 0.0,
            mood: Mood {
                emotion: Emotion::Neutral,
                valence: 0.0,
                arousal: 0.0,
            },
            visemes: VecDeque::new(),
            last: idle_frame(0, 0),
            pool: Vec::new(),
        };
        (face, state)
    }

    fn stats(rms: f32, piece: Option<&str>) -> FrameStats {
        FrameStats {
            tick: 1,
            agent_rms: rms,
            user_rms: 0.0,
            agent_speaking: rms > 0.01,
            user_active: false,
            barge_in: false,
            piece: piece.map(Arc::from),
            emitted_at: Instant::now(),
        }
    }

    #[test]
    fn the_mouth_opens_with_loudness_and_closes_smoothly() {
        let (face, mut st) = face();
        let mut rx = face.outlet.subscribe();
        face.on_frame(&mut st, stats(0.0, None));
        assert_eq!(rx.borrow_and_update().frame.mouth, 0.0, "silence: closed");
        face.on_frame(&mut st, stats(0.3, Some(" hello")));
        let open = rx.borrow_and_update().frame.clone();
        assert!(open.mouth > 0.5 && open.mouth <= 1.0, "{}", open.mouth);
        assert_ne!(open.viseme, Viseme::Rest);
        assert!(open.speaking);
        face.on_frame(&mut st, stats(10.0, None));
        assert!(rx.borrow_and_update().frame.mouth <= 1.0, "clamped");
        let mut last = 1.0;
        for _ in 0..4 {
            face.on_frame(&mut st, stats(0.0, None));
            let m = rx.borrow_and_update().frame.mouth;
            assert!(m < last && m >= 0.0, "closes gradually: {m}");
            last = m;
        }
        let json: serde_json::Value = serde_json::from_str(&rx.borrow().json).unwrap();
        assert_eq!(json["seq"], 7);
        assert_eq!(json["emotion"], "neutral");
    }

    #[test]
    fn visemes_follow_letters_and_merge_repeats() {
        assert_eq!(
            Viseme::sequence(" hello"),
            [Viseme::Etc, Viseme::E, Viseme::L, Viseme::O]
        );
        assert_eq!(
            Viseme::sequence("mom!"),
            [Viseme::Mbp, Viseme::O, Viseme::Mbp]
        );
        assert!(Viseme::sequence(" ,.").is_empty());
    }
}
