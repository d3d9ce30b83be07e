//! Text from outside (an utterance, a task's object, a body's report, a request that echoes
//! input) on its way to a terminal or a log line: [`printable`] escapes every character
//! that could move the cursor, clear the screen, start a new (forged) log line or reorder
//! what is shown, so such text is always seen for what it is.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal raw: C0 controls (newline and tab included), DEL,
/// C1 controls, the bidirectional overrides, embeddings, isolates and marks, and the
/// Unicode line and paragraph separators.
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}' | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// `s` with every [unsafe](is_unsafe) character written as a `\u{..}` escape (`\n` becomes
/// `\u{a}`, ESC `\u{1b}`, RIGHT-TO-LEFT OVERRIDE `\u{202e}`). Borrows when nothing needs
/// escaping, which is nearly always.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in ["bring me the cup", "café ☕ 日本", "", "a\\b \"quoted\""] {
            assert!(matches!(printable(s), Cow::Borrowed(b) if b == s), "{s}");
        }
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(printable("\u{0}\u{1b}[2J"), "\\u{0}\\u{1b}[2J");
        assert_eq!(
            printable("ok\nERROR forged line\r\t"),
            "ok\\u{a}ERROR forged line\\u{d}\\u{9}"
        );
        assert_eq!(
            printable("del\u{7f} c1\u{85}\u{9b}"),
            "del\\u{7f} c1\\u{85}\\u{9b}"
        );
    }

    #[test]
    fn bidi_overrides_and_separators_are_escaped() {
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(
            printable("\u{2066}x\u{2069}\u{200f}\u{61c}\u{2028}"),
            "\\u{2066}x\\u{2069}\\u{200f}\\u{61c}\\u{2028}"
        );
    }

    #[test]
    fn nothing_unsafe_survives_escaping() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = printable(&all);
        assert!(!out.chars().any(is_unsafe));
        assert!(out.contains("\\u{202e}") && out.contains('a') && out.contains('é'));
    }
}
