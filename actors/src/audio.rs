//! The audio plumbing around the fast loop: a bounded inbox for the user's audio, the
//! agent's audio outlet, loudness, and an energy voice-activity detector.
//!
//! Sources (a phone socket, a local microphone) push samples whenever they arrive; the voice
//! actor pops exactly one frame per tick. The inbox never grows past its capacity: when a
//! source sends faster than real time the oldest audio is dropped and counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::ports::FRAME_SAMPLES;

/// The user's audio waiting for the next tick.
#[derive(Debug)]
pub struct AudioInbox {
    samples: Mutex<VecDeque<f32>>,
    capacity: usize,
    dropped: AtomicU64,
    received: AtomicU64,
}

impl AudioInbox {
    /// An inbox holding at most `frames` frames of audio.
    pub fn new(frames: usize) -> Self {
        let capacity = frames.max(1) * FRAME_SAMPLES;
        AudioInbox {
            samples: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// Append samples; if that overflows the inbox, the oldest samples go.
    pub fn push(&self, samples: &[f32]) {
        self.received
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        // The lock is held for a memcpy; nothing slow ever holds it.
        let Ok(mut queue) = self.samples.lock() else {
            return;
        };
        queue.extend(samples.iter().copied());
        let over = queue.len().saturating_sub(self.capacity);
        if over > 0 {
            queue.drain(..over);
            self.dropped.fetch_add(over as u64, Ordering::Relaxed);
        }
    }

    /// Fill `frame` with the next frame of audio, padding with silence when less is
    /// buffered. Returns how many real samples it held.
    pub fn pop_frame(&self, frame: &mut [f32]) -> usize {
        let Ok(mut queue) = self.samples.lock() else {
            frame.fill(0.0);
            return 0;
        };
        let n = queue.len().min(frame.len());
        for (dst, src) in frame.iter_mut().zip(queue.drain(..n)) {
            *dst = src;
        }
        frame[n..].fill(0.0);
        n
    }

    /// Samples dropped because a source outran the loop.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Samples ever pushed.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// One frame of the agent's voice on its way to speakers and phones.
pub type AgentFrame = Arc<[f32]>;

/// Root mean square of a frame, 0 for an empty one.
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f32 = samples.iter().map(|s| s * s).sum();
    (sum / samples.len() as f32).sqrt()
}

/// RMS in dBFS (full scale sine is about -3 dBFS); silence floors at -120.
pub fn dbfs(rms: f32) -> f32 {
    if rms <= 1e-6 {
        -120.0
    } else {
        20.0 * rms.log10()
    }
}

/// Energy voice-activity detection with a hangover, so the short gaps between syllables do
/// not end an utterance.
#[derive(Debug, Clone)]
pub struct EnergyVad {
    threshold_dbfs: f32,
    hangover_frames: u32,
    quiet_frames: u32,
    active: bool,
    /// Consecutive active frames, for "has the user been talking for long".
    run_frames: u32,
}

impl EnergyVad {
    pub fn new(threshold_dbfs: f32, hangover_frames: u32) -> Self {
        EnergyVad {
            threshold_dbfs,
            hangover_frames,
            quiet_frames: hangover_frames,
            active: false,
            run_frames: 0,
        }
    }

    /// Feed one frame's RMS; returns whether voice is active after it.
    pub fn update(&mut self, rms: f32) -> bool {
        self.update_with_threshold(rms, self.threshold_dbfs)
    }

    /// Like [`EnergyVad::update`] with a different threshold for this frame (a barge-in
    /// detector raises it while the agent talks, so its own echo does not count).
    pub fn update_with_threshold(&mut self, rms: f32, threshold_dbfs: f32) -> bool {
        if dbfs(rms) >= threshold_dbfs {
            self.quiet_frames = 0;
            self.active = true;
        } else {
            self.quiet_frames = self.quiet_frames.saturating_add(1);
            if self.quiet_frames > self.hangover_frames {
                self.active = false;
            }
        }
        self.run_frames = if self.active {
            self.run_frames.saturating_add(1)
        } else {
            0
        };
        self.active
    }

    pub fn active(&self) -> bool {
        self.active
    }

    /// How many frames the current stretch of activity has lasted (0 when inactive).
    pub fn run_frames(&self) -> u32 {
        self.run_frames
    }

    pub fn threshold_dbfs(&self) -> f32 {
        self.threshold_dbfs
    }

    pub fn reset(&mut self) {
        self.active = false;
        self.quiet_frames = self.hangover_frames;
        self.run_frames = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_pops_whole_frames_and_pads_with_silence() {
        let inbox = AudioInbox::new(4);
        inbox.push(&vec![0.5; FRAME_SAMPLES + 100]);
        let mut frame = vec![1.0; FRAME_SAMPLES];
        assert_eq!(inbox.pop_frame(&mut frame), FRAME_SAMPLES);
        assert!(frame.iter().all(|&s| s == 0.5));
        assert_eq!(inbox.pop_frame(&mut frame), 100);
        assert!(frame[..100].iter().all(|&s| s == 0.5));
        assert!(frame[100..].iter().all(|&s| s == 0.0));
        assert_eq!(inbox.pop_frame(&mut frame), 0);
    }

    #[test]
    fn inbox_drops_oldest_audio_when_full() {
        let inbox = AudioInbox::new(2);
        inbox.push(&vec![0.1; FRAME_SAMPLES]);
        inbox.push(&vec![0.2; FRAME_SAMPLES]);
        inbox.push(&vec![0.3; FRAME_SAMPLES]);
        assert_eq!(inbox.dropped(), FRAME_SAMPLES as u64);
        let mut frame = vec![0.0; FRAME_SAMPLES];
        inbox.pop_frame(&mut frame);
        assert_eq!(frame[0], 0.2, "the oldest frame was the one dropped");
    }

    #[test]
    fn vad_holds_through_short_gaps_and_releases_after_hangover() {
        let mut vad = EnergyVad::new(-40.0, 2);
        assert!(!vad.update(0.0));
        assert!(vad.update(0.1)); // -20 dBFS
        assert!(vad.update(0.0)); // gap 1
        assert!(vad.update(0.0)); // gap 2
        assert!(!vad.update(0.0)); // past the hangover
        assert_eq!(vad.run_frames(), 0);
    }

    #[test]
    fn rms_and_dbfs_of_known_signals() {
        let square = vec![0.5f32; 100];
        assert!((rms(&square) - 0.5).abs() < 1e-6);
        assert!((dbfs(0.1) + 20.0).abs() < 1e-4);
        assert_eq!(dbfs(0.0), -120.0);
    }
}
