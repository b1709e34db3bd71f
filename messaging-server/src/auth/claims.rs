//! What a token whose signature verified must also say: a pure function of
//! its claims, the issuer's policy and the clock.

use super::Verified;
use protocol::UserId;
use serde_json::{Map, Value};

/// One issuer's rules for the claims of its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The `iss` its tokens carry; `None` for the local keys, whose tokens
    /// carry no `iss`.
    pub issuer: Option<String>,
    /// When not empty, `aud` is required and must name one of these.
    pub audience: Vec<String>,
    /// The claim holding the user id (`sub` unless the provider puts it elsewhere).
    pub user_claim: String,
    /// The claim holding `{"channels", "publish"}`; `None`: top-level claims.
    pub grants_claim: Option<String>,
    /// Seconds of clock skew forgiven on `exp`, `nbf` and `iat`.
    pub leeway: u64,
}

impl Policy {
    /// The local keys' policy: `sub`, top-level grants, no audience.
    pub fn local(leeway: u64) -> Self {
        Self {
            issuer: None,
            audience: Vec::new(),
            user_claim: "sub".into(),
            grants_claim: None,
            leeway,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("no {0} claim")]
    Missing(String),
    #[error("the {0} claim is malformed")]
    Malformed(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("the token's audience is not this service")]
    Audience,
    #[error("the token's issuer is not the one its keys belong to")]
    Issuer,
    #[error("the user claim is not a valid user id: {0}")]
    User(#[from] protocol::IdError),
    #[error("system: ids belong to backends, not to user tokens")]
    SystemSubject,
}

impl Policy {
    /// Checks `claims` at `now` (unix seconds) and reads who and what they grant.
    pub fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<Verified, ClaimError> {
        let exp = date(claims, "exp")?.ok_or_else(|| ClaimError::Missing("exp".into()))?;
        if exp.saturating_add(self.leeway) < now {
            return Err(ClaimError::Expired);
        }
        if date(claims, "nbf")?.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(ClaimError::NotYetValid);
        }
        if date(claims, "iat")?.is_some_and(|iat| iat > now.saturating_add(self.leeway)) {
            return Err(ClaimError::IssuedInFuture);
        }
        let iss = match claims.get("iss") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(ClaimError::Malformed("iss".into())),
        };
        if iss != self.issuer.as_deref() {
            return Err(ClaimError::Issuer);
        }
        if !self.audience.is_empty() && !self.audience_matches(claims.get("aud"))? {
            return Err(ClaimError::Audience);
        }
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(s)) => s,
            Some(_) => return Err(ClaimError::Malformed(self.user_claim.clone())),
            None => return Err(ClaimError::Missing(self.user_claim.clone())),
        };
        if user.starts_with(protocol::api::SYSTEM_PREFIX) {
            return Err(ClaimError::SystemSubject);
        }
        let grants = match &self.grants_claim {
            None => Some(claims),
            Some(name) => match claims.get(name) {
                None => None,
                Some(Value::Object(g)) => Some(g),
                Some(_) => return Err(ClaimError::Malformed(name.clone())),
            },
        };
        Ok(Verified {
            user: UserId::new(user.as_str())?,
            exp,
            channels: strings(grants, "channels")?,
            publish: strings(grants, "publish")?,
        })
    }

    fn audience_matches(&self, aud: Option<&Value>) -> Result<bool, ClaimError> {
        let ours = |a: &Value| {
            a.as_str()
                .is_some_and(|a| self.audience.iter().any(|o| o == a))
        };
        match aud {
            None => Err(ClaimError::Missing("aud".into())),
            Some(Value::String(_)) => Ok(aud.is_some_and(ours)),
            Some(Value::Array(list)) => Ok(list.iter().any(ours)),
            Some(_) => Err(ClaimError::Malformed("aud".into())),
        }
    }
}

/// A NumericDate: seconds since the epoch, possibly with a fraction.
fn date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, ClaimError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    let malformed = || ClaimError::Malformed(name.into());
    if let Some(n) = v.as_u64() {
        return Ok(Some(n));
    }
    match v.as_f64() {
        // Truncation keeps the whole seconds of a fractional date.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(f) if (0.0..1e15).contains(&f) => Ok(Some(f as u64)),
        _ => Err(malformed()),
    }
}

fn strings(grants: Option<&Map<String, Value>>, name: &str) -> Result<Vec<String>, ClaimError> {
    let Some(v) = grants.and_then(|g| g.get(name)) else {
        return Ok(Vec::new());
    };
    let malformed = || ClaimError::Malformed(name.into());
    v.as_array()
        .ok_or_else(malformed)?
        .iter()
        .map(|s| s.as_str().map(str::to_owned).ok_or_else(malformed))
        .collect()
}

#[cfg(test)]
#[path = "claims_tests.rs"]
mod tests;
