//! testcontainers 0.28 speaks Docker API 1.53 and never negotiates, while
//! Debian bookworm's engine (20.10) stops at 1.41 and refuses newer clients.
//! This shim is a Unix-socket relay to the real engine that rewrites the
//! version in request paths (same length, so framing is untouched). It is
//! only started when the engine is older than the client.

use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const CLIENT_VERSION: &[u8] = b"/v1.53/";
const ENGINE_SOCKET: &str = "/var/run/docker.sock";

/// The engine's highest API version, e.g. `(1, 41)`.
pub async fn engine_api_version(socket: &Path) -> std::io::Result<(u32, u32)> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let v = text
        .split("\"ApiVersion\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or_else(|| std::io::Error::other("no ApiVersion in /version"))?;
    let (maj, min) = v
        .split_once('.')
        .ok_or_else(|| std::io::Error::other("bad ApiVersion"))?;
    Ok((maj.parse().unwrap_or(1), min.parse().unwrap_or(0)))
}

/// Returns the `DOCKER_HOST` to use: the real socket, or a relay when needed.
pub async fn docker_host(dir: &Path) -> std::io::Result<String> {
    let engine = Path::new(ENGINE_SOCKET);
    let (maj, min) = engine_api_version(engine).await?;
    if (maj, min) >= (1, 53) {
        return Ok(format!("unix://{ENGINE_SOCKET}"));
    }
    let target = format!("/v{maj}.{min:02}/").into_bytes();
    if target.len() != CLIENT_VERSION.len() {
        return Err(std::io::Error::other(format!(
            "cannot relay to engine API {maj}.{min}"
        )));
    }
    let path: PathBuf = dir.join("docker.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(engine) = UnixStream::connect(ENGINE_SOCKET).await {
                    let _ = relay(client, engine, target).await;
                }
            });
        }
    });
    Ok(format!("unix://{}", path.display()))
}

async fn relay(client: UnixStream, engine: UnixStream, target: Vec<u8>) -> std::io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (mut er, mut ew) = engine.into_split();
    let upstream = async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                ew.write_all(&pending).await?;
                return ew.shutdown().await;
            }
            pending.extend_from_slice(&buf[..n]);
            rewrite(&mut pending, &target);
            let flush = pending.len() - partial_match_len(&pending);
            ew.write_all(&pending[..flush]).await?;
            pending.drain(..flush);
        }
    };
    let downstream = async move { tokio::io::copy(&mut er, &mut cw).await.map(|_| ()) };
    let (a, b) = tokio::join!(upstream, downstream);
    a.and(b)
}

/// Length of the longest tail of `buf` that starts the version pattern: only
/// that much is held back, so a version split across reads is still seen and
/// a complete request is never delayed.
fn partial_match_len(buf: &[u8]) -> usize {
    (1..CLIENT_VERSION.len())
        .rev()
        .find(|n| buf.len() >= *n && buf[buf.len() - n..] == CLIENT_VERSION[..*n])
        .unwrap_or(0)
}

fn rewrite(buf: &mut [u8], target: &[u8]) {
    let n = CLIENT_VERSION.len();
    let mut i = 0;
    while i + n <= buf.len() {
        if &buf[i..i + n] == CLIENT_VERSION {
            buf[i..i + n].copy_from_slice(target);
            i += n;
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rewrites_every_occurrence_in_place() {
        let mut b = b"GET /v1.53/containers/json HTTP/1.1\r\n\r\nPOST /v1.53/x".to_vec();
        super::rewrite(&mut b, b"/v1.41/");
        assert_eq!(
            b,
            b"GET /v1.41/containers/json HTTP/1.1\r\n\r\nPOST /v1.41/x".to_vec()
        );
        assert_eq!(super::partial_match_len(b"GET /v1."), 4);
        assert_eq!(super::partial_match_len(b"\r\n\r\n"), 0);
    }
}
