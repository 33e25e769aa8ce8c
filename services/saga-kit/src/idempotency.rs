//! Client idempotency keys: a request retried with the same `Idempotency-Key` header
//! creates its resource once and gets the first answer again (as Stripe and Shopify do).
//!
//! # Using it in a handler
//! ```ignore
//! let key = idempotency::key(&headers)?;                 // None: no header, as before
//! let tx = client.transaction().await?;
//! if let Some(key) = &key {
//!     if let Begin::Replay(stored) = idempotency::begin(&tx, SCOPE, key, &body).await? {
//!         return Ok(stored.into_response());            // nothing written
//!     }
//! }
//! // ... create the resource and its outbox event in `tx` ...
//! let response = StoredResponse { status, body, location };
//! if let Some(key) = &key {
//!     idempotency::finish(&tx, SCOPE, key, &response).await?;
//! }
//! tx.commit().await?;
//! ```
//!
//! # Why it holds, concurrency included
//! The key's row (table `idempotency_keys`, primary key `(scope, key)`) is written in the
//! same transaction as the resource and its outbox row, so all three commit or none does.
//! [`begin`] inserts the row first (`ON CONFLICT DO NOTHING`), and the primary key is the
//! lock:
//! - the first request's insert takes the key; a concurrent repeat's insert waits on it
//!   until the first transaction ends;
//! - if the first commits, the waiting insert does nothing and the repeat reads the
//!   committed response (read committed: the next statement sees it) and replays it;
//! - if the first rolls back, the waiting insert succeeds and the repeat is the first:
//!   the key never stores a response for a resource that does not exist.
//!
//! A repeat is recognised by the SHA-256 of the request body in canonical form (JSON
//! with object keys sorted and no whitespace, so a client re-serialising the same
//! request matches; any other body hashed as its bytes). The same key with another body
//! is a client bug and gets 422, writing nothing. Refused requests (validation errors)
//! never reach [`begin`], so they store no key and may be corrected and retried with it.
//! Keys are kept indefinitely; expiring them (Stripe: 24 h) is a cleanup job away.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use tokio_postgres::Transaction;

use crate::http::ApiError;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// What [`begin`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// The key is new (or its first use rolled back): handle the request, then
    /// [`finish`] in the same transaction.
    Fresh,
    /// The key was used with this body before: answer this, write nothing.
    Replay(StoredResponse),
}

/// The response stored with a key and replayed for its repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub status: StatusCode,
    pub body: serde_json::Value,
    /// The `Location` header, if the response had one.
    pub location: Option<String>,
}

impl IntoResponse for StoredResponse {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(location) = self.location.and_then(|l| l.parse().ok()) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

/// The request's `Idempotency-Key`, `None` without one; 400 for an empty key, one over
/// [`MAX_KEY_LEN`] bytes, or one that is not visible ASCII.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let bad = |message: String| ApiError::Rejected {
        status: StatusCode::BAD_REQUEST,
        message,
    };
    let key = value
        .to_str()
        .map_err(|_| bad("Idempotency-Key must be visible ASCII".to_owned()))?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(bad(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters, not {}",
            key.len()
        )));
    }
    Ok(Some(key.to_owned()))
}

/// Claims `key` in `scope` for a request with `body`, inside the transaction that will
/// create the resource (see "Why it holds"). 422 if the key was used with another body.
pub async fn begin(
    tx: &Transaction<'_>,
    scope: &str,
    key: &str,
    body: &[u8],
) -> Result<Begin, ApiError> {
    let hash = request_hash(body);
    let claimed = tx
        .execute(
            "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (scope, key) DO NOTHING",
            &[&scope, &key, &hash.as_slice()],
        )
        .await?;
    if claimed == 1 {
        return Ok(Begin::Fresh);
    }
    let row = tx
        .query_one(
            "SELECT request_hash, status, response, location FROM idempotency_keys \
             WHERE scope = $1 AND key = $2",
            &[&scope, &key],
        )
        .await?;
    let (stored_hash, status, response, location): (
        Vec<u8>,
        Option<i16>,
        Option<serde_json::Value>,
        Option<String>,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3));
    if stored_hash != hash.as_slice() {
        return Err(ApiError::Invalid(format!(
            "Idempotency-Key {key:?} was already used for {scope} with a different request \
             body; use a new key for a new request"
        )));
    }
    // `finish` runs in the transaction that inserted the row, so a committed row has
    // its response; a row without one was written by a caller that skipped `finish`.
    let status = status
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok());
    match (status, response) {
        (Some(status), Some(body)) => Ok(Begin::Replay(StoredResponse {
            status,
            body,
            location,
        })),
        _ => Err(ApiError::Rejected {
            status: StatusCode::CONFLICT,
            message: format!("Idempotency-Key {key:?} has no stored response"),
        }),
    }
}

/// Stores `response` for `key`, in the transaction [`begin`] returned
/// [`Begin::Fresh`] in (before it commits).
pub async fn finish(
    tx: &Transaction<'_>,
    scope: &str,
    key: &str,
    response: &StoredResponse,
) -> Result<(), ApiError> {
    let status = i16::try_from(response.status.as_u16()).expect("HTTP statuses fit in i16");
    tx.execute(
        "UPDATE idempotency_keys SET status = $3, response = $4, location = $5 \
         WHERE scope = $1 AND key = $2",
        &[&scope, &key, &status, &response.body, &response.location],
    )
    .await?;
    Ok(())
}

/// SHA-256 of `body` in canonical form.
pub fn request_hash(body: &[u8]) -> [u8; 32] {
    let canonical = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => {
            let mut out = String::with_capacity(body.len());
            canonical_json(&json, &mut out);
            out.into_bytes()
        }
        Err(_) => body.to_vec(),
    };
    Sha256::digest(&canonical).into()
}

/// `value` as compact JSON with every object's keys sorted, whatever order serde_json
/// keeps them in (its `preserve_order` feature may be on through another crate).
fn canonical_json(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_same_json_hashes_alike_however_it_is_written() {
        let a = br#"{"b": [1, {"y": 2, "x": "s"}], "a": null}"#;
        let b = br#"{"a":null,"b":[1,{"x":"s","y":2}]}"#;
        assert_eq!(request_hash(a), request_hash(b));
        let mut out = String::new();
        canonical_json(&serde_json::from_slice(a).unwrap(), &mut out);
        assert_eq!(out, r#"{"a":null,"b":[1,{"x":"s","y":2}]}"#);
    }

    #[test]
    fn different_bodies_hash_differently() {
        let base = request_hash(br#"{"quantity": 2}"#);
        assert_ne!(base, request_hash(br#"{"quantity": 3}"#));
        assert_ne!(base, request_hash(br#"{"quantity": "2"}"#));
        assert_ne!(base, request_hash(br#"[{"quantity": 2}]"#));
        // Not JSON: the bytes themselves.
        assert_eq!(request_hash(b"not json"), request_hash(b"not json"));
        assert_ne!(request_hash(b"not json"), request_hash(b"not  json"));
    }

    #[test]
    fn keys_are_bounded_and_optional() {
        let with = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER, HeaderValue::from_bytes(value).unwrap());
            key(&headers)
        };
        assert_eq!(key(&HeaderMap::new()).unwrap(), None);
        assert_eq!(with(b"abc-123").unwrap().as_deref(), Some("abc-123"));
        assert_eq!(
            with(&[b'k'; MAX_KEY_LEN]).unwrap().map(|k| k.len()),
            Some(MAX_KEY_LEN)
        );
        for bad in [&b""[..], &[b'k'; MAX_KEY_LEN + 1], "ключ".as_bytes()] {
            match with(bad) {
                Err(ApiError::Rejected { status, .. }) => {
                    assert_eq!(status, StatusCode::BAD_REQUEST)
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
