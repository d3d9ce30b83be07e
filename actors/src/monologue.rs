//! `monologue`: the inner-monologue watcher. A passive tap on the voice's text stream: it
//! gathers pieces into rolling phrases (closed by sentence punctuation or a pause), reads
//! each phrase for a physical-task intent (the grammar in [`crate::intent`] first, then the
//! trained [`crate::classifier`] to confirm, veto or rescue), ignores repeats, and casts
//! what it finds to `reasoner`. It also reads each phrase for the feeling its words show
//! ([`cues`]) and casts that to `affect`. It never makes the voice wait: pieces arrive by
//! cast and nothing here answers back.

pub mod cues;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::affect::AffectHandle;
use crate::classifier::{Decision, IntentClassifier};
use crate::handle::{ActorHandle, SnapshotRequest, Spawn, SpawnError, deref_to_actor_handle};
use crate::ports::{Action, Intent};
use crate::reasoner::ReasonerHandle;
use crate::ring::Ring;
use crate::signals::{AffectEvent, TextPiece, WordCue};
use crate::slot::Slot;

/// Watcher settings: `[monologue]` in the config file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonologueConfig {
    /// Silence in the text stream that closes a phrase.
    #[serde(
        rename = "pause_ms",
        deserialize_with = "crate::config_duration::millis"
    )]
    pub pause: Duration,
    /// The same task (action, object, destination) within this window is a repeat.
    #[serde(
        rename = "dedupe_window_secs",
        deserialize_with = "crate::config_duration::secs"
    )]
    pub dedupe_window: Duration,
    /// A phrase this long is closed even without punctuation.
    pub max_phrase_chars: usize,
}

impl Default for MonologueConfig {
    fn default() -> Self {
        MonologueConfig {
            pause: Duration::from_millis(700),
            dedupe_window: Duration::from_secs(10),
            max_phrase_chars: 240,
        }
    }
}

/// How many recent pieces, phrases and intents the snapshot keeps.
const RECENT: usize = 32;

#[derive(Debug)]
pub enum MonologueMsg {
    /// A piece of the inner monologue (from `voice`).
    TextPiece(TextPiece),
    /// Close the phrase if no piece arrived since generation `generation` was scheduled.
    PauseCheck {
        generation: u64,
    },
    Snapshot(RpcReplyPort<serde_json::Value>),
    #[cfg(feature = "fault-injection")]
    Crash,
}

impl SnapshotRequest for MonologueMsg {
    fn snapshot(reply: RpcReplyPort<serde_json::Value>) -> Self {
        MonologueMsg::Snapshot(reply)
    }
}

#[cfg(feature = "fault-injection")]
impl crate::handle::FaultInjection for MonologueMsg {
    fn crash() -> Self {
        MonologueMsg::Crash
    }
}

/// The watcher's handle; `stats`, `snapshot` and `crash` come from [`ActorHandle`].
#[derive(Clone, Debug)]
pub struct MonologueHandle {
    actor: ActorHandle<MonologueMsg>,
}

deref_to_actor_handle!(MonologueHandle, MonologueMsg);

impl MonologueHandle {
    pub fn text_piece(&self, piece: TextPiece) {
        self.actor.cast(MonologueMsg::TextPiece(piece));
    }
}

/// The watcher: read-only wiring; all mutable state is in [`MonologueState`].
#[derive(Clone)]
pub struct Monologue {
    config: MonologueConfig,
    /// Where intents go.
    reasoner: ReasonerHandle,
    /// Told when an intent is spotted.
    affect: AffectHandle,
    /// Where this actor registers each incarnation (and counts its messages).
    slot: Slot<MonologueMsg>,
}

impl Monologue {
    /// A watcher that sends intents to `reasoner` and tells `affect` about them.
    pub fn new(config: MonologueConfig, reasoner: ReasonerHandle, affect: AffectHandle) -> Self {
        Monologue {
            config,
            reasoner,
            affect,
            slot: Slot::new("monologue"),
        }
    }

    /// The handle that reaches every incarnation of this actor.
    pub fn handle(&self) -> MonologueHandle {
        MonologueHandle {
            actor: ActorHandle::new(self.slot.clone()),
        }
    }

    /// Build the watcher and start it (under `supervisor`, if given).
    pub async fn spawn(
        config: MonologueConfig,
        reasoner: ReasonerHandle,
        affect: AffectHandle,
        supervisor: Option<ActorCell>,
    ) -> Result<MonologueHandle, SpawnError> {
        let monologue = Monologue::new(config, reasoner, affect);
        monologue.start(supervisor).await?;
        Ok(monologue.handle())
    }
}

impl Spawn for Monologue {
    fn slot(&self) -> &Slot<MonologueMsg> {
        &self.slot
    }
}

#[derive(Debug, Clone, Serialize)]
struct PhraseRecord {
    text: String,
    /// Tick of the piece that closed it.
    tick: u64,
    closed_by: &'static str,
    intent: Option<IntentSummary>,
    /// The feeling its words showed, cast to `affect`.
    feeling: Option<WordCue>,
}

#[derive(Debug, Clone, Serialize)]
struct IntentSummary {
    action: Action,
    object: String,
    destination: Option<String>,
    confidence: f32,
    /// `rules+classifier`, `classifier` or `rules`; `vetoed` when the grammar read a task
    /// but the classifier judged the phrase a near-miss.
    detector: &'static str,
    /// The classifier's probability that the phrase is a task.
    score: f32,
    /// Ignored as a repeat of an intent fired moments ago.
    repeat: bool,
}

/// What makes two intents the same task: action, object, destination.
type TaskKey = (Action, String, Option<String>);

pub struct MonologueState {
    phrase: String,
    last_tick: u64,
    generation: u64,
    pieces: Ring<TextPiece>,
    phrases: Ring<PhraseRecord>,
    /// Recently fired tasks, to ignore repeats.
    fired: VecDeque<(TaskKey, Instant)>,
    pieces_seen: u64,
    phrases_closed: u64,
    intents_fired: u64,
    repeats_ignored: u64,
    /// Phrases the grammar read as tasks but the classifier judged near-misses.
    vetoed: u64,
    /// The last thing a phrase named, and when, for a pronoun in the next phrase to stand
    /// for ("your cup is about to fall." "I'll grab it."). Forgotten after the dedupe window.
    last_object: Option<(String, Instant)>,
    /// Feelings cast to `affect`.
    feelings_cast: u64,
}

impl Monologue {
    fn on_piece(
        &self,
        myself: &ActorRef<MonologueMsg>,
        state: &mut MonologueState,
        piece: TextPiece,
    ) {
        state.pieces_seen += 1;
        state.last_tick = piece.tick;
        state.phrase.push_str(&piece.text);
        let ends_sentence = piece.text.trim_end().ends_with(['.', '!', '?', ';', ':']);
        self.slot.publish_with(|| crate::events::Event::Piece {
            tick: piece.tick,
            text: piece.text.to_string(),
        });
        state.pieces.push(piece);
        if ends_sentence {
            self.close_phrase(state, "punctuation");
        } else if state.phrase.chars().count() >= self.config.max_phrase_chars {
            self.close_phrase(state, "length");
        } else {
            state.generation += 1;
            let generation = state.generation;
            myself.send_after(self.config.pause, move || MonologueMsg::PauseCheck {
                generation,
            });
        }
    }

    fn close_phrase(&self, state: &mut MonologueState, closed_by: &'static str) {
        let text = std::mem::take(&mut state.phrase).trim().to_string();
        state.generation += 1; // any pending pause check is now stale
        if text.is_empty() {
            return;
        }
        state.phrases_closed += 1;
        let mut record = PhraseRecord {
            text: text.clone(),
            tick: state.last_tick,
            closed_by,
            intent: None,
            feeling: None,
        };
        let now = Instant::now();
        let previous = state
            .last_object
            .as_ref()
            .filter(|(_, at)| now.duration_since(*at) < self.config.dedupe_window)
            .map(|(object, _)| object.clone());
        if let Some(object) = crate::intent::last_named_object(&text) {
            state.last_object = Some((object, now));
        }
        match IntentClassifier::embedded().decide_in_context(&text, previous.as_deref()) {
            Decision::Fire(found) => {
                let parsed = found.task;
                let key = (
                    parsed.action,
                    parsed.object.clone(),
                    parsed.destination.clone(),
                );
                state.last_object = Some((parsed.object.clone(), now));
                state
                    .fired
                    .retain(|(_, at)| now.duration_since(*at) < self.config.dedupe_window);
                let repeat = state.fired.iter().any(|(k, _)| *k == key);
                record.intent = Some(IntentSummary {
                    action: parsed.action,
                    object: parsed.object.clone(),
                    destination: parsed.destination.clone(),
                    confidence: parsed.confidence,
                    detector: found.detector.as_str(),
                    score: found.score,
                    repeat,
                });
                if repeat {
                    state.repeats_ignored += 1;
                } else {
                    state.fired.push_back((key, now));
                    state.intents_fired += 1;
                    let recent = state.phrases.iter().map(|p| p.text.clone()).collect();
                    let intent = Intent {
                        task: parsed.into_task(&text),
                        tick: state.last_tick,
                        detector: found.detector.as_str().into(),
                    };
                    tracing::info!(
                        action = intent.task.action.as_str(),
                        object = %crate::text::printable(&intent.task.object),
                        detector = %intent.detector,
                        phrase = %crate::text::printable(&text),
                        "physical-task intent"
                    );
                    self.affect.event(AffectEvent::IntentDetected);
                    self.reasoner.intent(intent, recent);
                }
            }
            Decision::Vetoed { task, score } => {
                state.vetoed += 1;
                record.intent = Some(IntentSummary {
                    action: task.action,
                    object: task.object,
                    destination: task.destination,
                    confidence: task.confidence,
                    detector: "vetoed",
                    score,
                    repeat: false,
                });
            }
            Decision::NoTask { .. } => {}
        }
        // After the intent, so the words' feeling is what the face shows (both have the
        // same priority in `affect`, and the later one wins).
        if let Some(cue) = cues::read(&text) {
            record.feeling = Some(cue);
            state.feelings_cast += 1;
            self.affect.words(cue);
        }
        self.slot
            .publish_with(|| crate::events::Event::phrase(&record));
        state.phrases.push(record);
    }

    fn snapshot(&self, state: &MonologueState) -> serde_json::Value {
        serde_json::json!({
            "phrase_in_progress": state.phrase,
            "pieces_seen": state.pieces_seen,
            "phrases_closed": state.phrases_closed,
            "intents_fired": state.intents_fired,
            "repeats_ignored": state.repeats_ignored,
            "vetoed": state.vetoed,
            "feelings_cast": state.feelings_cast,
            "recent_pieces": state.pieces,
            "recent_phrases": state.phrases,
            "text": state.pieces.iter().map(|p| &*p.text).collect::<String>(),
        })
    }
}

impl Actor for Monologue {
    type Msg = MonologueMsg;
    type State = MonologueState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<MonologueMsg>,
        _: (),
    ) -> Result<MonologueState, ActorProcessingErr> {
        // Registered before the first message is handled, so no reply can miss it.
        self.slot.set(myself.clone());
        // Train the classifier (once per process) before the first phrase, off the async
        // workers; a restarted watcher finds it trained.
        tokio::task::spawn_blocking(|| {
            IntentClassifier::embedded();
        })
        .await?;
        Ok(MonologueState {
            phrase: String::new(),
            last_tick: 0,
            generation: 0,
            pieces: Ring::new(RECENT),
            phrases: Ring::new(RECENT),
            fired: VecDeque::new(),
            pieces_seen: 0,
            phrases_closed: 0,
            intents_fired: 0,
            repeats_ignored: 0,
            vetoed: 0,
            last_object: None,
            feelings_cast: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MonologueMsg>,
        msg: MonologueMsg,
        state: &mut MonologueState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MonologueMsg::TextPiece(piece) => self.on_piece(&myself, state, piece),
            MonologueMsg::PauseCheck { generation } => {
                if generation == state.generation {
                    self.close_phrase(state, "pause");
                }
            }
            MonologueMsg::Snapshot(reply) => {
                let _ = reply.send(self.snapshot(state));
            }
            #[cfg(feature = "fault-injection")]
            MonologueMsg::Crash => panic!("injected fault in monologue"),
        }
        self.slot.stats().mark_handled();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
