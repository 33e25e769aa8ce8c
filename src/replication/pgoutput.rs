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
mod tests {
    use super::*;

    // Real messages from PostgreSQL 15, written by scripts/capture-pgoutput-fixtures.sh. Their
    // LSNs, OIDs, xids and timestamps change on every capture; names and values do not.
    const BEGIN: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/begin.bin");
    const COMMIT: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/commit.bin");
    const ORIGIN: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/origin.bin");
    const RELATION: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/relation.bin");
    const TYPE: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/type.bin");
    const INSERT: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/insert.bin");
    const INSERT_BINARY: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/insert_binary.bin");
    const UPDATE: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/update.bin");
    const UPDATE_OLD_KEY: &[u8] =
        include_bytes!("../../tests/fixtures/pgoutput/update_old_key.bin");
    const UPDATE_OLD_FULL: &[u8] =
        include_bytes!("../../tests/fixtures/pgoutput/update_old_full.bin");
    const UPDATE_UNCHANGED_TOAST: &[u8] =
        include_bytes!("../../tests/fixtures/pgoutput/update_unchanged_toast.bin");
    const DELETE: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/delete.bin");
    const DELETE_OLD_FULL: &[u8] =
        include_bytes!("../../tests/fixtures/pgoutput/delete_old_full.bin");
    const TRUNCATE: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/truncate.bin");
    const MESSAGE: &[u8] = include_bytes!("../../tests/fixtures/pgoutput/message.bin");
    const MESSAGE_NONTRANSACTIONAL: &[u8] =
        include_bytes!("../../tests/fixtures/pgoutput/message_nontransactional.bin");

    const ALL_FIXTURES: &[(&str, &[u8])] = &[
        ("begin", BEGIN),
        ("commit", COMMIT),
        ("origin", ORIGIN),
        ("relation", RELATION),
        ("type", TYPE),
        ("insert", INSERT),
        ("insert_binary", INSERT_BINARY),
        ("update", UPDATE),
        ("update_old_key", UPDATE_OLD_KEY),
        ("update_old_full", UPDATE_OLD_FULL),
        ("update_unchanged_toast", UPDATE_UNCHANGED_TOAST),
        ("delete", DELETE),
        ("delete_old_full", DELETE_OLD_FULL),
        ("truncate", TRUNCATE),
        ("message", MESSAGE),
        ("message_nontransactional", MESSAGE_NONTRANSACTIONAL),
    ];

    /// 2024-01-01 00:00:00 UTC in microseconds since 2000-01-01: the fixtures are newer.
    const JAN_2024_MICROS: i64 = 757_382_400_000_000;

    /// Built-in type OIDs used by the `outbox` table.
    const INT8_OID: Oid = 20;
    const TEXT_OID: Oid = 25;

    fn decode_static(bytes: &'static [u8]) -> PgOutputMessage {
        match decode(Bytes::from_static(bytes)) {
            Ok(message) => message,
            Err(e) => panic!("fixture failed to decode: {e}"),
        }
    }

    fn relation_oid() -> Oid {
        match decode_static(RELATION) {
            PgOutputMessage::Relation(r) => r.oid,
            other => panic!("expected a relation, got {other:?}"),
        }
    }

    fn text(s: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn binary(b: &[u8]) -> ColumnValue {
        ColumnValue::Binary(Bytes::copy_from_slice(b))
    }

    fn tuple(columns: Vec<ColumnValue>) -> TupleData {
        TupleData { columns }
    }

    // ---- real messages ----------------------------------------------------------------------

    #[test]
    fn begin_fixture() {
        let PgOutputMessage::Begin(begin) = decode_static(BEGIN) else {
            panic!("not a begin");
        };
        assert_ne!(begin.final_lsn, Lsn::ZERO);
        assert!(begin.commit_ts_micros > JAN_2024_MICROS, "{begin:?}");
        assert_ne!(begin.xid, 0);
    }

    #[test]
    fn commit_fixture_matches_its_begin() {
        let PgOutputMessage::Commit(commit) = decode_static(COMMIT) else {
            panic!("not a commit");
        };
        let PgOutputMessage::Begin(begin) = decode_static(BEGIN) else {
            panic!("not a begin");
        };
        assert_eq!(commit.flags, 0);
        assert_ne!(commit.commit_lsn, Lsn::ZERO);
        assert!(commit.end_lsn > commit.commit_lsn, "{commit:?}");
        // Same transaction: Begin announces the commit record's LSN and time.
        assert_eq!(begin.final_lsn, commit.commit_lsn);
        assert_eq!(begin.commit_ts_micros, commit.commit_ts_micros);
    }

    #[test]
    fn origin_fixture() {
        assert_eq!(
            decode_static(ORIGIN),
            PgOutputMessage::Origin(Origin {
                // Set by pg_replication_origin_xact_setup('0/ABCDEF0', now()).
                commit_lsn: Lsn(0x0ABC_DEF0),
                name: "o".to_owned(),
            })
        );
    }

    #[test]
    fn relation_fixture() {
        let PgOutputMessage::Relation(rel) = decode_static(RELATION) else {
            panic!("not a relation");
        };
        let PgOutputMessage::Type(mood) = decode_static(TYPE) else {
            panic!("not a type");
        };
        assert_ne!(rel.oid, 0);
        assert_eq!(rel.namespace, "public");
        assert_eq!(rel.name, "outbox");
        assert_eq!(rel.replica_identity, b'd');
        let column = |is_key, name: &str, type_oid| RelationColumn {
            is_key,
            name: name.to_owned(),
            type_oid,
            type_modifier: -1,
        };
        assert_eq!(
            rel.columns,
            vec![
                column(true, "id", INT8_OID),
                column(false, "topic", TEXT_OID),
                column(false, "payload", TEXT_OID),
                column(false, "mood", mood.oid),
                column(false, "big", TEXT_OID),
            ]
        );
    }

    #[test]
    fn type_fixture() {
        let PgOutputMessage::Type(ty) = decode_static(TYPE) else {
            panic!("not a type");
        };
        assert!(ty.oid >= 16384, "user types have OIDs from 16384: {ty:?}");
        assert_eq!(ty.namespace, "public");
        assert_eq!(ty.name, "mood");
    }

    #[test]
    fn insert_fixture() {
        assert_eq!(
            decode_static(INSERT),
            PgOutputMessage::Insert(Insert {
                relation: relation_oid(),
                new: tuple(vec![
                    text("1"),
                    text("orders"),
                    text("héllo"),
                    text("happy"),
                    ColumnValue::Null,
                ]),
            })
        );
    }

    #[test]
    fn insert_binary_fixture() {
        assert_eq!(
            decode_static(INSERT_BINARY),
            PgOutputMessage::Insert(Insert {
                relation: relation_oid(),
                new: tuple(vec![
                    binary(&1i64.to_be_bytes()),
                    binary(b"orders"),
                    binary("héllo".as_bytes()),
                    binary(b"happy"),
                    ColumnValue::Null,
                ]),
            })
        );
    }

    #[test]
    fn update_fixture_without_old_tuple() {
        assert_eq!(
            decode_static(UPDATE),
            PgOutputMessage::Update(Update {
                relation: relation_oid(),
                old: None,
                new: tuple(vec![
                    text("1"),
                    text("orders"),
                    text("v2"),
                    text("happy"),
                    ColumnValue::Null,
                ]),
            })
        );
    }

    #[test]
    fn update_old_key_fixture() {
        // The key changed (1 -> 10): the old key is sent, with every non-key column null.
        assert_eq!(
            decode_static(UPDATE_OLD_KEY),
            PgOutputMessage::Update(Update {
                relation: relation_oid(),
                old: Some(OldTuple::Key(tuple(vec![
                    text("1"),
                    ColumnValue::Null,
                    ColumnValue::Null,
                    ColumnValue::Null,
                    ColumnValue::Null,
                ]))),
                new: tuple(vec![
                    text("10"),
                    text("orders"),
                    text("v2"),
                    text("happy"),
                    ColumnValue::Null,
                ]),
            })
        );
    }

    #[test]
    fn update_old_full_fixture() {
        let PgOutputMessage::Update(update) = decode_static(UPDATE_OLD_FULL) else {
            panic!("not an update");
        };
        assert_ne!(update.relation, relation_oid(), "full_ident, not outbox");
        assert_eq!(
            update.old,
            Some(OldTuple::Full(tuple(vec![text("1"), text("a")])))
        );
        assert_eq!(update.new, tuple(vec![text("1"), text("b")]));
    }

    #[test]
    fn update_unchanged_toast_fixture() {
        assert_eq!(
            decode_static(UPDATE_UNCHANGED_TOAST),
            PgOutputMessage::Update(Update {
                relation: relation_oid(),
                old: None,
                new: tuple(vec![
                    text("2"),
                    text("toast"),
                    text("touched"),
                    text("sad"),
                    ColumnValue::UnchangedToast,
                ]),
            })
        );
    }

    #[test]
    fn delete_fixture() {
        assert_eq!(
            decode_static(DELETE),
            PgOutputMessage::Delete(Delete {
                relation: relation_oid(),
                old: OldTuple::Key(tuple(vec![
                    text("10"),
                    ColumnValue::Null,
                    ColumnValue::Null,
                    ColumnValue::Null,
                    ColumnValue::Null,
                ])),
            })
        );
    }

    #[test]
    fn delete_old_full_fixture() {
        let PgOutputMessage::Delete(delete) = decode_static(DELETE_OLD_FULL) else {
            panic!("not a delete");
        };
        let PgOutputMessage::Update(update) = decode_static(UPDATE_OLD_FULL) else {
            panic!("not an update");
        };
        assert_eq!(delete.relation, update.relation);
        assert_eq!(
            delete.old,
            OldTuple::Full(tuple(vec![text("1"), text("b")]))
        );
        assert_eq!(delete.old.tuple().columns.len(), 2);
    }

    #[test]
    fn truncate_fixture() {
        let PgOutputMessage::Truncate(truncate) = decode_static(TRUNCATE) else {
            panic!("not a truncate");
        };
        let PgOutputMessage::Update(full_ident) = decode_static(UPDATE_OLD_FULL) else {
            panic!("not an update");
        };
        // TRUNCATE outbox, full_ident RESTART IDENTITY CASCADE
        assert_eq!(
            truncate.options,
            Truncate::CASCADE | Truncate::RESTART_IDENTITY
        );
        assert_eq!(truncate.relations.len(), 2);
        assert!(truncate.relations.contains(&relation_oid()));
        assert!(truncate.relations.contains(&full_ident.relation));
    }

    #[test]
    fn message_fixture() {
        let PgOutputMessage::Message(message) = decode_static(MESSAGE) else {
            panic!("not a message");
        };
        assert!(message.transactional);
        assert_ne!(message.lsn, Lsn::ZERO);
        assert_eq!(message.prefix, "outbox-relay");
        assert_eq!(message.content, Bytes::from_static(b"hello message"));
    }

    #[test]
    fn message_nontransactional_fixture() {
        let PgOutputMessage::Message(message) = decode_static(MESSAGE_NONTRANSACTIONAL) else {
            panic!("not a message");
        };
        assert!(!message.transactional);
        assert_ne!(message.lsn, Lsn::ZERO);
        assert_eq!(message.prefix, "outbox-relay");
        assert_eq!(message.content, Bytes::from_static(b"no tx"));
    }

    #[test]
    fn column_values_and_message_content_share_the_input_buffer() {
        let within = |input: &Bytes, value: &Bytes| {
            let start = input.as_ptr() as usize;
            let at = value.as_ptr() as usize;
            assert!(
                at >= start && at + value.len() <= start + input.len(),
                "value was copied out of the input buffer"
            );
        };
        for fixture in [INSERT, INSERT_BINARY, UPDATE_OLD_KEY] {
            // A heap buffer, as from the network, not a static.
            let input = Bytes::from(fixture.to_vec());
            let (old, new) = match decode(input.clone()).unwrap() {
                PgOutputMessage::Insert(i) => (None, i.new),
                PgOutputMessage::Update(u) => (u.old, u.new),
                other => panic!("unexpected {other:?}"),
            };
            let old_values = old.iter().flat_map(|o| o.tuple().columns.clone());
            for value in new.columns.iter().cloned().chain(old_values) {
                if let Some(b) = value.bytes() {
                    within(&input, b);
                }
            }
        }
        let input = Bytes::from(MESSAGE.to_vec());
        let PgOutputMessage::Message(message) = decode(input.clone()).unwrap() else {
            panic!("not a message");
        };
        within(&input, &message.content);
    }

    #[test]
    fn kind_names_every_fixture() {
        for (name, bytes) in ALL_FIXTURES {
            let kind = decode_static(bytes).kind();
            assert!(name.starts_with(kind), "{name} decoded as {kind}");
        }
    }

    // ---- malformed input --------------------------------------------------------------------

    /// Builds a message field by field, big-endian.
    struct Msg(Vec<u8>);

    impl Msg {
        fn new(tag: u8) -> Self {
            Msg(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        fn cstr(self, v: &[u8]) -> Self {
            self.raw(v).u8(0)
        }
        /// One text column.
        fn text(self, v: &[u8]) -> Self {
            let len = i32::try_from(v.len()).unwrap();
            self.u8(b't').i32(len).raw(v)
        }
        fn decode(self) -> Result<PgOutputMessage, DecodeError> {
            decode(Bytes::from(self.0))
        }
    }

    #[test]
    fn builder_makes_valid_messages() {
        // The malformed cases below differ from these in one field only.
        let insert = Msg::new(b'I').i32(7).u8(b'N').i16(2).text(b"x").u8(b'n');
        assert_eq!(
            insert.decode(),
            Ok(PgOutputMessage::Insert(Insert {
                relation: 7,
                new: tuple(vec![text("x"), ColumnValue::Null]),
            }))
        );
        let relation = Msg::new(b'R')
            .i32(7)
            .cstr(b"")
            .cstr(b"t")
            .u8(b'f')
            .i16(1)
            .u8(0)
            .cstr(b"c")
            .i32(25)
            .i32(-1);
        let Ok(PgOutputMessage::Relation(rel)) = relation.decode() else {
            panic!("relation did not decode");
        };
        // An empty namespace means pg_catalog.
        assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("", "t"));
        assert_eq!(rel.replica_identity, b'f');
        assert!(!rel.columns[0].is_key);
        let truncate = Msg::new(b'T').i32(0).u8(0);
        assert_eq!(
            truncate.decode(),
            Ok(PgOutputMessage::Truncate(Truncate {
                options: 0,
                relations: vec![],
            }))
        );
    }

    #[test]
    fn empty_input_is_an_error() {
        assert_eq!(decode(Bytes::new()), Err(DecodeError::Empty));
    }

    #[test]
    fn unknown_tags_are_errors() {
        assert_eq!(
            decode(Bytes::from_static(b"Z")),
            Err(DecodeError::UnknownTag(b'Z'))
        );
        // Protocol version 2+ messages (stream start, stream commit, begin prepare) are not v1.
        for tag in [
            b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p', 0, 0xff,
        ] {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&[0; 32]);
            assert_eq!(
                decode(Bytes::from(bytes)),
                Err(DecodeError::UnknownTag(tag))
            );
        }
    }

    #[test]
    fn every_strict_prefix_of_every_fixture_is_an_error() {
        for (name, bytes) in ALL_FIXTURES {
            for len in 0..bytes.len() {
                let prefix = Bytes::copy_from_slice(&bytes[..len]);
                assert!(
                    decode(prefix).is_err(),
                    "{name}: the first {len} of {} bytes decoded",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_after_every_fixture_are_an_error() {
        for (name, bytes) in ALL_FIXTURES {
            let mut longer = bytes.to_vec();
            longer.push(0);
            let err = decode(Bytes::from(longer)).unwrap_err();
            assert!(
                matches!(err, DecodeError::TrailingBytes { count: 1, .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn unknown_tuple_kind_is_an_error() {
        // insert.bin: tag, oid (4), 'N', count (2), then the first column's kind at 8.
        let mut bytes = INSERT.to_vec();
        assert_eq!(bytes[8], b't');
        bytes[8] = b'x';
        assert_eq!(
            decode(Bytes::from(bytes)),
            Err(DecodeError::UnknownTupleKind(b'x'))
        );
    }

    #[test]
    fn negative_column_length_is_an_error() {
        let msg = Msg::new(b'I').i32(7).u8(b'N').i16(1).u8(b't').i32(-1);
        assert_eq!(
            msg.decode(),
            Err(DecodeError::NegativeLength {
                what: "text column value",
                length: -1
            })
        );
        let msg = Msg::new(b'I').i32(7).u8(b'N').i16(1).u8(b'b').i32(i32::MIN);
        assert!(matches!(
            msg.decode(),
            Err(DecodeError::NegativeLength { .. })
        ));
    }

    #[test]
    fn column_length_past_the_end_is_an_error() {
        let msg = Msg::new(b'I')
            .i32(7)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(1000)
            .raw(b"abc");
        assert_eq!(
            msg.decode(),
            Err(DecodeError::Truncated {
                what: "text column value",
                needed: 1000,
                remaining: 3
            })
        );
        let msg = Msg::new(b'I').i32(7).u8(b'N').i16(1).u8(b'b').i32(i32::MAX);
        assert!(matches!(msg.decode(), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn invalid_utf8_in_relation_name_is_an_error() {
        let msg = Msg::new(b'R')
            .i32(7)
            .cstr(b"public")
            .cstr(b"bad\xff")
            .u8(b'd')
            .i16(0);
        let err = msg.decode().unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::InvalidUtf8 {
                    what: "relation name",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "relation name is not valid utf-8");
    }

    #[test]
    fn invalid_utf8_in_message_prefix_is_an_error() {
        let msg = Msg::new(b'M').u8(1).i64(1).cstr(b"\xc3").i32(0);
        assert!(matches!(
            msg.decode(),
            Err(DecodeError::InvalidUtf8 {
                what: "message prefix",
                ..
            })
        ));
    }

    #[test]
    fn missing_nul_terminator_is_an_error() {
        let msg = Msg::new(b'O').i64(1).raw(b"origin-without-nul");
        assert_eq!(
            msg.decode(),
            Err(DecodeError::MissingNul {
                what: "origin name"
            })
        );
        let msg = Msg::new(b'Y').i32(7).cstr(b"public").raw(b"mood");
        assert_eq!(
            msg.decode(),
            Err(DecodeError::MissingNul { what: "type name" })
        );
    }

    #[test]
    fn negative_column_counts_are_errors() {
        let msg = Msg::new(b'I').i32(7).u8(b'N').i16(-1);
        assert_eq!(
            msg.decode(),
            Err(DecodeError::NegativeCount {
                what: "tuple column count",
                count: -1
            })
        );
        let msg = Msg::new(b'R')
            .i32(7)
            .cstr(b"public")
            .cstr(b"t")
            .u8(b'd')
            .i16(i16::MIN);
        assert_eq!(
            msg.decode(),
            Err(DecodeError::NegativeCount {
                what: "relation column count",
                count: i16::MIN.into()
            })
        );
    }

    #[test]
    fn truncate_counts_are_checked_before_allocating() {
        let msg = Msg::new(b'T').i32(-5).u8(0);
        assert!(matches!(
            msg.decode(),
            Err(DecodeError::NegativeCount { count: -5, .. })
        ));
        // Two billion relations announced, one sent: an error, not a 8 GB allocation.
        let msg = Msg::new(b'T').i32(i32::MAX).u8(0).i32(7);
        assert!(matches!(
            msg.decode(),
            Err(DecodeError::Truncated { remaining: 4, .. })
        ));
    }

    #[test]
    fn column_counts_larger_than_the_message_are_errors() {
        let msg = Msg::new(b'I').i32(7).u8(b'N').i16(i16::MAX).u8(b'n');
        assert!(matches!(msg.decode(), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn negative_message_content_length_is_an_error() {
        let msg = Msg::new(b'M').u8(1).i64(1).cstr(b"p").i32(-2);
        assert!(matches!(
            msg.decode(),
            Err(DecodeError::NegativeLength {
                what: "message content",
                length: -2
            })
        ));
    }

    #[test]
    fn update_with_bad_old_tuple_marker_is_an_error() {
        let msg = Msg::new(b'U').i32(7).u8(b'X').i16(0);
        assert_eq!(
            msg.decode(),
            Err(DecodeError::UnexpectedTupleMarker {
                message: "update",
                expected: "'K', 'O' or 'N'",
                found: b'X'
            })
        );
        // An old tuple must be followed by the new one.
        let msg = Msg::new(b'U').i32(7).u8(b'K').i16(0).u8(b'K').i16(0);
        assert!(matches!(
            msg.decode(),
            Err(DecodeError::UnexpectedTupleMarker { found: b'K', .. })
        ));
    }

    #[test]
    fn insert_and_delete_with_wrong_tuple_marker_are_errors() {
        let msg = Msg::new(b'I').i32(7).u8(b'K').i16(0);
        assert!(matches!(
            msg.decode(),
            Err(DecodeError::UnexpectedTupleMarker {
                message: "insert",
                found: b'K',
                ..
            })
        ));
        let msg = Msg::new(b'D').i32(7).u8(b'N').i16(0);
        assert!(matches!(
            msg.decode(),
            Err(DecodeError::UnexpectedTupleMarker {
                message: "delete",
                found: b'N',
                ..
            })
        ));
    }

    #[test]
    fn error_messages_are_lowercase_and_name_the_problem() {
        let cases = [
            (DecodeError::Empty, "empty pgoutput message"),
            (
                DecodeError::UnknownTag(b'Z'),
                "unknown pgoutput message tag 'Z' (0x5a)",
            ),
            (
                DecodeError::UnknownTupleKind(0),
                "unknown tuple column kind 0x00",
            ),
            (
                DecodeError::Truncated {
                    what: "begin xid",
                    needed: 4,
                    remaining: 1,
                },
                "truncated pgoutput message: begin xid needs 4 bytes, 1 remaining",
            ),
            (
                DecodeError::TrailingBytes {
                    message: "commit",
                    count: 3,
                },
                "3 trailing bytes after a complete commit message",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }

    // ---- never panics -----------------------------------------------------------------------

    /// xorshift64: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        const TAGS: &[u8] = b"BCORYIUDTM";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for i in 0..200_000 {
            let len = rng.below(64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            // Mostly valid tags, so the bodies get exercised too; small values for counts and
            // lengths are likelier to line up with the bytes that follow.
            if !bytes.is_empty() && i % 8 != 0 {
                bytes[0] = TAGS[rng.below(TAGS.len())];
            }
            if i % 2 == 0 {
                for b in bytes.iter_mut().skip(1) {
                    if rng.below(3) == 0 {
                        *b = [0, 1, 2, b'n', b't', b'u', b'b', b'N', b'K', b'O'][rng.below(10)];
                    }
                }
            }
            let _ = decode(Bytes::from(bytes));
        }
    }

    #[test]
    fn mutated_fixtures_never_panic() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for (_, fixture) in ALL_FIXTURES {
            for _ in 0..5_000 {
                let mut bytes = fixture.to_vec();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(bytes.len());
                    match rng.below(4) {
                        0 => bytes[at] = rng.byte(),
                        1 => bytes[at] ^= 1 << rng.below(8),
                        2 => {
                            bytes.remove(at);
                            if bytes.is_empty() {
                                break;
                            }
                        }
                        _ => bytes.insert(at, rng.byte()),
                    }
                }
                let _ = decode(Bytes::from(bytes));
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn proptest_any_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode(Bytes::from(bytes));
        }
    }
}
