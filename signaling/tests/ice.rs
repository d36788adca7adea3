//! ICE servers against a real server: the STUN responder over real UDP, TURN credentials in `welcome`, and
//! `GET /v1/ice`.

mod common;

use common::*;
use protocol::{IceConfig, IceServer};
use signaling::hub::{Hub, HubConfig};
use signaling::stun::RATE_BURST;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use stun_rs::attributes::stun::{Fingerprint, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder, TransactionId};
use tokio::net::UdpSocket;
use turn_config::credential::{self, Secrets};

const SECRETS: &str = "new-secret-0123456789\nold-secret-0123456789\n";

fn binding_request() -> (Vec<u8>, TransactionId) {
    let tid = TransactionId::default();
    let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(tid)
        .with_attribute(Fingerprint::default())
        .build();
    let mut buf = [0u8; 64];
    let n = MessageEncoderBuilder::default().build().encode(&mut buf, &msg).unwrap();
    (buf[..n].to_vec(), tid)
}

/// Sends one Binding request and returns the mapped address, or None if nothing came back within `wait`.
async fn stun_query(sock: &UdpSocket, server: SocketAddr, wait: Duration) -> Option<SocketAddr> {
    let (req, tid) = binding_request();
    sock.send_to(&req, server).await.unwrap();
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let (n, _) = tokio::time::timeout(left, sock.recv_from(&mut buf)).await.ok()?.unwrap();
        let (msg, _) = MessageDecoderBuilder::default().build().decode(&buf[..n]).unwrap();
        if *msg.transaction_id() == tid {
            let xma = msg.get::<XorMappedAddress>().expect("XOR-MAPPED-ADDRESS").expect_xor_mapped_address();
            return Some(*xma.socket_address());
        }
    }
}

#[tokio::test]
async fn the_stun_responder_answers_real_clients_and_survives_garbage() {
    let srv = TestServer::start().await;
    let stun = srv.stun.expect("the test server runs the STUN responder");
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(stun_query(&client, stun, WAIT).await, Some(client.local_addr().unwrap()));

    // Garbage from another source: every shape of malformed datagram, 2,000 of them.
    let attacker = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let (good, _) = binding_request();
    let mut x: u32 = 7;
    for i in 0..2000usize {
        let pkt: Vec<u8> = match i % 4 {
            0 => good[..i % good.len()].to_vec(),
            1 => {
                let mut p = good.clone();
                p[i % good.len()] ^= 0x5a;
                p
            }
            2 => vec![0xff; i % 1600],
            _ => (0..i % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect(),
        };
        attacker.send_to(&pkt, stun).await.unwrap();
    }
    // Not stalled: a real request from a third source is still answered promptly.
    let other = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let t = Instant::now();
    assert_eq!(stun_query(&other, stun, WAIT).await, Some(other.local_addr().unwrap()));
    assert!(t.elapsed() < Duration::from_secs(1), "answered in {:?}", t.elapsed());
    // And the server is healthy.
    let mut c = Client::join(&srv, "after-garbage").await;
    c.assert_healthy().await;
}

#[tokio::test]
async fn a_flood_from_one_source_is_rate_limited() {
    let srv = TestServer::start().await;
    let stun = srv.stun.unwrap();
    let flooder = UdpSocket::bind("127.0.0.4:0").await.unwrap();
    for _ in 0..200 {
        flooder.send_to(&binding_request().0, stun).await.unwrap();
    }
    let mut answers = 0;
    let mut buf = [0u8; 1500];
    while let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(300), flooder.recv_from(&mut buf)).await {
        assert!(n <= 40, "a response to an IPv4 client is 40 bytes, got {n}");
        answers += 1;
    }
    // The burst, plus what refilled while the 200 requests were being sent.
    assert!(answers >= RATE_BURST as usize && answers <= RATE_BURST as usize + 5, "{answers} answers");
    // Another source is unaffected.
    let other = UdpSocket::bind("127.0.0.5:0").await.unwrap();
    assert!(stun_query(&other, stun, WAIT).await.is_some());
}

fn secret_file(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("signaling-ice-{}-{name}", std::process::id()));
    std::fs::write(&p, SECRETS).unwrap();
    p
}

fn check_turn(server: &IceServer, peer: &str) {
    assert_eq!(server.urls, ["turn:127.0.0.1:3478?transport=udp"]);
    let user = server.username.as_deref().unwrap();
    assert!(user.ends_with(&format!(":{peer}")), "{user}");
    let expiry = credential::expiry_of(user).unwrap();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert!((now + 590..=now + 601).contains(&expiry), "expiry {expiry} vs now {now} + 600");
    let secrets = Secrets::parse(SECRETS).unwrap();
    credential::verify(&secrets, user, server.credential.as_deref().unwrap(), SystemTime::now()).unwrap();
}

#[tokio::test]
async fn welcome_carries_stun_and_a_turn_credential_minted_for_the_session() {
    let file = secret_file("welcome");
    let srv = TestServer::start_with(|cfg| {
        cfg.ice.turn_urls = vec!["turn:127.0.0.1:3478?transport=udp".into()];
        cfg.ice.turn_secret_file = Some(file.clone());
        cfg.ice.turn_ttl_s = 600;
    })
    .await;
    let a = Client::join(&srv, "r").await;
    let b = Client::join(&srv, "r").await;
    let servers = &a.welcome.ice_servers;
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert_eq!(servers[0].urls, [format!("stun:{}", srv.stun.unwrap())]);
    assert_eq!(servers[0].username, None);
    check_turn(&servers[1], &a.id());
    check_turn(&b.welcome.ice_servers[1], &b.id());
    let _ = std::fs::remove_file(file);
}

async fn hub_with_turn(file: &std::path::Path) -> Arc<Hub> {
    let flags = signaling::ice::IceFlags {
        no_stun: true,
        turn_urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
        turn_secret_file: Some(file.to_owned()),
        turn_ttl_s: 600,
        ..Default::default()
    };
    let (ice, _) = signaling::ice::setup(&flags, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    Arc::new(Hub::new(HubConfig {
        limits: protocol::Limits { max_message_bytes: 65_536, max_peers: 16 },
        heartbeat: protocol::Heartbeat { interval_ms: 1000, timeout_ms: 500 },
        outbox: 16,
        resume_window: std::time::Duration::from_secs(1),
        ice_servers: ice,
        node: Default::default(),
        sse_gzip: true,
    }))
}

#[tokio::test]
async fn get_v1_ice_returns_fresh_credentials_and_refuses_bad_peer_ids() {
    let file = secret_file("route");
    let hub = hub_with_turn(&file).await;
    let routes = signaling::routes::routes(hub.clone(), signaling::web::WebRoot::Embedded, &[signaling::transport::Kind::Ws]);

    let res = warp::test::request().path("/v1/ice?peer_id=abc123").reply(&routes).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: IceConfig = serde_json::from_slice(res.body()).unwrap();
    check_turn(&body.ice_servers[0], "abc123");

    // Without a peer id the username carries a random label.
    let res = warp::test::request().path("/v1/ice").reply(&routes).await;
    let body: IceConfig = serde_json::from_slice(res.body()).unwrap();
    let user = body.ice_servers[0].username.clone().unwrap();
    assert!(user.split_once(':').unwrap().1.starts_with("anon-"), "{user}");

    // With a live session's token the credential is that session's, whatever peer_id says; a dead or guessed
    // token is refused (it would otherwise be a way to mint for any name).
    let session = hub.join("r").await.unwrap();
    let auth = format!("Bearer {}", session.token());
    let res = warp::test::request().path("/v1/ice?peer_id=someone-else").header("authorization", &auth).reply(&routes).await;
    assert_eq!(res.status(), 200);
    let body: IceConfig = serde_json::from_slice(res.body()).unwrap();
    check_turn(&body.ice_servers[0], session.peer_id());
    let res = warp::test::request().path("/v1/ice").header("authorization", "Bearer 0000").reply(&routes).await;
    assert_eq!(res.status(), 401);

    for bad in ["a%3Ab", "has%20space", "", &"x".repeat(129)] {
        let res = warp::test::request().path(&format!("/v1/ice?peer_id={bad}")).reply(&routes).await;
        assert_eq!(res.status(), 400, "{bad}");
        let err: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(err["code"], "bad-message", "{bad}");
    }
    let _ = std::fs::remove_file(file);
}
