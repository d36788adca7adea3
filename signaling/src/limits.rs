//! Limits that keep one hostile client from taking the node: a message rate per session (token bucket with
//! burst, and a close after repeated abuse), caps on sessions and rooms per node, join attempts per client
//! address, SDP size and ICE candidate count per negotiation, and the outbox bound in bytes.
//!
//! The core asks these questions with time as an input (`now: Instant`), so every rule is testable without
//! sleeping. The outbox byte bound itself lives in [`crate::session::Session`] (it is part of the buffer).

use crate::client_addr::ClientIp;
use crate::hub::JoinError;
use crate::transport::Start;
use protocol::{ClientMessage, ErrorCode, SignalData};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept in the per-address join table. 20,000 addresses fit; beyond that, addresses seen for the first
/// time share one bucket (see [`JoinLimiter`]), so an attacker with many addresses cannot grow memory.
pub const JOIN_TABLE_CAP: usize = 32_768;

/// The limit flags (part of [`crate::Config`]). Every one has a `SIGNALING_*` environment variable.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct LimitFlags {
    /// Client messages per second one session may send, sustained (a token bucket refilled at this rate).
    /// `ping` and `leave` are exempt. Over it, a message is dropped and the client gets `rate-limited`.
    #[arg(long, env = "SIGNALING_RATE_PER_SEC", default_value_t = 50.0)]
    pub rate_per_sec: f64,

    /// Messages one session may send at once above the sustained rate (the bucket's size): a trickle-ICE burst
    /// at connect time is a few dozen messages.
    #[arg(long, env = "SIGNALING_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,

    /// Messages refused for the rate within `--rate-strike-window-ms` after which the session is closed with
    /// 4004 `rate-limited` (a client that ignores `rate-limited` errors).
    #[arg(long, env = "SIGNALING_RATE_STRIKES", default_value_t = 20)]
    pub rate_strikes: u32,

    /// The window of `--rate-strikes`, in milliseconds.
    #[arg(long, env = "SIGNALING_RATE_STRIKE_WINDOW_MS", default_value_t = 10_000)]
    pub rate_strike_window_ms: u64,

    /// Sessions this node holds at most (attached or waiting to be resumed); a join beyond gets `node-full`
    /// and close 4003 (retry later or elsewhere).
    #[arg(long, env = "SIGNALING_MAX_SESSIONS", default_value_t = 10_000)]
    pub max_sessions: usize,

    /// Rooms this node holds at most; a join that would open one more gets `node-full` and close 4003.
    #[arg(long, env = "SIGNALING_MAX_ROOMS", default_value_t = 5_000)]
    pub max_rooms: usize,

    /// Joins (and resumes) one client address may start per minute, with the same number as burst; over it,
    /// the join is refused with `rate-limited` (HTTP 429 on polling, error + close 4004 on WebSocket and SSE).
    /// IPv6 addresses count per /64.
    #[arg(long, env = "SIGNALING_JOIN_RATE_PER_IP_PER_MIN", default_value_t = 120)]
    pub join_rate_per_ip_per_min: u32,

    /// Largest SDP in an `offer` or `answer`, in bytes; larger ones get `too-large`. Real offers are 2–8 KB.
    #[arg(long, env = "SIGNALING_MAX_SDP_BYTES", default_value_t = 32 * 1024)]
    pub max_sdp_bytes: usize,

    /// ICE candidates one session may send between two of its own offers/answers (a new negotiation, e.g. an
    /// ICE restart, starts a new count); more get `too-many-candidates`.
    #[arg(long, env = "SIGNALING_MAX_CANDIDATES", default_value_t = 256)]
    pub max_candidates: u32,

    /// Bytes of encoded messages kept per session (as well as `--outbox` messages): how much one client that
    /// does not read can make the server hold before it is closed as a slow consumer (4002).
    #[arg(long, env = "SIGNALING_OUTBOX_BYTES", default_value_t = 1024 * 1024)]
    pub outbox_bytes: usize,
}

impl Default for LimitFlags {
    /// The flag defaults.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            flags: LimitFlags,
        }
        <Only as clap::Parser>::parse_from(["signaling"]).flags
    }
}

impl LimitFlags {
    /// Limits so high they never bite (for benchmarks that measure the transports, not the limits).
    pub fn unlimited() -> Self {
        LimitFlags {
            rate_per_sec: 1e9,
            rate_burst: u32::MAX,
            rate_strikes: u32::MAX,
            max_sessions: usize::MAX,
            max_rooms: usize::MAX,
            join_rate_per_ip_per_min: u32::MAX,
            max_sdp_bytes: usize::MAX,
            max_candidates: u32::MAX,
            outbox_bytes: usize::MAX,
            ..LimitFlags::default()
        }
    }

    /// Refuses settings that cannot work; `max_message_bytes` is `--max-message-bytes`.
    pub fn validate(&self, max_message_bytes: usize) -> Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError::TooSmall;
        if !(self.rate_per_sec.is_finite() && self.rate_per_sec > 0.0) {
            return Err(TooSmall { flag: "--rate-per-sec", min: 1, value: 0 });
        }
        // The outbox must hold a message at the size limit while the one before it is still being sent.
        for (flag, min, value) in [
            ("--rate-burst", 1, self.rate_burst as usize),
            ("--rate-strikes", 1, self.rate_strikes as usize),
            ("--max-sessions", 1, self.max_sessions),
            ("--max-rooms", 1, self.max_rooms),
            ("--join-rate-per-ip-per-min", 1, self.join_rate_per_ip_per_min as usize),
            ("--max-sdp-bytes", 1024, self.max_sdp_bytes),
            ("--max-candidates", 1, self.max_candidates as usize),
            ("--outbox-bytes", 2 * max_message_bytes, self.outbox_bytes),
        ] {
            if value < min {
                return Err(TooSmall { flag, min, value });
            }
        }
        Ok(())
    }

    fn strike_window(&self) -> Duration {
        Duration::from_millis(self.rate_strike_window_ms)
    }
}

/// A token bucket: `burst` tokens at most, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: u32, now: Instant) -> Self {
        Bucket { tokens: f64::from(burst), last: now }
    }

    fn refill(&mut self, rate: f64, burst: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.last = now;
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: f64, burst: u32, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now` (an entry that may be forgotten: a new one would be the same).
    fn is_full(&self, rate: f64, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate >= f64::from(burst)
    }
}

/// What the per-session guard says about one client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Pass,
    /// Drop it and tell the client.
    Refuse(ErrorCode, String),
    /// Drop it, tell the client, and close the session with 4004: it kept sending over the limit.
    Close(ErrorCode, String),
}

/// One session's limit state: its message bucket, its recent refusals, its candidate count.
#[derive(Debug)]
pub struct SessionGuard {
    state: Mutex<GuardState>,
}

#[derive(Debug)]
struct GuardState {
    bucket: Option<Bucket>,
    strikes: u32,
    strikes_since: Instant,
    candidates: u32,
}

impl Default for SessionGuard {
    fn default() -> Self {
        SessionGuard {
            state: Mutex::new(GuardState { bucket: None, strikes: 0, strikes_since: Instant::now(), candidates: 0 }),
        }
    }
}

impl SessionGuard {
    /// Checks one client message against `flags` at `now`.
    ///
    /// `ping` and `leave` are never refused and take no token: a client that spends its whole budget on
    /// application messages must still prove it is alive, and must be able to leave. A ping flood gains
    /// nothing over a flood of refused messages: each one costs the server one small push to the sender's own
    /// outbox (a `pong` instead of an `error`), and a flooder that does not read them is closed as a slow
    /// consumer. WebSocket-level ping/pong frames never reach the core.
    pub fn check(&self, flags: &LimitFlags, msg: &ClientMessage, now: Instant) -> Verdict {
        if matches!(msg, ClientMessage::Ping { .. } | ClientMessage::Leave) {
            return Verdict::Pass;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = st.bucket.get_or_insert_with(|| Bucket::full(flags.rate_burst, now));
        if !bucket.take(flags.rate_per_sec, flags.rate_burst, now) {
            if now.saturating_duration_since(st.strikes_since) > flags.strike_window() {
                st.strikes = 0;
                st.strikes_since = now;
            }
            st.strikes = st.strikes.saturating_add(1);
            let message = format!("over {} messages per second (burst {})", flags.rate_per_sec, flags.rate_burst);
            return if st.strikes >= flags.rate_strikes {
                Verdict::Close(ErrorCode::RateLimited, message)
            } else {
                Verdict::Refuse(ErrorCode::RateLimited, message)
            };
        }
        if let ClientMessage::Signal { data, .. } = msg {
            match data {
                SignalData::Offer { sdp } | SignalData::Answer { sdp } => {
                    if sdp.len() > flags.max_sdp_bytes {
                        return Verdict::Refuse(
                            ErrorCode::TooLarge,
                            format!("SDP of {} bytes is over the {} byte limit", sdp.len(), flags.max_sdp_bytes),
                        );
                    }
                    // A new offer or answer starts a new negotiation (first connect or ICE restart).
                    st.candidates = 0;
                }
                SignalData::Candidate { .. } => {
                    if st.candidates >= flags.max_candidates {
                        return Verdict::Refuse(
                            ErrorCode::TooManyCandidates,
                            format!("over {} ICE candidates since the last offer or answer", flags.max_candidates),
                        );
                    }
                    st.candidates += 1;
                }
                _ => {}
            }
        }
        Verdict::Pass
    }
}

/// Join attempts per client address: a token bucket per address (IPv6 per /64, since one host gets a whole
/// /64), in a table of at most [`JOIN_TABLE_CAP`] entries.
///
/// Memory stays bounded under any number of addresses: when the table is full, entries whose bucket has
/// refilled (they say nothing a fresh entry would not) are swept, at most once a second; addresses that still
/// find no place share one overflow bucket. Under an attack from more addresses than the table holds, new
/// addresses are thus limited together, which is the safe side; `--max-sessions` bounds the rest.
#[derive(Debug)]
pub struct JoinLimiter {
    per_min: u32,
    cap: usize,
    table: Mutex<JoinTable>,
}

#[derive(Debug)]
struct JoinTable {
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Option<Bucket>,
    last_sweep: Option<Instant>,
}

impl JoinLimiter {
    /// `per_min` joins per minute per address, with the same burst, in a table of `cap` entries.
    pub fn new(per_min: u32, cap: usize) -> Self {
        JoinLimiter {
            per_min,
            cap: cap.max(1),
            table: Mutex::new(JoinTable { buckets: HashMap::new(), overflow: None, last_sweep: None }),
        }
    }

    /// Whether `ip` may start one more join at `now` (and counts it).
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (f64::from(self.per_min) / 60.0, self.per_min);
        let key = table_key(ip);
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !t.buckets.contains_key(&key) && t.buckets.len() >= self.cap {
            if t.last_sweep.is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1)) {
                t.buckets.retain(|_, b| !b.is_full(rate, burst, now));
                t.last_sweep = Some(now);
            }
            if t.buckets.len() >= self.cap {
                return t.overflow.get_or_insert_with(|| Bucket::full(burst, now)).take(rate, burst, now);
            }
        }
        t.buckets.entry(key).or_insert_with(|| Bucket::full(burst, now)).take(rate, burst, now)
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).buckets.len()
    }

    /// `start` if `ip` may join now; otherwise a start that every transport refuses with `rate-limited`.
    pub fn admit(&self, ip: ClientIp, start: Start) -> Start {
        if self.allow(ip.0, Instant::now()) {
            start
        } else {
            tracing::info!(ip = %ip.0, "join refused: too many joins from this address");
            Start::Refused(JoinError::RateLimited)
        }
    }
}

/// The address a join counts against: IPv4 as is (also when IPv4-mapped), IPv6 by its /64.
fn table_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn relay() -> ClientMessage {
        ClientMessage::Relay { to: None, data: serde_json::json!("x") }
    }

    fn flags() -> LimitFlags {
        LimitFlags { rate_per_sec: 10.0, rate_burst: 5, rate_strikes: 3, ..LimitFlags::default() }
    }

    #[test]
    fn defaults_are_valid() {
        LimitFlags::default().validate(65_536).unwrap();
        assert!(LimitFlags { outbox_bytes: 100_000, ..LimitFlags::default() }.validate(65_536).is_err());
        assert!(LimitFlags { rate_per_sec: 0.0, ..LimitFlags::default() }.validate(65_536).is_err());
    }

    #[test]
    fn burst_then_rate_then_strikes_close() {
        let (g, f, t0) = (SessionGuard::default(), flags(), Instant::now());
        for _ in 0..5 {
            assert_eq!(g.check(&f, &relay(), t0), Verdict::Pass);
        }
        assert!(matches!(g.check(&f, &relay(), t0), Verdict::Refuse(ErrorCode::RateLimited, _)));
        // 100 ms refills one token at 10/s.
        assert_eq!(g.check(&f, &relay(), t0 + Duration::from_millis(100)), Verdict::Pass);
        // Pings pass even with an empty bucket.
        assert_eq!(g.check(&f, &ClientMessage::Ping { id: None }, t0 + Duration::from_millis(100)), Verdict::Pass);
        let t1 = t0 + Duration::from_millis(100);
        assert!(matches!(g.check(&f, &relay(), t1), Verdict::Refuse(..)));
        assert!(matches!(g.check(&f, &relay(), t1), Verdict::Close(ErrorCode::RateLimited, _)));
    }

    #[test]
    fn strikes_outside_the_window_are_forgotten() {
        let (g, f, t0) = (SessionGuard::default(), LimitFlags { rate_strike_window_ms: 1000, ..flags() }, Instant::now());
        for _ in 0..5 {
            g.check(&f, &relay(), t0);
        }
        for _ in 0..2 {
            assert!(matches!(g.check(&f, &relay(), t0), Verdict::Refuse(..)));
        }
        // 2 s later: the bucket refilled; drain it again and strike twice: still under 3 in this window.
        let t1 = t0 + Duration::from_secs(2);
        for _ in 0..5 {
            assert_eq!(g.check(&f, &relay(), t1), Verdict::Pass);
        }
        for _ in 0..2 {
            assert!(matches!(g.check(&f, &relay(), t1), Verdict::Refuse(..)));
        }
    }

    #[test]
    fn candidates_are_counted_per_negotiation_and_sdp_size_is_capped() {
        let f = LimitFlags { max_candidates: 2, max_sdp_bytes: 1024, ..LimitFlags::unlimited() };
        let g = SessionGuard::default();
        let now = Instant::now();
        let cand = ClientMessage::Signal {
            to: "p".into(),
            data: SignalData::Candidate {
                candidate: protocol::IceCandidateInit {
                    candidate: "candidate:1 1 udp 1 192.0.2.1 9 typ host".into(),
                    sdp_mid: None,
                    sdp_m_line_index: None,
                    username_fragment: None,
                },
            },
        };
        let offer = |n| ClientMessage::Signal { to: "p".into(), data: SignalData::Offer { sdp: "v".repeat(n) } };
        assert_eq!(g.check(&f, &cand, now), Verdict::Pass);
        assert_eq!(g.check(&f, &cand, now), Verdict::Pass);
        assert!(matches!(g.check(&f, &cand, now), Verdict::Refuse(ErrorCode::TooManyCandidates, _)));
        assert!(matches!(g.check(&f, &offer(1025), now), Verdict::Refuse(ErrorCode::TooLarge, _)));
        // A refused offer starts nothing; an accepted one (an ICE restart) starts a new count.
        assert!(matches!(g.check(&f, &cand, now), Verdict::Refuse(ErrorCode::TooManyCandidates, _)));
        assert_eq!(g.check(&f, &offer(1024), now), Verdict::Pass);
        assert_eq!(g.check(&f, &cand, now), Verdict::Pass);
    }

    #[test]
    fn joins_per_address_refill_per_minute() {
        let l = JoinLimiter::new(60, 100);
        let (a, b, t0) = (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), Instant::now());
        for _ in 0..60 {
            assert!(l.allow(a, t0));
        }
        assert!(!l.allow(a, t0));
        assert!(l.allow(b, t0), "another address has its own budget");
        assert!(l.allow(a, t0 + Duration::from_secs(1)), "one join per second comes back");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = JoinLimiter::new(1, 100);
        let now = Instant::now();
        assert!(l.allow("2001:db8:1:2::1".parse().unwrap(), now));
        assert!(!l.allow("2001:db8:1:2:ffff::9".parse().unwrap(), now), "same /64");
        assert!(l.allow("2001:db8:1:3::1".parse().unwrap(), now));
        assert!(l.allow("198.51.100.7".parse().unwrap(), now));
        assert!(!l.allow(IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped()), now));
        let _ = Ipv6Addr::LOCALHOST;
    }

    #[test]
    fn twenty_thousand_addresses_keep_the_table_bounded() {
        let l = JoinLimiter::new(120, 1000);
        let t0 = Instant::now();
        for i in 0..20_000u32 {
            // Every address spends its whole burst: none can be swept.
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            l.allow(ip, t0);
            assert!(l.tracked() <= 1000);
        }
        assert_eq!(l.tracked(), 1000);
        // A minute later every bucket has refilled: the sweep makes room for new addresses again.
        let later = t0 + Duration::from_secs(61);
        assert!(l.allow(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), later));
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn overflow_addresses_share_one_bucket() {
        let l = JoinLimiter::new(2, 1);
        let now = Instant::now();
        assert!(l.allow("192.0.2.1".parse().unwrap(), now));
        assert!(l.allow("192.0.2.1".parse().unwrap(), now));
        // The table is full of a spent entry: newcomers share the overflow bucket (burst 2).
        assert!(l.allow("192.0.2.2".parse().unwrap(), now));
        assert!(l.allow("192.0.2.3".parse().unwrap(), now));
        assert!(!l.allow("192.0.2.4".parse().unwrap(), now));
        assert_eq!(l.tracked(), 1);
    }
}
