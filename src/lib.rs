//! outbox-relay: PostgreSQL transactional-outbox rows to Kafka, over logical replication.
//!
//! Domain services write a business row and an outbox row in one transaction; the relay
//! tails the slot with pgoutput, hands each committed outbox row downstream, and lets
//! PostgreSQL recycle WAL only once downstream has durably acknowledged it.
//!
//! # Layout
//! - [`admin`]: the HTTP endpoint for `/metrics`, `/healthz`, `/readyz`; [`health`] backs the probes.
//! - [`config`]: the TOML file: shape, defaults, `${ENV}` interpolation, validation.
//! - [`ident`]: validation and quoting of every name that reaches SQL.
//! - [`replication`]: the walsender wire protocol, pgoutput decoding, LSNs, relation cache.
//! - [`source`]: the I/O loop that streams from the slot and hands batches downstream;
//!   [`source::assembler`] turns pgoutput into events without I/O; [`source::slot`] refuses
//!   a slot that is not safe to stream from; [`source::history`] notices a database that
//!   went back in time.
//! - [`checkpoint`]: what may be acknowledged (the flush LSN) — the acknowledgement rule.
//! - [`admin_sql`]: publication and slot creation over an ordinary SQL connection.
//! - [`check`]: the `check` command's prerequisites, each with its fix.
//! - [`outbox`]: a row change → the Kafka record it becomes (Debezium-compatible routing).
//! - [`dlq`]: the dead-letter record for a row that can never be published;
//!   [`dlq_replay`] publishes dead letters again once their cause is fixed.
//! - [`kafka`]: producer settings, topic creation, delivery reports → acknowledgements;
//!   [`kafka::hold`] holds and resends the records of a topic the broker refuses.
//! - [`status`]: the slot and publication as PostgreSQL sees them (`outbox-relay status`).
//! - [`tls`]: sslmode and certificates for both PostgreSQL connections (rustls).
//! - [`tail`]: reading a topic back for people (`outbox-relay tail`).
//! - [`policy`]: the one map from failure to retry, dead-letter, hold or stop.
//! - [`progress`]: exactly-once progress records, and which resent transactions they skip.
//! - [`metrics`]: metric names and descriptions.
//! - [`pipeline`]: the supervisor (wiring source → sink, reconnects with [`backoff`],
//!   in-process restarts, standby while another replica holds the slot, graceful stop)
//!   and the sink (routing, producing, dead-lettering).

pub mod admin;
pub mod admin_sql;
pub mod backoff;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod dlq;
pub mod dlq_replay;
pub mod health;
pub mod ident;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod policy;
pub mod progress;
pub mod replication;
pub mod source;
pub mod status;
pub mod tail;
pub mod tls;
