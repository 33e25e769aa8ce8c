//! Decoder for the pgoutput logical replication protocol, version 1.
//!
//! [`decode`] turns the payload of one XLogData message (one pgoutput message) into a
//! [`PgOutputMessage`]. The format is the one documented in the PostgreSQL 15 manual,
//! "Logical Replication Message Formats"; the tests check it against real messages captured
//! from PostgreSQL 15 by `scripts/capture-pgoutput-fixtures.sh` (`tests/fixtures/pgoutput/`).
//!
//! Three choices shape this module:
//!
//! - **Zero-copy column values.** The relay moves tens of thousands of rows a second, so the
//!   column values (and logical message contents) are [`Bytes`] slices of the input buffer: a
//!   reference count, never a copy. The only allocations per row are the `Vec` of columns and
//!   (for relation, type and origin messages, which are rare) the names.
//! - **Never panics.** The input comes from the network. Every read is bounds-checked, lengths
//!   and counts are checked to be non-negative and to fit before anything is allocated for
//!   them, strings must be NUL-terminated UTF-8, and a message with bytes left over after its
//!   last field is rejected. Any malformed input is a [`DecodeError`], never a panic or an
//!   allocation sized by an untrusted count.
//! - **Protocol version 1 only.** The relay asks for `proto_version '1'`, so the streaming
//!   (`S`, `E`, `c`, `A`) and two-phase commit (`b`, `P`, `K`, `r`, `p`) messages of versions
//!   2 and 3, and the transaction id that streamed changes carry, are not decoded: their tags
//!   are [`DecodeError::UnknownTag`]. Column values are not checked for UTF-8: whoever uses a
//!   value decides what it needs.

use std::fmt;
use std::str::Utf8Error;

use bytes::Bytes;

use super::lsn::Lsn;

/// A PostgreSQL object id (table, type).
pub type Oid = u32;

/// One pgoutput message, as carried in the payload of one XLogData message.
#[derive(Debug, Clone, PartialEq)]
pub enum PgOutputMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeInfo),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
}

/// 'B': a transaction starts; its changes follow, then a [`Commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (the transaction's "final" LSN).
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_ts_micros: i64,
    pub xid: u32,
}

/// 'C': the transaction that the last [`Begin`] opened is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the transaction is handled.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_ts_micros: i64,
}

/// 'O': the transaction came from another replication origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// 'R': the shape of a table, sent before its first change and after every schema change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: Oid,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: Oid,
    pub type_modifier: i32,
}

/// 'Y': a non-built-in data type used by a following relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub oid: Oid,
    pub namespace: String,
    pub name: String,
}

/// 'I': a new row.
#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    pub relation: Oid,
    pub new: TupleData,
}

/// 'U': a changed row, with the old key or old row when the replica identity sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub relation: Oid,
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

/// 'D': a removed row.
#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    pub relation: Oid,
    pub old: OldTuple,
}

/// The old side of an update or delete.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// 'K': only the replica identity key columns are set; the others are null.
    Key(TupleData),
    /// 'O': the whole old row (replica identity full).
    Full(TupleData),
}

/// 'T': tables were truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
    pub options: u8,
    pub relations: Vec<Oid>,
}

/// 'M': a message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// The column values of one row, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData {
    pub columns: Vec<ColumnValue>,
}

/// One column value. Text and binary values share the replication buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    Null,
    /// A TOASTed value that did not change; its value is not sent.
    UnchangedToast,
    /// The type's text output form. Not checked for UTF-8 here: routing decides what it needs.
    Text(Bytes),
    /// The type's binary send form (only when the `binary` option is on).
    Binary(Bytes),
}

impl PgOutputMessage {
    /// The message's name, for logs and errors: `"begin"`, `"insert"`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            PgOutputMessage::Begin(_) => "begin",
            PgOutputMessage::Commit(_) => "commit",
            PgOutputMessage::Origin(_) => "origin",
            PgOutputMessage::Relation(_) => "relation",
            PgOutputMessage::Type(_) => "type",
            PgOutputMessage::Insert(_) => "insert",
            PgOutputMessage::Update(_) => "update",
            PgOutputMessage::Delete(_) => "delete",
            PgOutputMessage::Truncate(_) => "truncate",
            PgOutputMessage::Message(_) => "message",
        }
    }
}

impl Truncate {
    /// `TRUNCATE ... CASCADE`.
    pub const CASCADE: u8 = 1;
    /// `TRUNCATE ... RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;
}

impl OldTuple {
    /// The old column values, whichever kind they are.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

impl ColumnValue {
    /// The value's bytes for [`ColumnValue::Text`] and [`ColumnValue::Binary`], else `None`.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            ColumnValue::Text(b) | ColumnValue::Binary(b) => Some(b),
            ColumnValue::Null | ColumnValue::UnchangedToast => None,
        }
    }
}

/// Why a pgoutput message could not be decoded. `what` names the field being read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload had no bytes at all.
    #[error("empty pgoutput message")]
    Empty,
    /// The message ended inside a field.
    #[error("truncated pgoutput message: {what} needs {needed} bytes, {remaining} remaining")]
    Truncated {
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    /// The first byte is not a protocol version 1 message tag.
    #[error("unknown pgoutput message tag {}", ByteRepr(*.0))]
    UnknownTag(u8),
    /// A column's kind byte is not `n`, `u`, `t` or `b`.
    #[error("unknown tuple column kind {}", ByteRepr(*.0))]
    UnknownTupleKind(u8),
    /// The byte before a tuple is not one that this message allows there.
    #[error("unexpected tuple marker {} in {message} message: expected {expected}", ByteRepr(*.found))]
    UnexpectedTupleMarker {
        message: &'static str,
        expected: &'static str,
        found: u8,
    },
    /// A length prefix is negative.
    #[error("negative length {length} for {what}")]
    NegativeLength { what: &'static str, length: i32 },
    /// A count (columns, relations) is negative.
    #[error("negative count {count} for {what}")]
    NegativeCount { what: &'static str, count: i32 },
    /// A string runs to the end of the message without its NUL terminator.
    #[error("unterminated string for {what}: no NUL byte before the end of the message")]
    MissingNul { what: &'static str },
    /// A string is not valid UTF-8.
    #[error("{what} is not valid utf-8")]
    InvalidUtf8 {
        what: &'static str,
        #[source]
        source: Utf8Error,
    },
    /// A complete message was followed by more bytes.
    #[error("{count} trailing bytes after a complete {message} message")]
    TrailingBytes { message: &'static str, count: usize },
}

/// Shows a tag byte as `'Z' (0x5a)` when printable, else as `0x00`.
struct ByteRepr(u8);

impl fmt::Display for ByteRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' (0x{:02x})", char::from(self.0), self.0)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// Decode one pgoutput message (the payload of one XLogData message). Never panics.
///
/// Column values and logical message contents are slices of `buf` (no copy).
pub fn decode(buf: Bytes) -> Result<PgOutputMessage, DecodeError> {
    let mut r = Reader { buf: &buf, pos: 0 };
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    r.pos = 1;
    let message = match tag {
        b'B' => PgOutputMessage::Begin(Begin {
            final_lsn: r.lsn("begin final lsn")?,
            commit_ts_micros: r.i64("begin commit timestamp")?,
            xid: r.u32("begin xid")?,
        }),
        b'C' => PgOutputMessage::Commit(Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.lsn("commit lsn")?,
            end_lsn: r.lsn("commit end lsn")?,
            commit_ts_micros: r.i64("commit timestamp")?,
        }),
        b'O' => PgOutputMessage::Origin(Origin {
            commit_lsn: r.lsn("origin commit lsn")?,
            name: r.string("origin name")?,
        }),
        b'R' => PgOutputMessage::Relation(r.relation()?),
        b'Y' => PgOutputMessage::Type(TypeInfo {
            oid: r.u32("type oid")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let relation = r.u32("insert relation oid")?;
            match r.u8("insert tuple marker")? {
                b'N' => {}
                found => {
                    return Err(DecodeError::UnexpectedTupleMarker {
                        message: "insert",
                        expected: "'N'",
                        found,
                    })
                }
            }
            PgOutputMessage::Insert(Insert {
                relation,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation = r.u32("update relation oid")?;
            let (old, marker) = match r.u8("update tuple marker")? {
                b'K' => {
                    let old = OldTuple::Key(r.tuple()?);
                    (Some(old), r.u8("update new tuple marker")?)
                }
                b'O' => {
                    let old = OldTuple::Full(r.tuple()?);
                    (Some(old), r.u8("update new tuple marker")?)
                }
                b'N' => (None, b'N'),
                found => {
                    return Err(DecodeError::UnexpectedTupleMarker {
                        message: "update",
                        expected: "'K', 'O' or 'N'",
                        found,
                    })
                }
            };
            if marker != b'N' {
                return Err(DecodeError::UnexpectedTupleMarker {
                    message: "update",
                    expected: "'N' after the old tuple",
                    found: marker,
                });
            }
            PgOutputMessage::Update(Update {
                relation,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation = r.u32("delete relation oid")?;
            let old = match r.u8("delete tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                found => {
                    return Err(DecodeError::UnexpectedTupleMarker {
                        message: "delete",
                        expected: "'K' or 'O'",
                        found,
                    })
                }
            };
            PgOutputMessage::Delete(Delete { relation, old })
        }
        b'T' => {
            let count = r.count_i32("truncate relation count")?;
            let options = r.u8("truncate options")?;
            // Check the whole list fits before allocating for an untrusted count.
            r.need("truncate relation oids", count.saturating_mul(4))?;
            let mut relations = Vec::with_capacity(count);
            for _ in 0..count {
                relations.push(r.u32("truncate relation oid")?);
            }
            PgOutputMessage::Truncate(Truncate { options, relations })
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.lsn("message lsn")?;
            let prefix = r.string("message prefix")?;
            let content = r.len_prefixed("message content")?;
            PgOutputMessage::Message(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            })
        }
        other => return Err(DecodeError::UnknownTag(other)),
    };
    let count = r.remaining();
    if count != 0 {
        return Err(DecodeError::TrailingBytes {
            message: message.kind(),
            count,
        });
    }
    Ok(message)
}

/// A bounds-checked big-endian cursor over one message.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails unless `needed` more bytes are there.
    fn need(&self, what: &'static str, needed: usize) -> Result<(), DecodeError> {
        let remaining = self.remaining();
        if needed > remaining {
            return Err(DecodeError::Truncated {
                what,
                needed,
                remaining,
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.need(what, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.array(what).map(i16::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        self.array(what).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    /// An Int16 count, rejected when negative.
    fn count_i16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let count = self.i16(what)?;
        usize::try_from(count).map_err(|_| DecodeError::NegativeCount {
            what,
            count: count.into(),
        })
    }

    /// An Int32 count, rejected when negative.
    fn count_i32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let count = self.i32(what)?;
        usize::try_from(count).map_err(|_| DecodeError::NegativeCount { what, count })
    }

    /// An Int32 length then that many bytes, as a slice of the input (no copy).
    fn len_prefixed(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let length = self.i32(what)?;
        let len =
            usize::try_from(length).map_err(|_| DecodeError::NegativeLength { what, length })?;
        self.need(what, len)?;
        let value = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(value)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::MissingNul { what });
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|source| DecodeError::InvalidUtf8 { what, source })?;
        self.pos += nul + 1;
        Ok(s.to_owned())
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32("relation oid")?;
        let namespace = self.string("relation namespace")?;
        let name = self.string("relation name")?;
        let replica_identity = self.u8("relation replica identity")?;
        let count = self.count_i16("relation column count")?;
        // Each column takes at least 10 bytes: never allocate more than the input can hold.
        let mut columns = Vec::with_capacity(count.min(self.remaining() / 10));
        for _ in 0..count {
            let flags = self.u8("relation column flags")?;
            columns.push(RelationColumn {
                is_key: flags & 1 != 0,
                name: self.string("relation column name")?,
                type_oid: self.u32("relation column type oid")?,
                type_modifier: self.i32("relation column type modifier")?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// TupleData: an Int16 column count, then each column's kind and value.
    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let count = self.count_i16("tuple column count")?;
        // Each column takes at least its kind byte: never allocate more than the input can hold.
        let mut columns = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let value = match self.u8("tuple column kind")? {
                b'n' => ColumnValue::Null,
                b'u' => ColumnValue::UnchangedToast,
                b't' => ColumnValue::Text(self.len_prefixed("text column value")?),
                b'b' => ColumnValue::Binary(self.len_prefixed("binary column value")?),
                other => return Err(DecodeError::UnknownTupleKind(other)),
            };
            columns.push(value);
        }
        Ok(TupleData { columns })
    }
}

#[cfg(test)]
mod tests;
