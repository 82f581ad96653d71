//! `GET /api/events` over a bare TCP socket, for clients that read slowly or not at all, as a
//! stuck client or a dead peer behind a proxy would.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use super::gateway::Gateway;
use super::{within, STEP_TIMEOUT};

/// Opens a stream with a 4 kB receive buffer (so the gateway's queue for it fills while nobody
/// reads) and sends the request; reads nothing.
pub async fn raw_stream(gateway: &Gateway, token: &str) -> TcpStream {
    let address: SocketAddr = gateway
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .expect("the gateway listens on IP:PORT");
    let socket = TcpSocket::new_v4().expect("creating a TCP socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("shrinking the receive buffer");
    let mut stream = within(STEP_TIMEOUT, "a TCP connection", socket.connect(address))
        .await
        .expect("connecting to the gateway");
    let request = format!(
        "GET /api/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    within(
        STEP_TIMEOUT,
        "sending the request",
        stream.write_all(request.as_bytes()),
    )
    .await
    .expect("sending the request");
    stream
}

/// An HTTP response as read off the socket, for requests no HTTP client would send.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines, names lowercased: `("content-type", "application/json")`.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The JSON error code of a §8 error body; panics when the body is not one.
    pub fn error_code(&self) -> String {
        let body: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} with a non-JSON body ({e}): {:?}",
                self.status, self.body
            )
        });
        body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {body}"))
            .to_string()
    }
}

/// Opens a plain TCP connection to the gateway.
pub async fn connect(gateway: &Gateway) -> TcpStream {
    let address = gateway.base_url().trim_start_matches("http://").to_string();
    within(STEP_TIMEOUT, "a TCP connection", TcpStream::connect(address))
        .await
        .expect("connecting to the gateway")
}

/// Reads one response with a `Content-Length` body (every error answer has one) from `stream`.
pub async fn read_response(stream: &mut TcpStream, limit: std::time::Duration) -> RawResponse {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buffer.len() >= end + 4 + length {
                    return (head, buffer[end + 4..end + 4 + length].to_vec());
                }
            }
            let n = stream.read(&mut chunk).await.expect("reading the response");
            assert!(
                n > 0,
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(&buffer)
            );
            buffer.extend_from_slice(&chunk[..n]);
        }
    };
    let (head, body) = within(limit, "a response", read).await;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect();
    RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

/// Sends `request` (head and whatever part of a body) as raw bytes and reads the response.
pub async fn exchange(gateway: &Gateway, request: &[u8]) -> RawResponse {
    let mut stream = connect(gateway).await;
    within(STEP_TIMEOUT, "sending the request", stream.write_all(request))
        .await
        .expect("sending the request");
    read_response(&mut stream, STEP_TIMEOUT).await
}
