//! Containers driven with the docker CLI, and a Docker network of the run's
//! own where every container has an address of its own: links between two
//! of them are cut with `iptables` inside one container's network namespace
//! (entered from the host with `nsenter`, so the images need no iptables),
//! made lossy with iptables' `statistic` match, or slowed by routing through
//! a delay proxy (the kernel here has no netem).

use anyhow::Context;
use rand::Rng;
use std::time::Duration;

/// Runs `program` and returns its output, or an error with what it printed.
async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("failed to run {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.first().copied().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn docker(args: &[&str]) -> anyhow::Result<String> {
    run("docker", args).await
}

/// A container the run created; removed by `remove` or, failing that, on drop.
pub struct Container {
    pub id: String,
    pub name: String,
}

/// What `Container::run` starts.
pub struct Spec<'a> {
    pub name: String,
    pub image: &'a str,
    /// `host`, or the run's network (with `ip`).
    pub network: &'a str,
    pub ip: Option<&'a str>,
    pub label: &'a str,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl Container {
    pub async fn run(spec: Spec<'_>) -> anyhow::Result<Self> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            spec.name.clone(),
        ];
        a.extend(["--network".into(), spec.network.into()]);
        if let Some(ip) = spec.ip {
            a.extend(["--ip".into(), ip.into()]);
        }
        a.extend([
            "--label".into(),
            format!("switchboard.test-run={}", spec.label),
        ]);
        for (k, v) in &spec.env {
            a.extend(["-e".into(), format!("{k}={v}")]);
        }
        a.push(spec.image.into());
        a.extend(spec.args);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let id = docker(&refs).await.with_context(|| {
            format!(
                "failed to start {} (did ./dev build the images?)",
                spec.name
            )
        })?;
        Ok(Self {
            id,
            name: spec.name,
        })
    }

    /// `kill -9` of the process: no drain, no lease revoke.
    pub async fn kill(&self) -> anyhow::Result<()> {
        docker(&["kill", "--signal", "KILL", &self.id])
            .await
            .map(drop)
    }

    /// `SIGTERM`, then `SIGKILL` after `grace`, as an orchestrator stops it.
    pub async fn stop(&self, grace: Duration) -> anyhow::Result<()> {
        let t = grace.as_secs().to_string();
        docker(&["stop", "-t", &t, &self.id]).await.map(drop)
    }

    pub async fn start(&self) -> anyhow::Result<()> {
        docker(&["start", &self.id]).await.map(drop)
    }

    /// Freezes every process of the container (the cgroup freezer: a
    /// SIGSTOP that the process cannot see), or thaws it.
    pub async fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        let verb = if frozen { "pause" } else { "unpause" };
        docker(&[verb, &self.id]).await.map(drop)
    }

    pub fn pid(&self) -> Option<u32> {
        harness::infra::container_pid(&self.id)
    }

    pub async fn logs(&self) -> anyhow::Result<Vec<u8>> {
        let out = tokio::process::Command::new("docker")
            .args(["logs", &self.id])
            .output()
            .await
            .context("failed to run docker logs")?;
        let mut text = out.stdout;
        text.extend_from_slice(&out.stderr);
        Ok(text)
    }

    /// `iptables` in the container's network namespace.
    pub async fn iptables(&self, rule: &[&str]) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?
            .to_string();
        let mut args = vec!["-t", &pid, "-n", "iptables", "-w"];
        args.extend_from_slice(rule);
        run("nsenter", &args)
            .await
            .with_context(|| format!("iptables {rule:?} in {}", self.name))
            .map(drop)
    }

    /// Drops every packet to and from `peer` (optionally one TCP port of
    /// it), without a FIN or RST: the half-open link of a partition.
    pub async fn cut(&self, peer: &str, port: Option<u16>, cut: bool) -> anyhow::Result<()> {
        let verb = if cut { "-I" } else { "-D" };
        let port = port.map(|p| p.to_string());
        let mut out = vec![verb, "OUTPUT", "-d", peer];
        let mut inp = vec![verb, "INPUT", "-s", peer];
        if let Some(p) = &port {
            out.extend(["-p", "tcp", "--dport", p]);
            inp.extend(["-p", "tcp", "--sport", p]);
        }
        out.extend(["-j", "DROP"]);
        inp.extend(["-j", "DROP"]);
        self.iptables(&out).await?;
        self.iptables(&inp).await
    }

    /// Drops every packet of this container's own TCP port `port` (its
    /// clients' connections), in and out.
    pub async fn cut_port(&self, port: u16, cut: bool) -> anyhow::Result<()> {
        let verb = if cut { "-I" } else { "-D" };
        let p = port.to_string();
        self.iptables(&[verb, "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"])
            .await?;
        self.iptables(&[verb, "OUTPUT", "-p", "tcp", "--sport", &p, "-j", "DROP"])
            .await
    }

    /// Drops `percent`% of the packets to and from `peer`.
    pub async fn lossy(&self, peer: &str, percent: u32, on: bool) -> anyhow::Result<()> {
        let verb = if on { "-I" } else { "-D" };
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        for (chain, dir) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
            let rule = [
                verb,
                chain,
                dir,
                peer,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ];
            self.iptables(&rule).await?;
        }
        Ok(())
    }

    pub async fn remove(&self) {
        let _ = docker(&["rm", "-f", "-v", &self.id]).await;
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // After `remove` this finds nothing; after a panic it cleans up.
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v", &self.id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A Docker network of the run's own, on a /24 chosen at random in
/// 10.128.0.0/9 (retried when another network has it).
pub struct Net {
    pub name: String,
    /// The network's first three octets.
    pub prefix: String,
}

impl Net {
    pub async fn create(label: &str) -> anyhow::Result<Self> {
        let name = format!("sb-net-{label}");
        let mut last = None;
        for _ in 0..8 {
            let (a, b) = {
                let mut rng = rand::rng();
                (rng.random_range(128..=254u8), rng.random_range(0..=255u8))
            };
            let prefix = format!("10.{a}.{b}");
            let subnet = format!("{prefix}.0/24");
            let gateway = format!("{prefix}.1");
            let lbl = format!("switchboard.test-run={label}");
            let args = [
                "network",
                "create",
                "--subnet",
                &subnet,
                "--gateway",
                &gateway,
                "--label",
                &lbl,
                &name,
            ];
            match docker(&args).await {
                Ok(_) => return Ok(Self { name, prefix }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no subnet")))
            .context("failed to create the run's Docker network")
    }

    /// The address of host `n` on the network (1 is the host itself).
    pub fn ip(&self, n: u8) -> String {
        format!("{}.{n}", self.prefix)
    }

    pub async fn remove(&self) {
        let _ = docker(&["network", "rm", &self.name]).await;
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
