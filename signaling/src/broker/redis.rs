//! The Redis broker: several nodes share rooms through one Redis (`--redis-url`).
//!
//! Redis holds what every node must agree on, each change made by one Lua script so that no two nodes can
//! interleave inside it:
//! - `sig:room:{room}`: a sorted set of the room's peers, scored by a cluster-wide join counter (join order).
//!   `JOIN` checks `--max-peers` and adds the newcomer in the same script: two nodes admitting at once cannot
//!   both take the last place.
//! - `sig:peer:{peer}`: the peer's room, the node holding it (`node`), its token hash and the last client
//!   `cseq` handled (`rc`); `sig:tok:{sha256(token)}` → peer, so any node can resume a session or route a
//!   `POST` to it.
//! - `sig:seq:{peer}` and `sig:out:{peer}`: every message to a session gets its `seq` from `INCR` and is
//!   appended to a capped stream (`XADD MAXLEN --outbox`, entry id `{seq}-0`) and `PUBLISH`ed to the holding
//!   node's channel `sig:n:{node}`, all in one script: `seq` is gap-free and every node agrees on it. The
//!   holding node buffers it in the local [`Session`] under that `seq`, drops a `seq` it already has (exactly
//!   once), and fills a gap from the stream (`XRANGE`) when pub/sub lost something during a reconnect.
//! - `sig:node:{node}` (a key with a TTL, refreshed by each live node) and `sig:np:{node}` (its peers): a
//!   node that dies stops refreshing; the others' sweepers `SPOP` its peers one by one in a script that
//!   announces `peer-left`, so each is announced once, unless a resume moved it elsewhere first.
//!
//! One pub/sub connection per node, subscribed to its own channel only: what a node must hear is addressed
//! to it by the script that knows who holds the target.
//!
//! Redis down: joins, resumes and messages to peers elsewhere are refused with `cluster-unavailable`; messages
//! between sessions held here are stamped here, and written back to Redis when it returns (see
//! [`RedisBroker::resync`]).

use crate::hub::{Hub, JoinError};
use crate::session::{Outgoing, Session, Stamped};
use dashmap::DashMap;
use protocol::{CloseCode, ErrorCode, LeaveReason, PeerId, ServerMessage};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use sha2::Digest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Cluster flags (flattened into [`crate::Config`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterFlags {
    /// Redis to share rooms with other nodes through, e.g. redis://127.0.0.1:6379/0; turns cluster mode on.
    /// Without it the server keeps everything in memory (one node).
    #[arg(long, env = "SIGNALING_REDIS_URL")]
    pub redis_url: Option<String>,

    /// How long a node that stops refreshing its presence in Redis is still taken as alive, in milliseconds;
    /// after that the other nodes announce its peers as left. Default: heartbeat interval + timeout.
    #[arg(long, env = "SIGNALING_PRESENCE_TTL_MS")]
    pub presence_ttl_ms: Option<u64>,
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL does not parse as a Redis URL.
    #[error("--redis-url: {0}")]
    BadUrl(String),
    /// Redis did not answer at start-up.
    #[error("cannot reach Redis at --redis-url: {0}")]
    Unreachable(String),
}

impl ClusterError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ClusterError::BadUrl(_) => "bad-redis-url",
            ClusterError::Unreachable(_) => "redis-unreachable",
        }
    }
}

/// How long one Redis command may take before the node counts Redis as unreachable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a `POST` routed to another node waits for its answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages waiting for the Redis writer; a full queue (Redis far slower than the clients) refuses more.
const QUEUE: usize = 16_384;
/// Writes sent to Redis in one pipeline.
const BATCH: usize = 256;
/// How often a degraded node tries Redis again: the presence period (a third of the TTL, 5 s by default) would
/// leave cross-node rooms refused for seconds after Redis is back.
const DEGRADED_RETRY: Duration = Duration::from_millis(250);
/// After a recovery, when the first room reconcile runs: the other nodes saw the same outage and re-sync within a
/// few retries. A node that re-syncs later is caught by the second reconcile, one TTL after the recovery.
const RECONCILE_SETTLE: Duration = Duration::from_secs(2);

// Shared by the scripts: deliver one message to one peer (seq, stream, publish to its node), and remove a
// peer (announcing it to the rest of its room).
const PRELUDE: &str = r#"
local function deliver(peer, json, outbox)
  local node = redis.call('HGET', 'sig:peer:' .. peer, 'node')
  if not node then return 0 end
  local seq = redis.call('INCR', 'sig:seq:' .. peer)
  redis.call('XADD', 'sig:out:' .. peer, 'MAXLEN', outbox, seq .. '-0', 'm', json)
  redis.call('PUBLISH', 'sig:n:' .. node, 'd ' .. peer .. ' ' .. seq .. ' ' .. json)
  return seq
end
local function remove(peer, left_json, outbox)
  local pk = 'sig:peer:' .. peer
  local room = redis.call('HGET', pk, 'room')
  if not room then return 0 end
  local node = redis.call('HGET', pk, 'node')
  local tok = redis.call('HGET', pk, 'tok')
  redis.call('ZREM', 'sig:room:' .. room, peer)
  redis.call('DEL', pk, 'sig:tok:' .. tok, 'sig:seq:' .. peer, 'sig:out:' .. peer)
  redis.call('SREM', 'sig:np:' .. node, peer)
  for _, p in ipairs(redis.call('ZRANGE', 'sig:room:' .. room, 0, -1)) do deliver(p, left_json, outbox) end
  return 1
end
"#;

// ARGV: room, peer, node, token hash, max peers, outbox, welcome before the peer list, after it, peer-joined.
const JOIN: &str = r#"
local room, peer, node, tok, max, outbox = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local rk = 'sig:room:' .. room
local n = redis.call('ZCARD', rk)
if n >= max then return {-1, n, '', {}} end
local peers = redis.call('ZRANGE', rk, 0, -1)
redis.call('ZADD', rk, redis.call('INCR', 'sig:joins'), peer)
redis.call('HSET', 'sig:peer:' .. peer, 'room', room, 'node', node, 'tok', tok, 'rc', 0)
redis.call('SET', 'sig:tok:' .. tok, peer)
redis.call('SADD', 'sig:np:' .. node, peer)
local list = '[]'
if #peers > 0 then list = '["' .. table.concat(peers, '","') .. '"]' end
local welcome = ARGV[7] .. list .. ARGV[8]
redis.call('DEL', 'sig:out:' .. peer)
redis.call('SET', 'sig:seq:' .. peer, 1)
redis.call('XADD', 'sig:out:' .. peer, 'MAXLEN', outbox, '1-0', 'm', welcome)
for _, p in ipairs(peers) do deliver(p, ARGV[9], outbox) end
return {1, n + 1, welcome, peers}
"#;

// ARGV: outbox, sender, room, target ('' every other member, '=' the sender itself), sender's last cseq, json.
// 1 delivered, 0 no such target in the room, -1 the sender is no longer a member.
const DELIVER: &str = r#"
local outbox, from, room, to, rc, json = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local fk = 'sig:peer:' .. from
if redis.call('HGET', fk, 'room') ~= room then return -1 end
redis.call('HSET', fk, 'rc', rc)
if to == '=' then deliver(from, json, outbox) return 1 end
if to == '' then
  for _, p in ipairs(redis.call('ZRANGE', 'sig:room:' .. room, 0, -1)) do
    if p ~= from then deliver(p, json, outbox) end
  end
  return 1
end
if to == from or not redis.call('ZSCORE', 'sig:room:' .. room, to) then return 0 end
deliver(to, json, outbox)
return 1
"#;

// ARGV: peer, node that must still hold it ('' any), peer-left json, outbox.
const LEAVE: &str = r#"
local peer, node = ARGV[1], ARGV[2]
if node ~= '' and redis.call('HGET', 'sig:peer:' .. peer, 'node') ~= node then return 0 end
return remove(peer, ARGV[3], ARGV[4])
"#;

// ARGV: dead node, peer-left json before the peer id, after it, outbox. One peer of the dead node per call.
const SWEEP: &str = r#"
local dead = ARGV[1]
local peer = redis.call('SPOP', 'sig:np:' .. dead)
if not peer then
  redis.call('SREM', 'sig:nodes', dead)
  return false
end
if redis.call('HGET', 'sig:peer:' .. peer, 'node') == dead then
  remove(peer, ARGV[2] .. peer .. ARGV[3], ARGV[4])
end
return peer
"#;

// ARGV: token hash, room, node. Moves the session to this node; returns its state and whole outbox.
const RESUME: &str = r#"
local tok, room, node = ARGV[1], ARGV[2], ARGV[3]
local peer = redis.call('GET', 'sig:tok:' .. tok)
if not peer then return {0} end
local pk = 'sig:peer:' .. peer
if redis.call('HGET', pk, 'room') ~= room then return {0} end
local old = redis.call('HGET', pk, 'node')
if old ~= node then
  redis.call('HSET', pk, 'node', node)
  redis.call('SREM', 'sig:np:' .. old, peer)
  redis.call('SADD', 'sig:np:' .. node, peer)
  redis.call('PUBLISH', 'sig:n:' .. old, 'k ' .. peer)
end
local seq = tonumber(redis.call('GET', 'sig:seq:' .. peer) or '0')
local rc = tonumber(redis.call('HGET', pk, 'rc') or '0')
return {1, peer, seq, rc, redis.call('XRANGE', 'sig:out:' .. peer, '-', '+'), redis.call('ZRANGE', 'sig:room:' .. room, 0, -1)}
"#;

// ARGV: peer, room, node, token hash, local last seq, local last cseq, outbox, then (seq, text) pairs of the
// local buffer. Writes a session held here back after Redis was unreachable (or lost its data).
// {1} recreated, {2} Redis caught up with the local buffer, {3, seq} Redis is ahead (fill from the stream),
// {-1} another node holds it now.
const RESYNC: &str = r#"
local peer, room, node, tok, last, rc, outbox = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local pk = 'sig:peer:' .. peer
local held = redis.call('HGET', pk, 'node')
local function append(after)
  for i = 8, #ARGV, 2 do
    local seq = tonumber(ARGV[i])
    if seq > after then redis.call('XADD', 'sig:out:' .. peer, 'MAXLEN', outbox, seq .. '-0', 'm', ARGV[i + 1]) end
  end
  redis.call('SET', 'sig:seq:' .. peer, last)
end
if not held then
  redis.call('ZADD', 'sig:room:' .. room, redis.call('INCR', 'sig:joins'), peer)
  redis.call('HSET', pk, 'room', room, 'node', node, 'tok', tok, 'rc', rc)
  redis.call('SET', 'sig:tok:' .. tok, peer)
  redis.call('SADD', 'sig:np:' .. node, peer)
  redis.call('DEL', 'sig:out:' .. peer)
  append(0)
  return {1}
end
if held ~= node then return {-1} end
local rseq = tonumber(redis.call('GET', 'sig:seq:' .. peer) or '0')
if last > rseq then
  append(rseq)
  return {2}
end
return {3, rseq}
"#;

/// The scripts, loaded once per process (EVALSHA, with a reload when Redis restarted and forgot them).
struct Scripts {
    join: Script,
    deliver: Script,
    leave: Script,
    sweep: Script,
    resume: Script,
    resync: Script,
}

impl Scripts {
    fn new() -> Self {
        let with = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            join: with(JOIN),
            deliver: with(DELIVER),
            leave: with(LEAVE),
            sweep: with(SWEEP),
            resume: with(RESUME),
            resync: with(RESYNC),
        }
    }
}

/// Where a message goes.
#[derive(Debug, Clone)]
enum Target {
    /// The sender itself (`pong`, `error`, `resumed`).
    Itself,
    /// One other member of the sender's room.
    Peer(PeerId),
    /// Every other member of the sender's room.
    Room,
}

/// A write for the Redis writer task, in the order the hub made it.
enum Op {
    Deliver { from: Arc<Session>, to: Target, json: String },
    Leave { peer: PeerId, json: String },
}

/// The state of a session that another node resumes.
pub struct Carried {
    /// The session, rebuilt from the cluster's outbox.
    pub session: Arc<Session>,
    /// The last `seq` in the cluster when it was carried over.
    pub last: u64,
}

/// One node's side of the cluster.
pub struct RedisBroker {
    node: String,
    conn: ConnectionManager,
    client: redis::Client,
    scripts: Scripts,
    outbox: usize,
    ttl: Duration,
    // Sessions held here, by peer id (deliveries name the peer).
    local: DashMap<PeerId, Arc<Session>>,
    // Members (join order, every node) of rooms with members here, as last heard: whether a room is wholly
    // local while Redis is unreachable, and what to reconcile once it is back.
    views: DashMap<String, Vec<PeerId>>,
    degraded: AtomicBool,
    // Leaves made while Redis was unreachable, written when it is back (nobody else heard of them).
    pending_leaves: Mutex<Vec<(PeerId, String)>>,
    recovered_at: Mutex<Option<Instant>>,
    /// Wakes the presence loop when another task finds Redis unreachable, so it starts retrying at once.
    degraded_wake: tokio::sync::Notify,
    queue: mpsc::Sender<Op>,
    queue_rx: Mutex<Option<mpsc::Receiver<Op>>>,
    forwards: DashMap<u64, oneshot::Sender<(u16, String)>>,
    next_forward: AtomicU64,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker").field("node", &self.node).field("degraded", &self.is_degraded()).finish()
    }
}

/// The hash of a session token as Redis keeps it: a token never leaves the node that minted it.
fn token_hash(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The envelope text of `json` (a message body, `{"type":…}`) stamped with `seq`: the same bytes
/// `ServerEnvelope { seq, msg }.encode()` gives, without decoding the body.
fn stamp(seq: u64, json: &str) -> String {
    format!("{{\"seq\":{seq},{}", json.strip_prefix('{').unwrap_or(json))
}

fn encode(msg: &ServerMessage) -> String {
    // Serialising our own message types cannot fail (no maps with non-string keys).
    serde_json::to_string(msg).unwrap_or_default()
}

/// The messages of a stream reply (`XRANGE`): `(seq, json)` from entries `{seq}-0 m json`.
fn entries(v: &redis::Value) -> Vec<(u64, String)> {
    let redis::Value::Array(items) = v else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| {
            let redis::Value::Array(pair) = item else { return None };
            let id: String = redis::from_redis_value_ref(pair.first()?).ok()?;
            let fields: Vec<String> = redis::from_redis_value_ref(pair.get(1)?).ok()?;
            let seq = id.split('-').next()?.parse().ok()?;
            Some((seq, fields.get(1)?.clone()))
        })
        .collect()
}

impl RedisBroker {
    /// Connects to `url` (checked with a `PING`) as a node with a fresh random id.
    pub async fn connect(url: &str, outbox: usize, ttl: Duration) -> Result<Arc<Self>, ClusterError> {
        let client = redis::Client::open(url).map_err(|e| ClusterError::BadUrl(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let mut conn = tokio::time::timeout(COMMAND_TIMEOUT * 2, client.get_connection_manager_with_config(config))
            .await
            .map_err(|_| ClusterError::Unreachable("timed out".into()))?
            .map_err(|e| ClusterError::Unreachable(e.to_string()))?;
        let _: String =
            redis::cmd("PING").query_async(&mut conn).await.map_err(|e| ClusterError::Unreachable(e.to_string()))?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let broker = Arc::new(RedisBroker {
            node: crate::hub::new_id()[..16].to_owned(),
            conn,
            client,
            scripts: Scripts::new(),
            outbox,
            ttl,
            local: DashMap::new(),
            views: DashMap::new(),
            degraded: AtomicBool::new(false),
            pending_leaves: Mutex::new(Vec::new()),
            recovered_at: Mutex::new(None),
            degraded_wake: tokio::sync::Notify::new(),
            queue,
            queue_rx: Mutex::new(Some(rx)),
            forwards: DashMap::new(),
            next_forward: AtomicU64::new(1),
        });
        broker.beat().await.map_err(|e| ClusterError::Unreachable(e.to_string()))?;
        tracing::info!(node = %broker.node, "cluster mode: sharing rooms through Redis");
        Ok(broker)
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Whether Redis is unreachable (or was, and this node has not re-synced yet): what `/readyz` reports.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    fn set_degraded(&self, why: &dyn std::fmt::Display) {
        if !self.degraded.swap(true, Ordering::AcqRel) {
            self.degraded_wake.notify_one();
            tracing::warn!(error = %why, "Redis unreachable: cluster degraded (only sessions held here are served)");
        }
    }

    /// Starts the node's tasks: the writer, the pub/sub reader, presence and the sweeper, re-sync. They stop
    /// when the hub is dropped.
    pub fn start(self: &Arc<Self>, hub: Weak<Hub>) {
        let rx = self.queue_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rx) = rx {
            tokio::spawn(self.clone().write_loop(rx));
        }
        tokio::spawn(self.clone().read_loop(hub.clone()));
        tokio::spawn(self.clone().presence_loop(hub));
    }

    async fn beat(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::pipe()
            .cmd("SET")
            .arg(format!("sig:node:{}", self.node))
            .arg(1)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg("sig:nodes")
            .arg(&self.node)
            .ignore()
            .query_async::<()>(&mut c)
            .await
    }

    /// Admits `session` to its room cluster-wide unless it holds `max_peers`, queuing the `welcome` built by
    /// `welcome(peers)` as seq 1 and announcing the newcomer to every member, on every node.
    pub async fn admit(
        &self,
        session: &Arc<Session>,
        max_peers: usize,
        welcome: impl FnOnce(Vec<PeerId>) -> ServerMessage,
    ) -> Result<usize, JoinError> {
        if self.is_degraded() {
            return Err(JoinError::ClusterUnavailable);
        }
        let template = encode(&welcome(Vec::new()));
        let Some((before, after)) = template.split_once("\"peers\":[]") else {
            return Err(JoinError::ClusterUnavailable);
        };
        let (before, after) = (format!("{before}\"peers\":"), after.to_owned());
        let joined = encode(&ServerMessage::PeerJoined { peer_id: session.peer_id().to_owned() });
        // Held before the script runs, so a message that reaches the newcomer before the script's answer is
        // not dropped (it finds a gap, and fills it from the stream).
        self.local.insert(session.peer_id().to_owned(), session.clone());
        let mut c = self.conn.clone();
        let r: redis::RedisResult<(i64, usize, String, Vec<String>)> = self
            .scripts
            .join
            .arg(session.room())
            .arg(session.peer_id())
            .arg(&self.node)
            .arg(token_hash(session.token()))
            .arg(max_peers)
            .arg(self.outbox)
            .arg(before)
            .arg(after)
            .arg(joined)
            .invoke_async(&mut c)
            .await;
        match r {
            Ok((1, n, welcome, mut peers)) => {
                let _ = session.accept_stamped(1, stamp(1, &welcome));
                peers.push(session.peer_id().to_owned());
                self.merge_view(session.room(), peers);
                Ok(n)
            }
            Ok((_, n, _, _)) => {
                self.local.remove(session.peer_id());
                Err(JoinError::RoomFull(n))
            }
            Err(e) => {
                self.local.remove(session.peer_id());
                self.set_degraded(&e);
                Err(JoinError::ClusterUnavailable)
            }
        }
    }

    /// Sends `msg` from `from` to `to` (another member of its room); an unknown target gets the sender an
    /// `unknown-peer` error, as on one node.
    pub fn send_to(&self, from: &Session, to: &str, msg: ServerMessage) {
        self.submit(from, Target::Peer(to.to_owned()), msg);
    }

    /// Sends `msg` from `from` to every other member of its room, on every node.
    pub fn broadcast(&self, from: &Session, msg: ServerMessage) {
        self.submit(from, Target::Room, msg);
    }

    /// Queues `msg` to `session` itself with the next cluster `seq`.
    pub fn push(&self, session: &Session, msg: ServerMessage) {
        self.submit(session, Target::Itself, msg);
    }

    fn submit(&self, from: &Session, to: Target, msg: ServerMessage) {
        // Only sessions held here send; one that is gone (carried elsewhere, left) has nothing to say.
        let Some(from) = self.local.get(from.peer_id()).map(|s| s.clone()) else { return };
        if self.is_degraded() {
            self.deliver_here(&from, to, msg);
            return;
        }
        let op = Op::Deliver { from, to, json: encode(&msg) };
        if let Err(mpsc::error::TrySendError::Full(Op::Deliver { from, .. })) = self.queue.try_send(op) {
            tracing::warn!("Redis writer queue full: refusing a message");
            let _ = from.push(ServerMessage::Error {
                code: ErrorCode::ClusterUnavailable,
                message: "the cluster is overloaded; retry".into(),
            });
        }
    }

    /// Sessions held here.
    pub fn session_count(&self) -> usize {
        self.local.len()
    }

    /// Rooms with members held here.
    pub fn room_count(&self) -> usize {
        self.views.len()
    }

    /// Whether `room` has members held here.
    pub fn has_room(&self, room: &str) -> bool {
        self.views.contains_key(room)
    }

    /// Waits (at most `limit`) until the writer has sent everything queued.
    pub async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.queue.capacity() < self.queue.max_capacity() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The last batch is taken off the queue before it is written.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Delivery while Redis is unreachable: between sessions held here only, stamped here.
    fn deliver_here(&self, from: &Arc<Session>, to: Target, msg: ServerMessage) {
        let unavailable = |what: &str| {
            let _ = from.push(ServerMessage::Error {
                code: ErrorCode::ClusterUnavailable,
                message: format!("{what}: the cluster is unreachable; retry"),
            });
        };
        match to {
            Target::Itself => {
                let _ = from.push(msg);
            }
            Target::Peer(to) => match self.local.get(&to).map(|s| s.clone()) {
                Some(t) if t.room() == from.room() && t.peer_id() != from.peer_id() => {
                    let _ = t.push(msg);
                }
                _ => unavailable(&format!("peer {to:?} is not on this node")),
            },
            Target::Room => {
                let here: Vec<Arc<Session>> = self
                    .local
                    .iter()
                    .filter(|s| s.room() == from.room() && s.peer_id() != from.peer_id())
                    .map(|s| s.clone())
                    .collect();
                for t in &here {
                    let _ = t.push(msg.clone());
                }
                let members = self.views.get(from.room()).map_or(0, |v| v.len());
                if members > here.len() + 1 {
                    unavailable("peers on other nodes did not get it");
                }
            }
        }
    }

    /// Removes `session` from its room cluster-wide and announces `peer-left` (unless another node holds it
    /// now: then this was only this node's copy).
    pub fn remove(&self, session: &Session, reason: LeaveReason) -> bool {
        let Some((_, held)) = self.local.remove(session.peer_id()) else { return false };
        if !std::ptr::eq(Arc::as_ptr(&held), session) {
            // A newer copy of the same peer (a resume on this node): keep it.
            self.local.insert(session.peer_id().to_owned(), held);
            return false;
        }
        if let Some(mut v) = self.views.get_mut(session.room()) {
            v.retain(|p| p != session.peer_id());
        }
        self.views.remove_if(session.room(), |room, _| !self.local.iter().any(|s| s.room() == room));
        if session.close_code() == Some(CloseCode::Superseded) {
            return false;
        }
        let json = encode(&ServerMessage::PeerLeft { peer_id: session.peer_id().to_owned(), reason });
        if self.is_degraded() {
            for t in self.local.iter().filter(|s| s.room() == session.room()) {
                let _ = t.push(ServerMessage::PeerLeft { peer_id: session.peer_id().to_owned(), reason });
            }
            self.pending_leaves.lock().unwrap_or_else(|p| p.into_inner()).push((session.peer_id().to_owned(), json));
            return true;
        }
        let op = Op::Leave { peer: session.peer_id().to_owned(), json };
        // A full queue keeps the leave for the next re-sync; a closed one means the node is shutting down.
        if let Err(mpsc::error::TrySendError::Full(Op::Leave { peer, json })) = self.queue.try_send(op) {
            self.pending_leaves.lock().unwrap_or_else(|p| p.into_inner()).push((peer, json));
        }
        true
    }

    /// The session of `token` held by another node, carried over to this one: its outbox as the cluster has
    /// it. `None` if the cluster knows no such session in `room`.
    pub async fn carry(
        &self,
        token: &str,
        room: &str,
        after: u64,
        capacity: usize,
    ) -> Result<Option<Carried>, JoinError> {
        if self.is_degraded() {
            return Err(JoinError::ClusterUnavailable);
        }
        let mut c = self.conn.clone();
        let r: redis::RedisResult<redis::Value> =
            self.scripts.resume.arg(token_hash(token)).arg(room).arg(&self.node).invoke_async(&mut c).await;
        let v = match r {
            Ok(v) => v,
            Err(e) => {
                self.set_degraded(&e);
                return Err(JoinError::ClusterUnavailable);
            }
        };
        let redis::Value::Array(items) = v else { return Ok(None) };
        if items.len() < 6 {
            return Ok(None);
        }
        let peer: String = redis::from_redis_value_ref(&items[1]).unwrap_or_default();
        let last: u64 = redis::from_redis_value_ref(&items[2]).unwrap_or(0);
        let rc: u64 = redis::from_redis_value_ref(&items[3]).unwrap_or(0);
        let buf: Vec<Outgoing> =
            entries(&items[4]).into_iter().map(|(seq, json)| Outgoing { seq, text: stamp(seq, &json) }).collect();
        let members: Vec<String> = redis::from_redis_value_ref(&items[5]).unwrap_or_default();
        if let Some(old) = self.local.get(&peer).map(|s| s.clone()) {
            // Held here already (a resume that raced the pub/sub kick, or a poll of the same node).
            return Ok(Some(Carried { last: old.last_seq(), session: old }));
        }
        let session =
            Arc::new(Session::restore(peer.clone(), room.to_owned(), token.to_owned(), capacity, buf, last, after, rc));
        self.local.insert(peer, session.clone());
        self.merge_view(room, members);
        Ok(Some(Carried { session, last }))
    }

    /// The peer id of the live session holding `token`, wherever it is held.
    pub async fn peer_of_token(&self, token: &str) -> Option<PeerId> {
        let mut c = self.conn.clone();
        c.get::<_, Option<String>>(format!("sig:tok:{}", token_hash(token))).await.ok().flatten()
    }

    /// Routes a `POST` for a session held by another node to that node and returns its answer (status,
    /// JSON body); `None` when the cluster knows no such session.
    pub async fn forward_post(&self, peer: &str, token: &str, body: &[u8]) -> Result<Option<(u16, String)>, ()> {
        if self.is_degraded() {
            return Err(());
        }
        let tok = token_hash(token);
        let mut c = self.conn.clone();
        let found: redis::RedisResult<(Option<String>, Option<String>)> = redis::pipe()
            .cmd("GET")
            .arg(format!("sig:tok:{tok}"))
            .cmd("HGET")
            .arg(format!("sig:peer:{peer}"))
            .arg("node")
            .query_async(&mut c)
            .await;
        let (owner, node) = match found {
            Ok(f) => f,
            Err(e) => {
                self.set_degraded(&e);
                return Err(());
            }
        };
        let (Some(owner), Some(node)) = (owner, node) else { return Ok(None) };
        if owner != peer {
            return Ok(Some((401, String::new())));
        }
        let id = self.next_forward.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.forwards.insert(id, tx);
        let mut payload = format!("p {id} {} {peer} {tok}\n", self.node).into_bytes();
        payload.extend_from_slice(body);
        let sent: redis::RedisResult<()> = c.publish(format!("sig:n:{node}"), payload).await;
        if sent.is_err() {
            self.forwards.remove(&id);
            return Err(());
        }
        let answer = tokio::time::timeout(FORWARD_TIMEOUT, rx).await;
        self.forwards.remove(&id);
        match answer {
            Ok(Ok(a)) => Ok(Some(a)),
            _ => Err(()),
        }
    }

    async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            if self.is_degraded() {
                for op in batch.drain(..) {
                    self.fallback(op);
                }
                continue;
            }
            let mut pipe = redis::pipe();
            for op in &batch {
                match op {
                    Op::Deliver { from, to, json } => {
                        let to = match to {
                            Target::Itself => "=",
                            Target::Room => "",
                            Target::Peer(p) => p.as_str(),
                        };
                        pipe.add_command(
                            evalsha(&self.scripts.deliver)
                                .arg(self.outbox)
                                .arg(from.peer_id())
                                .arg(from.room())
                                .arg(to)
                                .arg(from.received())
                                .arg(json.as_str())
                                .clone(),
                        );
                    }
                    Op::Leave { peer, json } => {
                        pipe.add_command(
                            evalsha(&self.scripts.leave)
                                .arg(peer)
                                .arg(&self.node)
                                .arg(json.as_str())
                                .arg(self.outbox)
                                .clone(),
                        );
                    }
                }
            }
            let mut c = self.conn.clone();
            let results: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(&mut c).await;
            let results = match results {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // Redis restarted and forgot the scripts: none of this batch ran. Load them and go again.
                    self.load_scripts().await;
                    pipe.query_async(&mut c).await
                }
                r => r,
            };
            match results {
                Ok(values) => {
                    for (op, v) in batch.drain(..).zip(values) {
                        if let Op::Deliver { from, to, .. } = op {
                            let code: i64 = redis::from_redis_value_ref(&v).unwrap_or(1);
                            match (code, to) {
                                (0, Target::Peer(to)) => self.push(
                                    &from,
                                    ServerMessage::Error {
                                        code: ErrorCode::UnknownPeer,
                                        message: format!("no peer {to:?} in room {:?}", from.room()),
                                    },
                                ),
                                (-1, _) => {
                                    // The cluster forgot this session (swept while this node was cut off).
                                    tracing::info!(peer = %from.peer_id(), "session unknown to the cluster: closing it");
                                    from.close(CloseCode::ClusterUnavailable);
                                }
                                _ => {}
                            }
                        }
                    }
                }
                Err(e) => {
                    self.set_degraded(&e);
                    // Whether these ran is unknown; delivering them here keeps local rooms going (a message
                    // that did reach Redis may then arrive twice, under two seqs).
                    for op in batch.drain(..) {
                        self.fallback(op);
                    }
                }
            }
        }
    }

    fn fallback(&self, op: Op) {
        match op {
            Op::Deliver { from, to, json } => {
                if let Ok(msg) = serde_json::from_str::<ServerMessage>(&json) {
                    self.deliver_here(&from, to, msg);
                }
            }
            Op::Leave { peer, json } => {
                self.pending_leaves.lock().unwrap_or_else(|p| p.into_inner()).push((peer, json))
            }
        }
    }

    async fn load_scripts(&self) {
        let mut c = self.conn.clone();
        let s = &self.scripts;
        for script in [&s.join, &s.deliver, &s.leave, &s.sweep, &s.resume, &s.resync] {
            let _ = script.prepare_invoke().load_async(&mut c).await;
        }
    }

    /// Reads this node's channel: deliveries, kicks (another node took a session over), routed `POST`s and
    /// their answers. Reconnects when the connection drops; the re-sync then fills what was missed.
    async fn read_loop(self: Arc<Self>, hub: Weak<Hub>) {
        use futures_util::StreamExt;
        let channel = format!("sig:n:{}", self.node);
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            if hub.strong_count() == 0 {
                return;
            }
            let sub = async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(COMMAND_TIMEOUT, sub).await {
                Ok(Ok(ps)) => {
                    backoff = Duration::from_millis(100);
                    // Anything published while not subscribed is in the streams: the re-sync fills it. The
                    // first subscription happens before any session exists, so there is nothing to fill.
                    if !first {
                        self.set_degraded(&"pub/sub reconnected");
                    }
                    first = false;
                    let mut stream = ps.into_on_message();
                    while let Some(msg) = stream.next().await {
                        self.on_message(msg.get_payload_bytes(), &hub).await;
                    }
                    self.set_degraded(&"pub/sub connection lost");
                }
                Ok(Err(e)) => self.set_degraded(&e),
                Err(_) => self.set_degraded(&"pub/sub connect timed out"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn on_message(&self, payload: &[u8], hub: &Weak<Hub>) {
        let Ok(text) = std::str::from_utf8(payload) else { return };
        let (kind, rest) = text.split_at(text.len().min(2));
        match kind {
            "d " => {
                let mut parts = rest.splitn(3, ' ');
                let (Some(peer), Some(seq), Some(json)) = (parts.next(), parts.next(), parts.next()) else { return };
                let Ok(seq) = seq.parse::<u64>() else { return };
                let Some(session) = self.local.get(peer).map(|s| s.clone()) else { return };
                self.note_presence(session.room(), json);
                self.take(&session, seq, json).await;
            }
            "k " => {
                if let Some((_, s)) = self.local.remove(rest) {
                    tracing::info!(peer = %s.peer_id(), "session resumed on another node");
                    s.close(CloseCode::Superseded);
                }
            }
            "p " => {
                let Some((head, body)) = rest.split_once('\n') else { return };
                let mut parts = head.split(' ');
                let (Some(id), Some(node), Some(peer), Some(tok)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return;
                };
                let answer = match (hub.upgrade(), self.local.get(peer).map(|s| s.clone())) {
                    (Some(hub), Some(s)) if token_hash(s.token()) == tok => {
                        crate::transport::http::post_here(&s, body.as_bytes(), &hub)
                    }
                    _ => (404, String::new()),
                };
                let mut c = self.conn.clone();
                let _: redis::RedisResult<()> =
                    c.publish(format!("sig:n:{node}"), format!("r {id} {}\n{}", answer.0, answer.1)).await;
            }
            "r " => {
                let Some((head, body)) = rest.split_once('\n') else { return };
                let mut parts = head.split(' ');
                let (Some(id), Some(status)) = (parts.next(), parts.next()) else { return };
                let (Ok(id), Ok(status)) = (id.parse::<u64>(), status.parse::<u16>()) else { return };
                if let Some((_, tx)) = self.forwards.remove(&id) {
                    let _ = tx.send((status, body.to_owned()));
                }
            }
            _ => {}
        }
    }

    /// Buffers a delivery, filling a gap from the session's stream first.
    async fn take(&self, session: &Arc<Session>, seq: u64, json: &str) {
        if let Ok(Stamped::Gap { last }) = session.accept_stamped(seq, stamp(seq, json)) {
            self.fill(session, last, seq).await;
            let _ = session.accept_stamped(seq, stamp(seq, json));
        }
    }

    /// Reads `(last, upto]` of `session`'s stream into it; a gap the stream no longer covers closes it.
    async fn fill(&self, session: &Arc<Session>, last: u64, upto: u64) {
        let mut c = self.conn.clone();
        let got: redis::RedisResult<redis::Value> = redis::cmd("XRANGE")
            .arg(format!("sig:out:{}", session.peer_id()))
            .arg(format!("{}-0", last + 1))
            .arg(format!("{upto}-0"))
            .query_async(&mut c)
            .await;
        let Ok(got) = got else { return };
        for (seq, json) in entries(&got) {
            if let Ok(Stamped::Gap { .. }) = session.accept_stamped(seq, stamp(seq, &json)) {
                tracing::warn!(peer = %session.peer_id(), "messages lost beyond the cluster outbox: closing slow consumer");
                session.close(CloseCode::SlowConsumer);
                return;
            }
        }
    }

    /// Adds the members Redis lists for `room` to its view. A member only the view has stays: either its
    /// `peer-left` is on its way here, or it left while Redis was unreachable and the sessions held here were
    /// never told, which the next reconcile finds (replacing the view would hide that ghost from it).
    fn merge_view(&self, room: &str, members: Vec<PeerId>) {
        let mut v = self.views.entry(room.to_owned()).or_default();
        for m in members {
            if !v.contains(&m) {
                v.push(m);
            }
        }
    }

    /// Keeps the room view up to date from the presence messages delivered here.
    fn note_presence(&self, room: &str, json: &str) {
        let peer_of = |prefix: &str| json.strip_prefix(prefix).and_then(|r| r.split('"').next()).map(str::to_owned);
        if let Some(p) = peer_of("{\"type\":\"peer-joined\",\"peer_id\":\"") {
            let mut v = self.views.entry(room.to_owned()).or_default();
            if !v.contains(&p) {
                v.push(p);
            }
        } else if let Some(p) = peer_of("{\"type\":\"peer-left\",\"peer_id\":\"")
            && let Some(mut v) = self.views.get_mut(room)
        {
            v.retain(|m| *m != p);
        }
    }

    /// Refreshes this node's presence, sweeps dead nodes, and re-syncs after Redis was unreachable.
    async fn presence_loop(self: Arc<Self>, hub: Weak<Hub>) {
        let period = (self.ttl / 3).max(Duration::from_millis(50));
        let mut next = Instant::now() + period;
        // Reconciles still due after the last recovery, soonest first.
        let mut reconcile_at: Vec<Instant> = Vec::new();
        loop {
            if self.is_degraded() {
                next = next.min(Instant::now() + DEGRADED_RETRY);
            }
            if let Some(t) = reconcile_at.first() {
                next = next.min(*t);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = self.degraded_wake.notified() => {}
            }
            next = Instant::now() + period;
            if hub.strong_count() == 0 {
                return;
            }
            if let Err(e) = tokio::time::timeout(COMMAND_TIMEOUT, self.beat()).await.unwrap_or(Err(
                redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "heartbeat timed out")),
            )) {
                self.set_degraded(&e);
                continue;
            }
            if self.is_degraded() {
                match self.resync().await {
                    Ok(()) => {
                        self.degraded.store(false, Ordering::Release);
                        *self.recovered_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        let now = Instant::now();
                        reconcile_at = vec![now + RECONCILE_SETTLE.min(self.ttl), now + self.ttl];
                        tracing::info!(node = %self.node, "Redis reachable again: re-synced");
                    }
                    Err(e) => tracing::warn!(error = %e, "re-sync failed; retrying"),
                }
                continue;
            }
            if reconcile_at.first().is_some_and(|t| Instant::now() >= *t) {
                reconcile_at.remove(0);
                if let Err(e) = self.reconcile().await {
                    tracing::warn!(error = %e, "room reconcile failed");
                }
            }
            // Right after a recovery every node is re-registering: give them a TTL before judging any dead.
            let settled =
                self.recovered_at.lock().unwrap_or_else(|p| p.into_inner()).is_none_or(|t| t.elapsed() >= self.ttl);
            if settled && let Err(e) = self.sweep().await {
                self.set_degraded(&e);
            }
        }
    }

    async fn sweep(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let nodes: Vec<String> = c.smembers("sig:nodes").await?;
        let left = encode(&ServerMessage::PeerLeft { peer_id: "\u{0}".into(), reason: LeaveReason::Timeout });
        let (before, after) = left.split_once("\\u0000").unwrap_or((&left, ""));
        for dead in nodes.into_iter().filter(|n| *n != self.node) {
            if c.exists::<_, bool>(format!("sig:node:{dead}")).await? {
                continue;
            }
            let mut swept = 0usize;
            // Bounded: a node holds at most --max-sessions peers.
            for _ in 0..1_000_000 {
                let peer: Option<String> =
                    self.scripts.sweep.arg(&dead).arg(before).arg(after).arg(self.outbox).invoke_async(&mut c).await?;
                if peer.is_none() {
                    break;
                }
                swept += 1;
            }
            tracing::warn!(node = %dead, peers = swept, "node stopped refreshing its presence: its peers left");
        }
        Ok(())
    }

    /// Writes this node's state back to Redis: leaves made while it was unreachable, then every session held
    /// here (recreated if Redis lost it, caught up if messages were stamped here, filled if Redis is ahead).
    async fn resync(&self) -> redis::RedisResult<()> {
        self.load_scripts().await;
        let mut c = self.conn.clone();
        let leaves = std::mem::take(&mut *self.pending_leaves.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, (peer, json)) in leaves.iter().enumerate() {
            let r: redis::RedisResult<i64> = self
                .scripts
                .leave
                .arg(peer)
                .arg(&self.node)
                .arg(json.as_str())
                .arg(self.outbox)
                .invoke_async(&mut c)
                .await;
            if let Err(e) = r {
                self.pending_leaves.lock().unwrap_or_else(|p| p.into_inner()).extend(leaves[i..].iter().cloned());
                return Err(e);
            }
        }
        let sessions: Vec<Arc<Session>> = self.local.iter().map(|s| s.clone()).collect();
        for s in sessions {
            let mut inv = self.scripts.resync.prepare_invoke();
            inv.arg(s.peer_id())
                .arg(s.room())
                .arg(&self.node)
                .arg(token_hash(s.token()))
                .arg(s.last_seq())
                .arg(s.received())
                .arg(self.outbox);
            for o in s.buffered() {
                // Back from the envelope to the body the stream keeps: `{"seq":N,` dropped.
                let body = o.text.split_once(',').map_or(String::new(), |(_, rest)| format!("{{{rest}"));
                inv.arg(o.seq).arg(body);
            }
            let r: Vec<i64> = inv.invoke_async(&mut c).await?;
            match r.as_slice() {
                [-1] => {
                    self.local.remove(s.peer_id());
                    s.close(CloseCode::Superseded);
                }
                [3, rseq] if *rseq as u64 > s.last_seq() => self.fill(&s, s.last_seq(), *rseq as u64).await,
                _ => {}
            }
        }
        Ok(())
    }

    /// After a recovery: tells the sessions held here about members that came or went while Redis was
    /// unreachable (or that Redis forgot), so no peer stays a ghost.
    async fn reconcile(&self) -> redis::RedisResult<()> {
        let rooms: Vec<String> = self.views.iter().map(|v| v.key().clone()).collect();
        let mut c = self.conn.clone();
        for room in rooms {
            let now: Vec<String> = c.zrange(format!("sig:room:{room}"), 0, -1).await?;
            let before = self.views.get(&room).map(|v| v.clone()).unwrap_or_default();
            let here: Vec<Arc<Session>> = self.local.iter().filter(|s| s.room() == room).map(|s| s.clone()).collect();
            for s in &here {
                for gone in before.iter().filter(|p| !now.contains(p) && *p != s.peer_id()) {
                    self.push(s, ServerMessage::PeerLeft { peer_id: gone.clone(), reason: LeaveReason::Timeout });
                }
                for new in now.iter().filter(|p| !before.contains(p) && *p != s.peer_id()) {
                    self.push(s, ServerMessage::PeerJoined { peer_id: new.clone() });
                }
            }
            if !here.is_empty() {
                self.views.insert(room, now);
            }
        }
        Ok(())
    }
}

/// `EVALSHA` of `script` with no keys, for a pipeline (a reload on `NOSCRIPT` is the caller's).
fn evalsha(script: &Script) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(0);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ServerEnvelope;

    #[test]
    fn stamping_a_body_gives_the_envelope_bytes() {
        for msg in [
            ServerMessage::PeerJoined { peer_id: "abc".into() },
            ServerMessage::Pong { id: Some(3), received: None },
            ServerMessage::Error { code: ErrorCode::ClusterUnavailable, message: "x,\"y\"".into() },
        ] {
            let want = ServerEnvelope { seq: 42, msg: msg.clone() }.encode();
            assert_eq!(stamp(42, &encode(&msg)), want);
        }
    }

    #[test]
    fn token_hashes_are_hex_sha256() {
        assert_eq!(token_hash("a").len(), 64);
        assert_ne!(token_hash("a"), token_hash("b"));
    }
}
