//! Log sequence numbers: positions in PostgreSQL's write-ahead log.
//!
//! An LSN is a 64-bit byte offset that Postgres prints as two hex halves (`16/B374D848`).
//! It is its own type so that an LSN cannot be confused with a count or a length, and so
//! that the text form used in logs, SQL and `START_REPLICATION` is written in one place.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log. `Lsn(0)` is `0/0`, "from the slot's confirmed position".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`: when given to `START_REPLICATION`, the server starts at the slot's confirmed LSN.
    pub const ZERO: Lsn = Lsn(0);

    /// Bytes of WAL between `self` and an earlier position, 0 when `earlier` is not earlier.
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text form was not `HEX/HEX` with each half at most 32 bits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected two hex numbers separated by '/', e.g. 16/B374D848")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
    }

    #[test]
    fn malformed_text_is_rejected() {
        for text in ["", "16", "16/", "/1", "G/1", "1/2/3", "100000000/0"] {
            assert!(text.parse::<Lsn>().is_err(), "{text} parsed");
        }
    }

    #[test]
    fn bytes_after_never_underflows() {
        assert_eq!(Lsn(10).bytes_after(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_after(Lsn(10)), 0);
    }
}
