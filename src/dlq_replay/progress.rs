//! Where the replay may commit its position, and what it tells the operator at the end.
//!
//! The group's committed offset in a DLQ partition must never pass a record that was not
//! published again (or deliberately skipped): a crash or a refusal then costs at most a
//! second publication of the same `id`, never a lost dead letter. Pure bookkeeping, so the
//! rule is unit-tested apart from Kafka.

use std::collections::BTreeMap;

/// A record's place in a DLQ topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// The offsets to commit (the next record to read, per DLQ partition) after a batch whose
/// records, in the order they were read, ended as `done` (published or skipped) or not.
/// A partition's offset stops before its first record that is not done.
pub fn commit_offsets<'a>(
    batch: impl IntoIterator<Item = (&'a Position, bool)>,
) -> BTreeMap<(String, i32), i64> {
    let mut offsets = BTreeMap::new();
    let mut blocked = std::collections::BTreeSet::new();
    for (position, done) in batch {
        let partition = (position.topic.clone(), position.partition);
        if blocked.contains(&partition) {
            continue;
        }
        if done {
            offsets.insert(partition, position.offset + 1);
        } else {
            blocked.insert(partition);
        }
    }
    offsets
}

/// The run's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub dry_run: bool,
    pub replayed: usize,
    /// Skipped records by `(class, why)`.
    pub skipped: BTreeMap<(String, String), usize>,
    /// Records on the DLQ past the group's committed position when the run ended.
    pub remaining: i64,
}

impl Summary {
    pub fn skip(&mut self, class: &str, why: &str) {
        *self
            .skipped
            .entry((class.to_owned(), why.to_owned()))
            .or_default() += 1;
    }

    /// `replayed=N skipped=M remaining=R`, then one line per skip reason.
    pub fn lines(&self) -> Vec<String> {
        let skipped: usize = self.skipped.values().sum();
        let (prefix, verb) = if self.dry_run {
            (
                "summary (dry run, nothing published or committed)",
                "would_replay",
            )
        } else {
            ("summary", "replayed")
        };
        let mut lines = vec![format!(
            "{prefix}: {verb}={} skipped={skipped} remaining={}",
            self.replayed, self.remaining
        )];
        for ((class, why), count) in &self.skipped {
            lines.push(format!("  skipped {count} class={class}: {why}"));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Position {
        Position {
            topic: "dlq".into(),
            partition,
            offset,
        }
    }

    #[test]
    fn a_partition_commits_up_to_its_first_undone_record() {
        let batch = [
            (at(0, 10), true),
            (at(1, 5), true),
            (at(0, 11), false),
            (at(1, 6), true),
            (at(0, 12), true),
        ];
        let offsets = commit_offsets(batch.iter().map(|(p, d)| (p, *d)));
        assert_eq!(
            offsets.get(&("dlq".into(), 0)),
            Some(&11),
            "stops before 11"
        );
        assert_eq!(offsets.get(&("dlq".into(), 1)), Some(&7));
        let nothing = commit_offsets([(&at(2, 0), false), (&at(2, 1), true)]);
        assert!(nothing.is_empty(), "nothing past a refused first record");
    }

    #[test]
    fn summary_lines() {
        let mut summary = Summary {
            replayed: 3,
            remaining: 2,
            ..Summary::default()
        };
        summary.skip("too_large", "not replayable");
        summary.skip("too_large", "not replayable");
        assert_eq!(
            summary.lines(),
            [
                "summary: replayed=3 skipped=2 remaining=2",
                "  skipped 2 class=too_large: not replayable"
            ]
        );
        summary.dry_run = true;
        assert!(
            summary.lines()[0].contains("dry run") && summary.lines()[0].contains("would_replay=3")
        );
    }
}
