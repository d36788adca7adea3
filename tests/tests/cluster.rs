//! Several signaling nodes sharing rooms through a real Redis, behind a real nginx that round-robins every
//! request with no stickiness, configured with the file `docs/deployment.md` ships
//! (`deploy/nginx-signaling.conf`). See `e2e::cluster` for how the parts are started and how the node that
//! served a connection is proven (its own log, nginx's access log), never assumed.
//!
//! Needs `redis-server`, `/usr/sbin/nginx`, `chromium` and `chromedriver` (scripts/test installs them). Run
//! inside a loopback-only network namespace (see `docs/testing.md`).

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use e2e::cluster::{Cluster, check_doc_ships_the_nginx_conf};
use e2e::{
    Browser, Check, demo_chat, demo_join, demo_wait_ready, keep_failure_artifacts,
    require_loopback_only_network, wait_until,
};
use futures_util::StreamExt;
use peer::signaling::{SignalingEvent, SignalingOptions, SignalingSender, Transport};
use protocol::{ClientMessage, ServerMessage, Welcome};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// One cluster at a time: three nodes, Redis, nginx and maybe two browsers are a lot for two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NODES: usize = 3;
const WAIT: Duration = Duration::from_secs(20);
/// How many times a client reconnects to land on another node than the one it must avoid. With round robin
/// over three nodes and other requests in between, a few tries are enough; the bound keeps a broken balancer
/// from looping forever.
const PLACEMENT_TRIES: usize = 12;
/// A short resume window, so a peer that never comes back is announced soon.
const RESUME_WINDOW_MS: u64 = 3_000;
/// How long a node that stopped refreshing its presence in Redis still counts as alive (`--presence-ttl-ms`).
const PRESENCE_TTL_MS: u64 = 3_000;

// --- native signaling clients (the `peer` crate's, with resume) ---

struct Client {
    id: String,
    welcome: Welcome,
    tx: SignalingSender,
    rx: mpsc::Receiver<SignalingEvent>,
}

async fn join(url: &str, room: &str, transports: &[Transport]) -> Result<Client> {
    let opts = SignalingOptions {
        transports: transports.to_vec(),
        ..SignalingOptions::default()
    };
    let (welcome, tx, rx) = peer::signaling::connect_with(url, room, opts)
        .await
        .with_context(|| format!("joining {room} through {url}"))?;
    Ok(Client {
        id: welcome.peer_id.clone(),
        welcome,
        tx,
        rx,
    })
}

/// Joins until the session lands on a node not in `avoid` (as the nodes' logs say); returns it and its node.
async fn join_avoiding(
    cluster: &Cluster,
    room: &str,
    transports: &[Transport],
    avoid: &[usize],
) -> Result<(Client, usize)> {
    let mut seen = Vec::new();
    for _ in 0..PLACEMENT_TRIES {
        let client = join(&cluster.url(), room, transports).await?;
        let node = node_of(cluster, &client.id).await?;
        if !avoid.contains(&node) {
            return Ok((client, node));
        }
        seen.push(node);
        // Dropping the receiver leaves the room.
        drop(client);
    }
    bail!(
        "{PLACEMENT_TRIES} joins through nginx all landed on nodes {seen:?} (avoiding {avoid:?}): no round robin?"
    )
}

/// The node whose log says `peer` joined there (the line is written while the join is handled, before the
/// `welcome` goes out, but the log file is read a moment later: wait briefly).
async fn node_of(cluster: &Cluster, peer: &str) -> Result<usize> {
    wait_until(
        &format!("a node to log {peer} as joined"),
        Duration::from_secs(5),
        || async {
            Ok(match cluster.nodes_logging("joined", peer)[..] {
                [i] => Check::Done(i),
                ref other => Check::Pending(format!("logged as joined on {other:?}")),
            })
        },
    )
    .await
}

/// Receives until `pick` accepts an event, failing after `limit`; what was skipped is in the error.
async fn next<T>(
    c: &mut Client,
    what: &str,
    limit: Duration,
    mut pick: impl FnMut(&SignalingEvent) -> Option<T>,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut skipped = Vec::new();
    loop {
        let ev = match tokio::time::timeout_at(deadline, c.rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => bail!(
                "{}: session ended while waiting for {what}; before: {skipped:?}",
                c.id
            ),
            Err(_) => bail!(
                "{}: timed out after {limit:?} waiting for {what}; skipped: {skipped:?}",
                c.id
            ),
        };
        if let Some(v) = pick(&ev) {
            return Ok(v);
        }
        if skipped.len() < 20 {
            skipped.push(format!("{ev:?}"));
        }
    }
}

async fn relay(c: &Client, to: &str, data: Value) -> Result<()> {
    c.tx.send(ClientMessage::Relay {
        to: Some(to.to_owned()),
        data,
    })
    .await
    .context("sending a relay")
}

/// The number `n` of a relay `{"n": n}` from `from`.
fn numbered_from(ev: &SignalingEvent, from: &str) -> Option<u64> {
    match ev {
        SignalingEvent::Message(ServerMessage::Relay { from: f, data }) if f == from => {
            data["n"].as_u64()
        }
        _ => None,
    }
}

// --- raw WebSocket joins (no reconnect), for the max-peers race and peers that must not come back ---

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `room` and returns it with its first server message.
async fn ws_first(url: &str, room: &str) -> Result<(Ws, Value)> {
    let ws_url = format!("{}/v1/rooms/{room}/ws", url.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&ws_url))
        .await
        .with_context(|| format!("connecting {ws_url}"))??;
    let first = ws_text(&mut ws).await?;
    Ok((ws, first))
}

async fn ws_text(ws: &mut Ws) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Ok(serde_json::from_str(&text)?),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => bail!("websocket: {e}"),
            Ok(None) => bail!("websocket closed"),
            Err(_) => bail!("no message within {WAIT:?}"),
        }
    }
}

// --- the tests ---

/// The nginx block in docs/deployment.md is the tested file, byte for byte.
#[test]
fn the_deployment_doc_ships_the_tested_nginx_config() -> Result<()> {
    check_doc_ships_the_nginx_conf()
}

/// The shipped config in front of one node, no Redis: a WebSocket upgrades, an SSE stream delivers events
/// while it is open (nothing buffered), long polling works, and the node sees each client's own address
/// through X-Forwarded-For (its per-address join limit counts 127.0.0.2 and 127.0.0.3 apart, not nginx).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_behind_the_shipped_nginx_config_serves_every_transport_and_sees_client_addresses()
-> Result<()> {
    require_loopback_only_network()?;
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::without_redis(1, &["--join-rate-per-ip-per-min", "3"])?;
    let url = cluster.url();

    // Three transports, three joins from 127.0.0.1; a relay from the WebSocket peer reaches each.
    let mut ws = join(&url, "single", &[Transport::Ws]).await?;
    let mut sse = join(&url, "single", &[Transport::Sse]).await?;
    let mut lp = join(&url, "single", &[Transport::LongPoll]).await?;
    ensure!(ws.tx.transport() == Transport::Ws && sse.tx.transport() == Transport::Sse);
    for (i, to) in [sse.id.clone(), lp.id.clone()].iter().enumerate() {
        relay(&ws, to, json!({"n": i})).await?;
    }
    let from = ws.id.clone();
    ensure!(
        next(&mut sse, "the relay over SSE", WAIT, |e| numbered_from(
            e, &from
        ))
        .await?
            == 0
    );
    ensure!(
        next(&mut lp, "the relay over long polling", WAIT, |e| {
            numbered_from(e, &from)
        })
        .await?
            == 1
    );
    relay(&sse, &from, json!({"n": 7})).await?; // a POST through nginx
    let sse_id = sse.id.clone();
    ensure!(
        next(&mut ws, "the SSE peer's POSTed relay", WAIT, |e| {
            numbered_from(e, &sse_id)
        })
        .await?
            == 7
    );

    // 127.0.0.1 has used its 3 joins: a 4th from it is refused, one from 127.0.0.2 is not.
    let (_ws4, refused) = ws_first(&url, "single").await?;
    ensure!(
        refused["code"] == "rate-limited",
        "a 4th join from 127.0.0.1: {refused}"
    );
    let mut others = Vec::new();
    for source in [2u8, 2, 2, 3] {
        others.push(ws_from(Ipv4Addr::new(127, 0, 0, source), &url, "single").await?);
    }
    let firsts: Vec<&str> = others
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap_or("?"))
        .collect();
    ensure!(
        firsts == ["welcome", "welcome", "welcome", "welcome"],
        "joins from .2 ×3 and .3: {firsts:?}"
    );
    let (_ws5, refused) = ws_from(Ipv4Addr::new(127, 0, 0, 2), &url, "single").await?;
    ensure!(
        refused["code"] == "rate-limited",
        "a 4th join from 127.0.0.2: {refused}"
    );
    Ok(())
}

/// A WebSocket join through nginx from source address `ip` (any of 127.0.0.0/8 is loopback on Linux).
async fn ws_from(ip: Ipv4Addr, url: &str, room: &str) -> Result<(Ws, Value)> {
    let addr: SocketAddr = url.trim_start_matches("http://").parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting from {ip}"))?;
    let ws_url = format!("ws://{addr}/v1/rooms/{room}/ws");
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(ws_url, tokio_tungstenite::MaybeTlsStream::Plain(stream)),
    )
    .await
    .context("websocket handshake")??;
    let first = ws_text(&mut ws).await?;
    Ok((ws, first))
}

/// Two headless Chromiums on the web demo, their sessions on different nodes (proven by the nodes' logs),
/// open a direct data channel (host ↔ host pair) and chat both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromiums_on_different_nodes_open_a_direct_channel_and_chat() -> Result<()> {
    require_loopback_only_network()?;
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(NODES, &[])?;
    let a = Browser::launch("cluster-a").await?;
    let b = Browser::launch("cluster-b").await?;
    let url = format!("{}/#room=cluster-browsers", cluster.url());
    let outcome = async {
        let a_id = demo_join(&a, &url).await?;
        let a_node = node_of(&cluster, &a_id).await?;
        let mut placed = None;
        for _ in 0..PLACEMENT_TRIES {
            let b_id = demo_join(&b, &url).await?;
            let b_node = node_of(&cluster, &b_id).await?;
            if b_node != a_node {
                placed = Some((b_id, b_node));
                break;
            }
            b.goto("about:blank").await?; // leaves; the next load is a new session
        }
        let (b_id, b_node) =
            placed.with_context(|| format!("page b never landed off node {a_node}"))?;
        println!("a {a_id} on node {a_node}, b {b_id} on node {b_node}");
        demo_wait_ready(&a, &b_id).await?;
        demo_wait_ready(&b, &a_id).await?;
        for (browser, other) in [(&a, &b_id), (&b, &a_id)] {
            let stats = browser
                .wait_for("the selected candidate pair", WAIT, e2e::DEMO_STATE, |s| {
                    let p = s.pointer(&format!("/peers/{other}"))?;
                    (!p["pairType"].is_null()).then(|| p.clone())
                })
                .await?;
            ensure!(
                stats["pairType"] == "host",
                "{}: expected a direct host pair, got {stats}",
                browser.name()
            );
        }
        demo_chat(&a, &a_id, &b, "from node a to node b").await?;
        demo_chat(&b, &b_id, &a, "and back").await?;
        anyhow::Ok(())
    }
    .await;
    let outcome = keep_failure_artifacts(outcome, &[&a, &b], "cluster").await;
    a.close().await?;
    b.close().await?;
    outcome
}

/// A `peer` process (the CLI) whose stderr status lines and stdout lines are collected by threads.
struct PeerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: std::sync::mpsc::Receiver<String>,
    stdout: std::sync::mpsc::Receiver<String>,
    seen_err: Vec<String>,
}

impl PeerProc {
    fn start(url: &str, room: &str) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .and_then(|p| p.parent())
            .context("target dir")?
            .join("peer");
        ensure!(
            bin.is_file(),
            "{} is missing: cargo build -p peer",
            bin.display()
        );
        let mut child = Command::new(&bin)
            .args([
                "--server",
                url,
                "--room",
                room,
                "--bind",
                "127.0.0.1",
                "chat",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stderr = lines(Box::new(child.stderr.take().context("piped")?));
        let stdout = lines(Box::new(child.stdout.take().context("piped")?));
        Ok(PeerProc {
            stdin: child.stdin.take(),
            child,
            stderr,
            stdout,
            seen_err: Vec::new(),
        })
    }

    /// Waits for a stderr line that `pick` accepts.
    fn wait_err<T>(&mut self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let got = pick(&line);
                    self.seen_err.push(line);
                    if let Some(v) = got {
                        return Ok(v);
                    }
                }
                Err(_) => bail!(
                    "peer: no {what} within {WAIT:?}; stderr: {:?}",
                    self.seen_err
                ),
            }
        }
    }

    fn wait_out(&mut self, expected: &str) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line == expected => return Ok(()),
                Ok(line) => seen.push(line),
                Err(_) => bail!("peer: no stdout line {expected:?} within {WAIT:?}; got {seen:?}"),
            }
        }
    }

    fn say(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        Ok(stdin.flush()?)
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        // SIGTERM makes `peer` leave the room (a placement candidate must not linger in it); SIGKILL if it
        // has not exited after 2 s.
        e2e::terminate(&mut self.child, Duration::from_secs(2));
    }
}

/// Two `peer chat` processes whose sessions are on different nodes signal their data channel through the
/// cluster and chat both ways over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_native_peer_processes_on_different_nodes_signal_and_chat() -> Result<()> {
    require_loopback_only_network()?;
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(NODES, &[])?;
    let url = cluster.url();
    let joined = |l: &str| {
        // "* joined room R as <id> (over ws)"
        let rest = l.strip_prefix("* joined room cluster-native as ")?;
        Some(rest.split_whitespace().next()?.to_owned())
    };
    let mut a = PeerProc::start(&url, "cluster-native")?;
    let a_id = a.wait_err("joined line", joined)?;
    let a_node = node_of(&cluster, &a_id).await?;
    let mut placed = None;
    for _ in 0..PLACEMENT_TRIES {
        let mut b = PeerProc::start(&url, "cluster-native")?;
        let b_id = b.wait_err("joined line", joined)?;
        let b_node = node_of(&cluster, &b_id).await?;
        if b_node != a_node {
            placed = Some((b, b_id, b_node));
            break;
        }
    }
    let (mut b, b_id, b_node) =
        placed.with_context(|| format!("peer b never landed off node {a_node}"))?;
    println!("a {a_id} on node {a_node}, b {b_id} on node {b_node}");
    let open = |id: &str| {
        let want = format!("* channel chat to {} open", &id[..8.min(id.len())]);
        move |l: &str| (l == want).then_some(())
    };
    a.wait_err("channel open", open(&b_id))?;
    b.wait_err("channel open", open(&a_id))?;
    a.say("hello from node a")?;
    b.wait_out(&format!("{}: hello from node a", &a_id[..8]))?;
    b.say("hello from node b")?;
    a.wait_out(&format!("{}: hello from node b", &b_id[..8]))?;
    Ok(())
}

/// An SSE session's POSTs go through nginx one by one, so round robin spreads them over every node (nginx's
/// access log says which node answered each); the WebSocket peer on another node receives every one, in
/// order, once. The other way, everything it sends arrives on the SSE stream in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_session_whose_posts_hit_every_node_delivers_everything_in_order() -> Result<()> {
    require_loopback_only_network()?;
    let _one = ONE_AT_A_TIME.lock().await;
    const N: u64 = 60;
    let cluster = Cluster::start(NODES, &[])?;
    let mut sse = join(&cluster.url(), "cluster-sse", &[Transport::Sse]).await?;
    ensure!(sse.tx.transport() == Transport::Sse);
    let sse_node = node_of(&cluster, &sse.id).await?;
    let (mut ws, ws_node) =
        join_avoiding(&cluster, "cluster-sse", &[Transport::Ws], &[sse_node]).await?;
    println!(
        "SSE session {} on node {sse_node}, WebSocket peer {} on node {ws_node}",
        sse.id, ws.id
    );

    // The client sends its POSTs in order, each after the previous one was answered.
    for n in 1..=N {
        relay(&sse, &ws.id, json!({"n": n})).await?;
        relay(&ws, &sse.id, json!({"n": n})).await?;
    }
    let (sse_id, ws_id) = (sse.id.clone(), ws.id.clone());
    for (c, from) in [(&mut ws, &sse_id), (&mut sse, &ws_id)] {
        let mut got = Vec::new();
        while got.len() < N as usize {
            got.push(
                next(c, &format!("relay {} of {N}", got.len() + 1), WAIT, |e| {
                    numbered_from(e, from)
                })
                .await?,
            );
        }
        ensure!(
            got == (1..=N).collect::<Vec<_>>(),
            "{} received {got:?}",
            c.id
        );
    }
    // Nothing more (no duplicate) shortly after.
    let late = next(&mut ws, "a duplicate", Duration::from_millis(500), |e| {
        numbered_from(e, &sse_id)
    })
    .await;
    ensure!(
        late.is_err(),
        "the WebSocket peer received relay {:?} again",
        late.ok()
    );

    let posts: Vec<_> = cluster
        .nginx
        .access_log()?
        .into_iter()
        .filter(|e| e.method == "POST" && e.path == format!("/v1/sessions/{sse_id}"))
        .collect();
    ensure!(
        posts.len() as u64 >= N,
        "nginx logged {} POSTs of the session, expected at least {N}",
        posts.len()
    );
    let mut per_node: HashMap<usize, usize> = HashMap::new();
    for post in &posts {
        ensure!(
            post.status == 204,
            "a POST answered {}: {post:?}",
            post.status
        );
        let node = cluster
            .node_at(&post.upstream)
            .with_context(|| format!("upstream {:?}", post.upstream))?;
        *per_node.entry(node).or_default() += 1;
    }
    println!("POSTs per node: {per_node:?}");
    ensure!(
        per_node.len() == NODES,
        "the POSTs reached only nodes {per_node:?}"
    );
    Ok(())
}

/// kill -9 the node that holds two sessions: the one that comes back (the `peer` crate's client, through
/// nginx, so onto another node) resumes with its peer id, and receives every relay the other peer sent before,
/// during and after the kill exactly once, in order (and its own, queued while it was down, arrive once);
/// the one that never comes back is announced as left within the resume window plus the node's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_peers_resume_elsewhere_and_one_that_does_not_return_is_announced_left()
-> Result<()> {
    require_loopback_only_network()?;
    let _one = ONE_AT_A_TIME.lock().await;
    const N: u64 = 100;
    /// How long after the kill a session that does not come back may take to be announced: the node's
    /// presence TTL (the others notice it is gone), then its resume window, with slack for a loaded machine.
    const LEFT_WITHIN: Duration = Duration::from_millis(PRESENCE_TTL_MS + RESUME_WINDOW_MS + 5_000);
    let (window, ttl) = (RESUME_WINDOW_MS.to_string(), PRESENCE_TTL_MS.to_string());
    let mut cluster = Cluster::start(
        NODES,
        &["--resume-window-ms", &window, "--presence-ttl-ms", &ttl],
    )?;
    let room = "cluster-kill";
    let mut a = join(&cluster.url(), room, &[Transport::Ws]).await?;
    let x = node_of(&cluster, &a.id).await?;
    let (mut b, y) = join_avoiding(&cluster, room, &[Transport::Ws], &[x]).await?;
    // A raw WebSocket on node x that will simply be gone: no reconnect.
    let mut gone = None;
    // Raw sockets that landed elsewhere are dropped: b may hear of them leaving too.
    let mut discarded = BTreeSet::new();
    for _ in 0..PLACEMENT_TRIES {
        let (ws, first) = ws_first(&cluster.url(), room).await?;
        let id = first["peer_id"].as_str().context("welcome")?.to_owned();
        if node_of(&cluster, &id).await? == x {
            gone = Some((ws, id));
            break;
        }
        discarded.insert(id);
    }
    let (gone_ws, gone_id) =
        gone.with_context(|| format!("no raw WebSocket landed on node {x}"))?;
    println!(
        "a {} and the one that goes {gone_id} on node {x}; b {} on node {y}",
        a.id, b.id
    );
    let (a_id, b_id) = (a.id.clone(), b.id.clone());

    // b → a: a numbered relay every 20 ms; node x is killed half-way.
    let sender = b.tx.clone();
    let to = a_id.clone();
    let pump = tokio::spawn(async move {
        for n in 1..=N {
            sender
                .send(ClientMessage::Relay {
                    to: Some(to.clone()),
                    data: json!({"n": n}),
                })
                .await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    });
    let mut got = Vec::new();
    while got.len() < (N / 2) as usize {
        got.push(
            next(&mut a, "relays before the kill", WAIT, |e| {
                numbered_from(e, &b_id)
            })
            .await?,
        );
    }
    cluster.kill_node(x);
    let killed_at = Instant::now();
    drop(gone_ws);
    // a's own relays, sent while its node is dead: queued and delivered once it resumed.
    for n in 1..=10 {
        relay(&a, &b_id, json!({"n": n})).await?;
    }
    let mut resumed = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < N as usize {
        let ev = tokio::time::timeout_at(deadline, a.rx.recv())
            .await
            .with_context(|| format!("a got {} of {N} relays; resumed: {resumed:?}", got.len()))?
            .context("a's session ended")?;
        match &ev {
            SignalingEvent::Reconnected {
                resumed: r,
                transport,
            } => resumed = Some((*r, *transport)),
            SignalingEvent::NewSession(w) => {
                bail!("a got a new session ({}) instead of a resume", w.peer_id)
            }
            _ => got.extend(numbered_from(&ev, &b_id)),
        }
    }
    pump.await??;
    ensure!(got == (1..=N).collect::<Vec<_>>(), "a received {got:?}");
    ensure!(
        matches!(resumed, Some((true, _))),
        "a reconnected with {resumed:?}, expected a resume"
    );
    // Node x's process is gone (killed and reaped), so the resume was served by a survivor; which one, if
    // it says so in its log, is printed.
    ensure!(cluster.node(x).is_none(), "node {x} should be dead");
    let resumed_on = cluster.nodes_logging("resumed", &a_id);
    println!("a resumed on node {resumed_on:?} after node {x} was killed");

    let mut from_a = Vec::new();
    let mut left = None;
    let deadline = tokio::time::Instant::now() + LEFT_WITHIN;
    while from_a.len() < 10 || left.is_none() {
        let ev = tokio::time::timeout_at(deadline, b.rx.recv()).await.with_context(|| {
            format!(
                "b after {:?}: got {from_a:?} from a, peer-left of {gone_id}: {left:?} (bound {LEFT_WITHIN:?})",
                killed_at.elapsed()
            )
        })?;
        match ev.context("b's session ended")? {
            SignalingEvent::Message(ServerMessage::PeerLeft { peer_id, .. })
                if discarded.contains(&peer_id) => {}
            SignalingEvent::Message(ServerMessage::PeerLeft { peer_id, reason }) => {
                ensure!(
                    peer_id == gone_id,
                    "b was told {peer_id} left ({reason:?}); only {gone_id} did (a resumed)"
                );
                ensure!(left.is_none(), "b was told twice that {gone_id} left");
                left = Some((reason, killed_at.elapsed()));
            }
            ev => from_a.extend(numbered_from(&ev, &a_id)),
        }
    }
    ensure!(
        from_a == (1..=10).collect::<Vec<_>>(),
        "b received from a: {from_a:?}"
    );
    println!("{gone_id} announced as left {left:?} after the kill");
    Ok(())
}

/// Redis killed and restarted empty while b streams relays to a on another node: the service comes back
/// (relays cross nodes again, in order, never twice, and no session is lost), presence converges (a newcomer's
/// `welcome` lists exactly the peers that are there, and they see it join), and a peer that left while Redis
/// was down is not stuck in the room (the others are told it left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_load_resumes_service_and_presence_converges() -> Result<()> {
    require_loopback_only_network()?;
    let _one = ONE_AT_A_TIME.lock().await;
    /// How long after Redis is back the cluster may take to work again.
    const RECOVER_WITHIN: Duration = Duration::from_secs(15);
    // The newcomer below retries its join until presence has converged: more joins a minute from one
    // address than the default limit allows, and this test is not about that limit.
    let cluster_args = ["--join-rate-per-ip-per-min", "100000"];
    let mut cluster = Cluster::start(NODES, &cluster_args)?;
    let room = "cluster-redis";
    let mut a = join(&cluster.url(), room, &[Transport::Ws]).await?;
    let x = node_of(&cluster, &a.id).await?;
    let (b, y) = join_avoiding(&cluster, room, &[Transport::Ws], &[x]).await?;
    let leaver = join(&cluster.url(), room, &[Transport::Ws]).await?;
    let (a_id, b_id, leaver_id) = (a.id.clone(), b.id.clone(), leaver.id.clone());
    println!("a {a_id} on node {x}, b {b_id} on node {y}, leaver {leaver_id}");

    // Load: b → a, a numbered relay every 25 ms (40/s, under the default 50/s per session) until stopped.
    // b's events are drained meanwhile (errors for relays refused while Redis is down, presence), so its
    // client never waits for a reader; the drain hands them back at the end.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let Client {
        tx: b_tx,
        rx: mut b_rx,
        ..
    } = b;
    let to = a_id.clone();
    let mut stop_pump = stop_rx.clone();
    let pump = tokio::spawn(async move {
        let mut n = 0u64;
        while !*stop_pump.borrow_and_update() && n < 10_000 {
            n += 1;
            b_tx.send(ClientMessage::Relay {
                to: Some(to.clone()),
                data: json!({"n": n}),
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::Ok(b_tx)
    });
    let drain = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                ev = b_rx.recv() => match ev {
                    Some(ev) => seen.push(ev),
                    None => break,
                },
                _ = stop_rx.changed() => break,
            }
        }
        (b_rx, seen)
    });

    let mut got: Vec<u64> = Vec::new();
    while got.len() < 40 {
        got.push(
            next(&mut a, "relays before the restart", WAIT, |e| {
                numbered_from(e, &b_id)
            })
            .await?,
        );
    }
    cluster.redis()?.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(leaver); // leaves while Redis is down
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.redis()?.restart()?;
    let back = Instant::now();

    // Relays flow again: 40 that arrive more than 0.5 s after the restart; all in order, none twice.
    let mut a_events = Vec::new();
    let mut fresh = 0;
    let deadline = tokio::time::Instant::now() + RECOVER_WITHIN;
    while fresh < 40 {
        let ev = tokio::time::timeout_at(deadline, a.rx.recv())
            .await
            .with_context(|| {
                format!(
                    "relays stopped: {fresh} since Redis came back {:?} ago",
                    back.elapsed()
                )
            })?
            .context("a's session ended")?;
        if let SignalingEvent::NewSession(w) = &ev {
            bail!("a got a new session {} (its session was lost)", w.peer_id);
        }
        let Some(n) = numbered_from(&ev, &b_id) else {
            a_events.push(ev);
            continue;
        };
        let last = *got.last().context("relays")?;
        ensure!(n > last, "relay {n} after {last}: out of order or twice");
        got.push(n);
        if back.elapsed() > Duration::from_millis(500) {
            fresh += 1;
        }
    }
    println!(
        "relays flow again {:?} after Redis came back; a got {} relays",
        back.elapsed(),
        got.len()
    );
    stop_tx.send(true)?;
    let _b_tx = pump.await??;
    let (b_rx, b_events) = drain.await?;
    if let Some(SignalingEvent::NewSession(w)) = b_events
        .iter()
        .find(|e| matches!(e, SignalingEvent::NewSession(_)))
    {
        bail!("b got a new session {} (its session was lost)", w.peer_id);
    }

    // Presence converges: a newcomer's welcome lists exactly a and b (not the leaver).
    let expected: BTreeSet<String> = [a_id.clone(), b_id.clone()].into();
    let mut attempts = Vec::new();
    let converge_by = Instant::now() + RECOVER_WITHIN;
    let newcomer = loop {
        match join(&cluster.url(), room, &[Transport::Ws]).await {
            Ok(c) => {
                let peers: BTreeSet<String> = c.welcome.peers.iter().cloned().collect();
                if peers == expected {
                    break c;
                }
                attempts.push(format!("welcome.peers {peers:?}"));
            }
            Err(e) => attempts.push(format!("{e:#}")),
        }
        ensure!(
            Instant::now() < converge_by,
            "no newcomer saw exactly {expected:?} within {RECOVER_WITHIN:?}: {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "presence converged {:?} after Redis came back",
        back.elapsed()
    );

    // No stuck peer: a and b are told the leaver left (before, during or after the outage), and both see
    // the newcomer join.
    let mut b = Client {
        id: b_id.clone(),
        welcome: a.welcome.clone(),
        tx: _b_tx,
        rx: b_rx,
    };
    for (c, earlier) in [(&mut a, a_events), (&mut b, b_events)] {
        let is_leave = |e: &SignalingEvent| matches!(e, SignalingEvent::Message(ServerMessage::PeerLeft { peer_id, .. }) if *peer_id == leaver_id);
        let mut saw_leave = earlier.iter().any(is_leave);
        let mut joined = false;
        let deadline = tokio::time::Instant::now() + RECOVER_WITHIN;
        while !(joined && saw_leave) {
            let ev = tokio::time::timeout_at(deadline, c.rx.recv()).await.with_context(|| {
                format!("{}: peer-joined of the newcomer: {joined}, peer-left of {leaver_id}: {saw_leave}", c.id)
            })?;
            let ev = ev.context("session ended")?;
            saw_leave |= is_leave(&ev);
            match ev {
                SignalingEvent::Message(ServerMessage::PeerJoined { peer_id })
                    if peer_id == newcomer.id =>
                {
                    joined = true
                }
                SignalingEvent::NewSession(w) => bail!("{} got a new session {}", c.id, w.peer_id),
                _ => {}
            }
        }
    }
    Ok(())
}

/// `--max-peers 3` and, per room, nine WebSocket joins at once through nginx (so onto all three nodes): each
/// room admits exactly three, the rest get `room-full`, over several rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_peers_holds_under_concurrent_joins_on_different_nodes() -> Result<()> {
    require_loopback_only_network()?;
    let _one = ONE_AT_A_TIME.lock().await;
    const MAX: usize = 3;
    const JOINS: usize = 9;
    const ROOMS: usize = 6;
    let cluster = Cluster::start(NODES, &["--max-peers", &MAX.to_string()])?;
    let url = cluster.url();
    for r in 0..ROOMS {
        let room = format!("cluster-full-{r}");
        let joins = (0..JOINS).map(|_| {
            let (url, room) = (url.clone(), room.clone());
            tokio::spawn(async move { ws_first(&url, &room).await })
        });
        let mut sockets = Vec::new();
        let mut admitted = Vec::new();
        let mut full = 0;
        for join in joins {
            let (ws, first) = join.await??;
            match first["type"].as_str() {
                Some("welcome") => {
                    admitted.push(first["peer_id"].as_str().context("peer_id")?.to_owned())
                }
                Some("error") if first["code"] == "room-full" => full += 1,
                _ => bail!("unexpected first message {first}"),
            }
            sockets.push(ws);
        }
        let mut nodes = BTreeSet::new();
        for id in &admitted {
            nodes.insert(node_of(&cluster, id).await?);
        }
        println!(
            "{room}: {} admitted on nodes {nodes:?}, {full} room-full",
            admitted.len()
        );
        ensure!(
            admitted.len() == MAX && full == JOINS - MAX,
            "{room}: {} admitted, {full} room-full",
            admitted.len()
        );
        // Close them all, then the room's upgrades are in nginx's access log: prove they were spread.
        for mut ws in sockets {
            let _ = ws.close(None).await;
        }
    }
    let spread = wait_until("nginx to log the closed upgrades", WAIT, || async {
        let per_room: Vec<BTreeSet<usize>> = (0..ROOMS)
            .map(|r| {
                let path = format!("/v1/rooms/cluster-full-{r}/ws");
                let log = cluster.nginx.access_log().unwrap_or_default();
                log.iter()
                    .filter(|e| e.path == path)
                    .filter_map(|e| cluster.node_at(&e.upstream))
                    .collect()
            })
            .collect();
        let logged = per_room.iter().all(|nodes| !nodes.is_empty());
        Ok(if logged {
            Check::Done(per_room)
        } else {
            Check::Pending(format!("{per_room:?}"))
        })
    })
    .await?;
    ensure!(
        spread.iter().all(|nodes| nodes.len() == NODES),
        "each room's joins should reach every node: {spread:?}"
    );
    Ok(())
}
