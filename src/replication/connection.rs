//! A walsender connection: connect, authenticate, run replication commands.
//!
//! Startup asks for `replication=database`, which gives a logical walsender that accepts
//! `IDENTIFY_SYSTEM` and `START_REPLICATION ... LOGICAL` in the simple-query protocol.
//! Authentication supports trust, cleartext, md5 and SCRAM-SHA-256 (no channel binding:
//! the connection is plain TCP or a Unix socket until TLS arrives).

use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use futures_util::StreamExt;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio_postgres::config::Host;
use tokio_util::codec::FramedRead;
use tracing::debug;

use super::codec::{BackendCodec, BackendMessage};
use super::error::ReplicationError;
use super::lsn::Lsn;
use super::stream::ReplicationStream;
use crate::ident::{quote_identifier, quote_literal};
use crate::tls::TlsSettings;

pub use super::wire::Transport;
use super::wire::{server_error, Reader, Writer};

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    /// The server's current WAL flush position.
    pub xlog_position: Lsn,
    pub database: Option<String>,
}

/// An authenticated walsender connection, ready for replication commands.
#[allow(missing_debug_implementations)]
pub struct ReplicationConnection {
    reader: Reader,
    writer: Writer,
    buf: BytesMut,
}

impl ReplicationConnection {
    /// Connects to the first reachable host of `config` without TLS and authenticates.
    pub async fn connect(config: &tokio_postgres::Config) -> Result<Self, ReplicationError> {
        let plain = TlsSettings {
            mode: crate::tls::SslMode::Disable,
            ..TlsSettings::default()
        };
        Self::connect_tls(config, &plain).await
    }

    /// Connects with TLS as `tls` says (see [`crate::tls`]) and authenticates.
    pub async fn connect_tls(
        config: &tokio_postgres::Config,
        tls: &TlsSettings,
    ) -> Result<Self, ReplicationError> {
        let transport = open_transport(config, tls).await?;
        let (read, write) = tokio::io::split(transport);
        let mut connection = ReplicationConnection {
            reader: FramedRead::new(read, BackendCodec),
            writer: write,
            buf: BytesMut::with_capacity(256),
        };
        connection.startup(config).await?;
        Ok(connection)
    }

    async fn startup(&mut self, config: &tokio_postgres::Config) -> Result<(), ReplicationError> {
        let user = config
            .get_user()
            .ok_or_else(|| ReplicationError::Auth("source.url names no user".into()))?;
        let mut params = vec![
            ("user", user),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
        ];
        if let Some(db) = config.get_dbname() {
            params.push(("database", db));
        }
        if let Some(app) = config.get_application_name() {
            params.push(("application_name", app));
        }
        frontend::startup_message(params.iter().copied(), &mut self.buf)?;
        self.flush().await?;
        self.authenticate(user, config.get_password()).await?;
        loop {
            match self.next_message().await? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ReplicationError> {
        let need_password = || {
            password.ok_or_else(|| {
                ReplicationError::Auth(
                    "the server asks for a password but source.url has none; add it as ${PGPASSWORD}"
                        .into(),
                )
            })
        };
        match self.next_message().await? {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(need_password()?, &mut self.buf)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash =
                    postgres_protocol::authentication::md5_hash(user.as_bytes(), need_password()?, body.salt());
                frontend::password_message(hash.as_bytes(), &mut self.buf)?;
            }
            Message::AuthenticationSasl(body) => {
                let offers_scram = body.mechanisms().any(|m| Ok(m == SCRAM_SHA_256))?;
                if !offers_scram {
                    return Err(ReplicationError::Auth(
                        "the server offers no SASL mechanism this relay supports (SCRAM-SHA-256)".into(),
                    ));
                }
                self.scram(need_password()?).await?;
            }
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            _ => {
                return Err(ReplicationError::Auth(
                    "the server asks for an authentication method this relay does not support (use scram-sha-256, md5, password or trust)".into(),
                ))
            }
        }
        self.flush().await?;
        match self.next_message().await? {
            Message::AuthenticationOk => Ok(()),
            Message::ErrorResponse(body) => Err(server_error(&body)),
            _ => Err(ReplicationError::Protocol(
                "expected AuthenticationOk".into(),
            )),
        }
    }

    async fn scram(&mut self, password: &[u8]) -> Result<(), ReplicationError> {
        let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut self.buf)?;
        self.flush().await?;
        let body = match self.next_message().await? {
            Message::AuthenticationSaslContinue(body) => body,
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            _ => return Err(ReplicationError::Protocol("expected SASL continue".into())),
        };
        scram
            .update(body.data())
            .map_err(|e| ReplicationError::Auth(format!("SCRAM: {e}")))?;
        frontend::sasl_response(scram.message(), &mut self.buf)?;
        self.flush().await?;
        let body = match self.next_message().await? {
            Message::AuthenticationSaslFinal(body) => body,
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            _ => return Err(ReplicationError::Protocol("expected SASL final".into())),
        };
        scram
            .finish(body.data())
            .map_err(|e| ReplicationError::Auth(format!("SCRAM: server proof rejected: {e}")))
        // The caller writes nothing more; AuthenticationOk follows.
    }

    /// Runs one replication command and returns its rows as text columns.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        debug!(sql, "replication command");
        frontend::query(sql, &mut self.buf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_message().await? {
                Message::DataRow(body) => rows.push(text_columns(&body)?),
                Message::ErrorResponse(body) => error = Some(server_error(&body)),
                Message::ReadyForQuery(_) => break,
                _ => {} // RowDescription, CommandComplete, notices
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`: the server's identity and current WAL position.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .into_iter()
            .next()
            .filter(|r| r.len() >= 4)
            .ok_or_else(|| ReplicationError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let field = |i: usize| row[i].clone().unwrap_or_default();
        Ok(SystemIdentity {
            system_id: field(0),
            timeline: field(1).parse().map_err(|_| {
                ReplicationError::Protocol("bad timeline in IDENTIFY_SYSTEM".into())
            })?,
            xlog_position: field(2)
                .parse()
                .map_err(|_| ReplicationError::Protocol("bad xlogpos in IDENTIFY_SYSTEM".into()))?,
            database: row[3].clone(),
        })
    }

    /// `START_REPLICATION SLOT slot LOGICAL start (proto_version '1', publication_names ...)`.
    ///
    /// `start` = [`Lsn::ZERO`] resumes from the slot's `confirmed_flush_lsn`. Names are
    /// validated by the config; they are quoted here all the same.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, ReplicationError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {})",
            quote_identifier(slot),
            quote_literal(&quote_identifier(publication)),
        );
        debug!(%sql, "starting replication");
        frontend::query(&sql, &mut self.buf)?;
        self.flush().await?;
        loop {
            match self
                .reader
                .next()
                .await
                .transpose()?
                .ok_or(ReplicationError::Closed)?
            {
                BackendMessage::CopyBothResponse => break,
                BackendMessage::Other(Message::ErrorResponse(body)) => {
                    return Err(server_error(&body))
                }
                BackendMessage::Other(_) => {}
            }
        }
        Ok(ReplicationStream::new(self.reader, self.writer))
    }

    async fn next_message(&mut self) -> Result<Message, ReplicationError> {
        match self.reader.next().await.transpose()? {
            Some(BackendMessage::Other(message)) => Ok(message),
            Some(BackendMessage::CopyBothResponse) => Err(ReplicationError::Protocol(
                "unexpected CopyBothResponse".into(),
            )),
            None => Err(ReplicationError::Closed),
        }
    }

    async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.writer.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }
}

async fn open_transport(
    config: &tokio_postgres::Config,
    tls: &TlsSettings,
) -> Result<Box<dyn Transport>, ReplicationError> {
    let client_config = match tls.mode {
        crate::tls::SslMode::Disable => None,
        _ => Some(tls.client_config().map_err(|e| ReplicationError::Tls {
            address: "(config)".into(),
            reason: e.to_string(),
        })?),
    };
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10));
    let ports = config.get_ports();
    let mut last_error = None;
    for (i, host) in config.get_hosts().iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let host_name = match host {
            Host::Tcp(name) => Some(name.clone()),
            Host::Unix(_) => None,
        };
        let (address, attempt): (String, _) = match host {
            Host::Tcp(name) => (format!("{name}:{port}"), None),
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                (path.display().to_string(), Some(path))
            }
        };
        let connect =
            async {
                match &attempt {
                    None => {
                        let stream = tokio::net::TcpStream::connect(&address).await?;
                        stream.set_nodelay(true)?;
                        Ok::<Box<dyn Transport>, std::io::Error>(Box::new(stream))
                    }
                    Some(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)
                        as Box<dyn Transport>),
                }
            };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(stream)) => {
                return match (&client_config, host_name) {
                    (Some(client_config), Some(host)) => {
                        start_tls(stream, client_config, &host, &address, tls.mode).await
                    }
                    // No TLS over Unix sockets, as libpq.
                    _ => Ok(stream),
                };
            }
            Ok(Err(source)) => last_error = Some(ReplicationError::Connect { address, source }),
            Err(_) => last_error = Some(ReplicationError::ConnectTimeout { address }),
        }
    }
    Err(last_error
        .unwrap_or_else(|| ReplicationError::Unsupported("source.url names no host".into())))
}

/// SSLRequest, then the TLS handshake (or plain, when the server declines and sslmode is
/// `prefer`).
async fn start_tls(
    mut stream: Box<dyn Transport>,
    client_config: &std::sync::Arc<rustls::ClientConfig>,
    host: &str,
    address: &str,
    mode: crate::tls::SslMode,
) -> Result<Box<dyn Transport>, ReplicationError> {
    use tokio::io::AsyncReadExt;
    let tls_error = |reason: String| ReplicationError::Tls {
        address: address.to_owned(),
        reason,
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream.write_all(&request).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' if mode == crate::tls::SslMode::Prefer => return Ok(stream),
        b'N' => return Err(tls_error(
            "the server does not accept TLS (ssl = off); enable ssl on the server or lower sslmode"
                .into(),
        )),
        other => {
            return Err(tls_error(format!(
                "unexpected answer {other:?} to SSLRequest"
            )))
        }
    }
    let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| tls_error(format!("{host:?} is not a valid TLS server name: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(client_config));
    match connector.connect(server_name, stream).await {
        Ok(tls) => Ok(Box::new(tls)),
        Err(e) => {
            let reason = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                )) => format!(
                    "the server's certificate does not match host {host:?} (sslmode=verify-full); connect with a name the certificate lists"
                ),
                Some(other) => format!("{other}"),
                None => e.to_string(),
            };
            Err(tls_error(reason))
        }
    }
}

/// The text of each column of a `DataRow` (`None` for NULL).
fn text_columns(body: &DataRowBody) -> Result<Vec<Option<String>>, ReplicationError> {
    let buffer = body.buffer();
    body.ranges()
        .map(|range| Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
        .collect()
        .map_err(ReplicationError::Io)
}
