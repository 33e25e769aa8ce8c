use proptest::prelude::*;

use super::*;
use crate::replication::pgoutput::{Begin, Commit, Insert, Relation, RelationColumn, TupleData};

const OID: u32 = 16_384;

fn relation() -> PgOutputMessage {
    PgOutputMessage::Relation(Relation {
        oid: OID,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: vec![RelationColumn {
            is_key: true,
            name: "id".into(),
            type_oid: 25,
            type_modifier: -1,
        }],
    })
}

/// Transaction `i` of a test stream ends at `1000 * (i + 1)`.
fn end(i: usize) -> Lsn {
    Lsn(1000 * (i as u64 + 1))
}

fn begin(i: usize) -> PgOutputMessage {
    PgOutputMessage::Begin(Begin {
        final_lsn: Lsn(end(i).0 - 10),
        commit_ts_micros: 0,
        xid: i as u32,
    })
}

fn insert() -> PgOutputMessage {
    PgOutputMessage::Insert(Insert {
        relation: OID,
        new: TupleData { columns: vec![] },
    })
}

fn commit(i: usize) -> PgOutputMessage {
    PgOutputMessage::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(end(i).0 - 10),
        end_lsn: end(i),
        commit_ts_micros: 0,
    })
}

fn assembler() -> (Assembler, SharedCheckpoint) {
    let checkpoint = SharedCheckpoint::new(Lsn(0));
    let mut assembler = Assembler::new(checkpoint.clone(), 4);
    assembler.apply(relation()).unwrap();
    (assembler, checkpoint)
}

#[test]
fn a_committed_batch_released_before_hand_over_leaves_nothing_in_flight() {
    // The hang of issue #12: Commit registers the batch's events, then the connection
    // fails while the channel is full. Nothing may stay in flight, nothing may be flushed.
    let (mut a, cp) = assembler();
    a.apply(begin(0)).unwrap();
    a.apply(insert()).unwrap();
    a.apply(insert()).unwrap();
    assert!(
        matches!(a.apply(commit(0)).unwrap(), Step::Committed { flushed } if flushed == Lsn(0))
    );
    assert_eq!(cp.lock().in_flight_events(), 2, "registered at commit");
    let released = a.release().unwrap();
    assert_eq!(released.events, 2);
    assert_eq!(released.open, None);
    assert_eq!(cp.lock().in_flight_events(), 0, "drained() can complete");
    assert_eq!(
        cp.flushed(),
        Lsn(0),
        "a released transaction is never flushed"
    );
    assert_eq!(a.batch_len(), 0);
}

#[test]
fn a_keepalive_registered_open_transaction_is_released_and_reported() {
    let (mut a, cp) = assembler();
    a.apply(begin(0)).unwrap();
    a.apply(insert()).unwrap();
    assert!(
        !a.keepalive(Lsn(5_000)).unwrap(),
        "not idle: a transaction is open"
    );
    a.apply(insert()).unwrap();
    let released = a.release().unwrap();
    assert_eq!(
        released.events, 1,
        "only the registered event is given back"
    );
    assert_eq!(released.open.map(|t| t.xid), Some(0));
    assert_eq!(cp.lock().in_flight_events(), 0);
}

#[test]
fn handed_over_events_stay_in_flight_until_acknowledged() {
    let (mut a, cp) = assembler();
    a.apply(begin(0)).unwrap();
    a.apply(insert()).unwrap();
    let batch = a.hand_over().unwrap();
    assert_eq!(batch.len(), 1);
    a.apply(insert()).unwrap();
    a.apply(commit(0)).unwrap();
    assert_eq!(a.release().unwrap().events, 1);
    assert_eq!(
        cp.lock().in_flight_events(),
        1,
        "the handed-over event is downstream's"
    );
    cp.ack(batch[0].seq, 1).unwrap();
    assert_eq!(cp.lock().in_flight_events(), 0);
    assert_eq!(
        cp.flushed(),
        Lsn(0),
        "its sibling was released: not flushed"
    );
}

#[test]
fn protocol_violations_are_errors() {
    let (mut a, _) = assembler();
    assert!(matches!(
        a.apply(commit(0)),
        Err(AssemblyError::CommitWithoutBegin)
    ));
    assert!(matches!(
        a.apply(insert()),
        Err(AssemblyError::ChangeOutsideTransaction)
    ));
    a.apply(begin(0)).unwrap();
    assert!(matches!(a.apply(begin(1)), Err(AssemblyError::NestedBegin)));
    let unknown = PgOutputMessage::Insert(Insert {
        relation: 1,
        new: TupleData { columns: vec![] },
    });
    assert!(matches!(
        a.apply(unknown),
        Err(AssemblyError::UnknownRelation(1))
    ));
}

/// One run of the source against a simulated server and sink, with a connection failure
/// injected wherever `choices` says: after Begin, between an event's registration and
/// its hand-over, after Commit, after a keepalive. After each failure the relay waits for
/// in flight to drain (which must happen), resumes at the flush LSN and the server resends
/// every transaction past it. Asserts the acknowledgement rule after every step.
fn simulate(sizes: &[u8], choices: &[u16]) {
    let checkpoint = SharedCheckpoint::new(Lsn(0));
    // Every event of `downstream` was handed over and is not yet acknowledged.
    let mut downstream: Vec<SourceEvent> = Vec::new();
    // How many events of each transaction were acknowledged on the connection that reads it.
    let mut acked_now = vec![0u8; sizes.len()];
    let mut delivered = vec![false; sizes.len()];
    let mut choice = choices.iter().copied().cycle();
    let mut last_flushed = Lsn(0);
    let mut connections = 0;
    'connection: loop {
        connections += 1;
        assert!(connections < 1_000, "simulation does not converge");
        let flushed = checkpoint.flushed();
        checkpoint.lock().resume(flushed);
        let mut a = Assembler::new(checkpoint.clone(), 3);
        a.apply(relation()).unwrap();
        // The server resends from the first transaction past the flush LSN.
        let first = (0..sizes.len()).find(|&i| end(i) > flushed);
        let Some(first) = first else { break };
        acked_now.iter_mut().for_each(|n| *n = 0);
        let mut committed_now = vec![false; sizes.len()];
        let mut sent = flushed;
        let mut script: Vec<(usize, PgOutputMessage)> = Vec::new();
        for (i, &size) in sizes.iter().enumerate().skip(first) {
            script.push((i, begin(i)));
            script.extend((0..size).map(|_| (i, insert())));
            script.push((i, commit(i)));
        }
        let mut script = script.into_iter();
        // Keepalives in a row: bounded, so a `choices` of only keepalives cannot spin.
        let mut idle = 0;
        loop {
            let c = choice.next().unwrap_or(0);
            match c % 11 {
                // Fail the connection: release what the assembler holds, then drain.
                0 if connections < 20 => {
                    a.release().unwrap();
                    for event in downstream.drain(..) {
                        acked_now[event.transaction.xid as usize] += 1;
                        checkpoint.ack(event.seq, 1).unwrap();
                    }
                    mark(&mut delivered, &committed_now, &acked_now, sizes);
                    assert_eq!(
                        checkpoint.lock().in_flight_events(),
                        0,
                        "something registered was orphaned"
                    );
                    check(&checkpoint, &delivered, &mut last_flushed);
                    continue 'connection;
                }
                1 | 2 if !downstream.is_empty() => {
                    let event = downstream.swap_remove(usize::from(c) % downstream.len());
                    acked_now[event.transaction.xid as usize] += 1;
                    checkpoint.ack(event.seq, 1).unwrap();
                }
                3 if idle < 3 => {
                    idle += 1;
                    // A keepalive at an arbitrary position the server has sent up to.
                    let at = Lsn(u64::from(c) % (sent.0 + 1));
                    a.keepalive(at).unwrap();
                }
                4 | 5 if a.batch_len() > 0 => downstream.extend(a.hand_over().unwrap()),
                _ => match script.next() {
                    Some((i, message)) => {
                        idle = 0;
                        if matches!(message, PgOutputMessage::Commit(_)) {
                            committed_now[i] = true;
                            sent = end(i);
                        }
                        a.apply(message).unwrap();
                        if a.is_full() {
                            downstream.extend(a.hand_over().unwrap());
                        }
                    }
                    None => {
                        downstream.extend(a.hand_over().unwrap());
                        for event in downstream.drain(..) {
                            acked_now[event.transaction.xid as usize] += 1;
                            checkpoint.ack(event.seq, 1).unwrap();
                        }
                        mark(&mut delivered, &committed_now, &acked_now, sizes);
                        check(&checkpoint, &delivered, &mut last_flushed);
                        continue 'connection;
                    }
                },
            }
            mark(&mut delivered, &committed_now, &acked_now, sizes);
            check(&checkpoint, &delivered, &mut last_flushed);
        }
    }
    assert_eq!(checkpoint.flushed(), end(sizes.len() - 1));
    assert_eq!(checkpoint.lock().in_flight_events(), 0);
}

/// A transaction is delivered once one connection read its Commit and saw every one of
/// its events acknowledged.
fn mark(delivered: &mut [bool], committed: &[bool], acked: &[u8], sizes: &[u8]) {
    for i in 0..sizes.len() {
        delivered[i] |= committed[i] && acked[i] == sizes[i];
    }
}

fn check(checkpoint: &SharedCheckpoint, delivered: &[bool], last: &mut Lsn) {
    let flushed = checkpoint.flushed();
    assert!(flushed >= *last, "flush LSN went backwards");
    *last = flushed;
    for (i, done) in delivered.iter().enumerate() {
        if end(i) <= flushed {
            assert!(
                done,
                "flushed {flushed} passes transaction {i}, never fully acknowledged"
            );
        }
    }
}

#[test]
fn a_script_of_only_keepalives_still_ends() {
    simulate(&[2, 0, 1], &[3]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn failures_at_any_step_never_orphan_or_skip(
        sizes in prop::collection::vec(0u8..6, 1..20),
        choices in prop::collection::vec(any::<u16>(), 1..300),
    ) {
        simulate(&sizes, &choices);
    }
}
