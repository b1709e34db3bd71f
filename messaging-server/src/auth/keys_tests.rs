use super::*;
use serde_json::json;
use switchboard_client::keygen::{jwk_set, SigningKey};

fn token(key: &SigningKey) -> String {
    key.sign(&json!({"sub": "alice", "exp": 4_000_000_000u64}))
        .unwrap()
}

fn jwk_value(key: &SigningKey) -> Value {
    serde_json::to_value(key.jwk()).unwrap()
}

#[test]
fn a_jwk_set_yields_one_key_per_algorithm_and_each_verifies_its_own_tokens() {
    let keys: Vec<_> = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
        .into_iter()
        .enumerate()
        .map(|(i, alg)| SigningKey::generate(alg, &format!("k{i}")).unwrap())
        .collect();
    let doc = serde_json::to_vec(&jwk_set(&keys)).unwrap();
    let (loaded, skipped) = from_jwk_set(&doc, &Allowed::default()).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(loaded.len(), 3);
    for (key, verify) in keys.iter().zip(&loaded) {
        assert_eq!(
            (verify.kid.as_deref(), verify.alg),
            (Some(key.kid.as_str()), key.alg)
        );
        assert!(verify.verify(&token(key)).is_ok());
        for other in keys.iter().filter(|o| o.kid != key.kid) {
            assert!(verify.verify(&token(other)).is_err());
        }
    }
}

#[test]
fn the_algorithm_is_the_keys_never_the_tokens() {
    let rsa = SigningKey::generate(Algorithm::RS256, "r").unwrap();
    let keys = from_jwk(&jwk_value(&rsa), &Allowed::default()).unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].fits(Some("r"), Algorithm::RS256));
    assert!(!keys[0].fits(Some("r"), Algorithm::HS256));
    assert!(!keys[0].fits(Some("r"), Algorithm::PS256));
    assert!(!keys[0].fits(Some("other"), Algorithm::RS256));
    // A JWK claiming an algorithm of another key type is refused.
    let mut lying = jwk_value(&rsa);
    lying["alg"] = json!("ES256");
    assert!(from_jwk(&lying, &Allowed::default()).is_err());
    // So is a symmetric key in a key set, and an encryption key.
    let oct = json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "s"});
    assert!(from_jwk(&oct, &Allowed::default()).is_err());
    let mut enc = jwk_value(&rsa);
    enc["use"] = json!("enc");
    assert!(from_jwk(&enc, &Allowed::default()).is_err());
}

#[test]
fn keys_without_alg_verify_what_the_issuer_allows_of_their_type() {
    let rsa = SigningKey::generate(Algorithm::PS256, "p").unwrap();
    let mut bare = jwk_value(&rsa);
    bare.as_object_mut().unwrap().remove("alg");
    let default = from_jwk(&bare, &Allowed::default()).unwrap();
    assert_eq!(
        default.iter().map(|k| k.alg).collect::<Vec<_>>(),
        [Algorithm::RS256]
    );
    let allowed = Allowed(Some(vec![Algorithm::PS256, Algorithm::ES256]));
    let configured = from_jwk(&bare, &allowed).unwrap();
    assert_eq!(
        configured.iter().map(|k| k.alg).collect::<Vec<_>>(),
        [Algorithm::PS256]
    );
    assert!(configured[0].verify(&token(&rsa)).is_ok());
    // An explicit alg outside the issuer's list is refused.
    let es = SigningKey::generate(Algorithm::ES384, "e").unwrap();
    assert!(from_jwk(&jwk_value(&es), &allowed).is_err());
}

#[test]
fn pem_and_jwk_files_load_and_a_set_skips_what_it_cannot_use() {
    for alg in [Algorithm::RS256, Algorithm::ES384, Algorithm::EdDSA] {
        let key = SigningKey::generate(alg, "f").unwrap();
        let from_pem = from_file_text(key.public_pem(), &Allowed::default()).unwrap();
        assert!(from_pem
            .iter()
            .any(|k| k.alg == alg && k.verify(&token(&key)).is_ok()));
        let jwk = serde_json::to_string(key.jwk()).unwrap();
        assert!(from_file_text(&jwk, &Allowed::default()).unwrap()[0]
            .verify(&token(&key))
            .is_ok());
    }
    let good = SigningKey::generate(Algorithm::ES256, "good").unwrap();
    let doc = json!({"keys": [
        {"kty": "EC", "crv": "P-521", "kid": "big", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "broken"},
        jwk_value(&good),
    ]});
    let (keys, skipped) = from_jwk_set(doc.to_string().as_bytes(), &Allowed::default()).unwrap();
    assert_eq!((keys.len(), skipped.len()), (1, 2), "{skipped:?}");
    assert!(from_file_text("not a key", &Allowed::default()).is_err());
}
