//! The `sim` backend's creature voice: it turns an answer into a timed score of syllables
//! and renders it as babble (a buzzy, formant-coloured hum per syllable), so the face's
//! mouth, driven by loudness, opens on every syllable and closes between words.
//!
//! It is not speech: only the rhythm (syllables from vowel groups), the vowel colour (two
//! resonances picked from the syllable's letters) and the tune (falling statements, rising
//! questions) come from the text.

use creature_actors::SAMPLE_RATE;

/// Most harmonics summed per sample: enough for a bright buzz below about 5 kHz.
const MAX_HARMONICS: usize = 24;
/// Harmonics stop here; above it a creature voice only adds hiss.
const HARMONIC_CEILING_HZ: f32 = 5_000.0;
/// Peak of a stressed syllable; harmonic weights sum to 1, so no sample exceeds this plus
/// the consonant noise, which keeps the output well below 0.9.
const SYLLABLE_PEAK: f32 = 0.55;
/// Peak of the consonant noise burst at a syllable's onset.
const BURST_PEAK: f32 = 0.05;
/// Length of that burst: about the length of a plosive's release.
const BURST_SECONDS: f32 = 0.018;
/// Cap on syllables per word, so a 500-letter nonsense word cannot hold the voice for a
/// minute.
const MAX_SYLLABLES_PER_WORD: usize = 6;
/// Cap on words per utterance, for the same reason.
pub(crate) const MAX_WORDS: usize = 60;
/// English averages about this many syllables a word; a word of this length takes exactly
/// one word slot (1 / words_per_second).
const MEAN_SYLLABLES: f32 = 1.5;
/// Share of a word slot spent in the silence after the word; the rest is syllables.
const GAP_SHARE: f32 = 0.25;

/// A tiny deterministic generator (SplitMix64): jitter and breath noise must repeat exactly
/// for a given seed, and the backend needs nothing cryptographic.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..1.
    pub(crate) fn unit(&mut self) -> f32 {
        // 24 random bits fill an f32 mantissa exactly.
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in -1..1.
    pub(crate) fn signed(&mut self) -> f32 {
        self.unit() * 2.0 - 1.0
    }
}

/// How the creature speaks: its pace and the middle of its pitch range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VoiceShape {
    pub(crate) words_per_second: f32,
    pub(crate) pitch_hz: f32,
}

/// One voiced syllable, fixed when the score is written so rendering only accumulates phase.
#[derive(Debug, Clone)]
struct Syllable {
    /// Fundamental at the syllable's start and end; the glide between them is the tune.
    f0_start: f32,
    f0_end: f32,
    /// Amplitude of each harmonic (the vowel colour), summing to 1.
    harmonics: [f32; MAX_HARMONICS],
    /// Peak amplitude of the syllable.
    loudness: f32,
    /// Amplitude of the noise burst that stands in for the onset consonant.
    burst: f32,
    /// Shape of the loudness envelope: shares of the syllable spent rising and falling.
    attack: f32,
    release: f32,
}

#[derive(Debug, Clone)]
enum SoundKind {
    Voiced(Box<Syllable>),
    /// Exact silence: the mouth closes.
    Pause,
}

#[derive(Debug, Clone)]
struct Sound {
    start: usize,
    len: usize,
    kind: SoundKind,
}

/// A timed plan of what the creature will say: its sounds sample by sample and where each
/// word's audio starts, so the text piece can go out on the frame where the word is heard.
#[derive(Debug, Clone)]
pub(crate) struct Score {
    sounds: Vec<Sound>,
    /// (first sample of the word's audio, the text piece with its leading space).
    words: Vec<(usize, String)>,
    len: usize,
}

impl Score {
    /// Total length in samples, trailing pause included.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The text pieces of words whose audio starts in `from..to`, joined as Moshi would emit
    /// consecutive pieces.
    pub(crate) fn pieces_between(&self, from: usize, to: usize) -> Option<String> {
        let first = self.words.partition_point(|(start, _)| *start < from);
        let last = self.words.partition_point(|(start, _)| *start < to);
        if first >= last {
            return None;
        }
        Some(
            self.words[first..last]
                .iter()
                .map(|(_, piece)| piece.as_str())
                .collect(),
        )
    }

    /// Words whose audio has not started by sample `pos`.
    pub(crate) fn words_after(&self, pos: usize) -> usize {
        self.words.len() - self.words.partition_point(|(start, _)| *start < pos)
    }

    fn push(&mut self, len: usize, kind: SoundKind) {
        let len = len.max(1);
        self.sounds.push(Sound {
            start: self.len,
            len,
            kind,
        });
        self.len += len;
    }
}

/// How a sentence's tune runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tune {
    Statement,
    Question,
    Exclamation,
}

impl Tune {
    fn of(last_word: &str) -> Tune {
        match last_word.trim_end_matches(['"', '\'', ')']).chars().last() {
            Some('?') => Tune::Question,
            Some('!') => Tune::Exclamation,
            _ => Tune::Statement,
        }
    }

    /// Pitch, relative to the voice's middle, at position `x` (0..1) through the sentence:
    /// a gentle declination, then a fall at the end of a statement or a rise for a question.
    fn contour(self, x: f32) -> f32 {
        let x = x.clamp(0.0, 1.0);
        match self {
            Tune::Statement => 1.06 - 0.10 * x - 0.5 * (x - 0.75).max(0.0),
            Tune::Question => 1.0 - 0.06 * x + 1.2 * (x - 0.7).max(0.0),
            Tune::Exclamation => 1.15 - 0.20 * x - 0.4 * (x - 0.75).max(0.0),
        }
    }
}

/// One syllable of a word as read from its letters.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spelling {
    /// Formant pair of the vowel group.
    formants: (f32, f32),
    /// Consonant noise for the letter before the vowel group.
    burst: f32,
}

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y')
}

/// Formants of a vowel group (adult values raised a little for a small creature).
fn vowel_formants(group: &str) -> (f32, f32) {
    let (f1, f2) = match group {
        g if g.starts_with("oo") || g.starts_with("ou") => (300.0, 870.0),
        g if g.starts_with("ee") || g.starts_with("ea") || g.starts_with("ie") => (270.0, 2290.0),
        g if g.starts_with("ai") || g.starts_with("ay") || g.starts_with("ei") => (480.0, 1950.0),
        g => match g.chars().next() {
            Some('a') => (730.0, 1090.0),
            Some('e') => (530.0, 1840.0),
            Some('i') | Some('y') => (390.0, 1990.0),
            Some('o') => (570.0, 840.0),
            Some('u') => (520.0, 1190.0),
            _ => (500.0, 1500.0),
        },
    };
    (f1 * 1.15, f2 * 1.15)
}

/// Noise for the consonant before a vowel: hissy fricatives most, plosives a little,
/// nasals and liquids none.
fn consonant_burst(c: Option<char>) -> f32 {
    match c {
        Some('s' | 'f' | 'h' | 'z' | 'v' | 'c' | 'x' | 'j') => BURST_PEAK,
        Some('p' | 't' | 'k' | 'b' | 'd' | 'g' | 'q') => BURST_PEAK * 0.7,
        _ => 0.0,
    }
}

/// The syllables of a word: one per vowel group, less a silent final "e", at least one.
fn spell(word: &str) -> Vec<Spelling> {
    let letters: Vec<char> = word
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < letters.len() {
        if is_vowel(letters[i]) {
            let start = i;
            while i < letters.len() && is_vowel(letters[i]) {
                i += 1;
            }
            groups.push((start, i));
        } else {
            i += 1;
        }
    }
    // "here", "make": a lone final e after a consonant is silent; "table" keeps its "-ble".
    if groups.len() > 1
        && let Some(&(start, end)) = groups.last()
        && end == letters.len()
        && end - start == 1
        && letters[start] == 'e'
        && !(start >= 2 && letters[start - 1] == 'l' && !is_vowel(letters[start - 2]))
    {
        groups.pop();
    }
    if groups.is_empty() {
        // Digits, symbols and scripts without Latin vowels still get one syllable.
        let burst = consonant_burst(letters.first().copied());
        return vec![Spelling {
            formants: vowel_formants(""),
            burst,
        }];
    }
    groups
        .iter()
        .take(MAX_SYLLABLES_PER_WORD)
        .map(|&(start, end)| {
            let group: String = letters[start..end].iter().collect();
            let before = start.checked_sub(1).map(|j| letters[j]);
            Spelling {
                formants: vowel_formants(&group),
                burst: consonant_burst(before),
            }
        })
        .collect()
}

/// Harmonic amplitudes for a voice at `f0` through two resonances: a glottal-like spectral
/// tilt shaped by the vowel's formants, normalised so the amplitudes sum to 1.
fn harmonic_weights(f0: f32, formants: (f32, f32), tilt: f32) -> [f32; MAX_HARMONICS] {
    let mut weights = [0.0; MAX_HARMONICS];
    let count = ((HARMONIC_CEILING_HZ / f0.max(1.0)) as usize).clamp(1, MAX_HARMONICS);
    let resonance = |h: f32, centre: f32, width: f32| 1.0 / (1.0 + ((h - centre) / width).powi(2));
    for (k, weight) in weights.iter_mut().enumerate().take(count) {
        let n = (k + 1) as f32;
        let h = n * f0;
        let colour = resonance(h, formants.0, 160.0) + 0.6 * resonance(h, formants.1, 220.0) + 0.03;
        *weight = colour / n.powf(tilt);
    }
    let sum: f32 = weights.iter().sum();
    if sum > 0.0 {
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    weights
}

/// Write the score of an answer: each word's syllables, a short gap after every word, a
/// longer pause after a comma and longer still after a sentence.
pub(crate) fn score_answer(text: &str, shape: VoiceShape, rng: &mut Rng) -> Score {
    let words: Vec<&str> = text.split_whitespace().take(MAX_WORDS).collect();
    let slot = SAMPLE_RATE as f32 / shape.words_per_second;
    let syllable_len = slot * (1.0 - GAP_SHARE) / MEAN_SYLLABLES;
    let mut score = Score {
        sounds: Vec::new(),
        words: Vec::new(),
        len: 0,
    };

    // Each sentence gets its own tune, so "Hello! Nice to see you." rises and falls twice.
    let mut sentence_start = 0;
    while sentence_start < words.len() {
        let sentence_end = words[sentence_start..]
            .iter()
            .position(|w| w.ends_with(['.', '!', '?']))
            .map_or(words.len(), |i| sentence_start + i + 1);
        let sentence = &words[sentence_start..sentence_end];
        let tune = sentence.last().map_or(Tune::Statement, |w| Tune::of(w));
        let spelled: Vec<Vec<Spelling>> = sentence.iter().map(|w| spell(w)).collect();
        let total = spelled.iter().map(Vec::len).sum::<usize>().max(1) as f32;
        let mut done = 0usize;

        for (word, syllables) in sentence.iter().zip(&spelled) {
            score.words.push((score.len, format!(" {word}")));
            // A word before a comma or a full stop is drawn out a little, as people do.
            let phrase_final = word.ends_with([',', ';', ':', '.', '!', '?']);
            for (i, spelling) in syllables.iter().enumerate() {
                let stressed = i == 0;
                let jitter = 1.0 + 0.03 * rng.signed();
                let lift = if stressed { 1.04 } else { 1.0 };
                let f0_start = shape.pitch_hz * tune.contour(done as f32 / total) * jitter * lift;
                let f0_end = shape.pitch_hz * tune.contour((done + 1) as f32 / total) * jitter;
                let mut len = syllable_len * (0.9 + 0.2 * rng.unit());
                if stressed {
                    len *= 1.1;
                }
                if phrase_final && i + 1 == syllables.len() {
                    len *= 1.2;
                }
                let loudness =
                    SYLLABLE_PEAK * if stressed { 1.0 } else { 0.82 } * (0.9 + 0.1 * rng.unit());
                let syllable = Syllable {
                    f0_start,
                    f0_end,
                    harmonics: harmonic_weights(0.5 * (f0_start + f0_end), spelling.formants, 1.0),
                    loudness,
                    burst: spelling.burst,
                    attack: 0.25,
                    release: 0.4,
                };
                score.push(len as usize, SoundKind::Voiced(Box::new(syllable)));
                done += 1;
            }
            let pause = if word.ends_with(['.', '!', '?']) {
                slot * (GAP_SHARE + 0.8)
            } else if word.ends_with([',', ';', ':']) {
                slot * (GAP_SHARE + 0.5)
            } else {
                slot * GAP_SHARE
            };
            score.push(pause as usize, SoundKind::Pause);
        }
        sentence_start = sentence_end;
    }
    score
}

/// The score of a backchannel: two soft, low, closed-mouth hums, "mm" then a slightly
/// rising "hm".
pub(crate) fn score_backchannel(pitch_hz: f32) -> Score {
    let sr = SAMPLE_RATE as f32;
    let hum = |f0_start: f32, f0_end: f32, burst: f32| Syllable {
        f0_start: pitch_hz * f0_start,
        f0_end: pitch_hz * f0_end,
        // A nasal murmur: one low resonance, a weak second, and a steep tilt.
        harmonics: harmonic_weights(pitch_hz * 0.75, (280.0, 1_100.0), 2.0),
        loudness: 0.18,
        burst,
        attack: 0.3,
        release: 0.45,
    };
    let mut score = Score {
        sounds: Vec::new(),
        words: vec![(0, " mm-hm".to_string())],
        len: 0,
    };
    score.push(
        (0.17 * sr) as usize,
        SoundKind::Voiced(Box::new(hum(0.76, 0.73, 0.0))),
    );
    score.push((0.07 * sr) as usize, SoundKind::Pause);
    score.push(
        (0.23 * sr) as usize,
        SoundKind::Voiced(Box::new(hum(0.72, 0.82, BURST_PEAK * 0.3))),
    );
    score
}

/// The oscillator that sings scores. It keeps its phase from frame to frame, so audio cut
/// into 1920-sample frames is identical to audio rendered in one go: no clicks at frame
/// boundaries.
#[derive(Debug, Clone)]
pub(crate) struct Synth {
    /// Phase of the fundamental in cycles, 0..1; harmonic k sits at k times it.
    phase: f64,
    /// Breath noise for consonant bursts.
    noise: Rng,
}

impl Synth {
    pub(crate) fn new(seed: u64) -> Self {
        // A different stream from the score's jitter, still fixed by the seed.
        Synth {
            phase: 0.0,
            noise: Rng::new(seed ^ 0x5EED_B2EA_7A11_0000),
        }
    }

    /// Render samples `pos..pos + out.len()` of `score` into `out`; past the end is silence.
    pub(crate) fn render(&mut self, score: &Score, pos: usize, out: &mut [f32]) {
        let mut index = score.sounds.partition_point(|s| s.start + s.len <= pos);
        for (i, sample) in out.iter_mut().enumerate() {
            let t = pos + i;
            while score
                .sounds
                .get(index)
                .is_some_and(|s| t >= s.start + s.len)
            {
                index += 1;
            }
            *sample = match score.sounds.get(index) {
                Some(Sound {
                    start,
                    len,
                    kind: SoundKind::Voiced(syllable),
                }) => self.voiced(syllable, t - start, *len),
                _ => 0.0,
            };
        }
    }

    fn voiced(&mut self, syllable: &Syllable, at: usize, len: usize) -> f32 {
        let sr = SAMPLE_RATE as f32;
        let x = at as f32 / len as f32;
        let f0 = syllable.f0_start + (syllable.f0_end - syllable.f0_start) * x;
        self.phase = (self.phase + f64::from(f0) / f64::from(SAMPLE_RATE)).fract();

        // sin(k·θ) for every harmonic by the Chebyshev recurrence: one sin and one cos a
        // sample instead of one per harmonic.
        let theta = std::f64::consts::TAU * self.phase;
        let (s1, c1) = theta.sin_cos();
        let twice_cos = 2.0 * c1;
        let (mut previous, mut current) = (0.0f64, s1);
        let mut buzz = 0.0f64;
        for &weight in &syllable.harmonics {
            if weight == 0.0 {
                break;
            }
            buzz += f64::from(weight) * current;
            let next = twice_cos * current - previous;
            previous = current;
            current = next;
        }

        let burst_len = (BURST_SECONDS * sr) as usize;
        let burst = if syllable.burst > 0.0 && at < burst_len {
            // A sine-shaped swell, so the noise starts and ends at zero.
            let swell = (std::f32::consts::PI * at as f32 / burst_len as f32).sin();
            syllable.burst * swell * self.noise.signed()
        } else {
            0.0
        };
        syllable.loudness * envelope(x, syllable.attack, syllable.release) * buzz as f32 + burst
    }
}

/// Raised-cosine rise and fall: zero at both ends, so syllables never start with a click.
fn envelope(x: f32, attack: f32, release: f32) -> f32 {
    let half_cos = |u: f32| 0.5 - 0.5 * (std::f32::consts::PI * u.clamp(0.0, 1.0)).cos();
    if x < attack {
        half_cos(x / attack)
    } else if x > 1.0 - release {
        half_cos((1.0 - x) / release)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: VoiceShape = VoiceShape {
        words_per_second: 3.0,
        pitch_hz: 220.0,
    };

    fn voiced(score: &Score) -> Vec<&Syllable> {
        score
            .sounds
            .iter()
            .filter_map(|s| match &s.kind {
                SoundKind::Voiced(syllable) => Some(syllable.as_ref()),
                SoundKind::Pause => None,
            })
            .collect()
    }

    #[test]
    fn syllables_come_from_vowel_groups() {
        for (word, count) in [
            ("cup", 1),
            ("Okay,", 2),
            ("I'll", 1),
            ("bring", 1),
            ("here", 1),
            ("table", 2),
            ("alright", 2),
            ("you", 1),
            ("banana", 3),
            ("42", 1),
            ("茶", 1),
            ("supercalifragilisticexpialidocious", MAX_SYLLABLES_PER_WORD),
        ] {
            assert_eq!(spell(word).len(), count, "{word}");
        }
    }

    #[test]
    fn statements_fall_and_questions_rise_at_the_end() {
        let statement = score_answer("I will bring you the cup.", SHAPE, &mut Rng::new(1));
        let question = score_answer("Shall I bring you the cup?", SHAPE, &mut Rng::new(1));
        let last = |s: &Score| voiced(s).last().map(|syl| syl.f0_end).unwrap_or_default();
        assert!(
            last(&statement) < 0.9 * SHAPE.pitch_hz,
            "statement ends low"
        );
        assert!(last(&question) > 1.2 * SHAPE.pitch_hz, "question ends high");
    }

    #[test]
    fn longer_words_take_longer_and_punctuation_pauses() {
        let short = score_answer("cup", SHAPE, &mut Rng::new(3)).len();
        let long = score_answer("banana", SHAPE, &mut Rng::new(3)).len();
        assert!(long as f32 > 1.8 * short as f32, "{long} vs {short}");
        let plain = score_answer("okay then", SHAPE, &mut Rng::new(3)).len();
        let comma = score_answer("okay, then", SHAPE, &mut Rng::new(3)).len();
        assert!(comma > plain + SAMPLE_RATE as usize / 10);
    }

    #[test]
    fn rendering_in_frames_equals_rendering_at_once() {
        let score = score_answer("Hello there! Is this a question?", SHAPE, &mut Rng::new(9));
        let mut whole = vec![0.0; score.len()];
        Synth::new(9).render(&score, 0, &mut whole);
        let mut framed = vec![0.0; score.len()];
        let mut synth = Synth::new(9);
        for (n, chunk) in framed.chunks_mut(1920).enumerate() {
            synth.render(&score, n * 1920, chunk);
        }
        assert_eq!(whole, framed);
        // No clicks: neighbouring samples never jump by more than a smooth voice does.
        let worst = whole
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max);
        assert!(worst < 0.25, "largest step between samples {worst}");
        assert!(whole.iter().all(|s| s.is_finite() && s.abs() < 0.9));
    }

    #[test]
    fn pieces_go_out_where_words_start() {
        let score = score_answer("Okay, I'll go.", SHAPE, &mut Rng::new(1));
        assert_eq!(score.pieces_between(0, 1).as_deref(), Some(" Okay,"));
        assert_eq!(
            score.pieces_between(1, score.len()).as_deref(),
            Some(" I'll go.")
        );
        assert_eq!(
            score.pieces_between(0, score.len()).as_deref(),
            Some(" Okay, I'll go.")
        );
        assert_eq!(score.words_after(1), 2);
        assert_eq!(score.pieces_between(score.len(), score.len() + 10), None);
    }
}
