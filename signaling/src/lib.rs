//! The signaling server: peers join rooms over WebSocket and exchange SDP offers/answers, trickled ICE
//! candidates and application messages; the server also serves the web demo.
//!
//! Embedding it (the `signaling` binary does the same with flags):
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = signaling::Config::with_listen("127.0.0.1:0".parse()?);
//! let server = signaling::Server::bind(cfg).await?;
//! println!("listening on {}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod broker;
pub mod client_addr;
pub mod config;
pub mod edge;
pub mod fuzzing;
pub mod hub;
pub mod ice;
pub mod origin;
pub mod limits;
pub mod routes;
pub mod session;
pub mod stun;
pub mod transport;
pub mod web;

pub use config::{Config, LogFormat};

use hub::{Hub, HubConfig};
use protocol::{Heartbeat, Limits};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a shutdown waits for sessions to receive their close frame.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting that cannot work.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An ICE setting that cannot work, or the STUN address asked for is taken.
    #[error(transparent)]
    Ice(#[from] ice::IceError),
    /// A TLS, proxy, timeout or connection-cap setting that cannot work (e.g. an unreadable certificate).
    #[error(transparent)]
    Edge(#[from] edge::EdgeError),
    /// A join-token or origin setting that cannot work.
    #[error(transparent)]
    Auth(#[from] auth::AuthConfigError),
    /// `--redis-url` does not parse, or Redis does not answer at start-up.
    #[error(transparent)]
    Cluster(#[from] broker::redis::ClusterError),
}

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    hub: Arc<Hub>,
    cfg: Config,
    stun: Option<stun::StunResponder>,
    edge: edge::Edge,
}

/// Binds the HTTP listener with `TCP_NODELAY` set on it, which Linux copies to every accepted socket (warp
/// offers no hook on accepted sockets). Without it a push that follows one the client has not yet acknowledged
/// waits for the client's delayed ACK, up to 40 ms: `bench`'s paced workload measured relay-ws one-way p99 at
/// 35 ms before this, against ~0.2 ms for a lone echo.
pub async fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    Ok(listener)
}

impl Server {
    /// Validates the configuration and binds the listen address.
    pub async fn bind(cfg: Config) -> Result<Self, StartError> {
        cfg.validate()?;
        let edge = edge::Edge::new(&cfg.edge, cfg.listen)?;
        let gate = auth::Gate::from_flags(&cfg.auth)?;
        let listener = bind_listener(cfg.listen).await.map_err(|source| StartError::Bind { addr: cfg.listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: cfg.listen, source })?;
        let (ice_servers, stun) = ice::setup(&cfg.ice, cfg.listen).await?;
        let mut hub = Hub::new(hub_config(&cfg, ice_servers)).with_gate(gate);
        let cluster = match &cfg.cluster.redis_url {
            Some(url) => Some(broker::redis::RedisBroker::connect(url, cfg.outbox, cfg.presence_ttl()).await?),
            None => None,
        };
        if let Some(b) = &cluster {
            hub = hub.with_broker(broker::AnyBroker::Redis(b.clone()));
        }
        let hub = Arc::new(hub);
        if let Some(b) = &cluster {
            b.start(Arc::downgrade(&hub));
        }
        Ok(Server { listener, addr, hub, cfg, stun, edge })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The built-in STUN responder's UDP address, if it runs.
    pub fn stun_addr(&self) -> Option<SocketAddr> {
        self.stun.as_ref().map(stun::StunResponder::local_addr)
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.edge.tls().is_some() { "https" } else { "http" }
    }

    /// The certificate state when serving TLS: [`edge::tls::TlsState::reload`] is what SIGHUP calls, and a
    /// self-signed certificate's hashes are there.
    pub fn tls(&self) -> Option<Arc<edge::tls::TlsState>> {
        self.edge.tls()
    }

    /// The connection caps, for inspection.
    pub fn connections(&self) -> Arc<edge::limits::ConnLimits> {
        self.edge.limits()
    }

    /// The session core, for inspection.
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// Serves until `shutdown` completes, then closes every session with 4000 and waits (briefly) for them.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let web = match &self.cfg.web_root {
            Some(dir) => web::WebRoot::Dir(dir.clone()),
            None => web::WebRoot::Embedded,
        };
        let hub = self.hub.clone();
        let stun = self.stun.map(|s| tokio::spawn(s.run()));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let reaper = tokio::spawn(reap_forever(self.hub.clone()));
        let routes = routes::routes_with(self.hub.clone(), web, &self.cfg.transports, self.cfg.ws_read_buffer_bytes);
        let server = tokio::spawn(self.edge.serve(self.listener, routes, stop_rx));
        shutdown.await;
        tracing::info!(sessions = hub.session_count(), "shutting down");
        // Upgraded sockets are not tracked by the HTTP server's graceful shutdown: close them ourselves.
        hub.shutdown();
        let _ = stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while hub.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout_at(deadline, server).await;
        if let broker::AnyBroker::Redis(b) = hub.broker() {
            // The leaves of the closed sessions are still on their way to Redis.
            b.flush(Duration::from_secs(1)).await;
        }
        if let Some(stun) = stun {
            stun.abort();
        }
        reaper.abort();
        tracing::info!(left_open = hub.session_count(), "stopped");
    }
}

/// The session core's settings of a server run with `cfg` (shared with [`fuzzing`], which builds the same core
/// without a listener).
fn hub_config(cfg: &Config, ice_servers: ice::IceServers) -> HubConfig {
    HubConfig {
        limits: Limits { max_message_bytes: cfg.max_message_bytes, max_peers: cfg.max_peers },
        heartbeat: Heartbeat { interval_ms: cfg.heartbeat_interval_ms, timeout_ms: cfg.heartbeat_timeout_ms },
        outbox: cfg.outbox,
        resume_window: Duration::from_millis(cfg.resume_window_ms),
        ice_servers,
        node: cfg.limits.clone(),
        sse_gzip: cfg.sse_gzip,
    }
}

/// Ends sessions whose resume window or heartbeat ran out. 100 ms keeps "announced as left within
/// interval + timeout" true to a tenth of a second, for the cost of a scan of the session table.
async fn reap_forever(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        hub.reap(std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    /// The server relies on the kernel copying the listener's `TCP_NODELAY` to accepted sockets (Linux does);
    /// where it does not, pushes would again wait for delayed ACKs.
    #[tokio::test]
    async fn accepted_sockets_have_nagle_off() {
        let listener = super::bind_listener("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (accepted, _) = accepted.unwrap();
        assert!(accepted.nodelay().unwrap(), "accepted socket has Nagle on");
        drop(client);
    }
}
