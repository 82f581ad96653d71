//! Incremental inflating of a `Content-Encoding: gzip` event stream: one gzip member (RFC 1952)
//! whose 10-byte header comes first, then raw deflate blocks as the server flushes them (each
//! event, or a catch-up burst, sync-flushed so it is decodable as soon as its bytes arrive), and,
//! only if the stream ends cleanly, the final block, the CRC-32 and the length of everything
//! inflated. The inflater is one per compressed connection (deflate's 32 KiB window is state of
//! the stream); what it produces is handed on in pieces from a caller's scratch buffer, so
//! nothing inflated is kept.

use flate2::{Crc, Decompress, FlushDecompress, Status};

/// Size of the output buffer each `feed` inflates into (the caller's scratch).
pub const OUT_CHUNK: usize = 16 * 1024;
/// ID1 ID2 CM of every gzip member with deflate inside.
const MAGIC: [u8; 3] = [0x1F, 0x8B, 0x08];
const HEADER_LEN: usize = 10;
const TRAILER_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes of the fixed header read so far.
    Header(usize),
    Deflate,
    /// Bytes of the trailer read so far.
    Trailer(usize),
    /// The trailer was read and matched what was inflated.
    Done,
}

/// The inflating state of one gzip stream.
pub struct GzipDecoder {
    state: State,
    header: [u8; HEADER_LEN],
    trailer: [u8; TRAILER_LEN],
    decompress: Decompress,
    crc: Crc,
}

impl Default for GzipDecoder {
    fn default() -> Self {
        Self {
            state: State::Header(0),
            header: [0; HEADER_LEN],
            trailer: [0; TRAILER_LEN],
            decompress: Decompress::new(false),
            crc: Crc::new(),
        }
    }
}

impl std::fmt::Debug for GzipDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzipDecoder")
            .field("state", &self.state)
            .field("total_in", &self.decompress.total_in())
            .field("total_out", &self.decompress.total_out())
            .finish()
    }
}

impl GzipDecoder {
    /// Whether the final block and a matching trailer have been read: the stream ended cleanly.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Inflates `input` (any cut of the stream), calling `on_output` with each run of inflated
    /// bytes as soon as it is decodable. `scratch` is the output buffer (grown to `OUT_CHUNK`).
    pub fn feed(
        &mut self,
        mut input: &[u8],
        scratch: &mut Vec<u8>,
        mut on_output: impl FnMut(&[u8]),
    ) -> Result<(), String> {
        if scratch.len() < OUT_CHUNK {
            scratch.resize(OUT_CHUNK, 0);
        }
        while !input.is_empty() {
            match self.state {
                State::Header(have) => {
                    let take = (HEADER_LEN - have).min(input.len());
                    self.header[have..have + take].copy_from_slice(&input[..take]);
                    input = &input[take..];
                    // Checked as soon as the bytes are there, so garbage fails at once.
                    let have = have + take;
                    if have >= MAGIC.len() && self.header[..MAGIC.len()] != MAGIC {
                        return Err(format!(
                            "gzip_bad_header: {:02x?} is not 1f 8b 08",
                            &self.header[..MAGIC.len()]
                        ));
                    }
                    if have > 3 && self.header[3] != 0 {
                        // FTEXT, FHCRC, FEXTRA, FNAME, FCOMMENT or reserved bits: the gateway's
                        // header is the plain 10 bytes.
                        return Err(format!("gzip_header_flags: {:#04x}", self.header[3]));
                    }
                    self.state = if have == HEADER_LEN {
                        State::Deflate
                    } else {
                        State::Header(have)
                    };
                }
                State::Deflate => loop {
                    let (in_before, out_before) = (self.decompress.total_in(), self.decompress.total_out());
                    let status = self
                        .decompress
                        .decompress(input, scratch, FlushDecompress::None)
                        .map_err(|e| format!("gzip_inflate: {e}"))?;
                    let consumed = (self.decompress.total_in() - in_before) as usize;
                    let produced = (self.decompress.total_out() - out_before) as usize;
                    input = &input[consumed..];
                    if produced > 0 {
                        self.crc.update(&scratch[..produced]);
                        on_output(&scratch[..produced]);
                    }
                    if status == Status::StreamEnd {
                        self.state = State::Trailer(0);
                        break;
                    }
                    if produced == scratch.len() {
                        // The buffer filled up: more may be pending, input or not.
                        continue;
                    }
                    if input.is_empty() {
                        break;
                    }
                    if consumed == 0 && produced == 0 {
                        return Err("gzip_inflate: no progress".into());
                    }
                },
                State::Trailer(have) => {
                    let take = (TRAILER_LEN - have).min(input.len());
                    self.trailer[have..have + take].copy_from_slice(&input[..take]);
                    input = &input[take..];
                    let have = have + take;
                    if have < TRAILER_LEN {
                        self.state = State::Trailer(have);
                        continue;
                    }
                    let crc = u32::from_le_bytes([
                        self.trailer[0],
                        self.trailer[1],
                        self.trailer[2],
                        self.trailer[3],
                    ]);
                    let size = u32::from_le_bytes([
                        self.trailer[4],
                        self.trailer[5],
                        self.trailer[6],
                        self.trailer[7],
                    ]);
                    if crc != self.crc.sum() {
                        return Err(format!(
                            "gzip_crc_mismatch: trailer {crc:08x}, inflated {:08x}",
                            self.crc.sum()
                        ));
                    }
                    if size != self.crc.amount() {
                        return Err(format!(
                            "gzip_length_mismatch: trailer {size}, inflated {}",
                            self.crc.amount()
                        ));
                    }
                    self.state = State::Done;
                }
                State::Done => {
                    return Err(format!("gzip_trailing_data: {} B after the trailer", input.len()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sse::SseDecoder;
    use flate2::{Compress, Compression, FlushCompress};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::io::Read;

    /// `data` compressed on its own (a fresh compressor: no reference to anything before it)
    /// and sync-flushed, as the gateway compresses each event once for every stream.
    pub fn deflate_block(data: &[u8]) -> Vec<u8> {
        let mut compress = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        loop {
            out.reserve(256);
            let consumed = compress.total_in() as usize;
            compress
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
                .expect("compress");
            if compress.total_in() as usize == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        assert_eq!(
            out[out.len() - 4..],
            [0, 0, 0xFF, 0xFF],
            "a sync flush ends with 00 00 ff ff"
        );
        out
    }

    /// `data` as one stored (uncompressed) block, not final.
    pub fn stored_block(data: &[u8]) -> Vec<u8> {
        let len = data.len() as u16;
        let mut out = vec![0x00];
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    /// The gateway's 10-byte header: no flags, no mtime, OS unknown.
    pub const HEADER: [u8; 10] = [0x1F, 0x8B, 0x08, 0, 0, 0, 0, 0, 0, 0xFF];
    /// A final, empty block with fixed Huffman codes: BFINAL 1, BTYPE 01, end-of-block.
    pub const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

    /// How each frame of a test stream is put in deflate blocks.
    #[derive(Debug, Clone, Copy)]
    pub enum Block {
        Compressed,
        Stored,
        /// Compressed with the frames after it up to the next `Compressed` or `Stored`, as one
        /// unit (a catch-up burst).
        Burst,
    }

    /// A gzip stream of `frames` as the gateway sends it: the header, blocks per `blocks`
    /// (cycled), and the final block and trailer when `clean_end`. Also returns the offset at
    /// which each frame's block ends (a frame of a burst: the end of its burst).
    pub fn gzip_stream(frames: &[Vec<u8>], blocks: &[Block], clean_end: bool) -> (Vec<u8>, Vec<usize>) {
        let mut wire = HEADER.to_vec();
        let mut ends = Vec::new();
        let mut crc = Crc::new();
        let mut burst: Vec<u8> = Vec::new();
        let mut burst_frames = 0;
        let mut kinds = blocks.iter().cycle();
        let flush_burst = |wire: &mut Vec<u8>, burst: &mut Vec<u8>, n: &mut usize, ends: &mut Vec<usize>| {
            if *n > 0 {
                wire.extend(deflate_block(burst));
                ends.extend(std::iter::repeat_n(wire.len(), *n));
                burst.clear();
                *n = 0;
            }
        };
        for frame in frames {
            crc.update(frame);
            match kinds.next().copied().unwrap_or(Block::Compressed) {
                Block::Burst => {
                    burst.extend_from_slice(frame);
                    burst_frames += 1;
                }
                kind => {
                    flush_burst(&mut wire, &mut burst, &mut burst_frames, &mut ends);
                    match kind {
                        Block::Stored => wire.extend(stored_block(frame)),
                        _ => wire.extend(deflate_block(frame)),
                    }
                    ends.push(wire.len());
                }
            }
        }
        flush_burst(&mut wire, &mut burst, &mut burst_frames, &mut ends);
        if clean_end {
            wire.extend_from_slice(&FINAL_BLOCK);
            wire.extend_from_slice(&crc.sum().to_le_bytes());
            wire.extend_from_slice(&crc.amount().to_le_bytes());
        }
        (wire, ends)
    }

    /// SSE frames of a gateway stream: retry, connected, bench events (some durable), a
    /// keepalive, a comment.
    pub fn sse_frames(events: u64) -> Vec<Vec<u8>> {
        let mut frames = vec![
            b"retry: 3000\n\n".to_vec(),
            b"event: connected\ndata: {\"connectionId\":\"00ab\",\"userId\":\"u1\"}\n\n".to_vec(),
        ];
        for seq in 0..events {
            let id = if seq % 4 == 3 {
                format!("id: 1700000000000-{seq}\n")
            } else {
                String::new()
            };
            frames.push(
                format!(
                    "{id}event: bench.tick\ndata: {{\"seq\":{seq},\"ts\":{},\"title\":\"Leaking tap {seq}\",\
                     \"ticketId\":\"3f1c0a52-9d4e-4b7a-8f0e-{seq:012}\"}}\n\n",
                    1_700_000_000_000_000_000u64 + seq
                )
                .into_bytes(),
            );
            if seq == 5 {
                frames.push(b": comment\nevent: keepalive\ndata: {\"time\":\"t\"}\n\n".to_vec());
            }
        }
        frames
    }

    /// (name, bench, has_id) of every event.
    type Seen = Vec<(String, Option<(u64, u64)>, bool)>;

    fn decode_plain(stream: &[u8]) -> Seen {
        let mut seen = Vec::new();
        SseDecoder::default().feed(stream, |event| {
            seen.push((
                String::from_utf8_lossy(event.name).into_owned(),
                event.bench,
                event.has_id,
            ))
        });
        seen
    }

    /// Inflates `pieces` in order and decodes the SSE inside; the events, the inflated bytes,
    /// whether the stream ended cleanly, or the first error.
    fn decode_gzip(pieces: &[&[u8]]) -> Result<(Seen, usize, bool), String> {
        let mut gzip = GzipDecoder::default();
        let mut sse = SseDecoder::default();
        let mut scratch = Vec::new();
        let mut seen = Vec::new();
        let mut inflated = 0;
        for piece in pieces {
            gzip.feed(piece, &mut scratch, |bytes| {
                inflated += bytes.len();
                sse.feed(bytes, |event| {
                    seen.push((
                        String::from_utf8_lossy(event.name).into_owned(),
                        event.bench,
                        event.has_id,
                    ))
                });
            })?;
        }
        Ok((seen, inflated, gzip.is_done()))
    }

    const MIXED: [Block; 5] = [
        Block::Compressed,
        Block::Stored,
        Block::Compressed,
        Block::Burst,
        Block::Burst,
    ];

    #[test]
    fn the_test_stream_is_valid_gzip() {
        let frames = sse_frames(12);
        let plain = frames.concat();
        let (wire, _) = gzip_stream(&frames, &MIXED, true);
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut inflated)
            .expect("flate2 reads the stream, trailer checked");
        assert_eq!(inflated, plain);
    }

    #[test]
    fn yields_the_same_events_whatever_the_cuts() {
        let frames = sse_frames(12);
        let plain = frames.concat();
        let expected = decode_plain(&plain);
        assert_eq!(expected.len(), 2 - 1 + 12 + 1, "connected, 12 ticks, a keepalive");
        for blocks in [
            &[Block::Compressed][..],
            &[Block::Stored],
            &MIXED,
            &[Block::Burst],
        ] {
            let (wire, _) = gzip_stream(&frames, blocks, true);
            // One cut anywhere, every pair of cuts around the header, and 1-byte pieces.
            for cut in 0..=wire.len() {
                let decoded = decode_gzip(&[&wire[..cut], &wire[cut..]]);
                assert_eq!(
                    decoded,
                    Ok((expected.clone(), plain.len(), true)),
                    "{blocks:?} cut {cut}"
                );
            }
            for first in 0..=12 {
                for second in first..=24 {
                    let decoded = decode_gzip(&[&wire[..first], &wire[first..second], &wire[second..]]);
                    assert_eq!(
                        decoded,
                        Ok((expected.clone(), plain.len(), true)),
                        "cuts {first} {second}"
                    );
                }
            }
            let bytes: Vec<&[u8]> = wire.chunks(1).collect();
            assert_eq!(decode_gzip(&bytes), Ok((expected.clone(), plain.len(), true)));
            // Random cuts.
            let mut rng = StdRng::seed_from_u64(wire.len() as u64);
            for _ in 0..50 {
                let mut pieces = Vec::new();
                let mut at = 0;
                while at < wire.len() {
                    let size = rng.random_range(1..=40).min(wire.len() - at);
                    pieces.push(&wire[at..at + size]);
                    at += size;
                }
                assert_eq!(decode_gzip(&pieces), Ok((expected.clone(), plain.len(), true)));
            }
        }
    }

    #[test]
    fn each_event_is_decoded_as_soon_as_its_block_has_arrived() {
        let frames = sse_frames(12);
        let all = decode_plain(&frames.concat());
        let (wire, ends) = gzip_stream(&frames, &MIXED, false);
        // The events (`data` frames) among the first k frames.
        let events_in = |k: usize| decode_plain(&frames[..k].concat());
        for (k, &end) in ends.iter().enumerate() {
            let burst_end = ends.get(k + 1).is_some_and(|&next| next == end);
            if burst_end {
                continue;
            }
            let (seen, _, done) = decode_gzip(&[&wire[..end]]).expect("a prefix inflates");
            assert_eq!(seen, events_in(k + 1), "prefix up to frame {k}'s block");
            assert!(!done);
        }
        // A stream cut before its trailer (the run closes its streams so) still yields
        // everything complete, and cut anywhere after the last block, everything.
        let (clean, _) = gzip_stream(&frames, &MIXED, true);
        for cut in wire.len()..clean.len() {
            let (seen, inflated, done) = decode_gzip(&[&clean[..cut]]).expect("cut before the trailer");
            assert_eq!(seen, all, "cut at {cut}");
            assert_eq!(inflated, frames.concat().len());
            assert!(!done, "cut at {cut}");
        }
    }

    #[test]
    fn a_bad_stream_is_an_error() {
        let frames = sse_frames(3);
        let (wire, _) = gzip_stream(&frames, &[Block::Compressed], true);
        let mut bad_crc = wire.clone();
        let at = bad_crc.len() - 8;
        bad_crc[at] ^= 1;
        let mut bad_len = wire.clone();
        let at = bad_len.len() - 1;
        bad_len[at] ^= 1;
        let mut trailing = wire.clone();
        trailing.push(0);
        let mut flags = wire.clone();
        flags[3] = 0x08;
        let cases: [(&[u8], &str); 6] = [
            (&bad_crc, "gzip_crc_mismatch"),
            (&bad_len, "gzip_length_mismatch"),
            (&trailing, "gzip_trailing_data"),
            (&flags, "gzip_header_flags"),
            (b"event: connected\ndata: {}\n\n", "gzip_bad_header"),
            (
                &[0x1F, 0x8B, 0x08, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF],
                "gzip_inflate",
            ),
        ];
        for (stream, expected) in cases {
            let error = decode_gzip(&[stream]).expect_err(expected);
            assert!(error.starts_with(expected), "{expected}: {error}");
        }
    }
}
