//! A pure-Rust reader (and, for the tiny checkpoint, writer) of SentencePiece `.model` files,
//! and the streaming decoder that turns Moshi's text tokens into monologue pieces.
//!
//! A `.model` file is a protobuf `ModelProto` whose field 1 repeats `SentencePiece`
//! messages `{1: piece, 2: score, 3: type}`; every other field (trainer and normalizer
//! specs) is skipped. Decoding follows the C++ library: `▁` marks a word start and becomes a
//! space, `<0xNN>` byte pieces are gathered into UTF-8 (a character may span several steps),
//! and unknown, control and unused pieces are never emitted.

use std::collections::HashMap;
use std::fmt;

/// The SentencePiece word-boundary marker (U+2581).
pub(crate) const WORD_MARK: char = '\u{2581}';

/// Why a `.model` file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpmError {
    #[error("truncated protobuf at byte {0}")]
    Truncated(usize),
    #[error("malformed protobuf at byte {at}: {what}")]
    Malformed { at: usize, what: String },
    #[error("piece {id} is not valid UTF-8")]
    NotUtf8 { id: usize },
    #[error("byte piece {id} ({piece:?}) is not of the form <0xNN>")]
    BadBytePiece { id: usize, piece: String },
    #[error("the model has no pieces")]
    Empty,
}

/// What kind of piece an id is (SentencePiece's `SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    /// A single byte, written `<0xNN>`, for text outside the vocabulary.
    Byte(u8),
}

impl PieceKind {
    fn wire(self) -> u64 {
        match self {
            PieceKind::Normal => 1,
            PieceKind::Unknown => 2,
            PieceKind::Control => 3,
            PieceKind::UserDefined => 4,
            PieceKind::Unused => 5,
            PieceKind::Byte(_) => 6,
        }
    }
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// The vocabulary of a SentencePiece model, indexed by token id.
#[derive(Clone, PartialEq)]
pub struct SentencePieceModel {
    pieces: Vec<Piece>,
    /// What the encoder looks up: each normal piece's text, its first id and score.
    normal: HashMap<String, (u32, f32)>,
    /// The longest normal piece, in bytes, so the encoder knows how far to look.
    longest: usize,
    /// What spelling a character with byte pieces costs the encoder: below any normal
    /// piece, so a split that uses the vocabulary always wins.
    fallback_score: f32,
    /// The id of each byte piece `<0xNN>`, where the model has it.
    bytes: Vec<Option<u32>>,
    unknown: Option<u32>,
}

impl fmt::Debug for SentencePieceModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentencePieceModel")
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

impl SentencePieceModel {
    pub fn new(pieces: Vec<Piece>) -> Self {
        let mut normal = HashMap::new();
        let mut bytes = vec![None; 256];
        let mut unknown = None;
        for (id, p) in pieces.iter().enumerate() {
            let id = id as u32;
            match p.kind {
                PieceKind::Normal => {
                    normal.entry(p.text.clone()).or_insert((id, p.score));
                }
                PieceKind::Byte(b) => {
                    bytes[b as usize].get_or_insert(id);
                }
                PieceKind::Unknown => {
                    unknown.get_or_insert(id);
                }
                _ => {}
            }
        }
        let longest = normal.keys().map(String::len).max().unwrap_or(0);
        let min_score = normal.values().map(|&(_, s)| s).fold(0.0f32, f32::min);
        SentencePieceModel {
            pieces,
            normal,
            longest,
            fallback_score: min_score - 10.0,
            bytes,
            unknown,
        }
    }

    /// Read a serialized `ModelProto`.
    pub fn parse(bytes: &[u8]) -> Result<Self, SpmError> {
        let mut pieces = Vec::new();
        let mut reader = Reader::new(bytes);
        while let Some((field, value)) = reader.field()? {
            if let (1, Value::Bytes(msg, at)) = (field, value) {
                pieces.push(parse_piece(msg, at, pieces.len())?);
            }
        }
        if pieces.is_empty() {
            return Err(SpmError::Empty);
        }
        Ok(SentencePieceModel::new(pieces))
    }

    /// Serialize as a `ModelProto` the C++ library also accepts: the pieces, plus a trainer
    /// spec saying it is a unigram model with byte fallback and the usual special ids.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.pieces {
            let mut msg = Vec::new();
            put_bytes(&mut msg, 1, p.text.as_bytes());
            put_key(&mut msg, 2, 5);
            msg.extend_from_slice(&p.score.to_le_bytes());
            if p.kind != PieceKind::Normal {
                put_varint_field(&mut msg, 3, p.kind.wire());
            }
            put_bytes(&mut out, 1, &msg);
        }
        let mut trainer = Vec::new();
        put_varint_field(&mut trainer, 3, 1); // model_type: UNIGRAM
        put_varint_field(&mut trainer, 4, self.pieces.len() as u64); // vocab_size
        put_varint_field(&mut trainer, 35, 1); // byte_fallback
        if let Some(unk) = self
            .pieces
            .iter()
            .position(|p| p.kind == PieceKind::Unknown)
        {
            put_varint_field(&mut trainer, 40, unk as u64); // unk_id
        }
        for (field, name) in [(41, "<s>"), (42, "</s>"), (43, "<pad>")] {
            // bos_id, eos_id, pad_id; -1 (as protobuf encodes it) when absent.
            let id = self
                .pieces
                .iter()
                .position(|p| p.text == name)
                .map_or(u64::MAX, |i| i as u64);
            put_varint_field(&mut trainer, field, id);
        }
        put_bytes(&mut out, 2, &trainer);
        out
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub fn piece(&self, id: u32) -> Option<&Piece> {
        self.pieces.get(id as usize)
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The ids for one word, as the text stream of Kyutai's TTS takes it: the word mark
    /// prepended, then the split into normal pieces with the highest total score (Viterbi,
    /// as SentencePiece's unigram encoder). A character no piece covers is spelled with
    /// its UTF-8 byte pieces, or `<unk>` in a model without them (SentencePiece's byte
    /// fallback). Spaces inside `word` are kept as word marks.
    pub fn encode_word(&self, word: &str) -> Vec<u32> {
        let text: String = std::iter::once(WORD_MARK)
            .chain(word.chars().map(|c| if c == ' ' { WORD_MARK } else { c }))
            .collect();
        // best[i]: the best score of a split of text[..i], and the step that ends there.
        #[derive(Clone, Copy)]
        enum Step {
            Piece { from: usize, id: u32 },
            Fallback { from: usize },
        }
        let n = text.len();
        let mut best: Vec<Option<(f32, Step)>> = vec![None; n + 1];
        best[0] = Some((0.0, Step::Fallback { from: 0 }));
        for (start, c) in text.char_indices() {
            let Some((score, _)) = best[start] else {
                continue;
            };
            let mut offer = |end: usize, total: f32, step: Step| {
                if best[end].is_none_or(|(s, _)| total > s) {
                    best[end] = Some((total, step));
                }
            };
            offer(
                start + c.len_utf8(),
                score + self.fallback_score,
                Step::Fallback { from: start },
            );
            let rest = &text[start..];
            for (len, _) in rest
                .char_indices()
                .skip(1)
                .chain(std::iter::once((rest.len(), ' ')))
            {
                if len > self.longest {
                    break;
                }
                if let Some(&(id, piece_score)) = self.normal.get(&rest[..len]) {
                    offer(
                        start + len,
                        score + piece_score,
                        Step::Piece { from: start, id },
                    );
                }
            }
        }
        // Walk back from the end, then put the steps in order.
        let mut steps = Vec::new();
        let mut end = n;
        while end > 0 {
            let Some((_, step)) = best[end] else {
                break;
            };
            steps.push((step, end));
            end = match step {
                Step::Piece { from, .. } | Step::Fallback { from } => from,
            };
        }
        let mut ids = Vec::new();
        for (step, end) in steps.into_iter().rev() {
            match step {
                Step::Piece { id, .. } => ids.push(id),
                Step::Fallback { from } => {
                    let spelled: Option<Vec<u32>> = text[from..end]
                        .bytes()
                        .map(|b| self.bytes[b as usize])
                        .collect();
                    match (spelled, self.unknown) {
                        (Some(spelled), _) => ids.extend(spelled),
                        (None, Some(unk)) => ids.push(unk),
                        (None, None) => {}
                    }
                }
            }
        }
        ids
    }
}

fn parse_piece(msg: &[u8], at: usize, id: usize) -> Result<Piece, SpmError> {
    let mut text = None;
    let mut score = 0.0;
    let mut kind = 1;
    let mut reader = Reader::new(msg);
    reader.base = at;
    while let Some((field, value)) = reader.field()? {
        match (field, value) {
            (1, Value::Bytes(b, _)) => {
                text = Some(String::from_utf8(b.to_vec()).map_err(|_| SpmError::NotUtf8 { id })?)
            }
            (2, Value::Fixed32(bits)) => score = f32::from_bits(bits),
            (3, Value::Varint(v)) => kind = v,
            _ => {}
        }
    }
    let text = text.unwrap_or_default();
    let kind = match kind {
        2 => PieceKind::Unknown,
        3 => PieceKind::Control,
        4 => PieceKind::UserDefined,
        5 => PieceKind::Unused,
        6 => PieceKind::Byte(
            parse_byte_piece(&text).ok_or_else(|| SpmError::BadBytePiece {
                id,
                piece: text.clone(),
            })?,
        ),
        _ => PieceKind::Normal,
    };
    Ok(Piece { text, score, kind })
}

/// `<0x41>` -> 0x41.
fn parse_byte_piece(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A protobuf field value, as far as this reader needs to tell them apart.
enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    /// A 64-bit fixed field: nothing this reader uses, so only skipped.
    Fixed64,
    /// A length-delimited payload and its offset in the whole file (for error messages).
    Bytes(&'a [u8], usize),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the file, so errors point at the right byte.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            base: 0,
        }
    }

    fn varint(&mut self) -> Result<u64, SpmError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or(SpmError::Truncated(self.base + self.pos))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SpmError::Malformed {
            at: self.base + self.pos,
            what: "varint longer than 10 bytes".into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<(&'a [u8], usize), SpmError> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(SpmError::Truncated(self.base + start))?;
        self.pos = end;
        Ok((&self.buf[start..end], self.base + start))
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, SpmError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let at = self.base + self.pos;
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err(SpmError::Malformed {
                at,
                what: "field number 0".into(),
            });
        }
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| SpmError::Malformed {
                    at,
                    what: "length does not fit in memory".into(),
                })?;
                let (bytes, offset) = self.take(len)?;
                Value::Bytes(bytes, offset)
            }
            5 => {
                let (b, _) = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => {
                return Err(SpmError::Malformed {
                    at,
                    what: format!("unsupported wire type {other}"),
                });
            }
        };
        Ok(Some((field, value)))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(out, (field << 3) | wire);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_key(out, field, 0);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Turns the model's text tokens, one a step, into text pieces. Stateful, because a
/// character outside the vocabulary arrives as several byte tokens over several steps.
#[derive(Debug, Clone)]
pub struct TextDecoder {
    model: SentencePieceModel,
    /// Ids never emitted whatever their kind (Kyutai's text padding ids 0 and 3).
    skip: Vec<u32>,
    /// Bytes of a UTF-8 character still waiting for its continuation bytes.
    pending: Vec<u8>,
}

impl TextDecoder {
    pub fn new(model: SentencePieceModel, skip: Vec<u32>) -> Self {
        TextDecoder {
            model,
            skip,
            pending: Vec::with_capacity(4),
        }
    }

    pub fn model(&self) -> &SentencePieceModel {
        &self.model
    }

    /// Forget a half-received character (the conversation restarted).
    pub fn reset(&mut self) {
        self.pending.clear();
    }

    /// The text this token adds, if any. A leading space marks the start of a word.
    pub fn push(&mut self, id: u32) -> Option<String> {
        if self.skip.contains(&id) {
            return None;
        }
        match self.model.piece(id)?.kind {
            PieceKind::Byte(b) => {
                self.pending.push(b);
                self.take_pending(false)
            }
            PieceKind::Normal | PieceKind::UserDefined => {
                let mut out = self.take_pending(true).unwrap_or_default();
                let text = self.model.piece(id).map_or("", |p| p.text.as_str());
                out.extend(text.chars().map(|c| if c == WORD_MARK { ' ' } else { c }));
                (!out.is_empty()).then_some(out)
            }
            PieceKind::Unknown | PieceKind::Control | PieceKind::Unused => None,
        }
    }

    /// Emit the pending bytes once they form characters. `flush` gives up on an incomplete
    /// character (it becomes U+FFFD), as the C++ decoder does for stray bytes.
    fn take_pending(&mut self, flush: bool) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let out = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.to_string(),
            // An incomplete but so far valid character: wait for the rest (at most 4 bytes).
            Err(e) if e.error_len().is_none() && !flush && self.pending.len() < 4 => return None,
            Err(_) => String::from_utf8_lossy(&self.pending).into_owned(),
        };
        self.pending.clear();
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, kind: PieceKind) -> Piece {
        Piece {
            text: text.into(),
            score: 0.0,
            kind,
        }
    }

    /// `<unk> <s> </s> <pad> <0x00>..<0xFF> ▁hello ▁world ! ▁café é`
    fn model() -> SentencePieceModel {
        let mut pieces = vec![
            piece("<unk>", PieceKind::Unknown),
            piece("<s>", PieceKind::Control),
            piece("</s>", PieceKind::Control),
            piece("<pad>", PieceKind::Control),
        ];
        pieces.extend((0..=255u8).map(|b| piece(&format!("<0x{b:02X}>"), PieceKind::Byte(b))));
        for w in ["▁hello", "▁world", "!", "▁café", "é", "▁"] {
            pieces.push(Piece {
                text: w.into(),
                score: -1.5,
                kind: PieceKind::Normal,
            });
        }
        SentencePieceModel::new(pieces)
    }

    fn id(m: &SentencePieceModel, text: &str) -> u32 {
        m.pieces().iter().position(|p| p.text == text).unwrap() as u32
    }

    #[test]
    fn a_word_is_encoded_with_its_word_mark() {
        let m = model();
        assert_eq!(m.encode_word("hello"), vec![id(&m, "▁hello")]);
        assert_eq!(m.encode_word("café"), vec![id(&m, "▁café")]);
        // A piece for the rest of the word, after the mark on its own.
        assert_eq!(
            m.encode_word("é!"),
            vec![id(&m, "▁"), id(&m, "é"), id(&m, "!")]
        );
        assert_eq!(m.encode_word("world!"), vec![id(&m, "▁world"), id(&m, "!")]);
    }

    #[test]
    fn the_highest_scoring_split_wins() {
        let mut pieces = model().pieces().to_vec();
        for (text, score) in [("▁hel", -0.5), ("lo", -0.5), ("▁he", -0.1), ("llo", -5.0)] {
            pieces.push(Piece {
                text: text.into(),
                score,
                kind: PieceKind::Normal,
            });
        }
        let m = SentencePieceModel::new(pieces);
        // ▁hel + lo scores -1.0, above ▁hello (-1.5) and ▁he + llo (-5.1).
        assert_eq!(m.encode_word("hello"), vec![id(&m, "▁hel"), id(&m, "lo")]);
    }

    #[test]
    fn uncovered_characters_fall_back_to_bytes_or_unknown() {
        let m = model();
        // `x` has no piece: its byte, after the mark.
        assert_eq!(m.encode_word("x"), vec![id(&m, "▁"), id(&m, "<0x78>")]);
        // A two-byte character: both bytes, and the decoder puts it back together.
        let ids = m.encode_word("ß");
        assert_eq!(ids, vec![id(&m, "▁"), id(&m, "<0xC3>"), id(&m, "<0x9F>")]);
        let mut d = TextDecoder::new(m.clone(), vec![]);
        let text: String = ids.iter().filter_map(|&i| d.push(i)).collect();
        assert_eq!(text, " ß");
        // Without byte pieces, `<unk>`.
        let no_bytes: Vec<Piece> = m
            .pieces()
            .iter()
            .filter(|p| !matches!(p.kind, PieceKind::Byte(_)))
            .cloned()
            .collect();
        let m = SentencePieceModel::new(no_bytes);
        assert_eq!(
            m.encode_word("hellox"),
            vec![id(&m, "▁hello"), id(&m, "<unk>")]
        );
        assert!(m.encode_word("").len() == 1, "just the word mark");
    }

    fn decode(ids: &[u32]) -> Vec<Option<String>> {
        let mut d = TextDecoder::new(model(), vec![0, 3]);
        ids.iter().map(|&i| d.push(i)).collect()
    }

    #[test]
    fn a_written_model_reads_back_identically() {
        let m = model();
        let bytes = m.to_bytes();
        let back = SentencePieceModel::parse(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.len(), 4 + 256 + 6);
        assert_eq!(back.piece(4 + 0x41).unwrap().kind, PieceKind::Byte(0x41));
        assert_eq!(back.piece(id(&m, "▁hello")).unwrap().score, -1.5);
    }

    #[test]
    fn word_marks_become_spaces() {
        let m = model();
        let out = decode(&[id(&m, "▁hello"), id(&m, "▁world"), id(&m, "!"), id(&m, "▁")]);
        assert_eq!(
            out,
            [
                Some(" hello".into()),
                Some(" world".into()),
                Some("!".into()),
                Some(" ".into())
            ]
        );
    }

    #[test]
    fn padding_control_and_unknown_ids_are_skipped() {
        let m = model();
        // 0 and 3 are Kyutai's padding; 1 and 2 are control; 9999 is out of range.
        let out = decode(&[0, 1, 2, 3, 9999, id(&m, "▁hello")]);
        assert_eq!(out, [None, None, None, None, None, Some(" hello".into())]);
        // A skipped id is skipped even if it were a normal piece.
        let mut d = TextDecoder::new(m.clone(), vec![id(&m, "▁hello")]);
        assert_eq!(d.push(id(&m, "▁hello")), None);
    }

    #[test]
    fn byte_pieces_assemble_utf8_across_steps() {
        let byte = |b: u8| 4 + u32::from(b);
        // "ü" = C3 BC, "🦀" = F0 9F A6 80, each byte its own step.
        let out = decode(&[
            byte(0xC3),
            byte(0xBC),
            byte(0xF0),
            byte(0x9F),
            byte(0xA6),
            byte(0x80),
            byte(b'A'),
        ]);
        assert_eq!(
            out,
            [
                None,
                Some("ü".into()),
                None,
                None,
                None,
                Some("🦀".into()),
                Some("A".into())
            ]
        );
    }

    #[test]
    fn broken_byte_sequences_become_replacement_characters() {
        let m = model();
        let byte = |b: u8| 4 + u32::from(b);
        // A lead byte interrupted by a normal piece, then a lone continuation byte.
        let out = decode(&[byte(0xC3), id(&m, "▁world"), byte(0x80)]);
        assert_eq!(
            out,
            [None, Some("\u{FFFD} world".into()), Some("\u{FFFD}".into())]
        );
    }

    #[test]
    fn unicode_pieces_pass_through() {
        let m = model();
        let out = decode(&[id(&m, "▁café"), id(&m, "é")]);
        assert_eq!(out, [Some(" café".into()), Some("é".into())]);
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let bytes = model().to_bytes();
        for cut in [1, 7, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                SentencePieceModel::parse(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert_eq!(SentencePieceModel::parse(&[]), Err(SpmError::Empty));
        assert!(matches!(
            SentencePieceModel::parse(&[0x0b, 0, 0]),
            Err(SpmError::Malformed { .. })
        ));
        // A piece of type BYTE whose text is not <0xNN>.
        let bad = SentencePieceModel::new(vec![piece("<0xZZ>", PieceKind::Byte(0))]).to_bytes();
        assert!(matches!(
            SentencePieceModel::parse(&bad),
            Err(SpmError::BadBytePiece { id: 0, .. })
        ));
    }
}
