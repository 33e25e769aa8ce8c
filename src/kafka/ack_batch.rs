//! Acknowledgements collected over one slice of polling (a burst of delivery reports), so
//! that the burst reaches the checkpoint under one lock instead of one lock (and one wake-up of the
//! source) per record.
//!
//! Only the producer's own polling thread collects (see [`super::poller`]): it knows
//! where a burst ends, and hands the batch to the checkpoint right after each poll. On
//! any other thread (librdkafka's flush, a producer's drop) collection is off and every
//! report acknowledges at once, so nothing can be left behind in a batch that no one
//! empties. The batch holds at most [`AckBatch::CAPACITY`] runs; a full batch is handed
//! over inside the burst.
//!
//! Pure bookkeeping, no I/O: the caller owns the checkpoint.

use crate::checkpoint::TxnSeq;

/// The acknowledgements of one burst, as `(transaction, events)` runs in report order.
#[derive(Debug, Default)]
pub struct AckBatch {
    runs: Vec<(TxnSeq, u64)>,
    collecting: bool,
}

/// What to do with one successful report's acknowledgement.
#[derive(Debug, PartialEq, Eq)]
pub enum Collected {
    /// Kept for the end of the burst.
    Kept,
    /// Kept, and the batch is full: hand it over now ([`AckBatch::hand_over`]).
    Full,
    /// Not collecting on this thread: acknowledge it at once.
    AckNow,
}

impl AckBatch {
    /// Runs held before the batch is handed over inside a burst (16 KiB). A 1000-row
    /// transaction's reports make one run per partition; single-row transactions one run
    /// each, so a fast single-row stream hands over a few times per slice.
    pub const CAPACITY: usize = 1024;

    /// A slice of polling starts: `collect` turns collection on (the polling thread) or
    /// off (acknowledge each report at once).
    pub fn begin(&mut self, collect: bool) {
        debug_assert!(self.runs.is_empty(), "a batch was not handed over");
        self.collecting = collect;
        if collect && self.runs.capacity() == 0 {
            self.runs.reserve_exact(Self::CAPACITY);
        }
    }

    /// One event of `seq` was delivered.
    pub fn add(&mut self, seq: TxnSeq) -> Collected {
        if !self.collecting {
            return Collected::AckNow;
        }
        match self.runs.last_mut() {
            Some((last, count)) if *last == seq => *count += 1,
            _ => self.runs.push((seq, 1)),
        }
        if self.runs.len() >= Self::CAPACITY {
            Collected::Full
        } else {
            Collected::Kept
        }
    }

    /// Hands the runs collected so far to `acknowledge` (unless there are none); the
    /// batch is empty afterwards.
    pub fn hand_over<R>(&mut self, acknowledge: impl FnOnce(&[(TxnSeq, u64)]) -> R) -> Option<R> {
        if self.runs.is_empty() {
            return None;
        }
        let outcome = acknowledge(&self.runs);
        self.runs.clear();
        Some(outcome)
    }

    /// Stops collecting (the burst ended); whatever is held must be handed over first.
    pub fn end(&mut self) {
        debug_assert!(self.runs.is_empty(), "a batch was not handed over");
        self.collecting = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_so_other_threads_acknowledge_at_once() {
        let mut batch = AckBatch::default();
        assert_eq!(batch.add(TxnSeq(1)), Collected::AckNow);
        batch.begin(false);
        assert_eq!(batch.add(TxnSeq(1)), Collected::AckNow);
    }

    #[test]
    fn a_burst_folds_consecutive_reports_of_one_transaction() {
        let mut batch = AckBatch::default();
        batch.begin(true);
        for seq in [1, 1, 1, 2, 2, 1] {
            assert_eq!(batch.add(TxnSeq(seq)), Collected::Kept);
        }
        let runs = batch.hand_over(<[_]>::to_vec).unwrap();
        assert_eq!(runs, [(TxnSeq(1), 3), (TxnSeq(2), 2), (TxnSeq(1), 1)]);
        assert_eq!(batch.hand_over(<[_]>::len), None, "nothing twice");
        batch.end();
        assert_eq!(
            batch.add(TxnSeq(3)),
            Collected::AckNow,
            "off after the burst"
        );
    }

    #[test]
    fn a_full_batch_is_handed_over_inside_the_burst() {
        let mut batch = AckBatch::default();
        batch.begin(true);
        let mut full_at = None;
        for seq in 0..AckBatch::CAPACITY as u64 {
            if batch.add(TxnSeq(seq)) == Collected::Full {
                full_at = Some(seq);
            }
        }
        assert_eq!(full_at, Some(AckBatch::CAPACITY as u64 - 1));
        assert_eq!(batch.hand_over(<[_]>::len), Some(AckBatch::CAPACITY));
        assert_eq!(batch.add(TxnSeq(9_999)), Collected::Kept, "room again");
    }
}
