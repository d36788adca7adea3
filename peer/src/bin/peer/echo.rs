//! `peer echo`: every message goes back to its sender on the channel it came on, unchanged (text as text,
//! binary as binary). Raw on purpose: it speaks no application protocol, so the web demo's `hello` comes back
//! as a `hello` too.

use crate::common::{self, Failure, Globals};
use peer::Event;

pub async fn run(g: &Globals) -> Result<(), Failure> {
    let (peer, mut events) = common::connect(g).await?;
    let interrupted = common::interrupted();
    tokio::pin!(interrupted);
    let mut signaling_open = true;
    let mut open = std::collections::HashSet::new();
    let result = loop {
        let ev = tokio::select! {
            _ = &mut interrupted => break Ok(()),
            ev = events.recv() => ev,
        };
        let Some(ev) = ev else { break Err(Failure::runtime("closed", "the peer stopped")) };
        match ev {
            // Awaiting the send is the backpressure: we read no faster than the sender accepts our echoes. No
            // timeout on purpose: giving up in the middle of a chunked message would corrupt the channel.
            Event::Message { peer: from, label, payload } => {
                if let Err(e) = peer.send(&from, &label, payload).await {
                    tracing::warn!(peer = %from, %label, code = e.code(), "echo not sent: {e}");
                }
            }
            ev => {
                match &ev {
                    Event::ChannelOpen { peer: p, label } => {
                        open.insert((p.clone(), label.clone()));
                    }
                    Event::ChannelClosed { peer: p, label } => {
                        open.remove(&(p.clone(), label.clone()));
                    }
                    Event::PeerLeft { peer: p, .. } => open.retain(|(q, _)| q != p),
                    Event::SignalingClosed { .. } => signaling_open = false,
                    _ => {}
                }
                common::print_presence(&ev);
                if !signaling_open && open.is_empty() {
                    // Nobody new can reach us and nobody is connected: there is nothing left to do.
                    break Err(Failure::runtime("signaling-closed", "signaling session closed and no channel is open"));
                }
            }
        }
    };
    common::close(peer).await;
    result
}
