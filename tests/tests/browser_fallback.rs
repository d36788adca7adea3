//! The web demo when WebSockets are blocked: the real `signaling` binary offers only some transports (as
//! behind a proxy that blocks the others, which answer 404), two separate headless Chromium processes fall
//! back by themselves, with no delay, open a direct data channel through it and chat both ways. Also short
//! polling, which is used only when the page asks for it (`?transport=shortpoll`). On each, a dropped
//! signaling connection resumes the session (same peer id, nobody told it left).
//!
//! Run inside a loopback-only network namespace (see `docs/testing.md`).

use std::time::{Duration, Instant};

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, ensure};
use peer::{Event, Payload, Peer, PeerConfig};
use e2e::{
    Browser, DEMO_STATE, SignalingServer, demo_chat, demo_join, demo_wait_ready,
    keep_failure_artifacts, require_loopback_only_network,
};

/// (server `--transports`, page query, the transport both pages must report)
const CASES: &[(&str, &str, &str)] = &[
    ("sse,longpoll", "", "sse"),
    ("longpoll", "", "longpoll"),
    ("ws,sse,longpoll", "?transport=shortpoll", "shortpoll"),
];

#[tokio::test]
async fn the_demo_falls_back_to_sse_and_polling_and_chats() -> Result<()> {
    require_loopback_only_network()?;
    let a = Browser::launch("fallback-a").await?;
    let b = Browser::launch("fallback-b").await?;
    for &(transports, query, expected) in CASES {
        let server = SignalingServer::start(&["--transports", transports])?;
        let url = format!(
            "{}/{query}#room=e2e-{expected}-{}",
            server.url(),
            std::process::id()
        );
        let outcome = async {
            let started = Instant::now();
            let a_id = demo_join(&a, &url).await?;
            let a_join_ms = started.elapsed().as_millis();
            let b_started = Instant::now();
            let b_id = demo_join(&b, &url).await?;
            let b_join_ms = b_started.elapsed().as_millis();
            demo_wait_ready(&a, &b_id).await?;
            demo_wait_ready(&b, &a_id).await?;
            let ready_ms = b_started.elapsed().as_millis();
            for browser in [&a, &b] {
                let transport = browser.eval(&format!("({DEMO_STATE})?.transport")).await?;
                ensure!(transport == expected, "{} reports transport {transport}, expected {expected}", browser.name());
            }
            demo_chat(&a, &a_id, &b, &format!("{expected}: a → b, héllo ✓")).await?;
            demo_chat(&b, &b_id, &a, &format!("{expected}: b → a")).await?;
            if query.is_empty() {
                native_joins_the_browsers(server.url(), &url, &[&a_id, &b_id], expected).await?;
            }
            let resume_ms = drop_and_resume(&a, &a_id, expected).await?;
            // `b` heard no peer-left: `a` is still there under the same id.
            let peers = b.eval(&format!("Object.keys(({DEMO_STATE})?.peers ?? {{}})")).await?;
            ensure!(peers == serde_json::json!([a_id]), "b's peers after a's resume: {peers}");
            println!(
                "--transports {transports} {query}: pages on {expected}; page load → welcome {a_join_ms} ms (a), \
                 {b_join_ms} ms (b); b's load → channel ready both ways {ready_ms} ms; a dropped connection \
                 resumed (same peer id) in {resume_ms} ms"
            );
            Ok(())
        }
        .await;
        keep_failure_artifacts(outcome, &[&a, &b], &format!("fallback-{expected}")).await?;
        let shot = a.screenshot(&format!("fallback-{expected}.png")).await?;
        println!("screenshot: {}", shot.display());
    }
    a.close().await?;
    b.close().await?;
    Ok(())
}

/// A native `peer` (default options: WebSocket first) joins the pages' room through the same restricted server,
/// falls back to the same transport, and opens a data channel with each page; each page's readiness `hello`
/// reaches it over that channel.
async fn native_joins_the_browsers(server: &str, page_url: &str, browsers: &[&str], transport: &str) -> Result<()> {
    let room = page_url.rsplit("#room=").next().unwrap_or_default();
    let mut cfg = PeerConfig::new(server, room);
    cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (native, mut events) = Peer::connect(cfg).await?;
    ensure!(native.transport().as_str() == transport, "native peer on {}, expected {transport}", native.transport());
    let mut open = HashSet::new();
    let mut heard = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while open.len() < browsers.len() || heard.len() < browsers.len() {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| anyhow::anyhow!("native over {transport}: channels open to {open:?}, hello from {heard:?}"))?
            .ok_or_else(|| anyhow::anyhow!("native peer's events ended"))?;
        match ev {
            Event::ChannelOpen { peer, .. } => {
                open.insert(peer);
            }
            Event::Message { peer, payload: Payload::Text(t), .. } if t.contains("\"hello\"") => {
                heard.insert(peer);
            }
            _ => {}
        }
    }
    let expected: HashSet<String> = browsers.iter().map(|s| s.to_string()).collect();
    ensure!(open == expected && heard == expected, "native: open {open:?}, heard {heard:?}, browsers {expected:?}");
    println!("native peer over {transport}: data channels open with both pages, their hello received");
    native.close().await;
    Ok(())
}

/// Drops the page's signaling connection (as a network failure would) and waits until the session is resumed
/// over `transport` with the same peer id; returns how long that took.
async fn drop_and_resume(browser: &Browser, id: &str, transport: &str) -> Result<u128> {
    let before = browser.eval(&format!("({DEMO_STATE})?.resumes")).await?;
    let dropped = Instant::now();
    browser
        .execute("window.demo.dropSignaling();", Vec::new())
        .await?;
    browser
        .wait_for(
            &format!("a resume over {transport} keeping {id}"),
            Duration::from_secs(10),
            DEMO_STATE,
            |state| {
                let resumed = state.get("resumes")?.as_u64()? > before.as_u64()?
                    && state.get("signaling")? == "open"
                    && state.get("transport")? == transport
                    && state.get("peerId")? == id;
                resumed.then_some(())
            },
        )
        .await?;
    Ok(dropped.elapsed().as_millis())
}
