//! The web demo's compare panel: two separate headless Chromium processes join a room, page A starts the
//! comparison with its own button, and the same pings go to B over the direct data channel and through the
//! real `signaling` binary as `relay` messages; B answers each on the path it came by without running a
//! comparison itself. Once per signaling transport (WebSocket, SSE, long and short polling, forced on both
//! pages), so the relay series is measured through each of the server's transports; short polling's poll
//! interval shows in the relay RTTs and not in the channel's. The WebSocket run also feeds A malformed relay
//! data and stray pongs through B's own signaling connection, then closes the data channel mid-run: the relay
//! goes on alone.
//!
//! Run inside a loopback-only network namespace (see `docs/testing.md`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use e2e::{
    Browser, Check, DEMO_STATE, SignalingServer, demo_connect_pair, keep_failure_artifacts,
    require_loopback_only_network, wait_until,
};
use serde_json::{Value, json};

/// (page query, the transport both pages must report)
const CASES: &[(&str, &str)] = &[
    ("", "ws"),
    ("?transport=sse", "sse"),
    ("?transport=longpoll", "longpoll"),
    ("?transport=shortpoll", "shortpoll"),
];
/// Answered pings each path needs before the run is judged.
const ANSWERS: u64 = 20;
/// 20 answers at 4 pings a second take 5 s; short polling adds up to 2 s per answer.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// A stopped run settles once every ping is answered or lost (3 s at most).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Short polling holds a relay message until the receiver's next poll (once a second) on each leg, so its
/// median RTT is hundreds of ms; anything this slow cannot be a message that bypassed the polling server.
const SHORTPOLL_MIN_P50_MS: f64 = 50.0;
/// What B pushes through the server at A in the bad-input case; each must be ignored and counted once. The
/// placeholder string is replaced by an id A has already had answered (a duplicate pong).
const DUPLICATE: &str = "<an answered id>";

fn malformed_relays() -> Vec<Value> {
    vec![
        json!("garbage"),
        json!(null),
        json!(42),
        json!([1, 2, 3]),
        json!({"t": "pong", "id": "no-such-ping", "ts": 1.0}),
        json!({"t": "pong", "id": DUPLICATE}),
        json!({"t": "ping"}),
        json!({"t": "pong", "id": "x".repeat(1000)}),
        json!({"t": "ping", "id": {"nested": true}}),
    ]
}

/// Collects uncaught errors and rejections of the page, so a chart that throws does not pass unnoticed.
const CATCH_ERRORS: &str = "window.__errors = []; \
    addEventListener('error', (e) => window.__errors.push(String(e.message))); \
    addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));";

/// What the panel shows, read in one script so it belongs to one moment: the state, the summary cells,
/// and each chart line's point count and path data.
const PANEL: &str = "(() => {
    const cell = (path, stat) =>
      document.querySelector(`#compare-summary tr[data-path=\"${path}\"] td[data-stat=\"${stat}\"]`)?.textContent;
    const line = (path) => document.querySelector(`#compare-chart path.line-${path}`);
    const paths = {};
    for (const path of ['dc', 'relay']) {
      paths[path] = {
        cells: Object.fromEntries(['samples', 'p50', 'p90', 'max', 'lost'].map((s) => [s, cell(path, s)])),
        points: Number(line(path)?.getAttribute('data-points')),
        lostMarks: Number(document.querySelector(`#compare-chart path.lost-${path}`)?.getAttribute('data-count') ?? 0),
        d: line(path)?.getAttribute('d') ?? '',
      };
    }
    return {
      compare: window.demo.state().compare,
      hidden: document.getElementById('compare').hidden,
      status: document.getElementById('compare-status').textContent,
      dcPath: document.getElementById('compare-dc-path').textContent,
      relayPath: document.getElementById('compare-relay-path').textContent,
      live: document.getElementById('compare-live').textContent,
      paths,
    };
  })()";

#[tokio::test]
async fn the_compare_panel_measures_the_data_channel_and_the_relay_at_once() -> Result<()> {
    require_loopback_only_network()?;
    let server = SignalingServer::start(&[])?;
    let a = Browser::launch("compare-a").await?;
    let b = Browser::launch("compare-b").await?;
    for &(query, transport) in CASES {
        let url = format!(
            "{}/{query}#room=e2e-compare-{transport}-{}",
            server.url(),
            std::process::id()
        );
        let started = Instant::now();
        let outcome = compare_over(&a, &b, &url, transport).await;
        keep_failure_artifacts(outcome, &[&a, &b], &format!("compare-{transport}")).await?;
        println!(
            "{transport}: case took {} ms",
            started.elapsed().as_millis()
        );
    }
    a.close().await?;
    b.close().await?;
    Ok(())
}

async fn compare_over(a: &Browser, b: &Browser, url: &str, transport: &str) -> Result<()> {
    let (a_id, b_id) = demo_connect_pair(a, b, url).await?;
    for browser in [a, b] {
        browser.execute(CATCH_ERRORS, Vec::new()).await?;
        let used = browser.eval(&format!("({DEMO_STATE})?.transport")).await?;
        ensure!(
            used == transport,
            "{} signals over {used}, expected {transport}",
            browser.name()
        );
    }

    // The card shows up by itself once a peer is ready, with that peer chosen; the test uses its button.
    a.wait_for(
        "the compare card, with b chosen",
        Duration::from_secs(5),
        "(() => { const card = document.getElementById('compare'); \
           return { hidden: card.hidden, peer: document.getElementById('compare-peer').value, \
                    disabled: document.getElementById('compare-toggle').disabled }; })()",
        |v| {
            (v["hidden"] == false && v["peer"] == b_id.as_str() && v["disabled"] == false)
                .then_some(())
        },
    )
    .await?;
    let started = Instant::now();
    click(a, "compare-toggle").await?;
    let running = a.eval(&format!("({DEMO_STATE})?.compare")).await?;
    ensure!(
        running["running"] == true && running["peer"] == b_id.as_str(),
        "after Start: {running}"
    );
    wait_answers(a, ANSWERS, 0).await?;
    let to_answers_ms = started.elapsed().as_millis();

    if transport == "ws" {
        malformed_input_is_ignored(a, b, &a_id).await?;
    }
    if transport == "shortpoll" {
        // Short polling's relay RTTs are 100× the channel's: the log scale shows both lines.
        click(a, "compare-log").await?;
    }

    click(a, "compare-toggle").await?;
    let panel = settled_panel(a).await?;
    let c = &panel["compare"];

    // Both series: finite, positive RTTs, the same ping ids in the same order.
    let mut ids = Vec::new();
    for path in ["dc", "relay"] {
        let series = c["series"][path].as_array().context("series is an array")?;
        ensure!(
            series.len() as u64 >= ANSWERS,
            "{path}: {} entries",
            series.len()
        );
        let mut path_ids = Vec::new();
        for entry in series {
            let rtt = entry["rttMs"].as_f64();
            ensure!(
                rtt.is_some_and(|rtt| rtt.is_finite() && rtt > 0.0),
                "{path}: a ping without a positive RTT on loopback: {entry}"
            );
            path_ids.push(
                entry["id"]
                    .as_str()
                    .context("ping ids are strings")?
                    .to_owned(),
            );
        }
        ids.push(path_ids);
        let s = &c["summary"][path];
        ensure!(
            s["lost"] == 0 && s["pending"] == 0 && s["samples"] == series.len(),
            "{path} summary: {s}"
        );
    }
    ensure!(
        ids[0] == ids[1],
        "the paths carried different pings: dc {:?}, relay {:?}",
        ids[0],
        ids[1]
    );
    ensure!(
        c["sent"] == ids[0].len(),
        "sent {} but the series hold {}",
        c["sent"],
        ids[0].len()
    );
    let unique: HashSet<&String> = ids[0].iter().collect();
    ensure!(
        unique.len() == ids[0].len(),
        "a ping id repeats: {:?}",
        ids[0]
    );

    // The relay really went through the server over the transport under test, on both legs.
    ensure!(
        c["relayTransport"] == transport,
        "a's relay leg: {}",
        c["relayTransport"]
    );
    ensure!(
        c["remoteTransport"] == transport,
        "b's relay leg: {}",
        c["remoteTransport"]
    );
    ensure!(
        c["dcPath"]["local"] == "host" && c["dcPath"]["remote"] == "host",
        "the data channel path: {}",
        c["dcPath"]
    );
    ensure!(
        panel["dcPath"]
            .as_str()
            .is_some_and(|t| t.starts_with("peer-to-peer (host → host)")),
        "the page says of the channel: {}",
        panel["dcPath"]
    );
    ensure!(
        panel["relayPath"]
            .as_str()
            .is_some_and(|t| t.contains("through the signaling server")),
        "the page says of the relay: {}",
        panel["relayPath"]
    );

    // B answered every one of them, on each path, without a comparison of its own.
    let b_state = b.eval(&format!("({DEMO_STATE})?.compare")).await?;
    ensure!(
        b_state["running"] == false && b_state["sent"] == 0,
        "b ran a comparison: {b_state}"
    );
    for path in ["dc", "relay"] {
        let answered: Vec<String> = serde_json::from_value(b_state["answeredIds"][path].clone())
            .with_context(|| format!("b's answered {path} ids: {b_state}"))?;
        // B remembers the last RECENT_IDS (100) ids per path.
        ensure!(
            answered.len() == ids[0].len().min(100) && ids[0].ends_with(&answered),
            "b answered on {path}: {answered:?}; a sent {:?}",
            ids[0]
        );
    }

    let dc_p50 = number(&c["summary"]["dc"]["p50"])?;
    let relay_p50 = number(&c["summary"]["relay"]["p50"])?;
    if transport == "shortpoll" {
        ensure!(
            relay_p50 >= SHORTPOLL_MIN_P50_MS && dc_p50 < relay_p50,
            "short polling: relay p50 {relay_p50} ms, channel p50 {dc_p50} ms"
        );
    }

    for browser in [a, b] {
        let errors = browser.eval("window.__errors").await?;
        ensure!(
            errors == json!([]),
            "{}: uncaught errors: {errors}",
            browser.name()
        );
    }

    let shot = screenshot_panel(a, &format!("compare-{transport}.png")).await?;
    println!(
        "{transport}: {} pings, {ANSWERS} answers on both paths {to_answers_ms} ms after Start; \
         data channel p50/p90/max {}, relay {}; screenshot {}",
        c["sent"],
        stats(&c["summary"]["dc"]),
        stats(&c["summary"]["relay"]),
        shot.display()
    );
    if transport == "ws" {
        the_relay_goes_on_without_the_channel(a, &b_id).await?;
    }
    Ok(())
}

/// A fresh run; then A closes its data channel to B for good: from then on every channel ping is lost at once
/// while every relay ping is still answered (it never depended on the channel), and the chart marks the losses.
async fn the_relay_goes_on_without_the_channel(a: &Browser, b_id: &str) -> Result<()> {
    let ignored = a.eval(&format!("({DEMO_STATE})?.compare.ignored")).await?;
    let ignored = ignored.as_u64().context("ignored count")?;
    click(a, "compare-toggle").await?;
    let before = wait_answers(a, 4, ignored).await?;
    let relay_before = before["summary"]["relay"]["samples"].as_u64().unwrap_or(0);
    a.execute("window.demo.closeChannel(arguments[0]);", vec![json!(b_id)])
        .await?;
    a.wait_for(
        "relay answers to go on with the channel closed",
        RUN_TIMEOUT,
        &format!("({DEMO_STATE})?.compare"),
        |c| {
            let done = c["summary"]["relay"]["samples"].as_u64()? >= relay_before + 12
                && c["summary"]["dc"]["lost"].as_u64()? >= 8;
            done.then_some(())
        },
    )
    .await?;
    click(a, "compare-toggle").await?;
    let panel = settled_panel(a).await?;
    let c = &panel["compare"];
    let dc = c["series"]["dc"].as_array().context("dc series")?;
    let relay = c["series"]["relay"].as_array().context("relay series")?;
    ensure!(
        relay.iter().all(|e| e["rttMs"].is_number()),
        "a relay ping went unanswered after the channel closed: {relay:?}"
    );
    // Answered until the close, lost from it on: one switch, never back.
    let first_lost = dc
        .iter()
        .position(|e| e["lost"] == true)
        .context("no lost channel ping")?;
    ensure!(
        first_lost >= 4
            && dc[..first_lost].iter().all(|e| e["rttMs"].is_number())
            && dc[first_lost..].iter().all(|e| e["lost"] == true),
        "channel series around the close: {dc:?}"
    );
    ensure!(
        panel["dcPath"] == "channel closed",
        "the page says of the channel: {}",
        panel["dcPath"]
    );
    let shot = screenshot_panel(a, "compare-channel-closed.png").await?;
    println!(
        "ws, channel closed: {} channel pings lost, all {} relay pings answered (relay {}); screenshot {}",
        c["summary"]["dc"]["lost"],
        relay.len(),
        stats(&c["summary"]["relay"]),
        shot.display()
    );
    Ok(())
}

/// Waits until both of A's paths have at least `answers` answered pings and A has ignored exactly
/// `expect_ignored` messages (none but the ones a test sends on purpose).
async fn wait_answers(a: &Browser, answers: u64, expect_ignored: u64) -> Result<Value> {
    a.wait_for(
        &format!("{answers} answered pings on both paths"),
        RUN_TIMEOUT,
        &format!("({DEMO_STATE})?.compare"),
        |c| {
            let done = c["summary"]["dc"]["samples"].as_u64()? >= answers
                && c["summary"]["relay"]["samples"].as_u64()? >= answers
                && c["ignored"].as_u64()? == expect_ignored;
            done.then(|| c.clone())
        },
    )
    .await
}

/// B pushes malformed and stray probes at A through its own signaling connection: A counts each as ignored,
/// answers none, adds no sample for them, and its run and chart go on.
async fn malformed_input_is_ignored(a: &Browser, b: &Browser, a_id: &str) -> Result<()> {
    let before = a.eval(&format!("({DEMO_STATE})?.compare")).await?;
    let answered_id = before["series"]["relay"]
        .as_array()
        .and_then(|s| s.iter().find(|e| e["rttMs"].is_number()))
        .and_then(|e| e["id"].as_str())
        .context("an answered relay ping")?
        .to_owned();
    let payloads: Vec<Value> = malformed_relays()
        .into_iter()
        .map(|p| {
            if p["id"] == DUPLICATE {
                json!({"t": "pong", "id": answered_id})
            } else {
                p
            }
        })
        .collect();
    let count = payloads.len() as u64;
    let sent = b
        .execute(
            "return arguments[0].map((data) => window.demo.relay(data, arguments[1]));",
            vec![json!(payloads), json!(a_id)],
        )
        .await?;
    ensure!(
        sent == json!(vec![true; payloads.len()]),
        "b could not relay: {sent}"
    );
    let samples = |c: &Value, path: &str| c["summary"][path]["samples"].as_u64().unwrap_or(0);
    let floor = samples(&before, "dc").min(samples(&before, "relay"));
    // Exactly those ignored, and the run goes on: 8 more answers on each path after them.
    let after = wait_answers(a, floor + 8, count).await?;
    for path in ["dc", "relay"] {
        let series = after["series"][path].as_array().context("series")?;
        let answered = series
            .iter()
            .filter(|e| e["id"] == answered_id.as_str())
            .count();
        ensure!(
            answered == 1,
            "{path}: {answered_id} appears {answered} times"
        );
        ensure!(
            !series.iter().any(|e| e["id"] == "no-such-ping"),
            "{path}: a made-up id became a sample"
        );
    }
    let chart = a.eval(
        "[...document.querySelectorAll('#compare-chart path.line')].map((p) => p.getAttribute('d')).join(' ')",
    )
    .await?;
    ensure!(
        chart
            .as_str()
            .is_some_and(|d| !d.is_empty() && !d.contains("NaN")),
        "chart after bad input: {chart}"
    );
    println!("ws: {count} malformed or stray relays ignored and counted; the run went on");
    Ok(())
}

/// After Stop: waits until nothing is pending and the DOM shows the stopped state (the panel redraws a
/// moment after each change), then checks the summary cells and the chart against the state.
async fn settled_panel(a: &Browser) -> Result<Value> {
    let panel = wait_until(
        "a's stopped panel to settle and show its state",
        SETTLE_TIMEOUT,
        || async {
            let panel = a.eval(PANEL).await?;
            let c = &panel["compare"];
            let settled = c["running"] == false
                && c["summary"]["dc"]["pending"] == 0
                && c["summary"]["relay"]["pending"] == 0
                && panel["status"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Stopped"));
            Ok(match dom_matches(&panel) {
                Ok(()) if settled => Check::Done(panel),
                Ok(()) => Check::Pending(format!("not settled yet: {panel}")),
                Err(mismatch) => Check::Pending(format!("{mismatch:#}; {panel}")),
            })
        },
    )
    .await?;
    ensure!(panel["hidden"] == false, "the card hid itself after Stop");
    ensure!(
        panel["live"]
            .as_str()
            .is_some_and(|s| s.contains("Data channel:") && s.contains("Relay:")),
        "live summary: {}",
        panel["live"]
    );
    Ok(panel)
}

/// The summary cells show the state's numbers, and each chart line has one point per answered ping.
fn dom_matches(panel: &Value) -> Result<()> {
    for path in ["dc", "relay"] {
        let s = &panel["compare"]["summary"][path];
        let dom = &panel["paths"][path];
        for stat in ["samples", "lost"] {
            let shown = dom["cells"][stat].as_str().unwrap_or_default();
            let count = s[stat].as_u64().context("counts are integers")?;
            ensure!(
                shown.parse() == Ok(count),
                "{path} {stat}: shows {shown:?}, state {count}"
            );
        }
        for stat in ["p50", "p90", "max"] {
            let shown = dom["cells"][stat].as_str().unwrap_or_default();
            let value = number(&s[stat])?;
            let parsed: f64 = shown
                .strip_suffix(" ms")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("{path} {stat}: cell {shown:?}"))?;
            // One decimal below 100 ms, whole ms above.
            let tolerance = if value < 100.0 { 0.05 } else { 0.5 };
            ensure!(
                (parsed - value).abs() <= tolerance + 1e-9,
                "{path} {stat}: shows {shown:?}, state {value}"
            );
        }
        let samples = s["samples"].as_u64().context("samples")?;
        ensure!(
            dom["points"] == samples,
            "{path}: chart has {} points, {samples} samples",
            dom["points"]
        );
        ensure!(
            dom["lostMarks"] == s["lost"],
            "{path}: chart marks {} lost, state {}",
            dom["lostMarks"],
            s["lost"]
        );
        let d = dom["d"].as_str().unwrap_or_default();
        let coordinates = d
            .split(['M', 'L', ' '])
            .filter(|n| !n.is_empty())
            .map(str::parse::<f64>)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{path}: path data {d:?}"))?;
        ensure!(
            coordinates.len() as u64 == samples * 2 && coordinates.iter().all(|n| n.is_finite()),
            "{path}: path data {d:?} for {samples} samples"
        );
    }
    Ok(())
}

/// Clicks the element with that id, as a user would (its own click handler runs).
async fn click(browser: &Browser, id: &str) -> Result<()> {
    browser
        .execute(
            "document.getElementById(arguments[0]).click();",
            vec![json!(id)],
        )
        .await?;
    Ok(())
}

/// Scrolls the compare card into view and saves a screenshot of the page.
async fn screenshot_panel(browser: &Browser, file: &str) -> Result<std::path::PathBuf> {
    browser
        .execute(
            "document.getElementById('compare').scrollIntoView({block: 'start'});",
            Vec::new(),
        )
        .await?;
    browser.screenshot(file).await
}

fn number(value: &Value) -> Result<f64> {
    match value.as_f64() {
        Some(n) => Ok(n),
        None => bail!("expected a number, got {value}"),
    }
}

fn stats(summary: &Value) -> String {
    let ms = |k: &str| {
        summary[k]
            .as_f64()
            .map_or("–".to_owned(), |v| format!("{v:.1}"))
    };
    format!("{}/{}/{} ms", ms("p50"), ms("p90"), ms("max"))
}
