//! HTTPS/WSS against a real server on 127.0.0.1:0 with a test CA and leaf made here with rcgen: WebSocket and
//! SSE (HTTP/1.1 and HTTP/2) through a verifying client, the wrong protocol on either port, and certificate
//! reload (the function SIGHUP calls, and a real SIGHUP to the binary) without dropping an open WebSocket.

use futures_util::{SinkExt, StreamExt};
use signaling::{Config, Server};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "signaling test CA");
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
}

/// A leaf for localhost/127.0.0.1 signed by `ca`, written to `dir` as cert.pem (leaf + CA chain) and key.pem.
fn leaf(ca: &Ca, dir: &Path) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    std::fs::write(dir.join("cert.pem"), format!("{}{}", cert.pem(), ca.pem)).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    cert.der().to_vec()
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("signaling-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cc = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cc)
}

use rustls::pki_types::pem::PemObject as _;

async fn tls_connect(addr: SocketAddr, ca_pem: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem, &[b"http/1.1"]));
    tokio::time::timeout(WAIT, connector.connect(ServerName::try_from("localhost").unwrap(), tcp))
        .await
        .expect("handshake in time")
        .expect("handshake verifies against the test CA")
}

fn presented(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

struct Running {
    addr: SocketAddr,
    tls: Option<Arc<signaling::edge::tls::TlsState>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(tweak: impl FnOnce(&mut Config)) -> Running {
    let mut cfg = Config::with_listen("127.0.0.1:0".parse().unwrap());
    tweak(&mut cfg);
    let server = Server::bind(cfg).await.expect("server binds");
    let addr = server.local_addr();
    let tls = server.tls();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running { addr, tls, _stop: stop }
}

async fn start_tls(dir: &Path) -> Running {
    start(|c| {
        c.edge.tls_cert = Some(dir.join("cert.pem"));
        c.edge.tls_key = Some(dir.join("key.pem"));
    })
    .await
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn wss_join(addr: SocketAddr, ca_pem: &str, room: &str) -> Wss {
    let tls = tls_connect(addr, ca_pem).await;
    let url = format!("wss://localhost:{}/v1/rooms/{room}/ws", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("wss upgrade");
    let first = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert!(first.to_text().unwrap().contains(r#""type":"welcome""#), "{first:?}");
    ws
}

async fn ping_pong(ws: &mut Wss) {
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    loop {
        let m = tokio::time::timeout(WAIT, ws.next()).await.expect("pong in time").unwrap().unwrap();
        if m.to_text().is_ok_and(|t| t.contains(r#""type":"pong""#)) {
            return;
        }
    }
}

#[tokio::test]
async fn wss_join_through_a_verifying_client() {
    let (ca, dir) = (ca(), tempdir("wss"));
    leaf(&ca, &dir);
    let srv = start_tls(&dir).await;
    let mut ws = wss_join(srv.addr, &ca.pem, "tls-room").await;
    ping_pong(&mut ws).await;
}

async fn sse_first_event(client: reqwest::Client, addr: SocketAddr, want: reqwest::Version) {
    let url = format!("https://localhost:{}/v1/rooms/sse-room/sse", addr.port());
    let mut res = tokio::time::timeout(WAIT, client.get(url).send()).await.unwrap().expect("https request");
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), want);
    let mut got = String::new();
    while !got.contains("welcome") {
        let chunk = tokio::time::timeout(WAIT, res.chunk()).await.unwrap().unwrap().expect("stream open");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
}

fn reqwest_client(ca_pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
}

#[tokio::test]
async fn sse_over_https_on_http1_and_http2() {
    let (ca, dir) = (ca(), tempdir("sse"));
    leaf(&ca, &dir);
    let srv = start_tls(&dir).await;
    let h1 = reqwest_client(&ca.pem).http1_only().build().unwrap();
    sse_first_event(h1, srv.addr, reqwest::Version::HTTP_11).await;
    // ALPN picks h2 when the client offers it.
    let h2 = reqwest_client(&ca.pem).build().unwrap();
    sse_first_event(h2, srv.addr, reqwest::Version::HTTP_2).await;
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_refused_and_the_server_keeps_serving() {
    let (ca, dir) = (ca(), tempdir("plain-on-tls"));
    leaf(&ca, &dir);
    let srv = start_tls(&dir).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("closed in time");
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "plain request served on the TLS port");
    drop(r);
    let mut ws = wss_join(srv.addr, &ca.pem, "still-up").await;
    ping_pong(&mut ws).await;
}

#[tokio::test]
async fn tls_on_the_plain_port_fails_cleanly_and_the_server_keeps_serving() {
    let ca = ca();
    let srv = start(|_| {}).await;
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&ca.pem, &[b"http/1.1"]));
    let r = tokio::time::timeout(Duration::from_secs(15), connector.connect(ServerName::try_from("localhost").unwrap(), tcp))
        .await
        .expect("the handshake attempt ends");
    assert!(r.is_err(), "a TLS handshake succeeded against the plain port");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/rooms/r/ws", srv.addr)).await.unwrap();
    let first = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("welcome"));
}

#[tokio::test]
async fn a_tls_handshake_never_finished_is_closed_at_its_timeout() {
    let (ca, dir) = (ca(), tempdir("hs-timeout"));
    leaf(&ca, &dir);
    let srv = start(|c| {
        c.edge.tls_cert = Some(dir.join("cert.pem"));
        c.edge.tls_key = Some(dir.join("key.pem"));
        c.edge.tls_handshake_timeout_ms = 500;
    })
    .await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // The first bytes of a ClientHello record, then nothing.
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "a stalled handshake held the connection for 3 s");
}

#[tokio::test]
async fn reload_swaps_the_cert_for_new_handshakes_without_closing_an_open_websocket() {
    let (ca, dir) = (ca(), tempdir("reload"));
    let first = leaf(&ca, &dir);
    let srv = start_tls(&dir).await;
    let mut ws = wss_join(srv.addr, &ca.pem, "reload-room").await;
    assert_eq!(presented(&tls_connect(srv.addr, &ca.pem).await), first);

    let second = leaf(&ca, &dir);
    assert_ne!(first, second);
    srv.tls.as_ref().unwrap().reload().expect("reload");
    assert_eq!(presented(&tls_connect(srv.addr, &ca.pem).await), second, "new handshake still sees the old cert");
    ping_pong(&mut ws).await;

    // A broken file keeps the current certificate.
    std::fs::write(dir.join("cert.pem"), "garbage").unwrap();
    assert!(srv.tls.as_ref().unwrap().reload().is_err());
    assert_eq!(presented(&tls_connect(srv.addr, &ca.pem).await), second);
    ping_pong(&mut ws).await;
}

/// The binary itself: `https://` in its listening line, and a real SIGHUP reloads the files.
#[tokio::test]
async fn sighup_to_the_binary_reloads_the_certificate() {
    use std::io::BufRead;
    let (ca, dir) = (ca(), tempdir("sighup"));
    let first = leaf(&ca, &dir);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["--listen", "127.0.0.1:0", "--stun-listen", "127.0.0.1:0", "--tls-cert"])
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Keep draining: the server prints more lines, and a closed pipe would fail its println!.
    std::thread::spawn(move || for _ in out.lines() {});
    let child = Kill(child);
    let addr: SocketAddr = line.trim().strip_prefix("signaling listening on https://").expect(&line).parse().unwrap();
    assert_eq!(presented(&tls_connect(addr, &ca.pem).await), first);
    let mut ws = wss_join(addr, &ca.pem, "hup").await;
    let second = leaf(&ca, &dir);
    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + WAIT;
    while presented(&tls_connect(addr, &ca.pem).await) != second {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload the certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ping_pong(&mut ws).await;
}
