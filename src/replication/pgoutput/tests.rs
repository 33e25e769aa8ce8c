use super::*;

// Real messages from PostgreSQL 15, written by scripts/capture-pgoutput-fixtures.sh. Their
// LSNs, OIDs, xids and timestamps change on every capture; names and values do not.
const BEGIN: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/begin.bin");
const COMMIT: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/commit.bin");
const ORIGIN: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/origin.bin");
const RELATION: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/relation.bin");
const TYPE: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/type.bin");
const INSERT: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/insert.bin");
const INSERT_BINARY: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/insert_binary.bin");
const UPDATE: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/update.bin");
const UPDATE_OLD_KEY: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/update_old_key.bin");
const UPDATE_OLD_FULL: &[u8] =
    include_bytes!("../../../tests/fixtures/pgoutput/update_old_full.bin");
const UPDATE_UNCHANGED_TOAST: &[u8] =
    include_bytes!("../../../tests/fixtures/pgoutput/update_unchanged_toast.bin");
const DELETE: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/delete.bin");
const DELETE_OLD_FULL: &[u8] =
    include_bytes!("../../../tests/fixtures/pgoutput/delete_old_full.bin");
const TRUNCATE: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/truncate.bin");
const MESSAGE: &[u8] = include_bytes!("../../../tests/fixtures/pgoutput/message.bin");
const MESSAGE_NONTRANSACTIONAL: &[u8] =
    include_bytes!("../../../tests/fixtures/pgoutput/message_nontransactional.bin");

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
