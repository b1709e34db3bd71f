//! How tokens are verified, as the operator configures it: the local keys
//! (HS256 secret, one PEM) for tokens without `iss`, and identity-provider
//! issuers, each with its own keys (docs/operations.md, "Identity providers").

use super::keys::Allowed;
use clap::Args;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use service::args::secs;
use service::{ConfigError, Secret};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Clone, Debug, Args)]
pub struct JwtArgs {
    /// HS256 secret for tokens without `iss` (development, or an own token service).
    #[arg(long = "jwt-secret", env = "SWITCHBOARD_JWT_SECRET")]
    pub secret: Option<Secret>,
    /// PEM public key (RS256) for tokens without `iss` (instead of or beside a secret).
    #[arg(long = "jwt-public-key", env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    pub public_key: Option<String>,
    /// An identity provider: the exact `iss` of its tokens.
    #[arg(long = "jwt-issuer", env = "SWITCHBOARD_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// The issuer's JWKS URL (https; http only to loopback or with --jwt-allow-http).
    #[arg(long = "jwt-jwks-url", env = "SWITCHBOARD_JWT_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// The issuer's keys from a file instead (PEM, one JWK or a JWKS document).
    #[arg(long = "jwt-keys-file", env = "SWITCHBOARD_JWT_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,
    /// Audiences, comma separated; when set, a token's `aud` must name one.
    #[arg(
        long = "jwt-audience",
        env = "SWITCHBOARD_JWT_AUDIENCE",
        value_delimiter = ','
    )]
    pub audience: Vec<String>,
    /// The claim holding the user id.
    #[arg(
        long = "jwt-user-claim",
        env = "SWITCHBOARD_JWT_USER_CLAIM",
        default_value = "sub"
    )]
    pub user_claim: String,
    /// The claim holding `{"channels", "publish"}` (e.g. a namespaced
    /// `https://example.com/switchboard`); default: top-level claims.
    #[arg(long = "jwt-grants-claim", env = "SWITCHBOARD_JWT_GRANTS_CLAIM")]
    pub grants_claim: Option<String>,
    /// Algorithms the issuer's tokens may use, comma separated (default: any
    /// asymmetric one a key names; RS256 for RSA keys that name none).
    #[arg(
        long = "jwt-algorithms",
        env = "SWITCHBOARD_JWT_ALGORITHMS",
        value_delimiter = ','
    )]
    pub algorithms: Vec<String>,
    /// Fetch the issuer's JWKS over plain http from a non-loopback host.
    #[arg(long = "jwt-allow-http", env = "SWITCHBOARD_JWT_ALLOW_HTTP")]
    pub allow_http: bool,
    /// More issuers: a JSON list of objects with the fields above
    /// (`issuer`, `jwks_url` | `keys_file`, `audience`, `user_claim`,
    /// `grants_claim`, `algorithms`, `allow_http`).
    #[arg(long = "jwt-issuers-file", env = "SWITCHBOARD_JWT_ISSUERS_FILE")]
    pub issuers_file: Option<PathBuf>,
    /// Clock skew forgiven on `exp`, `nbf` and `iat`, in seconds.
    #[arg(long = "jwt-leeway-secs", env = "SWITCHBOARD_JWT_LEEWAY_SECS", default_value = "5", value_parser = secs)]
    pub leeway: Duration,
    /// Seconds between fetches of each JWKS (a removed key stops verifying after the next one).
    #[arg(long = "jwks-refresh-secs", env = "SWITCHBOARD_JWKS_REFRESH_SECS", default_value = "300", value_parser = secs)]
    pub jwks_refresh: Duration,
    /// Least seconds between fetches caused by tokens naming an unknown `kid`.
    #[arg(long = "jwks-min-refetch-secs", env = "SWITCHBOARD_JWKS_MIN_REFETCH_SECS", default_value = "30", value_parser = secs)]
    pub jwks_min_refetch: Duration,
    /// Refuse to start without a way to verify tokens (production).
    #[arg(long = "require-jwt-secret", env = "SWITCHBOARD_REQUIRE_JWT_SECRET", default_value_t = true, action = clap::ArgAction::Set)]
    pub require: bool,
}

/// One identity provider (a flag set, or an entry of the issuers file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub issuer: String,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    #[serde(default)]
    pub audience: Vec<String>,
    #[serde(default = "sub")]
    pub user_claim: String,
    #[serde(default)]
    pub grants_claim: Option<String>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub allow_http: bool,
}

fn sub() -> String {
    "sub".into()
}

const ISSUER_FLAG: &str = "SWITCHBOARD_JWT_ISSUER";
const FILE_FLAG: &str = "SWITCHBOARD_JWT_ISSUERS_FILE";

impl JwtArgs {
    /// Every configured issuer, checked; the flag-set one first.
    pub fn issuers(&self) -> Result<Vec<IssuerConfig>, ConfigError> {
        let mut all = Vec::new();
        if let Some(issuer) = &self.issuer {
            all.push(IssuerConfig {
                issuer: issuer.clone(),
                jwks_url: self.jwks_url.clone(),
                keys_file: self.keys_file.clone(),
                audience: self.audience.clone(),
                user_claim: self.user_claim.clone(),
                grants_claim: self.grants_claim.clone(),
                algorithms: self.algorithms.clone(),
                allow_http: self.allow_http,
            });
        } else if self.jwks_url.is_some() || self.keys_file.is_some() {
            return Err(ConfigError::new(
                ISSUER_FLAG,
                "must be set with a JWKS URL or keys file",
            ));
        }
        if let Some(path) = &self.issuers_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(FILE_FLAG, format!("{}: {e}", path.display())))?;
            let listed: Vec<IssuerConfig> = serde_json::from_str(&text)
                .map_err(|e| ConfigError::new(FILE_FLAG, format!("{}: {e}", path.display())))?;
            all.extend(listed);
        }
        for (i, c) in all.iter().enumerate() {
            c.check()?;
            if all[..i].iter().any(|o| o.issuer == c.issuer) {
                return Err(ConfigError::new(
                    FILE_FLAG,
                    format!("issuer {:?} is configured twice", c.issuer),
                ));
            }
        }
        Ok(all)
    }

    /// Checked before any socket opens (see `Config::check`).
    pub fn check(&self) -> Result<(), ConfigError> {
        let issuers = self.issuers()?;
        let local = self.secret.is_some() || self.public_key.is_some();
        if self.require && !local && issuers.is_empty() {
            return Err(ConfigError::new(
                "SWITCHBOARD_JWT_SECRET",
                "(or SWITCHBOARD_JWT_PUBLIC_KEY, or an issuer) must be set; refusing to start without a way to verify tokens",
            ));
        }
        if self.secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return Err(ConfigError::new(
                "SWITCHBOARD_JWT_SECRET",
                "must be at least 16 bytes",
            ));
        }
        service::args::in_range("--jwt-leeway-secs", self.leeway.as_secs(), 0, 600)?;
        service::args::in_range(
            "--jwks-refresh-secs",
            self.jwks_refresh.as_secs(),
            1,
            86_400,
        )?;
        service::args::in_range(
            "--jwks-min-refetch-secs",
            self.jwks_min_refetch.as_secs(),
            1,
            3_600,
        )?;
        Ok(())
    }
}

impl IssuerConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |reason: String| {
            Err(ConfigError::new(
                ISSUER_FLAG,
                format!("{:?}: {reason}", self.issuer),
            ))
        };
        if self.issuer.is_empty() || self.user_claim.is_empty() {
            return bad("issuer and user_claim must not be empty".into());
        }
        if self.jwks_url.is_none() == self.keys_file.is_none() {
            return bad("needs exactly one of a JWKS URL and a keys file".into());
        }
        if let Some(url) = &self.jwks_url {
            if let Err(reason) = check_url(url, self.allow_http) {
                return bad(reason);
            }
        }
        if let Err(e) = self.allowed() {
            return bad(e);
        }
        Ok(())
    }

    /// The algorithms configured, or `Allowed(None)`: what the keys name.
    pub fn allowed(&self) -> Result<Allowed, String> {
        if self.algorithms.is_empty() {
            return Ok(Allowed(None));
        }
        let parsed = self
            .algorithms
            .iter()
            .map(|a| match Algorithm::from_str(a.trim()) {
                Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) | Err(_) => Err(
                    format!("{a} is not an accepted algorithm (RS*, PS*, ES256, ES384, EdDSA)"),
                ),
                Ok(alg) => Ok(alg),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allowed(Some(parsed)))
    }
}

/// https, or http to this host (tests, a sidecar) or when allowed outright.
fn check_url(url: &str, allow_http: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad JWKS URL {url}: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_http => Ok(()),
        "http" => Err(format!(
            "JWKS URL {url} is plain http: anyone on the path could hand out keys (use https, or allow_http)"
        )),
        other => Err(format!("JWKS URL scheme {other} is not http(s)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        jwt: JwtArgs,
    }

    fn args(flags: &[&str]) -> JwtArgs {
        Cmd::parse_from(std::iter::once("x").chain(flags.iter().copied())).jwt
    }

    #[test]
    fn refuses_to_start_without_a_way_to_verify_and_with_unsafe_issuers() {
        assert!(args(&[]).check().is_err());
        assert!(args(&["--require-jwt-secret", "false"]).check().is_ok());
        assert!(args(&["--jwt-secret", "short"]).check().is_err());
        assert!(args(&["--jwt-secret", "0123456789abcdef"]).check().is_ok());
        let issuer = ["--jwt-issuer", "https://idp.example/"];
        let ok = [&issuer[..], &["--jwt-jwks-url", "https://idp.example/jwks"]].concat();
        assert!(args(&ok).check().is_ok());
        for bad in [
            vec!["--jwt-jwks-url", "https://idp.example/jwks"],
            issuer.to_vec(),
            [&issuer[..], &["--jwt-jwks-url", "http://idp.example/jwks"]].concat(),
            [&issuer[..], &["--jwt-jwks-url", "ftp://idp.example/jwks"]].concat(),
            [&ok[..], &["--jwt-keys-file", "/k.pem"]].concat(),
            [&ok[..], &["--jwt-algorithms", "RS256,HS256"]].concat(),
        ] {
            assert!(args(&bad).check().is_err(), "{bad:?}");
        }
        let loopback = [&issuer[..], &["--jwt-jwks-url", "http://127.0.0.1:9/jwks"]].concat();
        assert!(args(&loopback).check().is_ok());
        let allowed = [
            &issuer[..],
            &[
                "--jwt-jwks-url",
                "http://keycloak:8080/certs",
                "--jwt-allow-http",
            ],
        ]
        .concat();
        assert!(args(&allowed).check().is_ok());
    }

    #[test]
    fn the_issuers_file_adds_issuers_and_refuses_duplicates() {
        let dir = std::env::temp_dir().join(format!("sb-issuers-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("issuers.json");
        let entry = |iss: &str| serde_json::json!({"issuer": iss, "jwks_url": "https://a.example/jwks", "audience": ["sb"], "grants_claim": "https://example.com/sb"});
        std::fs::write(
            &file,
            serde_json::json!([entry("https://a.example"), entry("https://b.example")]).to_string(),
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let listed = args(&["--jwt-issuers-file", path]).issuers().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            (listed[1].user_claim.as_str(), listed[1].audience.len()),
            ("sub", 1)
        );
        let twice = args(&[
            "--jwt-issuers-file",
            path,
            "--jwt-issuer",
            "https://a.example",
            "--jwt-keys-file",
            "/k",
        ]);
        assert!(twice.issuers().is_err());
        std::fs::write(
            &file,
            r#"[{"issuer": "x", "jwks_url": "https://x", "typo": 1}]"#,
        )
        .unwrap();
        assert!(args(&["--jwt-issuers-file", path]).issuers().is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
