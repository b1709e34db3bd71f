//! A child process of the benchmark (one of this binary's hidden commands)
//! holding client connections: each process may hold at most 20,000 file
//! descriptors here, so large audiences are spread over several. The child
//! reports on stdout in tagged lines and is told when to go on through stdin.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

pub struct Child {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stdin: Option<tokio::process::ChildStdin>,
}

/// Which devices a child holds (users `first..first + count`) and where it
/// finds the cluster.
#[derive(clap::Args, Clone)]
pub struct Span {
    #[arg(long)]
    pub coordinator: String,
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
}

impl Span {
    /// The partition map the child routes its devices by.
    pub async fn assignment(&self) -> anyhow::Result<protocol::Assignment> {
        let url = format!("{}/v1/assignment", self.coordinator);
        Ok(reqwest::get(url).await?.json().await?)
    }
}

impl Child {
    /// Runs hidden command `cmd` for `span`, with `--flag value` for each of `flags`.
    pub fn command(cmd: &str, span: &Span, flags: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut args = vec![cmd.to_owned()];
        let span_flags = [
            ("coordinator", span.coordinator.clone()),
            ("first", span.first.to_string()),
            ("count", span.count.to_string()),
        ];
        for (flag, value) in span_flags.iter().chain(flags) {
            args.push(format!("--{flag}"));
            args.push(value.clone());
        }
        Self::spawn(&args)
    }

    /// Runs this binary with `args` (the first names the hidden command).
    fn spawn(args: &[String]) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines: tokio::io::BufReader::new(out).lines(),
        })
    }

    /// The next line starting with `tag`, without the tag.
    pub async fn line(&mut self, tag: &str) -> anyhow::Result<String> {
        while let Some(l) = self.lines.next_line().await? {
            if let Some(rest) = l.strip_prefix(tag) {
                return Ok(rest.trim().to_owned());
            }
        }
        let status = self.child.wait().await?;
        anyhow::bail!("child exited ({status}) before {tag:?}")
    }

    /// Writes one line to the child's stdin.
    pub async fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        Ok(stdin.flush().await?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What the parent writes to this (child) process's stdin, line by line.
pub struct Told(tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>);

impl Told {
    pub fn stdin() -> Self {
        Self(tokio::io::BufReader::new(tokio::io::stdin()).lines())
    }

    /// The next line; empty once the parent has gone.
    pub async fn next(&mut self) -> anyhow::Result<String> {
        Ok(self.0.next_line().await?.unwrap_or_default())
    }
}
