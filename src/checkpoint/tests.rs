use proptest::prelude::*;

use super::*;

#[test]
fn flush_waits_for_every_event_and_for_commit() {
    let mut cp = Checkpoint::new(Lsn(100));
    let t1 = cp.begin();
    cp.add_events(t1, 2).unwrap();
    assert!(!cp.ack(t1, 1).unwrap());
    assert!(!cp.ack(t1, 1).unwrap(), "no commit yet");
    assert!(cp.commit(t1, Lsn(200)).unwrap());
    assert_eq!(cp.flushed(), Lsn(200));
    assert_eq!(cp.pending_transactions(), 0);
}

/// Begins a transaction of `events` events and commits it at `end`.
fn committed(cp: &mut Checkpoint, events: u64, end: Lsn) -> TxnSeq {
    let seq = cp.begin();
    cp.add_events(seq, events).unwrap();
    cp.commit(seq, end).unwrap();
    seq
}

#[test]
fn a_later_transaction_cannot_overtake_an_earlier_one() {
    let mut cp = Checkpoint::new(Lsn(0));
    let t1 = committed(&mut cp, 1, Lsn(10));
    let t2 = committed(&mut cp, 1, Lsn(20));
    assert!(!cp.ack(t2, 1).unwrap());
    assert_eq!(cp.flushed(), Lsn(0));
    assert!(cp.ack(t1, 1).unwrap());
    assert_eq!(cp.flushed(), Lsn(20));
    assert_eq!(cp.in_flight_events(), 0);
}

#[test]
fn keepalive_counts_only_when_idle() {
    let mut cp = Checkpoint::new(Lsn(5));
    assert!(cp.idle_position(Lsn(50)));
    assert_eq!(cp.flushed(), Lsn(50));
    assert!(!cp.idle_position(Lsn(40)), "never backwards");
    let t = cp.begin();
    assert!(
        !cp.idle_position(Lsn(60)),
        "an open transaction pins the position"
    );
    cp.commit(t, Lsn(70)).unwrap();
    assert_eq!(
        cp.flushed(),
        Lsn(70),
        "an empty transaction is done at commit"
    );
    assert!(cp.idle_position(Lsn(80)));
}

#[test]
fn bookkeeping_mistakes_are_errors() {
    let mut cp = Checkpoint::new(Lsn(0));
    assert_eq!(
        cp.ack(TxnSeq(3), 1),
        Err(CheckpointError::UnknownTransaction(TxnSeq(3)))
    );
    let t = cp.begin();
    cp.add_events(t, 1).unwrap();
    assert!(matches!(
        cp.ack(t, 2),
        Err(CheckpointError::TooManyAcks { .. })
    ));
    cp.commit(t, Lsn(1)).unwrap();
    assert_eq!(cp.commit(t, Lsn(2)), Err(CheckpointError::BadCommit(t)));
    cp.ack(t, 1).unwrap();
    assert_eq!(cp.ack(t, 1), Err(CheckpointError::UnknownTransaction(t)));
}

/// Drives the checkpoint the way the source and sinks do, in an order chosen by `choices`:
/// the source reads Begin / event / Commit / keepalive in stream order, while sinks
/// acknowledge any handed-over event at any time. After every step, no transaction that
/// still has an unacknowledged event (or no Commit yet) may be at or behind the flush LSN.
fn simulate(sizes: &[u8], choices: &[u16]) {
    // Transaction i commits with end LSN 1000 * (i + 1).
    let end = |i: usize| Lsn(1000 * (i as u64 + 1));
    let mut cp = Checkpoint::new(Lsn(0));
    let mut seqs = Vec::new();
    let mut unacked: Vec<(usize, TxnSeq)> = Vec::new();
    let mut done = vec![false; sizes.len()];
    let mut acked = vec![0u8; sizes.len()];
    let mut committed = vec![false; sizes.len()];
    let (mut txn, mut emitted, mut in_txn) = (0usize, 0u8, false);
    let mut last_flushed = cp.flushed();
    let mut choice = choices.iter().copied().cycle();

    let mut steps = 0;
    while done.iter().any(|d| !d) {
        steps += 1;
        assert!(steps < 100_000, "simulation did not finish");
        let c = choice.next().unwrap_or(0);
        let source_can_move = txn < sizes.len();
        if (c % 3 != 0 || unacked.is_empty()) && source_can_move {
            if !in_txn {
                seqs.push(cp.begin());
                in_txn = true;
                emitted = 0;
            } else if emitted < sizes[txn] {
                cp.add_events(seqs[txn], 1).unwrap();
                unacked.push((txn, seqs[txn]));
                emitted += 1;
            } else {
                cp.commit(seqs[txn], end(txn)).unwrap();
                committed[txn] = true;
                in_txn = false;
                txn += 1;
                if c % 5 == 0 {
                    // A keepalive between transactions: the server is at the last commit end.
                    cp.idle_position(end(txn - 1));
                }
            }
        } else if !unacked.is_empty() {
            let (t, seq) = unacked.swap_remove(usize::from(c) % unacked.len());
            cp.ack(seq, 1).unwrap();
            acked[t] += 1;
        }
        for i in 0..sizes.len() {
            done[i] = committed[i] && acked[i] == sizes[i];
        }
        let flushed = cp.flushed();
        assert!(flushed >= last_flushed, "flush LSN went backwards");
        last_flushed = flushed;
        for (i, finished) in done.iter().enumerate() {
            if !finished {
                assert!(
                    flushed < end(i),
                    "flushed {flushed} passes unfinished transaction {i} ending at {}",
                    end(i)
                );
            }
        }
    }
    assert_eq!(cp.flushed(), end(sizes.len() - 1));
    assert_eq!(cp.in_flight_events(), 0);
    assert_eq!(cp.pending_transactions(), 0);
}

/// A reference model of the checkpoint: the flush LSN folds the finished prefix of
/// transactions in order, moves to an idle keepalive's position, and never goes back.
#[derive(Default)]
struct Model {
    /// Per pending transaction, in order: seq, outstanding events, commit end, released.
    pending: Vec<(TxnSeq, u64, Option<Lsn>, bool)>,
    flushed: Lsn,
}

impl Model {
    fn txn(&mut self, seq: TxnSeq) -> &mut (TxnSeq, u64, Option<Lsn>, bool) {
        self.pending
            .iter_mut()
            .find(|t| t.0 == seq)
            .expect("pending in the model")
    }

    fn fold(&mut self) {
        while let Some(&(_, 0, Some(end), false)) = self.pending.first() {
            self.flushed = self.flushed.max(end);
            self.pending.remove(0);
        }
    }
}

/// Drives the checkpoint and the model through the same operations, chosen by `ops`:
/// commit ends that repeat or go down, keepalives at arbitrary positions, `resume`, and
/// failures between registration and hand-over (the registered events are released).
fn against_the_model(ops: &[(u8, u16)]) {
    let mut cp = Checkpoint::new(Lsn(0));
    let mut model = Model::default();
    // Events handed over and not yet acknowledged.
    let mut handed: Vec<TxnSeq> = Vec::new();
    // Registered and not yet handed over: (seq, count).
    let mut unsent: Vec<(TxnSeq, u64)> = Vec::new();
    let mut open: Option<TxnSeq> = None;
    let mut last_end = Lsn(1_000);
    for &(op, arg) in ops {
        match (op % 8, open) {
            (0, None) => {
                let seq = cp.begin();
                model.pending.push((seq, 0, None, false));
                open = Some(seq);
            }
            (1, Some(seq)) => {
                let n = u64::from(arg % 3) + 1;
                cp.add_events(seq, n).unwrap();
                model.txn(seq).1 += n;
                unsent.push((seq, n));
            }
            (2, Some(seq)) => {
                // Commit ends go up, repeat, or (a broken caller) go down.
                open = None;
                last_end = match arg % 3 {
                    0 => Lsn(last_end.0 + u64::from(arg)),
                    1 => last_end,
                    _ => Lsn(last_end.0.saturating_sub(u64::from(arg % 500))),
                };
                cp.commit(seq, last_end).unwrap();
                model.txn(seq).2 = Some(last_end);
                model.fold();
            }
            (3, _) => {
                for (seq, n) in unsent.drain(..) {
                    handed.extend(std::iter::repeat_n(seq, n as usize));
                }
            }
            (4, _) if !handed.is_empty() => {
                let seq = handed.swap_remove(usize::from(arg) % handed.len());
                cp.ack(seq, 1).unwrap();
                model.txn(seq).1 -= 1;
                model.fold();
            }
            (5, _) => {
                let at = Lsn(u64::from(arg) * 7);
                cp.idle_position(at);
                if model.pending.is_empty() {
                    model.flushed = model.flushed.max(at);
                }
            }
            (6, _) => {
                // The connection fails between registration and hand-over: release.
                for (seq, n) in unsent.drain(..) {
                    cp.release(seq, n).unwrap();
                    let txn = model.txn(seq);
                    txn.1 -= n;
                    txn.3 = true;
                }
                open = None;
                model.fold();
                if handed.is_empty() {
                    // Drained: the next connection resumes at `start` (or the flush LSN).
                    let start = Lsn(u64::from(arg) * 5);
                    cp.resume(start);
                    model.pending.clear();
                    model.flushed = model.flushed.max(start);
                }
            }
            _ => {}
        }
        assert_eq!(cp.flushed(), model.flushed, "after op {op} {arg}");
        assert_eq!(cp.pending_transactions(), model.pending.len());
        let in_flight: u64 = model.pending.iter().map(|t| t.1).sum();
        assert_eq!(cp.in_flight_events(), in_flight);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_interleavings_never_flush_past_an_unacknowledged_event(
        sizes in prop::collection::vec(0u8..6, 1..30),
        choices in prop::collection::vec(any::<u16>(), 1..200),
    ) {
        simulate(&sizes, &choices);
    }

    #[test]
    fn equal_and_lower_ends_keepalives_resume_and_releases_match_the_model(
        ops in prop::collection::vec((any::<u8>(), any::<u16>()), 1..400),
    ) {
        against_the_model(&ops);
    }
}

#[test]
fn acknowledging_runs_stops_at_a_bad_run_and_keeps_the_runs_before_it() {
    let mut cp = Checkpoint::new(Lsn(0));
    let t1 = committed(&mut cp, 2, Lsn(10));
    let t2 = committed(&mut cp, 1, Lsn(20));
    assert!(matches!(
        cp.ack_runs(&[(t1, 2), (t2, 2), (t2, 1)]),
        Err(CheckpointError::TooManyAcks { acked: 2, .. })
    ));
    assert_eq!(cp.flushed(), Lsn(10), "the first run stands");
    assert_eq!(cp.in_flight_events(), 1);
    assert!(cp.ack_runs(&[(t2, 1)]).unwrap());
    assert_eq!(cp.flushed(), Lsn(20));
}

proptest! {
    /// A burst acknowledged as runs ends exactly where the same acknowledgements one by
    /// one end: flush LSN, in-flight count and whether it moved.
    #[test]
    fn runs_acknowledge_like_single_reports(
        sizes in proptest::collection::vec(1u64..5, 1..12),
        order in proptest::collection::vec(any::<u16>(), 0..60),
        cuts in proptest::collection::vec(any::<bool>(), 0..60),
    ) {
        let mut single = Checkpoint::new(Lsn(0));
        let mut reports = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let seq = committed(&mut single, *size, Lsn(10 * (i as u64 + 1)));
            reports.extend(std::iter::repeat_n(seq, *size as usize));
        }
        let mut batched = single.clone();
        // Deliveries in a shuffled order, cut into bursts.
        for (i, pick) in order.iter().enumerate() {
            let j = i % reports.len().max(1);
            let k = *pick as usize % reports.len().max(1);
            reports.swap(j, k);
        }
        let mut burst: Vec<(TxnSeq, u64)> = Vec::new();
        let mut moved_single = false;
        for (i, seq) in reports.iter().enumerate() {
            moved_single |= single.ack(*seq, 1).unwrap();
            match burst.last_mut() {
                Some((last, n)) if last == seq => *n += 1,
                _ => burst.push((*seq, 1)),
            }
            if cuts.get(i).copied().unwrap_or(true) || i + 1 == reports.len() {
                let moved = batched.ack_runs(&burst).unwrap();
                prop_assert_eq!(moved, moved_single);
                prop_assert_eq!(batched.flushed(), single.flushed());
                prop_assert_eq!(batched.in_flight_events(), single.in_flight_events());
                burst.clear();
                moved_single = false;
            }
        }
        prop_assert_eq!(batched.flushed(), Lsn(10 * sizes.len() as u64));
    }
}
