use std::time::Instant;

use super::dataset::{self, Split};
use super::evaluation::{self, Report};
use super::*;
use crate::ports::Action;

fn train_split() -> Vec<Example> {
    dataset::split(dataset::embedded(), Split::Train)
}

fn held_out_split() -> Vec<Example> {
    dataset::split(dataset::embedded(), Split::HeldOut)
}

fn held_out_report() -> Report {
    evaluation::evaluate(
        IntentClassifier::embedded(),
        &held_out_split(),
        Thresholds::CHOSEN,
    )
}

#[test]
fn the_embedded_model_is_the_train_split_model_and_training_is_deterministic() {
    let train = train_split();
    let model = IntentClassifier::train(&train);
    assert_eq!(
        &model,
        IntentClassifier::embedded(),
        "held-out rows must not be trained on"
    );
    assert_eq!(model.trained_on(), train.len());
    assert!(train.len() < dataset::embedded().len());
}

#[test]
fn held_out_precision_and_recall_clear_their_floors() {
    let report = held_out_report();
    let c = report.combined;
    // Measured (docs/intent-watcher.md); the targets are precision 0.95 and
    // recall 0.93 with no request to the user firing.
    assert!(
        c.precision() >= 0.95,
        "combined precision {:.3}\n{report}",
        c.precision()
    );
    assert!(
        c.recall() >= 0.93,
        "combined recall {:.3}\n{report}",
        c.recall()
    );
    assert_eq!(
        report.kind("request").false_pos,
        0,
        "a request to the user fired\n{report}"
    );
    assert!(
        report.kind("request").true_neg >= 20,
        "the held-out split must hold requests\n{report}"
    );
    assert!(
        c.f1() > report.rules_v1.f1() + 0.1,
        "v3 must beat the v1 grammar\n{report}"
    );
    assert!(
        c.precision() >= report.rules.precision(),
        "the classifier must not lower the grammar's precision\n{report}"
    );
    let x = report.extraction;
    assert!(x.read >= 95, "{} tasks read\n{report}", x.read);
    assert!(
        x.share(x.action_and_object) >= 0.95,
        "action+object accuracy {:.3}\n{report}",
        x.share(x.action_and_object)
    );
    assert!(
        x.share(x.destination) >= 0.93,
        "destination accuracy {:.3}\n{report}",
        x.share(x.destination)
    );
}

#[test]
fn no_request_to_the_user_in_the_whole_set_fires() {
    let model = IntentClassifier::embedded();
    let fired: Vec<&str> = dataset::embedded()
        .iter()
        .filter(|e| e.kind == "request")
        .filter(|e| model.detect(&e.phrase).is_some())
        .map(|e| e.phrase.as_str())
        .collect();
    assert!(fired.is_empty(), "requests fired: {fired:?}");
}

#[test]
fn the_classifier_vetoes_near_misses_the_grammar_accepts() {
    let model = IntentClassifier::embedded();
    for phrase in [
        "I'll take the stairs",
        "I'll take the bus",
        "I'll take the day off",
        "I'll close the shop at five",
    ] {
        assert!(
            intent::parse_spoken(phrase).is_some(),
            "the grammar reads {phrase:?}"
        );
        assert!(
            matches!(model.decide(phrase), Decision::Vetoed { .. }),
            "{phrase:?} scored {:.2}",
            model.score(phrase)
        );
    }
}

#[test]
fn tasks_fire_with_their_slots() {
    let d = detect("okay, I'll bring you the cup").unwrap();
    assert_eq!(
        (d.task.action, d.task.object.as_str()),
        (Action::Bring, "cup")
    );
    assert_eq!(d.detector, Detector::RulesAndClassifier);
    assert!(d.task.confidence >= d.score.min(0.9));

    let d = detect("uh okay I'll grab the, um, the keys").unwrap();
    assert_eq!(
        (d.task.action, d.task.object.as_str()),
        (Action::PickUp, "keys")
    );

    let d = detect("I'll put the book on the shelf please").unwrap();
    assert_eq!(d.task.destination.as_deref(), Some("shelf"));

    let d = detect("okay, heading to the garage now").unwrap();
    assert_eq!(
        (d.task.action, d.task.destination.as_deref()),
        (Action::GoTo, Some("garage"))
    );

    for phrase in [
        "put the book on the shelf please",
        "could you close the window",
        "I picked it up yesterday",
        "did you bring the cup?",
        "I like that cup",
        "mm-hm",
    ] {
        assert_eq!(detect(phrase), None, "{phrase:?}");
    }
}

#[test]
fn the_classifier_rescues_what_the_grammar_refuses_below_a_rescue_threshold() {
    let phrase = "I'll, uh, carefully pick up the glass";
    assert_eq!(intent::parse_spoken(phrase), None);
    // The chosen thresholds never rescue (see `Thresholds::CHOSEN`).
    assert_eq!(detect(phrase), None);
    let thresholds = Thresholds {
        veto: Thresholds::CHOSEN.veto,
        rescue: 0.5,
    };
    let model = IntentClassifier::embedded();
    let d = model.decide_with(phrase, thresholds).detection().unwrap();
    assert_eq!(d.detector, Detector::Classifier);
    assert_eq!(
        (d.task.action, d.task.object.as_str()),
        (Action::PickUp, "glass")
    );
    assert!(d.task.confidence >= thresholds.rescue);
    // A request to the user is not rescued at any threshold: the loose reader refuses it.
    let request = "would you mind closing the window";
    assert_eq!(model.decide_with(request, thresholds).detection(), None);
}

#[test]
fn a_pronoun_resolved_from_the_previous_phrase_is_scored_spelled_out() {
    let model = IntentClassifier::embedded();
    assert_eq!(model.detect("okay, I'll grab it"), None);
    let d = model
        .decide_in_context("okay, I'll grab it", Some("cup"))
        .detection()
        .unwrap();
    assert_eq!(
        (d.task.action, d.task.object.as_str()),
        (Action::PickUp, "cup")
    );
    assert!(d.score >= Thresholds::CHOSEN.veto);
    // Context does not turn a near-miss into a task.
    assert!(
        model
            .decide_in_context("could you grab it", Some("cup"))
            .detection()
            .is_none()
    );
}

#[test]
fn an_untrained_model_leaves_the_rules_in_charge() {
    let model = IntentClassifier::train(&[]);
    assert_eq!(model.score("okay, I'll bring you the cup"), 0.5);
    let d = model.detect("okay, I'll bring you the cup").unwrap();
    assert_eq!(d.detector, Detector::Rules);
    assert_eq!(
        model.detect("I'll take the bus").unwrap().detector,
        Detector::Rules
    );
    assert_eq!(model.detect("would you mind closing the window"), None);
}

#[test]
fn any_input_scores_between_zero_and_one() {
    let model = IntentClassifier::embedded();
    let long = "bring me the cup ".repeat(2_000);
    for phrase in [
        "",
        " ",
        "?",
        "!!!",
        "\u{1F600}\u{1F600}",
        "é à ü",
        "uh um",
        &long,
        "\t\n",
    ] {
        let s = model.score(phrase);
        assert!((0.0..=1.0).contains(&s), "{phrase:?} -> {s}");
        let _ = model.decide(phrase);
    }
}

/// Prints the held-out report, the threshold search, a small hyperparameter sweep and
/// timings: `cargo test -p creature-actors --release classifier_report -- --ignored --nocapture`.
#[test]
#[ignore = "a report for people; run with --release --ignored --nocapture"]
#[allow(clippy::print_stdout)]
fn classifier_report() {
    let all = dataset::embedded();
    let train = train_split();
    let tasks = all.iter().filter(|e| e.is_task()).count();
    println!(
        "phrase set: {} phrases, {} tasks, {} near-misses",
        all.len(),
        tasks,
        all.len() - tasks
    );
    println!(
        "train split: {} ({} tasks); held-out: {}",
        train.len(),
        train.iter().filter(|e| e.is_task()).count(),
        all.len() - train.len()
    );

    println!("\n5-fold cross-validation on the train split (combined F1 at the best thresholds):");
    let base = TrainConfig::default();
    for (epochs, learning_rate, l2) in [
        (6, 0.3, 1e-4),
        (12, 0.3, 1e-4),
        (24, 0.3, 1e-4),
        (12, 0.1, 1e-4),
        (12, 1.0, 1e-4),
        (12, 0.3, 1e-3),
        (12, 0.3, 1e-5),
    ] {
        let config = TrainConfig {
            epochs,
            learning_rate,
            l2,
            ..base.clone()
        };
        let scores = evaluation::out_of_fold_scores(&train, 5, &config);
        let search = evaluation::choose_thresholds(&train, &scores);
        println!(
            "  epochs {epochs:>2} lr {learning_rate:<4} l2 {l2:<7}  classifier F1 {:.3}  combined F1 {:.3} (P {:.3} R {:.3}) at veto {:.2} rescue {:.2}{}",
            search.classifier_counts.f1(),
            search.best_counts.f1(),
            search.best_counts.precision(),
            search.best_counts.recall(),
            search.best.veto,
            search.best.rescue,
            if config == base { "  <- default" } else { "" }
        );
    }
    let scores = evaluation::out_of_fold_scores(&train, 5, &base);
    let search = evaluation::choose_thresholds(&train, &scores);
    println!(
        "chosen on the train split: {:?}; in code: {:?}",
        search.best,
        Thresholds::CHOSEN
    );
    if std::env::var_os("CLASSIFIER_REPORT_TRAIN_ERRORS").is_some() {
        println!("\nout-of-fold errors on the train split at the chosen thresholds:");
        for e in evaluation::errors(&train, &scores, search.best) {
            println!(
                "  {:<14} {:.2}  {:?}: {}",
                e.kind, e.score, e.phrase, e.detail
            );
        }
    }

    let model = IntentClassifier::train(&train);
    print_timings(&model);

    // Development looks at the train split's out-of-fold errors; this is the final score.
    if std::env::var_os("CLASSIFIER_REPORT_SKIP_HELD_OUT").is_none() {
        println!(
            "{}",
            evaluation::evaluate(&model, &held_out_split(), Thresholds::CHOSEN)
        );
    }
}

/// Prints how long the first use (read the set, split, train) and each decision take:
/// `cargo test -p creature-actors [--release] classifier_timing -- --ignored --nocapture`.
#[test]
#[ignore = "a report for people; run with --ignored --nocapture, in debug and in release"]
#[allow(clippy::print_stdout)]
fn classifier_timing() {
    let started = Instant::now();
    let examples = dataset::parse_tsv(dataset::EMBEDDED_TSV).unwrap();
    let train = dataset::split(&examples, Split::Train);
    let model = IntentClassifier::train(&train);
    let cold = started.elapsed();
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "{build} build: read + split + train on {} phrases: {:.1} ms",
        train.len(),
        cold.as_secs_f64() * 1e3
    );
    print_timings(&model);
}

#[allow(clippy::print_stdout)]
fn print_timings(model: &IntentClassifier) {
    let started = Instant::now();
    let train = train_split();
    let _ = IntentClassifier::train(&train);
    println!(
        "training alone on {} phrases: {:.1} ms",
        train.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut phrases: Vec<String> = dataset::embedded()
        .iter()
        .map(|e| e.phrase.clone())
        .collect();
    // The longest phrase the watcher closes (max_phrase_chars, 240).
    let long: String =
        "okay so um I was thinking, you know, that I'll go and grab the big red cup ".repeat(4);
    phrases.push(long.chars().take(240).collect());
    let mut micros: Vec<f64> = Vec::with_capacity(phrases.len() * 10);
    for _ in 0..10 {
        for phrase in &phrases {
            let started = Instant::now();
            let _ = std::hint::black_box(model.decide(std::hint::black_box(phrase)));
            micros.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    println!(
        "decide() over {} calls: mean {mean:.1} µs, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        micros.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    let started = Instant::now();
    let last = phrases.last().map(String::as_str).unwrap_or_default();
    for _ in 0..100 {
        let _ = std::hint::black_box(model.decide(std::hint::black_box(last)));
    }
    println!(
        "decide() on a 240-character phrase: {:.1} µs",
        started.elapsed().as_secs_f64() * 1e4
    );
}

/// Prints the watcher's decision on each phrase of `CLASSIFIER_EXPLAIN` (separated by `|`),
/// with the grammar's and the loose reader's readings: for looking into one phrase.
#[test]
#[ignore = "a tool for people; run with --ignored --nocapture"]
#[allow(clippy::print_stdout)]
fn classifier_explain() {
    let model = IntentClassifier::embedded();
    let phrases = std::env::var("CLASSIFIER_EXPLAIN").unwrap_or_default();
    for phrase in phrases.split('|').filter(|p| !p.trim().is_empty()) {
        println!(
            "{phrase:?}\n  decision {:?}\n  grammar {:?}\n  loose {:?}",
            model.decide(phrase),
            intent::parse_spoken(phrase),
            intent::extract(phrase)
        );
    }
}
