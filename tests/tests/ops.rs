//! Operating the real `signaling` binary: its logs as a log shipper reads them (`--log-format json`,
//! `--log-level`), with secrets kept out.

use anyhow::{Context, Result, bail, ensure};
use e2e::{Check, SignalingServer, require_loopback_only_network, wait_until};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

async fn open(server: &SignalingServer, room: &str, query: &str) -> Result<Ws> {
    let url = format!("{}/v1/rooms/{room}/ws{query}", server.url().replacen("http://", "ws://", 1));
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url)).await.context("connect")??;
    Ok(ws)
}

/// The next text frame, as JSON; `Ok(None)` when the server closed (with its close code).
async fn next(ws: &mut Ws) -> Result<std::result::Result<Value, u16>> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.context("a message in time")? {
            Some(Ok(Message::Text(t))) => return Ok(Ok(serde_json::from_str(&t)?)),
            Some(Ok(Message::Close(f))) => return Ok(Err(f.map_or(1005, |f| u16::from(f.code)))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("websocket: {e}"),
            None => bail!("the server closed without a close frame"),
        }
    }
}

/// Every line of the server's log as JSON (a line that is not JSON fails the test).
fn json_lines(server: &SignalingServer) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(server.log_path())?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a JSON log line: {l:?}")))
        .collect()
}

/// The `left` line of `peer`, once the server wrote it.
async fn left_line(server: &SignalingServer, peer: &str) -> Result<Value> {
    wait_until(&format!("the `left` line of {peer}"), WAIT, || async {
        let found = json_lines(server)?
            .into_iter()
            .find(|l| l["fields"]["message"] == "left" && l["fields"]["peer"] == peer);
        Ok(match found {
            Some(l) => Check::Done(l),
            None => Check::Pending("not logged yet".into()),
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_end_each_session_with_one_line_and_never_hold_a_token() -> Result<()> {
    require_loopback_only_network()?;
    let server = SignalingServer::start(&["--log-format", "json", "--rate-per-sec", "5", "--rate-burst", "5"])?;

    // A session that leaves by itself, after a drop and a resume (its token then travelled in a URL).
    let mut ws = open(&server, "ops-logs", "").await?;
    let welcome = next(&mut ws).await?.map_err(|c| anyhow::anyhow!("closed {c}"))?;
    let peer = welcome["peer_id"].as_str().context("peer_id")?.to_owned();
    let token = welcome["session"]["token"].as_str().context("token")?.to_owned();
    drop(ws);
    let mut ws = open(&server, "ops-logs", &format!("?resume={token}&after=1")).await?;
    // Missed messages (none here) come first, then `resumed`.
    for _ in 0..10 {
        let m = next(&mut ws).await?.map_err(|c| anyhow::anyhow!("closed {c} before `resumed`"))?;
        if m["type"] == "resumed" {
            break;
        }
        ensure!(m["type"] != "welcome", "the resume was refused: {m}");
    }
    ws.send(Message::text(json!({"type": "leave"}).to_string())).await?;
    let line = left_line(&server, &peer).await?;
    let f = &line["fields"];
    ensure!(f["room"] == "ops-logs" && f["transport"] == "ws", "{line}");
    ensure!(f["reason"] == "Left" && f["close_code"].is_null(), "{line}");
    ensure!(f["duration_ms"].as_u64().is_some(), "{line}");
    ensure!(line["level"] == "INFO" && line["timestamp"].is_string(), "{line}");
    // Its start and its resume name the transport too.
    for start in ["joined", "resumed"] {
        let found = json_lines(&server)?
            .into_iter()
            .find(|l| l["fields"]["message"] == start && l["fields"]["peer"] == peer.as_str())
            .with_context(|| format!("no `{start}` line for {peer}"))?;
        ensure!(found["fields"]["transport"] == "ws" && found["fields"]["room"] == "ops-logs", "{found}");
    }

    // A session the server ends (a flood past the rate limit): its close code is on its line.
    let mut flood = open(&server, "ops-logs-flood", "").await?;
    let welcome = next(&mut flood).await?.map_err(|c| anyhow::anyhow!("closed {c}"))?;
    let flooder = welcome["peer_id"].as_str().context("peer_id")?.to_owned();
    for n in 0..200 {
        if flood.send(Message::text(json!({"type": "relay", "data": n}).to_string())).await.is_err() {
            break;
        }
    }
    // The close frame may not arrive: closing a socket with unread bytes (the rest of the flood) resets it.
    // What counts is the server's own record.
    for _ in 0..400 {
        match next(&mut flood).await {
            Ok(Ok(_)) => continue,
            Ok(Err(code)) => {
                ensure!(code == 4004, "the flood was closed with {code}, not 4004");
                break;
            }
            Err(_) => break,
        }
    }
    let line = left_line(&server, &flooder).await?;
    ensure!(line["fields"]["close_code"] == 4004 && line["fields"]["transport"] == "ws", "{line}");

    let log = std::fs::read_to_string(server.log_path())?;
    ensure!(!log.contains(&token), "a session token reached the log");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_warn_keeps_info_lines_out_and_a_bad_level_is_refused() -> Result<()> {
    require_loopback_only_network()?;
    let server = SignalingServer::start(&["--log-level", "warn"])?;
    let mut ws = open(&server, "ops-quiet", "").await?;
    let welcome = next(&mut ws).await?.map_err(|c| anyhow::anyhow!("closed {c}"))?;
    ensure!(welcome["type"] == "welcome", "{welcome}");
    ws.send(Message::text(json!({"type": "leave"}).to_string())).await?;
    let _ = next(&mut ws).await;
    let log = std::fs::read_to_string(server.log_path())?;
    ensure!(!log.contains("joined") && !log.contains(" left"), "info lines at --log-level warn:\n{log}");

    let out = std::process::Command::new(e2e::signaling_binary_path()?)
        .args(["--listen", "127.0.0.1:0", "--log-level", "info,signaling=loud"])
        .env_remove("RUST_LOG")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(2) && stderr.contains("--log-level"), "{:?}: {stderr}", out.status);
    Ok(())
}

/// `deploy/signaling.service` as an operator installs it: `systemd-analyze verify` finds nothing to say (with
/// ExecStart pointing at the built binary, since verify checks that it exists), the descriptor limit is raised,
/// and every variable `deploy/signaling.env` names is one the binary reads.
#[test]
fn the_systemd_unit_verifies_and_its_environment_file_names_only_real_variables() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("deploy/signaling.service"))?;
    let nofile: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .context("no LimitNOFILE= in the unit")?
        .trim()
        .parse()?;
    ensure!(nofile >= 65_536, "LimitNOFILE={nofile}: too low for a public node");
    ensure!(unit.lines().any(|l| l == "ExecStart=/usr/local/bin/signaling"), "ExecStart changed: update this test");

    let bin = e2e::signaling_binary_path()?;
    let dir = std::env::temp_dir().join(format!("e2e-unit-{}", e2e::unique()));
    std::fs::create_dir_all(&dir)?;
    let local = dir.join("signaling.service");
    std::fs::write(
        &local,
        unit.replace("ExecStart=/usr/local/bin/signaling", &format!("ExecStart={}", bin.display())),
    )?;
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .context("running systemd-analyze (apt-get install systemd; scripts/test does)")?;
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    // verify exits 0 on unknown keys and bad values too: it only warns, so silence is the pass.
    ensure!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {:?}\n{said}", out.status);

    let help = std::process::Command::new(&bin).arg("--help").output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    let env = std::fs::read_to_string(root.join("deploy/signaling.env"))?;
    let mut named = 0;
    for line in env.lines() {
        let Some((name, _)) = line.trim_start_matches('#').split_once('=') else { continue };
        if !name.starts_with("SIGNALING_") {
            continue;
        }
        named += 1;
        ensure!(help.contains(&format!("env: {name}=")), "deploy/signaling.env names {name}, which `signaling --help` does not know");
    }
    ensure!(named >= 5, "deploy/signaling.env names only {named} variables");
    Ok(())
}
