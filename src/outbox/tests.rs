use std::path::Path;

use super::*;
use crate::config::Config;
use crate::replication::pgoutput::RelationColumn;

fn relation(columns: &[(&str, Oid)]) -> Arc<Relation> {
    Arc::new(Relation {
        oid: 42,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: columns
            .iter()
            .map(|(name, type_oid)| RelationColumn {
                is_key: *name == "id",
                name: (*name).into(),
                type_oid: *type_oid,
                type_modifier: -1,
            })
            .collect(),
    })
}

fn debezium_relation() -> Arc<Relation> {
    relation(&[
        ("id", 2950),
        ("aggregatetype", 25),
        ("aggregateid", 25),
        ("type", 25),
        ("payload", 3802),
    ])
}

fn text(values: &[Option<&str>]) -> TupleData {
    TupleData {
        columns: values
            .iter()
            .map(|v| match v {
                Some(v) => ColumnValue::Text(Bytes::copy_from_slice(v.as_bytes())),
                None => ColumnValue::Null,
            })
            .collect(),
    }
}

fn router(extra: &str) -> Router {
    let text = format!(
        "[source]\nurl = \"postgres://u@h/db\"\nslot = \"s\"\npublication = \"p\"\ntables = [\"public.outbox\"]\n{extra}"
    );
    let config = Config::from_toml(&text, Path::new("t.toml"), |_| None).unwrap();
    Router::new(&config)
}

fn insert(relation: &Arc<Relation>, row: TupleData) -> Change {
    Change::Insert {
        relation: Arc::clone(relation),
        row,
    }
}

const ID: &str = "5f1c9a52-0a5e-4d0e-9d55-2d8f0f6e1a11";

#[test]
fn debezium_defaults() {
    let rel = debezium_relation();
    let row = text(&[
        Some(ID),
        Some("order"),
        Some("o-1"),
        Some("OrderCreated"),
        Some("{\"a\": 1}"),
    ]);
    let Routed::Publish(record) = router("").route(&insert(&rel, row)) else {
        panic!("expected a record")
    };
    assert_eq!(&*record.topic, "outbox.event.order");
    assert_eq!(record.key.as_deref(), Some(&b"o-1"[..]));
    assert_eq!(record.payload.as_deref(), Some(&b"{\"a\": 1}"[..]));
    assert_eq!(record.headers, vec![(Arc::from("id"), Bytes::from(ID))]);
    assert_eq!(&*record.policy.table, "public.outbox");
    assert_eq!(&*record.policy.dlq_topic, "outbox.dlq");
}

#[test]
fn custom_columns_headers_and_template() {
    let rel = relation(&[
        ("event_id", 2950),
        ("kind", 25),
        ("agg", 25),
        ("body", 25),
        ("version", 23),
    ]);
    let mut router = router(
        "[outbox]\nid_column = \"event_id\"\nkey_column = \"agg\"\npayload_column = \"body\"\nroute_by_field = \"kind\"\ntopic = \"events.${routedByValue}.v1\"\n\
         [[outbox.additional_headers]]\ncolumn = \"kind\"\nheader = \"eventType\"\n\
         [[outbox.additional_headers]]\ncolumn = \"version\"\n",
    );
    let row = text(&[
        Some(ID),
        Some("Payment"),
        Some("p-9"),
        Some("plain text"),
        Some("3"),
    ]);
    let Routed::Publish(record) = router.route(&insert(&rel, row)) else {
        panic!("expected a record")
    };
    assert_eq!(&*record.topic, "events.Payment.v1");
    assert_eq!(record.key.as_deref(), Some(&b"p-9"[..]));
    let names: Vec<&str> = record.headers.iter().map(|(n, _)| &**n).collect();
    assert_eq!(names, ["id", "eventType", "version"]);
    assert_eq!(record.headers[2].1, Bytes::from("3"));
}

#[test]
fn per_table_override_applies_to_that_table_only() {
    let rel = debezium_relation();
    let mut router = router("[outbox.tables.\"public.outbox\"]\ntopic = \"fixed-topic\"\n");
    let row = text(&[Some(ID), Some("order"), Some("o-1"), Some("t"), Some("{}")]);
    let Routed::Publish(record) = router.route(&insert(&rel, row)) else {
        panic!("expected a record")
    };
    assert_eq!(&*record.topic, "fixed-topic");
}

#[test]
fn bytea_payload_is_sent_raw_and_null_payload_is_a_tombstone() {
    let rel = relation(&[
        ("id", 2950),
        ("aggregatetype", 25),
        ("aggregateid", 25),
        ("type", 25),
        ("payload", 17),
    ]);
    let mut router = router("");
    let row = text(&[
        Some(ID),
        Some("blob"),
        Some("b"),
        Some("t"),
        Some("\\x00ff41"),
    ]);
    let Routed::Publish(record) = router.route(&insert(&rel, row)) else {
        panic!("expected a record")
    };
    assert_eq!(record.payload.as_deref(), Some(&[0u8, 0xff, b'A'][..]));
    let row = text(&[Some(ID), Some("blob"), Some("b"), Some("t"), None]);
    let Routed::Publish(record) = router.route(&insert(&rel, row)) else {
        panic!("expected a record")
    };
    assert_eq!(record.payload, None);
}

#[test]
fn rows_that_cannot_be_routed_say_why() {
    let rel = debezium_relation();
    let mut router = router("");
    let cases = [
        (
            text(&[None, Some("order"), Some("k"), Some("t"), Some("{}")]),
            "column id is NULL",
        ),
        (
            text(&[Some(ID), None, Some("k"), Some("t"), Some("{}")]),
            "column aggregatetype is NULL",
        ),
        (
            text(&[
                Some(ID),
                Some("bad type!"),
                Some("k"),
                Some("t"),
                Some("{}"),
            ]),
            "contains ' '",
        ),
    ];
    for (row, expected) in cases {
        match router.route(&insert(&rel, row)) {
            Routed::Reject { policy, problem } => {
                assert_eq!(&*policy.table, "public.outbox");
                assert!(problem.to_string().contains(expected), "{problem}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    let missing = relation(&[("id", 2950), ("aggregateid", 25), ("payload", 3802)]);
    match router.route(&insert(&missing, text(&[Some(ID), Some("k"), Some("{}")]))) {
        Routed::Reject { problem, .. } => {
            assert_eq!(
                problem.to_string(),
                "column aggregatetype is missing from table public.outbox"
            )
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn updates_deletes_and_truncates_are_ignored() {
    let rel = debezium_relation();
    let mut router = router("");
    let row = text(&[Some(ID), Some("order"), Some("k"), Some("t"), Some("{}")]);
    let changes = [
        Change::Update {
            relation: Arc::clone(&rel),
            old: None,
            row: row.clone(),
        },
        Change::Delete {
            relation: Arc::clone(&rel),
            old: crate::replication::pgoutput::OldTuple::Key(row),
        },
        Change::Truncate {
            relations: vec![Arc::clone(&rel)],
        },
    ];
    for (change, op) in changes.iter().zip(["update", "delete", "truncate"]) {
        assert_eq!(
            router.route(change),
            Routed::Ignore {
                table: Arc::from("public.outbox"),
                operation: op
            }
        );
    }
}

#[test]
fn bad_bytea_is_rejected() {
    assert!(decode_bytea_hex(&Bytes::from("00")).is_err());
    assert!(decode_bytea_hex(&Bytes::from("\\x0")).is_err());
    assert!(decode_bytea_hex(&Bytes::from("\\xzz")).is_err());
    assert_eq!(decode_bytea_hex(&Bytes::from("\\x")).unwrap(), Bytes::new());
}

#[test]
fn json_and_size_limits_reject_with_their_class() {
    let rel = relation(&[
        ("id", 2950),
        ("aggregatetype", 25),
        ("aggregateid", 25),
        ("type", 25),
        ("payload", 25),
    ]);
    let mut router = router(
        "[outbox]\npayload_json = true\nmax_record_bytes = 1024\n[outbox.tables.\"public.outbox\"]\ndlq_topic = \"own.dlq\"\n",
    );
    let row = |payload: &str| text(&[Some(ID), Some("order"), Some("k"), Some("t"), Some(payload)]);
    match router.route(&insert(&rel, row("{not json"))) {
        Routed::Reject { policy, problem } => {
            assert_eq!(problem.class(), "invalid_json");
            assert_eq!(&*policy.dlq_topic, "own.dlq");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let big = format!("\"{}\"", "x".repeat(2_000));
    match router.route(&insert(&rel, row(&big))) {
        Routed::Reject { problem, .. } => assert_eq!(problem.class(), "too_large"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(matches!(
        router.route(&insert(&rel, row("{\"ok\": 1}"))),
        Routed::Publish(_)
    ));
}

#[test]
fn a_missing_column_is_the_tables_fault_and_a_null_the_rows() {
    let missing = RowProblem::MissingColumn {
        table: Arc::from("public.outbox"),
        column: "aggregatetype".into(),
    };
    assert!(missing.is_table_fault());
    let fix = missing.table_fix().expect("a fix");
    assert!(
        fix.contains("public.outbox") && fix.contains("aggregatetype"),
        "{fix}"
    );
    let null = RowProblem::NullColumn {
        column: "aggregatetype".into(),
    };
    assert!(!null.is_table_fault());
    assert_eq!(null.table_fix(), None);
}

/// A business table with the outbox's columns: its rows could otherwise be published.
fn orders_relation() -> Arc<Relation> {
    let outbox = debezium_relation();
    Arc::new(Relation {
        oid: 43,
        name: "orders".into(),
        ..(*outbox).clone()
    })
}

#[test]
fn changes_of_tables_outside_source_tables_are_foreign_never_published_or_rejected() {
    let orders = orders_relation();
    let outbox = debezium_relation();
    let mut router = router("");
    let row = text(&[Some(ID), Some("order"), Some("k"), Some("t"), Some("{}")]);
    let changes = [
        insert(&orders, row.clone()),
        Change::Delete {
            relation: Arc::clone(&orders),
            old: crate::replication::pgoutput::OldTuple::Key(row.clone()),
        },
        // One foreign relation is enough, even next to the outbox.
        Change::Truncate {
            relations: vec![Arc::clone(&outbox), Arc::clone(&orders)],
        },
    ];
    for (change, operation) in changes.iter().zip(["insert", "delete", "truncate"]) {
        let Routed::Foreign(foreign) = router.route(change) else {
            panic!("{operation} of public.orders was routed");
        };
        assert_eq!(foreign.table.to_string(), "public.orders");
        assert_eq!(foreign.operation, operation);
        assert_eq!(
            foreign.fix,
            "ALTER PUBLICATION \"p\" DROP TABLE \"public\".\"orders\""
        );
        let message = foreign.to_string();
        assert!(
            message.contains("public.orders") && !message.contains(ID),
            "names the table, never the row: {message}"
        );
    }
    assert!(matches!(
        router.route(&insert(&outbox, row)),
        Routed::Publish(_)
    ));
}
