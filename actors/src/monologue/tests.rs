//! The watcher on its own: pieces in, phrases closed by punctuation, length or a pause
//! (tokio's paused clock, so the pause is exact and nothing real is waited for), and a task
//! repeated within the window sent to the reasoner once.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::affect::AffectMsg;
use crate::reasoner::ReasonerMsg;
use crate::slot::testing::{self, Recording};

struct Watcher {
    monologue: MonologueHandle,
    reasoner: ReasonerHandle,
    intents: Recording<ReasonerMsg>,
    affect: AffectHandle,
    events: Recording<AffectMsg>,
}

async fn watcher(config: MonologueConfig) -> Watcher {
    let (reasoner, intents) = testing::reasoner().await;
    let (affect, events) = testing::affect().await;
    let monologue = Monologue::spawn(config, reasoner.clone(), affect.clone(), None)
        .await
        .unwrap();
    Watcher {
        monologue,
        reasoner,
        intents,
        affect,
        events,
    }
}

fn config() -> MonologueConfig {
    MonologueConfig {
        pause: Duration::from_millis(700),
        dedupe_window: Duration::from_secs(3600),
        max_phrase_chars: 240,
    }
}

fn piece(tick: u64, text: &str) -> TextPiece {
    TextPiece {
        tick,
        text: Arc::from(text),
    }
}

impl Watcher {
    fn say(&self, tick: u64, text: &str) {
        self.monologue.text_piece(piece(tick, text));
    }

    async fn snapshot(&self) -> serde_json::Value {
        self.monologue.snapshot().await.unwrap()
    }

    /// The intents sent to the reasoner so far: (object, tick, recent phrases).
    async fn intents(&mut self) -> Vec<(String, u64, Vec<String>)> {
        testing::drain(self.reasoner.slot(), &mut self.intents)
            .await
            .into_iter()
            .map(|m| match m {
                ReasonerMsg::Intent { intent, recent } => (intent.task.object, intent.tick, recent),
                other => panic!("the watcher only sends intents, got {other:?}"),
            })
            .collect()
    }

    async fn affect_events(&mut self) -> usize {
        testing::drain(self.affect.slot(), &mut self.events)
            .await
            .into_iter()
            .filter(|m| matches!(m, AffectMsg::Event(AffectEvent::IntentDetected)))
            .count()
    }
}

#[tokio::test(start_paused = true)]
async fn a_phrase_closes_at_sentence_punctuation() {
    let mut w = watcher(config()).await;
    w.say(1, "Okay, I'll bring");
    w.say(2, " you the");
    let s = w.snapshot().await;
    assert_eq!(s["phrases_closed"], 0, "{s}");
    assert_eq!(s["phrase_in_progress"], "Okay, I'll bring you the");
    w.say(3, " cup.");
    let s = w.snapshot().await;
    assert_eq!(s["phrases_closed"], 1, "{s}");
    assert_eq!(s["phrase_in_progress"], "");
    let phrase = &s["recent_phrases"][0];
    assert_eq!(phrase["text"], "Okay, I'll bring you the cup.");
    assert_eq!(phrase["closed_by"], "punctuation");
    assert_eq!(phrase["tick"], 3, "the tick of the closing piece");
    assert_eq!(phrase["intent"]["object"], "cup");
    let intents = w.intents().await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0].0, "cup");
    assert_eq!(intents[0].1, 3);
    assert_eq!(w.affect_events().await, 1, "affect hears of the intent");
}

#[tokio::test(start_paused = true)]
async fn a_phrase_closes_after_a_pause_and_a_new_piece_restarts_the_pause() {
    let mut w = watcher(config()).await;
    // Each piece is handled (its pause scheduled) before the clock moves on.
    w.say(1, "I'll bring you");
    w.snapshot().await;
    tokio::time::advance(Duration::from_millis(500)).await;
    w.say(2, " the cup");
    w.snapshot().await;
    // 700 ms after the first piece, but only 600 ms after the second: still open.
    tokio::time::advance(Duration::from_millis(600)).await;
    let s = w.snapshot().await;
    assert_eq!(s["phrases_closed"], 0, "{s}");
    assert_eq!(s["phrase_in_progress"], "I'll bring you the cup");
    assert!(w.intents().await.is_empty());

    // 700 ms after the second piece: closed by the pause.
    tokio::time::advance(Duration::from_millis(100)).await;
    let mut s = w.snapshot().await;
    for _ in 0..100 {
        if s["phrases_closed"] == 1 {
            break;
        }
        tokio::task::yield_now().await;
        s = w.snapshot().await;
    }
    assert_eq!(s["phrases_closed"], 1, "{s}");
    let phrase = &s["recent_phrases"][0];
    assert_eq!(phrase["text"], "I'll bring you the cup");
    assert_eq!(phrase["closed_by"], "pause");
    assert_eq!(phrase["tick"], 2);
    let intents = w.intents().await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0].0, "cup");
}

#[tokio::test(start_paused = true)]
async fn a_long_phrase_closes_at_its_length_limit() {
    let mut w = watcher(MonologueConfig {
        max_phrase_chars: 20,
        ..config()
    })
    .await;
    w.say(1, "The weather is lovely");
    let s = w.snapshot().await;
    assert_eq!(s["phrases_closed"], 1, "{s}");
    assert_eq!(s["recent_phrases"][0]["closed_by"], "length");
    assert!(w.intents().await.is_empty(), "no task in it");
}

#[tokio::test(start_paused = true)]
async fn a_task_repeated_within_the_window_is_sent_once() {
    let mut w = watcher(config()).await;
    w.say(1, "I'll bring you the cup.");
    w.say(2, "Yes, I'll bring you the cup.");
    w.say(3, "I'll pick up the red ball.");
    let s = w.snapshot().await;
    assert_eq!(s["phrases_closed"], 3, "{s}");
    assert_eq!(s["intents_fired"], 2, "{s}");
    assert_eq!(s["repeats_ignored"], 1, "{s}");
    let phrases = s["recent_phrases"].as_array().unwrap();
    let repeat: Vec<_> = phrases.iter().map(|p| &p["intent"]["repeat"]).collect();
    assert_eq!(repeat, [false, true, false], "{s}");
    let objects: Vec<String> = w.intents().await.into_iter().map(|i| i.0).collect();
    assert_eq!(
        objects,
        ["cup", "red ball"],
        "a different task is not a repeat"
    );
    assert_eq!(w.affect_events().await, 2);
}

#[tokio::test(start_paused = true)]
async fn without_a_window_the_same_task_is_sent_again() {
    // The control for the test above: the window, not the phrase, is what drops a repeat.
    let mut w = watcher(MonologueConfig {
        dedupe_window: Duration::ZERO,
        ..config()
    })
    .await;
    w.say(1, "I'll bring you the cup.");
    w.say(2, "Yes, I'll bring you the cup.");
    let s = w.snapshot().await;
    assert_eq!(s["intents_fired"], 2, "{s}");
    assert_eq!(s["repeats_ignored"], 0, "{s}");
    let intents = w.intents().await;
    assert_eq!(intents.len(), 2, "{intents:?}");
    // The second intent carries the phrase before it as context.
    assert_eq!(intents[1].2, ["I'll bring you the cup."]);
}

impl Watcher {
    /// Everything sent to `affect` so far: intents spotted (as `None`) and feelings.
    async fn affect_messages(&mut self) -> Vec<Option<WordCue>> {
        testing::drain(self.affect.slot(), &mut self.events)
            .await
            .into_iter()
            .filter_map(|m| match m {
                AffectMsg::Event(AffectEvent::IntentDetected) => Some(None),
                AffectMsg::Words(cue) => Some(Some(cue)),
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn the_feeling_of_a_phrase_is_cast_to_affect_after_its_intent() {
    let mut w = watcher(config()).await;
    w.say(1, "Yuck, I'll throw the moldy cheese in the bin!");
    w.say(2, "Hmm, the weather is nice.");
    w.say(3, "Stop that right now!");
    let s = w.snapshot().await;
    assert_eq!(s["feelings_cast"], 2, "{s}");
    assert_eq!(s["recent_phrases"][0]["feeling"]["emotion"], "disgust");
    assert!(s["recent_phrases"][1]["feeling"].is_null());
    let sent = w.affect_messages().await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0], None, "the intent first");
    assert_eq!(
        sent[1].map(|c| c.emotion),
        Some(crate::signals::Emotion::Disgust)
    );
    assert_eq!(
        sent[2].map(|c| c.emotion),
        Some(crate::signals::Emotion::Anger)
    );
    assert_eq!(w.intents().await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_pronoun_stands_for_the_thing_the_previous_phrase_named() {
    let mut w = watcher(config()).await;
    w.say(1, "Oh no, your cup is about to fall.");
    w.say(2, "I'll grab it!");
    let s = w.snapshot().await;
    let intents = w.intents().await;
    assert_eq!(intents.len(), 1, "{intents:?} {s}");
    assert_eq!(intents[0].0, "cup");
    // With nothing named before, a pronoun is no task.
    let mut fresh = watcher(config()).await;
    fresh.say(1, "I'll grab it!");
    assert_eq!(fresh.snapshot().await["phrases_closed"], 1);
    assert!(fresh.intents().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn requests_to_the_user_never_reach_the_reasoner() {
    let mut w = watcher(config()).await;
    for (tick, phrase) in [
        "Could you close the window?",
        "Please put your boots away.",
        "You should take your coat.",
        "Don't forget to switch off the lights.",
        "Let's pick up where we left off.",
        "Bring me the remote.",
    ]
    .into_iter()
    .enumerate()
    {
        w.say(tick as u64, phrase);
    }
    w.say(9, "Okay, heading to the garage now.");
    let s = w.snapshot().await;
    assert_eq!(s["phrases_closed"], 7, "{s}");
    let intents = w.intents().await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0].0, "garage");
}
