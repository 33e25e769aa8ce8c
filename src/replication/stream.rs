//! The CopyBoth phase of a replication connection: WAL data in, status updates out.
//!
//! The server sends `XLogData` ('w', carrying one pgoutput message) and primary keepalives
//! ('k'); the client sends standby status updates ('r') with the write, flush and apply
//! positions. The flush position is what the server stores as the slot's
//! `confirmed_flush_lsn`: WAL before it may be recycled, and transactions that committed
//! before it are never sent again. Deciding that position is [`crate::checkpoint`]'s job;
//! this module only moves bytes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use postgres_protocol::message::backend::Message;
use tokio::io::AsyncWriteExt;

use super::codec::BackendMessage;
use super::error::ReplicationError;
use super::lsn::Lsn;
use super::wire::{server_error, Reader, Writer};

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00:00 UTC.
pub const POSTGRES_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// A chunk of decoded WAL: one pgoutput message.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        /// Server clock, microseconds since the PostgreSQL epoch.
        send_time_micros: i64,
        data: Bytes,
    },
    /// The server's position, and whether it wants a status update now.
    Keepalive {
        wal_end: Lsn,
        send_time_micros: i64,
        reply_requested: bool,
    },
}

/// Positions reported in a standby status update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatus {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
}

/// A replication connection in CopyBoth mode.
#[allow(missing_debug_implementations)]
pub struct ReplicationStream {
    reader: Reader,
    writer: Writer,
    buf: BytesMut,
}

impl ReplicationStream {
    pub(crate) fn new(reader: Reader, writer: Writer) -> Self {
        ReplicationStream {
            reader,
            writer,
            buf: BytesMut::with_capacity(64),
        }
    }

    /// The next message. Cancel-safe: a message is never half-read.
    pub async fn next(&mut self) -> Result<ReplicationMessage, ReplicationError> {
        loop {
            let message = self.reader.next().await.transpose()?;
            if let Some(parsed) = self.interpret(message)? {
                return Ok(parsed);
            }
        }
    }

    /// The next message if one is already buffered or readable without waiting.
    pub fn try_next(&mut self) -> Option<Result<ReplicationMessage, ReplicationError>> {
        use futures_util::FutureExt;
        loop {
            let message = self.reader.next().now_or_never()?.transpose();
            match message
                .map_err(ReplicationError::from)
                .and_then(|m| self.interpret(m))
            {
                Ok(None) => continue,
                Ok(Some(parsed)) => return Some(Ok(parsed)),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn interpret(
        &mut self,
        message: Option<BackendMessage>,
    ) -> Result<Option<ReplicationMessage>, ReplicationError> {
        match message {
            Some(BackendMessage::Other(Message::CopyData(body))) => {
                parse_copy_data(body.into_bytes()).map(Some)
            }
            Some(BackendMessage::Other(Message::ErrorResponse(body))) => Err(server_error(&body)),
            Some(BackendMessage::Other(Message::CopyDone)) | None => Err(ReplicationError::Closed),
            Some(_) => Ok(None), // notices, parameter status
        }
    }

    /// Sends a standby status update. `reply_requested` asks the server to answer with a
    /// keepalive at once.
    pub async fn send_status(
        &mut self,
        status: StandbyStatus,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        encode_status(
            &status,
            postgres_now_micros(),
            reply_requested,
            &mut self.buf,
        );
        self.writer.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }

    /// Ends streaming politely (CopyDone, Terminate).
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        postgres_protocol::message::frontend::copy_done(&mut self.buf);
        postgres_protocol::message::frontend::terminate(&mut self.buf);
        self.writer.write_all(&self.buf).await?;
        self.writer.shutdown().await?;
        Ok(())
    }
}

/// Parses the payload of one CopyData message of the replication stream.
pub fn parse_copy_data(mut data: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    let short = || ReplicationError::Protocol("truncated replication message".into());
    if data.is_empty() {
        return Err(short());
    }
    match data.get_u8() {
        b'w' => {
            if data.remaining() < 24 {
                return Err(short());
            }
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let send_time_micros = data.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time_micros,
                data,
            })
        }
        b'k' => {
            if data.remaining() < 17 {
                return Err(short());
            }
            Ok(ReplicationMessage::Keepalive {
                wal_end: Lsn(data.get_u64()),
                send_time_micros: data.get_i64(),
                reply_requested: data.get_u8() == 1,
            })
        }
        tag => Err(ReplicationError::Protocol(format!(
            "unknown replication message tag {:?}",
            char::from(tag)
        ))),
    }
}

/// Writes a standby status update ('r') wrapped in a CopyData frame.
pub fn encode_status(status: &StandbyStatus, now_micros: i64, reply: bool, out: &mut BytesMut) {
    use bytes::BufMut;
    const BODY: usize = 1 + 8 * 4 + 1;
    out.put_u8(b'd');
    out.put_u32((4 + BODY) as u32);
    out.put_u8(b'r');
    out.put_u64(status.write.0);
    out.put_u64(status.flush.0);
    out.put_u64(status.apply.0);
    out.put_i64(now_micros);
    out.put_u8(u8::from(reply));
}

/// Now, in microseconds since the PostgreSQL epoch.
pub fn postgres_now_micros() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since_unix.as_micros()).unwrap_or(i64::MAX) - POSTGRES_EPOCH_OFFSET_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlogdata_and_keepalive_parse() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&1u64.to_be_bytes());
        w.extend_from_slice(&2u64.to_be_bytes());
        w.extend_from_slice(&3i64.to_be_bytes());
        w.extend_from_slice(b"B...");
        assert_eq!(
            parse_copy_data(Bytes::from(w)).unwrap(),
            ReplicationMessage::XLogData {
                wal_start: Lsn(1),
                wal_end: Lsn(2),
                send_time_micros: 3,
                data: Bytes::from_static(b"B..."),
            }
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&9u64.to_be_bytes());
        k.extend_from_slice(&4i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_copy_data(Bytes::from(k)).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: Lsn(9),
                send_time_micros: 4,
                reply_requested: true
            }
        );
    }

    #[test]
    fn malformed_stream_messages_are_errors() {
        for bad in [&b""[..], b"w\0\0", b"k\0\0\0\0\0\0\0\0", b"x"] {
            assert!(parse_copy_data(Bytes::copy_from_slice(bad)).is_err());
        }
    }

    #[test]
    fn status_update_layout() {
        let mut out = BytesMut::new();
        let status = StandbyStatus {
            write: Lsn(3),
            flush: Lsn(2),
            apply: Lsn(1),
        };
        encode_status(&status, 7, true, &mut out);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(&out[..6], b"d\0\0\0\x26r");
        assert_eq!(&out[6..14], &3u64.to_be_bytes());
        assert_eq!(&out[14..22], &2u64.to_be_bytes());
        assert_eq!(&out[22..30], &1u64.to_be_bytes());
        assert_eq!(&out[30..38], &7i64.to_be_bytes());
        assert_eq!(out[38], 1);
    }
}
