//! Our service binaries as real child processes, for tests that must kill
//! one (`SIGKILL`) or stop it the way an orchestrator does (`SIGTERM`).

use std::path::PathBuf;
use std::process::Stdio;
use tokio::process::{Child, Command};

/// This process's (soft, hard) limits on open files, from
/// `/proc/self/limits` (children inherit them).
pub fn open_file_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line.split_whitespace().skip(3);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// The binary `name` beside the running executable: test binaries live in
/// `target/<profile>/deps`, tools in `target/<profile>` (`./dev test` builds them).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("unexpected executable location"))?;
    let candidates = [Some(dir.join(name)), dir.parent().map(|d| d.join(name))];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{name} is not built next to {}: run `cargo build --bins` (./dev test does)",
                dir.display()
            )
        })
}

pub struct Process {
    pub name: String,
    child: Child,
}

impl Process {
    pub fn spawn(name: &str, envs: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary(name)?);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        cmd.env(
            "RUST_LOG",
            std::env::var("SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
        );
        for (k, v) in envs {
            cmd.env(k, v);
        }
        // Services log to stdout: kept only when asked for (`SERVICE_LOG_DIR`,
        // a file per process, e.g. to time a benchmark's failover).
        let stdout = match std::env::var_os("SERVICE_LOG_DIR") {
            Some(dir) => {
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_micros();
                let file = std::path::Path::new(&dir).join(format!("{name}-{at}.log"));
                Stdio::from(std::fs::File::create(file)?)
            }
            None => Stdio::null(),
        };
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        Ok(Self {
            name: name.to_owned(),
            child: cmd.spawn()?,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Still running (not exited, not killed)?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9`: no drain, no flush, no lease revoke.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow::anyhow!("the process has exited"))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// `SIGTERM`, then waits for a clean exit; returns the exit code.
    pub async fn terminate(mut self) -> anyhow::Result<Option<i32>> {
        if let Some(pid) = self.child.id() {
            Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await?;
        }
        Ok(self.child.wait().await?.code())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn open_file_limits_read_both_columns() {
        let (soft, hard) = super::open_file_limits().expect("Linux has /proc/self/limits");
        assert!(soft > 0 && soft <= hard, "soft {soft}, hard {hard}");
    }
}
