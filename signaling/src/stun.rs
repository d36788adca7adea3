//! The built-in STUN responder (RFC 8489, formerly 5389): answers Binding requests on UDP with the
//! sender's address (XOR-MAPPED-ADDRESS) and a FINGERPRINT, so browsers and native peers can learn their
//! server-reflexive address without another service.
//!
//! It never amplifies: a response is 40 bytes (IPv4) or 52 bytes (IPv6) — the header, the address and the
//! fingerprint, nothing else — to a request of at least 20 bytes, and each source address gets at most
//! [`RATE_BURST`] answers at once and [`RATE_PER_SEC`] a second after that. Anything that is not a
//! well-formed Binding request (garbage, responses, indications, other methods, a bad FINGERPRINT, an
//! unknown comprehension-required attribute) is dropped without an answer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stun_rs::attributes::stun::{Fingerprint, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{DecoderContextBuilder, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder};
use tokio::net::UdpSocket;

/// Longest datagram considered: a Binding request needs far less; larger ones are dropped unparsed.
pub const MAX_REQUEST: usize = 548;
/// Answers a source address may get in a burst.
pub const RATE_BURST: f64 = 20.0;
/// Answers a second a source address may get after its burst.
pub const RATE_PER_SEC: f64 = 10.0;
/// Sources tracked at once; when full, idle ones are forgotten, and if none is idle new sources wait.
pub(crate) const MAX_SOURCES: usize = 4096;
/// A source idle this long is forgotten (its bucket would be full again anyway).
const SOURCE_IDLE: Duration = Duration::from_secs(10);

/// Counters, for tests and logs.
#[derive(Debug, Default)]
pub struct StunStats {
    /// Binding requests answered.
    pub answered: AtomicU64,
    /// Datagrams dropped as not a well-formed Binding request.
    pub malformed: AtomicU64,
    /// Requests dropped by the per-source rate limit.
    pub rate_limited: AtomicU64,
}

/// A bound STUN responder; [`StunResponder::run`] serves it.
#[derive(Debug)]
pub struct StunResponder {
    socket: UdpSocket,
    addr: SocketAddr,
    stats: Arc<StunStats>,
}

impl StunResponder {
    /// Binds the UDP socket.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<StunResponder> {
        let socket = UdpSocket::bind(addr).await?;
        let addr = socket.local_addr()?;
        Ok(StunResponder { socket, addr, stats: Arc::default() })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters, shared with the running responder.
    pub fn stats(&self) -> Arc<StunStats> {
        self.stats.clone()
    }

    /// Answers Binding requests until the task is dropped or aborted.
    pub async fn run(self) {
        let mut limiter = RateLimiter::default();
        let mut buf = [0u8; 2048];
        loop {
            let (len, src) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                // ICMP errors from earlier sends surface here on some systems; they concern one peer only.
                Err(e) => {
                    tracing::debug!(error = %e, "stun: receive error");
                    continue;
                }
            };
            let Some(response) = answer(&buf[..len], src) else {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if !limiter.allow(src.ip(), Instant::now()) {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.socket.send_to(&response, src).await {
                Ok(_) => {
                    self.stats.answered.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(error = %e, %src, "stun: send error"),
            }
        }
    }
}

/// What the responder does with one received datagram from `src` (oversized ones are not even parsed): the
/// bytes to send back, or `None` to drop it. The rate limit comes after.
pub fn answer(datagram: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    (datagram.len() <= MAX_REQUEST).then(|| respond(datagram, src)).flatten()
}

/// The answer to one datagram from `src`: a Binding success response, or `None` to drop it.
pub fn respond(packet: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    // Validation checks FINGERPRINT when present; a request with MESSAGE-INTEGRITY (which we have no key
    // for) fails it too and is dropped: plain STUN clients do not send one.
    let decoder = MessageDecoderBuilder::default().with_context(DecoderContextBuilder::default().with_validation().build()).build();
    let (msg, size) = decoder.decode(packet).ok()?;
    if size != packet.len() || msg.method() != BINDING || msg.class() != MessageClass::Request {
        return None;
    }
    if msg.attributes().iter().any(|a| a.is_unknown() && a.attribute_type().is_comprehension_required()) {
        return None;
    }
    let response = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(*msg.transaction_id())
        .with_attribute(XorMappedAddress::from(src))
        .with_attribute(Fingerprint::default())
        .build();
    let mut out = [0u8; 64];
    let n = MessageEncoderBuilder::default().build().encode(&mut out, &response).ok()?;
    Some(out[..n].to_vec())
}

/// Token buckets per source address, in a bounded table.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// Sources tracked now (at most `MAX_SOURCES`).
    pub(crate) fn sources(&self) -> usize {
        self.buckets.len()
    }

    /// Whether `ip` may get an answer at `now`; takes a token if so.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_SOURCES {
            self.buckets.retain(|_, (_, last)| now.duration_since(*last) < SOURCE_IDLE);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, last) = self.buckets.entry(ip).or_insert((RATE_BURST, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * RATE_PER_SEC).min(RATE_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_rs::TransactionId;

    fn request(with_fingerprint: bool) -> Vec<u8> {
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request).with_transaction_id(TransactionId::default());
        if with_fingerprint {
            b = b.with_attribute(Fingerprint::default());
        }
        let mut out = [0u8; 64];
        let n = MessageEncoderBuilder::default().build().encode(&mut out, &b.build()).unwrap();
        out[..n].to_vec()
    }

    #[test]
    fn answers_binding_requests_with_the_source_address_and_a_fingerprint() {
        for src in ["192.0.2.7:5000", "[2001:db8::1]:6000"] {
            let src: SocketAddr = src.parse().unwrap();
            for with_fp in [false, true] {
                let req = request(with_fp);
                let resp = respond(&req, src).expect("an answer");
                assert_eq!(resp.len(), if src.is_ipv4() { 40 } else { 52 }, "only what is needed");
                let ctx = DecoderContextBuilder::default().with_validation().build();
                let (msg, _) = MessageDecoderBuilder::default().with_context(ctx).build().decode(&resp).unwrap();
                assert_eq!(msg.class(), MessageClass::SuccessResponse);
                assert_eq!(msg.transaction_id().as_bytes(), &req[8..20]);
                let xma = msg.get::<XorMappedAddress>().unwrap().expect_xor_mapped_address();
                assert_eq!(*xma.socket_address(), src);
                assert!(msg.get::<Fingerprint>().is_some());
            }
        }
    }

    #[test]
    fn drops_everything_else() {
        let src: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let good = request(true);
        let mut bad_fingerprint = good.clone();
        *bad_fingerprint.last_mut().unwrap() ^= 1;
        let mut bad_cookie = good.clone();
        bad_cookie[4] ^= 1;
        let mut response = good.clone();
        response[0] = 0x01; // 0x0101: Binding success response
        let mut indication = good.clone();
        indication[1] = 0x11; // Binding indication
        let mut allocate = good.clone();
        allocate[1] = 0x03; // TURN Allocate request
        let mut trailing = request(false);
        trailing.extend_from_slice(&[0; 4]);
        let mut unknown_required = request(false);
        unknown_required[3] = 8; // length 8: one attribute of type 0x7fff, 4 bytes
        unknown_required.extend_from_slice(&[0x7f, 0xff, 0, 4, 1, 2, 3, 4]);
        for (name, pkt) in [
            ("empty", vec![]),
            ("short", vec![0, 1, 0, 0]),
            ("zeros", vec![0; 20]),
            ("bad fingerprint", bad_fingerprint),
            ("bad magic cookie", bad_cookie),
            ("response", response),
            ("indication", indication),
            ("other method", allocate),
            ("trailing bytes", trailing),
            ("unknown comprehension-required attribute", unknown_required),
            ("text", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ] {
            assert_eq!(respond(&pkt, src), None, "{name}");
        }
        // Every truncation of a valid request is dropped, and random bytes never panic the decoder.
        for n in 0..good.len() {
            assert_eq!(respond(&good[..n], src), None, "truncated to {n}");
        }
        let mut x: u32 = 12345;
        for len in 0..600 {
            let pkt: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = respond(&pkt, src);
        }
    }

    #[test]
    fn rate_limit_per_source_refills_over_time() {
        let mut l = RateLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..100).filter(|_| l.allow(a, t0)).count();
        assert_eq!(allowed, RATE_BURST as usize);
        assert!(l.allow(b, t0), "another source has its own bucket");
        assert!(!l.allow(a, t0));
        assert!(l.allow(a, t0 + Duration::from_millis(110)), "one token back after 1/RATE_PER_SEC s");
    }

    #[test]
    fn the_source_table_is_bounded() {
        let mut l = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            assert!(l.allow(IpAddr::from(i.to_be_bytes()), t0));
        }
        let newcomer: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(!l.allow(newcomer, t0), "full table, nobody idle: refused");
        assert!(l.allow(newcomer, t0 + SOURCE_IDLE), "idle sources are forgotten");
        assert!(l.buckets.len() <= MAX_SOURCES);
    }
}
