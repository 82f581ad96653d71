//! What each bench event's `data` holds. Every shape starts with `{"seq":N,"ts":T`, which is all
//! the clients read from it; the rest gives the event its size. `pad` is one repeated character
//! (the historical shape: cheap, but it compresses to almost nothing, so compressed byte counts
//! measured with it are unrealistically low); `realistic` is a maintenance-ticket event of varied
//! fields (random UUIDs, words, names, numbers, ISO timestamps), different for every event and
//! deterministic for a seed, so compression ratios are honest.

use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The shape of each event's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// `{"seq":N,"ts":T,"pad":"xxx..."}`.
    Pad,
    /// `{"seq":N,"ts":T,"ticketId":"<uuid>","status":..,"title":..,"address":{..},..}`, of about
    /// the requested size.
    Realistic,
}

/// How the data of each event is written.
#[derive(Debug, Clone)]
pub enum Payload {
    /// The padding string.
    Pad(String),
    /// The target size of the data in bytes, and the seed of the run.
    Realistic { bytes: usize, seed: u64 },
}

/// `{"seq":`, `,"ts":`, `,"pad":"`, `"}`.
const PAD_OVERHEAD: usize = 7 + 6 + 8 + 2;

impl Payload {
    /// Padding of `pad` bytes.
    pub fn pad(pad: usize) -> Self {
        Self::Pad("x".repeat(pad))
    }

    /// `shape` at about `bytes` of data for an event whose `seq` and `ts` take `numbers` digits
    /// together (the pad shape subtracts its fixed part).
    pub fn sized(shape: Shape, bytes: usize, numbers: usize, seed: u64) -> Self {
        match shape {
            Shape::Pad => Self::pad(bytes.saturating_sub(PAD_OVERHEAD + numbers)),
            Shape::Realistic => Self::Realistic { bytes, seed },
        }
    }

    pub fn shape(&self) -> Shape {
        match self {
            Self::Pad(_) => Shape::Pad,
            Self::Realistic { .. } => Shape::Realistic,
        }
    }

    /// Appends the data of event `seq` sent at `ts`.
    pub fn write(&self, out: &mut String, seq: u64, ts: u64) {
        match self {
            Self::Pad(pad) => {
                let _ = write!(out, "{{\"seq\":{seq},\"ts\":{ts},\"pad\":\"{pad}\"}}");
            }
            Self::Realistic { bytes, seed } => {
                let start = out.len();
                let _ = write!(out, "{{\"seq\":{seq},\"ts\":{ts}");
                let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq);
                Ticket::write(out, start + bytes, &mut rng);
                out.push('}');
            }
        }
    }

    /// The mean size of the data of the first `count` events sent at `ts`.
    pub fn mean_bytes(&self, count: u64, ts: u64) -> f64 {
        let mut out = String::with_capacity(4096);
        let mut total = 0;
        for seq in 0..count.max(1) {
            out.clear();
            self.write(&mut out, seq, ts);
            total += out.len();
        }
        total as f64 / count.max(1) as f64
    }
}

const WORDS: &[&str] = &[
    "water",
    "leak",
    "under",
    "kitchen",
    "sink",
    "since",
    "yesterday",
    "morning",
    "tenant",
    "reports",
    "damp",
    "patch",
    "ceiling",
    "bathroom",
    "extractor",
    "fan",
    "not",
    "working",
    "boiler",
    "pressure",
    "drops",
    "overnight",
    "radiator",
    "cold",
    "bedroom",
    "window",
    "latch",
    "broken",
    "front",
    "door",
    "lock",
    "sticks",
    "please",
    "call",
    "before",
    "visiting",
    "access",
    "via",
    "side",
    "gate",
    "dog",
    "on",
    "site",
    "parking",
    "available",
    "the",
    "a",
    "and",
    "with",
    "after",
    "storm",
    "gutter",
    "blocked",
    "mould",
    "appearing",
    "again",
    "wall",
    "socket",
    "sparking",
    "tripped",
    "fuse",
    "box",
    "oven",
    "door",
    "hinge",
    "fridge",
    "freezer",
    "noisy",
    "shower",
    "tray",
    "cracked",
    "sealant",
    "missing",
    "toilet",
    "cistern",
    "running",
    "constantly",
    "hot",
    "tap",
    "drips",
    "smoke",
    "alarm",
    "beeping",
    "battery",
    "replaced",
    "still",
    "faulty",
    "carpet",
    "stain",
    "hallway",
    "stairs",
    "handrail",
    "loose",
    "garden",
    "fence",
    "panel",
    "fallen",
    "neighbour",
    "complained",
    "rubbish",
    "bins",
    "collection",
    "missed",
    "intercom",
    "buzzer",
    "silent",
    "lift",
    "out",
    "of",
    "order",
    "third",
    "floor",
    "landing",
    "light",
    "flickering",
    "quote",
    "approved",
    "parts",
    "ordered",
    "arrive",
    "thursday",
    "engineer",
    "attended",
    "follow",
    "up",
    "required",
    "photos",
    "attached",
    "urgent",
    "elderly",
    "resident",
    "vulnerable",
    "weekend",
    "callout",
    "invoice",
    "pending",
];
const FIRST_NAMES: &[&str] = &[
    "Amelia", "Oliver", "Isla", "George", "Ava", "Noah", "Mia", "Arthur", "Grace", "Leo", "Priya",
    "Mohammed", "Sofia", "Jack", "Chloe", "Harry", "Zara", "Oscar", "Ella", "Tomasz", "Aisha", "Finn",
];
const LAST_NAMES: &[&str] = &[
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Patel", "Khan", "Nowak",
    "Murphy", "O'Neill", "Campbell", "Stewart", "Clarke", "Hughes", "Edwards", "Green",
];
const STREETS: &[&str] = &[
    "Oak",
    "Station",
    "Church",
    "Victoria",
    "Mill",
    "Park",
    "Queens",
    "Kingsway",
    "Elm",
    "Bridge",
    "Highfield",
    "Albert",
    "Chapel",
    "Meadow",
    "Westbourne",
    "Granville",
    "Ashby",
    "Larkspur",
];
const STREET_KINDS: &[&str] = &[
    "Road", "Street", "Avenue", "Lane", "Close", "Crescent", "Grove", "Way",
];
const CITIES: &[&str] = &[
    "Manchester",
    "Leeds",
    "Bristol",
    "Sheffield",
    "Nottingham",
    "Leicester",
    "Cardiff",
    "Glasgow",
    "Edinburgh",
    "Liverpool",
    "Brighton",
    "Norwich",
    "Exeter",
    "York",
    "Belfast",
    "Coventry",
];
const STATUSES: &[&str] = &[
    "open",
    "triaged",
    "in_progress",
    "awaiting_parts",
    "scheduled",
    "resolved",
];
const PRIORITIES: &[&str] = &["low", "normal", "high", "urgent"];
const CATEGORIES: &[&str] = &[
    "plumbing",
    "electrical",
    "heating",
    "appliance",
    "damp_mould",
    "locks",
    "roofing",
    "general",
];
const ACTIONS: &[&str] = &[
    "status_changed",
    "comment_added",
    "assigned",
    "visit_scheduled",
    "quote_added",
    "photo_added",
];
const COMPANIES: &[&str] = &[
    "Northside Plumbing Ltd",
    "Brightspark Electrical",
    "HeatRight Services",
    "FixIt Property Care",
    "Castle Locksmiths",
    "Summit Roofing & Gutters",
];

/// Writers of the ticket's fields, appended in order while they fit.
struct Ticket;

impl Ticket {
    /// Appends fields after `{"seq":N,"ts":T` until the data (closing brace included) is about
    /// `end` bytes of `out`.
    fn write(out: &mut String, end: usize, rng: &mut StdRng) {
        let end = end.saturating_sub(1);
        let mut field = String::with_capacity(256);
        for which in 0..FIELDS {
            field.clear();
            Self::field(which, &mut field, rng);
            if out.len() + field.len() <= end {
                out.push_str(&field);
            }
        }
        // A 2 KB event is a ticket with its recent activity.
        if end.saturating_sub(out.len()) >= 200 {
            out.push_str(",\"activity\":[");
            let mut first = true;
            loop {
                field.clear();
                if !first {
                    field.push(',');
                }
                activity(&mut field, rng);
                // Room for `]` and, if worth it, a note.
                if out.len() + field.len() + 1 > end {
                    break;
                }
                out.push_str(&field);
                first = false;
            }
            out.push(']');
        }
        // Whatever is left: free text, to land on the size.
        let room = end.saturating_sub(out.len());
        if room >= 14 {
            out.push_str(",\"note\":\"");
            words(out, room - 10, rng);
            out.push('"');
        }
    }

    /// Field `which`, as `,"name":value`.
    fn field(which: usize, out: &mut String, rng: &mut StdRng) {
        match which {
            0 => {
                out.push_str(",\"ticketId\":\"");
                uuid(out, rng);
                out.push('"');
            }
            1 => {
                let _ = write!(out, ",\"status\":\"{}\"", pick(STATUSES, rng));
            }
            2 => {
                out.push_str(",\"title\":\"");
                let mut title = String::new();
                words(&mut title, rng.random_range(18..42), rng);
                let mut chars = title.chars();
                if let Some(first) = chars.next() {
                    out.push(first.to_ascii_uppercase());
                    out.push_str(chars.as_str());
                }
                out.push('"');
            }
            3 => {
                let _ = write!(
                    out,
                    ",\"priority\":\"{}\",\"category\":\"{}\"",
                    pick(PRIORITIES, rng),
                    pick(CATEGORIES, rng)
                );
            }
            4 => {
                out.push_str(",\"updatedAt\":\"");
                iso8601(out, rng.random_range(0..30 * 86_400), rng.random_range(0..1000));
                out.push('"');
            }
            5 => {
                out.push_str(",\"propertyId\":\"");
                uuid(out, rng);
                out.push('"');
            }
            6 => {
                let _ = write!(
                    out,
                    ",\"address\":{{\"line1\":\"Flat {}, {} {} {}\",\"city\":\"{}\",\"postcode\":\"{}{}{} {}{}{}\"}}",
                    rng.random_range(1..40),
                    rng.random_range(1..300),
                    pick(STREETS, rng),
                    pick(STREET_KINDS, rng),
                    pick(CITIES, rng),
                    (b'A' + rng.random_range(0..26)) as char,
                    (b'A' + rng.random_range(0..26)) as char,
                    rng.random_range(1..30),
                    rng.random_range(1..10),
                    (b'A' + rng.random_range(0..26)) as char,
                    (b'A' + rng.random_range(0..26)) as char,
                );
            }
            7 => {
                out.push_str(",\"reportedBy\":{\"id\":\"");
                uuid(out, rng);
                let _ = write!(
                    out,
                    "\",\"name\":\"{} {}\"}}",
                    pick(FIRST_NAMES, rng),
                    pick(LAST_NAMES, rng)
                );
            }
            8 => {
                out.push_str(",\"createdAt\":\"");
                iso8601(out, rng.random_range(0..30 * 86_400), rng.random_range(0..1000));
                out.push('"');
            }
            9 => {
                out.push_str(",\"assignee\":{\"id\":\"");
                uuid(out, rng);
                let _ = write!(out, "\",\"company\":\"{}\"}}", pick(COMPANIES, rng));
            }
            10 => {
                let _ = write!(
                    out,
                    ",\"unit\":\"{}{}\",\"estimate\":{{\"amount\":{}.{:02},\"currency\":\"GBP\"}}",
                    rng.random_range(1..9),
                    (b'A' + rng.random_range(0..6)) as char,
                    rng.random_range(40..2400),
                    rng.random_range(0..100)
                );
            }
            11 => {
                out.push_str(",\"description\":\"");
                words(out, rng.random_range(80..200), rng);
                out.push('"');
            }
            _ => {
                let _ = write!(
                    out,
                    ",\"tags\":[\"{}\",\"{}\"],\"visits\":{}",
                    pick(WORDS, rng),
                    pick(WORDS, rng),
                    rng.random_range(0..5)
                );
            }
        }
    }
}

const FIELDS: usize = 13;

fn pick<'a>(list: &[&'a str], rng: &mut StdRng) -> &'a str {
    list[rng.random_range(0..list.len())]
}

/// A random (version 4) UUID.
fn uuid(out: &mut String, rng: &mut StdRng) {
    let value: u128 = rng.random();
    let value = (value & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{value:032x}");
    let _ = write!(
        out,
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
}

/// Words separated by spaces, `len` bytes exactly.
fn words(out: &mut String, len: usize, rng: &mut StdRng) {
    let start = out.len();
    while out.len() - start < len {
        if out.len() > start {
            out.push(' ');
        }
        out.push_str(pick(WORDS, rng));
    }
    out.truncate(start + len);
    // No trailing space cut in half of nothing: a space at the end becomes a full stop.
    if out.ends_with(' ') {
        out.pop();
        out.push('.');
    }
}

/// One activity entry.
fn activity(out: &mut String, rng: &mut StdRng) {
    out.push_str("{\"at\":\"");
    iso8601(out, rng.random_range(0..30 * 86_400), rng.random_range(0..1000));
    out.push_str("\",\"by\":\"");
    uuid(out, rng);
    let _ = write!(out, "\",\"action\":\"{}\",\"text\":\"", pick(ACTIONS, rng));
    words(out, rng.random_range(20..70), rng);
    out.push_str("\"}");
}

/// `2026-11-01T00:00:00.000Z` plus `secs` and `millis`.
fn iso8601(out: &mut String, secs: u64, millis: u64) {
    // Days from 1970-01-01 to 2026-11-01.
    const BASE_DAYS: u64 = 20_758;
    let days = BASE_DAYS + secs / 86_400;
    let (year, month, day) = civil(days as i64);
    let rest = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    );
}

/// (year, month, day) of a day count from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::DeflateEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn data(payload: &Payload, seq: u64) -> String {
        let mut out = String::new();
        payload.write(&mut out, seq, 1_800_000_000_123_456_789);
        out
    }

    fn deflated_len(text: &str) -> usize {
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::new(6));
        encoder.write_all(text.as_bytes()).expect("compress");
        encoder.finish().expect("compress").len()
    }

    #[test]
    fn dates_are_the_calendar_s() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_758), (2026, 11, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        let mut out = String::new();
        iso8601(&mut out, 61 * 86_400 + 3_723, 7);
        assert_eq!(out, "2027-01-01T01:02:03.007Z");
    }

    #[test]
    fn realistic_events_are_valid_json_of_about_the_size_asked_and_start_with_seq_and_ts() {
        for bytes in [120, 200, 300, 2048, 8192] {
            let payload = Payload::sized(Shape::Realistic, bytes, 0, 7);
            let mut seen = std::collections::HashSet::new();
            for seq in 0..200 {
                let text = data(&payload, seq);
                let value: serde_json::Value = serde_json::from_str(&text).expect(&text);
                assert_eq!(value["seq"], seq, "{text}");
                assert!(text.starts_with(&format!("{{\"seq\":{seq},\"ts\":1800000000123456789,")));
                assert!(
                    text.len() <= bytes && bytes - text.len() < 14,
                    "asked {bytes}, got {}: {text}",
                    text.len()
                );
                assert!(value["ticketId"].as_str().is_some_and(|id| id.len() == 36));
                seen.insert(text.split_once(",\"ts\"").map(|(_, rest)| rest.to_string()));
            }
            assert_eq!(seen.len(), 200, "every event differs");
        }
        // The same seed gives the same events; another seed others.
        let a = Payload::sized(Shape::Realistic, 300, 0, 1);
        let b = Payload::sized(Shape::Realistic, 300, 0, 2);
        assert_eq!(data(&a, 5), data(&a, 5));
        assert_ne!(data(&a, 5), data(&b, 5));
    }

    #[test]
    fn realistic_events_compress_as_json_does_and_padding_does_not() {
        for bytes in [300, 2048] {
            let realistic = data(&Payload::sized(Shape::Realistic, bytes, 0, 1), 42);
            let pad = data(&Payload::sized(Shape::Pad, bytes, 2 + 19, 1), 42);
            assert_eq!(pad.len(), bytes);
            let (realistic_ratio, pad_ratio) = (
                deflated_len(&realistic) as f64 / realistic.len() as f64,
                deflated_len(&pad) as f64 / pad.len() as f64,
            );
            // Padding shrinks to a few bytes; a ticket to somewhere around half to three quarters.
            assert!(pad_ratio < 0.3, "{bytes}: pad {pad_ratio}");
            assert!(
                (0.4..0.9).contains(&realistic_ratio),
                "{bytes}: realistic {realistic_ratio}"
            );
        }
    }

    #[test]
    fn the_pad_shape_is_the_historical_one() {
        assert_eq!(
            data(&Payload::pad(3), 3),
            "{\"seq\":3,\"ts\":1800000000123456789,\"pad\":\"xxx\"}"
        );
        assert_eq!(Payload::pad(3).shape(), Shape::Pad);
    }
}
