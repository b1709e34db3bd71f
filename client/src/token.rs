//! Development tokens: HS256 JWTs with `sub` and `exp`, as the messaging
//! server verifies them. Production tokens come from the application's own
//! identity provider; this is for the CLI, the demo stack and the tests.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    channels: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    publish: &'a [String],
}

/// What a token allows besides being its user: channel patterns
/// (`ch:news`, `ch:vehicle.*`) to subscribe to and to publish to.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub channels: Vec<String>,
    pub publish: Vec<String>,
}

/// A token for `user` that expires `ttl_secs` from now (a negative TTL gives
/// an already expired one, for tests of refresh).
pub fn mint_hs256(
    secret: &str,
    user: &str,
    ttl_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    mint_hs256_with(secret, user, ttl_secs, &Grants::default())
}

/// [`mint_hs256`] with `channels` and `publish` claims.
pub fn mint_hs256_with(
    secret: &str,
    user: &str,
    ttl_secs: i64,
    grants: &Grants,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let exp = now.saturating_add_signed(ttl_secs);
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims {
            sub: user,
            exp,
            channels: &grants.channels,
            publish: &grants.publish,
        },
        &key,
    )
}
