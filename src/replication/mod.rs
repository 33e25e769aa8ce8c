//! The Postgres half of the relay: the walsender wire protocol, pgoutput decoding, LSNs.
//!
//! Built on `postgres-protocol` over a tokio socket because tokio-postgres cannot enter
//! CopyBoth mode. [`connection`] authenticates and runs replication commands,
//! [`stream`] carries WAL data and status updates, [`pgoutput`] decodes the payloads,
//! [`relations`] remembers table shapes between messages; [`wire`] holds what connection and
//! stream share, so neither imports the other.

pub mod codec;
pub mod connection;
pub mod error;
pub mod lsn;
pub mod pgoutput;
pub mod relations;
pub mod stream;
pub mod wire;

pub use connection::{ReplicationConnection, SystemIdentity};
pub use error::{ReplicationError, ServerError};
pub use lsn::Lsn;
pub use stream::{ReplicationMessage, ReplicationStream, StandbyStatus};
