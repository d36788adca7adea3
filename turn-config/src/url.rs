//! ICE server URLs: `stun:` (RFC 7064), `turn:` and `turns:` (RFC 7065).

use crate::Error;
use std::fmt;

/// The scheme of an ICE server URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `stun:` — a STUN server (server-reflexive candidates).
    Stun,
    /// `turn:` — a TURN relay, over UDP or TCP.
    Turn,
    /// `turns:` — a TURN relay over TLS. webrtc-rs 0.21 does not use these; browsers do.
    Turns,
}

/// The `?transport=` of a TURN URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `transport=udp`.
    Udp,
    /// `transport=tcp`.
    Tcp,
}

/// A validated ICE server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUrl {
    /// `stun`, `turn` or `turns`.
    pub scheme: Scheme,
    /// A host name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    /// The port, if given (the default is 3478, or 5349 for `turns:`).
    pub port: Option<u16>,
    /// The transport, if given (TURN only).
    pub transport: Option<Transport>,
}

impl IceUrl {
    /// Parses and validates `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]` or `turns:…`.
    ///
    /// ```
    /// use turn_config::url::{IceUrl, Scheme, Transport};
    /// let url = IceUrl::parse("turn:turn.example.org:3478?transport=udp").unwrap();
    /// assert_eq!((url.scheme, url.port, url.transport), (Scheme::Turn, Some(3478), Some(Transport::Udp)));
    /// assert_eq!(IceUrl::parse("http://example.org").unwrap_err().code(), "bad-ice-url");
    /// ```
    pub fn parse(url: &str) -> Result<IceUrl, Error> {
        let bad = |reason: &str| Error::BadUrl { url: url.to_owned(), reason: reason.to_owned() };
        let (scheme, rest) = url.split_once(':').ok_or_else(|| bad("no scheme (expected stun:, turn: or turns:)"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "stun" => Scheme::Stun,
            "turn" => Scheme::Turn,
            "turns" => Scheme::Turns,
            _ => return Err(bad("the scheme must be stun:, turn: or turns:")),
        };
        if rest.starts_with("//") {
            return Err(bad("ICE URLs have no `//` after the scheme (e.g. stun:host:3478)"));
        }
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let transport = match (scheme, query) {
            (_, None) => None,
            (Scheme::Stun, Some(_)) => return Err(bad("stun: URLs take no query")),
            (_, Some("transport=udp")) => Some(Transport::Udp),
            (_, Some("transport=tcp")) => Some(Transport::Tcp),
            (_, Some(_)) => return Err(bad("the only query is ?transport=udp or ?transport=tcp")),
        };
        let (host, port) = split_host_port(hostport).map_err(bad)?;
        Ok(IceUrl { scheme, host, port, transport })
    }

    /// Whether webrtc-rs 0.21 can use this URL: `stun:` and UDP `turn:` (no `turns:`, no TCP).
    pub fn usable_by_webrtc_rs(&self) -> bool {
        match self.scheme {
            Scheme::Stun => true,
            Scheme::Turn => self.transport != Some(Transport::Tcp),
            Scheme::Turns => false,
        }
    }
}

impl fmt::Display for IceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Stun => "stun",
            Scheme::Turn => "turn",
            Scheme::Turns => "turns",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}:[{}]", self.host)?;
        } else {
            write!(f, "{scheme}:{}", self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        match self.transport {
            Some(Transport::Udp) => write!(f, "?transport=udp"),
            Some(Transport::Tcp) => write!(f, "?transport=tcp"),
            None => Ok(()),
        }
    }
}

fn split_host_port(s: &str) -> Result<(String, Option<u16>), &'static str> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed `[` in an IPv6 address")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("not an IPv6 address inside `[…]`");
        }
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("junk after `]`")?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err("the port must be a number from 1 to 65535"),
            Ok(p) => Some(p),
        },
    };
    let is_ipv6 = host.contains(':');
    let host_ok = is_ipv6
        || (!host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }));
    if !host_ok {
        return Err("the host must be a DNS name or an IP address");
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_urls_round_trip() {
        for url in [
            "stun:stun.example.org",
            "stun:127.0.0.1:3478",
            "stun:[::1]:3478",
            "turn:turn.example.org:3478?transport=udp",
            "turn:turn.example.org?transport=tcp",
            "turns:turn.example.org:5349",
        ] {
            assert_eq!(IceUrl::parse(url).unwrap().to_string(), url);
        }
    }

    #[test]
    fn invalid_urls_are_refused_with_a_code() {
        for url in [
            "",
            "stun",
            "http://example.org",
            "stun://example.org",
            "stun:",
            "stun:host:0",
            "stun:host:70000",
            "stun:host:port",
            "stun:host?transport=udp",
            "turn:host?transport=sctp",
            "turn:host?foo=bar",
            "turn:bad_host",
            "turn:-bad.example",
            "turn:a..b",
            "turn:[::1",
            "turn:[nope]:3478",
            "turn:[::1]x",
            "turn:ho st",
        ] {
            let err = IceUrl::parse(url).unwrap_err();
            assert_eq!(err.code(), "bad-ice-url", "{url}");
        }
    }

    #[test]
    fn webrtc_rs_uses_only_stun_and_udp_turn() {
        let usable = |u: &str| IceUrl::parse(u).unwrap().usable_by_webrtc_rs();
        assert!(usable("stun:h"));
        assert!(usable("turn:h"));
        assert!(usable("turn:h?transport=udp"));
        assert!(!usable("turn:h?transport=tcp"));
        assert!(!usable("turns:h"));
    }
}
