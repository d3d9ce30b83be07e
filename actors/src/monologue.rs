//! `monologue`: the inner-monologue watcher. A passive tap on the voice's text stream: it
//! gathers pieces into rolling phrases (closed by sentence punctuation or a pause), reads
//! each phrase for a physical-task intent (the grammar in [`crate::intent`] first, then the
//! trained [`crate::classifier`] to confirm, veto or rescue), ignores repeats, and casts
//! what it finds to `reasoner`. It never makes the voice wait: pieces arrive by cast and
//! nothing here answers back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::CALL_TIMEOUT;
use crate::affect::{AffectEvent, AffectHandle};
use crate::classifier::{Decision, IntentClassifier};
use crate::ports::{Action, Intent};
use crate::reasoner::ReasonerHandle;
use crate::slot::{ActorStats, CallError, Slot};
use crate::voice::TextPiece;

/// Watcher settings (from `[monologue]` in the config file).
#[derive(Debug, Clone)]
pub struct MonologueConfig {
    /// Silence in the text stream that closes a phrase.
    pub pause: Duration,
    /// The same task (action, object, destination) within this window is a repeat.
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

#[derive(Clone, Debug)]
pub struct MonologueHandle {
    slot: Slot<MonologueMsg>,
}

impl MonologueHandle {
    pub(crate) fn new(slot: Slot<MonologueMsg>) -> Self {
        MonologueHandle { slot }
    }

    pub fn text_piece(&self, piece: TextPiece) {
        self.slot.cast(MonologueMsg::TextPiece(piece));
    }

    pub async fn snapshot(&self) -> Result<serde_json::Value, CallError> {
        self.slot.call(MonologueMsg::Snapshot, CALL_TIMEOUT).await
    }

    pub fn stats(&self) -> &Arc<ActorStats> {
        self.slot.stats()
    }

    #[cfg(feature = "fault-injection")]
    pub fn crash(&self) {
        self.slot.cast(MonologueMsg::Crash);
    }
}

#[derive(Clone)]
pub struct Monologue {
    pub(crate) config: MonologueConfig,
    pub(crate) reasoner: ReasonerHandle,
    pub(crate) affect: AffectHandle,
    /// Where this actor registers each incarnation (and counts its messages).
    pub(crate) slot: Slot<MonologueMsg>,
}

#[derive(Debug, Clone, Serialize)]
struct PhraseRecord {
    text: String,
    /// Tick of the piece that closed it.
    tick: u64,
    closed_by: &'static str,
    intent: Option<IntentSummary>,
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
    pieces: VecDeque<TextPiece>,
    phrases: VecDeque<PhraseRecord>,
    /// Recently fired tasks, to ignore repeats.
    fired: VecDeque<(TaskKey, Instant)>,
    pieces_seen: u64,
    phrases_closed: u64,
    intents_fired: u64,
    repeats_ignored: u64,
    /// Phrases the grammar read as tasks but the classifier judged near-misses.
    vetoed: u64,
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
        push_bounded(&mut state.pieces, piece);
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
        };
        match IntentClassifier::embedded().decide(&text) {
            Decision::Fire(found) => {
                let parsed = found.task;
                let key = (
                    parsed.action,
                    parsed.object.clone(),
                    parsed.destination.clone(),
                );
                let now = Instant::now();
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
        push_bounded(&mut state.phrases, record);
    }

    fn snapshot(&self, state: &MonologueState) -> serde_json::Value {
        serde_json::json!({
            "phrase_in_progress": state.phrase,
            "pieces_seen": state.pieces_seen,
            "phrases_closed": state.phrases_closed,
            "intents_fired": state.intents_fired,
            "repeats_ignored": state.repeats_ignored,
            "vetoed": state.vetoed,
            "recent_pieces": state.pieces,
            "recent_phrases": state.phrases,
            "text": state.pieces.iter().map(|p| &*p.text).collect::<String>(),
        })
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() == RECENT {
        queue.pop_front();
    }
    queue.push_back(item);
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
            pieces: VecDeque::with_capacity(RECENT),
            phrases: VecDeque::with_capacity(RECENT),
            fired: VecDeque::new(),
            pieces_seen: 0,
            phrases_closed: 0,
            intents_fired: 0,
            repeats_ignored: 0,
            vetoed: 0,
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
