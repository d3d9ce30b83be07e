use std::sync::Arc;
use std::time::Duration;

use super::*;

fn piece(n: u64) -> Event {
    Event::Piece {
        tick: n,
        text: format!("piece {n}"),
    }
}

fn seq_of(p: &Published) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&p.json).expect("events are JSON");
    assert_eq!(v["seq"].as_u64(), Some(p.seq), "the JSON carries the seq");
    p.seq
}

#[test]
fn a_new_viewer_gets_the_newest_events_in_order_then_the_live_ones() {
    let bus = EventBus::new(4, 16);
    for n in 0..10 {
        bus.publish(piece(n));
    }
    let mut sub = bus.subscribe(None);
    let replayed: Vec<u64> = sub.replay.iter().map(|p| seq_of(p)).collect();
    assert_eq!(replayed, vec![7, 8, 9, 10], "the newest four, oldest first");
    bus.publish(piece(10));
    let live = sub.live.try_recv().expect("the next event arrives live");
    assert_eq!(live.seq, 11, "no gap and no repeat between replay and live");
    let v: serde_json::Value = serde_json::from_str(&live.json).unwrap();
    assert_eq!(v["kind"], "piece");
    assert_eq!(v["text"], "piece 10");
}

#[test]
fn a_viewer_resuming_after_a_seq_gets_only_what_came_after() {
    let bus = EventBus::new(8, 16);
    for n in 0..6 {
        bus.publish(piece(n));
    }
    let sub = bus.subscribe(Some(4));
    let replayed: Vec<u64> = sub.replay.iter().map(|p| p.seq).collect();
    assert_eq!(replayed, vec![5, 6]);
    assert_eq!(sub.missed, 0);
}

#[test]
fn a_viewer_resuming_after_what_is_kept_is_told_how_much_it_missed() {
    let bus = EventBus::new(3, 16);
    for n in 0..10 {
        bus.publish(piece(n));
    }
    let sub = bus.subscribe(Some(2));
    let replayed: Vec<u64> = sub.replay.iter().map(|p| p.seq).collect();
    assert_eq!(replayed, vec![8, 9, 10]);
    assert_eq!(sub.missed, 5, "events 3 to 7 are gone");
}

#[test]
fn a_viewer_that_falls_behind_skips_and_the_publisher_never_waits() {
    let bus = EventBus::new(4, 8);
    let mut slow = bus.subscribe(None);
    let started = std::time::Instant::now();
    for n in 0..10_000 {
        bus.publish(piece(n));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "publishing never waits for a viewer"
    );
    match slow.live.try_recv() {
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
            assert_eq!(n, 10_000 - 8, "it is told how many it skipped")
        }
        other => panic!("expected a lag notice, got {other:?}"),
    }
    let next = slow
        .live
        .try_recv()
        .expect("then it goes on from the oldest kept");
    assert_eq!(next.seq, 10_000 - 8 + 1);
}

#[test]
fn every_kind_round_trips_through_json() {
    let events = vec![
        Event::ActorStatus {
            actor: "tasks".into(),
            status: ActorStatus::Restarting,
            restarts: 2,
        },
        Event::ActorFailed {
            actor: "tasks".into(),
            reason: "boom".into(),
            restarting: true,
            restarts: 2,
        },
        piece(3),
        Event::Affect {
            emotion: "happy".into(),
            valence: 0.5,
            arousal: 0.25,
        },
        Event::Loop(LoopFigures::default()),
        Event::Actors { actors: vec![] },
        Event::Turn {
            figures: serde_json::json!({"turn": 1}),
        },
        Event::Lagged { skipped: 3 },
    ];
    for e in events {
        let text = serde_json::to_string(&e).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kind"], e.kind());
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }
}

#[test]
fn a_phrase_event_is_read_from_the_watchers_record() {
    let record = serde_json::json!({
        "text": "I'll bring you the cup.",
        "tick": 42,
        "closed_by": "punctuation",
        "intent": {"action": "bring", "object": "cup", "destination": null, "confidence": 0.9,
                   "detector": "rules+classifier", "score": 0.97, "repeat": false},
        "something_new": 1,
    });
    let Event::Phrase(p) = Event::phrase(&record) else {
        panic!("a phrase")
    };
    assert_eq!(p.text, "I'll bring you the cup.");
    assert_eq!(p.tick, 42);
    let intent = p.intent.expect("its intent");
    assert_eq!(intent.action, "bring");
    assert_eq!(intent.detector, "rules+classifier");
}

#[tokio::test]
async fn status_changes_and_failures_are_published_by_the_counters() {
    let bus = EventBus::new(16, 16);
    let stats = Arc::new(crate::slot::ActorStats::new("affect"));
    stats.attach_events(bus.clone());
    stats.set_status(ActorStatus::Running);
    stats.set_status(ActorStatus::Running); // no change, no event
    stats.record_failure("injected".into(), true);
    let kinds: Vec<serde_json::Value> = bus
        .subscribe(None)
        .replay
        .iter()
        .map(|p| serde_json::from_str(&p.json).unwrap())
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(kinds[0]["kind"], "actor_status");
    assert_eq!(kinds[0]["status"], "running");
    assert_eq!(kinds[1]["kind"], "actor_failed");
    assert_eq!(kinds[1]["reason"], "injected");
    assert_eq!(kinds[1]["restarts"], 1);
    assert_eq!(kinds[2]["status"], "restarting");
}
