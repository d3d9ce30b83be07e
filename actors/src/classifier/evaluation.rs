//! Scoring the watcher: precision, recall and F1 on the held-out split for the rules alone,
//! the classifier alone and the two combined, how well the slots are read, and the search
//! that picks the thresholds from out-of-fold scores on the train split.

use std::fmt;

use super::dataset::Example;
use super::{Decision, IntentClassifier, Thresholds, TrainConfig, combine};
use crate::intent::{self, ParsedTask};
use crate::ports::Action;

/// A confusion matrix for "is this phrase a task".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub true_pos: usize,
    pub false_pos: usize,
    pub false_neg: usize,
    pub true_neg: usize,
}

impl Counts {
    fn add(&mut self, predicted: bool, actual: bool) {
        match (predicted, actual) {
            (true, true) => self.true_pos += 1,
            (true, false) => self.false_pos += 1,
            (false, true) => self.false_neg += 1,
            (false, false) => self.true_neg += 1,
        }
    }

    /// Of the phrases fired on, the share that were tasks (1 when nothing fired).
    pub fn precision(&self) -> f64 {
        ratio(self.true_pos, self.true_pos + self.false_pos, 1.0)
    }

    /// Of the tasks, the share fired on (1 when there were none).
    pub fn recall(&self) -> f64 {
        ratio(self.true_pos, self.true_pos + self.false_neg, 1.0)
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(num: usize, den: usize, empty: f64) -> f64 {
    if den == 0 {
        empty
    } else {
        num as f64 / den as f64
    }
}

/// How the slots of the tasks the combined detector fired on compare with the labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractionScore {
    /// Tasks fired on (true positives): the denominator.
    pub read: usize,
    pub action: usize,
    /// The object exactly as labeled ("red ball").
    pub object: usize,
    /// The object's last word as labeled ("ball" of "red ball"): the thing is right even
    /// when a modifier is lost or gained.
    pub object_head: usize,
    pub action_and_object: usize,
    /// The destination as labeled, absence included.
    pub destination: usize,
}

impl ExtractionScore {
    fn add(&mut self, read: &ParsedTask, example: &Example) {
        let Some(gold) = &example.task else { return };
        let head = |s: &str| s.rsplit(' ').next().map(str::to_string);
        self.read += 1;
        let action = read.action == gold.action;
        let object = read.object == gold.object;
        self.action += usize::from(action);
        self.object += usize::from(object);
        self.object_head += usize::from(head(&read.object) == head(&gold.object));
        self.action_and_object += usize::from(action && object);
        self.destination += usize::from(read.destination == gold.destination);
    }

    /// A count as a share of the tasks read.
    pub fn share(&self, count: usize) -> f64 {
        ratio(count, self.read, 1.0)
    }
}

/// One phrase the combined detector got wrong, for people to read.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorCase {
    /// "false positive", "missed" or "wrong slots".
    pub kind: &'static str,
    pub phrase: String,
    pub score: f32,
    /// What the detector read, or the grammar's reading it vetoed, and what was labeled.
    pub detail: String,
}

/// The held-out evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub trained_on: usize,
    pub held_out: usize,
    pub held_out_tasks: usize,
    pub thresholds: Thresholds,
    /// [`intent::parse`] as the watcher used it before the classifier.
    pub rules_v1: Counts,
    /// [`intent::parse_spoken`]: the rule half of the combined detector.
    pub rules: Counts,
    /// The classifier alone: a task when the score is 0.5 or more.
    pub classifier: Counts,
    /// [`IntentClassifier::decide_with`].
    pub combined: Counts,
    pub extraction: ExtractionScore,
    /// What the classifier changed: grammar readings vetoed and refusals rescued, split by
    /// whether the phrase was a task (`true_pos` = a rescued task, `false_neg` = a vetoed task).
    pub vetoes_and_rescues: Counts,
    /// The combined detector per action: `true_pos` fired with the labeled action,
    /// `false_pos` fired reading this action on a near-miss or on a task of another action,
    /// `false_neg` a task of this action missed or read as another action.
    pub per_action: Vec<(Action, Counts)>,
    /// The combined detector on each kind of phrase (the `# kind:` tags of the set).
    pub per_kind: Vec<(String, Counts)>,
    pub errors: Vec<ErrorCase>,
}

impl Report {
    /// The counts of one kind of phrase (all zero when the split has none).
    pub fn kind(&self, kind: &str) -> Counts {
        self.per_kind
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }
}

/// Everything the detectors need to know about one phrase, computed once.
struct Judged<'a> {
    example: &'a Example,
    rules_v1: bool,
    rules: Option<ParsedTask>,
    loose: Option<ParsedTask>,
    score: f32,
}

impl Judged<'_> {
    fn decide(&self, thresholds: Thresholds) -> Decision {
        combine(self.rules.clone(), self.score, thresholds, || {
            self.loose.clone()
        })
    }
}

fn judge<'a>(examples: &'a [Example], scores: &[f32]) -> Vec<Judged<'a>> {
    examples
        .iter()
        .zip(scores)
        .map(|(example, &score)| Judged {
            example,
            rules_v1: intent::parse(&example.phrase).is_some(),
            rules: intent::parse_spoken(&example.phrase),
            loose: intent::extract(&example.phrase),
            score,
        })
        .collect()
}

/// Score `model` on `held_out` (which it must not have been trained on).
pub fn evaluate(model: &IntentClassifier, held_out: &[Example], thresholds: Thresholds) -> Report {
    let scores: Vec<f32> = held_out.iter().map(|e| model.score(&e.phrase)).collect();
    let mut report = Report {
        trained_on: model.trained_on(),
        held_out: held_out.len(),
        held_out_tasks: held_out.iter().filter(|e| e.is_task()).count(),
        thresholds,
        rules_v1: Counts::default(),
        rules: Counts::default(),
        classifier: Counts::default(),
        combined: Counts::default(),
        extraction: ExtractionScore::default(),
        vetoes_and_rescues: Counts::default(),
        per_action: Action::ALL
            .iter()
            .map(|&a| (a, Counts::default()))
            .collect(),
        per_kind: Vec::new(),
        errors: Vec::new(),
    };
    for j in judge(held_out, &scores) {
        let actual = j.example.is_task();
        let fired = match j.decide(thresholds) {
            Decision::Fire(d) => Some(d.task.action),
            _ => None,
        };
        let labeled = j.example.task.as_ref().map(|t| t.action);
        for (action, counts) in &mut report.per_action {
            match (fired == Some(*action), labeled == Some(*action)) {
                (true, true) => counts.true_pos += 1,
                (true, false) => counts.false_pos += 1,
                (false, true) => counts.false_neg += 1,
                (false, false) => {}
            }
        }
        let kind = j.example.kind.as_str();
        match report.per_kind.iter_mut().find(|(k, _)| k == kind) {
            Some((_, counts)) => counts.add(fired.is_some(), actual),
            None => {
                let mut counts = Counts::default();
                counts.add(fired.is_some(), actual);
                report.per_kind.push((kind.to_string(), counts));
            }
        }
        report.rules_v1.add(j.rules_v1, actual);
        report.rules.add(j.rules.is_some(), actual);
        report.classifier.add(j.score >= 0.5, actual);
        let decision = j.decide(thresholds);
        match &decision {
            Decision::Vetoed { .. } => report.vetoes_and_rescues.add(false, actual),
            Decision::Fire(d) if d.detector == super::Detector::Classifier => {
                report.vetoes_and_rescues.add(true, actual);
            }
            _ => {}
        }
        let gold = j
            .example
            .task
            .as_ref()
            .map(|t| describe(t.action.as_str(), &t.object, t.destination.as_deref()));
        match (&decision, &gold) {
            (Decision::Fire(d), Some(gold)) => {
                report.combined.add(true, true);
                report.extraction.add(&d.task, j.example);
                let read = describe_task(&d.task);
                if &read != gold {
                    report.errors.push(error(
                        "wrong slots",
                        &j,
                        format!("read {read}, labeled {gold}"),
                    ));
                }
            }
            (Decision::Fire(d), None) => {
                report.combined.add(true, false);
                let detail = format!("{} read {}", d.detector.as_str(), describe_task(&d.task));
                report.errors.push(error("false positive", &j, detail));
            }
            (Decision::Vetoed { task, .. }, Some(gold)) => {
                report.combined.add(false, true);
                let detail = format!(
                    "vetoed the grammar's {}, labeled {gold}",
                    describe_task(task)
                );
                report.errors.push(error("missed", &j, detail));
            }
            (Decision::NoTask { .. }, Some(gold)) => {
                report.combined.add(false, true);
                let loose = j
                    .loose
                    .as_ref()
                    .map_or("nothing".to_string(), describe_task);
                let detail = format!("grammar refused, loose reading {loose}, labeled {gold}");
                report.errors.push(error("missed", &j, detail));
            }
            (Decision::Vetoed { .. } | Decision::NoTask { .. }, None) => {
                report.combined.add(false, false)
            }
        }
    }
    report
}

fn error(kind: &'static str, j: &Judged<'_>, detail: String) -> ErrorCase {
    ErrorCase {
        kind,
        phrase: j.example.phrase.clone(),
        score: j.score,
        detail,
    }
}

fn describe_task(t: &ParsedTask) -> String {
    describe(t.action.as_str(), &t.object, t.destination.as_deref())
}

fn describe(action: &str, object: &str, destination: Option<&str>) -> String {
    match destination {
        Some(d) => format!("{action}({object} -> {d})"),
        None => format!("{action}({object})"),
    }
}

/// Each example's score from a model trained on the other folds (fold = position modulo
/// `folds`; the set is grouped by kind of phrase, so every fold sees every kind).
pub fn out_of_fold_scores(train: &[Example], folds: usize, config: &TrainConfig) -> Vec<f32> {
    let folds = folds.max(2);
    let mut scores = vec![0.0; train.len()];
    for fold in 0..folds {
        let fit: Vec<Example> = train
            .iter()
            .enumerate()
            .filter(|(i, _)| i % folds != fold)
            .map(|(_, e)| e.clone())
            .collect();
        let model = IntentClassifier::train_with(&fit, config);
        for (i, e) in train.iter().enumerate().filter(|(i, _)| i % folds == fold) {
            scores[i] = model.score(&e.phrase);
        }
    }
    scores
}

/// The result of the threshold search.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdSearch {
    /// The thresholds with the best F1 (ties: higher precision, then fewer vetoes).
    pub best: Thresholds,
    pub best_counts: Counts,
    /// The classifier alone at 0.5 on the same scores, for comparison.
    pub classifier_counts: Counts,
}

/// Grid-search the veto (0 to 0.7) and rescue (0.5 to 0.95, or never) thresholds for the
/// combined detector's F1 on `train` with `scores` (out-of-fold, so not overfitted).
pub fn choose_thresholds(train: &[Example], scores: &[f32]) -> ThresholdSearch {
    let judged = judge(train, scores);
    let mut classifier_counts = Counts::default();
    for j in &judged {
        classifier_counts.add(j.score >= 0.5, j.example.is_task());
    }
    let vetoes = (0..=14).map(|i| i as f32 * 0.05);
    let rescues: Vec<f32> = (10..=19).map(|i| i as f32 * 0.05).chain([1.01]).collect();
    let mut best: Option<(Thresholds, Counts)> = None;
    for veto in vetoes {
        for &rescue in &rescues {
            let thresholds = Thresholds { veto, rescue };
            let mut counts = Counts::default();
            for j in &judged {
                counts.add(
                    matches!(j.decide(thresholds), Decision::Fire(_)),
                    j.example.is_task(),
                );
            }
            let better = match &best {
                None => true,
                Some((_, b)) => (counts.f1(), counts.precision()) > (b.f1() + 1e-9, b.precision()),
            };
            if better {
                best = Some((thresholds, counts));
            }
        }
    }
    let (best, best_counts) = best.unwrap_or((Thresholds::CHOSEN, Counts::default()));
    ThresholdSearch {
        best,
        best_counts,
        classifier_counts,
    }
}

/// The combined detector's errors on `examples` with `scores` and `thresholds`: for the
/// out-of-fold errors of the train split, which development may look at freely.
pub fn errors(examples: &[Example], scores: &[f32], thresholds: Thresholds) -> Vec<ErrorCase> {
    let mut out = Vec::new();
    for j in judge(examples, scores) {
        let gold = j
            .example
            .task
            .as_ref()
            .map(|t| describe(t.action.as_str(), &t.object, t.destination.as_deref()));
        match (j.decide(thresholds), gold) {
            (Decision::Fire(d), Some(gold)) if describe_task(&d.task) != gold => {
                out.push(error(
                    "wrong slots",
                    &j,
                    format!("read {}, labeled {gold}", describe_task(&d.task)),
                ));
            }
            (Decision::Fire(d), None) => {
                let detail = format!("{} read {}", d.detector.as_str(), describe_task(&d.task));
                out.push(error("false positive", &j, detail));
            }
            (Decision::Vetoed { task, .. }, Some(gold)) => {
                out.push(error(
                    "missed",
                    &j,
                    format!("vetoed {}, labeled {gold}", describe_task(&task)),
                ));
            }
            (Decision::NoTask { .. }, Some(gold)) => {
                let loose = j
                    .loose
                    .as_ref()
                    .map_or("nothing".to_string(), describe_task);
                out.push(error(
                    "missed",
                    &j,
                    format!("loose reading {loose}, labeled {gold}"),
                ));
            }
            _ => {}
        }
    }
    out
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>4} {:>4} {:>4} {:>4}   {:>9.3} {:>7.3} {:>6.3}",
            self.true_pos,
            self.false_pos,
            self.false_neg,
            self.true_neg,
            self.precision(),
            self.recall(),
            self.f1()
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "held-out split: {} phrases ({} tasks, {} near-misses); model trained on {} phrases",
            self.held_out,
            self.held_out_tasks,
            self.held_out - self.held_out_tasks,
            self.trained_on
        )?;
        writeln!(
            f,
            "thresholds: veto below {:.2}, rescue from {:.2}",
            self.thresholds.veto, self.thresholds.rescue
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "detector                 TP   FP   FN   TN   precision  recall     F1"
        )?;
        writeln!(f, "rules v1 (parse)       {}", self.rules_v1)?;
        writeln!(f, "rules (parse_spoken)   {}", self.rules)?;
        writeln!(f, "classifier (p >= 0.5)  {}", self.classifier)?;
        writeln!(f, "combined (detect)      {}", self.combined)?;
        let v = &self.vetoes_and_rescues;
        writeln!(
            f,
            "combined vs the grammar: vetoed {} near-misses and {} tasks; rescued {} tasks and {} near-misses",
            v.true_neg, v.false_neg, v.true_pos, v.false_pos
        )?;
        writeln!(f)?;
        let x = &self.extraction;
        writeln!(
            f,
            "slots of the {} held-out tasks the combined detector fired on:",
            x.read
        )?;
        writeln!(
            f,
            "  action {:.3}  object {:.3}  object head {:.3}  action+object {:.3}  destination {:.3}",
            x.share(x.action),
            x.share(x.object),
            x.share(x.object_head),
            x.share(x.action_and_object),
            x.share(x.destination)
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "per action (combined)    TP   FP   FN   TN   precision  recall     F1"
        )?;
        for (action, c) in &self.per_action {
            writeln!(f, "  {:<20} {c}", action.as_str())?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "per kind (combined)      TP   FP   FN   TN   precision  recall     F1"
        )?;
        for (kind, c) in &self.per_kind {
            writeln!(f, "  {kind:<20} {c}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "errors of the combined detector ({}):",
            self.errors.len()
        )?;
        for e in &self.errors {
            writeln!(
                f,
                "  {:<14} {:.2}  {:?}: {}",
                e.kind, e.score, e.phrase, e.detail
            )?;
        }
        Ok(())
    }
}
