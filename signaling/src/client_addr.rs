//! Who is at the other end of a request: the address limits are counted against.
//!
//! Every filter that needs the client's address asks [`client_ip`], never `warp::addr::remote()` directly,
//! so the accept loop (plain or TLS) and the trusted-proxy rule (`X-Forwarded-For` only from configured
//! proxies) are decided in one place.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use warp::Filter;

/// The client address of a request, as limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// Stands for requests whose transport has no socket address (only `warp::test` requests).
    pub const UNKNOWN: ClientIp = ClientIp(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
}

/// The client address of the request.
pub fn client_ip() -> impl Filter<Extract = (ClientIp,), Error = Infallible> + Clone {
    warp::addr::remote().map(|addr: Option<std::net::SocketAddr>| addr.map_or(ClientIp::UNKNOWN, |a| ClientIp(a.ip())))
}
