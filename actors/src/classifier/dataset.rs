//! The labeled phrase set the classifier learns from (`actors/data/intent_phrases.tsv`,
//! embedded in the binary) and its fixed train/held-out split.

use std::sync::OnceLock;

use crate::intent;
use crate::ports::Action;

/// The phrase set, as committed. Columns: label, action, object, destination, phrase.
pub const EMBEDDED_TSV: &str = include_str!("../../data/intent_phrases.tsv");

/// One in this many phrases is held out (by hash, see [`split_of`]).
const HELD_OUT_ONE_IN: u64 = 5;

/// One labeled phrase.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The phrase as it might appear in the inner monologue.
    pub phrase: String,
    /// The task a label-1 phrase asks for; `None` for a near-miss (label 0).
    pub task: Option<LabeledTask>,
    /// The kind of phrase it tests, from the last `# kind: NAME` comment above it
    /// ([`UNSORTED`] before any): the evaluation reports precision and recall per kind.
    pub kind: String,
}

/// The kind of a row with no `# kind:` comment above it.
pub const UNSORTED: &str = "unsorted";

impl Example {
    /// Whether the creature should act on this phrase (label 1).
    pub fn is_task(&self) -> bool {
        self.task.is_some()
    }

    /// Which side of the fixed split this phrase falls on.
    pub fn split(&self) -> Split {
        split_of(&self.phrase)
    }
}

/// The slots a label-1 phrase should be read as, for scoring extraction.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledTask {
    pub action: Action,
    /// The object as the grammar names it: no determiner, lowercase ("red ball").
    pub object: String,
    /// Where the object should end up, if the phrase says.
    pub destination: Option<String>,
}

/// The two sides of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Used to fit weights and to choose thresholds.
    Train,
    /// Never trained on; only scored.
    HeldOut,
}

/// The split of a phrase: a hash (64-bit FNV-1a) of its normalized words, so the split
/// never changes when rows are added, reordered or re-punctuated, and two phrases with the
/// same words always land on the same side.
pub fn split_of(phrase: &str) -> Split {
    let mut hash = Fnv::new();
    for word in intent::words(phrase) {
        hash.write(word.as_bytes());
        hash.write(b" ");
    }
    if hash.finish() % HELD_OUT_ONE_IN == 0 {
        Split::HeldOut
    } else {
        Split::Train
    }
}

/// A row of the TSV that could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("intent_phrases.tsv line {line}: {reason}")]
pub struct DatasetError {
    pub line: usize,
    pub reason: String,
}

/// Read the TSV: a header row, `#` comments and blank lines are skipped.
pub fn parse_tsv(text: &str) -> Result<Vec<Example>, DatasetError> {
    let mut examples = Vec::new();
    let mut kind = UNSORTED.to_string();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let err = |reason: String| DatasetError { line, reason };
        if let Some(name) = raw.strip_prefix("# kind:") {
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                return Err(err(format!("a kind is a lowercase_name, not {name:?}")));
            }
            kind = name.to_string();
            continue;
        }
        if raw.trim().is_empty() || raw.starts_with('#') || raw.starts_with("label\t") {
            continue;
        }
        let cols: Vec<&str> = raw.split('\t').collect();
        let [label, action, object, destination, phrase] = cols[..] else {
            return Err(err(format!(
                "expected 5 tab-separated columns, found {}",
                cols.len()
            )));
        };
        let phrase = phrase.trim();
        if phrase.is_empty() {
            return Err(err("empty phrase".into()));
        }
        let task = match label {
            "0" => {
                if !(action.is_empty() && object.is_empty() && destination.is_empty()) {
                    return Err(err("a label-0 row names a task".into()));
                }
                None
            }
            "1" => {
                let action = Action::from_name(action)
                    .ok_or_else(|| err(format!("unknown action {action:?}")))?;
                if object.trim().is_empty() {
                    return Err(err("a label-1 row has no object".into()));
                }
                Some(LabeledTask {
                    action,
                    object: object.trim().to_lowercase(),
                    destination: Some(destination.trim().to_lowercase()).filter(|d| !d.is_empty()),
                })
            }
            other => return Err(err(format!("label must be 0 or 1, not {other:?}"))),
        };
        examples.push(Example {
            phrase: phrase.to_string(),
            task,
            kind: kind.clone(),
        });
    }
    Ok(examples)
}

/// The embedded phrase set, read once. It is checked by the tests, so an error here means
/// a broken build; it is logged and the set is empty, which leaves the rules alone in charge.
pub fn embedded() -> &'static [Example] {
    static EXAMPLES: OnceLock<Vec<Example>> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        parse_tsv(EMBEDDED_TSV).unwrap_or_else(|err| {
            tracing::error!(cause = %err, "the embedded intent phrase set is unreadable");
            Vec::new()
        })
    })
}

/// The examples on one side of the split.
pub fn split(examples: &[Example], side: Split) -> Vec<Example> {
    examples
        .iter()
        .filter(|e| e.split() == side)
        .cloned()
        .collect()
}

/// 64-bit FNV-1a: tiny, fast on short strings, and the same on every platform and release,
/// which the split and the feature hashing both rely on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(crate) fn new() -> Self {
        Fnv(Self::OFFSET)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
        self
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_set_reads_whole() {
        let examples = parse_tsv(EMBEDDED_TSV).unwrap();
        assert_eq!(examples.len(), embedded().len());
        assert!(examples.len() >= 1500, "{} phrases", examples.len());
        assert!(
            examples.iter().all(|e| e.kind != UNSORTED),
            "every row has a kind"
        );
        let positives = examples.iter().filter(|e| e.is_task()).count();
        let share = positives as f64 / examples.len() as f64;
        assert!((0.35..0.65).contains(&share), "label balance {share:.2}");
    }

    #[test]
    fn every_action_and_every_error_kind_has_its_phrases() {
        let examples = embedded();
        for action in Action::ALL {
            let n = examples
                .iter()
                .filter(|e| e.task.as_ref().is_some_and(|t| t.action == action))
                .count();
            assert!(n >= 15, "{} has {n} phrases", action.as_str());
        }
        for kind in [
            "new_action",
            "request",
            "idiom",
            "benefactive",
            "clause",
            "resultative",
            "particle",
            "pronoun",
            "past",
            "hypothetical",
        ] {
            let n = examples.iter().filter(|e| e.kind == kind).count();
            assert!(n >= 12, "{kind} has {n} phrases");
        }
        // Every action's argument rule holds in the labels.
        for e in examples {
            if let Some(t) = &e.task {
                let rule = t.action.destination_rule();
                let ok = match rule {
                    crate::ports::DestinationRule::Required => t.destination.is_some(),
                    crate::ports::DestinationRule::Forbidden => t.destination.is_none(),
                    crate::ports::DestinationRule::Optional => true,
                };
                assert!(ok, "{:?} breaks {rule:?}", e.phrase);
            }
        }
    }

    #[test]
    fn kinds_are_read_from_comments() {
        let text = "0\t\t\t\thello\n# kind: idiom\n0\t\t\t\tI'll take a look\n";
        let rows = parse_tsv(text).unwrap();
        assert_eq!(rows[0].kind, UNSORTED);
        assert_eq!(rows[1].kind, "idiom");
        assert_eq!(parse_tsv("# kind: Bad Name\n").unwrap_err().line, 1);
    }

    #[test]
    fn no_phrase_appears_twice() {
        let mut seen = std::collections::HashSet::new();
        for e in embedded() {
            assert!(
                seen.insert(intent::words(&e.phrase)),
                "duplicate phrase {:?}",
                e.phrase
            );
        }
    }

    #[test]
    fn the_split_is_fixed_and_about_one_in_five() {
        let examples = embedded();
        let held: Vec<_> = examples
            .iter()
            .filter(|e| e.split() == Split::HeldOut)
            .collect();
        let share = held.len() as f64 / examples.len() as f64;
        assert!((0.15..0.25).contains(&share), "held-out share {share:.3}");
        let positives = held.iter().filter(|e| e.is_task()).count();
        assert!(
            positives >= 50 && held.len() - positives >= 50,
            "{positives} of {}",
            held.len()
        );
        // Punctuation and case do not move a phrase across the split.
        assert_eq!(
            split_of("Okay, I'll bring the cup!"),
            split_of("okay i'll bring the cup")
        );
    }

    #[test]
    fn bad_rows_are_reported_with_their_line() {
        let bad = "label\taction\tobject\tdestination\tphrase\n1\tfly\tcup\t\tfly the cup\n";
        assert_eq!(parse_tsv(bad).unwrap_err().line, 2);
        assert!(parse_tsv("1\tbring\t\t\tbring it\n").is_err());
        assert!(parse_tsv("0\tbring\tcup\t\tbring the cup\n").is_err());
        assert!(parse_tsv("2\t\t\t\thello\n").is_err());
        assert!(parse_tsv("1\tbring\tcup\n").is_err());
        assert_eq!(parse_tsv("# comment\n\n0\t\t\t\thello\n").unwrap().len(), 1);
    }
}
