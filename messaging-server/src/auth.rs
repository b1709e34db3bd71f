//! Client authentication (docs/protocol.md, "Authentication"): a JWT whose
//! `sub` is the user id.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use protocol::UserId;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    #[error("token subject is not a valid user id: {0}")]
    Subject(#[from] protocol::IdError),
    #[error("no token")]
    Missing,
    #[error("system: ids belong to backends, not to user tokens")]
    SystemSubject,
    #[error("not a valid API key")]
    BadApiKey,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// A token that verified: whose it is, until when (unix seconds), and the
/// channel patterns it may subscribe to and publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    pub exp: u64,
    pub channels: Vec<String>,
    pub publish: Vec<String>,
}

#[derive(Clone)]
pub struct Authenticator {
    key: Option<(DecodingKey, Validation)>,
}

impl Authenticator {
    pub fn new(secret: Option<&str>, public_key_pem: Option<&str>) -> Result<Self, AuthError> {
        let key = match (public_key_pem, secret) {
            (Some(pem), _) => Some((DecodingKey::from_rsa_pem(pem.as_bytes())?, Algorithm::RS256)),
            (None, Some(s)) => Some((DecodingKey::from_secret(s.as_bytes()), Algorithm::HS256)),
            (None, None) => None,
        };
        Ok(Self {
            key: key.map(|(k, alg)| {
                let mut v = Validation::new(alg);
                v.set_required_spec_claims(&["sub", "exp"]);
                v.leeway = 5;
                (k, v)
            }),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let (key, validation) = self.key.as_ref().ok_or(AuthError::Missing)?;
        let data = decode::<Claims>(token, key, validation)?;
        if data.claims.sub.starts_with(protocol::api::SYSTEM_PREFIX) {
            return Err(AuthError::SystemSubject);
        }
        let claims = data.claims;
        Ok(Verified {
            user: UserId::new(claims.sub)?,
            exp: claims.exp,
            channels: claims.channels,
            publish: claims.publish,
        })
    }

    /// `Authorization: Bearer <jwt>`.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Verified, AuthError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AuthError::Missing)?;
        self.verify(token.trim())
    }
}

/// The keys backends publish with (`SWITCHBOARD_API_KEYS`).
pub struct ApiKeys(Vec<Vec<u8>>);

impl ApiKeys {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self(keys.into_iter().map(|k| k.as_bytes().to_vec()).collect())
    }

    /// `Authorization: Bearer <api key>`, compared in constant time.
    pub fn check_header(&self, header: Option<&str>) -> Result<(), AuthError> {
        let given = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AuthError::Missing)?
            .trim()
            .as_bytes();
        // Every key is compared in full, whichever matches.
        let matched = self.0.iter().fold(false, |any, k| any | ct_eq(k, given));
        matched.then_some(()).ok_or(AuthError::BadApiKey)
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
    use switchboard_client::token::mint_hs256;

    #[test]
    fn verifies_good_tokens_and_refuses_bad_ones() {
        let secret = "0123456789abcdef0123";
        let auth = Authenticator::new(Some(secret), None).unwrap();
        let good = mint_hs256(secret, "alice", 60).unwrap();
        assert_eq!(auth.verify(&good).unwrap().user.as_str(), "alice");
        assert!(auth.verify_header(Some(&format!("Bearer {good}"))).is_ok());
        assert!(auth
            .verify(&mint_hs256("another-secret-123456", "alice", 60).unwrap())
            .is_err());
        assert!(auth.verify("garbage").is_err());
        assert!(auth
            .verify(&mint_hs256(secret, "bad user", 60).unwrap())
            .is_err());
        assert!(auth
            .verify(&mint_hs256(secret, "alice", -3600).unwrap())
            .is_err());
        assert!(auth.verify_header(None).is_err());
    }
}
