//! Token verifications per second on one core, per algorithm: the work a
//! `hello` does before anything else, so the ceiling of a reconnect storm.
//! No infrastructure: the messaging server's own `Authenticator`, with keys
//! made for the run (docs/benchmarks.md, "Token verification").

use jsonwebtoken::{Algorithm, DecodingKey};
use messaging_server::auth::{Allowed, Authenticator, Issuer, Policy, VerifyKey};
use serde::Serialize;
use std::time::{Duration, Instant};
use switchboard_client::keygen::SigningKey;

#[derive(clap::Args)]
pub struct TokenArgs {
    /// Seconds of verifications per algorithm.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Row {
    alg: String,
    verifications_per_sec: f64,
    us_per_verification: f64,
    /// CPU-seconds of one core a 36,000-device reconnect storm spends on tokens.
    storm_36000_cpu_secs: f64,
}

const ISSUER: &str = "https://idp.bench";
const SECRET: &str = "bench-secret-0123456789";

pub fn tokens(args: &TokenArgs) -> anyhow::Result<()> {
    // One thread: the figure is per core.
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let mut rows = Vec::new();
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let hs = switchboard_client::token::mint_hs256(SECRET, "alice", 3600)?;
    let local = VerifyKey::new(
        None,
        Algorithm::HS256,
        DecodingKey::from_secret(SECRET.as_bytes()),
    );
    let auth = Authenticator::new(
        Some(Issuer::new(Policy::local(5), vec![local], None)),
        Vec::new(),
    );
    rows.push(measure(&rt, &auth, "HS256", &hs, args.seconds)?);
    for alg in switchboard_client::keygen::ONE_PER_KIND {
        let key = SigningKey::generate(alg, "bench")?;
        let keys = messaging_server::auth::keys_from_file_text(
            &serde_json::to_string(key.jwk())?,
            &Allowed::default(),
        )?;
        let policy = Policy {
            issuer: Some(ISSUER.into()),
            audience: vec!["switchboard".into()],
            ..Policy::local(5)
        };
        let auth = Authenticator::new(None, vec![Issuer::new(policy, keys, None)]);
        let claims =
            serde_json::json!({"iss": ISSUER, "aud": "switchboard", "sub": "alice", "exp": exp});
        let token = key.sign(&claims)?;
        rows.push(measure(
            &rt,
            &auth,
            &format!("{alg:?}"),
            &token,
            args.seconds,
        )?);
    }
    println!(
        "{:<7} {:>14} {:>10} {:>20}",
        "alg", "verifications/s", "µs each", "36,000 hellos (s CPU)"
    );
    for r in &rows {
        println!(
            "{:<7} {:>14.0} {:>10.1} {:>20.2}",
            r.alg, r.verifications_per_sec, r.us_per_verification, r.storm_36000_cpu_secs
        );
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "command": "switchboard-bench tokens",
            "seconds_per_alg": args.seconds,
            "results": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
    }
    Ok(())
}

fn measure(
    rt: &tokio::runtime::Runtime,
    auth: &Authenticator,
    alg: &str,
    token: &str,
    seconds: u64,
) -> anyhow::Result<Row> {
    // The token must verify, or the figure measures refusals.
    rt.block_on(auth.verify(token))?;
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut n = 0u64;
    rt.block_on(async {
        while Instant::now() < until {
            for _ in 0..16 {
                let _ = auth.verify(token).await;
            }
            n += 16;
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let per_sec = n as f64 / secs;
    Ok(Row {
        alg: alg.into(),
        verifications_per_sec: per_sec,
        us_per_verification: 1e6 / per_sec,
        storm_36000_cpu_secs: 36_000.0 / per_sec,
    })
}
