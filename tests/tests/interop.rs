//! Native `peer` ↔ headless Chromium on the web demo, through the real `signaling` binary: the native side as
//! offerer, as answerer, and a three-peer mesh (two native, one browser). Large messages cross in both
//! directions, so the framing of `peer/src/framing.rs` and `web-demo/js/framing.js` must agree.
//!
//! Run inside a loopback-only network namespace (see `docs/testing.md`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use e2e::{Browser, SignalingServer, require_loopback_only_network};
use peer::{Event, Payload, Peer, PeerConfig};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);
const STATE: &str = "window.demo?.state() ?? null";
/// Larger than one 64 KiB frame: crosses as several chunks.
const BIG: usize = 300_000;

static BROWSERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A native peer that speaks the demo's chat protocol (docs/protocol.md, "The web demo's data-channel messages").
struct Native {
    peer: Peer,
    events: mpsc::Receiver<Event>,
    ready: HashMap<String, bool>,
    chats: Vec<(String, String)>,
    next_id: u64,
}

impl Native {
    async fn join(server: &SignalingServer, room: &str) -> Result<Self> {
        let mut cfg = PeerConfig::new(server.url(), room);
        cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (peer, events) = Peer::connect(cfg).await.context("native peer joins")?;
        Ok(Native { peer, events, ready: HashMap::new(), chats: Vec::new(), next_id: 1 })
    }

    fn id(&self) -> String {
        self.peer.id().to_owned()
    }

    async fn send_json(&self, to: &str, msg: Value) -> Result<()> {
        self.peer.send(to, "chat", Payload::Text(msg.to_string())).await.with_context(|| format!("send to {to}"))
    }

    async fn chat(&mut self, to: &str, text: &str) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_json(to, json!({"t": "chat", "id": id, "text": text})).await
    }

    /// Handles one event the way the demo does: hello on open, hello-ack on hello, pong on ping.
    async fn step(&mut self, deadline: tokio::time::Instant) -> Result<()> {
        let ev = tokio::time::timeout_at(deadline, self.events.recv())
            .await
            .context("timed out")?
            .context("event stream ended")?;
        match ev {
            Event::ChannelOpen { peer, label } if label == "chat" => {
                self.send_json(&peer, json!({"t": "hello", "ack": false})).await?;
            }
            Event::Message { peer, label, payload: Payload::Text(text) } if label == "chat" => {
                let msg: Value = serde_json::from_str(&text).context("demo sends JSON")?;
                match msg["t"].as_str() {
                    Some("hello") => {
                        if msg["ack"] != json!(true) {
                            self.send_json(&peer, json!({"t": "hello", "ack": true})).await?;
                        }
                        self.ready.insert(peer, true);
                    }
                    Some("ping") => self.send_json(&peer, json!({"t": "pong", "id": msg["id"], "ts": msg["ts"]})).await?,
                    Some("chat") => self.chats.push((peer, msg["text"].as_str().unwrap_or_default().to_owned())),
                    _ => {}
                }
            }
            Event::Error(e) => bail!("native peer error: {e}"),
            _ => {}
        }
        Ok(())
    }

    async fn wait_ready(&mut self, peer: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.ready.contains_key(peer) {
            self.step(deadline).await.with_context(|| format!("native waiting for {peer}'s hello"))?;
        }
        Ok(())
    }

    async fn wait_chat(&mut self, from: &str, text: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.chats.iter().any(|(p, t)| p == from && t == text) {
            self.step(deadline).await.with_context(|| {
                format!("native waiting for a {}-byte line from {from}; has {:?}", text.len(), self.short_chats())
            })?;
        }
        Ok(())
    }

    fn short_chats(&self) -> Vec<(String, usize)> {
        self.chats.iter().map(|(p, t)| (p.clone(), t.len())).collect()
    }
}

async fn open_demo(browser: &Browser, url: &str) -> Result<String> {
    browser.goto(url).await?;
    browser
        .wait_for("welcome", WAIT, STATE, |s| s.get("peerId")?.as_str().map(str::to_owned))
        .await
}

async fn browser_ready_with(browser: &Browser, peer: &str) -> Result<()> {
    browser
        .wait_for(&format!("ready with {peer}"), WAIT, STATE, |s| {
            (s.pointer(&format!("/peers/{peer}/ready"))? == &json!(true)).then_some(())
        })
        .await
}

async fn browser_received(browser: &Browser, from: &str, text: &str) -> Result<()> {
    browser
        .wait_for(&format!("a {}-byte line from {from}", text.len()), WAIT, STATE, |s| {
            s.get("received")?.as_array()?.iter().any(|m| m["from"] == json!(from) && m["text"] == json!(text)).then_some(())
        })
        .await
}

async fn browser_says(browser: &Browser, text: &str) -> Result<()> {
    browser.execute("return window.demo.send(arguments[0]);", vec![json!(text)]).await?;
    Ok(())
}

/// Both directions, small and large lines, between `native` and the page.
async fn exchange(native: &mut Native, browser: &Browser, browser_id: &str) -> Result<()> {
    native.wait_ready(browser_id).await?;
    browser_ready_with(browser, &native.id()).await?;
    let small = "native → browser: héllo";
    let big = "n".repeat(BIG);
    native.chat(browser_id, small).await?;
    native.chat(browser_id, &big).await?;
    browser_received(browser, &native.id(), small).await?;
    browser_received(browser, &native.id(), &big).await?;
    let small_back = "browser → native: ✓";
    let big_back = "b".repeat(BIG);
    browser_says(browser, small_back).await?;
    browser_says(browser, &big_back).await?;
    native.wait_chat(browser_id, small_back).await?;
    native.wait_chat(browser_id, &big_back).await?;
    Ok(())
}

#[tokio::test]
async fn native_offerer_and_browser_answerer_exchange_messages() -> Result<()> {
    // The browser is in the room first, so the native peer (the later joiner) creates the channel and offers.
    pair_exchange("native-offerer", false).await
}

#[tokio::test]
async fn browser_offerer_and_native_answerer_exchange_messages() -> Result<()> {
    // The native peer is in the room first: the browser creates the channel and offers; the native peer answers.
    pair_exchange("native-answerer", true).await
}

async fn pair_exchange(name: &str, native_first: bool) -> Result<()> {
    require_loopback_only_network()?;
    let _one = BROWSERS.lock().await;
    let server = SignalingServer::start(&[])?;
    let browser = Browser::launch(name).await?;
    let room = format!("{name}-{}", std::process::id());
    let url = format!("{}/#room={room}", server.url());
    let (mut native, browser_id) = if native_first {
        let native = Native::join(&server, &room).await?;
        (native, open_demo(&browser, &url).await?)
    } else {
        let browser_id = open_demo(&browser, &url).await?;
        (Native::join(&server, &room).await?, browser_id)
    };
    let outcome = exchange(&mut native, &browser, &browser_id).await;
    if outcome.is_err() {
        let _ = browser.screenshot(&format!("interop-{name}-failure.png")).await;
    }
    outcome?;
    native.peer.close().await;
    browser.close().await
}

#[tokio::test]
async fn three_peer_mesh_two_native_one_browser() -> Result<()> {
    require_loopback_only_network()?;
    let _one = BROWSERS.lock().await;
    let server = SignalingServer::start(&[])?;
    let browser = Browser::launch("mesh").await?;
    let room = format!("mesh-{}", std::process::id());
    let mut n1 = Native::join(&server, &room).await?;
    let browser_id = open_demo(&browser, &format!("{}/#room={room}", server.url())).await?;
    let mut n2 = Native::join(&server, &room).await?;
    let (n1_id, n2_id) = (n1.id(), n2.id());

    // Native ↔ native channels carry the same protocol; each native peer only says hello while it is being
    // stepped, so both wait concurrently.
    let (r1, r2) = tokio::join!(
        async {
            n1.wait_ready(&browser_id).await?;
            n1.wait_ready(&n2_id).await
        },
        async {
            n2.wait_ready(&browser_id).await?;
            n2.wait_ready(&n1_id).await
        }
    );
    r1?;
    r2?;
    browser_ready_with(&browser, &n1_id).await?;
    browser_ready_with(&browser, &n2_id).await?;

    browser_says(&browser, "from the browser").await?;
    for (me, others) in [(&mut n1, [&browser_id, &n2_id]), (&mut n2, [&browser_id, &n1_id])] {
        let text = format!("from {}", me.id());
        for other in others {
            me.chat(other, &text).await?;
        }
    }
    let (r1, r2) = tokio::join!(
        async {
            n1.wait_chat(&browser_id, "from the browser").await?;
            n1.wait_chat(&n2_id, &format!("from {n2_id}")).await
        },
        async {
            n2.wait_chat(&browser_id, "from the browser").await?;
            n2.wait_chat(&n1_id, &format!("from {n1_id}")).await
        }
    );
    r1?;
    r2?;
    browser_received(&browser, &n1_id, &format!("from {n1_id}")).await?;
    browser_received(&browser, &n2_id, &format!("from {n2_id}")).await?;
    let peers = browser.eval("Object.keys(window.demo.state().peers).length").await?;
    ensure!(peers == json!(2), "the browser sees {peers} peers, expected 2");

    // A native peer leaving is seen by the browser and by the other native peer.
    n2.peer.close().await;
    browser
        .wait_for("n2 removed", WAIT, STATE, |s| s.pointer(&format!("/peers/{n2_id}")).is_none().then_some(()))
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, n1.events.recv()).await {
            Ok(Some(Event::PeerLeft { peer, .. })) if peer == n2_id => break,
            Ok(Some(_)) => {}
            other => bail!("n1 did not see n2 leave: {other:?}"),
        }
    }
    ensure!(n1.peer.open_channels("chat") == vec![browser_id.clone()], "n1 released its channel to n2");
    n1.peer.close().await;
    browser.close().await
}
