//! Raw deflate as shared encodings need it: each piece compressed by a compressor started
//! afresh (no back-reference to anything before it) and sync-flushed, so pieces compressed once
//! can be sent by any number of connections, and a connection's own bytes go between them as
//! stored blocks. No IO.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What a sync flush ends with (an empty stored block); `permessage-deflate` leaves it out of
/// a message and the receiver appends it.
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Compression level: the default, a good ratio at a cost paid once per event per replica.
const LEVEL: u32 = 6;

thread_local! {
    /// One compressor per thread, reset before each piece: a fresh compressor's tables are
    /// about 300 KB, allocated once per thread instead of once per event.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
}

/// `input` as raw deflate blocks that reference nothing outside it, ending byte-aligned with a
/// sync flush (not final: more blocks may follow).
pub fn compress_block(input: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            let consumed = compressor.total_in() as usize;
            let status = compressor.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync);
            let done = compressor.total_in() as usize == input.len() && out.len() < out.capacity();
            // A compressor over a bounded buffer in memory has nothing to fail on.
            if done || status.is_err() {
                return out;
            }
        }
    })
}

/// Appends `data` as stored (uncompressed) deflate blocks, not final, to a stream that is
/// byte-aligned (after a sync flush).
pub fn stored_block(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(usize::from(u16::MAX)) {
        let len = chunk.len() as u16;
        out.push(0x00);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    if data.is_empty() {
        out.extend_from_slice(&SYNC_TAIL);
    }
}

/// Why a compressed client message is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InflateError {
    #[error("the message is not valid deflate data")]
    Invalid,
    #[error("the message inflates to more than the limit")]
    TooBig,
}

/// Inflates one `permessage-deflate` message (the sender left out `SYNC_TAIL`) with a fresh
/// window, refusing more than `limit` bytes of output.
pub fn inflate_message(payload: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut input = Vec::with_capacity(payload.len() + SYNC_TAIL.len());
    input.extend_from_slice(payload);
    input.extend_from_slice(&SYNC_TAIL);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity((payload.len() * 3).clamp(64, limit + 1));
    loop {
        if out.len() > limit {
            return Err(InflateError::TooBig);
        }
        if out.capacity() == out.len() {
            out.reserve(out.capacity().min(limit + 1 - out.len()).max(64));
        }
        let consumed = inflater.total_in() as usize;
        let status = inflater
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Invalid)?;
        let all_read = inflater.total_in() as usize == input.len();
        if status == Status::StreamEnd || (all_read && out.len() < out.capacity()) {
            return if out.len() > limit {
                Err(InflateError::TooBig)
            } else {
                Ok(out)
            };
        }
        if status == Status::BufError && out.len() < out.capacity() {
            return Err(InflateError::Invalid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_block_then_a_stored_one_inflate_as_one_message() {
        let mut message = compress_block(b"{\"event\":\"a.b\",\"data\":{\"n\":1}");
        stored_block(b",\"id\":\"c1.xyz\"}", &mut message);
        assert_eq!(
            inflate_message(&message, 1024).expect("inflates"),
            b"{\"event\":\"a.b\",\"data\":{\"n\":1},\"id\":\"c1.xyz\"}"
        );
    }

    #[test]
    fn blocks_compressed_separately_never_refer_to_each_other() {
        let first = compress_block(&b"abcdefgh".repeat(50));
        let second = compress_block(&b"abcdefgh".repeat(50));
        assert_eq!(first, second, "the second starts from an empty window too");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = compress_block(&vec![0; 1 << 20]);
        assert_eq!(inflate_message(&bomb, 64 * 1024), Err(InflateError::TooBig));
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(inflate_message(&[0xFF; 16], 1024), Err(InflateError::Invalid));
    }
}
