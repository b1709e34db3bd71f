//! A test runner for tests against real infrastructure (libtest-mimic, the
//! same output as libtest): one set of containers is started before the
//! tests and removed after them. Used by the integration tests and by the
//! tools' chaos test.

use crate::{docker_compat, Infra};
use libtest_mimic::{Arguments, Trial};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub type TestFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
pub type TestFn = fn(Arc<Infra>) -> TestFuture;

/// Each test gets this long before it counts as failed.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(300);

#[macro_export]
macro_rules! tests {
    ($($path:path),* $(,)?) => {
        vec![$((stringify!($path), (|i| Box::pin($path(i)) as $crate::trials::TestFuture) as $crate::trials::TestFn)),*]
    };
}

/// Parses the test arguments, starts the infrastructure, runs `tests`.
pub fn main(tests: Vec<(&'static str, TestFn)>) -> ExitCode {
    let args = Arguments::from_args();
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
