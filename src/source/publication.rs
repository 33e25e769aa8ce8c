//! Publication safety: the publication must carry the outbox tables' inserts and nothing
//! else, checked on every replication connection before `START_REPLICATION`.
//!
//! What the publication lists is what the walsender sends. A business table in it would
//! send customer rows to the relay, which would publish them or, since they lack the
//! outbox columns, put them whole on the dead-letter topic. So the relay streams only from
//! a publication that covers exactly `source.tables` (as `pg_publication_tables` reports
//! it), and stops otherwise, naming the publication, the extra and missing tables, and the
//! SQL that fixes it. Should a row of another table arrive anyway (the publication was
//! altered while the relay streamed), [`crate::outbox::Router`] stops the relay before it.
//!
//! | found | verdict |
//! |---|---|
//! | no such publication | stop: create it (the relay creates it only at start) |
//! | `FOR ALL TABLES` | stop: drop and create it |
//! | a table not in `source.tables`, or one of them missing | stop: drop / add the tables |
//! | `publish` without `insert` | stop: nothing would be published |
//! | `publish` with `update`, `delete` or `truncate` | warning: the relay ignores them, but every outbox cleanup then streams through it |
//! | `publish_via_partition_root = false` | warning: harmless without partitioned outbox tables; with one, its partitions show up as other tables (a stop) |
//!
//! The decision is pure ([`check`]); the catalog query is [`crate::admin_sql::publication_rows_sql`].

use std::collections::BTreeSet;
use std::fmt;

use crate::admin_sql;
use crate::ident::TableName;

/// A publication's options and tables, as the catalogs report them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublicationFound {
    pub all_tables: bool,
    pub inserts: bool,
    pub updates: bool,
    pub deletes: bool,
    pub truncates: bool,
    pub via_root: bool,
    /// What `pg_publication_tables` lists: with `publish_via_partition_root` a
    /// partitioned table itself, without it its partitions.
    pub tables: BTreeSet<TableName>,
}

impl PublicationFound {
    /// Parses the text rows of [`admin_sql::publication_rows_sql`]; `None` when there are
    /// none (no such publication).
    pub fn from_rows(rows: &[Vec<Option<String>>]) -> Result<Option<Self>, String> {
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let flag = |row: &[Option<String>], i: usize| match row.get(i).and_then(Option::as_deref) {
            Some("t") => Ok(true),
            Some("f") => Ok(false),
            other => Err(format!(
                "pg_publication column {i} is {other:?}, not a boolean"
            )),
        };
        let mut found = PublicationFound {
            all_tables: flag(first, 0)?,
            inserts: flag(first, 1)?,
            updates: flag(first, 2)?,
            deletes: flag(first, 3)?,
            truncates: flag(first, 4)?,
            via_root: flag(first, 5)?,
            tables: BTreeSet::new(),
        };
        for row in rows {
            if let (Some(Some(schema)), Some(Some(table))) = (row.get(6), row.get(7)) {
                found.tables.insert(TableName {
                    schema: schema.clone(),
                    table: table.clone(),
                });
            }
        }
        Ok(Some(found))
    }

    /// The operations published besides inserts.
    fn more_than_inserts(&self) -> Vec<&'static str> {
        [
            (self.updates, "update"),
            (self.deletes, "delete"),
            (self.truncates, "truncate"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// A publication the relay must not stream from; each says what to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicationError {
    #[error("publication {publication} does not exist (dropped?); the relay creates it only at start: run {fix}, then restart the relay")]
    Missing { publication: String, fix: String },
    #[error("publication {publication} is FOR ALL TABLES: it sends every table's rows to the relay, business tables included; run: {fix}")]
    AllTables { publication: String, fix: String },
    #[error("publication {publication} does not publish inserts, so no outbox row would reach the relay; run: {fix}")]
    NoInserts { publication: String, fix: String },
    #[error("{}", tables_message(.publication, .extra, .missing, .fix))]
    Tables {
        publication: String,
        /// Published but not in `source.tables`: business rows would reach the relay.
        extra: Vec<TableName>,
        /// In `source.tables` but not published: their rows would never be relayed.
        missing: Vec<TableName>,
        fix: String,
    },
}

impl PublicationError {
    /// The SQL that fixes it.
    pub fn fix(&self) -> &str {
        match self {
            PublicationError::Missing { fix, .. }
            | PublicationError::AllTables { fix, .. }
            | PublicationError::NoInserts { fix, .. }
            | PublicationError::Tables { fix, .. } => fix,
        }
    }

    /// What is wrong, without the publication's name or the fix (for `check`'s lines).
    pub fn found(&self) -> String {
        match self {
            PublicationError::Missing { .. } => "does not exist".into(),
            PublicationError::AllTables { .. } => {
                "is FOR ALL TABLES, so it publishes more than the outbox".into()
            }
            PublicationError::NoInserts { .. } => "does not publish inserts".into(),
            PublicationError::Tables { extra, missing, .. } => {
                let mut parts = Vec::new();
                if !extra.is_empty() {
                    parts.push(format!(
                        "publishes {}, which source.tables does not list",
                        list(extra)
                    ));
                }
                if !missing.is_empty() {
                    parts.push(format!("does not publish {}", list(missing)));
                }
                parts.join("; ")
            }
        }
    }
}

fn list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn tables_message(
    publication: &str,
    extra: &[TableName],
    missing: &[TableName],
    fix: &str,
) -> String {
    let mut parts = Vec::new();
    if !extra.is_empty() {
        parts.push(format!(
            "publishes {}, which source.tables does not list (its rows must never reach Kafka or the dead-letter topic)",
            list(extra)
        ));
    }
    if !missing.is_empty() {
        parts.push(format!(
            "does not publish {}, which source.tables lists",
            list(missing)
        ));
    }
    format!(
        "publication {publication} {}; the relay streams only from a publication of exactly source.tables: run: {fix}",
        parts.join(" and ")
    )
}

/// A publication the relay can stream from, but whose options differ from the ones it
/// creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationWarning {
    /// Updates, deletes or truncates are published: ignored and counted by the relay.
    MoreThanInserts {
        publication: String,
        operations: Vec<&'static str>,
        fix: String,
    },
    /// Partitions would be published under their own names.
    NotViaRoot { publication: String, fix: String },
}

impl fmt::Display for PublicationWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicationWarning::MoreThanInserts {
                publication,
                operations,
                fix,
            } => write!(
                f,
                "publication {publication} also publishes {}: the relay ignores them, but every delete of outbox rows (the insert-then-delete pattern, a cleanup job) then streams through it; run: {fix}",
                operations.join(", ")
            ),
            PublicationWarning::NotViaRoot { publication, fix } => write!(
                f,
                "publication {publication} has publish_via_partition_root = false: a partitioned outbox table would publish under its partitions' names; run: {fix}"
            ),
        }
    }
}

/// Whether the relay may stream from `found` for `configured` (see the module docs).
pub fn check(
    publication: &str,
    configured: &[TableName],
    found: Option<&PublicationFound>,
) -> Result<Vec<PublicationWarning>, PublicationError> {
    let Some(found) = found else {
        return Err(PublicationError::Missing {
            publication: publication.to_owned(),
            fix: admin_sql::create_publication_sql(publication, configured),
        });
    };
    if found.all_tables {
        return Err(PublicationError::AllTables {
            publication: publication.to_owned(),
            fix: format!(
                "{}; {}",
                admin_sql::drop_publication_sql(publication),
                admin_sql::create_publication_sql(publication, configured)
            ),
        });
    }
    let wanted: BTreeSet<&TableName> = configured.iter().collect();
    let listed: BTreeSet<&TableName> = found.tables.iter().collect();
    let extra: Vec<TableName> = listed.difference(&wanted).map(|t| (*t).clone()).collect();
    let missing: Vec<TableName> = wanted.difference(&listed).map(|t| (*t).clone()).collect();
    if !extra.is_empty() || !missing.is_empty() {
        let fix = if found.via_root {
            let mut statements = Vec::new();
            if !extra.is_empty() {
                statements.push(admin_sql::drop_publication_tables_sql(publication, &extra));
            }
            if !missing.is_empty() {
                statements.push(admin_sql::add_publication_tables_sql(publication, &missing));
            }
            statements.join("; ")
        } else {
            // Without via-root, partitions are listed in their parent's place: publishing
            // through the root first makes the listing name the tables themselves.
            format!(
                "{}; {}",
                admin_sql::set_publication_options_sql(publication),
                admin_sql::alter_publication_sql(publication, configured)
            )
        };
        return Err(PublicationError::Tables {
            publication: publication.to_owned(),
            extra,
            missing,
            fix,
        });
    }
    let fix = admin_sql::set_publication_options_sql(publication);
    if !found.inserts {
        return Err(PublicationError::NoInserts {
            publication: publication.to_owned(),
            fix,
        });
    }
    let mut warnings = Vec::new();
    let operations = found.more_than_inserts();
    if !operations.is_empty() {
        warnings.push(PublicationWarning::MoreThanInserts {
            publication: publication.to_owned(),
            operations,
            fix: fix.clone(),
        });
    }
    if !found.via_root {
        warnings.push(PublicationWarning::NotViaRoot {
            publication: publication.to_owned(),
            fix,
        });
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> TableName {
        name.parse().unwrap()
    }

    fn as_created(tables: &[&str]) -> PublicationFound {
        PublicationFound {
            inserts: true,
            via_root: true,
            tables: tables.iter().map(|t| table(t)).collect(),
            ..PublicationFound::default()
        }
    }

    fn outbox() -> Vec<TableName> {
        vec![table("public.outbox")]
    }

    #[test]
    fn the_publication_the_relay_creates_passes_without_warnings() {
        let found = as_created(&["public.outbox"]);
        assert_eq!(check("p", &outbox(), Some(&found)), Ok(vec![]));
    }

    #[test]
    fn a_business_table_is_a_stop_naming_it_and_the_fix() {
        let found = as_created(&["public.outbox", "public.orders"]);
        let error = check("p", &outbox(), Some(&found)).unwrap_err();
        assert_eq!(
            error,
            PublicationError::Tables {
                publication: "p".into(),
                extra: vec![table("public.orders")],
                missing: vec![],
                fix: "ALTER PUBLICATION \"p\" DROP TABLE \"public\".\"orders\"".into(),
            }
        );
        let message = error.to_string();
        assert!(
            message.starts_with(
                "publication p publishes public.orders, which source.tables does not list"
            ),
            "{message}"
        );
        assert!(message.ends_with("run: ALTER PUBLICATION \"p\" DROP TABLE \"public\".\"orders\""));
    }

    #[test]
    fn a_missing_outbox_table_is_a_stop_with_add_table() {
        let configured = vec![table("public.outbox"), table("billing.outbox")];
        let found = as_created(&["public.outbox", "public.orders"]);
        let Err(PublicationError::Tables {
            extra,
            missing,
            fix,
            ..
        }) = check("p", &configured, Some(&found))
        else {
            panic!("expected a table mismatch");
        };
        assert_eq!(extra, vec![table("public.orders")]);
        assert_eq!(missing, vec![table("billing.outbox")]);
        assert_eq!(
            fix,
            "ALTER PUBLICATION \"p\" DROP TABLE \"public\".\"orders\"; ALTER PUBLICATION \"p\" ADD TABLE \"billing\".\"outbox\""
        );
    }

    #[test]
    fn all_tables_is_a_stop_even_though_it_lists_the_outbox() {
        let found = PublicationFound {
            all_tables: true,
            ..as_created(&["public.outbox", "public.orders"])
        };
        let error = check("p", &outbox(), Some(&found)).unwrap_err();
        let PublicationError::AllTables { fix, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(
            fix,
            "DROP PUBLICATION \"p\"; CREATE PUBLICATION \"p\" FOR TABLE \"public\".\"outbox\" WITH (publish = 'insert', publish_via_partition_root = true)"
        );
    }

    #[test]
    fn a_missing_publication_is_a_stop_with_create() {
        let error = check("p", &outbox(), None).unwrap_err();
        assert!(
            matches!(&error, PublicationError::Missing { fix, .. } if fix.starts_with("CREATE PUBLICATION \"p\"")),
            "{error:?}"
        );
    }

    #[test]
    fn no_inserts_is_a_stop() {
        let found = PublicationFound {
            inserts: false,
            deletes: true,
            ..as_created(&["public.outbox"])
        };
        assert!(matches!(
            check("p", &outbox(), Some(&found)),
            Err(PublicationError::NoInserts { .. })
        ));
    }

    #[test]
    fn more_operations_and_no_via_root_are_warnings() {
        let found = PublicationFound {
            updates: true,
            deletes: true,
            truncates: true,
            via_root: false,
            ..as_created(&["public.outbox"])
        };
        let warnings = check("p", &outbox(), Some(&found)).unwrap();
        let fix =
            "ALTER PUBLICATION \"p\" SET (publish = 'insert', publish_via_partition_root = true)";
        assert_eq!(
            warnings,
            vec![
                PublicationWarning::MoreThanInserts {
                    publication: "p".into(),
                    operations: vec!["update", "delete", "truncate"],
                    fix: fix.into(),
                },
                PublicationWarning::NotViaRoot {
                    publication: "p".into(),
                    fix: fix.into(),
                },
            ]
        );
        assert!(warnings[0].to_string().ends_with(fix));
    }

    #[test]
    fn partitions_listed_without_via_root_are_a_stop_that_sets_the_option_first() {
        // A partitioned outbox without publish_via_partition_root: the catalog lists its
        // partitions, not the configured parent.
        let found = PublicationFound {
            via_root: false,
            ..as_created(&["public.outbox_a", "public.outbox_b"])
        };
        let Err(PublicationError::Tables {
            extra,
            missing,
            fix,
            ..
        }) = check("p", &outbox(), Some(&found))
        else {
            panic!("expected a table mismatch");
        };
        assert_eq!(extra.len(), 2);
        assert_eq!(missing, outbox());
        assert_eq!(
            fix,
            "ALTER PUBLICATION \"p\" SET (publish = 'insert', publish_via_partition_root = true); ALTER PUBLICATION \"p\" SET TABLE \"public\".\"outbox\""
        );
    }

    #[test]
    fn catalog_rows_parse_into_options_and_tables() {
        let row = |schema: Option<&str>, table: Option<&str>| {
            ["f", "t", "f", "f", "f", "t"]
                .iter()
                .map(|s| Some(s.to_string()))
                .chain([schema.map(String::from), table.map(String::from)])
                .collect::<Vec<_>>()
        };
        assert_eq!(PublicationFound::from_rows(&[]), Ok(None));
        let found = PublicationFound::from_rows(&[
            row(Some("public"), Some("outbox")),
            row(Some("public"), Some("orders")),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(found, as_created(&["public.outbox", "public.orders"]));
        let empty = PublicationFound::from_rows(&[row(None, None)])
            .unwrap()
            .unwrap();
        assert!(empty.tables.is_empty() && empty.inserts && empty.via_root);
        assert!(PublicationFound::from_rows(&[vec![Some("x".into())]]).is_err());
    }
}
