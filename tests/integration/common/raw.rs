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
