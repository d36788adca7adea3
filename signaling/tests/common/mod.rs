//! Test harness: a real server on an ephemeral loopback port and real WebSocket clients, so a scenario
//! reads like what it proves (`TestServer::start()`, `Client::join(&srv, "r")`, `client.expect_error(..)`).

#![allow(dead_code)] // each test file uses a different subset

use futures_util::{SinkExt, StreamExt};
use protocol::{ClientMessage, ErrorCode, ServerEnvelope, ServerMessage, Welcome};
use signaling::{Config, Server};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expectation may wait.
pub const WAIT: Duration = Duration::from_secs(5);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestServer {
    pub addr: SocketAddr,
    /// The built-in STUN responder's UDP address, if it runs.
    pub stun: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config::with_listen("127.0.0.1:0".parse().unwrap());
        tweak(&mut cfg);
        let server = Server::bind(cfg).await.expect("server binds");
        let addr = server.local_addr();
        let stun = server.stun_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer { addr, stun, stop: Some(stop), task: Some(task) }
    }

    /// A handle on a server another `TestServer` runs (for use from a spawned task); stops nothing.
    pub fn attach(addr: SocketAddr) -> Self {
        TestServer { addr, stun: None, stop: None, task: None }
    }

    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/v1/rooms/{room}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Graceful shutdown, as on SIGTERM; returns when the server has stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("server stops in time").unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A protocol client that checks `seq` on everything it receives.
pub struct Client {
    pub ws: Ws,
    pub welcome: Welcome,
    last_seq: u64,
}

impl Client {
    pub async fn join(srv: &TestServer, room: &str) -> Self {
        let mut ws = connect(srv, room).await;
        let env = recv_envelope(&mut ws).await.expect("welcome");
        assert_eq!(env.seq, 1, "welcome must be seq 1");
        let ServerMessage::Welcome(welcome) = env.msg else { panic!("expected welcome, got {:?}", env.msg) };
        Client { ws, welcome, last_seq: 1 }
    }

    pub fn id(&self) -> String {
        self.welcome.peer_id.clone()
    }

    pub async fn send(&mut self, msg: &ClientMessage) {
        self.ws.send(Message::text(msg.encode())).await.expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next message; panics on timeout, close, or a `seq` that is not exactly the previous + 1.
    pub async fn recv(&mut self) -> ServerMessage {
        let env = recv_envelope(&mut self.ws).await.expect("a message");
        assert_eq!(env.seq, self.last_seq + 1, "seq gap or reorder before {:?}", env.msg);
        self.last_seq = env.seq;
        env.msg
    }

    pub async fn expect_error(&mut self, code: ErrorCode) -> String {
        match self.recv().await {
            ServerMessage::Error { code: got, message } if got == code => message,
            other => panic!("expected error {code}, got {other:?}"),
        }
    }

    /// Proves the session still works: a ping gets its pong.
    pub async fn assert_healthy(&mut self) {
        let id = self.last_seq + 1000;
        self.send(&ClientMessage::Ping { id: Some(id) }).await;
        assert_eq!(self.recv().await, ServerMessage::Pong { id: Some(id), received: None });
    }

    /// Nothing arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("expected silence, got {m:?}");
        }
    }

    pub async fn expect_close(&mut self) -> u16 {
        expect_close(&mut self.ws).await
    }
}

pub async fn connect(srv: &TestServer, room: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(srv.ws_url(room)))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

/// The next text frame as an envelope, skipping control frames; None on close.
pub async fn recv_envelope(ws: &mut Ws) -> Option<ServerEnvelope> {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time");
        match frame {
            Some(Ok(Message::Text(t))) => {
                return Some(ServerEnvelope::decode(&t).unwrap_or_else(|e| panic!("bad server frame {t}: {e}")));
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads until the close frame and returns its code (panics if the socket ends without one).
pub async fn expect_close(ws: &mut Ws) -> u16 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.expect("close in time");
        match frame {
            Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
            Some(Ok(Message::Close(None))) => return u16::from(WsCloseCode::Status),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error instead of a close frame: {e}"),
            None => panic!("socket ended without a close frame"),
        }
    }
}
