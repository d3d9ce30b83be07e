//! Local microphone and speaker through cpal (cargo feature `audio-device`): the machine's
//! default input feeds the fast loop's audio inbox and the creature's voice plays on the
//! default output, both resampled between the device's rate and the brain's 24 kHz.
//!
//! cpal streams are not `Send` on every platform, so one thread owns them for their whole
//! life; the audio callbacks only copy samples through bounded buffers and never block on
//! the brain.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{SampleFormat, StreamConfig};
use creature_actors::SAMPLE_RATE;
use creature_actors::audio::{AgentFrame, AudioInbox};
use tokio::sync::broadcast;

/// Why local audio could not start.
#[derive(Debug, thiserror::Error)]
pub enum AudioDeviceError {
    #[error(
        "no default {0} device on this machine (is a sound card or PulseAudio/PipeWire available?)"
    )]
    NoDevice(&'static str),
    #[error("the default {what} device cannot be used: {reason}")]
    Device { what: &'static str, reason: String },
    #[error("the default {what} device only offers {format} samples; f32 or i16 is needed")]
    Format { what: &'static str, format: String },
}

/// Converts a stream of samples from one rate to another by linear interpolation. Cheap,
/// stateful across calls, good enough for speech at these rates.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// Input samples per output sample.
    step: f64,
    /// Position of the next output sample, in input samples, relative to `last`.
    pos: f64,
    last: f32,
}

impl Resampler {
    pub fn new(from_hz: u32, to_hz: u32) -> Self {
        Resampler {
            step: f64::from(from_hz) / f64::from(to_hz.max(1)),
            pos: 0.0,
            last: 0.0,
        }
    }

    /// Append the resampled `input` to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        for &x in input {
            // Emit every output sample that falls between `last` (at 0) and `x` (at 1).
            while self.pos < 1.0 {
                let t = self.pos as f32;
                out.push(self.last + (x - self.last) * t);
                self.pos += self.step;
            }
            self.pos -= 1.0;
            self.last = x;
        }
    }
}

/// The running local audio; dropping it stops both streams.
pub struct LocalAudio {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Output samples lost to a full speaker buffer, and callbacks that found it empty.
    pub overflows: Arc<AtomicU64>,
    pub underruns: Arc<AtomicU64>,
    pub input_name: String,
    pub output_name: String,
}

impl Drop for LocalAudio {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mono<T: Copy>(data: &[T], channels: usize, to_f32: impl Fn(T) -> f32, out: &mut Vec<f32>) {
    out.clear();
    for frame in data.chunks(channels.max(1)) {
        let sum: f32 = frame.iter().map(|&s| to_f32(s)).sum();
        out.push(sum / frame.len() as f32);
    }
}

fn describe(device: &cpal::Device) -> String {
    device
        .description()
        .map(|d| format!("{d:?}"))
        .unwrap_or_else(|_| "unknown device".into())
}

impl LocalAudio {
    /// Open the default microphone and speaker and connect them to the brain.
    pub fn start(
        inbox: Arc<AudioInbox>,
        voice: broadcast::Receiver<AgentFrame>,
    ) -> Result<LocalAudio, AudioDeviceError> {
        let (ready_tx, ready_rx) =
            mpsc::sync_channel::<Result<(String, String), AudioDeviceError>>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let overflows = Arc::new(AtomicU64::new(0));
        let underruns = Arc::new(AtomicU64::new(0));
        let (stop2, over2, under2) = (
            Arc::clone(&stop),
            Arc::clone(&overflows),
            Arc::clone(&underruns),
        );
        let thread = std::thread::Builder::new()
            .name("local-audio".into())
            .spawn(
                move || match open_streams(inbox, voice, over2, under2, &stop2) {
                    Ok((input, output, names)) => {
                        let _ = ready_tx.send(Ok(names));
                        while !stop2.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        drop(input);
                        drop(output);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                },
            )
            .map_err(|e| AudioDeviceError::Device {
                what: "audio",
                reason: e.to_string(),
            })?;
        let (input_name, output_name) =
            ready_rx.recv().map_err(|_| AudioDeviceError::Device {
                what: "audio",
                reason: "the audio thread died".into(),
            })??;
        tracing::info!(input = %input_name, output = %output_name, "local audio running");
        Ok(LocalAudio {
            stop,
            thread: Some(thread),
            overflows,
            underruns,
            input_name,
            output_name,
        })
    }
}

type Streams = (cpal::Stream, cpal::Stream, (String, String));

fn open_streams(
    inbox: Arc<AudioInbox>,
    mut voice: broadcast::Receiver<AgentFrame>,
    overflows: Arc<AtomicU64>,
    underruns: Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> Result<Streams, AudioDeviceError> {
    let host = cpal::default_host();
    let mic = host
        .default_input_device()
        .ok_or(AudioDeviceError::NoDevice("input (microphone)"))?;
    let speaker = host
        .default_output_device()
        .ok_or(AudioDeviceError::NoDevice("output (speaker)"))?;
    let dev_err = |what: &'static str| {
        move |e: cpal::Error| AudioDeviceError::Device {
            what,
            reason: e.to_string(),
        }
    };

    // Microphone -> mono -> 24 kHz -> inbox.
    let in_cfg = mic.default_input_config().map_err(dev_err("input"))?;
    let in_format = in_cfg.sample_format();
    let in_config: StreamConfig = in_cfg.config();
    let in_channels = usize::from(in_config.channels);
    let mut down = Resampler::new(in_config.sample_rate, SAMPLE_RATE);
    let (mut scratch, mut resampled) = (Vec::new(), Vec::new());
    let mut push = move |mono_samples: &[f32]| {
        resampled.clear();
        down.process(mono_samples, &mut resampled);
        inbox.push(&resampled);
    };
    let on_error = |e: cpal::Error| tracing::warn!(cause = %e, "audio device error");
    let input = match in_format {
        SampleFormat::F32 => mic.build_input_stream::<f32, _, _>(
            in_config,
            move |data, _| {
                mono(data, in_channels, |s| s, &mut scratch);
                push(&scratch);
            },
            on_error,
            None,
        ),
        SampleFormat::I16 => mic.build_input_stream::<i16, _, _>(
            in_config,
            move |data, _| {
                mono(data, in_channels, |s| f32::from(s) / 32768.0, &mut scratch);
                push(&scratch);
            },
            on_error,
            None,
        ),
        other => {
            return Err(AudioDeviceError::Format {
                what: "input",
                format: format!("{other:?}"),
            });
        }
    }
    .map_err(dev_err("input"))?;

    // Agent frames -> device rate -> a bounded buffer the speaker callback drains.
    let out_cfg = speaker.default_output_config().map_err(dev_err("output"))?;
    let out_format = out_cfg.sample_format();
    let out_config: StreamConfig = out_cfg.config();
    let out_channels = usize::from(out_config.channels).max(1);
    let out_rate = out_config.sample_rate;
    let buffer = Arc::new(Mutex::new(VecDeque::<f32>::with_capacity(
        out_rate as usize,
    )));
    {
        // Half a second of slack at most: beyond that the voice is too late to be useful.
        let (buffer, stop, overflows) = (
            Arc::clone(&buffer),
            Arc::clone(stop),
            Arc::clone(&overflows),
        );
        let cap = out_rate as usize / 2;
        std::thread::Builder::new()
            .name("local-audio-out".into())
            .spawn(move || {
                let mut up = Resampler::new(SAMPLE_RATE, out_rate);
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match voice.blocking_recv() {
                        Ok(frame) => {
                            out.clear();
                            up.process(&frame, &mut out);
                            if let Ok(mut b) = buffer.lock() {
                                b.extend(out.iter().copied());
                                let over = b.len().saturating_sub(cap);
                                if over > 0 {
                                    b.drain(..over);
                                    overflows.fetch_add(over as u64, Ordering::Relaxed);
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            })
            .map_err(|e| AudioDeviceError::Device {
                what: "output",
                reason: e.to_string(),
            })?;
    }
    let take = move |n_frames: usize, write: &mut dyn FnMut(usize, f32)| {
        let Ok(mut b) = buffer.lock() else { return };
        if b.len() < n_frames {
            underruns.fetch_add(1, Ordering::Relaxed);
        }
        for i in 0..n_frames {
            write(i, b.pop_front().unwrap_or(0.0));
        }
    };
    let output = match out_format {
        SampleFormat::F32 => speaker.build_output_stream::<f32, _, _>(
            out_config,
            move |data, _| {
                take(data.len() / out_channels, &mut |i, s| {
                    data[i * out_channels..(i + 1) * out_channels].fill(s);
                })
            },
            on_error,
            None,
        ),
        SampleFormat::I16 => speaker.build_output_stream::<i16, _, _>(
            out_config,
            move |data, _| {
                take(data.len() / out_channels, &mut |i, s| {
                    let v = (s.clamp(-1.0, 1.0) * 32767.0) as i16;
                    data[i * out_channels..(i + 1) * out_channels].fill(v);
                })
            },
            on_error,
            None,
        ),
        other => {
            return Err(AudioDeviceError::Format {
                what: "output",
                format: format!("{other:?}"),
            });
        }
    }
    .map_err(dev_err("output"))?;
    input.play().map_err(|e| AudioDeviceError::Device {
        what: "input",
        reason: e.to_string(),
    })?;
    output.play().map_err(|e| AudioDeviceError::Device {
        what: "output",
        reason: e.to_string(),
    })?;
    Ok((input, output, (describe(&mic), describe(&speaker))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f32, rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    /// Frequency from zero crossings.
    fn frequency(x: &[f32], rate: u32) -> f32 {
        let crossings = x.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        crossings as f32 * rate as f32 / x.len() as f32
    }

    #[test]
    fn resampling_keeps_pitch_and_duration() {
        for (from, to) in [
            (48_000, 24_000),
            (44_100, 24_000),
            (24_000, 48_000),
            (24_000, 44_100),
        ] {
            let input = sine(440.0, from, from as usize); // one second
            let mut out = Vec::new();
            let mut r = Resampler::new(from, to);
            // In uneven chunks, as audio callbacks deliver it.
            for chunk in input.chunks(441) {
                r.process(chunk, &mut out);
            }
            let expected = to as usize;
            assert!(
                out.len().abs_diff(expected) <= 2,
                "{from}->{to}: {} samples",
                out.len()
            );
            let f = frequency(&out, to);
            assert!((f - 440.0).abs() < 3.0, "{from}->{to}: {f} Hz");
        }
    }

    #[test]
    fn stereo_is_mixed_to_mono() {
        let mut out = Vec::new();
        mono(&[1.0f32, 0.0, 0.5, 0.5], 2, |s| s, &mut out);
        assert_eq!(out, [0.5, 0.5]);
    }
}
