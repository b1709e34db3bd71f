//! The first frame: a `hello` in time, with a token that verifies.

use super::Close;
use super::Stream;
use crate::auth::Verified;
use crate::state::AppState;
use axum::extract::ws::Message as WsMessage;
use futures_util::StreamExt;
use protocol::frames;
use protocol::{ClientFrame, CloseCode, Cursor, DeviceId};
use tracing::debug;

/// Who said hello: the verified token, the device (random when the client
/// names none), the cursor to resume from and the epoch of the map that
/// sent the client here.
pub(super) struct Hello {
    pub who: Verified,
    pub device: DeviceId,
    pub cursor: Option<Cursor>,
    pub epoch: Option<u64>,
    /// When the hello was read: the session's start steps are timed from it.
    pub at: std::time::Instant,
}

pub(super) async fn accept(stream: &mut Stream, state: &AppState) -> Result<Hello, Close> {
    let hello = read_hello(stream, state).await?;
    let at = std::time::Instant::now();
    let who = state.auth.verify(&hello.token).await.map_err(|e| {
        debug!(error = %e, "hello refused");
        Close::new(CloseCode::Unauthorized, "unauthorized")
    })?;
    Ok(Hello {
        who,
        device: hello.device_id.unwrap_or_else(DeviceId::random),
        cursor: hello.cursor,
        epoch: hello.epoch,
        at,
    })
}

async fn read_hello(stream: &mut Stream, state: &AppState) -> Result<frames::Hello, Close> {
    let deadline = tokio::time::Instant::now() + state.config.hello_timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(Close::new(CloseCode::NoHello, "no hello in time")),
            Ok(None) => return Err(Close::new(CloseCode::NoHello, "closed before hello")),
            Ok(Some(Err(e))) => return Err(super::read_failed(&e)),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            WsMessage::Text(t) => t,
            WsMessage::Close(_) => {
                return Err(Close::new(CloseCode::NoHello, "closed before hello"))
            }
            _ => continue,
        };
        return match ClientFrame::parse(&text) {
            Ok(ClientFrame::Hello(h)) => Ok(h),
            _ => Err(Close::new(
                CloseCode::Unauthorized,
                "the first frame must be a valid hello",
            )),
        };
    }
}
