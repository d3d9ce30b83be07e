//! The phrase grammar for physical tasks: "okay, I'll bring you the cup" or "put the book
//! on the shelf" -> action, object, destination. It reads commitments (what the creature
//! says it will do) and imperatives (what it is asked to do), and refuses questions,
//! negations and past tense ("I picked it up yesterday"). [`parse`] is that grammar as v1
//! of the watcher used it; [`parse_spoken`] reads the same grammar over speech as it comes
//! (hesitations, restarts, clause breaks), and [`extract`] is a looser reading that the
//! trained classifier in [`crate::classifier`] may act on when the grammar refuses.

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
            utterance: utterance
                .trim()
                .chars()
                .take(PhysicalTask::MAX_UTTERANCE)
                .collect(),
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
const FILLERS: &[&str] = &[
    "go", "and", "just", "quickly", "now", "right", "gladly", "happily", "also", "then", "first",
    "quick",
];

const NEGATIONS: &[&str] = &["not", "never", "don't", "won't", "can't", "cannot", "no"];

/// Who a thing can be brought to ("bring *me* the cup").
pub const RECIPIENTS: &[&str] = &["me", "you", "him", "her", "us", "them"];

/// Words that open a noun phrase.
pub const DETERMINERS: &[&str] = &[
    "the", "a", "an", "your", "my", "this", "that", "these", "those", "some", "his", "her", "our",
    "their", "its",
];

const PRONOUNS: &[&str] = &["it", "them", "this", "that", "something", "anything", "one"];

/// Words that end a noun phrase.
const NP_STOPS: &[&str] = &[
    "to", "on", "onto", "in", "into", "at", "from", "for", "over", "under", "next", "and",
    "please", "now", "right", "then", "so", "because", "okay", "ok", "up", "down", "back", "away",
    "if", "when", "while", "with", "soon", "later", "again", "too", "as", "real", "here", "there",
    "off", "out", "by", "beside", "behind", "near", "inside", "onto",
];

/// Prepositions that introduce where the thing should go; the ones of several words first,
/// so "next to" wins over "to".
pub const DESTINATION_PREPS: &[&[&str]] = &[
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
    tokens(phrase, false)
}

/// Marks a clause boundary (a comma, a dash, a sentence end inside the phrase) among
/// [`spoken_words`].
pub const CLAUSE_BREAK: &str = ",";

/// Lowercase words; with `breaks`, clause punctuation becomes a [`CLAUSE_BREAK`] token.
fn tokens(phrase: &str, breaks: bool) -> Vec<String> {
    let mut cleaned = String::with_capacity(phrase.len() + 8);
    for c in phrase.chars() {
        match c {
            '\u{2019}' | '\u{2018}' | '`' => cleaned.push('\''),
            c if c.is_alphanumeric() || c == '\'' || c == '-' => {
                cleaned.extend(c.to_lowercase());
            }
            ',' | ';' | ':' | '.' | '!' | '?' | '\u{2013}' | '\u{2014}' if breaks => {
                cleaned.push_str(" , ");
            }
            _ => cleaned.push(' '),
        }
    }
    cleaned
        .split_whitespace()
        .map(|w| {
            if w == CLAUSE_BREAK {
                w
            } else {
                w.trim_matches(|c| c == '\'' || c == '-')
            }
        })
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Hesitations that carry nothing for the task ("uh", "um").
const DISFLUENCIES: &[&str] = &[
    "uh", "uhh", "uhm", "um", "umm", "er", "erm", "ah", "hmm", "hm", "mm", "mhm",
];

/// Spoken and texted shortcuts, with what they stand for.
const SHORTCUTS: &[(&str, &[&str])] = &[
    ("lemme", &["let", "me"]),
    ("gimme", &["give", "me"]),
    ("imma", &["i'm", "gonna"]),
    ("i'mma", &["i'm", "gonna"]),
    ("im", &["i'm"]),
    ("u", &["you"]),
    ("ur", &["your"]),
    ("pls", &["please"]),
    ("plz", &["please"]),
];

/// Progressive forms the loose reader takes as the verb itself ("on it, grabbing the cup").
const PROGRESSIVES: &[(&str, &str)] = &[
    ("bringing", "bring"),
    ("fetching", "fetch"),
    ("getting", "get"),
    ("carrying", "carry"),
    ("grabbing", "grab"),
    ("picking", "pick"),
    ("taking", "take"),
    ("lifting", "lift"),
    ("dropping", "drop"),
    ("giving", "give"),
    ("handing", "hand"),
    ("passing", "pass"),
    ("putting", "put"),
    ("placing", "place"),
    ("setting", "set"),
    ("moving", "move"),
    ("pushing", "push"),
    ("sliding", "slide"),
    ("opening", "open"),
    ("closing", "close"),
    ("shutting", "shut"),
];

/// Words the spoken reading also allows before the verb ("go ahead and grab").
const SPOKEN_FILLERS: &[&str] = &["ahead"];

/// Further words that end a noun phrase in the spoken reading: a clause break and the
/// subject of a following clause ("close the door, it's drafty", "the keys I mean").
const SPOKEN_NP_STOPS: &[&str] = &[
    CLAUSE_BREAK,
    "outside",
    "against",
    "i",
    "we",
    "it's",
    "that's",
];

/// Time and manner adverbs that end a noun phrase in the spoken reading once it has a word
/// ("close the jar tightly"), but may start one ("the first aid kit").
const SPOKEN_NP_TRAILERS: &[&str] = &[
    "today",
    "tonight",
    "tomorrow",
    "together",
    "gently",
    "carefully",
    "tightly",
    "slowly",
    "instead",
    "first",
    "anyway",
];

/// Further determiners the spoken reading drops from an object ("another cushion").
const SPOKEN_DETERMINERS: &[&str] = &["another", "any"];

/// Words as they were meant: [`words`] with hesitations dropped, restarts collapsed
/// ("the, um, the cup" -> "the cup") and shortcuts expanded ("lemme" -> "let me"), keeping
/// clause boundaries as [`CLAUSE_BREAK`] tokens so an object never runs into the next
/// clause ("close the door, it's drafty").
pub fn spoken_words(phrase: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for token in tokens(phrase, true) {
        if DISFLUENCIES.contains(&token.as_str()) {
            continue;
        }
        match SHORTCUTS.iter().find(|(short, _)| *short == token) {
            Some((_, long)) => long.iter().for_each(|w| push_spoken(&mut out, w)),
            None => push_spoken(&mut out, &token),
        }
    }
    if out.last().is_some_and(|w| w == CLAUSE_BREAK) {
        out.pop();
    }
    out
}

fn push_spoken(out: &mut Vec<String>, word: &str) {
    let n = out.len();
    if word == CLAUSE_BREAK && (n == 0 || out[n - 1] == CLAUSE_BREAK) {
        return;
    }
    // A word said again is a restart: "I'll I'll", "the, the cup".
    if n >= 1 && out[n - 1] == word {
        return;
    }
    if n >= 2 && out[n - 1] == CLAUSE_BREAK && out[n - 2] == word {
        out.pop();
        return;
    }
    out.push(word.to_string());
}

/// A looser reading than [`parse_spoken`], for phrases the grammar refuses but a trained
/// classifier believes: the first verb phrase with a concrete object anywhere in the phrase,
/// progressive verbs included ("would you mind closing the window", "I need you to bring me
/// the remote"). It ignores mood (questions, negations, tense), which is the classifier's
/// job, except that it skips a verb right after a negation ("don't bring the cup, bring the
/// plate" -> the plate). Confidence is lower than the grammar's.
pub fn extract(phrase: &str) -> Option<ParsedTask> {
    extract_words(&spoken_words(phrase))
}

/// [`extract`] over words already read by [`spoken_words`].
pub(crate) fn extract_words(spoken: &[String]) -> Option<ParsedTask> {
    let w: Vec<String> = spoken
        .iter()
        .map(|word| progressive_base(word).unwrap_or(word).to_string())
        .collect();
    for i in 0..w.len() {
        if i > 0 && is_negation(&w[i - 1]) {
            continue;
        }
        if let Some(mut t) = verb_phrase(&w[i..], Reading::Spoken) {
            let committed = (0..i).any(|start| commitment_len(&w, start).is_some());
            t.form = if committed {
                Form::Commitment
            } else {
                Form::Imperative
            };
            t.confidence = if t.confidence < 0.8 { 0.5 } else { 0.6 };
            return Some(t);
        }
    }
    None
}

/// The base of a progressive task verb ("grabbing" -> "grab").
pub(crate) fn progressive_base(word: &str) -> Option<&'static str> {
    PROGRESSIVES
        .iter()
        .find(|(ing, _)| *ing == word)
        .map(|(_, base)| *base)
}

/// The length of the commitment ("i'll", "let me", ...) that starts at `w[at]`, if one does.
pub(crate) fn commitment_len(w: &[String], at: usize) -> Option<usize> {
    COMMITMENTS
        .iter()
        .find(|prefix| starts_with(&w[at.min(w.len())..], prefix))
        .map(|p| p.len())
}

/// The index of the first word after polite openers ("could you please ...") and clause
/// breaks between them ("okay, close the door").
pub(crate) fn after_openers(w: &[String]) -> usize {
    let mut i = 0;
    'openers: loop {
        if w.get(i).is_some_and(|x| x == CLAUSE_BREAK) {
            i += 1;
            continue;
        }
        for opener in IMPERATIVE_OPENERS.iter().rev() {
            if starts_with(&w[i..], opener) {
                i += opener.len();
                continue 'openers;
            }
        }
        return i;
    }
}

/// Whether `w` starts with a task verb ("grab", "pick up", ...).
pub(crate) fn starts_with_task_verb(w: &[String]) -> bool {
    VERBS.iter().any(|(seq, _)| starts_with(w, seq))
}

/// Whether `w` starts with a task verb after optional fillers ("just go and grab").
pub(crate) fn starts_with_task_verb_after_fillers(w: &[String]) -> bool {
    let skip = w
        .iter()
        .take_while(|x| is_filler(x, Reading::Spoken))
        .count();
    starts_with_task_verb(&w[skip..])
}

/// Whether a word negates ("not", "don't", "never", ...).
pub(crate) fn is_negation(word: &str) -> bool {
    NEGATIONS.contains(&word) || word.ends_with("n't")
}

/// How literally a phrase's words are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// The original grammar, for [`parse`]: its results are relied on as they are.
    Strict,
    /// For [`parse_spoken`] and [`extract`]: words from [`spoken_words`], clause breaks
    /// respected, a few more adverbs and stops, prepositional phrases of verbs that take
    /// no destination read as places ("open the window in the kitchen"), and "grab me X"
    /// read as bringing it.
    Spoken,
}

fn is_filler(word: &str, reading: Reading) -> bool {
    FILLERS.contains(&word)
        || reading == Reading::Spoken && (word == CLAUSE_BREAK || SPOKEN_FILLERS.contains(&word))
}

fn starts_with(words: &[String], seq: &[&str]) -> bool {
    words.len() >= seq.len() && words.iter().zip(seq).all(|(w, s)| w == s)
}

/// Read a physical task from a phrase, if it states one.
pub fn parse(phrase: &str) -> Option<ParsedTask> {
    parse_words(&words(phrase), is_question(phrase), Reading::Strict)
}

/// [`parse`] for speech: over [`spoken_words`] (hesitations, restarts and shortcuts
/// handled, clause breaks kept), reading an imperative at the start of any clause ("oh
/// it's raining, grab the umbrella"), an object ending at a clause break or a trailing
/// adverb, "to me" read as the recipient, and "grab me X" read as bringing it.
/// This is the rule half of the watcher's detector.
pub fn parse_spoken(phrase: &str) -> Option<ParsedTask> {
    parse_spoken_words(&spoken_words(phrase), is_question(phrase))
}

/// [`parse_spoken`] over words already read by [`spoken_words`].
pub(crate) fn parse_spoken_words(spoken: &[String], is_question: bool) -> Option<ParsedTask> {
    parse_words(spoken, is_question, Reading::Spoken)
}

/// Whether the phrase is asked rather than said.
pub fn is_question(phrase: &str) -> bool {
    phrase.trim_end().ends_with('?')
}

fn parse_words(w: &[String], is_question: bool, reading: Reading) -> Option<ParsedTask> {
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
            while i < w.len() && is_filler(&w[i], reading) {
                i += 1;
            }
            if w[start + prefix.len()..i.min(w.len())]
                .iter()
                .any(|x| NEGATIONS.contains(&x.as_str()))
                || w.get(i).is_some_and(|x| NEGATIONS.contains(&x.as_str()))
            {
                return None;
            }
            if let Some(mut t) = verb_phrase(&w[i..], reading) {
                t.form = Form::Commitment;
                t.confidence = if t.confidence < 0.8 { 0.7 } else { 0.9 };
                return Some(t);
            }
        }
    }
    // Imperatives: the verb first, after polite openers; when spoken, first in any clause.
    let i = after_openers(w);
    let polite_question = i > 0 && ["can", "could", "would", "will"].contains(&w[0].as_str());
    if is_question && !polite_question {
        return None;
    }
    let clause_starts = w
        .iter()
        .enumerate()
        .filter(|(_, x)| reading == Reading::Spoken && *x == CLAUSE_BREAK)
        .map(|(at, _)| at + 1 + after_openers(&w[at + 1..]));
    let mut t = std::iter::once(i)
        .chain(clause_starts)
        .find_map(|at| verb_phrase(&w[at..], reading))?;
    t.form = Form::Imperative;
    t.confidence = if t.confidence < 0.8 { 0.6 } else { 0.75 };
    Some(t)
}

/// `verb [recipient] NP [particle] [preposition NP]`; confidence 0.9 when the object has a
/// determiner, lower for a bare noun.
fn verb_phrase(w: &[String], reading: Reading) -> Option<ParsedTask> {
    let spoken = reading == Reading::Spoken;
    let &(verb, mut action) = VERBS.iter().find(|(seq, _)| starts_with(w, seq))?;
    let mut i = verb.len();
    let mut recipient = None;
    if let Some(r) = w.get(i).filter(|r| RECIPIENTS.contains(&r.as_str())) {
        // "give her the cup" vs "put her cup away": a recipient is followed by an NP.
        if w.get(i + 1).is_some_and(|n| {
            DETERMINERS.contains(&n.as_str())
                || !(NP_STOPS.contains(&n.as_str()) || spoken && n == CLAUSE_BREAK)
        }) {
            recipient = Some(r.clone());
            i += 1;
        }
    }
    let (object, had_determiner, used) = noun_phrase(&w[i..], reading)?;
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
    if verb == ["pick"] && !w[..i].iter().any(|x| x == "up") {
        return None;
    }
    // "put the book, uh, on the shelf": the break does not end the phrase before a place.
    if spoken
        && w.get(i).is_some_and(|x| x == CLAUSE_BREAK)
        && DESTINATION_PREPS
            .iter()
            .any(|prep| starts_with(&w[i + 1..], prep))
    {
        i += 1;
    }
    let mut destination = None;
    let against: &[&str] = &["against"];
    let preps = DESTINATION_PREPS
        .iter()
        .copied()
        .chain(spoken.then_some(against));
    for prep in preps {
        if starts_with(&w[i..], prep) {
            if let Some((dest, _, _)) = noun_phrase(&w[i + prep.len()..], reading) {
                destination = Some(dest);
            }
            break;
        }
    }
    if spoken {
        // "bring the cup to me": "me" is who receives it, not a place.
        if destination
            .as_deref()
            .is_some_and(|d| RECIPIENTS.contains(&d) || d == "myself" || d == "yourself")
        {
            destination = None;
        }
        // "grab me the leash": fetched for someone.
        if action == Action::PickUp && recipient.as_deref().is_some_and(|r| r == "me" || r == "us")
        {
            action = Action::Bring;
        }
    }
    // Verbs whose meaning depends on the rest of the phrase.
    action = match action {
        // "put the cup" with nowhere to put it is not a task.
        Action::Place if destination.is_none() => return None,
        // "take the cup to the kitchen" carries it somewhere.
        Action::PickUp if destination.is_some() && verb != ["pick", "up"] => Action::Bring,
        // "give it to me", "hand me the cup": a give.
        other => other,
    };
    // "open the window in the kitchen", "pick up the sock under the bed": where it is,
    // not where it goes.
    if spoken && matches!(action, Action::Open | Action::Close | Action::PickUp) {
        destination = None;
    }
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
fn noun_phrase(w: &[String], reading: Reading) -> Option<(String, bool, usize)> {
    let spoken = reading == Reading::Spoken;
    let is_determiner =
        |d: &str| DETERMINERS.contains(&d) || spoken && SPOKEN_DETERMINERS.contains(&d);
    let mut i = 0;
    let had_determiner = w.first().is_some_and(|d| is_determiner(d));
    if had_determiner {
        i += 1;
    }
    let start = i;
    while i < w.len() && i - start < 4 {
        let word = w[i].as_str();
        if NP_STOPS.contains(&word) || RECIPIENTS.contains(&word) && i > start {
            break;
        }
        let trailer = i > start && (is_determiner(word) || SPOKEN_NP_TRAILERS.contains(&word));
        if spoken && (SPOKEN_NP_STOPS.contains(&word) || trailer) {
            break;
        }
        if word == "of" {
            // "cup of tea": keep going only if a noun follows.
            if w.get(i + 1)
                .is_none_or(|n| NP_STOPS.contains(&n.as_str()) || spoken && n == CLAUSE_BREAK)
            {
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
        assert_eq!(
            p("Okay, I'll bring you the cup."),
            Some((Action::Bring, "cup".into(), None))
        );
        assert_eq!(
            p("Sure, I'll pick up the red ball."),
            Some((Action::PickUp, "red ball".into(), None))
        );
        assert_eq!(
            p("Alright, I'll put the book on the shelf."),
            Some((Action::Place, "book".into(), Some("shelf".into())))
        );
        assert_eq!(
            p("let me just go and grab the keys"),
            Some((Action::PickUp, "keys".into(), None))
        );
        assert_eq!(
            p("I'm going to open the door"),
            Some((Action::Open, "door".into(), None))
        );
        assert_eq!(
            p("I'll pick the cup up"),
            Some((Action::PickUp, "cup".into(), None))
        );
        assert_eq!(
            p("I will put the plate down."),
            Some((Action::PutDown, "plate".into(), None))
        );
        assert_eq!(
            p("I'll take the cup of tea to the kitchen"),
            Some((Action::Bring, "cup of tea".into(), Some("kitchen".into())))
        );
        assert_eq!(
            p("I’ll fetch your slippers"),
            Some((Action::Bring, "slippers".into(), None))
        );
    }

    #[test]
    fn imperatives_are_read() {
        assert_eq!(
            p("bring me the cup"),
            Some((Action::Bring, "cup".into(), None))
        );
        assert_eq!(
            p("Please give me the remote."),
            Some((Action::Give, "remote".into(), None))
        );
        assert_eq!(
            p("can you close the window?"),
            Some((Action::Close, "window".into(), None))
        );
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
    fn spoken_words_drop_hesitations_restarts_and_shortcuts() {
        assert_eq!(
            spoken_words("uh okay I'll grab the, um, the cup"),
            ["okay", "i'll", "grab", "the", "cup"]
        );
        assert_eq!(
            spoken_words("lemme grab ur keys"),
            ["let", "me", "grab", "your", "keys"]
        );
        assert_eq!(
            spoken_words("I'll I'll hand you the pen"),
            ["i'll", "hand", "you", "the", "pen"]
        );
        assert!(spoken_words("uh um hmm").is_empty());
    }

    #[test]
    fn parse_spoken_reads_hesitant_speech() {
        // The plain grammar keeps the hesitation in the object.
        assert_eq!(
            p("uh I'll grab the, um, the cup").map(|t| t.1),
            Some("um the cup".into())
        );
        let t = parse_spoken("uh I'll grab the, um, the cup").unwrap();
        assert_eq!(
            (t.action, t.object.as_str(), t.form),
            (Action::PickUp, "cup", Form::Commitment)
        );
        let t = parse_spoken("lemme get the remote").unwrap();
        assert_eq!((t.action, t.object.as_str()), (Action::Bring, "remote"));
        // "to me" names who receives it, not a place.
        assert_eq!(
            p("bring the cup to me").and_then(|t| t.2),
            Some("me".into())
        );
        assert_eq!(
            parse_spoken("bring the cup to me").unwrap().destination,
            None
        );
        assert_eq!(parse_spoken("close the jar tightly").unwrap().object, "jar");
        assert_eq!(
            parse_spoken("I'll get the first aid kit").unwrap().object,
            "first aid kit"
        );
        assert_eq!(parse_spoken("did you bring the cup?"), None);
        assert_eq!(parse_spoken("I won't bring the cup"), None);
    }

    #[test]
    fn extract_reads_what_the_grammar_refuses() {
        let x = |s: &str| extract(s).map(|t| (t.action, t.object, t.destination));
        assert_eq!(parse("would you mind closing the window"), None);
        assert_eq!(
            x("would you mind closing the window"),
            Some((Action::Close, "window".into(), None))
        );
        assert_eq!(
            x("I need you to bring me the remote"),
            Some((Action::Bring, "remote".into(), None))
        );
        assert_eq!(
            x("on it, grabbing the cup now"),
            Some((Action::PickUp, "cup".into(), None))
        );
        assert_eq!(
            x("don't bring the cup, bring the plate"),
            Some((Action::Bring, "plate".into(), None))
        );
        assert_eq!(
            x("put the lid back, close the lid"),
            Some((Action::Close, "lid".into(), None)),
            "a verb phrase that does not read is skipped"
        );
        assert_eq!(extract("I'll grab the cup").unwrap().form, Form::Commitment);
        assert!(
            extract("I'll grab the cup").unwrap().confidence
                < parse("I'll grab the cup").unwrap().confidence
        );
        for phrase in ["I like that cup", "bring it", "pick the red one", "", "uh"] {
            assert_eq!(extract(phrase), None, "{phrase:?}");
        }
    }

    #[test]
    fn words_normalizes_punctuation_and_case() {
        assert_eq!(
            words("Okay, I'll GET the cup!"),
            ["okay", "i'll", "get", "the", "cup"]
        );
        assert_eq!(words("I\u{2019}ll"), ["i'll"]);
    }
}
