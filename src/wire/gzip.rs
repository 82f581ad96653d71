//! One gzip stream per compressed SSE connection whose body is a sequence of raw-deflate pieces:
//! each event's frame compressed once per replica (or stored, when small) and shared by every
//! compressed connection, a connection's own bytes as stored blocks, a catch-up burst
//! compressed as one unit. A connection keeps only the running CRC32 and length of what it
//! sent (its `Tally`), for the trailer. Browsers drop every gzip member after the first, so an
//! event is never a member of its own. No IO.

use bytes::Bytes;

use super::deflate;

/// The gzip header every compressed stream starts with: deflate, no name, no time, unknown OS.
pub const HEADER: [u8; 10] = [0x1F, 0x8B, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xFF];

/// The CRC32 and length of the plain bytes a piece (or a whole stream) stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    crc: u32,
    len: u64,
}

impl Tally {
    pub fn of(plain: &[u8]) -> Self {
        Self {
            crc: crc32fast::hash(plain),
            len: plain.len() as u64,
        }
    }

    /// The tally of this one's bytes followed by `next`'s.
    pub fn then(self, next: Tally) -> Self {
        if self.len == 0 {
            return next;
        }
        let mut hasher = crc32fast::Hasher::new_with_initial_len(self.crc, self.len);
        hasher.combine(&crc32fast::Hasher::new_with_initial_len(next.crc, next.len));
        Self {
            crc: hasher.finalize(),
            len: self.len + next.len,
        }
    }

    /// What ends a stream of these bytes: an empty final block, the CRC32 and the length
    /// modulo 2^32.
    pub fn trailer(self) -> [u8; 10] {
        let mut trailer = [0u8; 10];
        trailer[..2].copy_from_slice(&[0x03, 0x00]);
        trailer[2..6].copy_from_slice(&self.crc.to_le_bytes());
        trailer[6..].copy_from_slice(&(self.len as u32).to_le_bytes());
        trailer
    }
}

/// Plain bytes as a piece of a compressed stream, with their tally.
#[derive(Debug, Clone)]
pub struct Piece {
    pub bytes: Bytes,
    pub tally: Tally,
}

impl Piece {
    /// `plain` compressed as one unit when it is at least `min_bytes` and shrinks, else stored.
    pub fn compressed(plain: &[u8], min_bytes: u32) -> Self {
        let tally = Tally::of(plain);
        if plain.len() >= min_bytes as usize {
            let compressed = deflate::compress_block(plain);
            if compressed.len() < plain.len() {
                return Self {
                    bytes: Bytes::from(compressed),
                    tally,
                };
            }
        }
        Self::stored(plain)
    }

    /// `plain` as stored blocks (no compression work: a stream's own few bytes).
    pub fn stored(plain: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(plain.len() + 5);
        deflate::stored_block(plain, &mut bytes);
        Self {
            bytes: Bytes::from(bytes),
            tally: Tally::of(plain),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Decodes a whole gzip stream with flate2's own reader, checking CRC and length.
    fn gunzip(stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(stream)
            .read_to_end(&mut out)
            .expect("a valid gzip stream");
        out
    }

    /// A connection's stream: the header, its pieces, the trailer of their tally.
    fn stream_of(pieces: &[&Piece]) -> Vec<u8> {
        let mut stream = HEADER.to_vec();
        let mut tally = Tally::default();
        for piece in pieces {
            stream.extend_from_slice(&piece.bytes);
            tally = tally.then(piece.tally);
        }
        stream.extend_from_slice(&tally.trailer());
        stream
    }

    #[test]
    fn shared_pieces_decode_in_every_connection_that_starts_at_a_different_one() {
        let frames: Vec<String> = (0..5)
            .map(|n| format!("id: 1-{n}\nevent: ticket.updated\ndata: {{\"n\":{n},\"title\":\"Leaking faucet in flat {n}\"}}\n\n"))
            .collect();
        let shared: Vec<Piece> = frames
            .iter()
            .map(|frame| Piece::compressed(frame.as_bytes(), 0))
            .collect();
        let opening = |who: &str| {
            Piece::stored(
                format!("retry: 3000\n\nevent: connected\ndata: {{\"userId\":\"{who}\"}}\n\n").as_bytes(),
            )
        };
        let (early, late) = (opening("early"), opening("late"));
        let early_stream: Vec<&Piece> = std::iter::once(&early).chain(shared.iter()).collect();
        let late_stream: Vec<&Piece> = std::iter::once(&late).chain(shared[3..].iter()).collect();
        let expected = |who: &str, from: usize| {
            let mut plain = format!("retry: 3000\n\nevent: connected\ndata: {{\"userId\":\"{who}\"}}\n\n");
            frames[from..].iter().for_each(|frame| plain.push_str(frame));
            plain.into_bytes()
        };
        assert_eq!(gunzip(&stream_of(&early_stream)), expected("early", 0));
        assert_eq!(gunzip(&stream_of(&late_stream)), expected("late", 3));
    }

    #[test]
    fn a_burst_compressed_as_one_unit_sits_between_shared_pieces() {
        let burst = "event: a.b\ndata: {\"n\":1}\n\n".repeat(20);
        let pieces = [
            Piece::compressed(b"event: a.b\ndata: {\"n\":0}\n\n", 0),
            Piece::compressed(burst.as_bytes(), 0),
            Piece::stored(b"event: keepalive\ndata: {}\n\n"),
        ];
        let decoded = gunzip(&stream_of(&pieces.iter().collect::<Vec<_>>()));
        assert_eq!(decoded.len(), 26 + burst.len() + 27);
    }

    #[test]
    fn a_small_piece_is_stored() {
        let piece = Piece::compressed(b"event: a.b\ndata: {}\n\n", 256);
        assert_eq!(piece.bytes[0], 0x00, "a stored block");
        assert_eq!(&piece.bytes[5..], b"event: a.b\ndata: {}\n\n");
    }

    #[test]
    fn tallies_combine_as_the_crc_of_the_concatenation() {
        let (a, b) = (b"event: one\n\n".as_slice(), b"event: two\n\n".as_slice());
        assert_eq!(Tally::of(a).then(Tally::of(b)), Tally::of(&[a, b].concat()));
    }
}
