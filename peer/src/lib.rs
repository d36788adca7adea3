//! Native WebRTC data channels for apps: join a room on the signaling server and exchange bytes and text
//! with browsers and other native peers over direct data channels.
//!
//! ```no_run
//! use peer::{Event, Payload, Peer, PeerConfig};
//!
//! # async fn run() -> Result<(), peer::Error> {
//! let (peer, mut events) = Peer::connect(PeerConfig::new("http://127.0.0.1:8080", "demo")).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::ChannelOpen { peer: other, label } => {
//!             peer.send(&other, &label, Payload::Text("hello".into())).await?;
//!         }
//!         Event::Message { peer: from, payload, .. } => println!("{from}: {payload:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod error;
pub mod framing;
pub mod ice;
mod node;
mod rtc;
pub mod signaling;
pub mod tls;

pub use error::Error;
pub use node::{ChannelOptions, Event, Payload, Peer, PeerConfig};
pub use rtc::SEND_BUFFER_LIMIT;
pub use tls::TlsOptions;
