//! Integration tests against a real broker, etcd and PostgreSQL.
//!
//! A custom harness (libtest-mimic, same output as libtest) so that one set
//! of infrastructure is started before the tests and removed after them.

mod broker_faults;
mod browser;
mod client;
mod compose;
mod coordinator;
mod load;
mod messaging;
mod persister;
mod smoke;

use harness::{docker_compat, Infra};
use libtest_mimic::{Arguments, Trial};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

type TestFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type TestFn = fn(Arc<Infra>) -> TestFuture;

/// Each test gets this long before it counts as failed.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

macro_rules! tests {
    ($($path:path),* $(,)?) => {
        vec![$((stringify!($path), (|i| Box::pin($path(i)) as TestFuture) as TestFn)),*]
    };
}

fn all_tests() -> Vec<(&'static str, TestFn)> {
    tests![
        smoke::broker_etcd_and_postgres_answer,
        compose::scale_to_three_and_chat_on_the_third,
        client::client_resumes_and_dedupes_across_a_drain,
        client::cli_route_send_tail_and_history,
        client::slow_app_gets_everything_after_4004,
        browser::two_browser_users_chat_and_survive_a_drain,
        coordinator::three_servers_join_drain_and_crash,
        coordinator::leader_failover_keeps_routes_and_fences_stale_writes,
        coordinator::long_poll_returns_on_change_and_times_out,
        coordinator::route_api_validates_and_answers,
        broker_faults::broker_pause_answers_and_recovers,
        broker_faults::overload_refuses_early_and_recovers,
        messaging::dm_and_group_reach_every_device,
        messaging::resume_on_new_owner_after_partition_moved,
        messaging::bad_input_gets_its_code,
        messaging::history_pages_return_every_message_once,
        messaging::drain_under_traffic_loses_nothing,
        messaging::lost_lease_closes_sessions_and_reregisters,
        messaging::dashboard_queries_only_exported_metrics,
        persister::exactly_once_across_kills_and_replicas,
        persister::recovers_by_itself_after_a_postgres_outage,
        load::chaos_run_loses_nothing,
    ]
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests = all_tests();
    if args.list {
        let trials = tests
            .into_iter()
            .map(|(n, _)| Trial::test(n.replace(" ", ""), || Ok(())))
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let infra = match rt.block_on(start_infra()) {
        Ok(i) => Arc::new(i),
        Err(e) => {
            eprintln!("[infra] failed to start the test infrastructure: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let infra = infra.clone();
            Trial::test(name.replace(" ", ""), move || run_one(infra, f))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Ok(infra) = Arc::try_unwrap(infra) {
        rt.block_on(infra.stop());
        eprintln!("[infra] containers removed");
    }
    conclusion.exit_code()
}

async fn start_infra() -> anyhow::Result<Infra> {
    let dir = std::env::temp_dir().join(format!("switchboard-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let host = docker_compat::docker_host(&dir).await?;
    // Read by testcontainers; set before any container request is made.
    std::env::set_var("DOCKER_HOST", host);
    Infra::start().await
}

fn run_one(infra: Arc<Infra>, f: TestFn) -> Result<(), libtest_mimic::Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async { tokio::time::timeout(TEST_TIMEOUT, f(infra)).await });
    rt.shutdown_background();
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{e:#}").into()),
        Err(_) => Err(format!("timed out after {TEST_TIMEOUT:?}").into()),
    }
}
