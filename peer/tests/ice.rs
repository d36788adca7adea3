//! ICE servers from the signaling server, natively: webrtc-rs gathers a server-reflexive candidate from
//! the built-in STUN responder, and relay-only without a usable TURN server fails with a clear error.
//! (Relaying through a real coturn is in `tests/tests/turn.rs`.)

mod common;

use common::start_server;
use peer::signaling::SignalingEvent;
use peer::{Event, Peer, PeerConfig};
use protocol::{ServerMessage, SignalData};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_gathers_a_server_reflexive_candidate_from_our_stun_responder() {
    let (url, _stop) = start_server().await;
    // A bare signaling session joins first and watches what the native peer trickles to it.
    let (welcome, _sender, mut rx) = peer::signaling::connect(&url, "srflx").await.unwrap();
    let stun = &welcome.ice_servers[0].urls[0];
    assert!(stun.starts_with("stun:127.0.0.1:"), "the server advertises its responder: {stun}");
    let mut cfg = PeerConfig::new(&url, "srflx");
    cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (native, _events) = Peer::connect(cfg).await.unwrap();
    let mut candidates = Vec::new();
    let srflx = tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Some(SignalingEvent::Message(ServerMessage::Signal { data: SignalData::Candidate { candidate }, .. })) => {
                    candidates.push(candidate.candidate.clone());
                    if candidate.candidate.contains(" typ srflx") {
                        return candidate.candidate;
                    }
                }
                Some(SignalingEvent::Message(ServerMessage::Signal { data: SignalData::EndOfCandidates, .. })) => {
                    panic!("gathering ended without a srflx candidate: {candidates:?}")
                }
                Some(_) => {}
                None => panic!("signaling ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no srflx candidate within {WAIT:?}: {candidates:?}"));
    // Loopback has no NAT: the reflexive address is the host address, with `raddr` naming the base.
    assert!(srflx.contains(" 127.0.0.1 ") && srflx.contains(" raddr 127.0.0.1 "), "{srflx}");
    native.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_without_a_turn_server_reports_relay_unavailable() {
    let (url, _stop) = start_server().await;
    let (a, _a_events) = Peer::connect(loopback(&url, "relay-none")).await.unwrap();
    let (b, mut b_events) = Peer::connect(loopback(&url, "relay-none")).await.unwrap();
    let err = common::wait_for(&mut b_events, "relay-unavailable", WAIT, |e| match e {
        Event::Error(e) if e.code() == "relay-unavailable" => Some(e.clone()),
        _ => None,
    })
    .await;
    assert!(err.to_string().contains(&a.id()), "{err}");
    a.close().await;
    b.close().await;
}

fn loopback(url: &str, room: &str) -> PeerConfig {
    let mut cfg = PeerConfig::new(url, room);
    cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    cfg.relay_only = true;
    cfg
}
