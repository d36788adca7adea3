//! Who is at the other end of a request: the address limits are counted against.
//!
//! Every filter that needs the client's address asks [`client_ip`], never `warp::addr::remote()` directly
//! (which is `None` under our own accept loop). The edge (`crate::edge`) decides the address once per request
//! with [`resolve`] and stores it as a request extension: the TCP peer, or — only when that peer is a
//! configured `--trusted-proxy` — the right-most address in `X-Forwarded-For` that is not itself a trusted
//! proxy. A client that is not a trusted proxy cannot move its count by sending `X-Forwarded-For`.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use warp::Filter;

/// The client address of a request, as limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// Stands for requests whose transport has no socket address (only `warp::test` requests).
    pub const UNKNOWN: ClientIp = ClientIp(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
}

/// The TCP peer of the connection a request came on (a proxy's address when behind one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The client address of the request.
pub fn client_ip() -> impl Filter<Extract = (ClientIp,), Error = Infallible> + Clone {
    warp::ext::optional::<ClientIp>().map(|ip: Option<ClientIp>| ip.unwrap_or(ClientIp::UNKNOWN))
}

/// An address or network (`10.0.0.1`, `10.0.0.0/8`, `fd00::/8`), as `--trusted-proxy` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// A `--trusted-proxy` value that is not an address or CIDR.
#[derive(Debug, thiserror::Error)]
#[error("not an IP address or CIDR network: {0:?}")]
pub struct BadCidr(String);

impl FromStr for Cidr {
    type Err = BadCidr;
    fn from_str(s: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is inside this network. An IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => masked(u32::from(n).into(), self.prefix, 32) == masked(u32::from(a).into(), self.prefix, 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => masked(u128::from(n), self.prefix, 128) == masked(u128::from(a), self.prefix, 128),
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 { 0 } else { bits >> (width - prefix) }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The configured `--trusted-proxy` networks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// The client address of a request that came from TCP peer `peer` with these `X-Forwarded-For` header values
/// (in order). Only a trusted peer's header is read; within it, hops are read right to left (the right-most
/// is the one our proxy appended, the left-most is whatever the client claimed) and the first that is not a
/// trusted proxy is the client. An unparsable hop stops the walk at the last address that was vouched for.
pub fn resolve<'a>(peer: IpAddr, trusted: &TrustedProxies, xff: impl IntoIterator<Item = &'a [u8]>) -> ClientIp {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return ClientIp(peer);
    }
    let values: Vec<&[u8]> = xff.into_iter().collect();
    let mut current = peer;
    for value in values.iter().rev() {
        let Ok(value) = std::str::from_utf8(value) else { return ClientIp(current) };
        for hop in value.rsplit(',') {
            let Some(ip) = parse_hop(hop.trim()) else { return ClientIp(current) };
            current = canonical(ip);
            if !trusted.contains(current) {
                return ClientIp(current);
            }
        }
    }
    ClientIp(current)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn spoofed_xff_from_an_untrusted_peer_is_ignored() {
        let t = proxies(&["10.0.0.0/8"]);
        assert_eq!(resolve(ip("203.0.113.9"), &t, [&b"1.1.1.1"[..]]), ClientIp(ip("203.0.113.9")));
        // No proxies configured: nobody's header is read.
        assert_eq!(resolve(ip("10.0.0.1"), &TrustedProxies::default(), [&b"1.1.1.1"[..]]), ClientIp(ip("10.0.0.1")));
    }

    #[test]
    fn a_trusted_proxy_gives_the_right_most_untrusted_hop() {
        let t = proxies(&["10.0.0.0/8", "192.0.2.5"]);
        // The client prepended a fake 6.6.6.6; the proxy appended the real 198.51.100.7.
        let v: &[u8] = b"6.6.6.6, 198.51.100.7";
        assert_eq!(resolve(ip("10.1.2.3"), &t, [v]), ClientIp(ip("198.51.100.7")));
        // Two proxies in a row, across two header lines.
        let (a, b): (&[u8], &[u8]) = (b"6.6.6.6, 198.51.100.7", b"192.0.2.5");
        assert_eq!(resolve(ip("10.1.2.3"), &t, [a, b]), ClientIp(ip("198.51.100.7")));
        // Ports and brackets.
        let v: &[u8] = b"[2001:db8::1]:443";
        assert_eq!(resolve(ip("10.1.2.3"), &t, [v]), ClientIp(ip("2001:db8::1")));
    }

    #[test]
    fn junk_or_missing_xff_falls_back_to_what_is_vouched_for() {
        let t = proxies(&["10.0.0.0/8"]);
        assert_eq!(resolve(ip("10.0.0.1"), &t, []), ClientIp(ip("10.0.0.1")));
        let v: &[u8] = b"evil, 10.0.0.2";
        assert_eq!(resolve(ip("10.0.0.1"), &t, [v]), ClientIp(ip("10.0.0.2")));
        let v: &[u8] = b"\xff\xfe";
        assert_eq!(resolve(ip("10.0.0.1"), &t, [v]), ClientIp(ip("10.0.0.1")));
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.0.1")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")), "v4-mapped v6 peer");
        let c: Cidr = "fd00::/8".parse().unwrap();
        assert!(c.contains(ip("fd12::1")) && !c.contains(ip("fe80::1")));
        let c: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(c.contains(ip("1.2.3.4")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }
}
