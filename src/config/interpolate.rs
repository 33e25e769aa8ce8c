//! `${ENV_VAR}` interpolation: how secrets get into the config without living in the file.
//!
//! The topic template uses Debezium's `${routedByValue}` placeholder, so `${...}` cannot
//! mean "environment variable" everywhere. The rule, applied to every string value:
//!
//! - `${NAME}` where NAME is an environment-variable name, `[A-Z_][A-Z0-9_]*` (upper case,
//!   as environment variables are by convention), is replaced by that variable's value.
//!   An unset variable is an error that names the config key.
//! - `$${` is a literal `${`, for the rare value that needs one before an upper-case name.
//! - Any other `${...}` (containing a lower-case letter or other character, such as
//!   `${routedByValue}`) is left as written, for the component that owns it.

/// An upper-case `${NAME}` whose variable is not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name} is not set (referenced as ${{{name}}}); export it or remove the reference")]
pub struct UnsetVariable {
    pub name: String,
}

/// Expands `${NAME}` in `input`, looking variables up with `lookup`.
pub fn interpolate(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, UnsetVariable> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some((name, after)) = env_reference(tail) {
            let value = lookup(name).ok_or_else(|| UnsetVariable {
                name: name.to_owned(),
            })?;
            out.push_str(&value);
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// If `text` starts with `${NAME}` and NAME is an environment-variable name, NAME and the rest.
fn env_reference(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_prefix("${")?;
    let end = inner.find('}')?;
    let name = &inner[..end];
    let mut chars = name.chars();
    let first = chars.next()?;
    let is_env_name = (first.is_ascii_uppercase() || first == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    is_env_name.then(|| (name, &inner[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PGPASSWORD" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn upper_case_names_are_replaced() {
        assert_eq!(
            interpolate("postgres://u:${PGPASSWORD}@h/db", env).unwrap(),
            "postgres://u:s3cret@h/db"
        );
        assert_eq!(interpolate("a${EMPTY}b", env).unwrap(), "ab");
    }

    #[test]
    fn debezium_placeholders_are_left_alone() {
        let topic = "outbox.event.${routedByValue}";
        assert_eq!(interpolate(topic, env).unwrap(), topic);
        assert_eq!(
            interpolate("${a-b} $ $x ${", env).unwrap(),
            "${a-b} $ $x ${"
        );
    }

    #[test]
    fn double_dollar_escapes() {
        assert_eq!(interpolate("$${PGPASSWORD}", env).unwrap(), "${PGPASSWORD}");
    }

    #[test]
    fn unset_variable_is_named() {
        let err = interpolate("x${NOPE_1}", env).unwrap_err();
        assert_eq!(err.name, "NOPE_1");
        assert!(err.to_string().contains("NOPE_1"));
    }
}
