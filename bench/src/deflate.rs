//! `bench deflate`: what RFC 7692 permessage-deflate would save on real signaling traffic.
//!
//! Two peers negotiate through an in-process signaling server, each through a recording TCP proxy in front
//! of it, so what is measured is the exact bytes on the wire: the WebSocket frames the server sent each peer
//! and the (masked) frames each peer sent it. The native pair is two `peer::Peer`s (webrtc-rs); with
//! `--browser`, two headless Chromium processes also load the web demo through the proxy and negotiate in a
//! room of their own (their SDPs are bigger). Every text message is then re-framed three ways: as sent
//! (uncompressed), deflated per message with no context takeover (a fresh compressor per message), and deflated
//! with context takeover (one compressor per direction of a connection, sync-flushed per message, the trailing
//! `00 00 ff ff` removed: what permessage-deflate sends). Control frames (ping, pong, close) are never
//! compressed and are left out of all three columns.

use anyhow::{Context, bail};
use flate2::Compression;
use flate2::write::DeflateEncoder;
use serde::Serialize;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(30);
/// After both channels are open: the last trickled candidates and `end-of-candidates` still cross.
const SETTLE: Duration = Duration::from_millis(1500);

/// One proxied TCP connection's bytes, both ways.
#[derive(Debug, Default, Clone)]
struct Conn {
    up: Vec<u8>,
    down: Vec<u8>,
}

/// A TCP proxy in front of `upstream` that keeps every byte it forwards.
struct Recorder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<Conn>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Recorder> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<Arc<Mutex<Conn>>>>> = Arc::default();
        let all = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let conn: Arc<Mutex<Conn>> = Arc::default();
                all.lock().unwrap_or_else(|p| p.into_inner()).push(conn.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, conn.clone(), true), pipe(sr, cw, conn, false));
                });
            }
        });
        Ok(Recorder { addr, conns, task })
    }

    fn take(self) -> Vec<Conn> {
        self.task.abort();
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.iter().map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    conn: Arc<Mutex<Conn>>,
    up: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            if up { c.up.extend_from_slice(&buf[..n]) } else { c.down.extend_from_slice(&buf[..n]) }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// One WebSocket message as it crossed.
struct Msg {
    /// Server → client.
    down: bool,
    /// The unmasked payload of a text message.
    payload: Vec<u8>,
}

/// The bytes of a signaling WebSocket's HTTP upgrade (request and `101` response heads), if it was one.
fn upgrade_bytes(conn: &Conn) -> usize {
    let head_end = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    match (head_end(&conn.up), head_end(&conn.down)) {
        (Some(a), Some(b)) => a + b,
        _ => 0,
    }
}

/// The text messages of one recorded connection, if it was a signaling WebSocket.
fn messages(conn: &Conn) -> anyhow::Result<Vec<Msg>> {
    let head_end = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let Some(req_end) = head_end(&conn.up) else { return Ok(Vec::new()) };
    let req = String::from_utf8_lossy(&conn.up[..req_end]).to_ascii_lowercase();
    if !(req.starts_with("get /v1/rooms/") && req.contains("upgrade: websocket")) {
        return Ok(Vec::new());
    }
    let res_end = head_end(&conn.down).context("a WebSocket request without a response")?;
    ensure_101(&conn.down[..res_end])?;
    let mut out = Vec::new();
    for (bytes, down) in [(&conn.up[req_end..], false), (&conn.down[res_end..], true)] {
        let mut rest = bytes;
        let mut partial: Option<Vec<u8>> = None;
        while rest.len() >= 2 {
            let (fin, opcode, masked) = (rest[0] & 0x80 != 0, rest[0] & 0x0f, rest[1] & 0x80 != 0);
            let (len, mut at) = match rest[1] & 0x7f {
                126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                127 if rest.len() >= 10 => (u64::from_be_bytes(rest[2..10].try_into()?) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            let key = if masked {
                let Some(k) = rest.get(at..at + 4) else { break };
                at += 4;
                Some([k[0], k[1], k[2], k[3]])
            } else {
                None
            };
            // A connection cut mid-frame (the peer left): the rest is not a message.
            let Some(body) = rest.get(at..at + len) else { break };
            let mut payload = body.to_vec();
            if let Some(k) = key {
                payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= k[i % 4]);
            }
            rest = &rest[at + len..];
            match opcode {
                1 if fin => out.push(Msg { down, payload }),
                1 => partial = Some(payload),
                0 => {
                    if let Some(p) = partial.as_mut() {
                        p.extend_from_slice(&payload);
                        if fin {
                            out.push(Msg { down, payload: partial.take().unwrap_or_default() });
                        }
                    }
                }
                // Binary frames are refused by the server; ping, pong and close are never compressed.
                _ => {}
            }
        }
    }
    Ok(out)
}

fn ensure_101(head: &[u8]) -> anyhow::Result<()> {
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!("the upgrade was refused: {:?}", String::from_utf8_lossy(head));
    }
    Ok(())
}

/// A WebSocket frame header for `len` payload bytes; client frames carry a 4-byte mask key.
fn header(len: usize, masked: bool) -> usize {
    let ext = if len < 126 {
        0
    } else if len < 65_536 {
        2
    } else {
        8
    };
    2 + ext + if masked { 4 } else { 0 }
}

/// Raw deflate of `data` with a sync flush, its `00 00 ff ff` tail removed (RFC 7692 §7.2.1).
fn deflate_message(enc: &mut DeflateEncoder<Vec<u8>>, data: &[u8]) -> usize {
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data).and_then(|()| enc.flush());
    let out = std::mem::take(enc.get_mut());
    out.len() - if out.ends_with(&[0, 0, 0xff, 0xff]) { 4 } else { 0 }
}

/// Wire bytes of one direction of one capture.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Volume {
    /// Text messages.
    pub messages: usize,
    /// Their payloads, uncompressed.
    pub payload_bytes: usize,
    /// Frames as sent: headers + payloads.
    pub wire_bytes: usize,
    /// Frames with each message deflated alone (no context takeover).
    pub per_message_bytes: usize,
    /// Frames with one compressor per direction (context takeover).
    pub context_bytes: usize,
    /// The largest message.
    pub largest: usize,
}

impl Volume {
    fn add(&mut self, o: &Volume) {
        self.messages += o.messages;
        self.payload_bytes += o.payload_bytes;
        self.wire_bytes += o.wire_bytes;
        self.per_message_bytes += o.per_message_bytes;
        self.context_bytes += o.context_bytes;
        self.largest = self.largest.max(o.largest);
    }
}

/// One capture (a pair of peers that met through the server).
#[derive(Debug, Clone, Serialize)]
pub struct Capture {
    /// `native` (webrtc-rs) or `chromium`.
    pub clients: String,
    /// Signaling WebSockets recorded (one per peer).
    pub sessions: usize,
    /// Server → clients, all sessions.
    pub down: Volume,
    /// Clients → server, all sessions.
    pub up: Volume,
    /// What crossed, by message type and direction (`down:signal` …), with counts.
    pub types: Vec<(String, usize)>,
    /// The HTTP upgrade requests and responses of these sessions (never compressed either way).
    pub upgrade_bytes: usize,
    /// The same server → client messages as SSE events (`retry:`, `id:` and `data:` lines), plain.
    pub sse_plain_bytes: usize,
    /// … and gzipped as the server does it (each event's id and data compressed apart, gzip header and trailer).
    pub sse_gzip_bytes: usize,
}

/// The `bench deflate` report.
#[derive(Debug, Clone, Serialize)]
pub struct DeflateReport {
    /// The command line.
    pub command: String,
    /// The deflate level (zlib's default, as browsers and most servers use).
    pub level: u32,
    /// One entry per capture.
    pub captures: Vec<Capture>,
}

fn measure(clients: &str, conns: &[Conn]) -> anyhow::Result<Capture> {
    let mut cap = Capture {
        clients: clients.into(),
        sessions: 0,
        down: Volume::default(),
        up: Volume::default(),
        types: Vec::new(),
        upgrade_bytes: 0,
        sse_plain_bytes: 0,
        sse_gzip_bytes: 0,
    };
    for conn in conns {
        let msgs = messages(conn)?;
        if msgs.is_empty() {
            continue;
        }
        cap.sessions += 1;
        cap.upgrade_bytes += upgrade_bytes(conn);
        let (plain, gz) = as_sse(&msgs);
        cap.sse_plain_bytes += plain;
        cap.sse_gzip_bytes += gz;
        let mut ctx_down = DeflateEncoder::new(Vec::new(), Compression::default());
        let mut ctx_up = DeflateEncoder::new(Vec::new(), Compression::default());
        for m in &msgs {
            let masked = !m.down;
            let alone = deflate_message(&mut DeflateEncoder::new(Vec::new(), Compression::default()), &m.payload);
            let ctx = deflate_message(if m.down { &mut ctx_down } else { &mut ctx_up }, &m.payload);
            let v = Volume {
                messages: 1,
                payload_bytes: m.payload.len(),
                wire_bytes: header(m.payload.len(), masked) + m.payload.len(),
                per_message_bytes: header(alone, masked) + alone,
                context_bytes: header(ctx, masked) + ctx,
                largest: m.payload.len(),
            };
            if m.down { cap.down.add(&v) } else { cap.up.add(&v) }
            let kind = serde_json::from_slice::<serde_json::Value>(&m.payload)
                .ok()
                .map(|j| {
                    let t = j["type"].as_str().unwrap_or("?").to_owned();
                    match j["data"]["kind"].as_str() {
                        Some(k) if t == "signal" => format!("{t}/{k}"),
                        _ => t,
                    }
                })
                .unwrap_or_else(|| "?".into());
            let key = format!("{}:{kind}", if m.down { "down" } else { "up" });
            match cap.types.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => cap.types.push((key, 1)),
            }
        }
    }
    if cap.sessions == 0 {
        bail!("{clients}: no signaling WebSocket was recorded");
    }
    cap.types.sort();
    Ok(cap)
}

/// The server → client messages of one session as its SSE stream would carry them: plain bytes, gzipped bytes.
fn as_sse(msgs: &[Msg]) -> (usize, usize) {
    use signaling::transport::{gzip::GzipStream, sse};
    let json = |m: &Msg| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap_or_default();
    let token = msgs
        .iter()
        .filter(|m| m.down)
        .find_map(|m| json(m)["session"]["token"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let retry = format!("retry: {}\n\n", sse::RETRY_MS);
    let mut gz = GzipStream::new();
    let (mut plain, mut zipped) = (retry.len(), gz.pieces([retry.as_bytes()]).len());
    for m in msgs.iter().filter(|m| m.down) {
        let seq = json(m)["seq"].as_u64().unwrap_or(0);
        let text = String::from_utf8_lossy(&m.payload);
        let Ok(parts) = sse::event_parts(Some(&sse::event_id(&token, seq)), None, &text) else { continue };
        plain += parts.iter().map(String::len).sum::<usize>();
        zipped += gz.pieces(parts.iter().map(|p| p.as_bytes())).len();
    }
    (plain, zipped + gz.finish().len())
}

async fn channel_open(ev: &mut tokio::sync::mpsc::Receiver<peer::Event>) -> anyhow::Result<()> {
    while let Some(e) = ev.recv().await {
        if matches!(e, peer::Event::ChannelOpen { .. }) {
            return Ok(());
        }
    }
    bail!("events ended before the channel opened")
}

async fn native_pair(server: &str) -> anyhow::Result<()> {
    let config = |room: &str| {
        let mut cfg = peer::PeerConfig::new(server, room);
        cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
        cfg.signaling.transports = vec![peer::signaling::Transport::Ws];
        cfg
    };
    let (a, mut a_ev) = peer::Peer::connect(config("deflate-native")).await.context("first peer joins")?;
    let (b, mut b_ev) = peer::Peer::connect(config("deflate-native")).await.context("second peer joins")?;
    tokio::time::timeout(WAIT, async { tokio::try_join!(channel_open(&mut a_ev), channel_open(&mut b_ev)) })
        .await
        .context("the native channel did not open in time")??;
    tokio::time::sleep(SETTLE).await;
    tokio::join!(a.close(), b.close());
    Ok(())
}

/// Headless Chromium on one page, in its own process group (killed on drop).
struct Chromium {
    child: Child,
    profile: std::path::PathBuf,
}

impl Chromium {
    fn open(url: &str, n: usize) -> anyhow::Result<Chromium> {
        let profile = std::env::temp_dir().join(format!("bench-deflate-chromium-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&profile)?;
        use std::os::unix::process::CommandExt;
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--allow-loopback-in-peer-connection",
                // Granted media permission also stops Chromium from hiding host candidates behind mDNS names.
                "--use-fake-ui-for-media-stream",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting chromium")?;
        Ok(Chromium { child, profile })
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's process group; no memory is involved.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Two Chromium pages on the demo; done once both signaling sockets carried an answer's worth of traffic and
/// the server announced both (a `signal/answer` went down to one of them), then [`SETTLE`].
async fn chromium_pair(proxy: &str, recorder: &Recorder) -> anyhow::Result<()> {
    let url = format!("{proxy}/#room=deflate-chromium");
    let _a = Chromium::open(&url, 0)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _b = Chromium::open(&url, 1)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let conns: Vec<Conn> = {
            let all = recorder.conns.lock().unwrap_or_else(|p| p.into_inner());
            all.iter().map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
        };
        let answered = conns.iter().filter_map(|c| messages(c).ok()).any(|m| {
            m.iter().any(|m| m.down && String::from_utf8_lossy(&m.payload).contains("\"kind\":\"answer\""))
        });
        let candidates_each_way = conns
            .iter()
            .filter_map(|c| messages(c).ok())
            .filter(|m| m.iter().any(|m| m.down && String::from_utf8_lossy(&m.payload).contains("\"kind\":\"candidate\"")))
            .count();
        if answered && candidates_each_way >= 2 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the Chromium pages did not negotiate within {WAIT:?} (answer seen: {answered})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(SETTLE * 2).await;
    Ok(())
}

/// Runs the captures and measures them.
pub async fn run(browser: bool, command: String) -> anyhow::Result<DeflateReport> {
    let mut cfg = signaling::Config::with_listen("127.0.0.1:0".parse()?);
    cfg.limits = signaling::limits::LimitFlags::unlimited();
    let server = signaling::Server::bind(cfg).await.context("starting the signaling server")?;
    let upstream = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let mut captures = Vec::new();

    let rec = Recorder::start(upstream).await?;
    native_pair(&format!("http://{}", rec.addr)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    captures.push(measure("native (webrtc-rs peer)", &rec.take())?);

    if browser {
        let rec = Recorder::start(upstream).await?;
        let proxy = format!("http://{}", rec.addr);
        chromium_pair(&proxy, &rec).await?;
        captures.push(measure("chromium (web demo)", &rec.take())?);
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server_task).await;
    Ok(DeflateReport { command, level: Compression::default().level(), captures })
}

fn pct(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "–".into();
    }
    format!("{:+.0}%", (part as f64 / whole as f64 - 1.0) * 100.0)
}

impl DeflateReport {
    /// The table (markdown).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "## permessage-deflate on real signaling (deflate level {}; WebSocket frames incl. headers)\n\n",
            self.level
        ));
        s.push_str("| clients | direction | sessions | messages | largest (B) | as sent (B) | deflate per message (B) | deflate, context takeover (B) |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
        for c in &self.captures {
            let mut both = c.down.clone();
            both.add(&c.up);
            for (dir, v) in [("server → clients", &c.down), ("clients → server", &c.up), ("both", &both)] {
                s.push_str(&format!(
                    "| {} | {dir} | {} | {} | {} | {} | {} ({}) | {} ({}) |\n",
                    c.clients,
                    c.sessions,
                    v.messages,
                    v.largest,
                    v.wire_bytes,
                    v.per_message_bytes,
                    pct(v.per_message_bytes, v.wire_bytes),
                    v.context_bytes,
                    pct(v.context_bytes, v.wire_bytes),
                ));
            }
        }
        for c in &self.captures {
            s.push_str(&format!(
                "\n{}: the {} HTTP upgrades (request + 101 response heads) took {} B more, uncompressed either way.",
                c.clients, c.sessions, c.upgrade_bytes
            ));
        }
        s.push_str("\n\nThe same server → client messages as SSE streams (what `--sse-gzip` serves; chunked framing left out):\n\n");
        s.push_str("| clients | sessions | SSE plain (B) | SSE gzip, each piece alone (B) |\n|---|---:|---:|---:|\n");
        for c in &self.captures {
            s.push_str(&format!(
                "| {} | {} | {} | {} ({}) |\n",
                c.clients,
                c.sessions,
                c.sse_plain_bytes,
                c.sse_gzip_bytes,
                pct(c.sse_gzip_bytes, c.sse_plain_bytes)
            ));
        }
        s.push('\n');
        for c in &self.captures {
            let types: Vec<String> = c.types.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            s.push_str(&format!("{}: {}\n", c.clients, types.join(", ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![0x81];
        let mask = if key.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask | n as u8),
            n => {
                f.push(mask | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        match key {
            Some(k) => {
                f.extend_from_slice(&k);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    #[test]
    fn recorded_frames_are_read_back_both_ways() {
        let big = vec![b'a'; 300];
        let mut up = b"GET /v1/rooms/r/ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n".to_vec();
        up.extend(frame(b"{\"type\":\"ping\"}", Some([1, 2, 3, 4])));
        let mut down = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        down.extend(frame(&big, None));
        down.extend([0x89, 0]); // a ping: not a text message
        down.extend(&frame(b"cut", None)[..3]); // cut mid-frame
        let msgs = messages(&Conn { up, down }).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs.iter().find(|m| !m.down).unwrap().payload, b"{\"type\":\"ping\"}");
        assert_eq!(msgs.iter().find(|m| m.down).unwrap().payload, big);
        assert_eq!((header(125, false), header(126, false), header(126, true), header(70_000, false)), (2, 4, 8, 10));
    }

    #[test]
    fn context_takeover_is_one_stream_that_inflates_back() {
        let msgs = ["{\"type\":\"signal\",\"seq\":4,\"from\":\"91ae\"}", "{\"type\":\"signal\",\"seq\":5,\"from\":\"91ae\"}"];
        let mut enc = DeflateEncoder::new(Vec::new(), Compression::default());
        let mut stream = Vec::new();
        let mut sizes = Vec::new();
        for m in msgs {
            enc.write_all(m.as_bytes()).unwrap();
            enc.flush().unwrap();
            let out = std::mem::take(enc.get_mut());
            assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
            sizes.push(out.len() - 4);
            stream.extend(out);
        }
        // The second message, sent against the first, costs less than the first.
        assert!(sizes[1] < sizes[0], "{sizes:?}");
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&stream[..]), &mut inflated).ok();
        assert_eq!(String::from_utf8_lossy(&inflated), msgs.concat());
    }
}
