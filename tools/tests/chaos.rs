//! A short chaos run of the load generator against the whole system in
//! containers: every failure kind once — the broker's `kill -9` and restart
//! on the same storage included — then zero lost chat messages and exactly
//! one PostgreSQL row per distinct msg_id. One persister: after its
//! `kill -9` the broker must hand its partitions back to the restarted one.

use harness::Infra;
use std::process::ExitCode;
use std::sync::Arc;
use tools::load::chaos::ALL;
use tools::load::{options_from, run};

fn main() -> ExitCode {
    harness::trials::main(harness::tests![chaos_run_loses_nothing])
}

async fn chaos_run_loses_nothing(infra: Arc<Infra>) -> anyhow::Result<()> {
    let out = std::env::current_dir()?.join("../target/test-artifacts/load-chaos");
    let options = options_from([
        "load",
        "--users=24",
        "--devices=3",
        "--group-size=6",
        "--rate=25",
        "--seconds=30",
        "--chaos",
        "--chaos-every=2",
        "--chaos-down=2",
        "--chaos-rounds=1",
        "--servers=3",
        "--coordinators=2",
        "--partitions=8",
        "--settle-secs=90",
        &format!("--out={}", out.display()),
    ])?;
    let report = run(&options, Some(infra)).await?;
    eprintln!("{}", report.table());
    for fault in ALL {
        anyhow::ensure!(
            report.faults.iter().any(|h| h.fault == fault),
            "{} never happened: {:?}",
            fault.label(),
            report.faults
        );
    }
    anyhow::ensure!(report.passed(), "chaos run failed: {:?}", report.failures);
    let pg = report
        .postgres
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no row check"))?;
    anyhow::ensure!(
        pg.equal && pg.rows == report.tally.chat_sent,
        "row check: {pg:?}"
    );
    anyhow::ensure!(report.tally.lost == 0 && report.tally.chat_acked > 300);
    anyhow::ensure!(report.counts.resumes > 0, "no device ever resumed");
    anyhow::ensure!(out.join("latency.png").is_file() && out.join("report.json").is_file());
    Ok(())
}
