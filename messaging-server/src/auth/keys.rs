//! Public keys and the one algorithm each verifies: from a JWKS document, a
//! JWK or a PEM file. The algorithm is the key's, never the token's: a token
//! is only checked with keys whose algorithm equals its header's `alg`.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a JWK: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unusable key: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
    #[error("{0}")]
    Skipped(String),
    #[error("the PEM holds no public key of a supported type")]
    Pem,
}

/// One verification key: a public key with the algorithm it verifies.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({:?}, {:?})", self.kid, self.alg)
    }
}

impl VerifyKey {
    pub fn new(kid: Option<String>, alg: Algorithm, key: DecodingKey) -> Self {
        // Signature and `alg` only: the claims are the policy's to check.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Self {
            kid,
            alg,
            key,
            validation,
        }
    }

    /// The token's claims if this key signed it.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map(|data| data.claims)
    }

    /// Whether this key may check a token whose header says `kid` and `alg`:
    /// same algorithm, and same `kid` (a key without one, from a PEM file,
    /// answers to any).
    pub fn fits(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        self.alg == alg
            && match (&self.kid, kid) {
                (Some(ours), Some(theirs)) => ours == theirs,
                _ => true,
            }
    }
}

/// The algorithms a key without an `alg` of its own verifies, by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            Self::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
            Self::P256 => &[ES256],
            Self::P384 => &[ES384],
            Self::Ed25519 => &[EdDSA],
        }
    }
}

/// Which algorithms an issuer accepts; a key without an `alg` gets these
/// (of its type), and RSA keys without one verify RS256 unless configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed(pub Option<Vec<Algorithm>>);

impl Allowed {
    fn permits(&self, alg: Algorithm) -> bool {
        self.0.as_ref().is_none_or(|list| list.contains(&alg))
    }

    fn for_untagged(&self, kind: KeyType) -> Vec<Algorithm> {
        match (&self.0, kind) {
            (None, KeyType::Rsa) => vec![Algorithm::RS256],
            (None, _) => kind.algorithms().to_vec(),
            (Some(list), _) => kind
                .algorithms()
                .iter()
                .copied()
                .filter(|a| list.contains(a))
                .collect(),
        }
    }
}

/// The members of a JWK this needs; anything else in it is ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn field<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, KeyError> {
    v.as_deref()
        .ok_or_else(|| KeyError::Skipped(format!("no {name}")))
}

/// The keys one JWK yields (one per algorithm it verifies).
pub fn from_jwk(jwk: &Value, allowed: &Allowed) -> Result<Vec<VerifyKey>, KeyError> {
    let raw = RawJwk::deserialize(jwk)?;
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err(KeyError::Skipped("not a signing key".into()));
    }
    let (kind, key) = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => (
            KeyType::Rsa,
            DecodingKey::from_rsa_components(field(&raw.n, "n")?, field(&raw.e, "e")?)?,
        ),
        ("EC", Some(crv @ ("P-256" | "P-384"))) => (
            if crv == "P-256" {
                KeyType::P256
            } else {
                KeyType::P384
            },
            DecodingKey::from_ec_components(field(&raw.x, "x")?, field(&raw.y, "y")?)?,
        ),
        ("OKP", Some("Ed25519")) => (
            KeyType::Ed25519,
            DecodingKey::from_ed_components(field(&raw.x, "x")?)?,
        ),
        (kty, crv) => {
            // Symmetric (`oct`) keys never come from a key set: a public
            // document must not hold a secret that verifies tokens.
            let what = format!("key type {kty} {}", crv.unwrap_or_default());
            return Err(KeyError::Skipped(format!("unsupported {}", what.trim())));
        }
    };
    let algorithms = match raw.alg.as_deref() {
        Some(name) => {
            let alg = Algorithm::from_str(name)
                .map_err(|_| KeyError::Skipped(format!("unsupported alg {name}")))?;
            if !kind.algorithms().contains(&alg) || !allowed.permits(alg) {
                return Err(KeyError::Skipped(format!(
                    "alg {name} not accepted for this key"
                )));
            }
            vec![alg]
        }
        None => allowed.for_untagged(kind),
    };
    Ok(algorithms
        .into_iter()
        .map(|alg| VerifyKey::new(raw.kid.clone(), alg, key.clone()))
        .collect())
}

/// Every usable key of a JWKS document, and why the others were left out.
pub fn from_jwk_set(
    doc: &[u8],
    allowed: &Allowed,
) -> Result<(Vec<VerifyKey>, Vec<String>), KeyError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = serde_json::from_slice(doc)?;
    let (mut keys, mut skipped) = (Vec::new(), Vec::new());
    for jwk in &set.keys {
        match from_jwk(jwk, allowed) {
            Ok(k) => keys.extend(k),
            Err(e) => skipped.push(format!("{}: {e}", jwk.get("kid").unwrap_or(&Value::Null))),
        }
    }
    Ok((keys, skipped))
}

/// A public key in PEM (SubjectPublicKeyInfo, or PKCS#1 for RSA).
pub fn from_pem(pem: &str, allowed: &Allowed) -> Result<Vec<VerifyKey>, KeyError> {
    let bytes = pem.as_bytes();
    let typed = [
        (KeyType::Rsa, DecodingKey::from_rsa_pem(bytes)),
        (KeyType::P256, DecodingKey::from_ec_pem(bytes)),
        (KeyType::Ed25519, DecodingKey::from_ed_pem(bytes)),
    ];
    let (kind, key) = typed
        .into_iter()
        .find_map(|(kind, key)| key.ok().map(|k| (kind, k)))
        .ok_or(KeyError::Pem)?;
    // A PEM EC key does not say its curve here: both ES algorithms are
    // offered and the wrong one simply fails to verify.
    let mut algorithms = allowed.for_untagged(kind);
    if kind == KeyType::P256 {
        algorithms.extend(allowed.for_untagged(KeyType::P384));
    }
    Ok(algorithms
        .into_iter()
        .map(|alg| VerifyKey::new(None, alg, key.clone()))
        .collect())
}

/// A key file: a JWKS document, one JWK, or PEM.
pub fn from_file_text(text: &str, allowed: &Allowed) -> Result<Vec<VerifyKey>, KeyError> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return from_pem(text, allowed);
    }
    let doc: Value = serde_json::from_str(trimmed)?;
    if doc.get("keys").is_some() {
        let (keys, skipped) = from_jwk_set(trimmed.as_bytes(), allowed)?;
        if keys.is_empty() {
            return Err(KeyError::Skipped(format!(
                "no usable key: {}",
                skipped.join("; ")
            )));
        }
        return Ok(keys);
    }
    from_jwk(&doc, allowed)
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
