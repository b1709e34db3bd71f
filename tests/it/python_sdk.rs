//! The Python package (clients/python) against the real stack, with pytest
//! in the virtualenv `./dev test` installs it into (`pip install
//! ./clients/python[test]`): its unit tests; the JS SDK's scenario (200
//! messages across a drain and a crash of bob's server, a token refresh:
//! exactly once, in order), driven from here; and the HTTP API (publish
//! idempotency, history paging, error codes).

use crate::js_sdk::{check, drive, Lines};
use harness::{Infra, Stack};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const API_KEY: &str = "python-api-key-0123456789abcdef-0123456789";

fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/python")
}

/// The virtualenv's python (`SWITCHBOARD_PYTHON`, set by `./dev test`).
fn python() -> anyhow::Result<PathBuf> {
    let cache =
        std::env::var("SWITCHBOARD_CACHE").unwrap_or_else(|_| "/var/cache/switchboard".into());
    let path = std::env::var("SWITCHBOARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(cache).join("python-sdk/bin/python"));
    anyhow::ensure!(
        path.exists(),
        "no {} with the Python package: run ./dev test (it installs clients/python into it)",
        path.display()
    );
    Ok(path)
}

fn pytest(stack: &Stack, tests: &[&str]) -> anyhow::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(python()?);
    cmd.args(["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"])
        .args(tests)
        .current_dir(package_dir())
        .env("SB_COORDINATORS", stack.coordinator.url())
        .env("SB_JWT_SECRET", harness::stack::JWT_SECRET)
        .env("SB_API_KEY", API_KEY)
        .kill_on_drop(true);
    Ok(cmd)
}

/// The scenario from Python, the servers moved from here at its marks.
pub async fn python_sdk_delivers_exactly_once_across_failures(
    infra: Arc<Infra>,
) -> anyhow::Result<()> {
    let mut stack = Stack::start(&infra, "py-client", 3, false).await?;
    let (alice, bob) = stack.users_on_distinct_servers("py").await?;
    let mut child = pytest(&stack, &["tests/live/test_scenario.py"])?
        .env("SB_ALICE", &alice)
        .env("SB_BOB", &bob)
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = Lines::Process(tokio::io::BufReader::new(out).lines());
    let result = drive(&mut stack, &bob, &mut lines).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    stack.stop().await;
    check(&result?)?;
    anyhow::ensure!(status.success(), "pytest failed: {status}");
    Ok(())
}

/// The unit tests and the HTTP API tests, with a persister for history.
pub async fn python_sdk_api_and_unit_tests(infra: Arc<Infra>) -> anyhow::Result<()> {
    let stack = Stack::start_with(&infra, "py-api", 2, true, |c| {
        c.api_keys = vec![API_KEY.to_owned().into()];
    })
    .await?;
    let out = pytest(&stack, &["tests/test_unit.py", "tests/live/test_api.py"])?.output();
    let out = tokio::time::timeout(Duration::from_secs(180), out).await??;
    stack.stop().await;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("    [pytest] {}", text.lines().last().unwrap_or_default());
    anyhow::ensure!(
        out.status.success() && text.contains(" passed"),
        "pytest: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
