//! Shared-secret keys in `Authorization: Bearer` (API keys of the publish
//! API, the operator's admin key), compared in constant time.

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no token")]
    Missing,
    #[error("not a valid key")]
    Wrong,
}

/// The accepted keys (none: every request is refused).
pub struct Keys(Vec<Vec<u8>>);

impl Keys {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self(keys.into_iter().map(|k| k.as_bytes().to_vec()).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Authorization: Bearer <key>`, compared with every key in full.
    pub fn check_header(&self, header: Option<&str>) -> Result<(), KeyError> {
        let given = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(KeyError::Missing)?
            .trim()
            .as_bytes();
        let matched = self.0.iter().fold(false, |any, k| any | ct_eq(k, given));
        matched.then_some(()).ok_or(KeyError::Wrong)
    }
}

/// Equal without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a
        .iter()
        .zip(b)
        .fold(u8::from(a.len() != b.len()), |acc, (x, y)| acc | (x ^ y));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_key_in_a_bearer_header_passes() {
        let keys = Keys::new(["k1-0123456789", "k2-0123456789"]);
        assert_eq!(keys.check_header(Some("Bearer k2-0123456789")), Ok(()));
        assert_eq!(
            keys.check_header(Some("Bearer k2-012345678")),
            Err(KeyError::Wrong)
        );
        assert_eq!(
            keys.check_header(Some("k1-0123456789")),
            Err(KeyError::Missing)
        );
        assert_eq!(keys.check_header(None), Err(KeyError::Missing));
        assert_eq!(
            Keys::new([]).check_header(Some("Bearer x")),
            Err(KeyError::Wrong)
        );
    }
}
