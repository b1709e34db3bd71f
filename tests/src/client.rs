//! A minimal WebSocket client for tests: frames in, frames out, close codes.

use futures_util::{SinkExt, StreamExt};
use protocol::{ClientFrame, Cursor, DeviceId, ServerFrame};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug)]
pub enum Event {
    Frame(ServerFrame),
    Closed(Option<u16>),
}

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// WebSocket pings the server sent (read by `next`), so far.
    pub pings: usize,
}

impl WsClient {
    pub async fn connect(ws_url: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
        Ok(Self { ws, pings: 0 })
    }

    pub async fn send_text(&mut self, text: impl Into<String>) -> anyhow::Result<()> {
        self.ws.send(Message::text(text.into())).await?;
        Ok(())
    }

    pub async fn hello(
        &mut self,
        token: &str,
        device: &str,
        cursor: Option<Cursor>,
    ) -> anyhow::Result<Event> {
        let hello = protocol::frames::Hello {
            token: token.into(),
            device_id: Some(DeviceId::new(device)?),
            cursor,
            epoch: None,
        };
        self.send_text(ClientFrame::Hello(hello).to_json()?).await?;
        self.next(Duration::from_secs(10)).await
    }

    /// The next frame or close; an error on time-out.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow::anyhow!("no frame within {within:?}"))?;
            match msg {
                None => return Ok(Event::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => {
                    return Ok(Event::Frame(
                        ServerFrame::parse(&t)
                            .map_err(|e| anyhow::anyhow!("bad frame {t}: {e:?}"))?,
                    ))
                }
                Some(Ok(Message::Close(c))) => {
                    return Ok(Event::Closed(c.map(|c| u16::from(c.code))))
                }
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn frame(&mut self, within: Duration) -> anyhow::Result<ServerFrame> {
        match self.next(within).await? {
            Event::Frame(f) => Ok(f),
            Event::Closed(c) => {
                anyhow::bail!("connection closed with {c:?} while waiting for a frame")
            }
        }
    }

    /// Waits for the close, skipping frames; returns its code.
    pub async fn closed(&mut self, within: Duration) -> anyhow::Result<Option<u16>> {
        loop {
            if let Event::Closed(c) = self.next(within).await? {
                return Ok(c);
            }
        }
    }

    /// True if nothing arrives within `within`.
    pub async fn quiet(&mut self, within: Duration) -> bool {
        self.next(within).await.is_err()
    }
}
