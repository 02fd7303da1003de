//! The cluster transport: QUIC (quinn) between nodes, mutual TLS with the cluster CA,
//! one request per stream, postcard frames ([`super::wire`]).
//!
//! Owns: the endpoint, one outgoing connection per peer (a node sends its requests only on
//! connections it dialed and answers the peer's on the peer's; no simultaneous-dial
//! races), the hello that opens every connection, reconnecting with backoff, per-class
//! stream budgets and priorities, the fault layer's place in the path, and the link
//! metrics. Must not touch: what requests mean; a [`Service`] answers them.
//!
//! Traffic classes. Raft heartbeats and votes must never wait behind bulk traffic (a
//! delayed heartbeat is an election). Each class has its own budget of concurrent
//! streams, so data traffic cannot use up the connection's stream limit (quinn's
//! `open_bi` waits silently at it), and its own stream priority, so quinn sends control
//! frames first when the congestion window is the limit:
//!
//! | class | what | priority | streams |
//! |---|---|---|---|
//! | `Vote` | votes, hello | 30 | control |
//! | `Raft` | appends (heartbeats are appends), read index, status, join | 20 | control |
//! | `Data` | forwarded writes, device calls (later: publishes) | 10 | data |
//! | `Snapshot` | snapshot chunks | 0 | control |
//!
//! quinn settings (its defaults do not fit): 1,100 concurrent bidirectional streams a
//! peer may open (control 256 + data 768 + margin), keep-alive every second, idle
//! timeout 10 s, stream receive window 8 MiB, connection windows 64 MiB.
//!
//! A peer whose requests fail (unreachable, timed out, connection lost) three times in a
//! row is given up on for a backoff period (100 ms doubling to 2 s, with jitter): calls
//! then fail at once as unreachable, which is what openraft must hear to back off instead
//! of retrying at every heartbeat. One call per period probes the peer again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Semaphore;

use super::certs::{self, Identity};
use super::faults::{Action, Direction, Faults};
use super::metrics::ClusterMetrics;
use super::wire::{self, Answer, Hello, NodeId, Request, WireError, MAX_FRAME};

/// Largest hello frame.
const MAX_HELLO: usize = 64 << 10;
/// How long a dial (QUIC and TLS handshakes, then the hello) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Failures in a row after which a peer is given up on for a while.
const FAILURES_BEFORE_BACKOFF: u32 = 3;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONTROL_STREAMS: usize = 256;
const DATA_STREAMS: usize = 768;
/// QUIC application close codes.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_REFUSED: u32 = 1;

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cluster.bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error("QUIC configuration: {0}")]
    Quic(String),
}

/// Why a call did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No connection to the peer could be had (it is down, partitioned, backing off, or
    /// refused the hello). The request was not sent.
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    /// No answer in time. The request may or may not have been served.
    #[error("request to peer {0} timed out")]
    Timeout(NodeId),
    /// The connection broke during the request: it may or may not have been served.
    #[error("connection to peer {peer} lost: {reason}")]
    Lost { peer: NodeId, reason: String },
    /// The peer answered with an error.
    #[error("peer {peer}: {error}")]
    Remote { peer: NodeId, error: WireError },
}

/// Answers the requests peers send.
pub trait Service: Send + Sync + 'static {
    /// Whether `node` may talk to this node (a removed member may not).
    fn admit(&self, node: NodeId) -> Result<(), String>;
    /// Answers one request.
    fn handle(&self, from: NodeId, req: Request) -> BoxFuture<'static, Answer>;
}

/// Traffic class of a request (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Vote,
    Raft,
    Data,
    Snapshot,
}

impl Class {
    fn priority(self) -> i32 {
        match self {
            Class::Vote => 30,
            Class::Raft => 20,
            Class::Data => 10,
            Class::Snapshot => 0,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Class::Vote => "vote",
            Class::Raft => "raft",
            Class::Data => "data",
            Class::Snapshot => "snapshot",
        }
    }
}

/// What the transport is started with.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    pub node: NodeId,
    pub cluster: String,
    pub bind: SocketAddr,
    /// What peers dial to reach this node.
    pub advertise: String,
    pub insecure: bool,
}

#[derive(Debug)]
struct Health {
    failures: u32,
    /// Calls fail at once until then (one probe is let through after it).
    retry_at: Option<Instant>,
    delay: Duration,
}

/// One peer's outgoing connection and its health.
struct Peer {
    conn: Mutex<Option<quinn::Connection>>,
    /// One dial at a time.
    dialing: tokio::sync::Mutex<()>,
    health: Mutex<Health>,
    control: Semaphore,
    data: Semaphore,
    /// Connections made so far (a reconnect is every one after the first).
    dials: std::sync::atomic::AtomicU64,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            conn: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            health: Mutex::new(Health { failures: 0, retry_at: None, delay: BACKOFF_MIN }),
            control: Semaphore::new(CONTROL_STREAMS),
            data: Semaphore::new(DATA_STREAMS),
            dials: Default::default(),
        }
    }

    fn live(&self) -> Option<quinn::Connection> {
        let mut c = self.conn.lock();
        if c.as_ref().is_some_and(|c| c.close_reason().is_some()) {
            *c = None;
        }
        c.clone()
    }

    /// `Some(reason)` while the peer is being given up on; lets one probe through when
    /// the backoff is over.
    fn backing_off(&self) -> Option<Duration> {
        let mut h = self.health.lock();
        match h.retry_at {
            Some(at) if Instant::now() < at => Some(at - Instant::now()),
            Some(_) => {
                // Probe: further calls wait for the probe's outcome by backing off again.
                h.retry_at = Some(Instant::now() + h.delay);
                None
            }
            None => None,
        }
    }

    fn succeeded(&self) {
        let mut h = self.health.lock();
        h.failures = 0;
        h.retry_at = None;
        h.delay = BACKOFF_MIN;
    }

    /// The peer dialed us: a link that was failing is reset and re-dialed at the next
    /// call (the old connection may belong to a process that no longer exists).
    fn revived(&self) {
        let failing = {
            let mut h = self.health.lock();
            let failing = h.failures > 0 || h.retry_at.is_some();
            if failing {
                h.failures = 0;
                h.retry_at = None;
                h.delay = BACKOFF_MIN;
            }
            failing
        };
        if failing {
            if let Some(c) = self.conn.lock().take() {
                c.close(0u32.into(), b"peer restarted");
            }
        }
    }

    fn failed(&self) {
        let mut h = self.health.lock();
        h.failures += 1;
        if h.failures >= FAILURES_BEFORE_BACKOFF {
            let jitter = h.delay.mul_f64(rand::random::<f64>() * 0.2);
            h.retry_at = Some(Instant::now() + h.delay + jitter);
            h.delay = (h.delay * 2).min(BACKOFF_MAX);
        }
    }
}

/// The running transport. Cheap to share behind an `Arc`.
pub struct Transport {
    me: NodeId,
    cluster: String,
    incarnation: u64,
    advertise: String,
    insecure: bool,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    any_node: quinn::ClientConfig,
    peers: DashMap<NodeId, Arc<Peer>>,
    addrs: RwLock<HashMap<NodeId, String>>,
    service: OnceLock<Arc<dyn Service>>,
    faults: Faults,
    metrics: Arc<ClusterMetrics>,
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(((CONTROL_STREAMS + DATA_STREAMS + 76) as u32).into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000))));
    t.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    Arc::new(t)
}

fn quic_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Quic(e.to_string())
}

impl Transport {
    /// Binds the endpoint and starts accepting peers. Requests are answered once
    /// [`Transport::set_service`] has been called (until then they get "unavailable").
    pub fn start(
        opts: TransportOptions,
        identity: &Identity,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<Arc<Transport>, TransportError> {
        let server = certs::server_config(identity, opts.insecure)?;
        let server = quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(quic_err)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(transport_config());
        let client_cfg = |c: rustls::ClientConfig| -> Result<quinn::ClientConfig, TransportError> {
            let c = quinn::crypto::rustls::QuicClientConfig::try_from(c).map_err(quic_err)?;
            let mut c = quinn::ClientConfig::new(Arc::new(c));
            c.transport_config(transport_config());
            Ok(c)
        };
        let client = client_cfg(certs::client_config(identity, opts.insecure)?)?;
        let any_node =
            client_cfg(certs::any_node_client_config(identity, &opts.cluster, opts.insecure)?)?;
        let endpoint = quinn::Endpoint::server(server, opts.bind)
            .map_err(|source| TransportError::Bind { addr: opts.bind, source })?;
        let t = Arc::new(Transport {
            me: opts.node,
            cluster: opts.cluster,
            incarnation: rand::random::<u64>() | 1,
            advertise: opts.advertise,
            insecure: opts.insecure,
            endpoint,
            client,
            any_node,
            peers: DashMap::new(),
            addrs: RwLock::new(HashMap::new()),
            service: OnceLock::new(),
            faults: Faults::default(),
            metrics,
        });
        let accept = t.clone();
        tokio::spawn(async move { accept.accept_loop().await });
        Ok(t)
    }

    pub fn node(&self) -> NodeId {
        self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn advertised(&self) -> &str {
        &self.advertise
    }

    /// The bound UDP address (for tests that bind port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Sets the service that answers peers' requests (once).
    pub fn set_service(&self, s: Arc<dyn Service>) {
        let _ = self.service.set(s);
    }

    /// Records where `node` can be dialed (from membership, configuration or a hello).
    pub fn learn(&self, node: NodeId, addr: &str) {
        if node == self.me || addr.is_empty() {
            return;
        }
        let mut addrs = self.addrs.write();
        if addrs.get(&node).map(String::as_str) != Some(addr) {
            addrs.insert(node, addr.to_string());
            // A new address: the old connection may point elsewhere.
            if let Some(p) = self.peers.get(&node) {
                *p.conn.lock() = None;
            }
        }
    }

    pub fn address(&self, node: NodeId) -> Option<String> {
        if node == self.me {
            return Some(self.advertise.clone());
        }
        self.addrs.read().get(&node).cloned()
    }

    /// Closes the connection to a removed node and forgets it.
    pub fn forget(&self, node: NodeId) {
        if let Some((_, p)) = self.peers.remove(&node) {
            if let Some(c) = p.conn.lock().take() {
                c.close(CLOSE_REFUSED.into(), b"removed");
            }
        }
        self.addrs.write().remove(&node);
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(&self) {
        self.endpoint.close(CLOSE_SHUTDOWN.into(), b"shutdown");
    }

    /// Waits (at most `within`) until the endpoint's connections are closed, then, once
    /// this last handle is dropped, until its UDP port can be bound again (an in-process
    /// restart on the same port).
    pub async fn released(self: Arc<Self>, within: Duration) {
        let _ = tokio::time::timeout(within, self.endpoint.wait_idle()).await;
        let Some(addr) = self.local_addr() else { return };
        drop(self);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if std::net::UdpSocket::bind(addr).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(message = "cluster port still held after shutdown", %addr);
    }

    /// Round-trip time of the link to each peer with a live connection.
    pub fn links(&self) -> Vec<(NodeId, Duration, quinn::ConnectionStats)> {
        let mut out: Vec<_> = self
            .peers
            .iter()
            .filter_map(|p| p.live().map(|c| (*p.key(), c.rtt(), c.stats())))
            .collect();
        out.sort_by_key(|(id, _, _)| *id);
        out
    }

    fn peer(&self, node: NodeId) -> Arc<Peer> {
        self.peers.entry(node).or_insert_with(|| Arc::new(Peer::new())).clone()
    }

    /// Sends `req` to `to` and waits at most `timeout` for the answer. A call to this
    /// node itself goes straight to the service.
    pub async fn call(
        &self,
        to: NodeId,
        class: Class,
        req: Request,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        if to == self.me {
            let Some(s) = self.service.get() else {
                return Err(CallError::Unreachable { peer: to, reason: "starting".into() });
            };
            return match s.handle(self.me, req).await {
                Answer::Error(error) => Err(CallError::Remote { peer: to, error }),
                a => Ok(a),
            };
        }
        let started = Instant::now();
        let peer = self.peer(to);
        let res = match tokio::time::timeout(timeout, self.send(to, &peer, class, &req)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(to)),
        };
        let label = match &res {
            Ok(_) => "ok",
            Err(CallError::Remote { .. }) => "error",
            Err(CallError::Unreachable { .. }) => "unreachable",
            Err(CallError::Timeout(_)) => "timeout",
            Err(CallError::Lost { .. }) => "lost",
        };
        match &res {
            Ok(_) | Err(CallError::Remote { .. }) => peer.succeeded(),
            Err(CallError::Unreachable { .. }) => {}
            Err(_) => peer.failed(),
        }
        self.metrics.requests.with_label_values(&[class.label(), label]).inc();
        self.metrics
            .request_seconds
            .with_label_values(&[class.label()])
            .observe(started.elapsed().as_secs_f64());
        res
    }

    async fn send(
        &self,
        to: NodeId,
        peer: &Peer,
        class: Class,
        req: &Request,
    ) -> Result<Answer, CallError> {
        if let Some(wait) = peer.backing_off() {
            return Err(CallError::Unreachable {
                peer: to,
                reason: format!("backing off for {} ms after failures", wait.as_millis()),
            });
        }
        let budget = if class == Class::Data { &peer.data } else { &peer.control };
        let _permit = budget
            .acquire()
            .await
            .map_err(|_| CallError::Unreachable { peer: to, reason: "transport closed".into() })?;
        self.fault(to, Direction::Outbound).await;
        let conn = self.connection(to, peer).await?;
        let lost = |e: &dyn std::fmt::Display| CallError::Lost { peer: to, reason: e.to_string() };
        let answer = exchange(&conn, req, class.priority(), MAX_FRAME).await.map_err(|e| {
            if conn.close_reason().is_some() {
                *peer.conn.lock() = None;
            }
            lost(&e)
        })?;
        self.fault(to, Direction::Inbound).await;
        match wire::decode::<Answer>(&answer) {
            Ok(Answer::Error(error)) => Err(CallError::Remote { peer: to, error }),
            Ok(a) => Ok(a),
            Err(error) => {
                self.metrics.dropped("malformed");
                Err(CallError::Remote { peer: to, error })
            }
        }
    }

    /// Applies the fault layer to one frame: returns at once, after a delay, or never
    /// (a dropped frame: the caller's timeout ends the wait).
    async fn fault(&self, peer: NodeId, dir: Direction) {
        match self.faults.roll(peer, dir) {
            Action::Pass => {}
            Action::Delay(d) => tokio::time::sleep(d).await,
            Action::Drop => {
                self.metrics.dropped("fault");
                std::future::pending::<()>().await;
            }
        }
    }

    async fn connection(&self, to: NodeId, peer: &Peer) -> Result<quinn::Connection, CallError> {
        if let Some(c) = peer.live() {
            return Ok(c);
        }
        let _one = peer.dialing.lock().await;
        if let Some(c) = peer.live() {
            return Ok(c);
        }
        let addr = self.address(to).ok_or_else(|| CallError::Unreachable {
            peer: to,
            reason: "no known address".into(),
        })?;
        match self.dial(to, &addr).await {
            Ok((_, conn)) => {
                if peer.dials.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0 {
                    self.metrics.reconnects.with_label_values(&[&to.to_string()]).inc();
                }
                *peer.conn.lock() = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                peer.failed();
                Err(e)
            }
        }
    }

    /// Dials `addr` expecting node `to` (0: any node of the cluster) and says hello.
    async fn dial(&self, to: NodeId, addr: &str) -> Result<(NodeId, quinn::Connection), CallError> {
        let unreachable = |reason: String| CallError::Unreachable { peer: to, reason };
        let sock = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| unreachable(format!("{addr}: {e}")))?
            .next()
            .ok_or_else(|| unreachable(format!("{addr}: no address")))?;
        let (cfg, name) = if to == 0 {
            (self.any_node.clone(), certs::node_name(&self.cluster, 1))
        } else {
            (self.client.clone(), certs::node_name(&self.cluster, to))
        };
        let connecting =
            self.endpoint.connect_with(cfg, sock, &name).map_err(|e| unreachable(e.to_string()))?;
        let conn = match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unreachable(format!("{addr}: {e}"))),
            Err(_) => return Err(unreachable(format!("{addr}: handshake timed out"))),
        };
        let hello = Request::Hello(Hello {
            cluster: self.cluster.clone(),
            from: self.me,
            to,
            incarnation: self.incarnation,
            addr: self.advertise.clone(),
        });
        let answer = tokio::time::timeout(
            DIAL_TIMEOUT,
            exchange(&conn, &hello, Class::Vote.priority(), MAX_HELLO),
        )
        .await
        .map_err(|_| unreachable("hello timed out".into()))?
        .map_err(|e| unreachable(format!("hello: {e}")))?;
        match wire::decode::<Answer>(&answer) {
            Ok(Answer::Welcome { node, .. }) if to == 0 || node == to => Ok((node, conn)),
            Ok(Answer::Welcome { node, .. }) => {
                conn.close(CLOSE_REFUSED.into(), b"wrong node");
                Err(unreachable(format!("{addr} is node {node}")))
            }
            Ok(Answer::Error(e)) => Err(unreachable(format!("refused: {e}"))),
            Ok(other) => Err(unreachable(format!("unexpected hello answer {other:?}"))),
            Err(e) => Err(unreachable(format!("hello answer: {e}"))),
        }
    }

    /// Dials an address whose node id is not known (joining), sends one request and
    /// returns the node that answered and its answer.
    pub async fn call_address(
        &self,
        addr: &str,
        req: Request,
        timeout: Duration,
    ) -> Result<(NodeId, Answer), CallError> {
        let work = async {
            let (node, conn) = self.dial(0, addr).await?;
            self.learn(node, addr);
            let bytes = exchange(&conn, &req, Class::Raft.priority(), MAX_FRAME)
                .await
                .map_err(|e| CallError::Lost { peer: node, reason: e.to_string() })?;
            conn.close(CLOSE_SHUTDOWN.into(), b"done");
            match wire::decode::<Answer>(&bytes) {
                Ok(Answer::Error(error)) => Err(CallError::Remote { peer: node, error }),
                Ok(a) => Ok((node, a)),
                Err(error) => Err(CallError::Remote { peer: node, error }),
            }
        };
        tokio::time::timeout(timeout, work).await.unwrap_or(Err(CallError::Timeout(0)))
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let t = self.clone();
            tokio::spawn(async move { t.serve_connection(incoming).await });
        }
    }

    /// Checks a dialer's hello: same cluster, meant for this node, the node its
    /// certificate names, and admitted by the service.
    fn check_hello(&self, hello: &Hello, cert_node: Option<NodeId>) -> Result<(), String> {
        if hello.cluster != self.cluster {
            return Err(format!(
                "this node is in cluster {:?}, not {:?}",
                self.cluster, hello.cluster
            ));
        }
        if hello.to != 0 && hello.to != self.me {
            return Err(format!("this is node {}, not node {}", self.me, hello.to));
        }
        if hello.from == self.me || hello.from == 0 {
            return Err(format!("the dialer claims node id {}", hello.from));
        }
        if let Some(c) = cert_node {
            if c != hello.from {
                return Err(format!(
                    "certificate names node {c}, hello claims node {}",
                    hello.from
                ));
            }
        }
        match self.service.get() {
            Some(s) => s.admit(hello.from),
            None => Err("node is starting".into()),
        }
    }

    async fn serve_connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(message = "cluster handshake failed", error = %e);
                self.metrics.refused("handshake");
                return;
            }
        };
        let cert_node = if self.insecure {
            None
        } else {
            let chain = conn
                .peer_identity()
                .and_then(|i| i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok());
            match chain.and_then(|c| certs::peer_node_id(&c, &self.cluster)) {
                Some(id) => Some(id),
                None => {
                    self.metrics.refused("certificate");
                    conn.close(CLOSE_REFUSED.into(), b"certificate names no node of this cluster");
                    return;
                }
            }
        };
        let first = tokio::time::timeout(DIAL_TIMEOUT, conn.accept_bi()).await;
        let Ok(Ok((mut send, mut recv))) = first else {
            self.metrics.refused("no_hello");
            conn.close(CLOSE_REFUSED.into(), b"no hello");
            return;
        };
        let hello = match recv.read_to_end(MAX_HELLO).await {
            Ok(bytes) => wire::decode::<Request>(&bytes),
            Err(e) => Err(WireError::Malformed(e.to_string())),
        };
        let verdict = match &hello {
            Ok(Request::Hello(h)) => self.check_hello(h, cert_node).map(|()| h.clone()),
            Ok(_) => Err("the first request must be a hello".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let hello = match verdict {
            Ok(h) => h,
            Err(reason) => {
                tracing::warn!(message = "cluster peer refused", remote = %conn.remote_address(), reason = %reason);
                self.metrics.refused("hello");
                let _ =
                    send.write_all(&wire::encode(&Answer::Error(WireError::Refused(reason)))).await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
                conn.close(CLOSE_REFUSED.into(), b"refused");
                return;
            }
        };
        self.learn(hello.from, &hello.addr);
        // The peer reached us: if our own link to it was failing (it restarted, say),
        // dial it afresh now instead of waiting out the backoff on a dead connection.
        self.peer(hello.from).revived();
        let welcome = Answer::Welcome { node: self.me, incarnation: self.incarnation };
        if send.write_all(&wire::encode(&welcome)).await.is_err() || send.finish().is_err() {
            return;
        }
        let from = hello.from;
        while let Ok((send, recv)) = conn.accept_bi().await {
            let t = self.clone();
            tokio::spawn(async move { t.serve_stream(from, send, recv).await });
        }
    }

    async fn serve_stream(
        &self,
        from: NodeId,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let bytes = match recv.read_to_end(MAX_FRAME).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(message = "cluster request unreadable", peer = from, error = %e);
                self.metrics.dropped("unreadable");
                return;
            }
        };
        // A dropped frame is held, not answered, until the peer gives up on it.
        let hold = |send: quinn::SendStream| async move {
            let _ = tokio::time::timeout(Duration::from_secs(120), send.stopped()).await;
        };
        match self.faults.roll(from, Direction::Inbound) {
            Action::Drop => {
                self.metrics.dropped("fault");
                return hold(send).await;
            }
            Action::Delay(d) => tokio::time::sleep(d).await,
            Action::Pass => {}
        }
        let answer = match wire::decode::<Request>(&bytes) {
            Err(e) => {
                self.metrics.dropped(if matches!(e, WireError::Version { .. }) {
                    "version"
                } else {
                    "malformed"
                });
                Answer::Error(e)
            }
            Ok(Request::Hello(_)) => {
                Answer::Error(WireError::Refused("hello after the connection was opened".into()))
            }
            Ok(req) => match self.service.get() {
                Some(s) => s.handle(from, req).await,
                None => Answer::Error(WireError::Unavailable("node is starting".into())),
            },
        };
        match self.faults.roll(from, Direction::Outbound) {
            Action::Drop => {
                self.metrics.dropped("fault");
                return hold(send).await;
            }
            Action::Delay(d) => tokio::time::sleep(d).await,
            Action::Pass => {}
        }
        if send.write_all(&wire::encode(&answer)).await.is_ok() {
            let _ = send.finish();
        }
    }
}

/// One request on a new stream of `conn`: write, finish, read the answer to its end.
async fn exchange(
    conn: &quinn::Connection,
    req: &Request,
    priority: i32,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let _ = send.set_priority(priority);
    send.write_all(&wire::encode(req)).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(limit).await.map_err(|e| e.to_string())
}
