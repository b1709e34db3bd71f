//! The short partitions run: the whole system on a Docker network of its
//! own, every network fault and gray failure once (a server cut from etcd,
//! from the broker, from its clients, frozen; the coordinator leader cut
//! from etcd; the persister cut from PostgreSQL and from the broker; a slow,
//! lossy broker link; a 1 | 2 split of the servers) while chat DMs, group
//! messages, channel publications and ephemeral messages flow; then the recorded history is
//! checked: nothing lost, no duplicate the app saw, DMs in order, no cursor
//! regression, one map per epoch, one PostgreSQL row per message.

use harness::Infra;
use std::process::ExitCode;
use std::sync::Arc;
use tools::load::chaos::PARTITIONS;
use tools::load::{options_from, run};

fn main() -> ExitCode {
    harness::trials::main(harness::tests![network_faults_lose_nothing])
}

async fn network_faults_lose_nothing(_infra: Arc<Infra>) -> anyhow::Result<()> {
    let out = std::env::current_dir()?.join("../target/test-artifacts/load-partitions");
    let options = options_from([
        "load",
        "--users=24",
        "--devices=2",
        "--group-size=6",
        "--channel=10",
        "--rate=20",
        "--seconds=30",
        "--network",
        "--chaos",
        "--network-faults",
        "--chaos-every=2",
        "--chaos-down=7",
        "--slow-secs=10",
        "--ping-secs=2",
        "--chaos-rounds=1",
        "--servers=3",
        "--coordinators=2",
        "--partitions=8",
        "--settle-secs=90",
        &format!("--out={}", out.display()),
    ])?;
    let report = run(&options, None).await?;
    eprintln!("{}", report.table());
    for fault in PARTITIONS {
        anyhow::ensure!(
            report.faults.iter().any(|h| h.fault == fault),
            "{} never happened: {:?}",
            fault.label(),
            report.faults
        );
    }
    let h = &report.history;
    eprintln!("{}", serde_json::to_string_pretty(h)?);
    anyhow::ensure!(
        report.passed(),
        "partitions run failed: {:?}",
        report.failures
    );
    anyhow::ensure!(h.passed() && h.acked_chat_checked > 200, "history: {h:?}");
    anyhow::ensure!(h.windows.len() == PARTITIONS.len());
    let pg = report
        .postgres
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no row check"))?;
    anyhow::ensure!(pg.equal, "row check: {pg:?}");
    Ok(())
}
