//! Mints a development token: `switchboard-token USER [TTL_SECS]` with the
//! secret from `SWITCHBOARD_JWT_SECRET`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(user), ttl) = (args.next(), args.next()) else {
        eprintln!("usage: switchboard-token USER [TTL_SECS]  (secret from SWITCHBOARD_JWT_SECRET)");
        return ExitCode::from(2);
    };
    let Ok(secret) = std::env::var("SWITCHBOARD_JWT_SECRET") else {
        eprintln!("switchboard-token: SWITCHBOARD_JWT_SECRET is not set");
        return ExitCode::from(2);
    };
    if let Err(e) = protocol::UserId::new(user.as_str()) {
        eprintln!("switchboard-token: {e}");
        return ExitCode::from(2);
    }
    let ttl = match ttl.map(|t| t.parse::<i64>()) {
        None => 24 * 3600,
        Some(Ok(t)) => t,
        Some(Err(_)) => {
            eprintln!("switchboard-token: TTL_SECS must be a number of seconds");
            return ExitCode::from(2);
        }
    };
    match switchboard_client::token::mint_hs256(&secret, &user, ttl) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard-token: {e}");
            ExitCode::FAILURE
        }
    }
}
