//! The agent's audio and text on the step side: a small jitter buffer that hands out whole
//! 80 ms frames, and a short queue of monologue pieces. Both are bounded and drop the
//! oldest when a fast server runs ahead of the loop.

use std::collections::VecDeque;

use creature_actors::FRAME_SAMPLES;
use creature_actors::ring::Ring;

/// Most text pieces held; beyond this the oldest is dropped and counted.
const MAX_PIECES: usize = 64;
/// With more pieces than this waiting, a step hands them all over at once, so the text
/// never lags the audio by more than a few frames.
const CATCH_UP_PIECES: usize = 4;

/// Jitter buffer plus text queue, owned by the step.
#[derive(Debug)]
pub(super) struct Playout {
    samples: VecDeque<f32>,
    /// Most samples held.
    capacity: usize,
    /// Samples to gather before playing (again) after the buffer ran dry.
    prefill: usize,
    /// Whether frames are being played; false until `prefill` is reached.
    playing: bool,
    pieces: Ring<String>,
    pub(super) frames_played: u64,
    /// Times the buffer ran dry while playing.
    pub(super) underruns: u64,
    /// Samples dropped because the buffer was full.
    pub(super) dropped_samples: u64,
    pub(super) pieces_dropped: u64,
    pub(super) pieces_received: u64,
}

impl Playout {
    /// `capacity_frames` is clamped to at least 2, `prefill_frames` to 1..=capacity.
    pub(super) fn new(capacity_frames: usize, prefill_frames: usize) -> Self {
        let capacity_frames = capacity_frames.max(2);
        let prefill_frames = prefill_frames.clamp(1, capacity_frames);
        Playout {
            samples: VecDeque::with_capacity(capacity_frames * FRAME_SAMPLES),
            capacity: capacity_frames * FRAME_SAMPLES,
            prefill: prefill_frames * FRAME_SAMPLES,
            playing: false,
            pieces: Ring::new(MAX_PIECES),
            frames_played: 0,
            underruns: 0,
            dropped_samples: 0,
            pieces_dropped: 0,
            pieces_received: 0,
        }
    }

    /// Queue decoded agent audio. When the buffer overflows, the oldest audio goes, down to
    /// one frame below capacity, so a steadily fast server costs an occasional skip rather
    /// than a click on every packet.
    pub(super) fn push_audio(&mut self, pcm: &[f32]) {
        self.samples.extend(pcm);
        if self.samples.len() > self.capacity {
            let excess = self.samples.len() - (self.capacity - FRAME_SAMPLES);
            self.samples.drain(..excess);
            self.dropped_samples += excess as u64;
        }
    }

    pub(super) fn push_piece(&mut self, piece: String) {
        self.pieces_received += 1;
        if self.pieces.push(piece).is_some() {
            self.pieces_dropped += 1;
        }
    }

    /// Fill `out` (one frame) with the next agent frame, or silence. True if it is audio.
    pub(super) fn next_frame(&mut self, out: &mut [f32]) -> bool {
        if !self.playing && self.samples.len() >= self.prefill {
            self.playing = true;
        }
        let n = out.len();
        if self.playing && self.samples.len() >= n {
            for (o, s) in out.iter_mut().zip(self.samples.drain(..n)) {
                *o = s;
            }
            self.frames_played += 1;
            return true;
        }
        if self.playing {
            self.playing = false;
            self.underruns += 1;
        }
        out.fill(0.0);
        false
    }

    /// The next monologue piece: one per step, or everything waiting when it piles up.
    pub(super) fn next_piece(&mut self) -> Option<String> {
        if self.pieces.len() > CATCH_UP_PIECES {
            return Some(self.pieces.drain().collect());
        }
        self.pieces.pop_oldest()
    }

    /// Forget everything queued (a session ended or the conversation was reset).
    pub(super) fn clear(&mut self) {
        self.samples.clear();
        self.pieces.clear();
        self.playing = false;
    }

    /// Audio waiting, in milliseconds.
    pub(super) fn buffered_ms(&self) -> u64 {
        (self.samples.len() as u64 * 1000) / u64::from(creature_actors::SAMPLE_RATE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_whole_frames_after_prefill_and_counts_underruns() {
        let mut p = Playout::new(4, 2);
        let mut out = vec![1.0; FRAME_SAMPLES];
        p.push_audio(&vec![0.5; FRAME_SAMPLES]);
        assert!(!p.next_frame(&mut out), "waits for the prefill");
        assert!(out.iter().all(|&s| s == 0.0));
        p.push_audio(&vec![0.5; FRAME_SAMPLES + 100]);
        assert!(p.next_frame(&mut out));
        assert!(p.next_frame(&mut out));
        assert_eq!(p.underruns, 0);
        assert!(!p.next_frame(&mut out), "100 samples are not a frame");
        assert_eq!(p.underruns, 1);
        assert!(!p.next_frame(&mut out));
        assert_eq!(p.underruns, 1, "an idle buffer is not a new underrun");
        assert_eq!(p.frames_played, 2);
    }

    #[test]
    fn overflow_drops_the_oldest_audio() {
        let mut p = Playout::new(3, 1);
        for i in 0..5 {
            p.push_audio(&vec![i as f32; FRAME_SAMPLES]);
        }
        // The fourth frame overflowed: the two oldest went, leaving a frame of headroom.
        assert_eq!(p.dropped_samples, 2 * FRAME_SAMPLES as u64);
        assert_eq!(p.samples.len(), 3 * FRAME_SAMPLES);
        let mut out = vec![0.0; FRAME_SAMPLES];
        assert!(p.next_frame(&mut out));
        assert_eq!(out[0], 2.0, "the newest audio is kept");
    }

    #[test]
    fn pieces_come_one_per_step_and_catch_up_in_bulk() {
        let mut p = Playout::new(4, 1);
        p.push_piece(" hello".into());
        p.push_piece(" there".into());
        assert_eq!(p.next_piece().as_deref(), Some(" hello"));
        assert_eq!(p.next_piece().as_deref(), Some(" there"));
        assert_eq!(p.next_piece(), None);
        for w in ["a", "b", "c", "d", "e", "f"] {
            p.push_piece(w.into());
        }
        assert_eq!(p.next_piece().as_deref(), Some("abcdef"));
        for i in 0..(MAX_PIECES + 3) {
            p.push_piece(i.to_string());
        }
        assert_eq!(p.pieces_dropped, 3);
        assert_eq!(p.pieces.len(), MAX_PIECES);
    }
}
