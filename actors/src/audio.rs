//! The audio plumbing around the fast loop: a lock-free inbox for the user's audio, the
//! agent's audio outlet, loudness, and an energy voice-activity detector.
//!
//! Sources (a phone socket, a local microphone) push samples whenever they arrive; the voice
//! actor pops exactly one frame per tick. The inbox never grows past its capacity: when a
//! source sends faster than real time the oldest audio is dropped and counted. No lock is
//! shared with the loop: a source that stalls mid-push can never make a tick wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

use crate::ports::FRAME_SAMPLES;

/// The user's audio waiting for the next tick: a ring of samples (f32 bits in atomics) with
/// one consumer, the voice loop, and producers that take turns.
///
/// Positions are ever-growing sample counts; slot `p % capacity` holds sample `p`. The
/// producer announces how far it is about to write (`reserved`), writes, then publishes
/// (`written`). It never waits for the consumer: it overwrites the oldest audio. The
/// consumer copies what was published, then checks `reserved` again (a sequence lock) and
/// throws away, as dropped, any sample the producer may have overwritten while it copied.
/// So the consumer never blocks and never waits, whatever a producer does.
#[derive(Debug)]
pub struct AudioInbox {
    ring: Box<[AtomicU32]>,
    /// Samples published to the consumer (one past the newest).
    written: AtomicU64,
    /// Samples a producer is writing or has written (>= `written`).
    reserved: AtomicU64,
    /// The next sample the consumer takes. Only the consumer moves it forward.
    read: AtomicU64,
    /// Producers take turns through this flag; the consumer never touches it.
    producing: AtomicBool,
    dropped: AtomicU64,
    received: AtomicU64,
}

impl AudioInbox {
    /// An inbox holding at most `frames` frames of audio.
    pub fn new(frames: usize) -> Self {
        Self::with_capacity(frames.max(1) * FRAME_SAMPLES)
    }

    /// An inbox holding at most `samples` samples (at least one).
    pub fn with_capacity(samples: usize) -> Self {
        AudioInbox {
            ring: (0..samples.max(1)).map(|_| AtomicU32::new(0)).collect(),
            written: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            read: AtomicU64::new(0),
            producing: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    fn capacity(&self) -> u64 {
        self.ring.len() as u64
    }

    fn slot(&self, position: u64) -> &AtomicU32 {
        &self.ring[(position % self.capacity()) as usize]
    }

    /// Append samples; if that overflows the inbox, the oldest samples go (the consumer
    /// finds them gone and counts them). Two sources pushing at once take turns (a short
    /// spin between producers only; the loop never takes part in it).
    pub fn push(&self, samples: &[f32]) {
        self.received
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        let _turn = ProducerTurn::take(&self.producing);
        // Only the newest `capacity` samples of one push can survive it.
        let keep = samples.len().min(self.ring.len());
        let skipped = (samples.len() - keep) as u64;
        let samples = &samples[samples.len() - keep..];
        let start = self.written.load(Ordering::Relaxed) + skipped;
        let end = start + samples.len() as u64;
        // Announce the overwrite before making it (paired with the consumer's fence).
        self.reserved.store(end, Ordering::Relaxed);
        fence(Ordering::Release);
        for (i, &s) in samples.iter().enumerate() {
            self.slot(start + i as u64)
                .store(s.to_bits(), Ordering::Relaxed);
        }
        self.written.store(end, Ordering::Release);
    }

    /// Fill `frame` with the next frame of audio, padding with silence when less is
    /// buffered. Returns how many real samples it held. Call from one thread at a time
    /// (the voice loop); it never waits for a producer.
    pub fn pop_frame(&self, frame: &mut [f32]) -> usize {
        let written = self.written.load(Ordering::Acquire);
        let mut read = self.read.load(Ordering::Relaxed);
        let capacity = self.capacity();
        let oldest = written.saturating_sub(capacity);
        let overwritten = oldest.saturating_sub(read);
        read = read.max(oldest);
        let n = (written - read).min(frame.len() as u64) as usize;
        for (i, dst) in frame[..n].iter_mut().enumerate() {
            *dst = f32::from_bits(self.slot(read + i as u64).load(Ordering::Relaxed));
        }
        // Anything a producer reserved past `read + capacity` while we copied may have
        // overwritten the start of what we took: those samples are dropped, not used.
        fence(Ordering::Acquire);
        let reserved = self.reserved.load(Ordering::Relaxed);
        let valid_from = reserved.saturating_sub(capacity).max(read);
        let torn = (valid_from - read).min(n as u64) as usize;
        if torn > 0 {
            frame.copy_within(torn..n, 0);
        }
        let taken = n - torn;
        frame[taken..].fill(0.0);
        // Move on first, count after: `dropped()` may briefly count too few, never too
        // many, so the counter never goes backwards.
        self.read.store(read + n as u64, Ordering::SeqCst);
        let lost = overwritten + torn as u64;
        if lost > 0 {
            self.dropped.fetch_add(lost, Ordering::SeqCst);
        }
        taken
    }

    /// Samples waiting for the loop (at most the capacity).
    pub fn buffered(&self) -> u64 {
        let written = self.written.load(Ordering::Acquire);
        (written - self.read.load(Ordering::Relaxed).min(written)).min(self.capacity())
    }

    /// Samples dropped because a source outran the loop: those already found gone, and
    /// those overwritten that the loop has not yet come to.
    pub fn dropped(&self) -> u64 {
        let counted = self.dropped.load(Ordering::SeqCst);
        let read = self.read.load(Ordering::SeqCst);
        let written = self.written.load(Ordering::SeqCst);
        counted + written.saturating_sub(self.capacity()).saturating_sub(read)
    }

    /// Samples ever pushed.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// A producer's turn at the inbox, released on drop. Producers are never the loop, so a
/// short spin (a push is a copy of one message's samples) is the cheapest fair wait.
struct ProducerTurn<'a>(&'a AtomicBool);

impl<'a> ProducerTurn<'a> {
    fn take(flag: &'a AtomicBool) -> Self {
        let mut spins = 0u32;
        while flag
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        ProducerTurn(flag)
    }
}

impl Drop for ProducerTurn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
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

    /// Whether the last frame itself crossed the threshold (activity without the hangover).
    pub fn loud(&self) -> bool {
        self.active && self.quiet_frames == 0
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
    fn inbox_wraps_around_the_ring_without_losing_order() {
        let inbox = AudioInbox::with_capacity(10);
        let mut frame = vec![0.0; 4];
        let mut next = 0.0f32;
        let mut expect = 0.0f32;
        // 25 rounds of 3 in, 4 out: positions wrap the 10-slot ring several times.
        for _ in 0..25 {
            let chunk: Vec<f32> = (0..3).map(|i| next + i as f32).collect();
            next += 3.0;
            inbox.push(&chunk);
            let n = inbox.pop_frame(&mut frame);
            for &s in &frame[..n] {
                assert_eq!(s, expect, "samples come out in order across the wrap");
                expect += 1.0;
            }
            assert!(frame[n..].iter().all(|&s| s == 0.0));
        }
        assert_eq!(inbox.dropped(), 0);
        assert_eq!(inbox.received(), 75);
    }

    #[test]
    fn inbox_overflow_keeps_the_newest_and_counts_the_rest() {
        let inbox = AudioInbox::with_capacity(8);
        let all: Vec<f32> = (0..20).map(|i| i as f32).collect();
        inbox.push(&all[..5]);
        inbox.push(&all[5..20]); // one push larger than the ring
        assert_eq!(inbox.buffered(), 8);
        let mut frame = vec![0.0; 10];
        assert_eq!(inbox.pop_frame(&mut frame), 8);
        assert_eq!(&frame[..8], &all[12..20], "the newest 8 survive");
        assert_eq!(inbox.dropped(), 12);
        assert_eq!(inbox.pop_frame(&mut frame), 0);
    }

    #[test]
    fn two_producers_never_interleave_within_a_push_and_the_consumer_never_waits() {
        const PUSHES: usize = 2_000;
        const CHUNK: usize = 480;
        let inbox = Arc::new(AudioInbox::with_capacity(CHUNK * 64));
        let producer = |id: f32| {
            let inbox = Arc::clone(&inbox);
            std::thread::spawn(move || {
                let chunk = vec![id; CHUNK];
                for _ in 0..PUSHES {
                    inbox.push(&chunk);
                }
            })
        };
        let a = producer(1.0);
        let b = producer(2.0);
        // Pushes and the ring are whole chunks, so every read of a full chunk is exactly
        // one push: it must be all one producer's, never a mix.
        let mut frame = vec![0.0; CHUNK];
        let mut taken = 0u64;
        let total = (2 * PUSHES * CHUNK) as u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while taken + inbox.dropped() < total {
            assert!(std::time::Instant::now() < deadline, "consumer stuck");
            let got = inbox.pop_frame(&mut frame);
            if got == CHUNK {
                assert!(
                    frame.iter().all(|&s| s == frame[0]),
                    "two pushes interleaved: {:?}",
                    &frame[..8]
                );
            }
            for &s in &frame[..got] {
                assert!(s == 1.0 || s == 2.0, "a torn or stale sample: {s}");
            }
            taken += got as u64;
            if got == 0 {
                std::thread::yield_now();
            }
        }
        a.join().expect("producer a");
        b.join().expect("producer b");
        assert_eq!(
            taken + inbox.dropped(),
            total,
            "every sample taken or counted"
        );
        assert_eq!(inbox.received(), total);
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
