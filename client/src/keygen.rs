//! Fresh signing keys and their public JWKs, made at test time: the tests and
//! benchmarks of identity-provider tokens sign as a provider would (feature
//! `keygen`; never for production keys).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand_core_06::OsRng;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("no key generation for {0:?}")]
    Unsupported(Algorithm),
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("the public key does not make a JWK: {0}")]
    Jwk(#[from] serde_json::Error),
}

/// A private key, the algorithm it signs with, its `kid`, and the public
/// halves a provider publishes (JWK and PEM).
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
    public_pem: String,
}

impl SigningKey {
    /// RSA keys (RS*, PS*) are 2048 bits; EC keys are on the curve the
    /// algorithm names; EdDSA is Ed25519.
    pub fn generate(alg: Algorithm, kid: &str) -> Result<Self, KeygenError> {
        let (encoding, public, public_pem) = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => rsa_key()?,
            Algorithm::ES256 => p256_key()?,
            Algorithm::ES384 => p384_key()?,
            Algorithm::EdDSA => ed25519_key()?,
            other => return Err(KeygenError::Unsupported(other)),
        };
        let mut jwk = serde_json::json!({"kid": kid, "use": "sig", "alg": alg_name(alg)});
        if let (Some(jwk), serde_json::Value::Object(public)) = (jwk.as_object_mut(), public) {
            jwk.extend(public);
        }
        Ok(Self {
            alg,
            kid: kid.to_owned(),
            encoding,
            jwk: serde_json::from_value(jwk)?,
            public_pem,
        })
    }

    /// A JWT of `claims` with this key's `alg` and `kid` in its header.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(&header, claims)
    }

    /// A JWT with a header of the caller's choosing (a forged `kid`, none).
    pub fn sign_with(
        &self,
        header: &Header,
        claims: &impl Serialize,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(header, claims, &self.encoding)
    }

    /// The public key as a provider's JWKS lists it (`kid`, `alg`, `use`).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The public key as SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY`).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }
}

/// One algorithm of each key family and curve (for tests and benchmarks
/// that cover every kind of key).
pub const ONE_PER_KIND: [Algorithm; 5] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The JWKS document of `keys`.
pub fn jwk_set<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> JwkSet {
    JwkSet {
        keys: keys.into_iter().map(|k| k.jwk.clone()).collect(),
    }
}

fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn failed(e: impl std::fmt::Display) -> KeygenError {
    KeygenError::Generate(e.to_string())
}

type Generated = (EncodingKey, serde_json::Value, String);

fn rsa_key() -> Result<Generated, KeygenError> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut OsRng, 2048).map_err(failed)?;
    let public = private.to_public_key();
    let der = private.to_pkcs1_der().map_err(failed)?;
    let jwk = serde_json::json!({
        "kty": "RSA",
        "n": b64(&public.n().to_bytes_be()),
        "e": b64(&public.e().to_bytes_be()),
    });
    let pem = public.to_public_key_pem(LineEnding::LF).map_err(failed)?;
    Ok((EncodingKey::from_rsa_der(der.as_bytes()), jwk, pem))
}

/// The P-256 and P-384 key makers differ only in their curve's crate.
macro_rules! ec_key {
    ($name:ident, $curve:ident, $crv:literal) => {
        fn $name() -> Result<Generated, KeygenError> {
            use $curve::elliptic_curve::sec1::ToEncodedPoint;
            use $curve::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let private = $curve::SecretKey::random(&mut OsRng);
            let point = private.public_key().to_encoded_point(false);
            let (x, y) = point.x().zip(point.y()).ok_or_else(|| failed("no point"))?;
            let jwk = serde_json::json!({"kty": "EC", "crv": $crv, "x": b64(x), "y": b64(y)});
            let der = private.to_pkcs8_der().map_err(failed)?;
            let pem = private
                .public_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(failed)?;
            Ok((EncodingKey::from_ec_der(der.as_bytes()), jwk, pem))
        }
    };
}

ec_key!(p256_key, p256, "P-256");
ec_key!(p384_key, p384, "P-384");

fn ed25519_key() -> Result<Generated, KeygenError> {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let private = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let public = private.verifying_key();
    let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(public.as_bytes())});
    let der = private.to_pkcs8_der().map_err(failed)?;
    let pem = public.to_public_key_pem(LineEnding::LF).map_err(failed)?;
    Ok((EncodingKey::from_ed_der(der.as_bytes()), jwk, pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn every_algorithm_signs_what_its_jwk_and_pem_verify() {
        for alg in ONE_PER_KIND {
            let key = SigningKey::generate(alg, "k1").unwrap();
            let token = key
                .sign(&serde_json::json!({"sub": "alice", "exp": u64::MAX / 2}))
                .unwrap();
            let from_jwk = DecodingKey::from_jwk(key.jwk()).unwrap();
            let pem = key.public_pem().as_bytes();
            let from_pem = match alg {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                _ => DecodingKey::from_rsa_pem(pem),
            }
            .unwrap();
            for decoding in [from_jwk, from_pem] {
                let claims = jsonwebtoken::decode::<serde_json::Value>(
                    &token,
                    &decoding,
                    &Validation::new(alg),
                );
                assert_eq!(claims.unwrap().claims["sub"], "alice", "{alg:?}");
            }
        }
    }
}
