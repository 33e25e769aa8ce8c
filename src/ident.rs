//! Names that end up inside SQL: slot, publication, schema and table names.
//!
//! No SQL in the relay is built from an unchecked config string. Every name is validated
//! here when the config is loaded (so a bad one is reported with its key), and quoted here
//! when it is written into a statement, so that a name can never close its quotes.

use std::fmt;
use std::str::FromStr;

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Why a name was refused, phrased as the constraint it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes long; PostgreSQL keeps at most 63")]
    TooLong(usize),
    #[error("contains {0:?}; use lowercase letters, digits and underscores")]
    BadSlotChar(char),
    #[error("contains {0:?}; use letters, digits, '_' and '$', not starting with a digit or '$'")]
    BadIdentifierChar(char),
    #[error("must be written as schema.table, e.g. public.outbox")]
    NotQualified,
}

/// A replication slot name: PostgreSQL only allows `[a-z0-9_]`, at most 63 bytes.
pub fn validate_slot_name(name: &str) -> Result<(), NameError> {
    check_length(name)?;
    match name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        Some(bad) => Err(NameError::BadSlotChar(bad)),
        None => Ok(()),
    }
}

/// A plain SQL identifier (publication, schema, table, column): letters, digits, `_`, `$`.
///
/// Deliberately stricter than what quoting could carry: a name that needs quoting to be
/// typed in psql is almost always a typo in a config file.
pub fn validate_identifier(name: &str) -> Result<(), NameError> {
    check_length(name)?;
    let mut chars = name.chars();
    let first = chars.next().ok_or(NameError::Empty)?;
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(NameError::BadIdentifierChar(first));
    }
    match chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '$')) {
        Some(bad) => Err(NameError::BadIdentifierChar(bad)),
        None => Ok(()),
    }
}

fn check_length(name: &str) -> Result<(), NameError> {
    match name.len() {
        0 => Err(NameError::Empty),
        n if n > MAX_IDENTIFIER_BYTES => Err(NameError::TooLong(n)),
        _ => Ok(()),
    }
}

/// `name` as a double-quoted SQL identifier, inner quotes doubled.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a single-quoted SQL string literal, inner quotes doubled.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A validated `schema.table` name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// `"schema"."table"`, ready to put into a statement.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            quote_identifier(&self.schema),
            quote_identifier(&self.table)
        )
    }
}

impl FromStr for TableName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (schema, table) = s.split_once('.').ok_or(NameError::NotQualified)?;
        validate_identifier(schema)?;
        validate_identifier(table)?;
        Ok(TableName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(validate_slot_name("outbox_relay_1").is_ok());
        assert_eq!(validate_slot_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_slot_name("Outbox"),
            Err(NameError::BadSlotChar('O'))
        );
        assert_eq!(validate_slot_name("a-b"), Err(NameError::BadSlotChar('-')));
        assert_eq!(
            validate_slot_name(&"a".repeat(64)),
            Err(NameError::TooLong(64))
        );
    }

    #[test]
    fn identifiers_refuse_anything_that_could_escape_quotes() {
        assert!(validate_identifier("Outbox_2$").is_ok());
        for bad in ["", "1abc", "$x", "a b", "a\"b", "a;drop", "a'b", "é"] {
            assert!(validate_identifier(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn quoting_doubles_inner_quotes() {
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn table_names_need_a_schema() {
        let t: TableName = "public.outbox".parse().unwrap();
        assert_eq!(t.quoted(), "\"public\".\"outbox\"");
        assert_eq!(t.to_string(), "public.outbox");
        assert_eq!("outbox".parse::<TableName>(), Err(NameError::NotQualified));
        assert!("public.out box".parse::<TableName>().is_err());
    }
}
