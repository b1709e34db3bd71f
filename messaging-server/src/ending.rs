//! Why the server ends a device's connection, as the layers below the
//! session say it: the session maps it to a close code and frame
//! (`session::Close`), nothing below knows WebSocket.

use crate::delivery::Overflow;
use protocol::frames::Redirect;

#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Its queue or replay buffer overflowed: the device does not keep up.
    TooSlow(Overflow),
    /// Its partition is served by another server now (named when known).
    Moved(Option<Redirect>),
    /// This server stops serving it: draining, registration lost, woken
    /// from a freeze (the new owner named when known).
    Leaving {
        why: &'static str,
        redirect: Option<Redirect>,
    },
}

impl Ending {
    pub fn leaving(why: &'static str) -> Self {
        Self::Leaving {
            why,
            redirect: None,
        }
    }
}
