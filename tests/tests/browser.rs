//! Two separate headless Chromium processes open the web demo on the same room, served by the real
//! `signaling` binary, and chat over a direct data channel.
//!
//! Run inside a loopback-only network namespace (see `e2e::require_loopback_only_network`):
//!     cargo build -p signaling
//!     unshare --net -- sh -c 'ip link set lo up && cargo test -p e2e --offline'

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use e2e::{
    Browser, DEMO_CONNECT_TIMEOUT as CONNECT_TIMEOUT, DEMO_STATE as STATE, SignalingServer,
    demo_chat, demo_connect_pair as connect_pair, demo_join as join, demo_wait_ready as wait_ready,
    keep_failure_artifacts, require_loopback_only_network,
};
use serde_json::{Value, json};

/// How many fresh rooms the timing test joins, unless `E2E_RUNS` says otherwise.
const DEFAULT_RUNS: usize = 12;
/// The demo refreshes getStats once a second.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// A vanished peer is announced within heartbeat interval + timeout (10 s + 5 s by default), a dropped
/// connection once the resume window (`RESUME_WINDOW_MS` here) has passed.
const PEER_GONE_TIMEOUT: Duration = Duration::from_secs(20);
const RESUME_WINDOW_MS: &str = "2000";
/// The backoff cap (docs/protocol.md: no reconnect waits 20 s) plus the time to connect.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(25);
/// How long the restart test keeps the server down: several reconnect attempts fail meanwhile.
const SERVER_DOWN: Duration = Duration::from_secs(3);

/// Browser tests run one at a time: each drives two Chromium processes, and on a small machine two tests
/// at once would both slow down and skew the timings being measured.
static BROWSERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn two_browsers_chat_over_a_direct_data_channel() -> Result<()> {
    require_loopback_only_network()?;
    let _one_at_a_time = BROWSERS.lock().await;
    let server = SignalingServer::start(&[])?;
    let a = Browser::launch("a").await?;
    let b = Browser::launch("b").await?;

    let count = run_count()?;
    let mut runs = Vec::with_capacity(count);
    for run in 1..=count {
        let outcome = chat_in_fresh_room(&server, &a, &b, run).await;
        runs.push(keep_failure_artifacts(outcome, &[&a, &b], "chat").await?);
    }
    for browser in [&a, &b] {
        let path = browser
            .screenshot(&format!("chat-{}.png", browser.name()))
            .await?;
        println!("screenshot: {}", path.display());
    }
    a.close().await?;
    b.close().await?;

    let open: Vec<f64> = runs.iter().map(|r| r.join_to_open_ms).collect();
    let ready: Vec<f64> = runs.iter().map(|r| r.join_to_ready_ms).collect();
    println!("join→channel open over {count} runs: {}", summarize(&open));
    println!(
        "join→channel ready (peer's hello received) over {count} runs: {}",
        summarize(&ready)
    );
    let early = runs.iter().filter(|r| r.early_received > 0).count();
    println!(
        "early probe: the offering side received the answering side's first message in {early} of {count} runs"
    );
    Ok(())
}

#[tokio::test]
async fn a_peer_that_goes_away_is_removed() -> Result<()> {
    require_loopback_only_network()?;
    let _one_at_a_time = BROWSERS.lock().await;
    // A dropped connection waits for a resume this long before the others are told (30 s by default).
    let server = SignalingServer::start(&["--resume-window-ms", RESUME_WINDOW_MS])?;
    let a = Browser::launch("stays").await?;
    let b = Browser::launch("goes").await?;

    let room = format!("e2e-gone-{}", std::process::id());
    let url = format!("{}/#room={room}", server.url());

    // Navigating away unloads the page, which leaves the room.
    let outcome = async {
        let (_, b_id) = connect_pair(&a, &b, &url).await?;
        b.goto("about:blank").await?;
        let since = Instant::now();
        wait_peer_gone(&a, &b_id).await?;
        println!(
            "peer removed {} ms after the other page navigated away",
            since.elapsed().as_millis()
        );
        Ok(())
    }
    .await;
    keep_failure_artifacts(outcome, &[&a, &b], "navigate-away").await?;

    // A killed browser says nothing; its socket closing tells the server, which announces it once the resume
    // window has passed without a resume.
    let outcome = async {
        let (_, b_id) = connect_pair(&a, &b, &url).await?;
        Ok(b_id)
    }
    .await;
    let b_id = keep_failure_artifacts(outcome, &[&a, &b], "kill").await?;
    let since = Instant::now();
    drop(b);
    let outcome = wait_peer_gone(&a, &b_id).await;
    keep_failure_artifacts(outcome, &[&a], "kill").await?;
    println!(
        "peer removed {} ms after the other browser was killed",
        since.elapsed().as_millis()
    );
    a.close().await?;
    Ok(())
}

/// A server restart costs no direct channel: with the server killed (SIGKILL, no goodbye) the pages keep
/// chatting peer to peer; once a server is back on the same port both pages reconnect by themselves, get new
/// sessions (the new server knows nothing of the old ones: `recovered: false`, new peer ids) and open a
/// channel to each other's new id.
#[tokio::test]
async fn channels_survive_a_server_restart_and_the_pages_come_back() -> Result<()> {
    require_loopback_only_network()?;
    let _one_at_a_time = BROWSERS.lock().await;
    let server = SignalingServer::start(&[])?;
    let listen = format!("127.0.0.1:{}", server.port()?);
    let a = Browser::launch("restart-a").await?;
    let b = Browser::launch("restart-b").await?;
    let url = format!("{}/#room=e2e-restart-{}", server.url(), std::process::id());

    let outcome = async {
        let (a_id, b_id) = connect_pair(&a, &b, &url).await?;
        for (browser, id) in [(&a, &a_id), (&b, &b_id)] {
            let transport = browser.eval(&format!("({STATE})?.transport")).await?;
            ensure!(transport == "ws", "{id} uses {transport}, expected ws");
        }
        drop(server); // SIGKILL
        let killed = Instant::now();
        for browser in [&a, &b] {
            browser
                .wait_for("signaling to notice the server is gone", Duration::from_secs(5), STATE, |state| {
                    (state.get("signaling")? != "open").then_some(())
                })
                .await?;
        }
        demo_chat(&a, &a_id, &b, "server down: a → b").await?;
        demo_chat(&b, &b_id, &a, "server down: b → a").await?;
        let p2p_ms = killed.elapsed().as_millis();
        // Down long enough for several failed attempts (backoff), and the channel still carries messages.
        tokio::time::sleep(SERVER_DOWN.saturating_sub(killed.elapsed())).await;
        demo_chat(&a, &a_id, &b, "server still down: a → b").await?;

        let down_ms = killed.elapsed().as_millis();
        let restarted = Instant::now();
        let server = SignalingServer::start_at(&listen, &[])?;
        let new_a = wait_new_session(&a, &a_id).await?;
        let new_b = wait_new_session(&b, &b_id).await?;
        let back_ms = restarted.elapsed().as_millis();
        ensure!(new_a != new_b, "both pages got the same peer id {new_a}");
        wait_ready(&a, &new_b).await?;
        wait_ready(&b, &new_a).await?;
        let ready_ms = restarted.elapsed().as_millis();
        demo_chat(&a, &new_a, &b, "after the restart: a → b").await?;
        demo_chat(&b, &new_b, &a, "after the restart: b → a").await?;
        for (browser, old) in [(&a, &b_id), (&b, &a_id)] {
            let peers = browser.eval(&format!("Object.keys(({STATE})?.peers ?? {{}})")).await?;
            ensure!(!peers.to_string().contains(old.as_str()), "{} still lists the old peer {old}: {peers}", browser.name());
        }
        println!(
            "server restart: chat both ways over the channel {p2p_ms} ms after SIGKILL, again at {down_ms} ms; \
             both pages back (new sessions over ws) {back_ms} ms after the restart, channel ready {ready_ms} ms"
        );
        Ok(server)
    }
    .await;
    let _server = keep_failure_artifacts(outcome, &[&a, &b], "restart").await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}

/// Waits until the page is open again over WebSocket with a peer id other than `old`; returns the new id.
/// A reconnect waits at most the backoff cap (20 s) plus the time to connect.
async fn wait_new_session(browser: &Browser, old: &str) -> Result<String> {
    browser
        .wait_for(
            &format!("a new session (the old one was {old}) over ws"),
            RECONNECT_TIMEOUT,
            STATE,
            |state| {
                let id = state.get("peerId")?.as_str()?;
                let back = state.get("signaling")? == "open"
                    && state.get("transport")? == "ws"
                    && id != old;
                back.then(|| id.to_owned())
            },
        )
        .await
}

struct RunOutcome {
    join_to_open_ms: f64,
    join_to_ready_ms: f64,
    early_received: u64,
}

/// Both pages join a new room (`a` first), chat both ways and check the path; returns `b`'s timings.
async fn chat_in_fresh_room(
    server: &SignalingServer,
    a: &Browser,
    b: &Browser,
    run: usize,
) -> Result<RunOutcome> {
    let room = format!("e2e-{}-{run}", std::process::id());
    // A query that changes every run makes each goto a full page load, not a same-document hash change.
    let url = format!("{}/?probe=early&run={run}#room={room}", server.url());
    let a_id = join(a, &url).await?;
    let b_id = join(b, &url).await?;

    // Sent the moment `b` is in, before its channel can be ready: the demo must queue it, not lose it.
    let queued = format!("run {run}: b, queued before the channel was ready");
    let addressed = b
        .execute(
            "return window.demo.send(arguments[0]);",
            vec![json!(queued)],
        )
        .await?;
    ensure!(
        addressed == json!(1),
        "b addressed its first line to {addressed} peers, expected 1"
    );

    wait_ready(a, &b_id).await?;
    wait_ready(b, &a_id).await?;
    let from_a = [
        format!("run {run}: a → b, héllo ✓"),
        format!("run {run}: a → b, second line"),
    ];
    for line in &from_a {
        a.execute("return window.demo.send(arguments[0]);", vec![json!(line)])
            .await?;
    }
    let from_b = format!("run {run}: b → a, after ready");
    b.execute(
        "return window.demo.send(arguments[0]);",
        vec![json!(from_b)],
    )
    .await?;

    let expect_at_a = json!([{ "from": b_id, "text": queued }, { "from": b_id, "text": from_b }]);
    let expect_at_b =
        json!([{ "from": a_id, "text": from_a[0] }, { "from": a_id, "text": from_a[1] }]);
    for (browser, expected) in [(a, &expect_at_a), (b, &expect_at_b)] {
        let count = expected.as_array().map_or(0, Vec::len);
        let received = browser
            .wait_for(
                &format!("{count} chat lines"),
                CONNECT_TIMEOUT,
                STATE,
                |state| {
                    let received = state.get("received")?.as_array()?;
                    (received.len() >= count).then(|| Value::Array(received.clone()))
                },
            )
            .await?;
        ensure!(
            &received == expected,
            "{} received {received}, expected {expected}",
            browser.name()
        );
    }

    check_host_path(a, &b_id).await?;
    check_host_path(b, &a_id).await?;

    // `b` joined second, so its welcome is the moment both pages are in the room.
    let timings = b.eval("window.demo.timings").await?;
    let at = |pointer: &str| {
        timings
            .pointer(pointer)
            .and_then(Value::as_f64)
            .with_context(|| format!("b's timings lack {pointer}: {timings}"))
    };
    let welcome_at = at("/welcomeAt")?;
    let early_received = b
        .eval("window.demo.state().earlyReceived")
        .await?
        .as_u64()
        .context("earlyReceived")?;
    let join_to_open_ms = at(&format!("/dcOpenAt/{a_id}"))? - welcome_at;
    let join_to_ready_ms = at(&format!("/openAt/{a_id}"))? - welcome_at;
    if early_received == 0 {
        // The data for the lost-first-message investigation: when each side saw its channel open.
        let a_timings = a.eval("window.demo.timings").await?;
        let a_open = a_timings
            .pointer(&format!("/dcOpenAt/{b_id}"))
            .and_then(Value::as_f64);
        let a_open_ms = a_open.map_or("?".to_owned(), |t| format!("{:.0}", t - welcome_at));
        println!(
            "run {run}: early probe lost; ms after b's welcome: a's channel open {a_open_ms}, \
             b's channel open {join_to_open_ms:.0}, b ready {join_to_ready_ms:.0}"
        );
    }
    Ok(RunOutcome {
        join_to_open_ms,
        join_to_ready_ms,
        early_received,
    })
}

async fn wait_peer_gone(browser: &Browser, peer: &str) -> Result<()> {
    browser
        .wait_for(
            &format!("{peer} to be removed"),
            PEER_GONE_TIMEOUT,
            STATE,
            |state| state.get("peers")?.get(peer).is_none().then_some(()),
        )
        .await
}

/// The selected candidate pair must be host ↔ host on 127.0.0.1: loopback is the only network there is.
async fn check_host_path(browser: &Browser, peer: &str) -> Result<()> {
    let stats = browser
        .wait_for(
            &format!("a selected candidate pair with {peer}"),
            STATS_TIMEOUT,
            STATE,
            |state| {
                let stats = state.pointer(&format!("/peers/{peer}"))?;
                (!stats["pairType"].is_null() && !stats["remoteAddress"].is_null())
                    .then(|| stats.clone())
            },
        )
        .await?;
    let on_loopback = |field: &str| {
        stats[field]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    };
    ensure!(
        stats["pairType"] == "host" && on_loopback("localAddress") && on_loopback("remoteAddress"),
        "{}: expected a host candidate pair on 127.0.0.1, got {stats}",
        browser.name()
    );
    Ok(())
}

/// `E2E_RUNS` raises the number of runs when a measurement needs more samples.
fn run_count() -> Result<usize> {
    match std::env::var("E2E_RUNS") {
        Ok(value) => value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("E2E_RUNS={value:?} is not a positive integer")),
        Err(_) => Ok(DEFAULT_RUNS),
    }
}

fn summarize(samples: &[f64]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return "no samples".to_owned();
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    format!(
        "median {median:.0} ms, min {:.0} ms, max {:.0} ms",
        sorted[0],
        sorted[n - 1]
    )
}
