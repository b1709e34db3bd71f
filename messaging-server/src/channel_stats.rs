//! A channel's audience over every server (`GET /v1/channels/{c}/stats`):
//! this server's share from the channel hub, the others' asked over HTTP
//! with `?local=true`. The sum is exact for users too, since all of a
//! user's devices are on the server that owns the user's partition.

use protocol::api::ChannelStats;
use protocol::ChannelName;
use std::sync::LazyLock;
use std::time::Duration;

/// One pool for the asks between servers (a server answers from memory).
static PEERS: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default()
});

#[derive(Debug, thiserror::Error)]
#[error("server {url} did not answer with its share of {channel}: {reason}")]
pub struct PeerError {
    url: String,
    channel: String,
    reason: String,
}

/// `local` plus every peer's share (`peers`: the other servers' HTTP base
/// URLs), asked at once with the caller's `authorization`. A peer that
/// does not answer fails the whole answer: a partial count would be wrong
/// without saying so.
pub async fn total(
    local: ChannelStats,
    peers: &[String],
    channel: &ChannelName,
    authorization: &str,
) -> Result<ChannelStats, PeerError> {
    let asks = peers.iter().map(|base| async move {
        let url = format!("{base}/v1/channels/{channel}/stats");
        let fail = |reason: String| PeerError {
            url: url.clone(),
            channel: channel.to_string(),
            reason,
        };
        let answer = PEERS
            .get(&url)
            .query(&[("local", "true")])
            .header("authorization", authorization)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| fail(e.to_string()))?;
        answer
            .json::<ChannelStats>()
            .await
            .map_err(|e| fail(e.to_string()))
    });
    let shares = futures_util::future::try_join_all(asks).await?;
    Ok(shares.into_iter().fold(local, |sum, s| sum + s))
}
