//! The relation cache: the table shapes that row messages refer to by OID.
//!
//! pgoutput sends a Relation message before the first change of a table on a connection
//! and again whenever the table's shape changes (ALTER TABLE mid-stream), so the cache
//! always replaces: the newest Relation message for an OID is the shape of the rows that
//! follow it. Entries are `Arc`s so events can carry their shape without copying it.

use foldhash::HashMap;
use std::sync::Arc;

use super::pgoutput::{Oid, Relation};

/// Relations seen on this connection, by OID.
#[derive(Debug, Default)]
pub struct RelationCache {
    by_oid: HashMap<Oid, Arc<Relation>>,
}

impl RelationCache {
    /// Records (or replaces) the shape of a relation.
    pub fn apply(&mut self, relation: Relation) -> Arc<Relation> {
        let relation = Arc::new(relation);
        self.by_oid.insert(relation.oid, Arc::clone(&relation));
        relation
    }

    /// The current shape of `oid`, if a Relation message announced it.
    pub fn get(&self, oid: Oid) -> Option<&Arc<Relation>> {
        self.by_oid.get(&oid)
    }

    pub fn len(&self) -> usize {
        self.by_oid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_oid.is_empty()
    }
}

impl Relation {
    /// Index of the column called `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::super::pgoutput::RelationColumn;
    use super::*;

    fn relation(oid: Oid, columns: &[&str]) -> Relation {
        Relation {
            oid,
            namespace: "public".into(),
            name: "outbox".into(),
            replica_identity: b'd',
            columns: columns
                .iter()
                .map(|name| RelationColumn {
                    is_key: false,
                    name: (*name).into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    #[test]
    fn newest_shape_wins() {
        let mut cache = RelationCache::default();
        cache.apply(relation(7, &["id"]));
        assert_eq!(cache.get(7).unwrap().columns.len(), 1);
        cache.apply(relation(7, &["id", "payload"]));
        let shape = cache.get(7).unwrap();
        assert_eq!(shape.column_index("payload"), Some(1));
        assert_eq!(shape.qualified_name(), "public.outbox");
        assert_eq!(cache.len(), 1);
        assert!(cache.get(8).is_none());
    }
}
