//! The resume cursor of a stream whose orgs' ids are ordered per org (cluster mode): one opaque,
//! URL-safe `Last-Event-ID` that holds a position for every org of the stream, so that a resume
//! on any replica continues each org exactly where the client stopped. Pure; no IO.
//!
//! Text form: `c1.` + unpadded base64url of, per org, the org's 32-bit FNV-1a hash (big endian),
//! then LEB128 `millis`, then LEB128 `n`: `n = 0` means "from `millis` on" (nothing of the org
//! seen yet), `n = seq + 1` means "after the event `<millis>-<seq>`". Eleven bytes per org at
//! most for today's clocks: a 64-org cursor is under 1 KB of text.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::event::{EventId, OrgId};

const PREFIX: &str = "c1.";
/// More orgs than a token may list (`limits.max_orgs_per_token` is at most 64 by default).
const MAX_ENTRIES: usize = 256;

/// Where one org of a stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// After this event.
    After(EventId),
    /// Nothing of the org seen yet: from this time (ms since the epoch) on.
    From(u64),
}

/// The positions of every org of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    positions: Vec<(OrgId, Position)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a resume cursor of this gateway")]
pub struct InvalidCursor;

/// A decoded cursor: positions by org hash, resolved against a token's orgs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedCursor {
    entries: Vec<(u32, Position)>,
}

fn org_hash(org: &OrgId) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in org.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

impl Cursor {
    /// Every org of a stream, nothing seen yet, from `millis` on.
    pub fn starting(orgs: &[OrgId], starts: impl Fn(&OrgId) -> Position) -> Self {
        Self {
            positions: orgs.iter().map(|org| (org.clone(), starts(org))).collect(),
        }
    }

    /// Adds an org the stream gained (a refreshed token), from `position`.
    pub fn add(&mut self, org: OrgId, position: Position) {
        if !self.positions.iter().any(|(known, _)| *known == org) {
            self.positions.push((org, position));
        }
    }

    /// The client has received `id` of `org`.
    pub fn advance(&mut self, org: &OrgId, id: EventId) {
        if let Some((_, position)) = self.positions.iter_mut().find(|(known, _)| known == org) {
            *position = Position::After(id);
        }
    }

    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(self.positions.len() * 11);
        for (org, position) in &self.positions {
            bytes.extend_from_slice(&org_hash(org).to_be_bytes());
            match position {
                Position::After(id) => {
                    put_varint(&mut bytes, id.millis);
                    put_varint(&mut bytes, id.seq.saturating_add(1));
                }
                Position::From(millis) => {
                    put_varint(&mut bytes, *millis);
                    put_varint(&mut bytes, 0);
                }
            }
        }
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }
}

impl DecodedCursor {
    /// Whether `raw` has the cursor's form (else it may be a plain event id).
    pub fn looks_like(raw: &str) -> bool {
        raw.starts_with(PREFIX)
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidCursor> {
        let encoded = raw.trim().strip_prefix(PREFIX).ok_or(InvalidCursor)?;
        let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| InvalidCursor)?;
        let mut rest = bytes.as_slice();
        let mut entries = Vec::new();
        while !rest.is_empty() {
            if entries.len() == MAX_ENTRIES || rest.len() < 4 {
                return Err(InvalidCursor);
            }
            let (hash, tail) = rest.split_at(4);
            rest = tail;
            let hash = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
            let millis = take_varint(&mut rest).ok_or(InvalidCursor)?;
            let n = take_varint(&mut rest).ok_or(InvalidCursor)?;
            if millis > crate::event::MAX_ID_MILLIS {
                return Err(InvalidCursor);
            }
            let position = match n {
                0 => Position::From(millis),
                n => Position::After(EventId { millis, seq: n - 1 }),
            };
            entries.push((hash, position));
        }
        if entries.is_empty() {
            return Err(InvalidCursor);
        }
        Ok(Self { entries })
    }

    /// The position the cursor holds for `org`, if it names it.
    pub fn position_of(&self, org: &OrgId) -> Option<Position> {
        let hash = org_hash(org);
        self.entries
            .iter()
            .find(|(known, _)| *known == hash)
            .map(|(_, position)| *position)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn org(name: &str) -> OrgId {
        OrgId::parse(name).expect("valid")
    }

    #[test]
    fn a_cursor_reads_back_every_orgs_position() {
        let orgs = [org("a"), org("b"), org("c")];
        let mut cursor = Cursor::starting(&orgs, |_| Position::From(1_700_000_000_000));
        cursor.advance(
            &orgs[0],
            EventId {
                millis: 1_700_000_000_123,
                seq: 0,
            },
        );
        cursor.advance(
            &orgs[2],
            EventId {
                millis: 1_700_000_000_456,
                seq: 7,
            },
        );
        let decoded = DecodedCursor::parse(&cursor.encode()).expect("a cursor");
        assert_eq!(
            decoded.position_of(&orgs[0]),
            Some(Position::After(EventId {
                millis: 1_700_000_000_123,
                seq: 0
            }))
        );
        assert_eq!(
            decoded.position_of(&orgs[1]),
            Some(Position::From(1_700_000_000_000))
        );
        assert_eq!(
            decoded.position_of(&orgs[2]),
            Some(Position::After(EventId {
                millis: 1_700_000_000_456,
                seq: 7
            }))
        );
        assert_eq!(decoded.position_of(&org("d")), None);
    }

    #[test]
    fn a_64_org_cursor_is_url_safe_and_under_1_kb() {
        let orgs: Vec<OrgId> = (0..64).map(|n| org(&format!("landlord-org-{n:040}"))).collect();
        let mut cursor = Cursor::starting(&orgs, |_| Position::From(1_764_000_000_000));
        for (n, each) in orgs.iter().enumerate() {
            cursor.advance(
                each,
                EventId {
                    millis: 1_764_000_000_000 + n as u64,
                    seq: 3,
                },
            );
        }
        let text = cursor.encode();
        assert!(text.len() <= 1024, "{} bytes", text.len());
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{text}"
        );
    }

    #[test]
    fn malformed_cursors_are_refused() {
        for raw in ["c1.", "c1.!!", "c1.AAAA", "c2.AAAAAAA", "1700000000000-0"] {
            assert_eq!(DecodedCursor::parse(raw), Err(InvalidCursor), "{raw:?}");
        }
    }

    proptest! {
        #[test]
        fn any_text_after_the_prefix_parses_or_is_refused_without_panicking(text in ".{0,300}") {
            let _ = DecodedCursor::parse(&format!("c1.{text}"));
        }

        #[test]
        fn positions_survive_encoding(
            millis in 0u64..=crate::event::MAX_ID_MILLIS,
            seq in 0u64..u64::MAX,
        ) {
            let orgs = [org("o")];
            let mut cursor = Cursor::starting(&orgs, |_| Position::From(0));
            cursor.advance(&orgs[0], EventId { millis, seq });
            let decoded = DecodedCursor::parse(&cursor.encode()).expect("a cursor");
            prop_assert_eq!(decoded.position_of(&orgs[0]), Some(Position::After(EventId { millis, seq })));
        }
    }
}
