//! Everything that can go wrong on the replication connection, and whether it will pass.

use std::io;

use super::pgoutput::DecodeError;

/// An `ErrorResponse` from the server, with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    /// The five-character SQLSTATE, e.g. `55006` (object in use).
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, "; {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

/// Failures of the replication connection: connect, authenticate, stream, decode.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot connect to PostgreSQL at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("timed out connecting to PostgreSQL at {address}")]
    ConnectTimeout { address: String },
    #[error("TLS with PostgreSQL at {address} failed: {reason}")]
    Tls { address: String, reason: String },
    #[error("replication connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the server closed the replication connection")]
    Closed,
    #[error("PostgreSQL error: {0}")]
    Server(ServerError),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("unsupported connection setting: {0}")]
    Unsupported(String),
    #[error("replication protocol violation: {0}")]
    Protocol(String),
    #[error("{0}")]
    SlotUnusable(String),
    #[error(transparent)]
    Publication(#[from] crate::source::publication::PublicationError),
    #[error("no message from PostgreSQL for {0:?} (wal_receiver_timeout); the connection is presumed dead")]
    ReceiveTimeout(std::time::Duration),
    #[error("cannot assemble transactions from the replication stream: {0}")]
    Assembly(#[from] crate::source::assembler::AssemblyError),
    #[error("source.url now reaches another database system (system identifier {now}, this relay streamed from {was}): a relay does not silently follow a different database. If the switch is intended (a rebuilt or replaced cluster), check that its slot holds what it should, then restart the relay, or set source.on_new_system = \"follow\"")]
    OtherSystem { was: String, now: String },
    #[error("cannot decode pgoutput message at {lsn}: {source}")]
    Decode {
        lsn: super::lsn::Lsn,
        #[source]
        source: DecodeError,
    },
}

impl ReplicationError {
    /// Whether reconnecting with backoff can help. Unknown server errors count as retryable;
    /// the listed ones need an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::ConnectTimeout { .. }
            | ReplicationError::Io(_)
            | ReplicationError::Closed
            | ReplicationError::ReceiveTimeout(_) => true,
            ReplicationError::Server(e) => !is_permanent_sqlstate(&e.code),
            ReplicationError::Auth(_)
            | ReplicationError::Tls { .. }
            | ReplicationError::Unsupported(_)
            | ReplicationError::SlotUnusable(_)
            | ReplicationError::Publication(_)
            | ReplicationError::Protocol(_)
            | ReplicationError::Assembly(_)
            | ReplicationError::OtherSystem { .. }
            | ReplicationError::Decode { .. } => false,
        }
    }

    /// Whether the slot is streaming to another process (`55006`, object in use): another
    /// relay replica is active, and this one stands by.
    pub fn is_slot_in_use(&self) -> bool {
        self.sqlstate() == Some("55006")
    }

    /// The SQLSTATE when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// SQLSTATEs that no amount of retrying fixes: a missing slot or publication, bad
/// credentials, missing privileges, a slot that can no longer stream (invalidated, or
/// `wal_level` lowered).
fn is_permanent_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "42704" // undefined_object: slot or publication does not exist
            | "28000" // invalid_authorization_specification
            | "28P01" // invalid_password
            | "42501" // insufficient_privilege
            | "55000" // object_not_in_prerequisite_state: invalidated slot, wal_level
            | "3D000" // invalid_catalog_name: database does not exist
            | "42601" // syntax_error
            | "22023" // invalid_parameter_value
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> ReplicationError {
        ReplicationError::Server(ServerError {
            severity: "ERROR".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        })
    }

    #[test]
    fn classification() {
        assert!(
            server("55006").is_retryable(),
            "slot in use by another relay"
        );
        assert!(server("57P01").is_retryable(), "admin shutdown");
        assert!(server("XX000").is_retryable(), "unknown defaults to retry");
        assert!(!server("42704").is_retryable(), "missing slot");
        assert!(!server("28P01").is_retryable(), "bad password");
        assert!(ReplicationError::Closed.is_retryable());
        assert!(server("55006").is_slot_in_use());
        assert!(!server("57P01").is_slot_in_use());
        assert!(ReplicationError::ReceiveTimeout(std::time::Duration::from_secs(1)).is_retryable());
        assert!(!ReplicationError::SlotUnusable("lost".into()).is_retryable());
        assert!(!ReplicationError::Protocol("x".into()).is_retryable());
    }
}
