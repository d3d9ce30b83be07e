//! The phrase grammar for physical tasks: "okay, I'll bring you the cup" or "put the book on
//! the shelf" -> action, object, destination. [`parse`] is the strict reading v1 of the
//! watcher used; it reads commitments and imperatives, and is what reads the *user's* words
//! (`POST /api/tasks`, the sim voice), where an imperative is what the creature is asked to
//! do. [`parse_spoken`] reads the creature's *own* monologue as speech comes (hesitations,
//! restarts, clause breaks): only its own commitments fire ("I'll ...", "let me ...", "okay,
//! heading to the garage now"), never what it asks of the user, a question, a condition or a
//! deed put off or taken back; it also reads benefactives, clause words, resultatives,
//! particles and pronouns (see `docs/intent-watcher.md`). [`extract`] is a looser reading of
//! the creature's deeds that the trained classifier in [`crate::classifier`] may act on when
//! the grammar refuses.

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

/// Verbs, as word sequences, with the action they mean. Several words of one verb come
/// before its single word ("pick up" before "pick").
const VERBS: &[(&[&str], Action)] = &[
    (&["take", "a", "look", "at"], Action::LookAt),
    (&["take", "a", "peek", "at"], Action::LookAt),
    (&["have", "a", "peek", "at"], Action::LookAt),
    (&["take", "a", "quick", "look", "at"], Action::LookAt),
    (&["have", "a", "quick", "look", "at"], Action::LookAt),
    (&["check", "on"], Action::LookAt),
    (&["have", "a", "look", "at"], Action::LookAt),
    (&["look", "at"], Action::LookAt),
    (&["point", "at"], Action::LookAt),
    (&["point", "to"], Action::LookAt),
    (&["glance", "at"], Action::LookAt),
    (&["peek", "at"], Action::LookAt),
    (&["shut", "off"], Action::SwitchOff),
    (&["shut", "down"], Action::SwitchOff),
    (&["clean", "up"], Action::Clean),
    (&["tidy", "up"], Action::Clean),
    (&["wipe", "down"], Action::Clean),
    (&["wipe", "up"], Action::Clean),
    (&["sweep", "up"], Action::Clean),
    (&["mop", "up"], Action::Clean),
    (&["wash", "up"], Action::Clean),
    (&["dust", "off"], Action::Clean),
    (&["wipe", "off"], Action::Clean),
    (&["toss", "out"], Action::Throw),
    (&["chuck", "out"], Action::Throw),
    (&["chuck", "away"], Action::Throw),
    (&["throw", "away"], Action::Throw),
    (&["throw", "out"], Action::Throw),
    (&["pull", "back"], Action::Pull),
    (&["pull", "out"], Action::Pull),
    (&["bring", "over"], Action::Bring),
    (&["bring", "back"], Action::Bring),
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
    (&["slide"], Action::Move),
    (&["push"], Action::Push),
    (&["shove"], Action::Push),
    (&["nudge"], Action::Push),
    (&["pull"], Action::Pull),
    (&["tug"], Action::Pull),
    (&["drag"], Action::Pull),
    (&["yank"], Action::Pull),
    (&["open"], Action::Open),
    (&["close"], Action::Close),
    (&["shut"], Action::Close),
    (&["slam"], Action::Close),
    (&["pour"], Action::Pour),
    (&["clean"], Action::Clean),
    (&["wipe"], Action::Clean),
    (&["wash"], Action::Clean),
    (&["scrub"], Action::Clean),
    (&["dust"], Action::Clean),
    (&["mop"], Action::Clean),
    (&["sweep"], Action::Clean),
    (&["vacuum"], Action::Clean),
    (&["hoover"], Action::Clean),
    (&["tidy"], Action::Clean),
    (&["rinse"], Action::Clean),
    (&["polish"], Action::Clean),
    (&["throw"], Action::Throw),
    (&["toss"], Action::Throw),
    (&["chuck"], Action::Throw),
    (&["lob"], Action::Throw),
];

/// Verbs whose action is the state word after them or after their object: "switch the
/// heater on", "turn off the tv", "roll the blind up", "kick the cupboard closed".
const STATE_VERBS: &[&str] = &[
    "switch", "turn", "flip", "flick", "power", "roll", "kick", "prop", "swing", "knock", "bang",
];

/// The action a state word gives a verb: the particle of a device verb ("switch *on*"),
/// a blind rolled up or down, or a resultative ("push the door *shut*").
fn state_action(verb: &str, word: &str) -> Option<Action> {
    let device = ["switch", "turn", "flip", "flick", "power"].contains(&verb);
    match word {
        "on" if device => Some(Action::SwitchOn),
        "off" if device || verb == "shut" => Some(Action::SwitchOff),
        "up" if verb == "roll" => Some(Action::Open),
        "down" if verb == "roll" => Some(Action::Close),
        "open" if verb != "shut" => Some(Action::Open),
        "shut" | "closed" if verb != "shut" => Some(Action::Close),
        _ => None,
    }
}

/// Devices that are "put on" to be switched on ("put the kettle on").
const APPLIANCES: &[&str] = &[
    "kettle",
    "oven",
    "heater",
    "radio",
    "tv",
    "television",
    "music",
    "light",
    "lights",
    "lamp",
    "fan",
    "dishwasher",
    "heating",
    "stove",
    "coffee",
];

/// Words that end a resultative ("kick the cupboard *closed*"): never part of an object
/// after its first word.
const RESULT_STATES: &[&str] = &["open", "shut", "closed"];

/// Verbs of going somewhere, as said and as progressives ("heading to the garage").
const GO_VERBS: &[&str] = &[
    "go",
    "going",
    "head",
    "heading",
    "walk",
    "walking",
    "run",
    "running",
    "hurry",
    "hurrying",
    "pop",
    "popping",
    "nip",
    "nipping",
    "rush",
    "rushing",
    "dash",
    "dashing",
    "wander",
    "wandering",
    "drive",
    "driving",
    "come",
    "coming",
    "roll",
    "rolling",
];

/// Words between a verb of going and where it goes ("head *back over* to the door").
const GO_PARTICLES: &[&str] = &[
    "over", "back", "out", "down", "up", "right", "straight", "off", "along", "across",
];

/// Places said without a preposition ("I'll go upstairs").
const PLACE_ADVERBS: &[&str] = &[
    "upstairs",
    "downstairs",
    "outside",
    "inside",
    "indoors",
    "outdoors",
    "home",
];

/// Rooms and spots that may follow "to" without a determiner ("go to kitchen" in a hurry).
/// "bed", "work", "school" and "sleep" are left out: "I'll go to bed" is not an errand.
const BARE_PLACES: &[&str] = &[
    "kitchen", "garage", "bathroom", "bedroom", "basement", "attic", "garden", "hallway", "hall",
    "porch", "balcony", "office", "cellar", "pantry", "laundry", "yard",
];

/// Containers that hold what is poured: "pour you a *glass* of milk" pours milk into a glass.
const CONTAINERS: &[&str] = &[
    "glass", "cup", "mug", "bowl", "jug", "pitcher", "pot", "teacup", "tumbler", "flask",
];

/// Words an object cannot start with: a question word ("let's pick up *where* we left off")
/// or a state ("let's get *going*").
const NOT_OBJECTS: &[&str] = &[
    "where", "what", "how", "why", "who", "which", "whatever", "whenever", "going", "started",
    "ready", "moving", "busy", "lost", "real", "serious", "better", "worse", "rid", "straight",
];

/// A pronoun standing for a thing named before ("find your slippers and bring *them*").
const PRONOUN_OBJECTS: &[&str] = &["it", "them", "em", "those", "these", "that", "this"];

/// Particles that may follow an object without naming a place ("throw the wrapper
/// *away*", "pull the chair *out*").
const LOOSE_PARTICLES: &[&str] = &[
    "away", "out", "back", "aside", "along", "over", "up", "down", "around",
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
    ("slamming", "slam"),
    ("switching", "switch"),
    ("turning", "turn"),
    ("flipping", "flip"),
    ("flicking", "flick"),
    ("powering", "power"),
    ("kicking", "kick"),
    ("propping", "prop"),
    ("pouring", "pour"),
    ("cleaning", "clean"),
    ("wiping", "wipe"),
    ("washing", "wash"),
    ("scrubbing", "scrub"),
    ("dusting", "dust"),
    ("mopping", "mop"),
    ("sweeping", "sweep"),
    ("vacuuming", "vacuum"),
    ("tidying", "tidy"),
    ("rinsing", "rinse"),
    ("polishing", "polish"),
    ("throwing", "throw"),
    ("tossing", "toss"),
    ("chucking", "chuck"),
    ("looking", "look"),
    ("pointing", "point"),
    ("glancing", "glance"),
    ("pulling", "pull"),
    ("tugging", "tug"),
    ("dragging", "drag"),
    ("yanking", "yank"),
    ("shoving", "shove"),
    ("nudging", "nudge"),
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
    // Clause words: "grab the scarf before you leave" is about the scarf.
    "before",
    "after",
    "until",
    "till",
    "unless",
    "since",
    "once",
    "though",
    "although",
    "whenever",
    "whilst",
    "cause",
    "cos",
    "cuz",
    "where",
    "you're",
    "around",
    // A verb after the subject: "your cup *is* about to fall".
    "is",
    "are",
    "was",
    "were",
    "isn't",
    "aren't",
    "looks",
    "seems",
    "has",
    "have",
    "would",
    "could",
    "should",
    "might",
    "must",
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
    "closer",
    "straight",
    "tighter",
    "further",
    "farther",
    "apart",
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
    let narrated_at: Vec<usize> = clause_starts(spoken)
        .map(|at| after_spoken_openers(spoken, at))
        .collect();
    for i in 0..w.len() {
        if i > 0 && is_negation(&w[i - 1]) {
            continue;
        }
        // The creature's own deed only: after its commitment, with nobody asked in
        // between ("I'll, uh, carefully pick up the glass"), or a progressive it narrates
        // ("okay, grabbing the cup", "I'm getting your mat").
        let committed = (0..i).any(|start| {
            spoken_commitment_len(spoken, start).is_some_and(|len| {
                spoken[(start + len).min(i)..i]
                    .iter()
                    .all(|x| !PERMISSION_ASKERS.contains(&x.as_str()))
            })
        });
        let progressive = progressive_base(&spoken[i]).is_some()
            || spoken[i].ends_with("ing") && GO_VERBS.contains(&spoken[i].as_str());
        let narrated = progressive
            && (narrated_at.contains(&i)
                || i > 0 && spoken[i - 1] == "i'm"
                || i > 1 && spoken[i - 2] == "i" && spoken[i - 1] == "am");
        if !(committed || narrated) {
            continue;
        }
        let context = named_before(&w, i);
        if let Some(mut t) = verb_phrase(&w[i..], Reading::Spoken, context.as_deref()) {
            if !concrete(&t) {
                continue;
            }
            t.form = Form::Commitment;
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

pub(crate) fn starts_with(words: &[String], seq: &[&str]) -> bool {
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

/// [`parse_spoken`] with the object of an earlier phrase for a pronoun to stand for ("your
/// cup is about to fall." then "I'll grab it").
pub fn parse_spoken_in_context(phrase: &str, previous_object: Option<&str>) -> Option<ParsedTask> {
    parse_spoken_words_in_context(&spoken_words(phrase), is_question(phrase), previous_object)
}

/// [`parse_spoken`] over words already read by [`spoken_words`].
pub(crate) fn parse_spoken_words(spoken: &[String], is_question: bool) -> Option<ParsedTask> {
    parse_spoken_words_in_context(spoken, is_question, None)
}

/// [`parse_spoken_in_context`] over words already read by [`spoken_words`].
///
/// Only the creature's own deeds read: a commitment ("I'll", "let me", "let's", "I'm
/// gonna") followed by a task verb, possibly the second of two joined by "and" ("let me
/// find your slippers and bring them over"), or a progressive at the start of a clause,
/// alone or after "I'm" ("okay, heading to the garage now"). What the creature asks of
/// the user (an imperative, "could you ...", "you should ...", "please ..."), a question,
/// and a commitment taken back by a negation are refused.
pub(crate) fn parse_spoken_words_in_context(
    w: &[String],
    is_question: bool,
    previous_object: Option<&str>,
) -> Option<ParsedTask> {
    if w.is_empty() || is_question {
        return None;
    }
    let reading = Reading::Spoken;
    for start in 0..w.len() {
        let Some(len) = spoken_commitment_len(w, start) else {
            continue;
        };
        let i = skip_fillers(w, start + len, reading);
        if w[start + len..i.min(w.len())]
            .iter()
            .any(|x| NEGATIONS.contains(&x.as_str()))
            || w.get(i).is_some_and(|x| is_negation(x))
            || conditioned(w, start)
        {
            return None;
        }
        // "I can carry heavy boxes" tells what it can do; "I can bring you a blanket"
        // offers to do it now.
        let ability = starts_with(&w[start..], &["i", "can"]);
        // The verb right after the commitment, or one joined to it by "and" in the same
        // clause ("let me find your slippers and bring them over").
        let candidates = std::iter::once(i).chain(
            (i + 1..w.len())
                .take_while(|&k| w[k - 1] != CLAUSE_BREAK)
                .filter(|&k| w[k - 1] == "and")
                .map(|k| skip_fillers(w, k, reading)),
        );
        for at in candidates {
            let antecedent = named_before(w, at);
            let context = antecedent.as_deref().or(previous_object);
            if let Some(mut t) = verb_phrase(&w[at..], reading, context) {
                if !concrete(&t) || ability && t.confidence < 0.8 {
                    return None;
                }
                t.form = Form::Commitment;
                t.confidence = if t.confidence < 0.8 { 0.7 } else { 0.9 };
                return Some(t);
            }
        }
    }
    // "okay, grabbing the cup", "I'm heading to the garage now".
    for at in clause_starts(w) {
        let opened = after_spoken_openers(w, at);
        let mut j = opened;
        if starts_with(&w[j..], &["i'm"]) {
            j += 1;
        } else if starts_with(&w[j..], &["i", "am"]) {
            j += 2;
        }
        // "carrying heavy stuff makes me tired": a bare progressive first in the phrase
        // with a bare object is a gerund, not a deed.
        let bare = j == at && at == 0;
        let Some(first) = w.get(j) else { continue };
        let base = match progressive_base(first) {
            Some(base) => base.to_string(),
            None if first.ends_with("ing") && GO_VERBS.contains(&first.as_str()) => first.clone(),
            None if starts_with(&w[j..], &["on", "my", "way"]) => first.clone(),
            None if starts_with(&w[j..], &["off", "to"]) => first.clone(),
            None => continue,
        };
        let mut rest: Vec<String> = w[j..].to_vec();
        rest[0] = base;
        let antecedent = named_before(w, j);
        let context = antecedent.as_deref().or(previous_object);
        if let Some(mut t) = verb_phrase(&rest, reading, context) {
            if !concrete(&t) || conditioned(w, j) || bare && t.confidence < 0.8 {
                continue;
            }
            t.form = Form::Commitment;
            t.confidence = if t.confidence < 0.8 { 0.7 } else { 0.9 };
            return Some(t);
        }
    }
    None
}

/// Words that make "let me" a request or a question, not a commitment ("you should let
/// me", "could you let me", "please let me").
const PERMISSION_ASKERS: &[&str] = &[
    "you", "should", "could", "would", "will", "can", "please", "must", "might", "to", "ought",
];

/// The length of a commitment of the spoken reading at `w[at]`: the grammar's own, "let's"
/// and "I'm about to"; "let me" only when nobody is asked to let.
fn spoken_commitment_len(w: &[String], at: usize) -> Option<usize> {
    const MORE: &[&[&str]] = &[
        &["let's"],
        &["let", "us"],
        &["i'm", "about", "to"],
        &["allow", "me", "to"],
        &["gonna"],
    ];
    let len = commitment_len(w, at).or_else(|| {
        MORE.iter()
            .find(|prefix| starts_with(&w[at..], prefix))
            .map(|p| p.len())
    })?;
    let before = at.checked_sub(1).map(|j| w[j].as_str());
    let asked = before.is_some_and(|b| PERMISSION_ASKERS.contains(&b));
    if starts_with(&w[at..], &["let", "me"]) && asked {
        return None;
    }
    // "gonna" without its subject is the speaker's ("gonna grab the bottle"), but not
    // after someone else ("you're gonna", "he's gonna").
    let someone_else = [
        "you're", "you", "he's", "she's", "they're", "it's", "is", "are", "was",
    ];
    if starts_with(&w[at..], &["gonna"]) && before.is_some_and(|b| someone_else.contains(&b)) {
        return None;
    }
    // "I'm not gonna", "never gonna": refused before it is said.
    if before.is_some_and(is_negation) {
        return None;
    }
    Some(len)
}

/// Words that, before a commitment, make it wait for a condition or another day ("if you
/// like, I'll ...", "next time I'll ...").
const CONDITIONS_BEFORE: &[&[&str]] = &[
    &["if"],
    &["whenever"],
    &["unless"],
    &["when"],
    &["someday"],
    &["maybe"],
    &["perhaps"],
    &["next", "time"],
    &["one", "day"],
];

/// Words that, after a commitment, put it off or take it back ("I'll wipe the counter
/// tomorrow", "I'll bring the cup, just kidding").
const DEFERRALS_AFTER: &[&[&str]] = &[
    &["tomorrow"],
    &["tonight"],
    &["later"],
    &["someday"],
    &["next", "week"],
    &["next", "weekend"],
    &["next", "time"],
    &["next", "month"],
    &["next", "year"],
    &["one", "day"],
    &["on", "your", "birthday"],
    &["when", "pigs"],
    &["just", "kidding"],
    &["kidding"],
    &["never", "mind"],
    &["actually", "no"],
    &["no", "wait"],
    &["scratch", "that"],
    &["on", "second", "thought"],
    &["already", "open"],
    &["already", "closed"],
    &["already", "done"],
];

/// Whether a commitment at `at` waits for a condition before it or is put off or taken
/// back after it: a plan or an offer, not a deed now.
fn conditioned(w: &[String], at: usize) -> bool {
    let found = |range: &[String], list: &[&[&str]]| {
        (0..range.len()).any(|i| list.iter().any(|seq| starts_with(&range[i..], seq)))
    };
    found(&w[..at], CONDITIONS_BEFORE) || found(&w[at..], DEFERRALS_AFTER)
}

/// Heads of objects no body carries: ideas, time, favours and idioms' nouns ("I'll give you
/// a *hint*", "I'll push my *luck*", "let me grab a quick *nap*").
const ABSTRACT_HEADS: &[&str] = &[
    "hint",
    "clue",
    "idea",
    "ideas",
    "thought",
    "thoughts",
    "attention",
    "luck",
    "charm",
    "act",
    "page",
    "deal",
    "tab",
    "pace",
    "gap",
    "signal",
    "chapter",
    "word",
    "words",
    "tune",
    "chance",
    "break",
    "try",
    "shot",
    "rest",
    "nap",
    "shower",
    "bath",
    "look",
    "second",
    "minute",
    "moment",
    "sec",
    "mind",
    "sense",
    "time",
    "call",
    "answer",
    "advice",
    "credit",
    "example",
    "lesson",
    "promise",
    "notice",
    "warning",
    "compliment",
    "line",
    "hand",
    "caution",
    "slate",
    "smile",
    "heart",
    "gears",
    "strings",
    "envelope",
    "mile",
    "flow",
    "all-nighter",
    "myself",
    "yourself",
    "itself",
    "ourselves",
    "mountain",
    "mountains",
    "hang",
    "joke",
    "story",
    "song",
    "question",
    "point",
    "favor",
    "favour",
    "party",
    "walk",
    "nap",
    "decision",
    "vote",
    "guess",
    "step",
    "risk",
];

/// Things no household body handles ("I'll carry the ocean in a bucket").
const IMPOSSIBLE_HEADS: &[&str] = &[
    "sun", "moon", "star", "stars", "sky", "ocean", "sea", "planet", "world", "earth", "universe",
    "rainbow", "cloud", "clouds", "horizon", "elephant", "whale",
];

/// Whether the object names something a body can act on.
fn concrete(task: &ParsedTask) -> bool {
    let thing = |name: &str| {
        // The head of "cup of tea" is the cup, of "hang of it" the hang.
        let before_of = name.split(" of ").next().unwrap_or(name);
        let head = before_of.rsplit(' ').next().unwrap_or_default();
        let idiom = ["big picture", "bright side", "whole house", "whole world"].contains(&name);
        !(idiom || ABSTRACT_HEADS.contains(&head) || IMPOSSIBLE_HEADS.contains(&head))
    };
    // "pour cold water on that idea": the place must be a thing too.
    thing(&task.object) && task.destination.as_deref().is_none_or(thing)
}

/// The first word of every clause: the phrase's first and each after a clause break.
fn clause_starts(w: &[String]) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(0).chain(
        w.iter()
            .enumerate()
            .filter(|(_, x)| *x == CLAUSE_BREAK)
            .map(|(at, _)| at + 1),
    )
}

/// Acknowledgements that may come before the creature says what it is doing ("okay,
/// sure, on it, grabbing the cup").
const SPOKEN_OPENERS: &[&[&str]] = &[
    &["okay"],
    &["ok"],
    &["okey"],
    &["sure"],
    &["alright"],
    &["alrighty"],
    &["right"],
    &["yes"],
    &["yep"],
    &["yeah"],
    &["now"],
    &["so"],
    &["fine"],
    &["oh"],
    &["oops"],
    &["well"],
    &["and"],
    &["here"],
    &["got", "it"],
    &["on", "it"],
    &["no", "problem"],
    &["of", "course"],
    &["right", "away"],
    &["coming", "up"],
];

/// The index after openers and clause breaks from `at` on.
fn after_spoken_openers(w: &[String], at: usize) -> usize {
    let mut i = at;
    'openers: loop {
        if w.get(i).is_some_and(|x| x == CLAUSE_BREAK) {
            i += 1;
            continue;
        }
        for opener in SPOKEN_OPENERS.iter().rev() {
            if starts_with(&w[i.min(w.len())..], opener) {
                i += opener.len();
                continue 'openers;
            }
        }
        return i.min(w.len());
    }
}

/// The index after fillers from `at` on ("just go and grab"), stopping at a verb of going
/// ("I'll go to the garage" is going, not a filler).
fn skip_fillers(w: &[String], at: usize, reading: Reading) -> usize {
    let mut i = at;
    while i < w.len() && is_filler(&w[i], reading) {
        if w[i] == "go" && go_phrase(&w[i..], reading).is_some() {
            break;
        }
        i += 1;
    }
    i
}

/// The object of the last noun phrase with a determiner before `end` ("find *your
/// slippers* and bring them"), for a pronoun after it to stand for.
fn named_before(w: &[String], end: usize) -> Option<String> {
    (0..end.min(w.len())).rev().find_map(|j| {
        if !DETERMINERS.contains(&w[j].as_str()) {
            return None;
        }
        // "your keys on *the floor*": a place the thing is at, not a thing.
        if j > 0 && PLACE_PREPS.contains(&w[j - 1].as_str()) {
            return None;
        }
        match noun_phrase(&w[j..end], Reading::Spoken) {
            Some((object, true, _)) if !PRONOUN_OBJECTS.contains(&object.as_str()) => Some(object),
            _ => None,
        }
    })
}

/// Prepositions whose noun phrase is a place, skipped when looking for what a pronoun means.
const PLACE_PREPS: &[&str] = &[
    "on", "in", "under", "at", "by", "near", "behind", "beside", "from", "into", "onto", "inside",
    "over", "to", "upstairs", "off",
];

/// The words joined again, with each lone object pronoun ("it", "them") replaced by "the
/// `object`": what the classifier scores when a pronoun stands for an earlier phrase's thing.
pub fn spell_out_pronouns(words: &[String], object: &str) -> String {
    let mut out = Vec::with_capacity(words.len() + 2);
    for (i, word) in words.iter().enumerate() {
        let lone = ["it", "them", "em"].contains(&word.as_str())
            && i > 0
            && !DETERMINERS.contains(&words[i - 1].as_str());
        if lone {
            out.push("the");
            out.push(object);
        } else {
            out.push(word.as_str());
        }
    }
    out.join(" ").replace(" , ", ", ")
}

/// Whether a place is said without a preposition ("go *upstairs*").
pub fn is_place_adverb(word: &str) -> bool {
    PLACE_ADVERBS.contains(&word)
}

/// The last thing a phrase names with a determiner ("oh no, *your cup* is about to
/// fall"), for the watcher to keep as what a pronoun in the next phrase may mean.
pub fn last_named_object(phrase: &str) -> Option<String> {
    let w = spoken_words(phrase);
    named_before(&w, w.len())
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
            let i = skip_fillers(w, start + prefix.len(), reading);
            if w[start + prefix.len()..i.min(w.len())]
                .iter()
                .any(|x| NEGATIONS.contains(&x.as_str()))
                || w.get(i).is_some_and(|x| NEGATIONS.contains(&x.as_str()))
            {
                return None;
            }
            if let Some(mut t) = verb_phrase(&w[i..], reading, None) {
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
        .find_map(|at| verb_phrase(&w[at..], reading, None))?;
    t.form = Form::Imperative;
    t.confidence = if t.confidence < 0.8 { 0.6 } else { 0.75 };
    Some(t)
}

/// `verb [recipient] NP [particle] [preposition NP]`; confidence 0.9 when the object has a
/// determiner, lower for a bare noun. In the spoken reading a pronoun object ("bring
/// *them* over") stands for `antecedent`, when there is one.
fn verb_phrase(w: &[String], reading: Reading, antecedent: Option<&str>) -> Option<ParsedTask> {
    if let Some(t) = go_phrase(w, reading) {
        return Some(t);
    }
    let spoken = reading == Reading::Spoken;
    // A verb whose action its state word decides: "turn off the tv", "turn the tv off".
    let state_verb = w
        .first()
        .filter(|v| STATE_VERBS.contains(&v.as_str()))
        .map(String::as_str);
    let (verb, mut action, mut pending): (&[&str], Action, bool) = match state_verb {
        Some(v) => match w.get(1).and_then(|p| state_action(v, p)) {
            Some(action) => (&[], action, false),
            None => (&[], Action::Move, true),
        },
        None => {
            let &(verb, action) = VERBS.iter().find(|(seq, _)| starts_with(w, seq))?;
            (verb, action, false)
        }
    };
    let mut i = match state_verb {
        Some(_) if !pending => 2,
        Some(_) => 1,
        None => verb.len(),
    };
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
    if spoken && w.get(i).is_some_and(|x| NOT_OBJECTS.contains(&x.as_str())) {
        return None;
    }
    let (object, had_determiner, used) = match noun_phrase(&w[i..], reading) {
        // "let me get this straight": a state, not a thing.
        Some((object, ..))
            if spoken && NOT_OBJECTS.contains(&object.split(' ').next().unwrap_or_default()) =>
        {
            return None;
        }
        Some(np) => np,
        None => {
            // "bring them over": the pronoun stands for what was named before.
            let pronoun = w.get(i).filter(|p| PRONOUN_OBJECTS.contains(&p.as_str()));
            let next_free = w.get(i + 1).is_none_or(|n| {
                NP_STOPS.contains(&n.as_str())
                    || SPOKEN_NP_STOPS.contains(&n.as_str())
                    || RESULT_STATES.contains(&n.as_str())
            });
            match (spoken, pronoun, antecedent) {
                (true, Some(_), Some(thing)) if next_free => (thing.to_string(), false, 1),
                _ => return None,
            }
        }
    };
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
    // "put the kettle on": an appliance put on is switched on.
    if action == Action::Place
        && w.get(i).is_some_and(|x| x == "on")
        && w.get(i + 1)
            .is_none_or(|n| n == CLAUSE_BREAK || NP_STOPS.contains(&n.as_str()))
        && APPLIANCES.contains(&object.rsplit(' ').next().unwrap_or_default())
    {
        action = Action::SwitchOn;
        i += 1;
    }
    // The state word after the object: "switch the heater on", "kick the cupboard closed",
    // "push the door shut". It is the action's result, not part of the object.
    if let Some(word) = w.get(i) {
        let v = state_verb
            .or_else(|| verb.first().copied())
            .unwrap_or_default();
        let resultative = pending
            || RESULT_STATES.contains(&word.as_str())
                && matches!(
                    action,
                    Action::Push | Action::Pull | Action::Move | Action::Close
                )
            || word == "off" && v == "shut";
        if resultative {
            if let Some(result) = state_action(v, word) {
                action = result;
                pending = false;
                i += 1;
            }
        }
    }
    if pending {
        return None; // "turn the page", "kick the ball": no state, no task
    }
    // "pick" alone needs its particle ("pick the red one" is choosing, not lifting).
    if verb == ["pick"] && !w[..i].iter().any(|x| x == "up") {
        return None;
    }
    // "grab the box for you": done for someone.
    let mut benefactive = recipient.is_some();
    if spoken
        && w.get(i).is_some_and(|x| x == "for")
        && w.get(i + 1)
            .is_some_and(|r| RECIPIENTS.contains(&r.as_str()) || r == "yourself")
    {
        benefactive = true;
        i += 2;
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
    let against: &[&str] = &["against"];
    let find_destination = |i: usize| {
        DESTINATION_PREPS
            .iter()
            .copied()
            .chain(spoken.then_some(against))
            .find(|prep| starts_with(&w[i..], prep))
            .map(|prep| {
                // "in case it rains" says why, not where.
                if spoken && prep == ["in"] && w.get(i + 1).is_some_and(|x| x == "case") {
                    return None;
                }
                noun_phrase(&w[i + prep.len()..], reading).map(|(dest, _, _)| dest)
            })
    };
    let mut destination = match find_destination(i) {
        Some(found) => found,
        // "throw the wrapper away", "push the box back into the corner".
        None if spoken
            && w.get(i)
                .is_some_and(|x| LOOSE_PARTICLES.contains(&x.as_str())) =>
        {
            find_destination(i + 1).flatten()
        }
        None => None,
    };
    let mut object = object;
    if spoken {
        // "bring the cup to me": "me" is who receives it, not a place.
        if destination
            .as_deref()
            .is_some_and(|d| RECIPIENTS.contains(&d) || d == "myself" || d == "yourself")
        {
            destination = None;
        }
        // "grab me the leash", "let me grab you a napkin", "I'll grab the box for you":
        // fetched for someone.
        if action == Action::PickUp && benefactive && (verb == ["grab"] || verb == ["take"]) {
            action = Action::Bring;
        }
    }
    // Pour is new in v3, so both readings share its rules.
    {
        // "pour the sauce over the pasta".
        if action == Action::Pour && destination.is_none() && w.get(i).is_some_and(|x| x == "over")
        {
            destination = noun_phrase(&w[i + 1..], reading).map(|(dest, _, _)| dest);
        }
        // "pour you a glass of milk": the milk goes into a glass.
        if action == Action::Pour && destination.is_none() {
            if let Some((container, stuff)) = object.split_once(" of ") {
                let head = container.rsplit(' ').next().unwrap_or_default();
                if CONTAINERS.contains(&head) && !stuff.is_empty() {
                    destination = Some(container.to_string());
                    object = stuff.to_string();
                }
            }
        }
    }
    // Verbs whose meaning depends on the rest of the phrase.
    action = match action {
        // "put the cup" with nowhere to put it is not a task.
        Action::Place if destination.is_none() => return None,
        // Pouring needs something to pour into.
        Action::Pour if destination.is_none() => return None,
        // "take the cup to the kitchen" carries it somewhere.
        Action::PickUp if destination.is_some() && verb != ["pick", "up"] => Action::Bring,
        // "give it to me", "hand me the cup": a give.
        other => other,
    };
    // "open the window in the kitchen", "pick up the sock under the bed": where it is,
    // not where it goes. A device, a wipe and a glance go nowhere.
    let placeless = matches!(
        action,
        Action::SwitchOn | Action::SwitchOff | Action::Clean | Action::LookAt
    );
    if placeless || spoken && matches!(action, Action::Open | Action::Close | Action::PickUp) {
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

/// `go|head|walk ... [over|back] to NP` or `go upstairs`: a go_to whose object and
/// destination are the place.
fn go_phrase(w: &[String], reading: Reading) -> Option<ParsedTask> {
    let mut i = if starts_with(w, &["on", "my", "way"]) {
        3
    } else if w.first().is_some_and(|v| GO_VERBS.contains(&v.as_str()))
        || starts_with(w, &["off", "to"])
    {
        1 // "heading to ...", "I'm off to the garden"
    } else {
        return None;
    };
    while w.get(i).is_some_and(|x| GO_PARTICLES.contains(&x.as_str())) {
        i += 1;
    }
    let place = |place: String, sure: bool| ParsedTask {
        action: Action::GoTo,
        object: place.clone(),
        destination: Some(place),
        form: Form::Imperative,
        confidence: if sure { 0.9 } else { 0.6 },
    };
    let next = w.get(i)?;
    if PLACE_ADVERBS.contains(&next.as_str()) {
        return Some(place(next.clone(), false));
    }
    let prep = [
        &["over", "to"][..],
        &["to"],
        &["into"],
        &["towards"],
        &["toward"],
    ]
    .into_iter()
    .find(|p| starts_with(&w[i..], p))?;
    i += prep.len();
    let (dest, had_determiner, _) = noun_phrase(&w[i..], reading)?;
    let bare_place = BARE_PLACES.contains(&dest.as_str());
    if !had_determiner && !bare_place {
        return None; // "going to try the cake" is a plan, not a trip
    }
    Some(place(dest, had_determiner))
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
        // "the back door", "the top drawer": a modifier after a determiner, not a particle.
        let modifier = spoken
            && had_determiner
            && i == start
            && ["back", "top", "front", "side"].contains(&word)
            && w.get(i + 1).is_some_and(|n| {
                !(NP_STOPS.contains(&n.as_str()) || SPOKEN_NP_STOPS.contains(&n.as_str()))
            });
        if modifier {
            i += 1;
            continue;
        }
        if NP_STOPS.contains(&word) || RECIPIENTS.contains(&word) && i > start {
            break;
        }
        if i > start && RESULT_STATES.contains(&word) {
            break; // "kick the cupboard closed"
        }
        let trailer = i > start && (is_determiner(word) || SPOKEN_NP_TRAILERS.contains(&word));
        if spoken && (SPOKEN_NP_STOPS.contains(&word) || trailer) {
            break;
        }
        if word == "of" {
            // "cup of tea": keep going only if a noun follows.
            if w.get(i + 1).is_none_or(|n| {
                NP_STOPS.contains(&n.as_str())
                    || spoken && (n == CLAUSE_BREAK || RECIPIENTS.contains(&n.as_str()))
            }) {
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
            parse_spoken("I'll bring the cup to you")
                .unwrap()
                .destination,
            None
        );
        assert_eq!(
            parse_spoken("I'll close the jar tightly").unwrap().object,
            "jar"
        );
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
        assert_eq!(parse("I'll, uh, carefully pick up the glass"), None);
        assert_eq!(
            x("I'll, uh, carefully pick up the glass"),
            Some((Action::PickUp, "glass".into(), None))
        );
        assert_eq!(
            x("on it, grabbing the cup now"),
            Some((Action::PickUp, "cup".into(), None))
        );
        assert_eq!(
            x("I won't bring the cup, I'll bring the plate"),
            Some((Action::Bring, "plate".into(), None))
        );
        assert_eq!(
            x("I'll put the lid back, I'll close the lid"),
            Some((Action::Close, "lid".into(), None)),
            "a verb phrase that does not read is skipped"
        );
        // What the creature asks of the user is never read, however loosely.
        for request in [
            "would you mind closing the window",
            "I need you to bring me the remote",
            "don't bring the cup, bring the plate",
            "could you please let me grab the cup",
        ] {
            assert_eq!(extract(request), None, "{request:?}");
        }
        assert_eq!(extract("I'll grab the cup").unwrap().form, Form::Commitment);
        assert!(
            extract("I'll grab the cup").unwrap().confidence
                < parse("I'll grab the cup").unwrap().confidence
        );
        for phrase in ["I like that cup", "bring it", "pick the red one", "", "uh"] {
            assert_eq!(extract(phrase), None, "{phrase:?}");
        }
    }

    fn sp(s: &str) -> Option<(Action, String, Option<String>)> {
        parse_spoken(s).map(|t| (t.action, t.object, t.destination))
    }

    fn task(
        action: Action,
        object: &str,
        destination: Option<&str>,
    ) -> Option<(Action, String, Option<String>)> {
        Some((action, object.into(), destination.map(str::to_string)))
    }

    #[test]
    fn new_actions_are_read_with_their_arguments() {
        for (phrase, expected) in [
            (
                "I'll switch the heater on",
                task(Action::SwitchOn, "heater", None),
            ),
            (
                "let me turn off the tv",
                task(Action::SwitchOff, "tv", None),
            ),
            (
                "I'll turn the lamp off in the hall",
                task(Action::SwitchOff, "lamp", None),
            ),
            (
                "okay, heading to the garage now",
                task(Action::GoTo, "garage", Some("garage")),
            ),
            (
                "I'm going to the kitchen",
                task(Action::GoTo, "kitchen", Some("kitchen")),
            ),
            (
                "I'll go back over to the door",
                task(Action::GoTo, "door", Some("door")),
            ),
            (
                "let me pop upstairs",
                task(Action::GoTo, "upstairs", Some("upstairs")),
            ),
            (
                "let me pour you a glass of milk",
                task(Action::Pour, "milk", Some("glass")),
            ),
            (
                "I'll pour the water into the kettle",
                task(Action::Pour, "water", Some("kettle")),
            ),
            ("I'll wipe the table", task(Action::Clean, "table", None)),
            (
                "let me clean up the crumbs",
                task(Action::Clean, "crumbs", None),
            ),
            (
                "I'll toss the wrapper in the bin",
                task(Action::Throw, "wrapper", Some("bin")),
            ),
            (
                "I'll throw the old bread away",
                task(Action::Throw, "old bread", None),
            ),
            (
                "let me take a look at the plant",
                task(Action::LookAt, "plant", None),
            ),
            ("I'll point at the map", task(Action::LookAt, "map", None)),
            ("I'll pull the chair out", task(Action::Pull, "chair", None)),
            (
                "I'll push the box into the corner",
                task(Action::Push, "box", Some("corner")),
            ),
            (
                "I'll slide the box under the bed",
                task(Action::Move, "box", Some("bed")),
            ),
            (
                "I'll put the kettle on",
                task(Action::SwitchOn, "kettle", None),
            ),
            (
                "I'm off to the garden",
                task(Action::GoTo, "garden", Some("garden")),
            ),
            (
                "let me check on the baby",
                task(Action::LookAt, "baby", None),
            ),
            (
                "I'll take a peek at the oven",
                task(Action::LookAt, "oven", None),
            ),
        ] {
            assert_eq!(sp(phrase), expected, "{phrase:?}");
        }
        // Without their required argument they are not tasks.
        for phrase in [
            "I'll pour the milk",
            "I'll go to try the cake",
            "I'll go to bed",
            "I'll turn the page",
            "I'll kick the ball",
            "I'm off to bed",
            "I'll put the cup on",
        ] {
            assert_eq!(sp(phrase), None, "{phrase:?}");
        }
    }

    #[test]
    fn only_the_creatures_own_deeds_are_read() {
        for phrase in [
            "I'll bring you the cup",
            "let me close the window",
            "okay, grabbing the towel now",
            "I'm getting your slippers",
            "let's put the dishes in the sink",
            "on it, opening the back door",
        ] {
            assert!(
                parse_spoken(phrase).is_some(),
                "{phrase:?} is the creature's deed"
            );
        }
        for phrase in [
            "could you close the window",
            "would you pass me the salt?",
            "you should take your coat",
            "you ought to take your coat",
            "please put your boots away",
            "don't forget to bring your keys",
            "bring me the remote",
            "put the book on the shelf",
            "I need you to open the door",
            "can you let me grab the cup",
            "shall I bring the cup?",
            "let's pick up where we left off",
            "I picked up the cup",
            "I would bring the cup if I could",
            "you're bringing the cup",
        ] {
            assert_eq!(
                parse_spoken(phrase),
                None,
                "{phrase:?} is not the creature's deed"
            );
        }
    }

    #[test]
    fn a_benefactive_makes_grab_a_bring() {
        assert_eq!(
            sp("let me grab you a napkin"),
            task(Action::Bring, "napkin", None)
        );
        assert_eq!(
            sp("I'll grab the box for you"),
            task(Action::Bring, "box", None)
        );
        assert_eq!(
            sp("I'll get the box for you"),
            task(Action::Bring, "box", None)
        );
        assert_eq!(sp("I'll grab the box"), task(Action::PickUp, "box", None));
    }

    #[test]
    fn an_object_ends_before_a_clause_word() {
        for (phrase, object) in [
            ("I'll grab the scarf before you leave", "scarf"),
            ("I'll close the window after the rain", "window"),
            ("let me fetch the umbrella in case it rains", "umbrella"),
            ("I'll open the door so that the cat gets in", "door"),
            ("I'll bring the blanket because it's cold", "blanket"),
            ("I'll wipe the table once dinner is over", "table"),
        ] {
            let t = parse_spoken(phrase).unwrap_or_else(|| panic!("{phrase:?}"));
            assert_eq!(
                (t.object.as_str(), t.destination),
                (object, None),
                "{phrase:?}"
            );
        }
    }

    #[test]
    fn a_resultative_is_the_state_not_the_object() {
        assert_eq!(
            sp("I'll kick the cupboard closed"),
            task(Action::Close, "cupboard", None)
        );
        assert_eq!(
            sp("let me push the door shut"),
            task(Action::Close, "door", None)
        );
        assert_eq!(
            sp("I'll pull the drawer open"),
            task(Action::Open, "drawer", None)
        );
        assert_eq!(
            sp("I'll prop the gate open"),
            task(Action::Open, "gate", None)
        );
        assert_eq!(
            sp("I'll shut the radio off"),
            task(Action::SwitchOff, "radio", None)
        );
    }

    #[test]
    fn particles_are_read() {
        assert_eq!(
            sp("I'll hand over the letter"),
            task(Action::Give, "letter", None)
        );
        assert_eq!(
            sp("let me roll the blind up"),
            task(Action::Open, "blind", None)
        );
        assert_eq!(
            sp("I'll roll down the shutters"),
            task(Action::Close, "shutters", None)
        );
        assert_eq!(
            sp("I'll pull back the curtains"),
            task(Action::Pull, "curtains", None)
        );
        assert_eq!(
            sp("I'll switch on the fan"),
            task(Action::SwitchOn, "fan", None)
        );
    }

    #[test]
    fn a_pronoun_stands_for_the_thing_named_before() {
        assert_eq!(
            sp("let me find your slippers and bring them over"),
            task(Action::Bring, "slippers", None)
        );
        assert_eq!(
            sp("I see the red cup, I'll pick it up"),
            task(Action::PickUp, "red cup", None)
        );
        assert_eq!(sp("I'll pick it up"), None, "no antecedent, no task");
        let t = parse_spoken_in_context("okay, I'll grab it", Some("cup")).unwrap();
        assert_eq!((t.action, t.object.as_str()), (Action::PickUp, "cup"));
        assert_eq!(
            last_named_object("oh no, your cup is about to fall").as_deref(),
            Some("cup")
        );
        assert_eq!(last_named_object("hmm, I wonder"), None);
    }

    #[test]
    fn the_strict_grammar_reads_new_verbs_for_requests() {
        assert_eq!(
            p("switch on the heater"),
            task(Action::SwitchOn, "heater", None)
        );
        assert_eq!(
            p("go to the garage"),
            task(Action::GoTo, "garage", Some("garage"))
        );
        assert_eq!(
            p("wipe the table please"),
            task(Action::Clean, "table", None)
        );
        assert_eq!(p("push the box"), task(Action::Push, "box", None));
        assert_eq!(parse("bring me the cup").unwrap().form, Form::Imperative);
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
