//! HTTP/1 protocol implementation.

use bytes::{Bytes, BytesMut};

mod chunked;
mod client;
mod codec;
mod decoder;
mod dispatcher;
mod encoder;
mod expect;
mod payload;
mod service;
mod timer;
mod upgrade;
mod utils;

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether HTTP/1 dispatchers release their read and write buffers while a connection is idle.
static RELEASE_IDLE_BUFFERS: AtomicBool = AtomicBool::new(false);

/// Opt in to releasing each HTTP/1 connection's 8 KiB read and write buffers whenever they are
/// empty, instead of keeping them for the connection's lifetime.
///
/// Long-lived streaming responses (Server-Sent Events, long polling) hold a connection for
/// hours while writing little: with this set, an idle connection costs ~3.5 KB instead of
/// ~12 KB. Connections borrow a buffer for each read and write from a few kept per thread, so
/// this costs no allocation per write. Off by default; set it once, before the server starts.
pub fn set_release_idle_buffers(release: bool) {
    RELEASE_IDLE_BUFFERS.store(release, Ordering::Relaxed);
}

pub(crate) fn release_idle_buffers() -> bool {
    RELEASE_IDLE_BUFFERS.load(Ordering::Relaxed)
}

/// Renders the body of an answer the dispatcher makes itself, before any service sees the
/// request (`400` for a malformed request, `431` for an oversized head, `408` for a slow one,
/// `500`): the status in, the `Content-Type` and body out.
pub type ErrorBody = fn(crate::StatusCode) -> (crate::header::HeaderValue, Bytes);

static ERROR_BODY: std::sync::OnceLock<ErrorBody> = std::sync::OnceLock::new();

/// Opt in to a body for the dispatcher's own error answers, which are otherwise empty, so that
/// a server whose every error is, say, JSON stays so for requests it never got to see. The
/// first call wins; set it once, before the server starts.
pub fn set_error_body(render: ErrorBody) {
    let _ = ERROR_BODY.set(render);
}

/// The body for a dispatcher-made error answer `res`, setting its `Content-Type` when a
/// renderer is set.
pub(crate) fn error_body(res: &mut crate::Response<()>) -> crate::body::BoxBody {
    match ERROR_BODY.get() {
        Some(render) => {
            let (content_type, body) = render(res.status());
            res.headers_mut()
                .insert(crate::header::CONTENT_TYPE, content_type);
            crate::body::BoxBody::new(body)
        }
        None => crate::body::BoxBody::new(()),
    }
}

pub use self::{
    client::{ClientCodec, ClientPayloadCodec},
    codec::Codec,
    dispatcher::Dispatcher,
    expect::ExpectHandler,
    payload::Payload,
    service::{H1Service, H1ServiceHandler},
    upgrade::UpgradeHandler,
    utils::SendResponse,
};

#[derive(Debug)]
/// Codec message
pub enum Message<T> {
    /// HTTP message.
    Item(T),

    /// Payload chunk.
    Chunk(Option<Bytes>),
}

impl<T> From<T> for Message<T> {
    fn from(item: T) -> Self {
        Message::Item(item)
    }
}

/// Incoming request type
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    None,
    Payload,
    Stream,
}

const LW: usize = 2 * 1024;
const HW: usize = 32 * 1024;

pub(crate) fn reserve_readbuf(src: &mut BytesMut) {
    let cap = src.capacity();
    if cap < LW {
        src.reserve(HW - cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;

    impl Message<Request> {
        pub fn message(self) -> Request {
            match self {
                Message::Item(req) => req,
                _ => panic!("error"),
            }
        }

        pub fn chunk(self) -> Bytes {
            match self {
                Message::Chunk(Some(data)) => data,
                _ => panic!("error"),
            }
        }

        pub fn eof(self) -> bool {
            match self {
                Message::Chunk(None) => true,
                Message::Chunk(Some(_)) => false,
                _ => panic!("error"),
            }
        }
    }
}
