//! Tokens from identity providers (docs/operations.md, "Identity
//! providers"): keys made at test time, JWKS served by a stand-in provider
//! over HTTP, tokens presented at `hello` as a client would.

use harness::idp::Provider;
use harness::{Event, Infra, Stack, WsClient};
use jsonwebtoken::{Algorithm, Header};
use protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_client::keygen::{jwk_set, SigningKey};

const AUDIENCE: &str = "switchboard";
const GRANTS: &str = "https://example.com/switchboard";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A provider's access token for `user`, valid ten minutes, with `extra`
/// claims laid over it (`null` removes one).
fn claims(iss: &str, user: &str, extra: Value) -> Value {
    let mut c = json!({"iss": iss, "aud": AUDIENCE, "sub": user, "iat": now(), "exp": now() + 600});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        for (k, v) in extra {
            match v {
                Value::Null => c.remove(&k),
                v => c.insert(k, v),
            };
        }
    }
    c
}

/// The user id a `hello` with `token` was welcomed as, or the close code.
async fn hello(
    stack: &Stack,
    user: &str,
    token: &str,
) -> anyhow::Result<Result<String, Option<u16>>> {
    Ok(match open(stack, user, token).await? {
        (_, Ok(user)) => Ok(user),
        (_, Err(code)) => Err(code),
    })
}

async fn open(
    stack: &Stack,
    user: &str,
    token: &str,
) -> anyhow::Result<(WsClient, Result<String, Option<u16>>)> {
    let (_, ws_url) = stack.route(user).await?;
    let mut c = WsClient::connect(&ws_url).await?;
    let outcome = match c.hello(token, "d1", None).await? {
        Event::Frame(ServerFrame::Welcome(w)) => Ok(w.user_id.to_string()),
        Event::Closed(code) => Err(code),
        Event::Frame(other) => anyhow::bail!("hello got {other:?}"),
    };
    Ok((c, outcome))
}

async fn refused(stack: &Stack, what: &str, token: &str) -> anyhow::Result<()> {
    match hello(stack, "mallory", token).await? {
        Err(Some(4001)) => Ok(()),
        other => anyhow::bail!("{what}: expected close 4001, got {other:?}"),
    }
}

fn write_file(dir: &std::path::Path, name: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sb-idp-{name}-{}", uuid::Uuid::new_v4().simple()))
}

const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

pub async fn provider_tokens_of_each_algorithm_and_each_refusal(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let (alpha, beta) = (
        Provider::start("alpha").await?,
        Provider::start("beta").await?,
    );
    let keys = ALGORITHMS
        .iter()
        .map(|alg| SigningKey::generate(*alg, &format!("alpha-{alg:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    alpha.publish(jwk_set(&keys));
    let beta_key = SigningKey::generate(Algorithm::ES256, "beta-1")?;
    beta.publish(jwk_set([&beta_key]));
    let fixed = SigningKey::generate(Algorithm::EdDSA, "fixed")?;
    let dir = scratch("each");
    let pem = write_file(&dir, "fixed.pem", fixed.public_pem())?;
    let issuers = json!([
        {"issuer": alpha.issuer, "jwks_url": alpha.jwks_url(), "audience": [AUDIENCE], "grants_claim": GRANTS},
        {"issuer": beta.issuer, "jwks_url": beta.jwks_url(), "user_claim": "uid"},
        {"issuer": "https://static.example", "keys_file": pem},
    ]);
    let file = write_file(&dir, "issuers.json", &issuers.to_string())?;
    const MIN_REFETCH: Duration = Duration::from_secs(2);
    let stack = Stack::start_with(&infra, "idp", 1, false, |c| {
        c.jwt.issuers_file = Some(file.clone());
        c.jwt.jwks_min_refetch = MIN_REFETCH;
        c.jwt.jwks_refresh = Duration::from_secs(600);
    })
    .await?;

    // Every algorithm, the configured user claim, a key file, and the
    // development secret beside them.
    for key in &keys {
        let user = format!("alice-{:?}", key.alg);
        let token = key.sign(&claims(&alpha.issuer, &user, json!({})))?;
        let got = hello(&stack, &user, &token).await?;
        anyhow::ensure!(
            got.as_deref() == Ok(user.as_str()),
            "{:?} token: {got:?}",
            key.alg
        );
    }
    let token = beta_key.sign(&claims(
        &beta.issuer,
        "ignored",
        json!({"uid": "auth0|bob", "aud": null}),
    ))?;
    let got = hello(&stack, "auth0|bob", &token).await?;
    anyhow::ensure!(got.as_deref() == Ok("auth0|bob"), "user claim: {got:?}");
    let token = fixed.sign(&claims("https://static.example", "carol", json!({})))?;
    anyhow::ensure!(
        hello(&stack, "carol", &token).await?.is_ok(),
        "key file token refused"
    );
    anyhow::ensure!(
        hello(&stack, "dave", &Stack::token("dave")).await?.is_ok(),
        "dev token refused"
    );

    refusals(&stack, &alpha, &keys, &beta_key).await?;
    unknown_kids(&stack, &alpha, MIN_REFETCH).await?;
    grants(&stack, &alpha, &keys[0]).await?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

async fn refusals(
    stack: &Stack,
    alpha: &Provider,
    keys: &[SigningKey],
    beta_key: &SigningKey,
) -> anyhow::Result<()> {
    let iss = &alpha.issuer;
    let rs = &keys[0];
    refused(
        stack,
        "another issuer's key",
        &beta_key.sign(&claims(iss, "mallory", json!({})))?,
    )
    .await?;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(keys[4].kid.clone());
    let borrowed_kid = beta_key.sign_with(&header, &claims(iss, "mallory", json!({})))?;
    refused(
        stack,
        "another issuer's key under this issuer's kid",
        &borrowed_kid,
    )
    .await?;
    refused(
        stack,
        "expired",
        &rs.sign(&claims(iss, "mallory", json!({"exp": now() - 3600})))?,
    )
    .await?;
    refused(
        stack,
        "not yet valid",
        &rs.sign(&claims(iss, "mallory", json!({"nbf": now() + 3600})))?,
    )
    .await?;
    refused(
        stack,
        "issued in the future",
        &rs.sign(&claims(iss, "mallory", json!({"iat": now() + 3600})))?,
    )
    .await?;
    refused(
        stack,
        "wrong audience",
        &rs.sign(&claims(iss, "mallory", json!({"aud": "other-app"})))?,
    )
    .await?;
    refused(
        stack,
        "no audience",
        &rs.sign(&claims(iss, "mallory", json!({"aud": null})))?,
    )
    .await?;
    refused(
        stack,
        "unconfigured issuer",
        &rs.sign(&claims("https://evil.example", "mallory", json!({})))?,
    )
    .await?;
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": rs.kid})),
        b64(&claims(iss, "mallory", json!({})))
    );
    refused(stack, "alg none", &unsigned).await?;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(rs.kid.clone());
    let secret = jsonwebtoken::EncodingKey::from_secret(rs.public_pem().as_bytes());
    let confused = jsonwebtoken::encode(&header, &claims(iss, "mallory", json!({})), &secret)?;
    refused(stack, "HS256 keyed with the RSA public key", &confused).await?;
    Ok(())
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// An unknown `kid` costs one refetch, then a refusal; a flood of them costs
/// at most one refetch per interval.
async fn unknown_kids(stack: &Stack, alpha: &Provider, min: Duration) -> anyhow::Result<()> {
    // The interval since the last fetch must be over for a refetch to be due.
    tokio::time::sleep(min).await;
    let stranger = SigningKey::generate(Algorithm::ES256, "not-published")?;
    let before = alpha.hits();
    refused(
        stack,
        "unknown kid",
        &stranger.sign(&claims(&alpha.issuer, "mallory", json!({})))?,
    )
    .await?;
    anyhow::ensure!(
        alpha.hits() == before + 1,
        "unknown kid fetched {} times",
        alpha.hits() - before
    );

    tokio::time::sleep(min).await;
    let before = alpha.hits();
    let started = Instant::now();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/conversations", stack.servers[0].url());
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(format!("forged-{i}"));
        let token = stranger.sign_with(&header, &claims(&alpha.issuer, "mallory", json!({})))?;
        let request = http.get(&url).bearer_auth(token);
        flood.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    }
    let mut statuses = Vec::new();
    while let Some(done) = flood.join_next().await {
        statuses.push(done??);
    }
    let took = started.elapsed();
    let fetches = alpha.hits() - before;
    anyhow::ensure!(
        statuses.iter().all(|s| *s == 401),
        "flood answered {statuses:?}"
    );
    let allowed = 1 + (took.as_millis() / min.as_millis()) as usize;
    anyhow::ensure!(
        (1..=allowed).contains(&fetches),
        "200 forged kids in {took:?} caused {fetches} fetches (at most {allowed})"
    );
    Ok(())
}

/// Channel grants come from the namespaced claim (top-level ones are ignored).
async fn grants(stack: &Stack, alpha: &Provider, key: &SigningKey) -> anyhow::Result<()> {
    let extra = json!({GRANTS: {"channels": ["ch:news"]}, "channels": ["ch:secret"]});
    let token = key.sign(&claims(&alpha.issuer, "erin", extra))?;
    let (mut ws, welcomed) = open(stack, "erin", &token).await?;
    anyhow::ensure!(welcomed.is_ok(), "grants token refused: {welcomed:?}");
    for (id, channel, allowed) in [(1, "ch:news", true), (2, "ch:secret", false)] {
        ws.send_text(json!({"type": "subscribe", "id": id, "channel": channel}).to_string())
            .await?;
        match ws.frame(Duration::from_secs(10)).await? {
            ServerFrame::Subscribed(_) if allowed => {}
            ServerFrame::Error(e) if !allowed && e.code == ErrorCode::Forbidden => {}
            other => anyhow::bail!("subscribe {channel}: {other:?}"),
        }
    }
    Ok(())
}

pub async fn keys_rotate_survive_an_outage_and_refresh_mid_session(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let alpha = Provider::start("rotating").await?;
    let old = SigningKey::generate(Algorithm::RS256, "2026-01")?;
    alpha.publish(jwk_set([&old]));
    let dir = scratch("rotate");
    let issuers =
        json!([{"issuer": alpha.issuer, "jwks_url": alpha.jwks_url(), "audience": [AUDIENCE]}]);
    let file = write_file(&dir, "issuers.json", &issuers.to_string())?;
    const MIN_REFETCH: Duration = Duration::from_secs(1);
    const REFRESH: Duration = Duration::from_secs(2);
    let stack = Stack::start_with(&infra, "idp-rotate", 1, false, |c| {
        c.jwt.issuers_file = Some(file.clone());
        c.jwt.jwks_min_refetch = MIN_REFETCH;
        c.jwt.jwks_refresh = REFRESH;
    })
    .await?;
    let iss = alpha.issuer.clone();
    let sign = |key: &SigningKey, user: &str, extra: Value| key.sign(&claims(&iss, user, extra));

    // Refresh mid-session with RS256 tokens.
    let (mut ws, welcomed) = open(
        &stack,
        "frank",
        &sign(&old, "frank", json!({"exp": now() + 30}))?,
    )
    .await?;
    anyhow::ensure!(welcomed.is_ok(), "RS256 hello refused: {welcomed:?}");
    let fresh_exp = now() + 900;
    let fresh = sign(&old, "frank", json!({"exp": fresh_exp}))?;
    ws.send_text(json!({"type": "auth", "id": 1, "token": fresh}).to_string())
        .await?;
    match ws.frame(Duration::from_secs(10)).await? {
        ServerFrame::Authed(a) if a.exp == fresh_exp => {}
        other => anyhow::bail!("auth with a fresh RS256 token got {other:?}"),
    }
    let someone_else = sign(&old, "grace", json!({}))?;
    ws.send_text(json!({"type": "auth", "id": 2, "token": someone_else}).to_string())
        .await?;
    match ws.frame(Duration::from_secs(10)).await? {
        ServerFrame::Error(e) if e.code == ErrorCode::InvalidField => {}
        other => anyhow::bail!("auth with another user's token got {other:?}"),
    }

    // Rotation: the new key verifies as soon as it is published (its kid
    // triggers a refetch); the old one stops after the next refresh.
    let new = SigningKey::generate(Algorithm::RS256, "2026-02")?;
    alpha.publish(jwk_set([&old, &new]));
    tokio::time::sleep(MIN_REFETCH).await;
    let got = hello(&stack, "heidi", &sign(&new, "heidi", json!({}))?).await?;
    anyhow::ensure!(got.is_ok(), "the rotated-in key was refused: {got:?}");
    alpha.publish(jwk_set([&new]));
    let deadline = Instant::now() + REFRESH * 5;
    while hello(&stack, "heidi", &sign(&old, "heidi", json!({}))?)
        .await?
        .is_ok()
    {
        anyhow::ensure!(Instant::now() < deadline, "the removed key still verifies");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::ensure!(hello(&stack, "heidi", &sign(&new, "heidi", json!({}))?)
        .await?
        .is_ok());

    // Provider down: fetches fail, the cached key keeps verifying.
    alpha.set_down(true);
    let before = alpha.hits();
    let deadline = Instant::now() + REFRESH * 5;
    while alpha.hits() < before + 2 {
        anyhow::ensure!(Instant::now() < deadline, "no refresh attempts while down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = hello(&stack, "ivan", &sign(&new, "ivan", json!({}))?).await?;
    anyhow::ensure!(
        got.is_ok(),
        "a cached key was refused while the provider is down: {got:?}"
    );
    let metrics = reqwest::get(format!("{}/metrics", stack.servers[0].url()))
        .await?
        .text()
        .await?;
    let failed_fetch = |l: &str| {
        l.starts_with("switchboard_server_jwks_fetches_total{") && l.contains("ok=\"false\"")
    };
    anyhow::ensure!(
        metrics.lines().any(failed_fetch),
        "no failed fetch counted in /metrics"
    );
    alpha.set_down(false);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
