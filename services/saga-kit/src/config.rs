//! Settings every service reads from its environment, as containers and the demo set them.
//!
//! Twelve-factor style rather than a file: each service has only a handful of settings,
//! and compose, the demo script and the tests all set environment variables easily.

use std::net::SocketAddr;

/// Default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default number of PostgreSQL connections a service holds at most.
pub const DEFAULT_DB_POOL_SIZE: usize = 8;

/// A setting that is missing or does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is not set")]
    Missing { name: &'static str },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// What every saga service needs to run.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// `DATABASE_URL`: the service's own database (libpq URL).
    pub database_url: String,
    /// `KAFKA_BOOTSTRAP_SERVERS`: where its consumer reads the other services' events.
    pub kafka_bootstrap_servers: String,
    /// `LISTEN_ADDR`: the HTTP API (default [`DEFAULT_LISTEN`]).
    pub listen: SocketAddr,
    /// `CONSUMER_GROUP`: the Kafka consumer group the service's replicas share, and the
    /// name of its stored positions (default: the service name). A new name reads every
    /// topic from the beginning: a full redelivery.
    pub consumer_group: String,
    /// `DB_POOL_SIZE`: the most connections to hold (default [`DEFAULT_DB_POOL_SIZE`]).
    pub db_pool_size: usize,
}

impl ServiceConfig {
    /// Reads the settings from the process environment.
    pub fn from_env(service: &str) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::from_lookup(service, |name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(
        service: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ServiceConfig, ConfigError> {
        let required = |name: &'static str| lookup(name).ok_or(ConfigError::Missing { name });
        let listen = lookup("LISTEN_ADDR").unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let pool = lookup("DB_POOL_SIZE").unwrap_or_else(|| DEFAULT_DB_POOL_SIZE.to_string());
        Ok(ServiceConfig {
            database_url: required("DATABASE_URL")?,
            kafka_bootstrap_servers: required("KAFKA_BOOTSTRAP_SERVERS")?,
            listen: listen
                .parse()
                .map_err(|e| ConfigError::invalid("LISTEN_ADDR", &listen, e))?,
            consumer_group: lookup("CONSUMER_GROUP").unwrap_or_else(|| service.to_owned()),
            db_pool_size: match pool.parse() {
                Ok(0) => {
                    return Err(ConfigError::invalid(
                        "DB_POOL_SIZE",
                        &pool,
                        "must be at least 1",
                    ))
                }
                Ok(n) => n,
                Err(e) => return Err(ConfigError::invalid("DB_POOL_SIZE", &pool, e)),
            },
        })
    }
}

impl ConfigError {
    /// [`ConfigError::Invalid`]: variable `name` holds `value`, which breaks `reason`.
    /// Public, so a service's own settings report a bad value the same way.
    pub fn invalid(name: &'static str, value: &str, reason: impl ToString) -> ConfigError {
        ConfigError::Invalid {
            name,
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    const REQUIRED: [(&str, &str); 2] = [
        ("DATABASE_URL", "postgres://x@db/orders"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092"),
    ];

    #[test]
    fn defaults_apply_to_optional_settings() {
        let config = ServiceConfig::from_lookup("order-service", lookup(&REQUIRED)).unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.consumer_group, "order-service");
        assert_eq!(config.db_pool_size, DEFAULT_DB_POOL_SIZE);
    }

    #[test]
    fn missing_and_invalid_settings_name_the_variable() {
        let err = ServiceConfig::from_lookup("s", lookup(&REQUIRED[..1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable KAFKA_BOOTSTRAP_SERVERS is not set"
        );
        let mut pairs = REQUIRED.to_vec();
        pairs.push(("DB_POOL_SIZE", "0"));
        let err = ServiceConfig::from_lookup("s", lookup(&pairs)).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("environment variable DB_POOL_SIZE=\"0\""));
    }
}
