//! The TCP/TLS/HTTP edge: our own accept loop in front of the warp filter.
//!
//! warp 0.4 has no TLS and no hook on accepted sockets, so connections are accepted here and the filter is
//! served as a hyper service. Everything a hostile client can hold open is bounded here, before a request
//! reaches a route: connection caps (node-wide, per TCP peer) taken at accept, a deadline for the first byte,
//! for the TLS handshake, for the request head and for its body, TCP keepalive for half-open sockets, and HTTP/2 pings.
//!
//! hyper-util's auto builder is not used for the protocol choice: with upgrades enabled its HTTP/1-or-2 sniff
//! reads the first 24 bytes with no deadline, so a client that sends `PRI * HTT` and stops would hold the
//! connection. The choice is made here instead, by ALPN on TLS and by peeking (under the idle deadline) on
//! plain TCP, and hyper's HTTP/1 or HTTP/2 connection is driven directly.

pub mod body;
pub mod limits;
pub mod tls;

use crate::client_addr::{self, Cidr, PeerAddr, TrustedProxies};
use body::Deadline;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use limits::{ConnLimits, ConnSlot, Refusal};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tls::{TlsError, TlsState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// TLS, trusted proxies, timeouts and connection caps of the listener.
#[derive(clap::Args, Debug, Clone)]
pub struct EdgeFlags {
    /// PEM certificate chain (leaf first) to serve HTTPS/WSS with; needs `--tls-key`. Re-read on SIGHUP.
    #[arg(long, env = "SIGNALING_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`. Re-read on SIGHUP.
    #[arg(long, env = "SIGNALING_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve HTTPS with a certificate generated at start-up for localhost, 127.0.0.1, ::1 and the listen
    /// address; its SHA-256 fingerprint and SPKI hash are printed on stdout (for LAN use and browser tests).
    #[arg(long, env = "SIGNALING_TLS_SELF_SIGNED", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls_self_signed: bool,

    /// A reverse proxy (IP or CIDR; repeatable, or comma-separated in the env var) whose `X-Forwarded-For` is
    /// believed: for its requests the client is the right-most forwarded address that is not a trusted proxy.
    /// Nobody else's `X-Forwarded-For` is read. Trusted proxies are exempt from `--max-connections-per-ip`.
    #[arg(long = "trusted-proxy", env = "SIGNALING_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<Cidr>,

    /// Most open TCP connections on this node (WebSockets included); beyond it a connection gets
    /// `503 too-many-connections` and is closed.
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most open TCP connections from one peer address; beyond it a connection gets `429 too-many-connections`
    /// and is closed. Counted per TCP peer at accept (behind a proxy, see `--trusted-proxy`).
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// How long a new plain-TCP connection may stay silent before its first byte, in milliseconds.
    #[arg(long, env = "SIGNALING_IDLE_TIMEOUT_MS", default_value_t = 10_000)]
    pub idle_timeout_ms: u64,

    /// How long a TLS handshake may take, in milliseconds.
    #[arg(long, env = "SIGNALING_TLS_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub tls_handshake_timeout_ms: u64,

    /// How long an HTTP/1 request head may take to arrive, in milliseconds (slowloris). The clock also runs
    /// while a keep-alive connection waits for its next request, so this is the HTTP/1 keep-alive idle
    /// timeout too.
    #[arg(long, env = "SIGNALING_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// How long a request body may take to arrive in full once its head is in, in milliseconds; a body still
    /// unfinished then gets `408 request-timeout` and its connection is closed.
    #[arg(long, env = "SIGNALING_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,

    /// TCP keepalive idle time on accepted sockets, in seconds (0 = off): a peer that vanished without a FIN
    /// is detected after this plus 3 probes 5 s apart.
    #[arg(long, env = "SIGNALING_TCP_KEEPALIVE_SECS", default_value_t = 30)]
    pub tcp_keepalive_secs: u64,

    /// Interval of HTTP/2 PING frames, in milliseconds; a connection whose ping is not answered within the
    /// same time is closed.
    #[arg(long, env = "SIGNALING_HTTP2_KEEPALIVE_MS", default_value_t = 20_000)]
    pub http2_keepalive_ms: u64,

    /// How long a write to a client may make no progress at all (its TCP window stays shut), in milliseconds,
    /// before the connection is closed. A client that stops reading otherwise keeps whatever hyper and the
    /// kernel already hold for it, and its connection slot, for as long as it keeps the socket open.
    #[arg(long, env = "SIGNALING_WRITE_STALL_TIMEOUT_MS", default_value_t = 30_000)]
    pub write_stall_timeout_ms: u64,
}

/// Why the edge settings cannot work.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A certificate problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A cap or timeout of zero would refuse everything or nothing.
    #[error("{0} must be above 0")]
    Zero(&'static str),
}

impl EdgeFlags {
    /// Refuses settings that cannot work.
    pub fn validate(&self) -> Result<(), EdgeError> {
        for (flag, v) in [
            ("--max-connections", self.max_connections as u64),
            ("--max-connections-per-ip", self.max_connections_per_ip as u64),
            ("--idle-timeout-ms", self.idle_timeout_ms),
            ("--tls-handshake-timeout-ms", self.tls_handshake_timeout_ms),
            ("--header-read-timeout-ms", self.header_read_timeout_ms),
            ("--body-read-timeout-ms", self.body_read_timeout_ms),
            ("--http2-keepalive-ms", self.http2_keepalive_ms),
            ("--write-stall-timeout-ms", self.write_stall_timeout_ms),
        ] {
            if v == 0 {
                return Err(EdgeError::Zero(flag));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(TlsError::Flags.into());
        }
        Ok(())
    }
}

/// Connections being refused at once (each writes a few hundred bytes and lingers ≤ 3 s); beyond this a
/// refused connection is just closed, so a flood cannot turn refusals into unbounded work.
const MAX_REFUSING: usize = 64;

/// The listener's edge, built from [`EdgeFlags`].
#[derive(Debug)]
pub struct Edge {
    flags: EdgeFlags,
    tls: Option<Arc<TlsState>>,
    limits: Arc<ConnLimits>,
    trusted: Arc<TrustedProxies>,
    refusing: Arc<Semaphore>,
}

impl Edge {
    /// Loads or generates the certificate (when TLS is asked for). `listen` goes into a self-signed one.
    pub fn new(flags: &EdgeFlags, listen: SocketAddr) -> Result<Self, EdgeError> {
        flags.validate()?;
        let tls = match (&flags.tls_cert, &flags.tls_key, flags.tls_self_signed) {
            (Some(cert), Some(key), false) => Some(Arc::new(TlsState::from_files(cert, key)?)),
            (None, None, true) => Some(Arc::new(TlsState::self_signed(listen.ip())?)),
            (None, None, false) => None,
            _ => return Err(TlsError::Flags.into()),
        };
        Ok(Edge {
            flags: flags.clone(),
            tls,
            limits: ConnLimits::new(flags.max_connections, flags.max_connections_per_ip),
            trusted: Arc::new(TrustedProxies(flags.trusted_proxy.clone())),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        })
    }

    /// The certificate state, when serving TLS (to reload it, or read a self-signed one's hashes).
    pub fn tls(&self) -> Option<Arc<TlsState>> {
        self.tls.clone()
    }

    /// The caps, for inspection.
    pub fn limits(&self) -> Arc<ConnLimits> {
        self.limits.clone()
    }

    /// Accepts and serves connections until `stop` turns true; then asks every HTTP connection to finish its
    /// in-flight requests and close, and returns once no connection is left (the caller bounds that wait).
    pub async fn serve<F>(self, listener: TcpListener, filter: F, mut stop: watch::Receiver<bool>)
    where
        F: warp::Filter + Clone + Send + Sync + 'static,
        F::Extract: warp::Reply,
        F::Future: Send,
    {
        let svc = warp::service(filter);
        let this = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopped(&mut stop) => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: the socket stays in the backlog; back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let exempt = this.trusted.contains(peer.ip());
            match this.limits.acquire(peer.ip(), exempt) {
                Ok(slot) => {
                    tokio::spawn(this.clone().connection(tcp, peer, slot, svc.clone(), stop.clone()));
                }
                Err(refusal) => {
                    tracing::debug!(%peer, ?refusal, "connection refused at accept");
                    if let Ok(permit) = this.refusing.clone().try_acquire_owned() {
                        let this = this.clone();
                        tokio::spawn(async move {
                            this.refuse(tcp, refusal).await;
                            drop(permit);
                        });
                    }
                }
            }
        }
        drop(listener);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        while this.limits.total() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn tune(&self, tcp: &TcpStream) {
        let sock = socket2::SockRef::from(tcp);
        // Linux copies it from the listener already (see `bind_listener`); set it anyway for other kernels.
        let _ = sock.set_tcp_nodelay(true);
        if self.flags.tcp_keepalive_secs > 0 {
            let ka = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(self.flags.tcp_keepalive_secs))
                .with_interval(Duration::from_secs(5))
                .with_retries(3);
            if let Err(e) = sock.set_tcp_keepalive(&ka) {
                tracing::debug!(error = %e, "cannot set TCP keepalive");
            }
        }
    }

    fn write_stall(&self) -> Duration {
        Duration::from_millis(self.flags.write_stall_timeout_ms)
    }

    async fn connection<S>(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, slot: ConnSlot, svc: S, stop: watch::Receiver<bool>)
    where
        S: tower_service::Service<hyper::Request<Deadline<Incoming>>, Response = warp::reply::Response, Error = std::convert::Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        self.tune(&tcp);
        match self.tls.clone() {
            None => {
                let idle = Duration::from_millis(self.flags.idle_timeout_ms);
                let h2 = match tokio::time::timeout(idle, sniff_h2(&tcp)).await {
                    Ok(Ok(h2)) => h2,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::debug!(%peer, "closed: no request byte within the idle timeout");
                        return;
                    }
                };
                self.http(Counted::new(tcp, slot, self.write_stall()), h2, peer, svc, stop).await;
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let hs = Duration::from_millis(self.flags.tls_handshake_timeout_ms);
                let stream = match tokio::time::timeout(hs, acceptor.accept(Counted::new(tcp, slot, self.write_stall()))).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "closed: TLS handshake not finished within its timeout");
                        return;
                    }
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                self.http(stream, h2, peer, svc, stop).await;
            }
        }
    }

    /// Serves one connection over `io` as an accepted plain-TCP connection from `peer` is served once its
    /// protocol is known (HTTP/2 prior knowledge when `h2`), holding no cap slot: how [`crate::fuzzing`] drives
    /// the real edge over an in-memory stream, with no socket per input.
    pub(crate) async fn serve_stream<I, F>(&self, io: I, h2: bool, peer: SocketAddr, filter: F, stop: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: warp::Filter + Clone + Send + Sync + 'static,
        F::Extract: warp::Reply,
        F::Future: Send,
    {
        self.http(io, h2, peer, warp::service(filter), stop).await;
    }

    async fn http<I, S>(&self, io: I, h2: bool, peer: SocketAddr, svc: S, mut stop: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: tower_service::Service<hyper::Request<Deadline<Incoming>>, Response = warp::reply::Response, Error = std::convert::Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let trusted = self.trusted.clone();
        let body_limit = Duration::from_millis(self.flags.body_read_timeout_ms);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            if let Some(refused) = refuse_target(req.uri()) {
                tracing::debug!(%peer, "refused: a request target without a path");
                return futures_util::future::Either::Left(std::future::ready(Ok(refused)));
            }
            let xff = req.headers().get_all("x-forwarded-for").iter().map(|v| v.as_bytes());
            let ip = client_addr::resolve(peer.ip(), &trusted, xff);
            let expired = Arc::new(AtomicBool::new(false));
            let (parts, body) = req.into_parts();
            let mut req = hyper::Request::from_parts(parts, Deadline::new(body, body_limit, expired.clone()));
            req.extensions_mut().insert(PeerAddr(peer));
            req.extensions_mut().insert(ip);
            let mut svc = svc.clone();
            let call = tower_service::Service::call(&mut svc, req);
            futures_util::future::Either::Right(async move {
                let res = call.await;
                if expired.load(Ordering::Relaxed) {
                    // Whatever the route made of its failed body read (warp words it as a plain-text 400), the
                    // client is told what happened, with a stable code.
                    tracing::debug!(%peer, "refused: the request body did not arrive within the body-read timeout");
                    return Ok(request_timeout());
                }
                res
            })
        });
        let io = TokioIo::new(io);
        let result = if h2 {
            let ka = Duration::from_millis(self.flags.http2_keepalive_ms);
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new()).keep_alive_interval(Some(ka)).keep_alive_timeout(ka);
            let conn = b.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        } else {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(self.flags.header_read_timeout_ms));
            let conn = b.serve_connection(io, service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }

    /// Answers a connection over a cap with a short JSON error and closes it. It holds no slot.
    async fn refuse(&self, tcp: TcpStream, refusal: Refusal) {
        let (status, message) = match refusal {
            Refusal::Node => ("503 Service Unavailable", "this node has too many open connections"),
            Refusal::PerIp => ("429 Too Many Requests", "too many open connections from your address"),
        };
        let body = serde_json::to_string(&protocol::HttpError {
            code: protocol::ErrorCode::TooManyConnections,
            message: message.to_owned(),
        })
        .unwrap_or_default();
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\nretry-after: 1\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let budget = Duration::from_secs(2).min(Duration::from_millis(self.flags.tls_handshake_timeout_ms));
        match &self.tls {
            None => {
                let _ = tokio::time::timeout(budget, answer_and_close(tcp, response.as_bytes())).await;
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let _ = tokio::time::timeout(budget, async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        answer_and_close(stream, response.as_bytes()).await;
                    }
                })
                .await;
            }
        }
    }
}

/// The answer to a request whose target has no path (authority-form `host:port`, `*`, or a bare word that hyper
/// reads as a host): `400 bad-message`, before it reaches warp, whose routing assumes a path that starts with `/`
/// (and panicked on one without). `None` for a request that may go on.
pub(crate) fn refuse_target(uri: &hyper::Uri) -> Option<warp::reply::Response> {
    if uri.path().starts_with('/') {
        return None;
    }
    Some(crate::transport::http::error(
        warp::http::StatusCode::BAD_REQUEST,
        protocol::ErrorCode::BadMessage,
        "the request target must be a path starting with /",
    ))
}

/// `408 request-timeout`, for a request whose body did not arrive in time; the connection closes after it.
fn request_timeout() -> warp::reply::Response {
    let mut res = crate::transport::http::error(
        warp::http::StatusCode::REQUEST_TIMEOUT,
        protocol::ErrorCode::RequestTimeout,
        "the request body did not arrive within the body-read timeout",
    );
    res.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    res
}

/// Writes `response`, closes our side, and reads (and drops) what the client still sends for a moment, so its
/// request does not turn the close into a reset that destroys the response before the client reads it.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, response: &[u8]) {
    if stream.write_all(response).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut total = 0usize;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Resolves once `stop` is true (or its sender is gone), holding no borrow of the value.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What an HTTP/2 prior-knowledge client sends first.
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits for the first bytes and says whether they are the HTTP/2 prior-knowledge preface. Only peeks, so
/// hyper reads them again.
async fn sniff_h2(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface: peek would return the same bytes at once, so wait a little for the rest (the
        // caller's idle deadline bounds this).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connection's stream with its cap slot: the slot is given back when the stream is dropped, which for a
/// WebSocket is when the upgraded socket closes, not when the HTTP exchange ends. Writes that make no progress
/// for `stall_limit` fail with `TimedOut`, which ends the connection (HTTP/1, HTTP/2 and upgraded WebSockets
/// alike, since all of them write through here, under TLS too).
struct Counted<S> {
    inner: S,
    _slot: ConnSlot,
    stall_limit: Duration,
    // Armed when a write first returns Pending, disarmed by any progress.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Counted<S> {
    fn new(inner: S, slot: ConnSlot, stall_limit: Duration) -> Self {
        Counted { inner, _slot: slot, stall_limit, stall: None }
    }

    /// Turns a write's Pending into an error once nothing has moved for `stall_limit`.
    fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.stall_limit;
                let timer = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.stall = None;
                    tracing::debug!("closed: the client read nothing within the write-stall timeout");
                    return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write stalled")));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
