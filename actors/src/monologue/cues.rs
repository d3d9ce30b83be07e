//! Affect from words: what the creature's own closed phrases say about how it feels
//! ("oh no, I dropped it", "yuck", "stop that right now!", "hooray", "I'm sorry"). A small
//! lexicon gives each cue phrase an emotion and a weight; rules drop what is negated ("I'm
//! not scared"), reassured away ("don't be scared") or asked of the listener ("are you
//! sad?"), and raise the strength of what is exclaimed or intensified ("so gross!"). The
//! watcher casts the result to `affect` (see `docs/intent-watcher.md`, "Affect from words",
//! for where each cue moves the valence/arousal point).

use crate::intent;
use crate::signals::{Emotion, WordCue};

/// Cue phrases (as [`intent::spoken_words`] gives them), the emotion each shows, and its
/// weight: 1 for a cue that says it alone ("yuck"), less for one that needs company ("ugh").
const LEXICON: &[(&[&str], Emotion, f32)] = &[
    // Joy.
    (&["hooray"], Emotion::Happy, 1.0),
    (&["hurray"], Emotion::Happy, 1.0),
    (&["yay"], Emotion::Happy, 1.0),
    (&["woohoo"], Emotion::Happy, 1.0),
    (&["yippee"], Emotion::Happy, 1.0),
    (&["wonderful"], Emotion::Happy, 0.7),
    (&["fantastic"], Emotion::Happy, 0.7),
    (&["awesome"], Emotion::Happy, 0.7),
    (&["delighted"], Emotion::Happy, 0.8),
    (&["happy"], Emotion::Happy, 0.6),
    (&["glad"], Emotion::Happy, 0.6),
    (&["love", "it"], Emotion::Happy, 0.8),
    (&["great"], Emotion::Happy, 0.5),
    (&["haha"], Emotion::Happy, 0.6),
    // Sadness, regret and mishaps.
    (&["i'm", "sorry"], Emotion::Sad, 1.0),
    (&["so", "sorry"], Emotion::Sad, 1.0),
    (&["sorry"], Emotion::Sad, 0.7),
    (&["sad"], Emotion::Sad, 0.8),
    (&["unhappy"], Emotion::Sad, 0.8),
    (&["heartbroken"], Emotion::Sad, 1.0),
    (&["what", "a", "shame"], Emotion::Sad, 0.8),
    (&["too", "bad"], Emotion::Sad, 0.6),
    (&["unfortunately"], Emotion::Sad, 0.5),
    (&["oh", "no"], Emotion::Sad, 0.6),
    (&["i", "dropped"], Emotion::Sad, 0.5),
    (&["i", "broke"], Emotion::Sad, 0.6),
    (&["i", "spilled"], Emotion::Sad, 0.5),
    (&["i", "miss"], Emotion::Sad, 0.7),
    (&["poor"], Emotion::Sad, 0.4),
    (&["sigh"], Emotion::Sad, 0.6),
    // Anger.
    (&["stop", "that"], Emotion::Anger, 1.0),
    (&["stop", "it"], Emotion::Anger, 1.0),
    (&["cut", "it", "out"], Emotion::Anger, 1.0),
    (&["knock", "it", "off"], Emotion::Anger, 1.0),
    (&["that's", "enough"], Emotion::Anger, 0.9),
    (&["how", "dare"], Emotion::Anger, 1.0),
    (&["leave", "me", "alone"], Emotion::Anger, 0.9),
    (&["angry"], Emotion::Anger, 0.8),
    (&["furious"], Emotion::Anger, 1.0),
    (&["mad"], Emotion::Anger, 0.6),
    (&["annoying"], Emotion::Anger, 0.6),
    (&["grr"], Emotion::Anger, 1.0),
    (&["argh"], Emotion::Anger, 0.8),
    (&["right", "now"], Emotion::Anger, 0.3),
    // Fear.
    (&["help"], Emotion::Fear, 0.7),
    (&["scary"], Emotion::Fear, 0.9),
    (&["scared"], Emotion::Fear, 0.9),
    (&["afraid"], Emotion::Fear, 0.9),
    (&["frightened"], Emotion::Fear, 1.0),
    (&["terrified"], Emotion::Fear, 1.0),
    (&["eek"], Emotion::Fear, 1.0),
    (&["yikes"], Emotion::Fear, 0.9),
    (&["watch", "out"], Emotion::Fear, 0.8),
    (&["look", "out"], Emotion::Fear, 0.8),
    (&["careful"], Emotion::Fear, 0.4),
    (&["danger"], Emotion::Fear, 0.8),
    (&["spider"], Emotion::Fear, 0.5),
    (&["going", "to", "fall"], Emotion::Fear, 0.6),
    // Surprise.
    (&["wow"], Emotion::Surprise, 0.9),
    (&["whoa"], Emotion::Surprise, 0.9),
    (&["no", "way"], Emotion::Surprise, 0.9),
    (&["what", "a", "surprise"], Emotion::Surprise, 1.0),
    (&["oh", "my"], Emotion::Surprise, 0.7),
    (&["can't", "believe"], Emotion::Surprise, 0.8),
    (&["unbelievable"], Emotion::Surprise, 0.8),
    (&["gosh"], Emotion::Surprise, 0.6),
    (&["really"], Emotion::Surprise, 0.3),
    // Disgust.
    (&["yuck"], Emotion::Disgust, 1.0),
    (&["ew"], Emotion::Disgust, 1.0),
    (&["eww"], Emotion::Disgust, 1.0),
    (&["ewww"], Emotion::Disgust, 1.0),
    (&["blech"], Emotion::Disgust, 1.0),
    (&["gross"], Emotion::Disgust, 0.9),
    (&["disgusting"], Emotion::Disgust, 1.0),
    (&["nasty"], Emotion::Disgust, 0.8),
    (&["stinks"], Emotion::Disgust, 0.8),
    (&["smelly"], Emotion::Disgust, 0.6),
    (&["rotten"], Emotion::Disgust, 0.6),
    (&["moldy"], Emotion::Disgust, 0.6),
    (&["ugh"], Emotion::Disgust, 0.5),
    // Calm: back to a neutral face on purpose.
    (&["let", "me", "think"], Emotion::Neutral, 0.8),
    (&["i", "see"], Emotion::Neutral, 0.6),
    (&["understood"], Emotion::Neutral, 0.7),
    (&["noted"], Emotion::Neutral, 0.7),
    (&["fair", "enough"], Emotion::Neutral, 0.7),
    (&["calm", "down"], Emotion::Neutral, 0.6),
    (&["never", "mind"], Emotion::Neutral, 0.5),
];

/// Words that cancel a cue when they come just before it ("not scared", "never sad").
const CANCELLERS: &[&str] = &["not", "never", "no", "don't", "isn't", "wasn't", "aren't"];

/// Words that strengthen a cue just before it ("so sorry", "really gross").
const INTENSIFIERS: &[&str] = &["so", "very", "really", "super", "totally", "too", "such"];

/// Total weight a phrase must show for a cue to be cast: a lone "great" or "really" says
/// too little.
const MIN_WEIGHT: f32 = 0.55;

/// The feeling a closed phrase shows, if it shows one clearly.
///
/// Each lexicon entry found adds its weight to its emotion, unless a canceller stands in
/// the two words before it ("I'm not scared", "don't be sad") or the phrase is a question
/// about the listener ("are you scared?"; a surprised "really?" still counts). The emotion
/// with the most weight wins, if it reaches [`MIN_WEIGHT`]; its strength grows with that
/// weight, with an exclamation mark and with an intensifier before a cue.
pub fn read(phrase: &str) -> Option<WordCue> {
    let w = intent::spoken_words(phrase);
    let question = intent::is_question(phrase);
    let exclaimed = phrase.contains('!');
    let mut weight = [0.0_f32; Emotion::ALL.len()];
    let mut intensified = false;
    // Where the last cue ended: its words ("oh no") cancel nothing after it.
    let mut last_end = 0;
    let mut i = 0;
    while i < w.len() {
        let Some(&(seq, emotion, value)) = LEXICON
            .iter()
            .find(|(seq, _, _)| intent::starts_with(&w[i..], seq))
        else {
            i += 1;
            continue;
        };
        let before = &w[i.saturating_sub(2).max(last_end)..i];
        let cancelled = before.iter().any(|x| CANCELLERS.contains(&x.as_str()));
        let asked = question && emotion != Emotion::Surprise;
        if !(cancelled || asked) {
            weight[index(emotion)] += value;
            intensified |= before
                .last()
                .is_some_and(|x| INTENSIFIERS.contains(&x.as_str()));
        }
        i += seq.len();
        last_end = i;
    }
    let (best, &total) = weight
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))?;
    if total < MIN_WEIGHT {
        return None;
    }
    let mut strength = 0.4 + 0.4 * (total - MIN_WEIGHT) / (1.5 - MIN_WEIGHT);
    if exclaimed {
        strength += 0.2;
    }
    if intensified {
        strength += 0.15;
    }
    Some(WordCue {
        emotion: Emotion::ALL[best],
        strength: strength.clamp(0.0, 1.0),
    })
}

fn index(emotion: Emotion) -> usize {
    Emotion::ALL
        .iter()
        .position(|e| *e == emotion)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emotion(phrase: &str) -> Option<Emotion> {
        read(phrase).map(|c| c.emotion)
    }

    #[test]
    fn each_of_the_seven_expressions_has_cues() {
        for (phrase, expected) in [
            ("hooray, you're home!", Emotion::Happy),
            ("yay, I love it", Emotion::Happy),
            ("oh no, I dropped it", Emotion::Sad),
            ("I'm sorry, that was my fault", Emotion::Sad),
            ("stop that right now!", Emotion::Anger),
            ("cut it out, that's enough", Emotion::Anger),
            ("eek, a spider!", Emotion::Fear),
            ("help, I'm scared", Emotion::Fear),
            ("wow, no way", Emotion::Surprise),
            ("whoa, what a surprise", Emotion::Surprise),
            ("yuck, that's disgusting", Emotion::Disgust),
            ("ew, the milk is rotten", Emotion::Disgust),
            ("hmm, let me think", Emotion::Neutral),
            ("I see, fair enough", Emotion::Neutral),
        ] {
            assert_eq!(emotion(phrase), Some(expected), "{phrase:?}");
        }
    }

    #[test]
    fn every_cue_in_the_lexicon_moves_its_own_emotion() {
        for &(seq, expected, weight) in LEXICON {
            let cue = seq.join(" ");
            // A strong cue says it alone; a weak one needs company ("ugh and ugh").
            let phrase = if weight >= MIN_WEIGHT {
                cue.clone()
            } else {
                assert_eq!(read(&cue), None, "{cue:?} alone is too weak");
                format!("{cue} and {cue}")
            };
            assert_eq!(emotion(&phrase), Some(expected), "{phrase:?}");
        }
    }

    #[test]
    fn negated_reassured_and_asked_cues_do_not_count() {
        for phrase in [
            "I'm not scared",
            "don't be sad",
            "are you scared?",
            "I'm never angry",
            "okay, I'll bring you the cup",
            "the cup is on the table",
            "great",
            "",
        ] {
            assert_eq!(read(phrase), None, "{phrase:?}");
        }
        // A surprised question is still surprise.
        assert_eq!(emotion("really? wow?"), Some(Emotion::Surprise));
    }

    #[test]
    fn an_exclamation_or_an_intensifier_strengthens_a_cue() {
        let plain = read("that's gross").unwrap();
        let loud = read("that's gross!").unwrap();
        let very = read("that's so gross").unwrap();
        assert_eq!(plain.emotion, Emotion::Disgust);
        assert!(loud.strength > plain.strength, "{loud:?} vs {plain:?}");
        assert!(very.strength > plain.strength, "{very:?} vs {plain:?}");
        assert!((0.0..=1.0).contains(&read("yuck yuck yuck ew gross!!!").unwrap().strength));
    }

    #[test]
    fn the_strongest_feeling_wins() {
        // "oh no" alone is sad; with danger it is fear.
        assert_eq!(emotion("oh no"), Some(Emotion::Sad));
        assert_eq!(
            emotion("oh no, watch out, it's going to fall"),
            Some(Emotion::Fear)
        );
        assert_eq!(emotion("oh no, so sorry"), Some(Emotion::Sad));
    }
}
