use super::*;
use proptest::prelude::*;
use serde_json::json;
use std::sync::OnceLock;
use switchboard_client::keygen::SigningKey;
use switchboard_client::token::mint_hs256;

const SECRET: &str = "0123456789abcdef0123";

fn local() -> Issuer {
    let key = DecodingKey::from_secret(SECRET.as_bytes());
    Issuer::new(
        Policy::local(5),
        vec![VerifyKey::new(None, Algorithm::HS256, key)],
        None,
    )
}

fn issuer(name: &str, key: &SigningKey) -> Issuer {
    let doc = serde_json::to_string(key.jwk()).unwrap();
    let keys = keys::from_file_text(&doc, &Allowed::default()).unwrap();
    let policy = Policy {
        issuer: Some(name.into()),
        audience: vec!["sb".into()],
        ..Policy::local(5)
    };
    Issuer::new(policy, keys, None)
}

/// Two providers' keys, made once per test binary.
fn keys() -> &'static (SigningKey, SigningKey) {
    static KEYS: OnceLock<(SigningKey, SigningKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            SigningKey::generate(Algorithm::ES256, "a1").unwrap(),
            SigningKey::generate(Algorithm::EdDSA, "b1").unwrap(),
        )
    })
}

fn claims(iss: &str, sub: &str) -> serde_json::Value {
    let exp = jsonwebtoken::get_current_timestamp() + 60;
    json!({"iss": iss, "aud": "sb", "sub": sub, "exp": exp})
}

fn two_issuers() -> Authenticator {
    let (a, b) = keys();
    Authenticator::new(
        Some(local()),
        vec![
            issuer("https://a.example", a),
            issuer("https://b.example", b),
        ],
    )
}

#[tokio::test]
async fn verifies_good_tokens_and_refuses_bad_ones() {
    let auth = Authenticator::new(Some(local()), Vec::new());
    let good = mint_hs256(SECRET, "alice", 60).unwrap();
    assert_eq!(auth.verify(&good).await.unwrap().user.as_str(), "alice");
    assert!(auth
        .verify_header(Some(&format!("Bearer {good}")))
        .await
        .is_ok());
    for bad in [
        mint_hs256("another-secret-123456", "alice", 60).unwrap(),
        "garbage".into(),
        mint_hs256(SECRET, "bad user", 60).unwrap(),
        mint_hs256(SECRET, "alice", -3600).unwrap(),
        mint_hs256(SECRET, "system:billing", 60).unwrap(),
    ] {
        assert!(auth.verify(&bad).await.is_err(), "{bad}");
    }
    assert!(auth.verify_header(None).await.is_err());
}

#[tokio::test]
async fn a_token_is_checked_only_with_the_keys_of_the_issuer_it_names() {
    let (a, b) = keys();
    let auth = two_issuers();
    let ok = auth
        .verify(&a.sign(&claims("https://a.example", "alice")).unwrap())
        .await;
    assert_eq!(ok.unwrap().user.as_str(), "alice");
    assert!(auth
        .verify(&b.sign(&claims("https://b.example", "bob")).unwrap())
        .await
        .is_ok());
    // B's key, B's kid, but claiming to be A's: A's keys do not fit.
    let forged = b.sign(&claims("https://a.example", "alice")).unwrap();
    assert!(matches!(auth.verify(&forged).await, Err(AuthError::NoKey)));
    // B's key with A's kid and alg in the header: A's key does not verify it.
    let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
    header.kid = Some("a1".into());
    let forged = b
        .sign_with(&header, &claims("https://a.example", "alice"))
        .unwrap();
    assert!(auth.verify(&forged).await.is_err());
    // An issuer nobody configured, and a provider token with no local keys.
    let stranger = a.sign(&claims("https://a.example/", "alice")).unwrap();
    assert!(matches!(
        auth.verify(&stranger).await,
        Err(AuthError::UnknownIssuer(_))
    ));
    let no_local = Authenticator::new(None, vec![issuer("https://a.example", a)]);
    let dev = mint_hs256(SECRET, "alice", 60).unwrap();
    assert!(matches!(
        no_local.verify(&dev).await,
        Err(AuthError::NoLocalKeys)
    ));
}

#[tokio::test]
async fn the_header_alg_never_picks_the_algorithm() {
    let (a, _) = keys();
    let auth = two_issuers();
    // alg none: no such algorithm.
    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(claims("https://a.example", "alice").to_string().as_bytes())
    );
    assert!(matches!(auth.verify(&none).await, Err(AuthError::Token(_))));
    // HS256 keyed with the issuer's public key: no HS256 key of that issuer.
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("a1".into());
    let secret = jsonwebtoken::EncodingKey::from_secret(a.public_pem().as_bytes());
    let confused =
        jsonwebtoken::encode(&header, &claims("https://a.example", "alice"), &secret).unwrap();
    assert!(matches!(
        auth.verify(&confused).await,
        Err(AuthError::NoKey)
    ));
}

fn base64_url(bytes: &[u8]) -> String {
    use std::fmt::Write;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let _ = out.write_char(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever issuer a token names and whichever provider signed it, it
    /// verifies exactly when the named issuer is configured and its key signed it.
    #[test]
    fn only_the_named_issuers_own_key_verifies(
        named in prop_oneof![
            Just("https://a.example".to_owned()),
            Just("https://b.example".to_owned()),
            "https://[a-c]\\.example/?",
        ],
        signer_is_a in any::<bool>(),
    ) {
        let (a, b) = keys();
        let signer = if signer_is_a { a } else { b };
        let token = signer.sign(&claims(&named, "carol")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let verified = rt.block_on(two_issuers().verify(&token)).is_ok();
        let owner = if signer_is_a { "https://a.example" } else { "https://b.example" };
        prop_assert_eq!(verified, named == owner);
    }
}

#[tokio::test]
async fn configured_issuers_verify_and_the_summary_names_them_without_keys() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        jwt: JwtArgs,
    }
    let (a, _) = keys();
    let dir = std::env::temp_dir().join(format!("sb-auth-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("a.pem");
    std::fs::write(&pem, a.public_pem()).unwrap();
    let args = Cmd::parse_from([
        "x",
        "--jwt-secret",
        SECRET,
        "--jwt-issuer",
        "https://a.example",
        "--jwt-keys-file",
        pem.to_str().unwrap(),
        "--jwt-audience",
        "sb",
    ])
    .jwt;
    let auth = Authenticator::from_args(&args).unwrap();
    let token = a.sign(&claims("https://a.example", "alice")).unwrap();
    assert_eq!(auth.verify(&token).await.unwrap().user.as_str(), "alice");
    let dev = mint_hs256(SECRET, "bob", 60).unwrap();
    assert_eq!(auth.verify(&dev).await.unwrap().user.as_str(), "bob");
    let summary = auth.summary().join("\n");
    assert!(summary.contains("tokens without iss: HS256"), "{summary}");
    assert!(
        summary.contains("issuer https://a.example: keys file"),
        "{summary}"
    );
    assert!(summary.contains("audience sb"), "{summary}");
    let pem_body = a.public_pem().lines().nth(1).unwrap();
    assert!(
        !summary.contains(SECRET) && !summary.contains(pem_body),
        "{summary}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn an_https_jwks_fetch_that_fails_keeps_no_keys_and_never_panics() {
    // TLS on aws-lc is named by the client itself: no process-wide default
    // provider is needed (a test process has none installed).
    let http = fetch::JwksClient::new().unwrap();
    let remote = remote::RemoteKeys::new(
        "https://a.example",
        "https://127.0.0.1:1/jwks",
        Allowed::default(),
        Duration::from_secs(30),
        http.clone(),
        AuthMetrics::default(),
    );
    assert!(remote.refresh().await.is_err());
    assert!(remote.current().is_empty());
    let huge = http.get("not a url", 10, Duration::from_secs(1)).await;
    assert!(matches!(huge, Err(fetch::GetError::Url(_))), "{huge:?}");
}
