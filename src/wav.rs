//! WAV files in and out for `creature run`: a small RIFF reader (PCM 16, 24 and 32 bit,
//! 32-bit float, plain or `WAVE_FORMAT_EXTENSIBLE`, any rate and channel count), the
//! conversion to the loop's 24 kHz mono, and a 16-bit PCM writer. A file the reader cannot
//! use gets a [`WavError`] that says what is wrong with it, never a panic.

use std::path::Path;

use creature_actors::SAMPLE_RATE;

/// Why a WAV file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("not a RIFF file (it starts with {found:?}, not \"RIFF\")")]
    NotRiff { found: String },
    #[error("a RIFF file, but not WAVE (its form type is {found:?})")]
    NotWave { found: String },
    #[error("no \"fmt \" chunk before the audio data")]
    NoFormat,
    #[error("no \"data\" chunk")]
    NoData,
    #[error("the \"fmt \" chunk is {0} bytes; at least 16 are needed")]
    ShortFormat(u32),
    #[error("the file says it has 0 channels")]
    ZeroChannels,
    #[error("the file says its sample rate is 0 Hz")]
    ZeroRate,
    #[error(
        "unsupported encoding: format tag {tag:#06x} with {bits} bits per sample (supported: \
         PCM 16, 24 or 32 bit, and 32-bit float)"
    )]
    Unsupported { tag: u16, bits: u16 },
    #[error(
        "the \"{chunk}\" chunk is truncated: it declares {declared} bytes, the file holds {available}"
    )]
    Truncated {
        chunk: String,
        declared: u64,
        available: u64,
    },
    #[error("the audio data is {bytes} bytes, not a whole number of {frame}-byte frames")]
    PartialFrame { bytes: u64, frame: u64 },
    #[error("the file holds {0} samples; more than this tool will read at once")]
    TooLong(u64),
}

/// Audio read from a WAV file, as floats in -1..1, channels interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct Wav {
    pub sample_rate: u32,
    pub channels: u16,
    pub samples: Vec<f32>,
}

/// The encodings the reader takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Pcm16,
    Pcm24,
    Pcm32,
    Float32,
}

const TAG_PCM: u16 = 0x0001;
const TAG_FLOAT: u16 = 0x0003;
const TAG_EXTENSIBLE: u16 = 0xFFFE;
/// Most samples read (all channels): an hour of 48 kHz stereo.
const MAX_SAMPLES: u64 = 3_600 * 48_000 * 2;

impl Wav {
    /// Read a WAV file.
    pub fn read(path: &Path) -> Result<Wav, WavError> {
        let bytes = std::fs::read(path).map_err(|source| WavError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Wav::parse(&bytes)
    }

    /// Parse the bytes of a WAV file.
    pub fn parse(bytes: &[u8]) -> Result<Wav, WavError> {
        if bytes.len() < 12 || &bytes[0..4] != b"RIFF" {
            return Err(WavError::NotRiff {
                found: fourcc(bytes.get(0..4.min(bytes.len())).unwrap_or_default()),
            });
        }
        if &bytes[8..12] != b"WAVE" {
            return Err(WavError::NotWave {
                found: fourcc(&bytes[8..12]),
            });
        }
        let mut format: Option<(Encoding, u16, u32)> = None;
        let mut at = 12usize;
        while at + 8 <= bytes.len() {
            let id = &bytes[at..at + 4];
            let size = u32_le(&bytes[at + 4..at + 8]);
            let body = at + 8;
            let available = (bytes.len() - body) as u64;
            match id {
                b"fmt " => {
                    if u64::from(size) > available {
                        return Err(truncated(id, size, available));
                    }
                    format = Some(parse_format(&bytes[body..body + size as usize])?);
                }
                b"data" => {
                    let (encoding, channels, sample_rate) = format.ok_or(WavError::NoFormat)?;
                    // A streamed file may leave the size at 0 or 0xFFFFFFFF: take the rest.
                    let declared = u64::from(size);
                    let len = if size == 0 || size == u32::MAX {
                        available
                    } else if declared > available {
                        return Err(truncated(id, size, available));
                    } else {
                        declared
                    };
                    let data = &bytes[body..body + len as usize];
                    let samples = decode(data, encoding, channels)?;
                    return Ok(Wav {
                        sample_rate,
                        channels,
                        samples,
                    });
                }
                _ => {}
            }
            // Chunks are padded to an even size.
            at = body
                .saturating_add(size as usize)
                .saturating_add(size as usize & 1);
        }
        Err(WavError::NoData)
    }

    /// Frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    /// The audio as the loop takes it: mono (the channels' mean), at 24 kHz. The result
    /// holds `round(frames * 24000 / rate)` samples.
    pub fn to_loop_audio(&self) -> Vec<f32> {
        let channels = usize::from(self.channels.max(1));
        let mono: Vec<f32> = self
            .samples
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() / channels as f32)
            .collect();
        resample(&mono, self.sample_rate, SAMPLE_RATE)
    }
}

fn truncated(id: &[u8], declared: u32, available: u64) -> WavError {
    WavError::Truncated {
        chunk: fourcc(id).trim_end().to_string(),
        declared: u64::from(declared),
        available,
    }
}

/// Four bytes as printable text (anything else escaped).
fn fourcc(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

fn u16_le(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The encoding, channels and rate of a `fmt ` chunk.
fn parse_format(fmt: &[u8]) -> Result<(Encoding, u16, u32), WavError> {
    if fmt.len() < 16 {
        return Err(WavError::ShortFormat(fmt.len() as u32));
    }
    let mut tag = u16_le(&fmt[0..2]);
    let channels = u16_le(&fmt[2..4]);
    let sample_rate = u32_le(&fmt[4..8]);
    let bits = u16_le(&fmt[14..16]);
    if tag == TAG_EXTENSIBLE {
        // cbSize (2), valid bits (2), channel mask (4), then the sub-format GUID, whose
        // first two bytes are the plain format tag.
        if fmt.len() < 26 {
            return Err(WavError::ShortFormat(fmt.len() as u32));
        }
        tag = u16_le(&fmt[24..26]);
    }
    if channels == 0 {
        return Err(WavError::ZeroChannels);
    }
    if sample_rate == 0 {
        return Err(WavError::ZeroRate);
    }
    let encoding = match (tag, bits) {
        (TAG_PCM, 16) => Encoding::Pcm16,
        (TAG_PCM, 24) => Encoding::Pcm24,
        (TAG_PCM, 32) => Encoding::Pcm32,
        (TAG_FLOAT, 32) => Encoding::Float32,
        _ => return Err(WavError::Unsupported { tag, bits }),
    };
    Ok((encoding, channels, sample_rate))
}

fn decode(data: &[u8], encoding: Encoding, channels: u16) -> Result<Vec<f32>, WavError> {
    let width = match encoding {
        Encoding::Pcm16 => 2,
        Encoding::Pcm24 => 3,
        Encoding::Pcm32 | Encoding::Float32 => 4,
    };
    let frame = width * usize::from(channels);
    if data.len() % frame != 0 {
        return Err(WavError::PartialFrame {
            bytes: data.len() as u64,
            frame: frame as u64,
        });
    }
    let count = (data.len() / width) as u64;
    if count > MAX_SAMPLES {
        return Err(WavError::TooLong(count));
    }
    let samples = data.chunks_exact(width).map(|b| match encoding {
        Encoding::Pcm16 => f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0,
        Encoding::Pcm24 => {
            let v = i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8;
            v as f32 / 8_388_608.0
        }
        Encoding::Pcm32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0,
        Encoding::Float32 => {
            let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if v.is_finite() { v } else { 0.0 }
        }
    });
    Ok(samples.collect())
}

/// Half-width of the resampler's windowed-sinc kernel, in zero crossings.
const KERNEL_ZEROS: f64 = 16.0;

/// `input` at `from` Hz as `to` Hz: a windowed-sinc (Hann) interpolator whose cut-off is
/// the lower Nyquist frequency, so a downsample does not alias. The output holds
/// `round(len * to / from)` samples.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    let out_len = ((input.len() as u128 * u128::from(to) + u128::from(from) / 2)
        / u128::from(from.max(1))) as usize;
    if from == to || input.is_empty() {
        let mut out = input.to_vec();
        out.resize(out_len, 0.0);
        return out;
    }
    let ratio = f64::from(to) / f64::from(from);
    // Cut-off relative to the input rate; the kernel widens when downsampling.
    let cutoff = ratio.min(1.0);
    let half = KERNEL_ZEROS / cutoff;
    let mut out = Vec::with_capacity(out_len);
    for i in 0..out_len {
        let center = i as f64 / ratio;
        let first = (center - half).ceil().max(0.0) as usize;
        let last = ((center + half).floor() as usize).min(input.len() - 1);
        let mut acc = 0.0f64;
        let mut norm = 0.0f64;
        for (j, &x) in input.iter().enumerate().take(last + 1).skip(first) {
            let t = j as f64 - center;
            let w = 0.5 + 0.5 * (std::f64::consts::PI * t / half).cos();
            let arg = std::f64::consts::PI * t * cutoff;
            let sinc = if arg.abs() < 1e-9 {
                1.0
            } else {
                arg.sin() / arg
            };
            let k = w * sinc;
            acc += f64::from(x) * k;
            norm += k;
        }
        out.push(if norm.abs() > 1e-9 {
            (acc / norm) as f32
        } else {
            0.0
        });
    }
    out
}

/// The bytes of a 16-bit PCM mono WAV file of `samples` (clipped to -1..1) at `rate` Hz.
pub fn encode_pcm16(samples: &[f32], rate: u32) -> Vec<u8> {
    let data_len = samples.len() * 2;
    let mut out = Vec::with_capacity(44 + data_len);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&TAG_PCM.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    for &s in samples {
        let s = if s.is_finite() {
            s.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        out.extend_from_slice(&((s * 32_767.0).round() as i16).to_le_bytes());
    }
    out
}

/// Write `samples` as a 16-bit PCM mono WAV file at `rate` Hz.
pub fn write_pcm16(path: &Path, samples: &[f32], rate: u32) -> Result<(), WavError> {
    std::fs::write(path, encode_pcm16(samples, rate)).map_err(|source| WavError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// The bytes of a WAV file of interleaved `samples` in any supported encoding (for tests
/// and the bench's scripted conversations).
pub fn encode(samples: &[f32], rate: u32, channels: u16, tag: u16, bits: u16) -> Vec<u8> {
    let width = usize::from(bits / 8);
    let mut data = Vec::with_capacity(samples.len() * width);
    for &s in samples {
        let s = s.clamp(-1.0, 1.0);
        match (tag, bits) {
            (TAG_FLOAT, 32) => data.extend_from_slice(&s.to_le_bytes()),
            (_, 16) => data.extend_from_slice(&((s * 32_767.0).round() as i16).to_le_bytes()),
            (_, 24) => {
                let v = (f64::from(s) * 8_388_607.0).round() as i32;
                data.extend_from_slice(&v.to_le_bytes()[..3]);
            }
            _ => {
                let v = (f64::from(s) * 2_147_483_647.0).round() as i32;
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    let block = u32::from(channels) * u32::from(bits / 8);
    out.extend_from_slice(&(rate * block).to_le_bytes());
    out.extend_from_slice(&(block as u16).to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// Format tags for [`encode`].
pub const PCM: u16 = TAG_PCM;
pub const FLOAT: u16 = TAG_FLOAT;

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| 0.5 * (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn every_supported_encoding_reads_back() {
        let audio = sine(24_000, 440.0, 2_400);
        for (tag, bits, tolerance) in [
            (PCM, 16, 1e-4),
            (PCM, 24, 1e-6),
            (PCM, 32, 1e-6),
            (FLOAT, 32, 0.0),
        ] {
            let wav = Wav::parse(&encode(&audio, 24_000, 1, tag, bits)).unwrap();
            assert_eq!((wav.sample_rate, wav.channels), (24_000, 1));
            assert_eq!(wav.samples.len(), audio.len());
            for (a, b) in wav.samples.iter().zip(&audio) {
                assert!((a - b).abs() <= tolerance, "{tag} {bits}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn stereo_48k_becomes_24k_mono_of_the_same_length_in_time() {
        let left = sine(48_000, 300.0, 48_000);
        let stereo: Vec<f32> = left.iter().flat_map(|&s| [s, s]).collect();
        let wav = Wav::parse(&encode(&stereo, 48_000, 2, PCM, 16)).unwrap();
        let mono = wav.to_loop_audio();
        assert_eq!(mono.len(), 24_000);
        let expected = sine(24_000, 300.0, 24_000);
        // Away from the edges, the resampled tone is the tone.
        for i in 100..23_900 {
            assert!(
                (mono[i] - expected[i]).abs() < 0.01,
                "{i}: {} vs {}",
                mono[i],
                expected[i]
            );
        }
        // 44.1 kHz rounds to the nearest sample.
        assert_eq!(resample(&vec![0.0; 44_101], 44_100, 24_000).len(), 24_001);
        assert_eq!(resample(&vec![0.0; 1_000], 8_000, 24_000).len(), 3_000);
    }

    #[test]
    fn downsampling_does_not_alias() {
        // 15 kHz at 48 kHz is above 24 kHz's Nyquist: it must vanish, not fold to 9 kHz.
        let high = sine(48_000, 15_000.0, 48_000);
        let out = resample(&high, 48_000, 24_000);
        let level = (out[500..23_500].iter().map(|s| s * s).sum::<f32>() / 23_000.0).sqrt();
        assert!(level < 0.01, "aliased energy {level}");
    }

    #[test]
    fn the_writer_writes_what_the_reader_reads() {
        let audio = sine(24_000, 200.0, 1_000);
        let wav = Wav::parse(&encode_pcm16(&audio, 24_000)).unwrap();
        assert_eq!(wav.samples.len(), 1_000);
        assert!((wav.samples[10] - audio[10]).abs() < 1e-4);
    }

    #[test]
    fn bad_files_get_named_errors() {
        let good = encode(&[0.1; 100], 24_000, 1, PCM, 16);
        assert!(matches!(
            Wav::parse(b"OggS...."),
            Err(WavError::NotRiff { .. })
        ));
        assert!(matches!(Wav::parse(b""), Err(WavError::NotRiff { .. })));
        let mut avi = good.clone();
        avi[8..12].copy_from_slice(b"AVI ");
        assert!(matches!(Wav::parse(&avi), Err(WavError::NotWave { .. })));
        let mut mono0 = good.clone();
        mono0[22..24].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(Wav::parse(&mono0), Err(WavError::ZeroChannels)));
        let mut rate0 = good.clone();
        rate0[24..28].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(Wav::parse(&rate0), Err(WavError::ZeroRate)));
        let alaw = encode(&[0.1; 100], 8_000, 1, 0x0006, 8);
        assert!(matches!(
            Wav::parse(&alaw),
            Err(WavError::Unsupported { tag: 6, bits: 8 })
        ));
        let pcm8 = encode(&[0.1; 100], 8_000, 1, PCM, 8);
        assert!(matches!(
            Wav::parse(&pcm8),
            Err(WavError::Unsupported { tag: 1, bits: 8 })
        ));
        let cut = &good[..good.len() - 51];
        let err = Wav::parse(cut).unwrap_err();
        assert!(matches!(err, WavError::Truncated { .. }), "{err}");
        assert!(
            err.to_string().contains("\"data\" chunk is truncated"),
            "{err}"
        );
        assert!(matches!(Wav::parse(&good[..36]), Err(WavError::NoData)));
        let mut odd = good.clone();
        odd.push(0);
        let n = (odd.len() - 44) as u32;
        odd[40..44].copy_from_slice(&n.to_le_bytes());
        assert!(matches!(
            Wav::parse(&odd),
            Err(WavError::PartialFrame { .. })
        ));
    }
}
