//! Ogg/Opus at 24 kHz mono, the audio framing of Kyutai's `/api/chat` wire, both ways:
//! [`OggOpusWriter`] turns PCM into Ogg pages (OpusHead and OpusTags first, then one 40 ms
//! Opus packet per page, as Kyutai's servers do), and [`OggOpusReader`] turns a byte stream
//! of Ogg pages, cut anywhere, back into PCM.
//!
//! Pages are framed here and then checked (CRC) and reassembled into packets by the `ogg`
//! crate; packets are coded by libopus through the `opus` crate. Everything a peer sends is
//! untrusted: a malformed page, header or packet is an [`OggOpusError`], never a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ogg::reading::{BasePacketReader, PageParser};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use opus::{Application, Channels, Decoder, Encoder};

/// The wire's sample rate (Mimi's).
pub const SAMPLE_RATE: u32 = 24_000;
/// Samples in one Opus packet as Kyutai's servers send them: 40 ms at 24 kHz.
pub const PACKET_SAMPLES: usize = 960;
/// The longest Opus packet is 120 ms: 2880 samples at 24 kHz.
const MAX_PACKET_SAMPLES: usize = 2_880;
/// libopus's recommended output buffer for one encoded packet.
const MAX_PACKET_BYTES: usize = 4_000;
/// Fixed part of an Ogg page header, before the lacing values.
const PAGE_HEADER_BYTES: usize = 27;
const CAPTURE_PATTERN: &[u8; 4] = b"OggS";
/// Vendor string of the OpusTags header we send.
const VENDOR: &str = "creature";

/// Why Ogg/Opus audio could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum OggOpusError {
    /// libopus refused to create or configure a codec (a build or platform problem).
    #[error("cannot set up the Opus codec: {0}")]
    Codec(opus::Error),
    /// libopus failed to encode a frame.
    #[error("Opus encoding failed: {0}")]
    Encode(opus::Error),
    /// Writing an Ogg page failed.
    #[error("cannot write an Ogg page: {0}")]
    Write(std::io::Error),
    /// The bytes are not a well-formed Ogg page (bad capture pattern, version or CRC, or a
    /// page that does not continue the stream).
    #[error("bad Ogg page: {0}")]
    Page(String),
    /// The OpusHead or OpusTags header is missing or malformed.
    #[error("bad Opus stream header: {0}")]
    Header(String),
    /// libopus rejected an audio packet.
    #[error("bad Opus packet of {bytes} bytes: {source}")]
    Packet { bytes: usize, source: opus::Error },
    /// An audio packet of zero bytes (RFC 6716: a packet is at least one byte).
    #[error("empty Opus packet")]
    EmptyPacket,
}

/// Encodes PCM frames into an Ogg/Opus byte stream, one 40 ms packet per page.
pub struct OggOpusWriter {
    encoder: Encoder,
    /// Pages accumulate here until [`OggOpusWriter::take_pages`] hands them out.
    pages: PacketWriter<'static, Vec<u8>>,
    serial: u32,
    /// Samples not yet making a whole packet (callers normally hand whole frames).
    pending: Vec<f32>,
    /// Granule position: samples at 48 kHz since the stream started, as Ogg Opus counts.
    granule: u64,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for OggOpusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusWriter")
            .field("serial", &self.serial)
            .field("granule", &self.granule)
            .finish()
    }
}

impl OggOpusWriter {
    /// A new logical stream with this serial number. Its OpusHead and OpusTags pages are
    /// already queued, so the first [`OggOpusWriter::encode`] returns them ahead of audio.
    pub fn new(serial: u32) -> Result<Self, OggOpusError> {
        // VoIP mode, as Kyutai's own server encodes: tuned for speech at low bitrates.
        let mut encoder = Encoder::new(SAMPLE_RATE, Channels::Mono, Application::Voip)
            .map_err(OggOpusError::Codec)?;
        // Pre-skip is counted at 48 kHz; the encoder reports its look-ahead at 24 kHz.
        let lookahead = encoder.get_lookahead().map_err(OggOpusError::Codec)?;
        let pre_skip = u16::try_from(lookahead.max(0) * 2).unwrap_or(u16::MAX);
        let mut pages = PacketWriter::new(Vec::new());
        pages
            .write_packet(opus_head(pre_skip), serial, PacketWriteEndInfo::EndPage, 0)
            .map_err(OggOpusError::Write)?;
        pages
            .write_packet(opus_tags(), serial, PacketWriteEndInfo::EndPage, 0)
            .map_err(OggOpusError::Write)?;
        Ok(OggOpusWriter {
            encoder,
            pages,
            serial,
            pending: Vec::with_capacity(PACKET_SAMPLES),
            granule: 0,
            scratch: vec![0; MAX_PACKET_BYTES],
        })
    }

    /// Encode `pcm` (24 kHz mono) and return the Ogg bytes ready to send: every whole 40 ms
    /// packet as its own page (a 1920-sample frame gives two pages), preceded by the header
    /// pages on the first call. Non-finite samples are sent as silence.
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u8>, OggOpusError> {
        for &sample in pcm {
            self.pending
                .push(if sample.is_finite() { sample } else { 0.0 });
            if self.pending.len() == PACKET_SAMPLES {
                let len = self
                    .encoder
                    .encode_float(&self.pending, &mut self.scratch)
                    .map_err(OggOpusError::Encode)?;
                self.pending.clear();
                self.granule += 2 * PACKET_SAMPLES as u64;
                let packet = self.scratch[..len].to_vec();
                self.pages
                    .write_packet(
                        packet,
                        self.serial,
                        PacketWriteEndInfo::EndPage,
                        self.granule,
                    )
                    .map_err(OggOpusError::Write)?;
            }
        }
        Ok(std::mem::take(self.pages.inner_mut()))
    }
}

/// The OpusHead identification header (RFC 7845 section 5.1): version 1, mono, channel
/// mapping family 0.
fn opus_head(pre_skip: u16) -> Vec<u8> {
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1);
    head.push(1);
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes());
    head.push(0);
    head
}

/// The OpusTags comment header (RFC 7845 section 5.2): our vendor string, no comments.
fn opus_tags() -> Vec<u8> {
    let mut tags = Vec::with_capacity(16 + VENDOR.len());
    tags.extend_from_slice(b"OpusTags");
    tags.extend_from_slice(&(VENDOR.len() as u32).to_le_bytes());
    tags.extend_from_slice(VENDOR.as_bytes());
    tags.extend_from_slice(&0u32.to_le_bytes());
    tags
}

/// Where the reader is in the Ogg Opus header sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The next packet must be an OpusHead.
    Head,
    /// The next packet must be an OpusTags.
    Tags,
    /// Audio packets.
    Audio,
}

/// Decodes an Ogg/Opus byte stream, fed in arbitrary pieces, into 24 kHz mono PCM.
///
/// The OpusHead pre-skip is not applied: on a live stream it only trims the first few
/// milliseconds, and playing them early costs nothing. A new OpusHead (a chained stream)
/// restarts the decoder.
pub struct OggOpusReader {
    /// Bytes of a page not yet complete. At most one page: 27 + 255 + 255 * 255 bytes.
    partial: Vec<u8>,
    packets: BasePacketReader,
    decoder: Decoder,
    stage: Stage,
    pages: u64,
    packets_decoded: u64,
    scratch: Vec<f32>,
}

impl std::fmt::Debug for OggOpusReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusReader")
            .field("stage", &self.stage)
            .field("pages", &self.pages)
            .field("packets_decoded", &self.packets_decoded)
            .finish()
    }
}

impl OggOpusReader {
    pub fn new() -> Result<Self, OggOpusError> {
        Ok(OggOpusReader {
            partial: Vec::new(),
            packets: BasePacketReader::new(),
            decoder: Decoder::new(SAMPLE_RATE, Channels::Mono).map_err(OggOpusError::Codec)?,
            stage: Stage::Head,
            pages: 0,
            packets_decoded: 0,
            scratch: vec![0.0; MAX_PACKET_SAMPLES],
        })
    }

    /// Whether the OpusHead and OpusTags headers have been read.
    pub fn headers_seen(&self) -> bool {
        self.stage == Stage::Audio
    }

    /// Whole pages read so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Feed the next bytes of the stream; PCM of every audio packet they complete is
    /// appended to `out`. After an error the stream is broken: drop the reader.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), OggOpusError> {
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(len) = page_len(&self.partial[start..])? {
            let page = &self.partial[start..start + len];
            start += len;
            let parsed = parse_page(page)?;
            self.pages += 1;
            // The page is CRC-checked; the ogg crate's reassembly still indexes into it, so a
            // bug there must cost this stream, not the thread.
            let packets = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<Vec<u8>>, String> {
                self.packets.push_page(parsed).map_err(|e| e.to_string())?;
                let mut packets = Vec::new();
                while let Some(packet) = self.packets.read_packet() {
                    packets.push(packet.data);
                }
                Ok(packets)
            }))
            .map_err(|_| OggOpusError::Page("the page does not continue the stream".into()))?
            .map_err(|e| {
                OggOpusError::Page(format!("the page does not continue the stream: {e}"))
            })?;
            for packet in packets {
                self.packet(&packet, out)?;
            }
        }
        self.partial.drain(..start);
        Ok(())
    }

    fn packet(&mut self, packet: &[u8], out: &mut Vec<f32>) -> Result<(), OggOpusError> {
        if packet.starts_with(b"OpusHead") {
            check_head(packet)?;
            // A chained stream starts afresh.
            self.decoder =
                Decoder::new(SAMPLE_RATE, Channels::Mono).map_err(OggOpusError::Codec)?;
            self.stage = Stage::Tags;
            return Ok(());
        }
        match self.stage {
            Stage::Head => Err(OggOpusError::Header(
                "the stream does not start with an OpusHead packet".into(),
            )),
            Stage::Tags if packet.starts_with(b"OpusTags") => {
                self.stage = Stage::Audio;
                Ok(())
            }
            Stage::Tags => Err(OggOpusError::Header(
                "the OpusHead packet is not followed by OpusTags".into(),
            )),
            Stage::Audio if packet.is_empty() => Err(OggOpusError::EmptyPacket),
            Stage::Audio => {
                let n = self
                    .decoder
                    .decode_float(packet, &mut self.scratch, false)
                    .map_err(|source| OggOpusError::Packet {
                        bytes: packet.len(),
                        source,
                    })?;
                out.extend_from_slice(&self.scratch[..n.min(self.scratch.len())]);
                self.packets_decoded += 1;
                Ok(())
            }
        }
    }
}

/// The length of the complete page at the start of `buf`, or `None` if more bytes are needed.
fn page_len(buf: &[u8]) -> Result<Option<usize>, OggOpusError> {
    let magic = &buf[..buf.len().min(CAPTURE_PATTERN.len())];
    if !CAPTURE_PATTERN.starts_with(magic) {
        return Err(OggOpusError::Page(
            "no OggS capture pattern where a page should start".into(),
        ));
    }
    if buf.len() < PAGE_HEADER_BYTES {
        return Ok(None);
    }
    let segments = usize::from(buf[PAGE_HEADER_BYTES - 1]);
    let Some(lacing) = buf.get(PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + segments) else {
        return Ok(None);
    };
    let body: usize = lacing.iter().map(|&l| usize::from(l)).sum();
    let len = PAGE_HEADER_BYTES + segments + body;
    Ok((buf.len() >= len).then_some(len))
}

/// Check one complete page (version, CRC) with the ogg crate.
fn parse_page(page: &[u8]) -> Result<ogg::reading::OggPage, OggOpusError> {
    let mut header = [0u8; PAGE_HEADER_BYTES];
    header.copy_from_slice(&page[..PAGE_HEADER_BYTES]);
    let (mut parser, segments) =
        PageParser::new(header).map_err(|e| OggOpusError::Page(e.to_string()))?;
    let lacing_end = PAGE_HEADER_BYTES + segments;
    parser.parse_segments(page[PAGE_HEADER_BYTES..lacing_end].to_vec());
    parser
        .parse_packet_data(page[lacing_end..].to_vec())
        .map_err(|e| OggOpusError::Page(e.to_string()))
}

/// Check an OpusHead packet: a version we understand and a mono or stereo family-0 layout
/// (libopus downmixes stereo to our mono decoder).
fn check_head(head: &[u8]) -> Result<(), OggOpusError> {
    if head.len() < 19 {
        return Err(OggOpusError::Header(format!(
            "OpusHead is {} bytes, at least 19 expected",
            head.len()
        )));
    }
    let version = head[8];
    if version >> 4 != 0 {
        return Err(OggOpusError::Header(format!(
            "unsupported OpusHead version {version}"
        )));
    }
    let channels = head[9];
    let family = head[18];
    if family != 0 || !(1..=2).contains(&channels) {
        return Err(OggOpusError::Header(format!(
            "unsupported channel layout: {channels} channels, mapping family {family}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, samples: usize) -> Vec<f32> {
        (0..samples)
            .map(|i| {
                0.3 * (2.0 * std::f32::consts::PI * freq * i as f32 / SAMPLE_RATE as f32).sin()
            })
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    /// Split a byte stream into its pages (for tests that tamper with one).
    fn pages(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(len) = page_len(rest).unwrap() {
            out.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
        assert!(rest.is_empty());
        out
    }

    #[test]
    fn a_frame_becomes_header_pages_then_two_packet_pages() {
        let mut w = OggOpusWriter::new(7).unwrap();
        let first = w.encode(&tone(440.0, 1920)).unwrap();
        let p = pages(&first);
        assert_eq!(p.len(), 4, "OpusHead, OpusTags, two 40 ms packets");
        assert_eq!(&p[0][28..36], b"OpusHead");
        assert_eq!(
            p[0][5] & 0x02,
            0x02,
            "the first page is flagged beginning-of-stream"
        );
        assert_eq!(&p[1][28..36], b"OpusTags");
        let second = w.encode(&tone(440.0, 1920)).unwrap();
        assert_eq!(pages(&second).len(), 2, "no headers after the first frame");
    }

    #[test]
    fn round_trip_keeps_the_tone_whatever_the_cuts() {
        let mut w = OggOpusWriter::new(1).unwrap();
        let mut stream = Vec::new();
        for _ in 0..10 {
            stream.extend(w.encode(&tone(440.0, 1920)).unwrap());
        }
        let mut r = OggOpusReader::new().unwrap();
        let mut pcm = Vec::new();
        // Feed in odd-sized pieces so pages are split across pushes.
        for chunk in stream.chunks(37) {
            r.push(chunk, &mut pcm).unwrap();
        }
        assert!(r.headers_seen());
        assert_eq!(pcm.len(), 10 * 1920);
        let level = rms(&pcm[4800..]);
        assert!((0.15..0.3).contains(&level), "rms {level}");
        let crossings = pcm[4800..]
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        let freq = crossings as f32 / 2.0 / ((pcm.len() - 4800) as f32 / SAMPLE_RATE as f32);
        assert!((400.0..480.0).contains(&freq), "frequency {freq}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        let err = OggOpusReader::new()
            .unwrap()
            .push(b"definitely not ogg", &mut out)
            .unwrap_err();
        assert!(matches!(err, OggOpusError::Page(_)), "{err}");

        // A flipped byte breaks the CRC.
        let mut w = OggOpusWriter::new(1).unwrap();
        let mut bytes = w.encode(&tone(440.0, 1920)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        let err = OggOpusReader::new()
            .unwrap()
            .push(&bytes, &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("CRC"), "{err}");

        // Audio before the headers.
        let mut w = OggOpusWriter::new(1).unwrap();
        let bytes = w.encode(&tone(440.0, 1920)).unwrap();
        let p = pages(&bytes);
        let err = OggOpusReader::new()
            .unwrap()
            .push(&p[2], &mut out)
            .unwrap_err();
        assert!(
            matches!(err, OggOpusError::Page(_) | OggOpusError::Header(_)),
            "{err}"
        );
    }

    #[test]
    fn an_invalid_opus_packet_is_refused() {
        let mut pw = PacketWriter::new(Vec::new());
        pw.write_packet(opus_head(0), 3, PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        pw.write_packet(opus_tags(), 3, PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        // TOC code 3 announcing 63 frames of 20 ms: longer than Opus allows.
        pw.write_packet(vec![0xFF, 0xFF], 3, PacketWriteEndInfo::EndPage, 960)
            .unwrap();
        let mut out = Vec::new();
        let err = OggOpusReader::new()
            .unwrap()
            .push(pw.inner(), &mut out)
            .unwrap_err();
        assert!(matches!(err, OggOpusError::Packet { .. }), "{err}");

        let mut pw = PacketWriter::new(Vec::new());
        pw.write_packet(opus_head(0), 3, PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        pw.write_packet(opus_tags(), 3, PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        pw.write_packet(Vec::new(), 3, PacketWriteEndInfo::EndPage, 960)
            .unwrap();
        let err = OggOpusReader::new()
            .unwrap()
            .push(pw.inner(), &mut out)
            .unwrap_err();
        assert!(matches!(err, OggOpusError::EmptyPacket), "{err}");
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut head = opus_head(0);
        head[18] = 1;
        assert!(check_head(&head).is_err());
        assert!(check_head(b"OpusHead").is_err());
        let mut head = opus_head(0);
        head[8] = 0x10;
        assert!(check_head(&head).is_err());
        assert!(check_head(&opus_head(312)).is_ok());
    }
}
