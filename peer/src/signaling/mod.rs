//! The signaling client: one session with the server, speaking protocol v1 over WebSocket, SSE + POST or
//! long/short polling, and keeping that session alive across drops.
//!
//! A supervisor task owns the session. On the first connect it tries the transports in order with no delay
//! (WebSocket, SSE, long polling by default). When a connection drops or stops answering heartbeats it resumes
//! the session (same peer id, every missed message exactly once, its own unconfirmed messages sent again) on any
//! transport, with full-jitter backoff between attempts; if the server can no longer resume it, it reports the
//! new session. Callers get a cloneable [`SignalingSender`] and a receiver of [`SignalingEvent`]s whose
//! messages are in `seq` order with no gaps and no duplicates.

mod backoff;
pub(crate) mod http;
mod ws;

pub use backoff::Backoff;

use crate::error::Error;
use crate::tls::TlsOptions;
use rand::SeedableRng;
use protocol::{ClientEnvelope, ClientMessage, CloseCode, Secret, ServerEnvelope, ServerMessage, SessionInfo, Welcome};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Events buffered between the supervisor and its user.
const QUEUE: usize = 256;
/// Unconfirmed client messages above which the supervisor asks for a confirmation (a `ping`) at once.
const UNACKED_ASK: usize = 256;

/// A way to reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebSocket (`/ws`).
    Ws,
    /// Server-sent events for server messages, `POST` for client messages.
    Sse,
    /// Long polling, `POST` for client messages.
    LongPoll,
    /// Short polling (no wait on the server, a fixed interval between polls), `POST` for client messages.
    ShortPoll,
}

impl Transport {
    /// The name used in logs, flags and the web demo.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
            Transport::ShortPoll => "shortpoll",
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "ws" => Ok(Transport::Ws),
            "sse" => Ok(Transport::Sse),
            "longpoll" => Ok(Transport::LongPoll),
            "shortpoll" => Ok(Transport::ShortPoll),
            other => Err(Error::Connect(format!("unknown transport {other:?} (ws, sse, longpoll, shortpoll)"))),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the client connects and reconnects.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalingOptions {
    /// Transports to try, in order. Force one by giving only it.
    pub transports: Vec<Transport>,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// How long one transport may take to produce the first message before the next one is tried.
    pub connect_timeout: Duration,
    /// Time between polls for [`Transport::ShortPoll`].
    pub short_poll_interval: Duration,
    /// Which `https://`/`wss://` servers to trust: the built-in roots plus an optional CA file.
    pub tls: TlsOptions,
    /// The join token, for a server that requires one (`--auth-secret-file` / `--auth-public-key`). Sent on
    /// every join and resume (a resume the server cannot honour becomes a join): `Authorization: Bearer` on
    /// WebSocket and SSE, the `token` query parameter on polling (whose `Authorization` carries the session
    /// token). Never logged; `Debug` shows it redacted.
    pub token: Option<Secret>,
}

impl Default for SignalingOptions {
    fn default() -> Self {
        SignalingOptions {
            transports: vec![Transport::Ws, Transport::Sse, Transport::LongPoll],
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            short_poll_interval: Duration::from_secs(1),
            tls: TlsOptions::default(),
            token: None,
        }
    }
}

/// What the supervisor reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalingEvent {
    /// A server message, in `seq` order, each exactly once.
    Message(ServerMessage),
    /// The connection was lost; the supervisor is reconnecting.
    Disconnected {
        /// The close code, if the server sent one.
        code: Option<u16>,
    },
    /// Connected again. `resumed`: the session went on (same peer id, nothing lost); otherwise a
    /// [`SignalingEvent::NewSession`] came just before.
    Reconnected {
        /// The transport now in use.
        transport: Transport,
        /// Whether the old session was resumed.
        resumed: bool,
    },
    /// The session could not be resumed: this is a new one, with a new peer id and the peers now in the room.
    NewSession(Welcome),
    /// The session ended for good (a `leave`, or a close code that says not to reconnect).
    Closed {
        /// The close code.
        code: Option<u16>,
        /// Whether the code says a reconnect may succeed (false for everything that ends here today).
        reconnect: bool,
    },
}

/// Sends client messages on the session. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SignalingSender {
    tx: mpsc::UnboundedSender<ClientMessage>,
    transport: watch::Receiver<Transport>,
}

impl SignalingSender {
    /// Queues `msg`; fails once the session has ended. Messages queued while the connection is down are sent
    /// when it is back, in order, exactly once.
    pub async fn send(&self, msg: ClientMessage) -> Result<(), Error> {
        self.tx.send(msg).map_err(|_| Error::SignalingClosed)
    }

    /// The transport in use now.
    pub fn transport(&self) -> Transport {
        *self.transport.borrow()
    }
}

/// The http:// base of `server` (`http(s)://` or `ws(s)://`, with or without a trailing slash), and the ws://
/// one.
fn bases(server: &str) -> Result<(String, String), Error> {
    let base = server.trim_end_matches('/');
    let (http, ws) = if let Some(rest) = base.strip_prefix("http://").or_else(|| base.strip_prefix("ws://")) {
        (format!("http://{rest}"), format!("ws://{rest}"))
    } else if let Some(rest) = base.strip_prefix("https://").or_else(|| base.strip_prefix("wss://")) {
        (format!("https://{rest}"), format!("wss://{rest}"))
    } else {
        return Err(Error::InvalidUrl(server.to_owned()));
    };
    Ok((http, ws))
}

/// The ws:// URL of `room` on `server`.
pub fn room_url(server: &str, room: &str) -> Result<String, Error> {
    protocol::validate_room(room).map_err(Error::BadRoom)?;
    Ok(format!("{}/v1/rooms/{room}/ws", bases(server)?.1))
}

/// What every connection attempt needs besides its [`Start`]: the TLS configuration shared by all transports,
/// and the join token.
#[derive(Clone)]
struct Dial {
    tls: Arc<rustls::ClientConfig>,
    token: Option<Secret>,
}

impl Dial {
    /// `Bearer <join token>`, marked sensitive so hyper never shows it.
    fn bearer(&self) -> Option<hyper::header::HeaderValue> {
        let token = self.token.as_ref()?;
        // Checked in `connect_with`, so this cannot fail; `None` rather than a panic all the same.
        let mut value = hyper::header::HeaderValue::from_str(&format!("Bearer {}", token.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// `&token=…` to append to a query string that already has a `?` (empty without a token).
    fn token_param(&self) -> String {
        match &self.token {
            Some(t) => format!("&token={}", percent_encode(&t.0)),
            None => String::new(),
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (a JWT is all unreserved, so it goes as is).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks that `token` can go into a header and a URL: visible ASCII, not empty. The message never shows it.
fn check_token(token: &Secret) -> Result<(), Error> {
    if token.0.is_empty() {
        return Err(Error::InvalidToken("it is empty"));
    }
    if !token.0.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidToken("only visible ASCII characters are allowed (no spaces or line breaks)"));
    }
    Ok(())
}

/// How a connection starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    Join,
    Resume { token: String, after: u64 },
}

impl Start {
    /// The query string that asks for this start, the same on every transport (empty for a join).
    fn query(&self) -> String {
        match self {
            Start::Join => String::new(),
            Start::Resume { token, after } => format!("?resume={token}&after={after}"),
        }
    }
}

/// What a link delivers.
#[derive(Debug)]
enum Incoming {
    Envelope(ServerEnvelope),
    /// The server ended the session with this code.
    Close(u16),
    /// Sending failed: the link is dead.
    Failed,
}

enum LinkOut {
    Ws(mpsc::UnboundedSender<String>),
    Post(mpsc::UnboundedSender<http::Post>),
}

/// One connection on one transport. Dropping it stops its tasks.
struct Link {
    kind: Transport,
    rx: mpsc::Receiver<Incoming>,
    out: LinkOut,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Link {
    fn http(
        kind: Transport,
        report: mpsc::Sender<Incoming>,
        rx: mpsc::Receiver<Incoming>,
        base: &str,
        client: http::HttpClient,
        mut tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> Link {
        let (tx, posts) = mpsc::unbounded_channel();
        tasks.push(http::spawn_poster(base, client, posts, report));
        Link { kind, rx, out: LinkOut::Post(tx), tasks }
    }

    /// Hands `text` to the link; false if it is already dead.
    fn send(&self, text: String, session: &SessionInfo) -> bool {
        match &self.out {
            LinkOut::Ws(tx) => tx.send(text).is_ok(),
            LinkOut::Post(tx) => {
                tx.send(http::Post { path: session.url.clone(), token: session.token.clone(), text }).is_ok()
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Joins `room` on `server` with the default options and waits for `welcome`.
pub async fn connect(
    server: &str,
    room: &str,
) -> Result<(Welcome, SignalingSender, mpsc::Receiver<SignalingEvent>), Error> {
    connect_with(server, room, SignalingOptions::default()).await
}

/// Joins `room` on `server`, trying `opts.transports` in order with no delay, and waits for `welcome`.
///
/// The session lives as long as the event receiver: drop it (or send `leave`) to leave the room; messages
/// queued before are sent first, messages queued after may not be. Dropping every [`SignalingSender`] only
/// means nothing more will be sent.
///
/// Read the event receiver even when you only send: the client delivers every server message (its `pong`s
/// included) in order into a queue of 256, and once that queue is full it waits for the reader, sending nothing
/// meanwhile (`bench` once hung on exactly this: an unpaced sender that never read its events).
pub async fn connect_with(
    server: &str,
    room: &str,
    opts: SignalingOptions,
) -> Result<(Welcome, SignalingSender, mpsc::Receiver<SignalingEvent>), Error> {
    let tls = crate::tls::client_config(&opts.tls)?;
    connect_with_tls(server, room, opts, tls).await
}

/// [`connect_with`] with the TLS configuration already built from `opts.tls` (a [`crate::Peer`] shares it
/// with its ICE-server refresh).
pub(crate) async fn connect_with_tls(
    server: &str,
    room: &str,
    opts: SignalingOptions,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(Welcome, SignalingSender, mpsc::Receiver<SignalingEvent>), Error> {
    protocol::validate_room(room).map_err(Error::BadRoom)?;
    if opts.transports.is_empty() {
        return Err(Error::Connect("no transport to try".into()));
    }
    let (http_base, ws_base) = bases(server)?;
    if let Some(t) = &opts.token {
        check_token(t)?;
    }
    let dial = Dial { tls, token: opts.token.clone() };
    let mut sup = Supervisor {
        http_base,
        ws_base,
        dial,
        room: room.to_owned(),
        opts,
        session: None,
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        last_seq: 0,
        next_cseq: 1,
        unacked: VecDeque::new(),
        rng: rand::rngs::StdRng::from_os_rng(),
        awaiting_resumed: false,
    };
    let (link, first) = sup.open_any(&Start::Join).await?;
    let welcome = match first {
        ServerEnvelope { msg: ServerMessage::Welcome(w), seq } => {
            sup.adopt(&w, seq);
            w
        }
        ServerEnvelope { msg: ServerMessage::Error { code, message }, .. } => {
            return Err(Error::Refused { code, message });
        }
        other => return Err(Error::Protocol(format!("expected welcome, got {:?}", other.msg))),
    };
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (transport_tx, transport_rx) = watch::channel(link.kind);
    tracing::info!(transport = %link.kind, peer = %welcome.peer_id, "signaling connected");
    tokio::spawn(sup.run(link, out_rx, in_tx, transport_tx));
    Ok((welcome, SignalingSender { tx: out_tx, transport: transport_rx }, in_rx))
}


struct Supervisor {
    http_base: String,
    ws_base: String,
    dial: Dial,
    room: String,
    opts: SignalingOptions,
    session: Option<SessionInfo>,
    interval: Duration,
    timeout: Duration,
    /// The last seq delivered to the user.
    last_seq: u64,
    next_cseq: u64,
    /// Sent client messages the server has not confirmed yet: (cseq, encoded).
    unacked: VecDeque<(u64, String)>,
    rng: rand::rngs::StdRng,
    /// After a resume, nothing new may be sent before `resumed` says what the server has (it would overtake
    /// the messages to send again, and they would then be dropped as duplicates).
    awaiting_resumed: bool,
}

/// Why the connected loop stopped.
enum LinkEnd {
    /// Dropped, failed, silent, or a seq gap: resume at once.
    Lost,
    /// The server closed with a code that allows reconnecting: back off first.
    Closed(u16),
    /// Done for good.
    Stop(Option<u16>),
}

impl Supervisor {
    fn adopt(&mut self, w: &Welcome, seq: u64) {
        self.session = Some(w.session.clone());
        self.interval = Duration::from_millis(w.heartbeat.interval_ms.max(50));
        self.timeout = Duration::from_millis(w.heartbeat.timeout_ms.max(50));
        self.last_seq = seq;
        self.next_cseq = 1;
        self.unacked.clear();
    }

    /// Tries each transport once, in order, with no delay; returns the first that yields a message. A
    /// certificate that does not verify ends the round at once: the other transports reach the same server.
    async fn open_any(&mut self, start: &Start) -> Result<(Link, ServerEnvelope), Error> {
        let mut errors = Vec::new();
        for &kind in &self.opts.transports.clone() {
            let attempt = async {
                let dial = &self.dial;
                let mut link = match kind {
                    Transport::Ws => ws::open(&self.ws_base, &self.room, start, dial).await?,
                    Transport::Sse => http::open_sse(&self.http_base, &self.room, start, dial).await?,
                    Transport::LongPoll | Transport::ShortPoll => {
                        let wait = (kind == Transport::ShortPoll).then_some(Duration::ZERO);
                        let limit = self.interval + self.timeout;
                        let poll = http::PollSettings { wait, interval: self.opts.short_poll_interval, give_up_after: limit };
                        http::open_poll(&self.http_base, &self.room, start, dial, poll).await?
                    }
                };
                match link.rx.recv().await {
                    Some(Incoming::Envelope(env)) => Ok((link, env)),
                    Some(Incoming::Close(code)) => Err(Error::Connect(format!("{kind}: closed with {code}"))),
                    Some(Incoming::Failed) | None => Err(Error::Connect(format!("{kind}: ended before any message"))),
                }
            };
            match tokio::time::timeout(self.opts.connect_timeout, attempt).await {
                Ok(Ok(ok)) => return Ok(ok),
                Ok(Err(e @ Error::TlsVerify { .. })) => {
                    tracing::error!(transport = %kind, error = %e, "TLS certificate verification failed");
                    return Err(e);
                }
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(_) => errors.push(format!("{kind}: no message within {:?}", self.opts.connect_timeout)),
            }
            tracing::debug!(transport = %kind, error = %errors.last().map_or("", |s| s.as_str()), "transport failed; trying the next");
        }
        Err(Error::Connect(errors.join("; ")))
    }

    fn next_delay(&mut self, attempt: u32) -> Duration {
        self.opts.backoff.delay(attempt, &mut self.rng)
    }

    async fn run(
        mut self,
        mut link: Link,
        mut out_rx: mpsc::UnboundedReceiver<ClientMessage>,
        in_tx: mpsc::Sender<SignalingEvent>,
        transport: watch::Sender<Transport>,
    ) {
        loop {
            let end = self.serve(&mut link, &mut out_rx, &in_tx).await;
            drop(link);
            let backoff_first = match end {
                LinkEnd::Stop(code) => {
                    let _ = in_tx.send(SignalingEvent::Closed { code, reconnect: false }).await;
                    return;
                }
                LinkEnd::Lost => {
                    let _ = in_tx.send(SignalingEvent::Disconnected { code: None }).await;
                    false
                }
                LinkEnd::Closed(code) => {
                    let _ = in_tx.send(SignalingEvent::Disconnected { code: Some(code) }).await;
                    true
                }
            };
            link = match self.reconnect(backoff_first, &in_tx).await {
                Some(l) => l,
                None => return, // the user is gone
            };
            transport.send_replace(link.kind);
        }
    }

    /// Reconnects (resuming if it can) until it succeeds; `None` if the user dropped every handle meanwhile, or
    /// the session ended for good (a certificate that does not verify, a refusal with a final close code:
    /// [`SignalingEvent::Closed`] was sent).
    async fn reconnect(&mut self, backoff_first: bool, in_tx: &mpsc::Sender<SignalingEvent>) -> Option<Link> {
        let mut attempt = 0u32;
        if backoff_first {
            let d = self.next_delay(attempt);
            attempt += 1;
            tracing::info!(delay_ms = d.as_millis() as u64, "signaling closed by the server; reconnecting");
            tokio::time::sleep(d).await;
        }
        loop {
            if in_tx.is_closed() {
                return None;
            }
            let start = match &self.session {
                Some(s) => Start::Resume { token: s.token.clone(), after: self.last_seq },
                None => Start::Join,
            };
            match self.open_any(&start).await {
                // A refusal is the whole conversation, so its seq is 1; a replayed `error` of a resumed
                // session always comes after the welcome (seq 1) and is delivered like any message.
                Ok((mut link, first)) if first.seq <= 1 && matches!(first.msg, ServerMessage::Error { .. }) => {
                    // A refused resume or join (e.g. `unauthorized` once the join token has expired, or
                    // `rate-limited`): not a reconnect. The close that follows says whether to try again.
                    if let ServerMessage::Error { code, .. } = &first.msg {
                        tracing::warn!(code = code.as_str(), "the server refused the reconnect");
                    }
                    let close = match tokio::time::timeout(self.opts.connect_timeout, link.rx.recv()).await {
                        Ok(Some(Incoming::Close(c))) => Some(c),
                        _ => None,
                    };
                    drop(link);
                    if let Some(c) = close.filter(|c| !CloseCode::should_reconnect(*c)) {
                        let _ = in_tx.send(SignalingEvent::Message(first.msg)).await;
                        let _ = in_tx.send(SignalingEvent::Closed { code: Some(c), reconnect: false }).await;
                        return None;
                    }
                    let d = self.next_delay(attempt);
                    attempt += 1;
                    tokio::time::sleep(d).await;
                }
                Ok((link, first)) => {
                    let resumed = !matches!(first.msg, ServerMessage::Welcome(_));
                    self.awaiting_resumed = resumed;
                    tracing::info!(transport = %link.kind, resumed, "signaling reconnected");
                    if !self.deliver(first, &link, in_tx).await {
                        // A gap in the very first message: try again (the server replays from our last seq).
                        continue;
                    }
                    let _ = in_tx.send(SignalingEvent::Reconnected { transport: link.kind, resumed }).await;
                    return Some(link);
                }
                Err(e @ Error::TlsVerify { .. }) => {
                    // Retrying cannot help until someone changes the certificate or the trust: end the session
                    // (the error was logged by `open_any`).
                    tracing::error!(error = %e, "signaling session ended: the server's certificate does not verify");
                    let _ = in_tx.send(SignalingEvent::Closed { code: None, reconnect: false }).await;
                    return None;
                }
                Err(e) => {
                    let d = self.next_delay(attempt);
                    attempt += 1;
                    tracing::info!(error = %e, delay_ms = d.as_millis() as u64, "reconnect failed; backing off");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// Serves one link until it ends.
    async fn serve(
        &mut self,
        link: &mut Link,
        out_rx: &mut mpsc::UnboundedReceiver<ClientMessage>,
        in_tx: &mpsc::Sender<SignalingEvent>,
    ) -> LinkEnd {
        let mut ping = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set when we ping, and after a resume until `resumed` comes; cleared by anything from the server.
        let mut pong_due: Option<Instant> = self.awaiting_resumed.then(|| Instant::now() + self.interval + self.timeout);
        let mut leaving = false;
        loop {
            let senders_gone = out_rx.is_closed() && out_rx.is_empty();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                incoming = link.rx.recv() => match incoming {
                    Some(Incoming::Envelope(env)) => {
                        pong_due = if self.awaiting_resumed { pong_due } else { None };
                        if !self.deliver(env, link, in_tx).await {
                            return LinkEnd::Lost;
                        }
                    }
                    Some(Incoming::Close(code)) => {
                        return if leaving || !CloseCode::should_reconnect(code) {
                            LinkEnd::Stop(Some(code))
                        } else {
                            LinkEnd::Closed(code)
                        };
                    }
                    Some(Incoming::Failed) | None => {
                        return if leaving { LinkEnd::Stop(None) } else { LinkEnd::Lost };
                    }
                },
                msg = out_rx.recv(), if !leaving && !self.awaiting_resumed && !senders_gone => match msg {
                    Some(msg) => {
                        leaving = msg == ClientMessage::Leave;
                        if !self.send_new(msg, link) {
                            return LinkEnd::Lost;
                        }
                        if self.unacked.len() > UNACKED_ASK && pong_due.is_none() {
                            pong_due = Some(Instant::now() + self.timeout);
                            let _ = self.send_new(ClientMessage::Ping { id: None }, link);
                        }
                    }
                    // Every sender dropped: nothing new to send, but the session goes on while its events are read.
                    None => {}
                },
                _ = in_tx.closed(), if !leaving && !self.awaiting_resumed => {
                    // Nobody reads the events any more: send what is still queued, then leave, so the others
                    // hear at once rather than after a timeout.
                    while let Ok(msg) = out_rx.try_recv() {
                        let _ = self.send_new(msg, link);
                    }
                    leaving = true;
                    pong_due = Some(Instant::now() + self.timeout);
                    let _ = self.send_new(ClientMessage::Leave, link);
                }
                _ = ping.tick(), if !leaving && !self.awaiting_resumed => {
                    if pong_due.is_none() {
                        pong_due = Some(Instant::now() + self.timeout);
                    }
                    if !self.send_new(ClientMessage::Ping { id: None }, link) {
                        return LinkEnd::Lost;
                    }
                }
                _ = tokio::time::sleep_until(pong_due.unwrap_or(far)) => {
                    if leaving {
                        return LinkEnd::Stop(None);
                    }
                    tracing::info!(transport = %link.kind, "no answer from the server within the heartbeat timeout");
                    return LinkEnd::Lost;
                }
            }
        }
    }

    /// Numbers `msg`, keeps it until confirmed, and sends it.
    fn send_new(&mut self, msg: ClientMessage, link: &Link) -> bool {
        let cseq = self.next_cseq;
        self.next_cseq += 1;
        let text = ClientEnvelope { cseq: Some(cseq), msg }.encode();
        self.unacked.push_back((cseq, text.clone()));
        match &self.session {
            Some(s) => link.send(text, s),
            None => false,
        }
    }

    fn confirm(&mut self, received: u64) {
        while self.unacked.front().is_some_and(|(c, _)| *c <= received) {
            self.unacked.pop_front();
        }
    }

    /// Passes one envelope on, in order and once; false if a gap shows the link lost messages.
    async fn deliver(&mut self, env: ServerEnvelope, link: &Link, in_tx: &mpsc::Sender<SignalingEvent>) -> bool {
        if let ServerMessage::Welcome(w) = &env.msg {
            if self.session.is_some() {
                tracing::info!(peer = %w.peer_id, "the session could not be resumed: new session");
                self.adopt(w, env.seq);
                self.awaiting_resumed = false;
                let _ = in_tx.send(SignalingEvent::NewSession(w.clone())).await;
                return true;
            }
            self.adopt(w, env.seq);
        } else if env.seq <= self.last_seq {
            tracing::debug!(seq = env.seq, "duplicate server message dropped");
            return true;
        } else if env.seq != self.last_seq + 1 {
            tracing::warn!(expected = self.last_seq + 1, got = env.seq, "signaling seq gap: resuming");
            return false;
        }
        self.last_seq = env.seq;
        match &env.msg {
            ServerMessage::Pong { received: Some(r), .. } => self.confirm(*r),
            ServerMessage::Resumed { received, .. } => {
                self.awaiting_resumed = false;
                self.confirm(*received);
                // Send again what the server did not get, in order, before anything new.
                if let Some(s) = &self.session {
                    for (_, text) in &self.unacked {
                        if !link.send(text.clone(), s) {
                            return false;
                        }
                    }
                }
            }
            _ => {}
        }
        let _ = in_tx.send(SignalingEvent::Message(env.msg)).await;
        true
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_urls() {
        assert_eq!(room_url("http://127.0.0.1:8080", "r").unwrap(), "ws://127.0.0.1:8080/v1/rooms/r/ws");
        assert_eq!(room_url("https://example.org/", "r").unwrap(), "wss://example.org/v1/rooms/r/ws");
        assert_eq!(room_url("ws://h:1", "a-b").unwrap(), "ws://h:1/v1/rooms/a-b/ws");
        assert!(matches!(room_url("ftp://h", "r"), Err(Error::InvalidUrl(_))));
        assert!(matches!(room_url("http://h", "a/b"), Err(Error::BadRoom(_))));
        assert_eq!(bases("ws://h:1/").unwrap(), ("http://h:1".into(), "ws://h:1".into()));
    }

    #[test]
    fn tokens_are_checked_and_encoded_without_being_shown() {
        assert_eq!(percent_encode("a.B-c_~9"), "a.B-c_~9");
        assert_eq!(percent_encode("a+b/c=?&"), "a%2Bb%2Fc%3D%3F%26");
        for bad in ["", "a b", "a\nb", "é"] {
            let e = check_token(&Secret(bad.into())).unwrap_err();
            assert_eq!(e.code(), "invalid-token");
            assert!(bad.is_empty() || !e.to_string().contains(bad), "{e}");
        }
        assert!(check_token(&Secret("h.p.s".into())).is_ok());
        let dial = |t: Option<&str>| Dial {
            tls: crate::tls::client_config(&TlsOptions::default()).unwrap(),
            token: t.map(|t| Secret(t.into())),
        };
        assert_eq!(dial(None).token_param(), "");
        assert_eq!(dial(Some("x.y")).token_param(), "&token=x.y");
        assert!(dial(Some("x.y")).bearer().unwrap().is_sensitive());
        assert!(dial(None).bearer().is_none());
    }

    #[test]
    fn transports_parse_from_their_names() {
        for t in [Transport::Ws, Transport::Sse, Transport::LongPoll, Transport::ShortPoll] {
            assert_eq!(t.as_str().parse::<Transport>().unwrap(), t);
        }
        assert!("carrier-pigeon".parse::<Transport>().is_err());
    }
}
