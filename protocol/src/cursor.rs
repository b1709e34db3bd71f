//! A device's position in its user's partition: `"<log_epoch>:<offset>"`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `offset` is the Kafka offset of the last record delivered to the device;
/// resuming replays records strictly after it. `-1` means "before the first".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cursor {
    pub log_epoch: String,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cursor must be \"<log_epoch>:<offset>\"")]
pub struct CursorError;

impl Cursor {
    pub fn new(log_epoch: impl Into<String>, offset: i64) -> Self {
        Self {
            log_epoch: log_epoch.into(),
            offset,
        }
    }
}

impl std::str::FromStr for Cursor {
    type Err = CursorError;
    fn from_str(s: &str) -> Result<Self, CursorError> {
        let (epoch, offset) = s.rsplit_once(':').ok_or(CursorError)?;
        let offset: i64 = offset.parse().map_err(|_| CursorError)?;
        let epoch_ok = !epoch.is_empty()
            && epoch.len() <= 64
            && epoch
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !epoch_ok || offset < -1 {
            return Err(CursorError);
        }
        Ok(Self::new(epoch, offset))
    }
}

impl TryFrom<String> for Cursor {
    type Error = CursorError;
    fn try_from(s: String) -> Result<Self, CursorError> {
        s.parse()
    }
}

impl From<Cursor> for String {
    fn from(c: Cursor) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.log_epoch, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!("e1:42".parse(), Ok(Cursor::new("e1", 42)));
        assert_eq!("e1:-1".parse(), Ok(Cursor::new("e1", -1)));
        for bad in ["", "e1", ":5", "e1:x", "e1:-2", "e:1:2", "é:1"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(epoch in "[a-f0-9]{1,32}", offset in -1i64..i64::MAX) {
            let c = Cursor::new(epoch, offset);
            prop_assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
        }
    }
}
