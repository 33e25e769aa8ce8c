use std::path::Path;

use super::*;
use crate::checkpoint::TxnSeq;
use crate::config::OnError;
use crate::dlq::Reason;
use crate::outbox::TablePolicy;
use crate::replication::Lsn;
use crate::source::{SourceEvent, TransactionInfo};

const COLUMNS: [&str; 5] = ["id", "aggregatetype", "aggregateid", "type", "payload"];

fn config(extra: &str) -> Config {
    let text = format!(
        "[source]\nurl = \"postgres://u@h/db\"\nslot = \"s\"\npublication = \"p\"\ntables = [\"public.outbox\"]\n[outbox]\n{extra}"
    );
    Config::from_toml(&text, Path::new("t.toml"), |_| None).unwrap()
}

/// The dead letter the relay writes for `values` (of [`COLUMNS`]) with `class`, read back
/// as the replay reads it: made by [`crate::dlq::record`] itself.
fn dead_letter(
    values: [Option<&str>; 5],
    class: &'static str,
    max_record_bytes: usize,
) -> DeadLetter {
    let relation = Arc::new(Relation {
        oid: 7,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: COLUMNS
            .iter()
            .map(|n| RelationColumn {
                is_key: false,
                name: (*n).into(),
                type_oid: TEXT_OID,
                type_modifier: -1,
            })
            .collect(),
    });
    let row = TupleData {
        columns: values
            .iter()
            .map(|v| match v {
                Some(v) => ColumnValue::Text(Bytes::copy_from_slice(v.as_bytes())),
                None => ColumnValue::Null,
            })
            .collect(),
    };
    let event = SourceEvent {
        seq: TxnSeq(0),
        transaction: Arc::new(TransactionInfo {
            xid: 9,
            commit_lsn: Lsn(0x10),
            commit_ts_micros: 0,
        }),
        change: Change::Insert { relation, row },
    };
    let policy = Arc::new(TablePolicy {
        table: Arc::from("public.outbox"),
        id_column: "id".into(),
        key_column: "aggregateid".into(),
        on_error: OnError::Dlq,
        dlq_topic: Arc::from("outbox.dlq"),
        max_record_bytes,
    });
    let reason = Reason {
        class,
        message: "because".into(),
    };
    let record = crate::dlq::record(&event, &policy, None, &reason);
    DeadLetter {
        key: record.key,
        value: record.payload,
        headers: record
            .headers
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
    }
}

fn order_row(aggregate: &str) -> [Option<&str>; 5] {
    [
        Some("e-1"),
        Some(aggregate),
        Some("k-1"),
        Some("Created"),
        Some("{\"n\":1}"),
    ]
}

fn header<'a>(record: &'a OutboundRecord, name: &str) -> Option<&'a [u8]> {
    record
        .headers
        .iter()
        .find(|(n, _)| &**n == name)
        .map(|(_, v)| v.as_ref())
}

#[test]
fn an_unknown_topic_row_is_rebuilt_with_key_id_headers_and_payload() {
    let mut planner = Planner::new(
        &config("[[outbox.additional_headers]]\ncolumn = \"type\"\nheader = \"eventType\""),
        vec![],
    );
    let dead = dead_letter(order_row("nowhere"), "unknown_topic", 1 << 20);
    let replay = planner.plan(&dead).unwrap();
    let record = replay.record;
    assert_eq!(&*record.topic, "outbox.event.nowhere");
    assert_eq!(record.key.as_deref(), Some(&b"k-1"[..]));
    assert_eq!(record.payload.as_deref(), Some(&b"{\"n\":1}"[..]));
    assert_eq!(header(&record, "id"), Some(&b"e-1"[..]));
    assert_eq!(header(&record, "eventType"), Some(&b"Created"[..]));
    assert_eq!(
        record.headers[0].0.as_ref(),
        "id",
        "id first, as the relay sends it"
    );
    assert_eq!(
        header(&record, crate::dlq::HEADER_ERROR_CLASS),
        None,
        "no dead-letter headers on the replayed record"
    );
}

#[test]
fn a_fixed_routing_config_applies() {
    // Dead-lettered as an invalid topic from `aggregatetype`; the config now routes by `type`.
    let dead = dead_letter(order_row("bad type!"), "invalid_topic", 1 << 20);
    let mut unchanged = Planner::new(&config(""), vec![]);
    assert!(matches!(
        unchanged.plan(&dead),
        Err(SkipReason::StillRejected(RowProblem::InvalidTopic(_)))
    ));
    let mut fixed = Planner::new(&config("route_by_field = \"type\""), vec![]);
    assert_eq!(
        &*fixed.plan(&dead).unwrap().record.topic,
        "outbox.event.Created"
    );
    let mut per_table = Planner::new(
        &config("[outbox.tables.\"public.outbox\"]\ntopic = \"orders\""),
        vec![],
    );
    assert_eq!(&*per_table.plan(&dead).unwrap().record.topic, "orders");
}

#[test]
fn a_row_still_rejected_is_skipped_with_the_problem() {
    let mut planner = Planner::new(&config(""), vec![]);
    let mut row = order_row("order");
    row[0] = None;
    let dead = dead_letter(row, "null_column", 1 << 20);
    let skip = planner.plan(&dead).unwrap_err();
    assert_eq!(
        skip.to_string(),
        "the current config still rejects the row: column id is NULL"
    );
    let mut strict = Planner::new(&config("payload_json = true"), vec![]);
    let mut row = order_row("order");
    row[4] = Some("{not json");
    let skip = strict
        .plan(&dead_letter(row, "invalid_json", 1 << 20))
        .unwrap_err();
    assert!(matches!(
        skip,
        SkipReason::StillRejected(RowProblem::InvalidJson(_))
    ));
    // With the check off, the same row replays as written.
    let mut lenient = Planner::new(&config(""), vec![]);
    assert!(lenient
        .plan(&dead_letter(row, "invalid_json", 1 << 20))
        .is_ok());
}

#[test]
fn classes_that_cannot_be_rebuilt_are_skipped() {
    let mut planner = Planner::new(&config(""), vec![]);
    for class in [
        "too_large",
        "message_too_large",
        "toasted_column",
        "invalid_bytea",
    ] {
        let skip = planner
            .plan(&dead_letter(order_row("order"), class, 1 << 20))
            .unwrap_err();
        assert!(
            matches!(&skip, SkipReason::NotReplayable { class: c, .. } if c == class),
            "{class}: {skip}"
        );
    }
    let skip = planner
        .plan(&dead_letter(order_row("order"), "something_new", 1 << 20))
        .unwrap_err();
    assert_eq!(skip, SkipReason::UnknownClass("something_new".into()));
}

#[test]
fn a_truncated_row_is_never_replayed() {
    // A row over half of max_record_bytes has its long values cut in the dead letter,
    // whatever the class.
    let long = "x".repeat(4 * TRUNCATED_VALUE_BYTES);
    let mut row = order_row("nowhere");
    row[4] = Some(&long);
    let dead = dead_letter(row, "unknown_topic", 2 * TRUNCATED_VALUE_BYTES);
    let mut planner = Planner::new(&config(""), vec![]);
    assert_eq!(
        planner.plan(&dead).unwrap_err(),
        SkipReason::Truncated("payload".into())
    );
    // The same row under a larger limit is whole, and replays whole.
    let whole = dead_letter(row, "unknown_topic", 1 << 20);
    let replay = planner.plan(&whole).unwrap();
    assert_eq!(replay.record.payload.as_deref(), Some(long.as_bytes()));
}

#[test]
fn a_payload_that_may_have_been_bytea_is_not_guessed() {
    let mut row = order_row("nowhere");
    row[4] = Some("\\x7b7d");
    let dead = dead_letter(row, "unknown_topic", 1 << 20);
    let mut planner = Planner::new(&config(""), vec![]);
    assert_eq!(
        planner.plan(&dead).unwrap_err(),
        SkipReason::MaybeBytea("payload".into())
    );
}

#[test]
fn a_changed_id_or_key_column_is_not_replayed() {
    let dead = dead_letter(order_row("nowhere"), "unknown_topic", 1 << 20);
    let mut id = Planner::new(&config("id_column = \"type\""), vec![]);
    assert_eq!(
        id.plan(&dead).unwrap_err(),
        SkipReason::IdChanged {
            original: "e-1".into(),
            rebuilt: "Created".into()
        }
    );
    let mut key = Planner::new(&config("key_column = \"type\""), vec![]);
    assert_eq!(key.plan(&dead).unwrap_err(), SkipReason::KeyChanged);
}

#[test]
fn only_selected_classes_and_relayed_tables_replay() {
    let dead = dead_letter(order_row("nowhere"), "unknown_topic", 1 << 20);
    let mut other = Planner::new(&config(""), vec!["invalid_topic".into()]);
    assert_eq!(
        other.plan(&dead).unwrap_err(),
        SkipReason::NotSelected("unknown_topic".into())
    );
    let mut selected = Planner::new(&config(""), vec!["unknown_topic".into()]);
    assert!(selected.plan(&dead).is_ok());

    let mut moved = dead.clone();
    for (name, value) in &mut moved.headers {
        if name == HEADER_SOURCE_TABLE {
            *value = Bytes::from_static(b"public.other");
        }
    }
    assert_eq!(
        selected.plan(&moved).unwrap_err(),
        SkipReason::TableNotRelayed("public.other".into())
    );
    let mut bare = dead.clone();
    bare.headers.retain(|(n, _)| n != HEADER_ERROR_CLASS);
    assert_eq!(
        selected.plan(&bare).unwrap_err(),
        SkipReason::MissingHeader(HEADER_ERROR_CLASS)
    );
    let mut garbage = dead;
    garbage.value = Some(Bytes::from_static(b"[1]"));
    assert!(matches!(
        selected.plan(&garbage).unwrap_err(),
        SkipReason::NotARow(_)
    ));
}

#[test]
fn class_arguments_are_checked() {
    assert!(Planner::check_classes(&["unknown_topic".into()]).is_ok());
    let err = Planner::check_classes(&["too_large".into()]).unwrap_err();
    assert!(
        err.starts_with("--class too_large: not replayable"),
        "{err}"
    );
    let err = Planner::check_classes(&["nope".into()]).unwrap_err();
    assert!(
        err.contains("replayable classes are unknown_topic"),
        "{err}"
    );
}
