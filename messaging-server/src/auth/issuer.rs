//! One issuer: its claim policy and its keys (fixed ones from configuration,
//! fetched ones from its JWKS). Its tokens are checked with its keys only.

use super::claims::Policy;
use super::keys::VerifyKey;
use super::remote::RemoteKeys;
use super::AuthError;
use super::Verified;
use jsonwebtoken::Header;
use serde_json::{Map, Value};
use std::sync::Arc;

pub struct Issuer {
    pub policy: Policy,
    fixed: Vec<VerifyKey>,
    remote: Option<Arc<RemoteKeys>>,
}

impl Issuer {
    pub fn new(policy: Policy, fixed: Vec<VerifyKey>, remote: Option<Arc<RemoteKeys>>) -> Self {
        Self {
            policy,
            fixed,
            remote,
        }
    }

    pub fn remote(&self) -> Option<&Arc<RemoteKeys>> {
        self.remote.as_ref()
    }

    /// Verifies `token` (whose header is `header`) at `now`, unix seconds.
    pub async fn verify(
        &self,
        token: &str,
        header: &Header,
        now: u64,
    ) -> Result<Verified, AuthError> {
        let fetched = self
            .remote
            .as_ref()
            .map(|r| r.current())
            .unwrap_or_default();
        let claims = match self.check(token, header, &fetched) {
            Some(checked) => checked?,
            None => {
                let kid = header.kid.as_deref();
                let known = |keys: &[VerifyKey]| keys.iter().any(|k| k.kid.as_deref() == kid);
                match (&self.remote, kid) {
                    // A kid none of its keys has: perhaps a key the provider
                    // just added (one refetch per interval, whoever asks).
                    (Some(remote), Some(kid)) if !known(&fetched) && !known(&self.fixed) => {
                        let fresh = remote.refetch_for(kid).await;
                        self.check(token, header, &fresh)
                            .ok_or(AuthError::NoKey)??
                    }
                    _ => return Err(AuthError::NoKey),
                }
            }
        };
        Ok(self.policy.check(&claims, now)?)
    }

    /// `None` when no key fits the header's `kid` and `alg`; otherwise the
    /// claims from the first key that verifies, or the last key's error.
    fn check(
        &self,
        token: &str,
        header: &Header,
        fetched: &[VerifyKey],
    ) -> Option<Result<Map<String, Value>, AuthError>> {
        let mut last = None;
        let fitting = self
            .fixed
            .iter()
            .chain(fetched)
            .filter(|k| k.fits(header.kid.as_deref(), header.alg));
        for key in fitting {
            match key.verify(token) {
                Ok(claims) => return Some(Ok(claims)),
                Err(e) => last = Some(Err(AuthError::Token(e))),
            }
        }
        last
    }
}
