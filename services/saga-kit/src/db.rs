//! A small bounded PostgreSQL connection pool, and the migrations runner.
//!
//! Why not a pool crate: the services need exactly "at most N connections, reconnect
//! when one died", which is forty lines on top of tokio-postgres; the bound is a
//! semaphore, so a burst of HTTP requests waits for a connection instead of opening one
//! per request.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls};

/// A database failure outside a request's own queries.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the service database: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migrate(#[source] tokio_postgres::Error),
}

/// At most `size` connections to one database, shared by the HTTP handlers and the consumer.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    /// Opens one connection to check the database answers, and keeps it.
    pub async fn connect(url: &str, size: usize) -> Result<Pool, DbError> {
        let first = connect(url).await?;
        Ok(Pool {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                idle: Mutex::new(vec![first]),
                permits: Arc::new(Semaphore::new(size)),
            }),
        })
    }

    /// A connection: an idle one that is still open, else a new one. Waits while all
    /// `size` are in use.
    pub async fn get(&self) -> Result<PooledClient, DbError> {
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .expect("the pool never closes its semaphore");
        let idle = loop {
            let candidate = self.inner.idle.lock().expect("pool lock").pop();
            match candidate {
                Some(client) if client.is_closed() => continue,
                other => break other,
            }
        };
        let client = match idle {
            Some(client) => client,
            None => connect(&self.inner.url).await?,
        };
        Ok(PooledClient {
            client: Some(client),
            pool: Arc::clone(&self.inner),
            _permit: permit,
        })
    }

    /// Runs each migration (idempotent DDL) in order.
    pub async fn migrate(&self, migrations: &[&str]) -> Result<(), DbError> {
        let client = self.get().await?;
        for sql in migrations {
            client.batch_execute(sql).await.map_err(DbError::Migrate)?;
        }
        Ok(())
    }
}

/// A connection borrowed from a [`Pool`]; returned to it on drop unless it has closed.
#[derive(Debug)]
pub struct PooledClient {
    client: Option<Client>,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Deref for PooledClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until drop")
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(client) = self.client.take().filter(|c| !c.is_closed()) {
            self.pool.idle.lock().expect("pool lock").push(client);
        }
    }
}

async fn connect(url: &str) -> Result<Client, DbError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(DbError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}
