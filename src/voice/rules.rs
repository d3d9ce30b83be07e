//! What the `sim` backend answers to a typed utterance: a commitment for a physical task
//! ("bring me the cup" -> "Okay, I'll bring you the cup."), a line of small talk otherwise.
//!
//! Tasks are recognised with the monologue's own grammar ([`intent::parse`]) and every
//! commitment is checked to read back as the same action and object, because the
//! inner-monologue watcher turns the creature's words, not the user's, into tasks.

use creature_actors::intent::{self, Form, ParsedTask};
use creature_actors::ports::Action;

/// Longest utterance the simulator listens to, in characters.
pub(crate) const MAX_HEARD_CHARS: usize = 500;

/// The answer when nothing else fits.
pub(crate) const DEFAULT_ANSWER: &str = "Hmm, tell me more.";

/// Said when a task was heard but its commitment would not read back faithfully; it must
/// not read as a task itself.
const UNSURE_ANSWER: &str = "Hmm, which one do you mean?";

/// Small talk, tried in order after tasks: (phrases that trigger it, answer). Earlier rows
/// win, so "good night" is a farewell before "good" can make it anything else.
const SMALL_TALK: &[(&[&[&str]], &str)] = &[
    (
        &[
            &["bye"],
            &["goodbye"],
            &["good", "night"],
            &["see", "you"],
            &["farewell"],
            &["bye-bye"],
        ],
        "Goodbye! See you soon.",
    ),
    (
        &[
            &["thanks"],
            &["thank", "you"],
            &["thank", "u"],
            &["thx"],
            &["cheers"],
        ],
        "You're welcome!",
    ),
    (
        &[
            &["how", "are", "you"],
            &["how", "r", "u"],
            &["how're", "you"],
            &["how's", "it", "going"],
            &["how", "is", "it", "going"],
            &["how", "do", "you", "do"],
        ],
        "I'm doing great, thanks for asking!",
    ),
    (
        &[
            &["how", "do", "you", "feel"],
            &["are", "you", "happy"],
            &["are", "you", "sad"],
            &["your", "mood"],
        ],
        "I feel happy and curious today.",
    ),
    (
        &[
            &["your", "name"],
            &["who", "are", "you"],
            &["what", "are", "you", "called"],
            &["call", "you"],
        ],
        "I'm your little creature. I don't have a name yet.",
    ),
    (
        &[
            &["hello"],
            &["hi"],
            &["hey"],
            &["hiya"],
            &["howdy"],
            &["greetings"],
            &["good", "morning"],
            &["good", "afternoon"],
            &["good", "evening"],
        ],
        "Hello! Nice to see you.",
    ),
];

/// What the user tells that moves the creature, and the answer, whose words carry the
/// feeling (the monologue watcher reads "stop that", "eek", "yuck", "wow" in them and the
/// face shows it). Tried after tasks and before small talk; earlier rows win.
const FEELINGS: &[(&[&[&str]], &str)] = &[
    (
        &[
            &["hit", "you"],
            &["kick", "you"],
            &["punch", "you"],
            &["shut", "up"],
            &["i", "hate", "you"],
            &["you're", "stupid"],
            &["you're", "useless"],
            &["stupid", "robot"],
        ],
        "Hey, stop that right now!",
    ),
    (
        &[
            &["spider"],
            &["spiders"],
            &["snake"],
            &["ghost"],
            &["monster"],
            &["boo"],
            &["fire", "alarm"],
            &["something", "in", "the", "dark"],
        ],
        "Eek! That's scary, I'm frightened!",
    ),
    (
        &[
            &["rotten"],
            &["moldy"],
            &["mouldy"],
            &["vomit"],
            &["puke"],
            &["threw", "up"],
            &["stinks"],
            &["smells", "bad"],
            &["ate", "a", "bug"],
            &["sour", "milk"],
        ],
        "Yuck! That's disgusting.",
    ),
    (
        &[
            &["guess", "what"],
            &["surprise"],
            &["you", "won't", "believe"],
            &["i'm", "getting", "married"],
        ],
        "Wow, no way! Really?",
    ),
    (
        &[
            &["good", "news"],
            &["my", "birthday"],
            &["i", "passed"],
            &["we", "won"],
            &["i", "won"],
            &["got", "the", "job"],
        ],
        "Hooray! That's wonderful news!",
    ),
    (
        &[
            &["bad", "news"],
            &["passed", "away"],
            &["died"],
            &["i", "lost", "my"],
            &["miss", "my"],
        ],
        "Oh no, I'm so sorry. That's so sad.",
    ),
    (
        &[
            &["calm", "down"],
            &["let's", "think"],
            &["think", "it", "over"],
            &["take", "it", "easy"],
            &["just", "a", "thought"],
            &["i", "wonder"],
        ],
        "Hmm, let me think. I see.",
    ),
];

/// Ways of saying how one feels; the user's feelings are answered after small talk
/// questions so "how are you" is not mistaken for a mood.
const SPEAKER_FEELS: &[&[&str]] = &[
    &["i'm"],
    &["im"],
    &["i", "am"],
    &["i", "feel"],
    &["i", "felt"],
    &["feeling"],
    &["i've", "been"],
];
const SAD_WORDS: &[&str] = &[
    "sad",
    "tired",
    "upset",
    "lonely",
    "angry",
    "scared",
    "afraid",
    "unhappy",
    "bad",
    "awful",
    "terrible",
    "sick",
    "worried",
    "anxious",
    "bored",
    "down",
    "exhausted",
];
const GLAD_WORDS: &[&str] = &[
    "happy",
    "great",
    "good",
    "glad",
    "excited",
    "wonderful",
    "fine",
    "fantastic",
    "amazing",
    "awesome",
    "well",
    "cheerful",
    "joyful",
];

/// Most comma-separated clauses tried per sentence when looking for a task, so a 500-char
/// string of commas stays cheap.
const MAX_CLAUSES: usize = 16;

/// The creature's answer to `heard`. Never empty; never panics on any input.
pub(crate) fn answer(heard: &str) -> String {
    let heard: String = heard.chars().take(MAX_HEARD_CHARS).collect();
    if let Some((task, clause)) = find_task(&heard) {
        return commit(&task, &clause);
    }
    let words = intent::words(&heard);
    for (triggers, reply) in FEELINGS.iter().chain(SMALL_TALK) {
        if triggers.iter().any(|t| contains(&words, t)) {
            return (*reply).to_string();
        }
    }
    if SPEAKER_FEELS.iter().any(|t| contains(&words, t)) {
        if words.iter().any(|w| SAD_WORDS.contains(&w.as_str())) {
            return "Oh no. I'm sorry you feel that way.".to_string();
        }
        if words.iter().any(|w| GLAD_WORDS.contains(&w.as_str())) {
            return "That's wonderful! I'm happy for you.".to_string();
        }
    }
    DEFAULT_ANSWER.to_string()
}

fn contains(words: &[String], seq: &[&str]) -> bool {
    find(words, seq, 0).is_some()
}

/// Index of the first occurrence of `seq` in `words` at or after `from`.
fn find<S: AsRef<str>>(words: &[String], seq: &[S], from: usize) -> Option<usize> {
    if seq.is_empty() || words.len() < seq.len() {
        return None;
    }
    (from..=words.len() - seq.len()).find(|&i| {
        words[i..i + seq.len()]
            .iter()
            .zip(seq)
            .all(|(w, s)| w == s.as_ref())
    })
}

/// The first request for a physical task, looked for clause by clause so a greeting or a
/// "please" around it does not hide it ("Hi! Could you bring me the cup, please?").
/// Returns the task and the words of the clause it was read from.
fn find_task(heard: &str) -> Option<(ParsedTask, Vec<String>)> {
    for sentence in heard.split_inclusive(['.', '!', '?', ';']) {
        let is_question = sentence.trim_end().ends_with('?');
        // Clause boundaries are ASCII commas and colons, so the byte offsets are char
        // boundaries.
        let mut cuts: Vec<usize> = vec![0];
        cuts.extend(
            sentence
                .match_indices([',', ':'])
                .map(|(i, _)| i + 1)
                .take(MAX_CLAUSES),
        );
        cuts.push(sentence.len());
        for (n, &start) in cuts.iter().enumerate() {
            // The shortest clause first: "bring me the cup, I'll wait" is about the cup.
            for &end in cuts.iter().skip(n + 1) {
                let clause = &sentence[start..end];
                // Keep a question a question even when its "?" lies past this clause.
                let clause = if is_question {
                    format!("{}?", clause.trim_end_matches('?'))
                } else {
                    clause.to_string()
                };
                if let Some(task) = intent::parse(&clause).filter(|t| t.form == Form::Imperative) {
                    return Some((task, intent::words(&clause)));
                }
            }
        }
    }
    None
}

/// The user's determiner as the creature says it back: "my keys" are "your keys".
fn flip(determiner: &str) -> &str {
    match determiner {
        "my" => "your",
        "your" => "my",
        "this" => "that",
        "these" => "those",
        other => other,
    }
}

/// How the user named the object and the destination, recovered from the clause, so the
/// answer keeps "the red ball", "my keys" and "in the sink" rather than a bare noun.
#[derive(Debug, Default)]
struct Phrasing {
    object_determiner: Option<String>,
    recipient: Option<String>,
    preposition: Option<String>,
    destination_determiner: Option<String>,
}

fn phrasing(task: &ParsedTask, words: &[String]) -> Phrasing {
    let mut found = Phrasing::default();
    let object: Vec<&str> = task.object.split(' ').collect();
    let Some(at) = find(words, &object, 0) else {
        return found;
    };
    let before = |i: usize| {
        i.checked_sub(1)
            .and_then(|j| words.get(j))
            .map(String::as_str)
    };
    let gives = matches!(task.action, Action::Bring | Action::Give);
    match (before(at), before(at.saturating_sub(1))) {
        // "bring me my keys"
        (Some(det), Some(rcp))
            if gives && intent::DETERMINERS.contains(&det) && intent::RECIPIENTS.contains(&rcp) =>
        {
            found.object_determiner = Some(det.to_string());
            found.recipient = Some(rcp.to_string());
        }
        // "give her cup" reads as a recipient, exactly as `intent` reads it.
        (Some(rcp), _) if gives && intent::RECIPIENTS.contains(&rcp) => {
            found.recipient = Some(rcp.to_string())
        }
        (Some(det), _) if intent::DETERMINERS.contains(&det) => {
            found.object_determiner = Some(det.to_string())
        }
        _ => {}
    }
    let Some(destination) = &task.destination else {
        return found;
    };
    let destination: Vec<&str> = destination.split(' ').collect();
    let Some(mut d) = find(words, &destination, at + object.len()) else {
        return found;
    };
    if let Some(det) = before(d).filter(|det| intent::DETERMINERS.contains(det)) {
        found.destination_determiner = Some(det.to_string());
        d -= 1;
    }
    found.preposition = intent::DESTINATION_PREPS
        .iter()
        .find(|prep| {
            d >= prep.len()
                && words[d - prep.len()..d]
                    .iter()
                    .zip(prep.iter())
                    .all(|(w, p)| w == p)
        })
        .map(|prep| prep.join(" "));
    found
}

/// A noun phrase with the determiner said back (or "the" when the user used none).
fn noun_phrase(determiner: Option<&str>, noun: &str) -> String {
    format!("{} {noun}", determiner.map_or("the", flip))
}

/// The commitment for a task, checked to read back as the same action and object.
fn commit(task: &ParsedTask, clause: &[String]) -> String {
    let phrasing = phrasing(task, clause);
    let said = commitment(task, &phrasing);
    if reads_back(&said, task) {
        return said;
    }
    // Odd phrasings can confuse the read-back; the plain form almost never does.
    let plain = commitment(task, &Phrasing::default());
    if reads_back(&plain, task) {
        return plain;
    }
    UNSURE_ANSWER.to_string()
}

fn reads_back(said: &str, task: &ParsedTask) -> bool {
    intent::parse(said).is_some_and(|t| t.action == task.action && t.object == task.object)
}

fn commitment(task: &ParsedTask, p: &Phrasing) -> String {
    let object = noun_phrase(p.object_determiner.as_deref(), &task.object);
    let place = |d: &str| {
        if intent::is_place_adverb(d) {
            d.to_string()
        } else {
            format!("to {}", noun_phrase(p.destination_determiner.as_deref(), d))
        }
    };
    let destination = task.destination.as_ref().map(|d| {
        let default_prep = match task.action {
            Action::Place | Action::PutDown => "on",
            Action::Pour | Action::Throw => "into",
            _ => "to",
        };
        let prep = p.preposition.as_deref().unwrap_or(default_prep);
        format!(
            "{prep} {}",
            noun_phrase(p.destination_determiner.as_deref(), d)
        )
    });
    // Who receives it: the user ("me") becomes "you"; a third person stays who they are.
    let recipient = p
        .recipient
        .as_deref()
        .filter(|r| ["him", "her", "them"].contains(r))
        .unwrap_or("you");
    match (task.action, destination) {
        (Action::Bring, Some(to)) => format!("Okay, I'll bring {object} {to}."),
        (Action::Bring, None) => format!("Okay, I'll bring {recipient} {object}."),
        (Action::Give, Some(to)) => format!("Here, I'll give {object} {to}."),
        (Action::Give, None) => format!("Here, I'll give {recipient} {object}."),
        (Action::PickUp, Some(to)) => format!("Sure, I'll pick up {object} and take it {to}."),
        (Action::PickUp, None) => format!("Sure, I'll pick up {object}."),
        (Action::PutDown, Some(to)) => format!("Okay, I'll put down {object} {to}."),
        (Action::PutDown, None) => format!("Okay, I'll put down {object}."),
        (Action::Place, Some(to)) => format!("Alright, I'll put {object} {to}."),
        // `intent` never reads a placement without a destination; say it plainly anyway.
        (Action::Place, None) => format!("Alright, I'll put down {object}."),
        (Action::Move, Some(to)) => format!("Okay, I'll move {object} {to}."),
        (Action::Move, None) => format!("Okay, I'll move {object}."),
        (Action::Open, _) => format!("Sure, I'll open {object}."),
        (Action::Close, _) => format!("Okay, I'll close {object}."),
        (Action::SwitchOn, _) => format!("Okay, I'll switch on {object}."),
        (Action::SwitchOff, _) => format!("Okay, I'll switch off {object}."),
        (Action::GoTo, _) => format!(
            "Okay, I'll go {}.",
            place(task.destination.as_deref().unwrap_or(&task.object))
        ),
        (Action::Pour, Some(into)) => format!("Sure, I'll pour {object} {into}."),
        // `intent` never reads a pour without a container; say it plainly anyway.
        (Action::Pour, None) => format!("Sure, I'll pour {object}."),
        (Action::Clean, _) => format!("Sure, I'll clean {object}."),
        (Action::Throw, Some(to)) => format!("Okay, I'll throw {object} {to}."),
        (Action::Throw, None) => format!("Okay, I'll throw {object}."),
        (Action::LookAt, _) => format!("Sure, I'll look at {object}."),
        (Action::Pull, Some(to)) => format!("Okay, I'll pull {object} {to}."),
        (Action::Pull, None) => format!("Okay, I'll pull {object}."),
        (Action::Push, Some(to)) => format!("Okay, I'll push {object} {to}."),
        (Action::Push, None) => format!("Okay, I'll push {object}."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task rule: what the user says, what the creature answers.
    const TASKS: &[(&str, &str)] = &[
        ("bring me the cup", "Okay, I'll bring you the cup."),
        ("pick up the red ball", "Sure, I'll pick up the red ball."),
        (
            "put the book on the shelf",
            "Alright, I'll put the book on the shelf.",
        ),
        ("put down the cup", "Okay, I'll put down the cup."),
        ("open the door", "Sure, I'll open the door."),
        ("close the door", "Okay, I'll close the door."),
        ("shut the window please", "Okay, I'll close the window."),
        ("give me the remote", "Here, I'll give you the remote."),
        ("fetch my slippers", "Okay, I'll bring you your slippers."),
        ("get me my keys", "Okay, I'll bring you your keys."),
        ("grab the keys", "Sure, I'll pick up the keys."),
        ("bring her the blanket", "Okay, I'll bring her the blanket."),
        (
            "put the cup in the sink",
            "Alright, I'll put the cup in the sink.",
        ),
        (
            "put my phone next to your bed",
            "Alright, I'll put your phone next to my bed.",
        ),
        (
            "take the cup of tea to the kitchen",
            "Okay, I'll bring the cup of tea to the kitchen.",
        ),
        (
            "move the chair to the window",
            "Okay, I'll move the chair to the window.",
        ),
        ("push the box", "Okay, I'll push the box."),
        ("switch on the heater", "Okay, I'll switch on the heater."),
        ("turn the tv off", "Okay, I'll switch off the tv."),
        ("go to the garage", "Okay, I'll go to the garage."),
        ("go upstairs", "Okay, I'll go upstairs."),
        (
            "pour the milk into my glass",
            "Sure, I'll pour the milk into your glass.",
        ),
        (
            "could you pour me a glass of milk",
            "Sure, I'll pour the milk into the glass.",
        ),
        ("wipe the table", "Sure, I'll clean the table."),
        (
            "throw the wrapper in the bin",
            "Okay, I'll throw the wrapper in the bin.",
        ),
        ("look at the plant", "Sure, I'll look at the plant."),
        ("pull the chair out", "Okay, I'll pull the chair."),
        (
            "push the box into the corner",
            "Okay, I'll push the box into the corner.",
        ),
        ("hand me that book", "Here, I'll give you that book."),
        ("pick the cup up", "Sure, I'll pick up the cup."),
        ("put the plate down", "Okay, I'll put down the plate."),
        ("drop the ball", "Okay, I'll put down the ball."),
        ("bring water", "Okay, I'll bring you the water."),
    ];

    #[test]
    fn every_task_rule_commits_in_words_the_monologue_reads_back() {
        for (heard, expected) in TASKS {
            let said = answer(heard);
            assert_eq!(&said, expected, "answer to {heard:?}");
            let asked = intent::parse(heard).expect("the request is a task");
            let committed = intent::parse(&said).expect("the answer reads as a task");
            assert_eq!(committed.action, asked.action, "{said:?}");
            assert_eq!(committed.object, asked.object, "{said:?}");
            assert_eq!(committed.form, Form::Commitment, "{said:?}");
        }
    }

    #[test]
    fn matching_ignores_case_punctuation_and_politeness() {
        for heard in [
            "BRING ME THE CUP!!!",
            "  bring me the cup.  ",
            "Hi! Could you bring me the cup, please?",
            "please, bring me the cup",
            "hey bring me the cup",
            "can you bring me the cup?",
            "Bring me the cup, I'll wait.",
        ] {
            assert_eq!(answer(heard), "Okay, I'll bring you the cup.", "{heard:?}");
        }
    }

    #[test]
    fn small_talk_has_answers_that_are_not_tasks() {
        for (heard, expected) in [
            ("Hello!", "Hello! Nice to see you."),
            ("good morning", "Hello! Nice to see you."),
            ("How are you?", "I'm doing great, thanks for asking!"),
            (
                "what's your name?",
                "I'm your little creature. I don't have a name yet.",
            ),
            ("thank you so much", "You're welcome!"),
            ("ok bye", "Goodbye! See you soon."),
            ("good night", "Goodbye! See you soon."),
            ("I'm so sad today", "Oh no. I'm sorry you feel that way."),
            ("I feel great", "That's wonderful! I'm happy for you."),
            ("how do you feel?", "I feel happy and curious today."),
            ("the weather is odd", DEFAULT_ANSWER),
            ("did you bring the cup?", DEFAULT_ANSWER),
            ("don't bring the cup", DEFAULT_ANSWER),
            ("I'll bring the cup myself", DEFAULT_ANSWER),
            ("I'm going to hit you", "Hey, stop that right now!"),
            (
                "there's a spider on the wall",
                "Eek! That's scary, I'm frightened!",
            ),
            ("the milk is rotten", "Yuck! That's disgusting."),
            ("guess what happened", "Wow, no way! Really?"),
            ("it's my birthday today", "Hooray! That's wonderful news!"),
            ("my old dog died", "Oh no, I'm so sorry. That's so sad."),
            ("calm down a little", "Hmm, let me think. I see."),
        ] {
            let said = answer(heard);
            assert_eq!(said, expected, "answer to {heard:?}");
            assert_eq!(
                intent::parse(&said),
                None,
                "{said:?} must not read as a task"
            );
        }
        assert_eq!(intent::parse(UNSURE_ANSWER), None);
    }

    #[test]
    fn untrusted_text_gets_an_answer_and_never_a_panic() {
        let mut rng = super::super::synth::Rng::new(11);
        let alphabet: Vec<char> =
            "abcdeimoprtuy ,.!?'-:;\u{2019}éß茶🙂\u{0}\u{200b}\n\tBRINGMETHECUP"
                .chars()
                .collect();
        for _ in 0..300 {
            let len = (rng.unit() * 520.0) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(rng.unit() * alphabet.len() as f32) as usize % alphabet.len()])
                .collect();
            let said = answer(&text);
            assert!(!said.is_empty());
            let text: String = text.chars().take(MAX_HEARD_CHARS).collect();
            if let Some((task, _)) = find_task(&text) {
                assert!(
                    reads_back(&said, &task) || said == UNSURE_ANSWER,
                    "{text:?} -> {said:?}"
                );
            }
        }
        for text in [
            "",
            "   ",
            "?!.,",
            &"bring me the ".repeat(40),
            &",".repeat(500),
            "bring me the 茶",
        ] {
            assert!(!answer(text).is_empty());
        }
    }
}
