//! TURN through a real coturn started on loopback ports with the `turn-config` crate's generated
//! configuration: native peers and headless Chromiums forced to relay-only connect through it with
//! credentials the signaling server mints, and coturn refuses expired credentials and unknown secrets.
//!
//! Run inside a loopback-only network namespace (see `e2e::require_loopback_only_network`):
//!     cargo build -p signaling
//!     unshare --net -- sh -c 'ip link set lo up && cargo test -p e2e --offline --test turn'

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use e2e::{Browser, Coturn, SignalingServer, require_loopback_only_network};
use peer::{Event, Payload, Peer, PeerConfig};
use tokio::sync::mpsc;
use turn_config::TurnServers;
use turn_config::credential::Secrets;

const NEW_SECRET: &str = "e2e-new-secret-0123456789abcdef";
const OLD_SECRET: &str = "e2e-old-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);
const STATE: &str = "window.demo?.state() ?? null";

/// The signaling binary handing out TURN credentials for `coturn`, minted with the secrets in `secret_file`.
fn signaling_for(coturn: &Coturn, secret_file: &std::path::Path) -> Result<SignalingServer> {
    let secret_file = secret_file.to_str().context("UTF-8 temp path")?;
    SignalingServer::start(&["--turn-url", &coturn.turn_url(), "--turn-secret-file", secret_file, "--turn-ttl-s", "600"])
}

fn relay_only(server: &str, room: &str) -> PeerConfig {
    let mut cfg = PeerConfig::new(server, room);
    cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    cfg.relay_only = true;
    cfg
}

async fn next_event<T>(events: &mut mpsc::Receiver<Event>, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> Result<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => match pick(&ev) {
                Some(v) => return Ok(v),
                None => seen.push(ev),
            },
            Ok(None) => bail!("events ended while waiting for {what}; saw {seen:?}"),
            Err(_) => bail!("timed out after {WAIT:?} waiting for {what}; saw {seen:?}"),
        }
    }
}

/// Two relay-only native peers: channels open, a message each way, and both selected pairs are relay ↔ relay.
async fn relay_pair(a_cfg: PeerConfig, b_cfg: PeerConfig) -> Result<()> {
    let (a, mut a_ev) = Peer::connect(a_cfg).await?;
    let (b, mut b_ev) = Peer::connect(b_cfg).await?;
    for ev in [&mut a_ev, &mut b_ev] {
        next_event(ev, "the chat channel to open", |e| matches!(e, Event::ChannelOpen { .. }).then_some(())).await?;
    }
    a.send(&b.id(), "chat", Payload::Text("via the relay".into())).await?;
    b.send(&a.id(), "chat", Payload::Binary(vec![7u8; 100_000].into())).await?;
    let got = next_event(&mut b_ev, "a's message", |e| match e {
        Event::Message { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await?;
    ensure!(got == Payload::Text("via the relay".into()), "b got {got:?}");
    let got = next_event(&mut a_ev, "b's message", |e| match e {
        Event::Message { payload: Payload::Binary(bytes), .. } => Some(bytes.clone()),
        _ => None,
    })
    .await?;
    ensure!(got.len() == 100_000 && got.iter().all(|&x| x == 7), "a got {} bytes", got.len());
    for (me, other) in [(&a, b.id()), (&b, a.id())] {
        let path = me.selected_path(&other).await?;
        ensure!(path == Some(("relay".into(), "relay".into())), "{}: selected pair {path:?}", me.id());
    }
    a.close().await;
    b.close().await;
    Ok(())
}

/// Waits for the `relay-unavailable` error on a relay-only peer whose credentials coturn refuses.
async fn refused(cfg_a: PeerConfig, cfg_b: PeerConfig) -> Result<String> {
    let (a, mut a_ev) = Peer::connect(cfg_a).await?;
    let (b, mut b_ev) = Peer::connect(cfg_b).await?;
    let refusal = |e: &Event| match e {
        Event::Error(e) if e.code() == "relay-unavailable" => Some(e.to_string()),
        Event::ChannelOpen { .. } => Some("UNEXPECTED: the channel opened".into()),
        _ => None,
    };
    // Both sides, so each has asked coturn (and been refused) before the peers close: the log check below
    // counts one refusal per peer.
    let err = next_event(&mut b_ev, "relay-unavailable on b", refusal).await?;
    let err_a = next_event(&mut a_ev, "relay-unavailable on a", refusal).await?;
    a.close().await;
    b.close().await;
    for e in [&err, &err_a] {
        ensure!(!e.starts_with("UNEXPECTED"), "coturn accepted a credential it should refuse");
    }
    Ok(err)
}

#[tokio::test]
async fn native_peers_relay_only_through_coturn_with_minted_credentials() -> Result<()> {
    require_loopback_only_network()?;
    let coturn = Coturn::start(&format!("{NEW_SECRET}\n{OLD_SECRET}\n"))?;
    let server = signaling_for(&coturn, coturn.secret_file())?;
    let room = "turn-native";
    relay_pair(relay_only(server.url(), room), relay_only(server.url(), room))
        .await
        .with_context(|| format!("coturn log:\n{}", coturn.log()))
}

#[tokio::test]
async fn coturn_refuses_a_wrong_secret_and_an_expired_credential_but_accepts_the_previous_secret() -> Result<()> {
    require_loopback_only_network()?;
    let coturn = Coturn::start(&format!("{NEW_SECRET}\n{OLD_SECRET}\n"))?;
    let ttl = Duration::from_secs(600);
    let turn = |secret: &str| TurnServers::new(&[coturn.turn_url()], Secrets::parse(secret).unwrap(), ttl).unwrap();
    let with = |server: &str, room: &str, ice: turn_config::IceServer| {
        let mut cfg = relay_only(server, room);
        cfg.ice_servers = Some(vec![ice]);
        cfg
    };

    // A signaling server whose secret coturn does not have: its credentials are refused.
    let dir = std::env::temp_dir().join(format!("e2e-turn-wrong-{}", std::process::id()));
    std::fs::write(&dir, "some-other-secret-0123456789\n")?;
    let server = signaling_for(&coturn, &dir)?;
    let err = refused(relay_only(server.url(), "wrong"), relay_only(server.url(), "wrong")).await;
    let _ = std::fs::remove_file(&dir);
    println!("wrong secret: {}", err?);
    drop(server);

    let server = SignalingServer::start(&[])?;
    // Minted with the right secret, but its expiry passed an hour ago.
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let expired = |id: &str| turn(NEW_SECRET).ice_server(id, an_hour_ago).unwrap();
    let err = refused(with(server.url(), "expired", expired("a")), with(server.url(), "expired", expired("b"))).await?;
    println!("expired credential: {err}");

    // Rotation: a fresh credential minted with the previous secret works while coturn still lists it.
    let old = |id: &str| turn(OLD_SECRET).ice_server(id, SystemTime::now()).unwrap();
    relay_pair(with(server.url(), "rotated", old("a")), with(server.url(), "rotated", old("b")))
        .await
        .with_context(|| format!("coturn log:\n{}", coturn.log()))?;
    // coturn answered 401 to each of the four refused peers, and says why in its log (which it may write a
    // moment later: give it a bounded while).
    let count = |log: &str| log.lines().filter(|l| l.contains("check_stun_auth: Cannot find credentials of user <")).count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&coturn.log()) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = coturn.log();
    let refusals = count(&log);
    ensure!(refusals >= 4, "coturn logged {refusals} refusals, expected one per refused peer (4):\n{log}");
    Ok(())
}

#[tokio::test]
async fn two_chromiums_relay_only_through_coturn() -> Result<()> {
    require_loopback_only_network()?;
    let coturn = Coturn::start(&format!("{NEW_SECRET}\n"))?;
    let server = signaling_for(&coturn, coturn.secret_file())?;
    let a = Browser::launch("relay-a").await?;
    let b = Browser::launch("relay-b").await?;
    let url = format!("{}/?relay=only#room=turn-browsers", server.url());
    let outcome = async {
        let mut ids = Vec::new();
        for browser in [&a, &b] {
            browser.goto(&url).await?;
            let id = browser
                .wait_for("welcome", WAIT, STATE, |s| {
                    (s.get("signaling")? == "open").then(|| s.get("peerId")?.as_str().map(str::to_owned)).flatten()
                })
                .await?;
            ids.push(id);
        }
        for (browser, other) in [(&a, &ids[1]), (&b, &ids[0])] {
            let stats = browser
                .wait_for(&format!("a ready channel with {other} over a relay pair"), WAIT, STATE, |s| {
                    let p = s.pointer(&format!("/peers/{other}"))?;
                    (p["ready"] == true && !p["pairType"].is_null()).then(|| p.clone())
                })
                .await?;
            ensure!(
                stats["pairType"] == "relay" && stats["remoteType"] == "relay",
                "{}: expected relay ↔ relay, got {stats}",
                browser.name()
            );
        }
        a.execute("window.demo.send(arguments[0])", vec!["through coturn".into()]).await?;
        b.wait_for("the chat line", WAIT, STATE, |s| {
            s["received"].as_array()?.iter().any(|m| m["text"] == "through coturn").then_some(())
        })
        .await?;
        let shot = b.screenshot("relay-b.png").await?;
        println!("screenshot: {}", shot.display());
        anyhow::Ok(())
    }
    .await;
    a.close().await?;
    b.close().await?;
    outcome.with_context(|| format!("coturn log:\n{}", coturn.log()))
}
