//! Everything that touches webrtc-rs lives here, so an API change before its 1.0 stays in one module.

use crate::error::Error;
use protocol::{IceCandidateInit, IceServer};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfiguration, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceServer, RTCIceTransportPolicy, RTCStatsReportEntry, SettingEngineBuilder, StatsSelector,
};
use rtc::statistics::stats::ice_candidate_pair::RTCStatsIceCandidatePairState;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime, TokioRuntime,
};

pub use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
pub use webrtc::peer_connection::{
    RTCSdpType, RTCSessionDescription,
};

/// A webrtc-rs peer connection behind a trait object, so the concrete type never leaks.
pub type Pc = Arc<dyn PeerConnection>;

/// UDP receive/send buffer per socket. The SCTP receive window is 1 MiB; with Linux's default 208 KiB
/// socket buffer the kernel drops datagrams under load and reliable throughput collapses (measured
/// 7–45 MB/s with 50–70 drops a run, vs ~150 MB/s and no drops at 1 MiB).
pub const DEFAULT_UDP_BUFFER: usize = 1 << 20;

/// Outstanding bytes per channel before `send` waits: bounded memory for any amount sent.
pub const SEND_BUFFER_LIMIT: usize = 1 << 20;

/// Settings for one peer connection.
#[derive(Debug, Clone)]
pub struct PcSettings {
    /// The address to gather host candidates on (`127.0.0.1` keeps everything on loopback; the
    /// unspecified address gathers every interface except loopback).
    pub bind: IpAddr,
    /// SO_RCVBUF / SO_SNDBUF for the UDP sockets.
    pub udp_buffer: usize,
    /// ICE servers from `welcome` (or the application), refreshed before their credentials expire.
    pub ice_servers: Vec<IceServer>,
    /// Gather relay candidates only (`iceTransportPolicy: "relay"`).
    pub relay_only: bool,
}

/// The ICE part of a connection's configuration: the servers webrtc-rs can use, and the transport policy.
/// Also applied with `set_configuration` when credentials are refreshed (it takes effect at the next gathering).
pub fn configuration(settings: &PcSettings) -> RTCConfiguration {
    let ice_servers = crate::ice::usable_by_webrtc_rs(&settings.ice_servers)
        .into_iter()
        .map(|s| RTCIceServer {
            urls: s.urls,
            username: s.username.unwrap_or_default(),
            credential: s.credential.unwrap_or_default(),
        })
        .collect();
    let policy = if settings.relay_only { RTCIceTransportPolicy::Relay } else { RTCIceTransportPolicy::All };
    RTCConfigurationBuilder::new().with_ice_servers(ice_servers).with_ice_transport_policy(policy).build()
}

/// The candidate types (`host`, `srflx`, `prflx`, `relay`) of the selected pair, local then remote.
pub async fn selected_path(pc: &Pc) -> Option<(String, String)> {
    let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
    let selected = report.transport().and_then(|t| match report.get(&t.selected_candidate_pair_id) {
        Some(RTCStatsReportEntry::IceCandidatePair(pair)) => Some(pair),
        _ => None,
    });
    // The transport does not always name its selected pair (e.g. over a relay); the nominated working pair is it.
    let pair = selected.or_else(|| {
        report.candidate_pairs().find(|p| p.nominated && p.state == RTCStatsIceCandidatePairState::Succeeded)
    })?;
    // webrtc-rs 0.21.1 names the pair's candidates `candidate:…` but their entries `RTCLocalIceCandidate_candidate:…`
    // and `RTCRemoteIceCandidate_candidate:…`: accept both spellings.
    let named = |id: &str, wanted: &str| id == wanted || id.strip_suffix(wanted).is_some_and(|p| p.ends_with('_'));
    let mut local = None;
    let mut remote = None;
    for entry in report.iter() {
        match entry {
            RTCStatsReportEntry::LocalCandidate(c) if named(&c.stats.id, &pair.local_candidate_id) => {
                local = Some(c.candidate_type.to_string());
            }
            RTCStatsReportEntry::RemoteCandidate(c) if named(&c.stats.id, &pair.remote_candidate_id) => {
                remote = Some(c.candidate_type.to_string());
            }
            _ => {}
        }
    }
    Some((local?, remote?))
}

/// Builds a peer connection with the settings we apply everywhere.
pub async fn build_pc(settings: &PcSettings, handler: Arc<dyn PeerConnectionEventHandler>) -> Result<Pc, Error> {
    let mut setting_engine = SettingEngineBuilder::new()
        .with_include_loopback_candidate(settings.bind.is_loopback())
        // With trickle ICE the remote's checks often arrive before its candidate does, so the first working
        // pair is peer-reflexive; the default 1 s wait before accepting such a pair is pure setup delay.
        .with_prflx_acceptance_min_wait(Some(Duration::ZERO));
    if settings.bind.is_loopback() {
        // mDNS resolves browsers' obfuscated `.local` host candidates on a LAN. Loopback-only peers have no use
        // for it, and joining the multicast group fails with ENODEV where `lo` is the only interface.
        setting_engine = setting_engine.with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
    }
    let setting_engine = setting_engine.build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(configuration(settings))
        .with_setting_engine(setting_engine)
        .with_runtime(Arc::new(BufferedUdpRuntime { inner: TokioRuntime, bytes: settings.udp_buffer }))
        .with_handler(handler)
        .with_data_channel_send_buffer_limit(SEND_BUFFER_LIMIT)
        .with_udp_addrs(vec![SocketAddr::new(settings.bind, 0)])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// Our candidate form → webrtc-rs's.
pub fn candidate_to_rtc(c: IceCandidateInit) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_m_line_index,
        username_fragment: c.username_fragment,
        url: None,
    }
}

/// webrtc-rs's candidate form → ours. webrtc-rs fills `sdpMid` with `""`, which browsers reject as an
/// unknown mid; leaving it out makes them use `sdpMLineIndex` (0: we only have one m-line).
pub fn candidate_from_rtc(c: RTCIceCandidateInit) -> IceCandidateInit {
    IceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid.filter(|m| !m.is_empty()),
        sdp_m_line_index: c.sdp_mline_index,
        username_fragment: c.username_fragment.filter(|u| !u.is_empty()),
    }
}

/// The tokio runtime, with larger UDP socket buffers. `Runtime` is the supported extension point for socket
/// options in webrtc-rs 0.21 (`PeerConnectionBuilder::with_runtime`).
#[derive(Debug)]
struct BufferedUdpRuntime {
    inner: TokioRuntime,
    bytes: usize,
}

impl Runtime for BufferedUdpRuntime {
    fn spawn(&self, f: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(f)
    }
    fn spawn_reactor(&self, n: usize, f: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(n, f)
    }
    fn wrap_udp_socket(&self, s: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let r = socket2::SockRef::from(&s);
        // Linux caps the request at net.core.rmem_max/wmem_max; a smaller buffer still works, only slower.
        if let Err(e) = r.set_recv_buffer_size(self.bytes) {
            tracing::warn!(error = %e, "cannot raise SO_RCVBUF");
        }
        if let Err(e) = r.set_send_buffer_size(self.bytes) {
            tracing::warn!(error = %e, "cannot raise SO_SNDBUF");
        }
        self.inner.wrap_udp_socket(s)
    }
    fn wrap_tcp_listener(&self, l: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(l)
    }
    fn connect_tcp<'a>(
        &'a self,
        a: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(a)
    }
    fn resolve_host<'a>(&'a self, h: &'a str) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(h)
    }
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(d)
    }
    fn interval(&self, p: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(p)
    }
    fn block_on(&self, f: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(f)
    }
    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }
    fn name(&self) -> &'static str {
        "tokio+udp-buffers"
    }
}
