//! The replay storm: clients that resume from the beginning (`since=0`) of a big history while
//! the ordinary streams of the run take live traffic. The history is written straight to Redis
//! through the publish Function before the run; each replaying client checks that it receives
//! every history event exactly once and in order; Redis's `SLOWLOG` (threshold 0 during the storm)
//! gives the longest command the replays cost Redis.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::payload::Payload;
use crate::sse::{parse_head, SseBody, SseEvent};

/// The type of every history event.
pub const HISTORY_TYPE: &str = "bench.history";
/// Events per pipeline when writing the history.
const SEED_BATCH: u64 = 500;

/// The history the replaying clients read.
#[derive(Debug, Clone)]
pub struct History {
    pub org: String,
    pub events: u64,
    /// Each history event's data (written with `ts` 0).
    pub payload: Payload,
}

async fn connect_redis(redis_url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(redis_url).with_context(|| format!("redis url {redis_url}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connecting to {redis_url}"))
}

/// Writes the history: `events` durable events numbered from 0 in `org`, through the same
/// Function publishers use (so the ids, the trimming and the org's history key are real).
pub async fn seed(redis_url: &str, history: &History) -> anyhow::Result<()> {
    let mut connection = connect_redis(redis_url).await?;
    let mut envelope = String::with_capacity(4096);
    let mut next = 0;
    while next < history.events {
        let end = (next + SEED_BATCH).min(history.events);
        let mut pipe = redis::pipe();
        for seq in next..end {
            envelope.clear();
            let _ = write!(envelope, r#"{{"type":"{HISTORY_TYPE}","data":"#);
            history.payload.write(&mut envelope, seq, 0);
            envelope.push('}');
            pipe.cmd("FCALL")
                .arg("event_gateway_publish")
                .arg(0)
                .arg(&history.org)
                .arg(envelope.as_str())
                .ignore();
        }
        pipe.query_async::<()>(&mut connection).await.context(
            "writing the history through event_gateway_publish (is the gateway started on this Redis?)",
        )?;
        next = end;
    }
    Ok(())
}

/// Logs every command from now on, and forgets what was logged before.
pub async fn slowlog_start(redis_url: &str) -> anyhow::Result<()> {
    let mut connection = connect_redis(redis_url).await?;
    redis::pipe()
        .cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg(1_000_000)
        .ignore()
        .cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .ignore()
        .cmd("SLOWLOG")
        .arg("RESET")
        .ignore()
        .query_async::<()>(&mut connection)
        .await
        .context("configuring SLOWLOG")
}

/// Command durations Redis logged since `slowlog_start`, restoring its default threshold.
#[derive(Debug, Default)]
pub struct SlowLog {
    /// Microseconds of each history read (`event_gateway_page`).
    pub pages_us: Vec<u64>,
    /// The longest command of all, and its name.
    pub longest: Option<(u64, String)>,
}

pub async fn slowlog_finish(redis_url: &str) -> anyhow::Result<SlowLog> {
    let mut connection = connect_redis(redis_url).await?;
    let (entries,): (Vec<redis::Value>,) = redis::pipe()
        .cmd("SLOWLOG")
        .arg("GET")
        .arg(1_000_000)
        .cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(10_000)
        .ignore()
        .query_async(&mut connection)
        .await
        .context("reading SLOWLOG")?;
    let mut log = SlowLog::default();
    for entry in entries {
        let Some((micros, command)) = slowlog_entry(&entry) else {
            continue;
        };
        if command.contains("event_gateway_page") {
            log.pages_us.push(micros);
        }
        if log.longest.as_ref().is_none_or(|(longest, _)| micros > *longest) {
            log.longest = Some((micros, command));
        }
    }
    log.pages_us.sort_unstable();
    Ok(log)
}

/// `(microseconds, "COMMAND first-argument")` of one `SLOWLOG GET` entry:
/// `[id, unix time, microseconds, [arguments...], client address, client name]`.
fn slowlog_entry(entry: &redis::Value) -> Option<(u64, String)> {
    let redis::Value::Array(fields) = entry else {
        return None;
    };
    let micros = match fields.get(2)? {
        redis::Value::Int(micros) => u64::try_from(*micros).ok()?,
        _ => return None,
    };
    let redis::Value::Array(arguments) = fields.get(3)? else {
        return None;
    };
    let words: Vec<String> = arguments
        .iter()
        .take(2)
        .filter_map(|argument| match argument {
            redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            redis::Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        })
        .collect();
    Some((micros, words.join(" ")))
}

/// What one replaying client saw.
#[derive(Debug, Default, Clone)]
pub struct ReplayRecord {
    /// History events received in order (the replay is complete when this is the history size).
    pub received: u64,
    /// History events that were not the next one expected (a gap, a duplicate or a reordering).
    pub out_of_order: u64,
    /// `history.truncated` events (none are expected: the history is within what is kept).
    pub truncated: u64,
    /// From connecting to the last history event.
    pub elapsed: Duration,
    /// Bytes received after the response head (chunk framing included, compressed as sent).
    pub wire_bytes: u64,
    /// Bytes of the event stream itself (after the chunk framing, inflated).
    pub inflated_bytes: u64,
    /// The response was `Content-Encoding: gzip`.
    pub gzip: bool,
    pub failure: Option<String>,
}

/// One replaying client: opens the stream with `request`, reads until every history event has
/// arrived, the stream ends, or `deadline`.
pub async fn replay(address: SocketAddr, request: Vec<u8>, events: u64, deadline: Instant) -> ReplayRecord {
    let started = Instant::now();
    let mut record = ReplayRecord::default();
    let deadline = tokio::time::Instant::from_std(deadline);
    let outcome =
        tokio::time::timeout_at(deadline, read_history(address, &request, events, &mut record)).await;
    record.elapsed = started.elapsed();
    match outcome {
        Ok(Ok(())) if record.received == events => {}
        Ok(Ok(())) => record.failure = Some("stream ended before the history did".into()),
        Ok(Err(reason)) => record.failure = Some(reason),
        Err(_) => record.failure = Some("timeout".into()),
    }
    record
}

async fn read_history(
    address: SocketAddr,
    request: &[u8],
    events: u64,
    record: &mut ReplayRecord,
) -> Result<(), String> {
    let mut stream = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let (mut decoder, mut body) = loop {
        let n = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        head.extend_from_slice(&buffer[..n]);
        if let Some(parsed) = parse_head(&head).map_err(str::to_string)? {
            if parsed.status != 200 {
                let text = String::from_utf8_lossy(&head[parsed.len..]);
                return Err(format!("status {}: {}", parsed.status, text.trim()));
            }
            break (SseBody::new(&parsed)?, head.split_off(parsed.len));
        }
    };
    record.gzip = decoder.is_compressed();
    record.wire_bytes += body.len() as u64;
    let mut inflated = Vec::new();
    let mut next = 0u64;
    loop {
        let mut on_event = |event: &SseEvent<'_>| match event.name {
            b"history.truncated" => record.truncated += 1,
            name if name == HISTORY_TYPE.as_bytes() => match event.bench {
                Some((seq, _)) if seq == next => {
                    next += 1;
                    record.received += 1;
                }
                _ => record.out_of_order += 1,
            },
            _ => {}
        };
        let more = decoder.feed(&body, &mut inflated, &mut on_event);
        record.inflated_bytes = decoder.inflated_bytes;
        if !more? || next == events {
            return Ok(());
        }
        let n = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        record.wire_bytes += n as u64;
        body.clear();
        body.extend_from_slice(&buffer[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> redis::Value {
        redis::Value::BulkString(text.as_bytes().to_vec())
    }

    /// A replay of `events` realistic history events as the gateway sends it: the opening
    /// frames, then the burst, gzip (one unit, as the gateway compresses a catch-up) or not.
    async fn replay_of(events: u64, gzip: bool) -> (ReplayRecord, u64, u64) {
        use crate::gzip::tests::{gzip_stream, Block};
        let payload = Payload::sized(crate::payload::Shape::Realistic, 300, 0, 3);
        let mut burst = Vec::new();
        for seq in 0..events {
            let mut data = String::new();
            payload.write(&mut data, seq, 0);
            burst.extend_from_slice(
                format!("id: 1-{seq}\nevent: {HISTORY_TYPE}\ndata: {data}\n\n").as_bytes(),
            );
        }
        let frames = vec![
            b"retry: 3000\n\n".to_vec(),
            b"event: connected\ndata: {}\n\n".to_vec(),
            burst,
        ];
        let plain: u64 = frames.iter().map(|f| f.len() as u64).sum();
        let response = if gzip {
            let (wire, ends) = gzip_stream(&frames, &[Block::Compressed], false);
            crate::client::tests::gzip_chunked(&wire, &ends, false)
        } else {
            let mut response =
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_vec();
            for frame in &frames {
                response.extend_from_slice(format!("{:x}\r\n", frame.len()).as_bytes());
                response.extend_from_slice(frame);
                response.extend_from_slice(b"\r\n");
            }
            response
        };
        let head = parse_head(&response).expect("head").expect("head").len;
        let body = (response.len() - head) as u64;
        let (address, _stop) = crate::client::tests::scripted_server(response, vec![1000, 7]).await;
        let request = crate::client::stream_request(
            "127.0.0.1",
            "/api/events?since=0",
            Some("t0k"),
            crate::client::AcceptEncoding::Gzip,
        );
        let record = replay(address, request, events, Instant::now() + Duration::from_secs(10)).await;
        (record, body, plain)
    }

    #[tokio::test]
    async fn a_replay_is_read_to_its_end_and_its_bytes_counted_plain_or_gzip() {
        for gzip in [false, true] {
            let (record, body, plain) = replay_of(2000, gzip).await;
            assert_eq!(record.failure, None, "gzip {gzip}");
            assert_eq!((record.received, record.out_of_order), (2000, 0), "gzip {gzip}");
            assert_eq!(record.gzip, gzip);
            assert_eq!(record.wire_bytes, body, "gzip {gzip}");
            assert_eq!(record.inflated_bytes, plain, "gzip {gzip}");
            if gzip {
                // One unit of varied tickets: far less than plain, far more than padding would be.
                let ratio = body as f64 / plain as f64;
                assert!((0.1..0.6).contains(&ratio), "{ratio}");
            }
        }
    }

    #[test]
    fn reads_a_slowlog_entry_as_its_duration_and_command() {
        let entry = redis::Value::Array(vec![
            redis::Value::Int(7),
            redis::Value::Int(1_700_000_000),
            redis::Value::Int(1234),
            redis::Value::Array(vec![bulk("FCALL_RO"), bulk("event_gateway_page"), bulk("1")]),
            bulk("127.0.0.1:5000"),
            bulk(""),
        ]);
        assert_eq!(
            slowlog_entry(&entry),
            Some((1234, "FCALL_RO event_gateway_page".into()))
        );
        assert_eq!(slowlog_entry(&redis::Value::Int(3)), None);
    }
}
