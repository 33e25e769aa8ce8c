//! Framing of backend messages on the replication socket.
//!
//! `postgres-protocol` parses every backend message except `CopyBothResponse` ('W'), which
//! only replication connections receive (that gap is why upstream tokio-postgres cannot
//! stream). This codec handles 'W' itself and hands every other frame to
//! `postgres-protocol`. As a `tokio_util` decoder it makes reading cancel-safe, so the
//! source can `select!` between the socket and its timers without losing bytes.

use std::io;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::Message;
use tokio_util::codec::Decoder;

/// Largest frame accepted: PostgreSQL's own limit for a field is 1 GiB.
pub const MAX_FRAME_BYTES: usize = (1 << 30) + 1024;

/// A backend message, with the one kind `postgres-protocol` does not know.
#[allow(missing_debug_implementations)] // backend::Message is not Debug
pub enum BackendMessage {
    /// 'W': the server entered CopyBoth mode; replication data follows.
    CopyBothResponse,
    Other(Message),
}

/// Decodes [`BackendMessage`]s from the socket's read buffer.
#[derive(Debug, Default)]
pub struct BackendCodec;

impl Decoder for BackendCodec {
    type Item = BackendMessage;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BackendMessage>> {
        if src.len() < 5 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
        if !(4..=MAX_FRAME_BYTES).contains(&length) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("backend message length {length} out of range"),
            ));
        }
        if src[0] == b'W' {
            if src.len() < length + 1 {
                src.reserve(length + 1 - src.len());
                return Ok(None);
            }
            src.advance(length + 1);
            return Ok(Some(BackendMessage::CopyBothResponse));
        }
        Ok(Message::parse(src)?.map(BackendMessage::Other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_both_response_is_framed() {
        // 'W', length 7, format 0, 0 columns; then the start of a CopyData frame.
        let mut buf = BytesMut::from(&b"W\0\0\0\x07\0\0\0d\0\0"[..]);
        let message = BackendCodec.decode(&mut buf).unwrap();
        assert!(matches!(message, Some(BackendMessage::CopyBothResponse)));
        assert_eq!(&buf[..], b"d\0\0");
        assert!(BackendCodec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn copy_data_is_passed_through() {
        let mut buf = BytesMut::from(&b"d\0\0\0\x06hi"[..]);
        match BackendCodec.decode(&mut buf).unwrap() {
            Some(BackendMessage::Other(Message::CopyData(body))) => assert_eq!(body.data(), b"hi"),
            _ => panic!("expected CopyData"),
        }
    }

    #[test]
    fn absurd_length_is_an_error() {
        let mut buf = BytesMut::from(&b"d\xff\xff\xff\xff"[..]);
        assert!(BackendCodec.decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"d\0\0\0\x01"[..]);
        assert!(BackendCodec.decode(&mut buf).is_err());
    }
}
