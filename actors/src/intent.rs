//! The phrase grammar for physical tasks: "okay, I'll bring you the cup" or "put the book
//! on the shelf" -> action, object, destination. It reads commitments (what the creature
//! says it will do) and imperatives (what it is asked to do), and refuses questions,
//! negations and past tense ("I picked it up yesterday").

use crate::ports::{Action, PhysicalTask};

/// How a phrase expressed the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// "I'll bring you the cup."
    Commitment,
    /// "Bring me the cup."
    Imperative,
}

/// A physical task read from a phrase.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedTask {
    pub action: Action,
    pub object: String,
    pub destination: Option<String>,
    pub form: Form,
    pub confidence: f32,
}

impl ParsedTask {
    /// As tool-call arguments, keeping `utterance` for the record.
    pub fn into_task(self, utterance: &str) -> PhysicalTask {
        PhysicalTask {
            action: self.action,
            object: self.object,
            destination: self.destination,
            utterance: utterance.trim().chars().take(PhysicalTask::MAX_UTTERANCE).collect(),
            confidence: self.confidence,
        }
    }
}

/// Word sequences that commit the speaker to doing something next.
const COMMITMENTS: &[&[&str]] = &[
    &["i'll"],
    &["i", "will"],
    &["i'm", "going", "to"],
    &["i", "am", "going", "to"],
    &["i'm", "gonna"],
    &["let", "me"],
    &["i", "can"],
    &["i", "shall"],
    &["i'd", "be", "happy", "to"],
    &["i'd", "love", "to"],
    &["happy", "to"],
];

/// Openers that may precede an imperative.
const IMPERATIVE_OPENERS: &[&[&str]] = &[
    &["please"],
    &["okay"],
    &["ok"],
    &["hey"],
    &["now"],
    &["so"],
    &["go", "and"],
    &["can", "you"],
    &["could", "you"],
    &["would", "you"],
    &["will", "you"],
    &["can", "you", "please"],
    &["could", "you", "please"],
];

/// Adverbs allowed between the commitment and the verb ("I'll just go and grab it").
const FILLERS: &[&str] =
    &["go", "and", "just", "quickly", "now", "right", "gladly", "happily", "also", "then", "first", "quick"];

const NEGATIONS: &[&str] = &["not", "never", "don't", "won't", "can't", "cannot", "no"];

const RECIPIENTS: &[&str] = &["me", "you", "him", "her", "us", "them"];

const DETERMINERS: &[&str] = &[
    "the", "a", "an", "your", "my", "this", "that", "these", "those", "some", "his", "her",
    "our", "their", "its",
];

const PRONOUNS: &[&str] = &["it", "them", "this", "that", "something", "anything", "one"];

/// Words that end a noun phrase.
const NP_STOPS: &[&str] = &[
    "to", "on", "onto", "in", "into", "at", "from", "for", "over", "under", "next", "and",
    "please", "now", "right", "then", "so", "because", "okay", "ok", "up", "down", "back",
    "away", "if", "when", "while", "with", "soon", "later", "again", "too", "as", "real",
    "here", "there", "off", "out", "by", "beside", "behind", "near", "inside", "onto",
];

/// Prepositions that introduce where the thing should go.
const DESTINATION_PREPS: &[&[&str]] = &[
    &["next", "to"],
    &["on", "top", "of"],
    &["over", "to"],
    &["back", "to"],
    &["back", "on"],
    &["back", "in"],
    &["to"],
    &["on"],
    &["onto"],
    &["in"],
    &["into"],
    &["inside"],
    &["under"],
    &["beside"],
    &["behind"],
    &["near"],
    &["by"],
];

/// Verbs, as word sequences, with the action they mean.
const VERBS: &[(&[&str], Action)] = &[
    (&["pick", "up"], Action::PickUp),
    (&["put", "down"], Action::PutDown),
    (&["set", "down"], Action::PutDown),
    (&["hand", "over"], Action::Give),
    (&["bring"], Action::Bring),
    (&["fetch"], Action::Bring),
    (&["get"], Action::Bring),
    (&["carry"], Action::Bring),
    (&["grab"], Action::PickUp),
    (&["pick"], Action::PickUp),
    (&["take"], Action::PickUp),
    (&["lift"], Action::PickUp),
    (&["drop"], Action::PutDown),
    (&["give"], Action::Give),
    (&["hand"], Action::Give),
    (&["pass"], Action::Give),
    (&["put"], Action::Place),
    (&["place"], Action::Place),
    (&["set"], Action::Place),
    (&["move"], Action::Move),
    (&["push"], Action::Move),
    (&["slide"], Action::Move),
    (&["open"], Action::Open),
    (&["close"], Action::Close),
    (&["shut"], Action::Close),
];

/// Lowercase words with apostrophes kept and other punctuation gone.
pub fn words(phrase: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(phrase.len());
    for c in phrase.chars() {
        match c {
            '\u{2019}' | '\u{2018}' | '`' => cleaned.push('\''),
            c if c.is_alphanumeric() || c == '\'' || c == '-' => {
                cleaned.extend(c.to_lowercase());
            }
            _ => cleaned.push(' '),
        }
    }
    cleaned
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == '\'' || c == '-').to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

fn starts_with(words: &[String], seq: &[&str]) -> bool {
    words.len() >= seq.len() && words.iter().zip(seq).all(|(w, s)| w == s)
}

/// Read a physical task from a phrase, if it states one.
pub fn parse(phrase: &str) -> Option<ParsedTask> {
    let is_question = phrase.trim_end().ends_with('?');
    let w = words(phrase);
    if w.is_empty() {
        return None;
    }
    // Commitments anywhere in the phrase ("okay, sure, I'll get it").
    for start in 0..w.len() {
        for prefix in COMMITMENTS {
            if !starts_with(&w[start..], prefix) {
                continue;
            }
            // "I can bring it" in a question ("can I...?") is no commitment; neither is a
            // question like "shall I bring the cup?".
            if is_question {
                return None;
            }
            let mut i = start + prefix.len();
            while i < w.len() && FILLERS.contains(&w[i].as_str()) {
                i += 1;
            }
            if w[start + prefix.len()..i.min(w.len())].iter().any(|x| NEGATIONS.contains(&x.as_str()))
                || w.get(i).is_some_and(|x| NEGATIONS.contains(&x.as_str()))
            {
                return None;
            }
            if let Some(mut t) = verb_phrase(&w[i..]) {
                t.form = Form::Commitment;
                t.confidence = if t.confidence < 0.8 { 0.7 } else { 0.9 };
                return Some(t);
            }
        }
    }
    // Imperatives: the verb first, after polite openers.
    let mut i = 0;
    'openers: loop {
        for opener in IMPERATIVE_OPENERS.iter().rev() {
            if starts_with(&w[i..], opener) {
                i += opener.len();
                continue 'openers;
            }
        }
        break;
    }
    let polite_question = i > 0 && ["can", "could", "would", "will"].contains(&w[0].as_str());
    if is_question && !polite_question {
        return None;
    }
    let mut t = verb_phrase(&w[i..])?;
    t.form = Form::Imperative;
    t.confidence = if t.confidence < 0.8 { 0.6 } else { 0.75 };
    Some(t)
}

/// `verb [recipient] NP [particle] [preposition NP]`; confidence 0.9 when the object has a
/// determiner, lower for a bare noun.
fn verb_phrase(w: &[String]) -> Option<ParsedTask> {
    let &(verb, mut action) = VERBS.iter().find(|(seq, _)| starts_with(w, seq))?;
    let mut i = verb.len();
    let mut recipient = None;
    if let Some(r) = w.get(i).filter(|r| RECIPIENTS.contains(&r.as_str())) {
        // "give her the cup" vs "put her cup away": a recipient is followed by an NP.
        if w.get(i + 1).is_some_and(|n| DETERMINERS.contains(&n.as_str()) || !NP_STOPS.contains(&n.as_str())) {
            recipient = Some(r.clone());
            i += 1;
        }
    }
    let (object, had_determiner, used) = noun_phrase(&w[i..])?;
    i += used;
    // Particles after the object: "pick the cup up", "put the cup down".
    match (w.get(i).map(String::as_str), action) {
        (Some("up"), Action::PickUp) => i += 1,
        (Some("down"), Action::Place) => {
            action = Action::PutDown;
            i += 1;
        }
        (Some("down"), Action::PutDown) => i += 1,
        (Some("over"), Action::Give) => i += 1,
        _ => {}
    }
    // "pick" alone needs its particle ("pick the red one" is choosing, not lifting).
    if verb == &["pick"] && !w[..i].iter().any(|x| x == "up") {
        return None;
    }
    let mut destination = None;
    for prep in DESTINATION_PREPS {
        if starts_with(&w[i..], prep) {
            if let Some((dest, _, _)) = noun_phrase(&w[i + prep.len()..]) {
                destination = Some(dest);
            }
            break;
        }
    }
    // Verbs whose meaning depends on the rest of the phrase.
    action = match action {
        // "put the cup" with nowhere to put it is not a task.
        Action::Place if destination.is_none() => return None,
        // "take the cup to the kitchen" carries it somewhere.
        Action::PickUp if destination.is_some() && verb != &["pick", "up"] => Action::Bring,
        // "give it to me", "hand me the cup": a give.
        other => other,
    };
    let _ = recipient;
    Some(ParsedTask {
        action,
        object,
        destination,
        form: Form::Imperative,
        confidence: if had_determiner { 0.9 } else { 0.6 },
    })
}

/// A noun phrase: optional determiner, then up to four words before a stop word.
/// Returns the phrase (without determiner), whether it had one, and words consumed.
fn noun_phrase(w: &[String]) -> Option<(String, bool, usize)> {
    let mut i = 0;
    let had_determiner = w.first().is_some_and(|d| DETERMINERS.contains(&d.as_str()));
    if had_determiner {
        i += 1;
    }
    let start = i;
    while i < w.len() && i - start < 4 {
        let word = w[i].as_str();
        if NP_STOPS.contains(&word) || RECIPIENTS.contains(&word) && i > start {
            break;
        }
        if word == "of" {
            // "cup of tea": keep going only if a noun follows.
            if w.get(i + 1).is_none_or(|n| NP_STOPS.contains(&n.as_str())) {
                break;
            }
        }
        i += 1;
    }
    if i == start {
        return None;
    }
    let object = w[start..i].join(" ");
    if !had_determiner && PRONOUNS.contains(&w[start].as_str()) && i - start == 1 {
        return None; // "bring it": we cannot tell what "it" is
    }
    if had_determiner && i - start == 1 && PRONOUNS.contains(&w[start].as_str()) {
        return None; // "the one"
    }
    Some((object, had_determiner, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<(Action, String, Option<String>)> {
        parse(s).map(|t| (t.action, t.object, t.destination))
    }

    #[test]
    fn commitments_are_read() {
        assert_eq!(p("Okay, I'll bring you the cup."), Some((Action::Bring, "cup".into(), None)));
        assert_eq!(p("Sure, I'll pick up the red ball."), Some((Action::PickUp, "red ball".into(), None)));
        assert_eq!(
            p("Alright, I'll put the book on the shelf."),
            Some((Action::Place, "book".into(), Some("shelf".into())))
        );
        assert_eq!(p("let me just go and grab the keys"), Some((Action::PickUp, "keys".into(), None)));
        assert_eq!(p("I'm going to open the door"), Some((Action::Open, "door".into(), None)));
        assert_eq!(p("I'll pick the cup up"), Some((Action::PickUp, "cup".into(), None)));
        assert_eq!(p("I will put the plate down."), Some((Action::PutDown, "plate".into(), None)));
        assert_eq!(
            p("I'll take the cup of tea to the kitchen"),
            Some((Action::Bring, "cup of tea".into(), Some("kitchen".into())))
        );
        assert_eq!(p("I’ll fetch your slippers"), Some((Action::Bring, "slippers".into(), None)));
    }

    #[test]
    fn imperatives_are_read() {
        assert_eq!(p("bring me the cup"), Some((Action::Bring, "cup".into(), None)));
        assert_eq!(p("Please give me the remote."), Some((Action::Give, "remote".into(), None)));
        assert_eq!(p("can you close the window?"), Some((Action::Close, "window".into(), None)));
        assert_eq!(
            p("put the cup in the sink"),
            Some((Action::Place, "cup".into(), Some("sink".into())))
        );
        let t = parse("bring me the cup").unwrap();
        assert_eq!(t.form, Form::Imperative);
        assert!(t.confidence < parse("I'll bring you the cup").unwrap().confidence);
    }

    #[test]
    fn near_misses_are_refused() {
        for phrase in [
            "I like that cup",
            "I picked it up yesterday",
            "did you bring the cup?",
            "I won't bring the cup",
            "I'll never open that door",
            "shall I bring you the cup?",
            "bring it",
            "I'll put the cup",
            "the cup is on the table",
            "I brought you the cup",
            "I can't grab that",
            "pick the red one",
            "",
        ] {
            assert_eq!(parse(phrase), None, "{phrase:?} is not a task");
        }
    }

    #[test]
    fn words_normalizes_punctuation_and_case() {
        assert_eq!(words("Okay, I'll GET the cup!"), ["okay", "i'll", "get", "the", "cup"]);
        assert_eq!(words("I\u{2019}ll"), ["i'll"]);
    }
}
