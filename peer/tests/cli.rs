//! The `peer` CLI as child processes against a real signaling server running in this process, on loopback.
//!
//! Every wait is bounded; children are killed when their handle drops (also when a test panics).
//! Run on loopback only:
//! `unshare --net -- sh -c 'ip link set lo up && cargo test -p peer --test cli --offline'`.

mod common;

use common::start_server;
use peer::{ChannelOptions, Event, Payload, Peer, PeerConfig};
use serde_json::{Value, json};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest any single step may take (generous: the machine may be busy with other builds).
const WAIT: Duration = Duration::from_secs(30);
/// `--timeout` of the CLI: below [`WAIT`], so that the CLI reports its own timeout first.
const CLI_TIMEOUT: &str = "20";

/// A `peer` child process; its stdout and stderr lines arrive on channels (and are echoed to the test's
/// stderr, which the harness shows when a test fails).
struct Cli {
    name: String,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
}

impl Cli {
    fn spawn(name: &str, url: &str, room: &str, args: &[&str]) -> Cli {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PEER_") {
                cmd.env_remove(k);
            }
        }
        // CLI_TEST_PEER_LOG=debug (say) passes `--log` to every child, for a failure that needs its logs.
        if let Ok(filter) = std::env::var("CLI_TEST_PEER_LOG") {
            cmd.args(["--log", &filter]);
        }
        let mut child = cmd
            .args(["--server", url, "--room", room, "--bind", "127.0.0.1"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the peer binary");
        let stdout = lines(format!("{name} stdout"), child.stdout.take().unwrap());
        let stderr = lines(format!("{name} stderr"), child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        Cli { name: name.to_owned(), child, stdin, stdout, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle`; returns it.
    async fn stderr_line(&mut self, needle: &str) -> String {
        wait_line(&self.name, "stderr", &mut self.stderr, needle).await
    }

    /// Waits for a stdout line containing `needle`; returns it.
    async fn stdout_line(&mut self, needle: &str) -> String {
        wait_line(&self.name, "stdout", &mut self.stdout, needle).await
    }

    /// Waits for `* joined room R as ID`; returns ID.
    async fn joined(&mut self) -> String {
        // "* joined room R as ID (over TRANSPORT)"
        let line = self.stderr_line("joined room").await;
        let after_as = line.split(" as ").nth(1).expect("an id after ' as '");
        after_as.split(' ').next().unwrap().to_owned()
    }

    fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("write to the child's stdin");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    async fn exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} did not exit within {WAIT:?}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The rest of stderr, once the process has exited (bounded: until the pipe closes or [`WAIT`]).
    async fn rest_of_stderr(&mut self) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut all = Vec::new();
        while let Ok(Some(l)) = tokio::time::timeout_at(deadline, self.stderr.recv()).await {
            all.push(l);
        }
        all
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(what: String, from: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{what}] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn wait_line(name: &str, stream: &str, rx: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) if line.contains(needle) => return line,
            Ok(Some(_)) => {}
            Ok(None) => panic!("{name} closed its {stream} before printing {needle:?}"),
            Err(_) => panic!("{name} did not print {needle:?} on {stream} within {WAIT:?}"),
        }
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("peer-cli-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A library peer on loopback with one reliable `chat` channel.
async fn library_peer(url: &str, room: &str) -> (Peer, mpsc::Receiver<Event>) {
    let mut cfg = PeerConfig::new(url, room);
    cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    cfg.channels = vec![ChannelOptions::reliable("chat")];
    tokio::time::timeout(WAIT, Peer::connect(cfg)).await.expect("connect in time").expect("connect")
}

async fn next_event<T>(events: &mut mpsc::Receiver<Event>, what: &str, pick: impl FnMut(&Event) -> Option<T>) -> T {
    common::wait_for(events, what, WAIT, pick).await
}

async fn channel_open(events: &mut mpsc::Receiver<Event>) -> String {
    next_event(events, "chat open", |e| match e {
        Event::ChannelOpen { peer, label } if label == "chat" => Some(peer.clone()),
        _ => None,
    })
    .await
}

async fn next_payload(events: &mut mpsc::Receiver<Event>) -> Payload {
    next_event(events, "a chat message", |e| match e {
        Event::Message { label, payload, .. } if label == "chat" => Some(payload.clone()),
        _ => None,
    })
    .await
}

/// The next JSON text message that `keep` accepts (others, e.g. repeated hellos, are skipped).
async fn next_json(events: &mut mpsc::Receiver<Event>, what: &str, keep: impl Fn(&Value) -> bool) -> Value {
    next_event(events, what, |e| match e {
        Event::Message { label, payload: Payload::Text(t), .. } if label == "chat" => {
            serde_json::from_str::<Value>(t).ok().filter(|v| keep(v))
        }
        _ => None,
    })
    .await
}

async fn send_json(from: &Peer, to: &str, v: Value) -> Result<(), peer::Error> {
    from.send(to, "chat", Payload::Text(v.to_string())).await
}

fn short(id: &str) -> &str {
    &id[..8]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_recv_move_a_3_mib_file_intact() {
    use rand::RngCore;
    let (url, _stop) = start_server().await;
    let src = TempDir::new("src");
    let dst = TempDir::new("dst");
    let mut data = vec![0u8; 3 * 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let file = src.path().join("random.bin");
    std::fs::write(&file, &data).unwrap();

    let mut recv = Cli::spawn("recv", &url, "files", &["recv", dst.path().to_str().unwrap(), "--timeout", CLI_TIMEOUT]);
    recv.joined().await;
    let mut send = Cli::spawn("send", &url, "files", &["send", file.to_str().unwrap(), "--timeout", CLI_TIMEOUT]);
    let sent = send.exit().await;
    let received = recv.exit().await;
    assert!(sent.success(), "send exited with {sent:?}");
    assert!(received.success(), "recv exited with {received:?}");
    let written = dst.path().join("random.bin");
    assert_eq!(recv.stdout_line("random.bin").await, written.display().to_string());
    let got = std::fs::read(&written).unwrap();
    assert!(got == data, "received {} bytes that differ from the {} sent", got.len(), data.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_text_and_binary_byte_exact() {
    let (url, _stop) = start_server().await;
    let mut echo = Cli::spawn("echo", &url, "echo", &["echo"]);
    let echo_id = echo.joined().await;
    let (me, mut events) = library_peer(&url, "echo").await;
    assert_eq!(channel_open(&mut events).await, echo_id);
    let big_binary: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let messages = [
        Payload::Text("héllo, wörld".into()),
        Payload::Binary(vec![0u8, 1, 2, 0xff, 0xfe, b'\n'].into()),
        Payload::Text(String::new()),
        Payload::Binary(bytes::Bytes::new()),
        // Raw: the demo's hello comes back as it is, not answered.
        Payload::Text(r#"{"t":"hello","ack":false}"#.into()),
        Payload::Binary(big_binary.into()),
        Payload::Text("ü".repeat(70_000)),
    ];
    for m in &messages {
        me.send(&echo_id, "chat", m.clone()).await.unwrap();
    }
    for m in &messages {
        assert_eq!(&next_payload(&mut events).await, m);
    }
    // SIGTERM is a normal way to stop it.
    let killed = Command::new("kill").args(["-TERM", &echo.pid().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = echo.exit().await;
    assert!(status.success(), "echo exited with {status:?} on SIGTERM");
    me.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_refuses_a_name_that_leaves_its_directory() {
    use sha2::{Digest, Sha256};
    let (url, _stop) = start_server().await;
    let outer = TempDir::new("outer");
    let inner = outer.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    let mut recv = Cli::spawn("recv", &url, "evil", &["recv", inner.to_str().unwrap(), "--timeout", CLI_TIMEOUT]);
    recv.joined().await;
    let (me, mut events) = library_peer(&url, "evil").await;
    let recv_id = channel_open(&mut events).await;
    let content = b"pwned\n";
    let sha = format!("{:x}", Sha256::digest(content));
    let header = json!({"t": "file", "name": "../evil", "size": content.len(), "sha256": sha});
    me.send(&recv_id, "chat", Payload::Text(header.to_string())).await.unwrap();
    // The content may or may not get through: recv refuses right after the header.
    let _ = me.send(&recv_id, "chat", Payload::Binary(content.to_vec().into())).await;
    let ack = next_json(&mut events, "file-ack", |v| v["t"] == "file-ack").await;
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["error"], "bad-name");
    assert_eq!(ack["sha256"], sha.as_str());
    let status = recv.exit().await;
    assert_eq!(status.code(), Some(1), "recv exited with {status:?}");
    let stderr = recv.rest_of_stderr().await;
    assert!(stderr.iter().any(|l| l.starts_with("peer: bad-name: ")), "no bad-name error in {stderr:?}");
    assert!(!outer.path().join("evil").exists(), "a file escaped the target directory");
    assert_eq!(std::fs::read_dir(&inner).unwrap().count(), 0, "nothing is written");
    me.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chats_exchange_a_line_each_way() {
    let (url, _stop) = start_server().await;
    let mut a = Cli::spawn("chat-a", &url, "talk", &["chat"]);
    let a_id = a.joined().await;
    let mut b = Cli::spawn("chat-b", &url, "talk", &["chat"]);
    let b_id = b.joined().await;
    a.stderr_line(&format!("channel chat to {} open", short(&b_id))).await;
    b.stderr_line(&format!("channel chat to {} open", short(&a_id))).await;
    // Lines typed now wait for the other side's hello, so none is lost even if it is not listening yet.
    a.write_line("hello from a");
    assert_eq!(b.stdout_line("hello from a").await, format!("{}: hello from a", short(&a_id)));
    b.write_line("and back from b");
    assert_eq!(a.stdout_line("back from b").await, format!("{}: and back from b", short(&b_id)));
    // End of input ends the chat, successfully.
    a.close_stdin();
    b.close_stdin();
    let (sa, sb) = (a.exit().await, b.exit().await);
    assert!(sa.success() && sb.success(), "exits {sa:?} {sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_speaks_the_web_demo_protocol() {
    let (url, _stop) = start_server().await;
    let mut chat = Cli::spawn("chat", &url, "demo", &["chat"]);
    let chat_id = chat.joined().await;
    // The test plays the web demo's part.
    let (demo, mut events) = library_peer(&url, "demo").await;
    let demo_id = demo.id().to_owned();
    assert_eq!(channel_open(&mut events).await, chat_id);
    chat.stderr_line(&format!("channel chat to {} open", short(&demo_id))).await;
    // The CLI says hello (repeatedly) until it hears ours.
    let hello = next_json(&mut events, "hello", |v| v["t"] == "hello").await;
    assert_eq!(hello, json!({"t": "hello", "ack": false}));
    // A line typed before our hello waits for it.
    chat.write_line("queued line");
    tokio::time::sleep(Duration::from_millis(400)).await;
    send_json(&demo, &chat_id, json!({"t": "hello", "ack": false})).await.unwrap();
    let ack = next_json(&mut events, "hello ack", |v| v["t"] == "hello" && v["ack"] == true).await;
    assert_eq!(ack, json!({"t": "hello", "ack": true}));
    let first = next_json(&mut events, "queued chat line", |v| v["t"] == "chat").await;
    assert_eq!(first, json!({"t": "chat", "id": 1, "text": "queued line"}));
    // Pings are answered with their id and timestamp.
    send_json(&demo, &chat_id, json!({"t": "ping", "id": 7, "ts": 1234.5})).await.unwrap();
    let pong = next_json(&mut events, "pong", |v| v["t"] == "pong").await;
    assert_eq!(pong, json!({"t": "pong", "id": 7, "ts": 1234.5}));
    // Incoming chat lines and non-JSON text are printed.
    send_json(&demo, &chat_id, json!({"t": "chat", "id": 1, "text": "from the demo"})).await.unwrap();
    assert_eq!(chat.stdout_line("from the demo").await, format!("{}: from the demo", short(&demo_id)));
    demo.send(&chat_id, "chat", Payload::Text("plain text, not JSON".into())).await.unwrap();
    assert_eq!(chat.stdout_line("plain text").await, format!("{}: plain text, not JSON", short(&demo_id)));
    // Ready now: lines go out at once, numbered on, and no hello follows them.
    chat.write_line("second line");
    let second = next_json(&mut events, "second chat line", |v| v["t"] == "chat").await;
    assert_eq!(second, json!({"t": "chat", "id": 2, "text": "second line"}));
    tokio::time::sleep(Duration::from_millis(600)).await;
    while let Ok(ev) = events.try_recv() {
        if let Event::Message { payload: Payload::Text(t), .. } = &ev {
            assert!(!t.contains("\"hello\""), "hello after the handshake completed: {t}");
        }
    }
    chat.close_stdin();
    assert!(chat.exit().await.success());
    demo.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2_and_runtime_failures_exit_1() {
    let (url, _stop) = start_server().await;
    let dir = TempDir::new("args");
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let cases: [(&[&str], i32, &str); 6] = [
        (&["--server", &url, "chat"], 2, "--room"),
        (&["--server", &url, "--room", "no/slash", "chat"], 2, "peer: bad-room: "),
        (&["--server", "ftp://x", "--room", "r", "echo"], 2, "peer: invalid-url: "),
        (&["--server", &url, "--room", "r", "send", "/definitely/not/here"], 2, "peer: bad-file: "),
        (&["--server", &url, "--room", "r", "recv", not_a_dir.to_str().unwrap()], 2, "peer: bad-dir: "),
        // Nobody listens on port 1 of loopback.
        (&["--server", "http://127.0.0.1:1", "--room", "r", "echo"], 1, "peer: connect-failed: "),
    ];
    for (args, code, needle) in cases {
        let out = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_peer"))
                .env_remove("PEER_ROOM")
                .env_remove("PEER_SERVER")
                .args(["--bind", "127.0.0.1"])
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("exits in time")
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {needle:?} not in {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    }
    // A sender nobody answers gives up after --timeout.
    let file = dir.path().join("f.txt");
    std::fs::write(&file, b"hi").unwrap();
    let mut lonely = Cli::spawn("lonely", &url, "empty", &["send", file.to_str().unwrap(), "--timeout", "1"]);
    assert_eq!(lonely.exit().await.code(), Some(1));
    assert!(lonely.rest_of_stderr().await.iter().any(|l| l.starts_with("peer: timeout: ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_rejects_content_that_does_not_match_its_header() {
    use sha2::{Digest, Sha256};
    let (url, _stop) = start_server().await;
    let dir = TempDir::new("mismatch");
    let mut recv =
        Cli::spawn("recv", &url, "mismatch", &["recv", dir.path().to_str().unwrap(), "--timeout", CLI_TIMEOUT]);
    recv.joined().await;
    let (me, mut events) = library_peer(&url, "mismatch").await;
    let recv_id = channel_open(&mut events).await;
    let announced = format!("{:x}", Sha256::digest(b"the real content"));
    let header = json!({"t": "file", "name": "doc.txt", "size": 16, "sha256": announced});
    me.send(&recv_id, "chat", Payload::Text(header.to_string())).await.unwrap();
    me.send(&recv_id, "chat", Payload::Binary(b"a forged content".to_vec().into())).await.unwrap();
    let ack = next_json(&mut events, "file-ack", |v| v["t"] == "file-ack").await;
    assert_eq!(
        (&ack["ok"], &ack["error"], &ack["sha256"]),
        (&json!(false), &json!("checksum-mismatch"), &json!(announced))
    );
    assert_eq!(recv.exit().await.code(), Some(1));
    assert!(recv.rest_of_stderr().await.iter().any(|l| l.starts_with("peer: checksum-mismatch: ")));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is written");
    me.close().await;
}
