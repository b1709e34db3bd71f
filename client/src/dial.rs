//! Opening the WebSocket to a server, from a source address of the app's
//! choosing when it gave one (`ClientConfig::local_address`).

use crate::runner::Socket;
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::UrlError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error;
use tokio_tungstenite::MaybeTlsStream;

/// Connects and upgrades. Without `local` the system picks the source
/// address; with it, the connection leaves from `local` — a process
/// holding many clients toward one server otherwise shares one address's
/// ephemeral ports (about 28,000 on Linux) among all of them.
pub(crate) async fn websocket(
    url: &str,
    config: WebSocketConfig,
    local: Option<IpAddr>,
) -> Result<Socket, Error> {
    let Some(local) = local else {
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
        return Ok(ws);
    };
    let request = url.into_client_request()?;
    let uri = request.uri();
    if uri.scheme_str() != Some("ws") {
        return Err(Error::Url(UrlError::UnsupportedUrlScheme));
    }
    let host = uri.host().ok_or(Error::Url(UrlError::NoHostName))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let mut last = None;
    for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
        if addr.is_ipv4() != local.is_ipv4() {
            continue;
        }
        match from(local, addr).await {
            Ok(stream) => {
                let plain = MaybeTlsStream::Plain(stream);
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(request, plain, Some(config))
                        .await?;
                return Ok(ws);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or(Error::Url(UrlError::UnableToConnect(host)), Error::Io))
}

async fn from(local: IpAddr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match local {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(to).await
}
