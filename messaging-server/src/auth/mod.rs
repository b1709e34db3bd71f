//! Client authentication (docs/protocol.md, "Authentication"): JWTs from the
//! local keys (tokens without `iss`) or from identity-provider issuers, each
//! checked only with the keys of the issuer its `iss` names.

mod claims;
mod config;
mod fetch;
mod issuer;
mod keys;
mod remote;

pub use claims::{ClaimError, Policy};
pub use config::{IssuerConfig, JwtArgs};
pub use issuer::Issuer;
pub use keys::{from_file_text as keys_from_file_text, Allowed, KeyError, VerifyKey};

use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use protocol::UserId;
use remote::RemoteKeys;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    #[error("{0}")]
    Claims(#[from] ClaimError),
    #[error("tokens of issuer {0:?} are not accepted here")]
    UnknownIssuer(String),
    #[error("tokens without an issuer are not accepted here")]
    NoLocalKeys,
    #[error("no key of the token's issuer fits its kid and alg")]
    NoKey,
    #[error("no token")]
    Missing,
    #[error("failed to load the keys of {issuer}: {reason}")]
    Setup { issuer: String, reason: String },
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabel {
    issuer: String,
    ok: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabel {
    issuer: String,
}

/// JWKS fetches and the keys each issuer has.
#[derive(Clone, Default)]
pub struct AuthMetrics {
    fetches: Family<FetchLabel, Counter>,
    keys: Family<IssuerLabel, Gauge>,
}

impl AuthMetrics {
    fn fetched(&self, issuer: &str, ok: bool) {
        let issuer = issuer.to_owned();
        self.fetches.get_or_create(&FetchLabel { issuer, ok }).inc();
    }

    fn keys(&self, issuer: &str, n: usize) {
        let issuer = issuer.to_owned();
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.keys.get_or_create(&IssuerLabel { issuer }).set(n);
    }
}

struct Inner {
    local: Option<Issuer>,
    issuers: HashMap<String, Issuer>,
    metrics: AuthMetrics,
    refresh: Duration,
    summary: Vec<String>,
}

#[derive(Clone)]
pub struct Authenticator(Arc<Inner>);

impl Authenticator {
    /// The keys and issuers the operator configured (files read now).
    pub fn from_args(args: &JwtArgs) -> Result<Self, AuthError> {
        let leeway = args.leeway.as_secs();
        let setup = |issuer: &str, reason: String| AuthError::Setup {
            issuer: issuer.to_owned(),
            reason,
        };
        let mut local = Vec::new();
        if let Some(secret) = &args.secret {
            let key = DecodingKey::from_secret(secret.expose().as_bytes());
            local.push(VerifyKey::new(None, Algorithm::HS256, key));
        }
        if let Some(pem) = &args.public_key {
            let key = DecodingKey::from_rsa_pem(pem.as_bytes())?;
            local.push(VerifyKey::new(None, Algorithm::RS256, key));
        }
        let local = (!local.is_empty()).then(|| Issuer::new(Policy::local(leeway), local, None));
        let metrics = AuthMetrics::default();
        let http = fetch::JwksClient::new().map_err(|e| setup("(all)", e.to_string()))?;
        let mut issuers = HashMap::new();
        let configs = args
            .issuers()
            .map_err(|e| setup("(config)", e.to_string()))?;
        let mut summary = vec![describe_local(args)];
        for c in configs {
            summary.push(describe(&c));
            let allowed = c.allowed().map_err(|e| setup(&c.issuer, e))?;
            let fixed = match &c.keys_file {
                None => Vec::new(),
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| {
                        keys::from_file_text(&text, &allowed).map_err(|e| e.to_string())
                    })
                    .map_err(|e| setup(&c.issuer, format!("{}: {e}", path.display())))?,
            };
            let remote = c.jwks_url.as_ref().map(|url| {
                let min = args.jwks_min_refetch;
                Arc::new(RemoteKeys::new(
                    &c.issuer,
                    url,
                    allowed,
                    min,
                    http.clone(),
                    metrics.clone(),
                ))
            });
            let policy = Policy {
                issuer: Some(c.issuer.clone()),
                audience: c.audience,
                user_claim: c.user_claim,
                grants_claim: c.grants_claim,
                leeway,
            };
            issuers.insert(c.issuer, Issuer::new(policy, fixed, remote));
        }
        Ok(Self(Arc::new(Inner {
            local,
            issuers,
            metrics,
            refresh: args.jwks_refresh,
            summary,
        })))
    }

    /// An authenticator of the given issuers (tests and benchmarks).
    pub fn new(local: Option<Issuer>, issuers: Vec<Issuer>) -> Self {
        let issuers = issuers
            .into_iter()
            .filter_map(|i| i.policy.issuer.clone().map(|name| (name, i)))
            .collect();
        Self(Arc::new(Inner {
            local,
            issuers,
            metrics: AuthMetrics::default(),
            refresh: Duration::from_secs(300),
            summary: Vec::new(),
        }))
    }

    /// What is accepted, one line per issuer, for the start-up log (no keys).
    pub fn summary(&self) -> &[String] {
        &self.0.summary
    }

    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        // An unknown `alg` (`none` among them) fails here.
        let header = jsonwebtoken::decode_header(token)?;
        let issuer = self.route(unverified_issuer(token)?.as_deref())?;
        let now = jsonwebtoken::get_current_timestamp();
        issuer.verify(token, &header, now).await
    }

    /// `Authorization: Bearer <jwt>`.
    pub async fn verify_header(&self, header: Option<&str>) -> Result<Verified, AuthError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AuthError::Missing)?;
        self.verify(token.trim()).await
    }

    /// The issuer a token's (not yet verified) `iss` names: the only one
    /// whose keys may check it.
    fn route(&self, iss: Option<&str>) -> Result<&Issuer, AuthError> {
        match iss {
            None => self.0.local.as_ref().ok_or(AuthError::NoLocalKeys),
            Some(iss) => self
                .0
                .issuers
                .get(iss)
                .ok_or_else(|| AuthError::UnknownIssuer(iss.chars().take(100).collect())),
        }
    }

    /// Keeps every issuer's JWKS fresh until `shutdown`.
    pub async fn refresh_keys(self, shutdown: CancellationToken) {
        let mut loops = tokio::task::JoinSet::new();
        for remote in self.0.issuers.values().filter_map(Issuer::remote) {
            loops.spawn(remote.clone().run(self.0.refresh, shutdown.clone()));
        }
        while let Some(done) = loops.join_next().await {
            if let Err(e) = done {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        shutdown.cancelled().await;
    }

    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("switchboard_server");
        let m = &self.0.metrics;
        r.register(
            "jwks_fetches",
            "JWKS fetches, by issuer and success",
            m.fetches.clone(),
        );
        r.register(
            "jwks_keys",
            "Keys in the last JWKS fetched, by issuer",
            m.keys.clone(),
        );
    }
}

fn unverified_issuer(token: &str) -> Result<Option<String>, AuthError> {
    #[derive(Deserialize)]
    struct Iss {
        #[serde(default)]
        iss: Option<String>,
    }
    Ok(jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token)?.iss)
}

fn describe_local(args: &JwtArgs) -> String {
    let mut algs = Vec::new();
    if args.secret.is_some() {
        algs.push("HS256 (secret)");
    }
    if args.public_key.is_some() {
        algs.push("RS256 (public key)");
    }
    match algs.is_empty() {
        true => "tokens without iss: refused".into(),
        false => format!("tokens without iss: {}", algs.join(", ")),
    }
}

fn describe(c: &IssuerConfig) -> String {
    let keys = match (&c.jwks_url, &c.keys_file) {
        (Some(url), _) => format!("JWKS {url}"),
        (None, Some(path)) => format!("keys file {}", path.display()),
        (None, None) => "no keys".into(),
    };
    let algorithms = match c.algorithms.is_empty() {
        true => "those its keys name (RS256 for RSA keys naming none)".into(),
        false => c.algorithms.join(","),
    };
    let audience = match c.audience.is_empty() {
        true => "any (not checked)".into(),
        false => c.audience.join(","),
    };
    let grants = c
        .grants_claim
        .as_deref()
        .unwrap_or("top-level channels/publish");
    format!(
        "issuer {}: {keys}; algorithms {algorithms}; audience {audience}; user claim {}; grants {grants}",
        c.issuer, c.user_claim
    )
}

/// The keys backends publish with (`SWITCHBOARD_API_KEYS`), and the
/// operator's admin key: one constant-time comparison, in `service`.
pub type ApiKeys = service::keys::Keys;

#[cfg(test)]
mod tests;
