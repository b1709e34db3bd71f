//! The load generator and chaos run. Starts the whole system in containers
//! (testcontainers, images from `./dev`), or drives a running one with
//! `--coordinator-url`; prints a table, writes report.json and latency.png,
//! and exits non-zero when a chat message was lost, a send was never
//! acknowledged or PostgreSQL's rows differ from the messages sent.
//!
//!   ./dev load --users 250 --devices 4 --rate 25 --seconds 600 \
//!              --chaos --chaos-every 30 --chaos-rounds 3

use clap::Parser;
use harness::docker_compat;
use std::process::ExitCode;
use tools::load::{run, Options};

#[derive(Parser)]
#[command(
    name = "switchboard-load",
    about = "Load and chaos runs against Switchboard"
)]
struct Args {
    #[command(flatten)]
    options: Options,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.options.validate() {
        eprintln!("switchboard-load: {e}");
        return ExitCode::from(2);
    }
    service::init_tracing();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard-load: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        if args.options.coordinator_url.is_none() {
            let dir = std::env::temp_dir().join(format!("switchboard-load-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            std::env::set_var("DOCKER_HOST", docker_compat::docker_host(&dir).await?);
        }
        run(&args.options, None).await
    });
    match result {
        Ok(report) => {
            println!("{}", report.table());
            println!(
                "report: {}  plot: {}",
                args.options.report_path().display(),
                args.options.out.join("latency.png").display()
            );
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("switchboard-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
