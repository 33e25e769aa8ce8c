//! What both phases of a walsender connection share: the transport, its framed reader and
//! writer halves, and the translation of an `ErrorResponse` into a typed error. Kept apart
//! so that [`super::connection`] (startup, commands) and [`super::stream`] (CopyBoth) each
//! depend on it rather than on each other.

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorResponseBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_util::codec::FramedRead;

use super::codec::BackendCodec;
use super::error::{ReplicationError, ServerError};

/// A byte stream the connection can run over (TCP, Unix socket, TLS).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

pub(crate) type Reader = FramedRead<ReadHalf<Box<dyn Transport>>, BackendCodec>;
pub(crate) type Writer = WriteHalf<Box<dyn Transport>>;

/// Turns an `ErrorResponse` into a typed error carrying the SQLSTATE.
pub(crate) fn server_error(body: &ErrorResponseBody) -> ReplicationError {
    let mut error = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'S' => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    ReplicationError::Server(error)
}
