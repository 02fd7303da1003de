//! One node wired together: store, router, device supervisor, listeners, admin, `$SYS`.
//!
//! Start order: metrics -> store -> Raft groups (each led by this node) -> sessions of an
//! earlier release moved into the shards -> router (retained loaded from the shards) ->
//! device supervisor (sessions restored) -> admin -> listeners -> ready.
//! Shutdown order: not ready -> stop accepting and disconnect clients (DISCONNECT 0x8B on
//! v5) -> wait for connections to detach -> drain device actors -> stop Raft groups ->
//! flush storage.

mod sys;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, watch};

use crate::admin::{self, AdminState};
use crate::auth::Auth;
use crate::broker::{RetainLimits, Router};
use crate::cluster::{self, Cluster};
use crate::config::Config;
use crate::device::{
    watch_leadership, DeviceCtx, DeviceSupervisor, Devices, LeaderCalls, SupervisorMsg,
};
use crate::jobs::{scheduler, Jobs};
use crate::raft::{Groups, Initial, LocalOnly, RaftStartError, SessionStore, StartOptions};
use crate::registry::Registry;
use crate::shadow::Shadows;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use crate::transport::{bind_listeners, ConnCtx};

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("listener: {0}")]
    Transport(#[from] crate::transport::TransportError),
    #[error("admin server: {0}")]
    Admin(std::io::Error),
    #[error("device supervisor: {0}")]
    Supervisor(String),
    #[error("raft: {0}")]
    Raft(#[from] RaftStartError),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
}

/// `addr` as peers and clients can dial it: an unspecified IP (0.0.0.0) is replaced by the
/// host of the cluster's advertised address.
fn advertised(addr: SocketAddr, cluster: Option<&str>) -> String {
    match cluster.and_then(|c| c.rsplit_once(':')).map(|(h, _)| h) {
        Some(host) if addr.ip().is_unspecified() => format!("{host}:{}", addr.port()),
        _ => addr.to_string(),
    }
}

/// A running node.
pub struct Node {
    pub mqtt_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub devices: Arc<Devices>,
    pub router: Arc<Router>,
    pub groups: Arc<Groups>,
    pub auth: Arc<Auth>,
    /// The cluster side (`None` on a single node).
    pub cluster: Option<Arc<Cluster>>,
    store: Store,
    raft_log: Store,
    /// One device supervisor per shard.
    supervisors: Vec<ActorRef<SupervisorMsg>>,
    shutdown: watch::Sender<bool>,
    conns_done: mpsc::Receiver<()>,
    ready: Arc<AtomicBool>,
}

/// A member drained by the operator (`ctl cluster drain`) sends its clients to other
/// nodes once its groups' leaders have moved off it, and takes clients again when it is
/// undrained. A node leaving at SIGTERM (`Node::leave`) does so itself.
fn watch_drain(c: Arc<Cluster>, devices: Arc<Devices>, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let me = c.node();
            let drained = c
                .members()
                .iter()
                .any(|m| m.info.id == me && m.state == cluster::records::MemberState::Draining);
            // A node stopping sends its clients away itself, once its leaders moved.
            if c.is_leaving() {
                continue;
            }
            let leads = c.groups().ids().any(|g| c.groups().is_leader(g));
            devices.set_leaving(drained && !leads);
        }
    });
}

impl Node {
    /// Starts a node from a validated config.
    pub async fn start(cfg: Config) -> Result<Node, NodeError> {
        cfg.validate()?;
        let cfg = Arc::new(cfg);
        let metrics = Arc::new(Metrics::new());
        std::fs::create_dir_all(&cfg.node.data_dir)
            .map_err(|e| StoreError::Sled(format!("{}: {e}", cfg.node.data_dir.display())))?;
        let cache = cfg.node.cache_mib << 20;
        let store = Store::open_with_cache(&cfg.node.data_dir, cache, metrics.clone())?;
        // The Raft logs live in their own sled database: each append's flush then writes
        // only log entries, not the state machines' pages (those are replayable from the
        // log and are flushed before a snapshot lets the log be compacted).
        let raft_log =
            Store::open_with_cache(&cfg.node.data_dir.join("raft-log"), cache, metrics.clone())?;
        let transport = match cfg.cluster.enabled() {
            true => Some(cluster::start_transport(&cfg.cluster, cfg.node.id, &metrics)?),
            false => None,
        };
        let write_timeout = Duration::from_millis(cfg.cluster.write_timeout_ms);
        let mut preferred_groups = Vec::new();
        let groups = match &transport {
            Some(parts) => {
                let t = &parts.transport;
                let (initial, mut preferred) =
                    cluster::initial(&cfg.cluster, cfg.node.id, cfg.raft.shards + 1);
                let stored =
                    cluster::preferred_from_store(&store, cfg.node.id, cfg.raft.shards + 1);
                if !stored.is_empty() {
                    preferred = stored;
                }
                preferred_groups.clone_from(&preferred);
                let opts = StartOptions {
                    node: cfg.node.id,
                    cluster: cfg.cluster.name.clone(),
                    initial,
                    write_timeout,
                    preferred,
                };
                let net = |group| cluster::raft_net::ClusterNetwork { group, transport: t.clone() };
                Groups::start(&store, &raft_log, &cfg.raft, opts, net, metrics.clone()).await?
            }
            None => {
                let opts = StartOptions {
                    node: cfg.node.id,
                    cluster: cfg.cluster.name.clone(),
                    initial: Initial::Single(String::new()),
                    write_timeout,
                    preferred: Vec::new(),
                };
                Groups::start(&store, &raft_log, &cfg.raft, opts, |_| LocalOnly, metrics.clone())
                    .await?
            }
        };
        let groups = Arc::new(groups);
        if let Some(parts) = &transport {
            parts.serve(&groups);
        }
        let auth = Arc::new(Auth::new(groups.clone(), &cfg, metrics.clone())?);
        let sessions = SessionStore::new(groups.clone());
        let moved = sessions.migrate_legacy(store.db()).await?;
        if moved > 0 {
            tracing::info!(
                message = "moved sessions, queues and retained messages into the shards",
                values = moved
            );
        }
        let router = Arc::new(Router::new(
            store.clone(),
            sessions.clone(),
            metrics.clone(),
            cfg.mqtt.durable_inflight,
            RetainLimits {
                messages: cfg.limits.max_retained_messages,
                bytes: cfg.limits.max_retained_bytes,
            },
        )?);
        if let Some(parts) = &transport {
            // Before any subscription exists: the routes are announced from the first.
            parts.routing.set_router(&router);
            parts.routing.set_groups(&groups);
            // Retained messages published on other nodes reach this node's index as its
            // replicas apply them.
            let r = Arc::downgrade(&router);
            groups.retained_feed().set(move |c| {
                if let Some(r) = r.upgrade() {
                    r.apply_retained(c);
                }
            });
            router.set_forwarder(Arc::new(parts.routing.clone()));
        }
        let shadows = Arc::new(Shadows::new(groups.clone(), cfg.shadow.clone(), metrics.clone()));
        let shadow_reader = shadows.clone();
        let jobs = Arc::new(Jobs::new(groups.clone(), metrics.clone(), cfg.jobs.minute_ms));
        let devices = Arc::new(Devices::new());
        let dctx = DeviceCtx {
            shadows,
            jobs: jobs.clone(),
            router: router.clone(),
            store: store.clone(),
            sessions,
            metrics: metrics.clone(),
            mqtt: Arc::new(cfg.mqtt.clone()),
            devices: devices.clone(),
            groups: groups.clone(),
            session_grace_ms: if cfg.cluster.enabled() { cfg.cluster.session_grace_ms } else { 0 },
            late_writes_ms: if cfg.cluster.enabled() { cfg.cluster.write_timeout_ms } else { 0 },
        };
        if let Some(parts) = &transport {
            let link = cluster::DeviceLink {
                transport: parts.transport.clone(),
                groups: groups.clone(),
                timeout: Duration::from_millis(cfg.cluster.rpc_timeout_ms),
                // A takeover (at most 5 s) and the session record's write.
                session_timeout: Duration::from_millis(cfg.cluster.write_timeout_ms + 5_000),
            };
            devices.set_cluster(groups.clone(), Arc::new(link), &router);
            let d = Arc::downgrade(&devices);
            parts.routing.on_peer_change(move |c| {
                let Some(d) = d.upgrade() else { return };
                match c {
                    cluster::liveness::Change::Down(node) => {
                        d.node_down(node);
                    }
                    cluster::liveness::Change::Restarted(node) => {
                        d.node_restarted(node);
                    }
                    cluster::liveness::Change::Up(_) => {}
                }
            });
        }
        let mut supervisors = Vec::with_capacity(groups.shards() as usize);
        for shard in 1..=groups.shards() {
            let (sup, _) = Actor::spawn(None, DeviceSupervisor, (dctx.clone(), shard))
                .await
                .map_err(|e| NodeError::Supervisor(e.to_string()))?;
            supervisors.push(sup);
        }
        // Restore wrote to the shards (crash-left clean sessions deleted, records marked
        // disconnected); clients may read their sessions only after that is applied.
        groups.settle_all().await;
        devices.set_supervisors(supervisors.clone());
        router.set_devices(devices.clone());

        let (shutdown, shutdown_rx) = watch::channel(false);
        let node_name = if cfg.node.name.is_empty() {
            format!("homeport-{}", cfg.node.id)
        } else {
            cfg.node.name.clone()
        };
        let rules = crate::rules::engine::RuleEngine::new(
            crate::rules::store::RuleStore::new(groups.clone()),
            metrics.registry(),
            node_name,
        );
        rules.set_shadows(shadow_reader);
        if cfg.rules.enabled {
            rules.spawn_reloader(shutdown_rx.clone());
            router.set_rules(rules.clone());
        }
        let ready = Arc::new(AtomicBool::new(false));
        // Set once the cluster side runs (after the listeners, whose addresses it needs).
        let cluster_ready: Arc<std::sync::OnceLock<Arc<Cluster>>> = Default::default();
        let admin_addr = match cfg.admin.bind {
            Some(addr) => Some(
                admin::serve(
                    addr,
                    AdminState {
                        metrics: metrics.clone(),
                        ready: ready.clone(),
                        devices: devices.clone(),
                        jobs: jobs.clone(),
                        registry: Arc::new(Registry::new(groups.clone())),
                        auth: auth.clone(),
                        require_token: cfg.admin.require_token,
                        shadow_pending_limit: cfg.shadow.max_pending_per_thing,
                        cluster: cluster_ready.clone(),
                        rules: rules.clone(),
                    },
                    shutdown_rx.clone(),
                )
                .await
                .map_err(NodeError::Admin)?,
            ),
            None => None,
        };
        let ctx = Arc::new(ConnCtx {
            cfg: cfg.clone(),
            router: router.clone(),
            devices: devices.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
            addresses: Default::default(),
            shutdown: shutdown_rx.clone(),
        });
        let (done_tx, conns_done) = mpsc::channel(1);
        let bound = bind_listeners(ctx, done_tx).await?;
        let cluster = transport.map(|parts| {
            let t = parts.transport.clone();
            let host = |a: Option<SocketAddr>| {
                a.map(|a| advertised(a, cfg.cluster.advertised().as_deref()))
            };
            let me = cluster::wire::MemberInfo {
                id: cfg.node.id,
                cluster_addr: t.advertised().to_string(),
                mqtt_addr: host(bound.tcp),
                admin_addr: host(admin_addr),
            };
            Cluster::start(
                parts,
                groups.clone(),
                cfg.cluster.clone(),
                me,
                preferred_groups,
                Duration::from_millis(cfg.raft.election_timeout_max_ms()),
                shutdown_rx.clone(),
            )
        });
        if let Some(c) = &cluster {
            cluster_ready.set(c.clone()).ok();
            c.set_devices(Arc::new(LeaderCalls {
                devices: Arc::downgrade(&devices),
                shadow_limit: cfg.shadow.max_pending_per_thing,
                jobs_limit: cfg.jobs.max_pending_per_thing,
                queue_limit: cfg.mqtt.outbound_queue,
            }));
            watch_leadership(
                groups.clone(),
                supervisors.clone(),
                devices.clone(),
                shutdown_rx.clone(),
            );
            watch_drain(c.clone(), devices.clone(), shutdown_rx.clone());
        }
        scheduler::spawn(
            jobs,
            devices.clone(),
            metrics.clone(),
            Duration::from_millis(cfg.jobs.scheduler_interval_ms),
            shutdown_rx.clone(),
        );
        if cfg.mqtt.sys_interval_secs > 0 {
            sys::spawn(
                router.clone(),
                metrics.clone(),
                Duration::from_secs(cfg.mqtt.sys_interval_secs),
                Instant::now(),
                shutdown_rx,
            );
        }
        ready.store(true, Ordering::Release);
        tracing::info!(
            message = "node started",
            node = %cfg.node.display_name(),
            id = cfg.node.id,
            mqtt = ?bound.tcp, tls = ?bound.tls, ws = ?bound.ws, admin = ?admin_addr,
            data_dir = %cfg.node.data_dir.display(),
        );
        Ok(Node {
            mqtt_addr: bound.tcp,
            tls_addr: bound.tls,
            ws_addr: bound.ws,
            admin_addr,
            metrics,
            devices,
            router,
            groups,
            auth,
            cluster,
            store,
            raft_log,
            supervisors,
            shutdown,
            conns_done,
            ready,
        })
    }

    /// Leaves the cluster's service before a stop (SIGTERM in a cluster): `/readyz`
    /// turns false, every group's leadership is handed to another voter (writes pause
    /// per group for about one hand-off, not an election timeout after the stop), then
    /// clients are sent to other nodes (DISCONNECT 0x9C with a Server Reference; 3.1.1
    /// clients closed; CONNECTs refused likewise), and their connections get `within`
    /// at most to close. A single node has nothing to leave to: this returns at once.
    /// Returns the connections still open at the end.
    pub async fn leave(&self, within: Duration) -> i64 {
        let Some(c) = &self.cluster else { return self.open_connections() };
        let deadline = tokio::time::Instant::now() + within;
        self.ready.store(false, Ordering::Release);
        let still_led = c.hand_off_all(within / 2).await;
        if still_led > 0 {
            tracing::warn!(
                message = "stopping while leading groups (no voter took them in time)",
                groups = still_led
            );
        }
        self.devices.set_leaving(true);
        let mut nudged = tokio::time::Instant::now();
        loop {
            // Connections that were between states at the first wake (attaching,
            // re-attaching) are woken again.
            if nudged.elapsed() >= Duration::from_millis(500) {
                self.devices.nudge_all();
                nudged = tokio::time::Instant::now();
            }
            let open = self.open_connections();
            // What the closed connections held goes to their actors' nodes first.
            let settled = open == 0 && self.devices.detaching() == 0;
            if settled || tokio::time::Instant::now() >= deadline {
                tracing::info!(
                    message = "left the cluster's service",
                    groups_led = still_led,
                    connections_open = open
                );
                return open;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Client connections open on every listener (before CONNECT included).
    fn open_connections(&self) -> i64 {
        use prometheus::core::Collector;
        self.metrics
            .connections
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum()
    }

    /// Stops the node in order and flushes storage.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        let t0 = Instant::now();
        let mut steps: Vec<(&str, u128)> = Vec::new();
        let mark =
            |steps: &mut Vec<(&str, u128)>, what| steps.push((what, t0.elapsed().as_millis()));
        self.ready.store(false, Ordering::Release);
        let _ = self.shutdown.send(true);
        self.devices.wake_connections();
        // Every connection task holds a sender; all gone means all detached.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.conns_done.recv()).await;
        // Detaches sent to other nodes' actors carry what the connections held.
        let detached = async {
            while self.devices.detaching() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), detached).await;
        mark(&mut steps, "connections");
        let drains = self
            .supervisors
            .iter()
            .map(|s| s.drain_children_and_wait(Some(Duration::from_secs(10))));
        futures_util::future::join_all(drains).await;
        let stops =
            self.supervisors.iter().map(|s| s.stop_and_wait(None, Some(Duration::from_secs(5))));
        futures_util::future::join_all(stops).await;
        mark(&mut steps, "actors");
        // Writes the actors submitted without waiting (records saved at detach) first.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.groups.settle_all()).await;
        mark(&mut steps, "settled");
        self.groups.shutdown().await;
        mark(&mut steps, "groups");
        if let Some(c) = &self.cluster {
            c.transport.shutdown();
        }
        self.store.flush().await?;
        self.raft_log.flush().await?;
        let closed = self.store.released();
        let log_closed = self.raft_log.released();
        let transport = self.cluster.as_ref().map(|c| c.transport.clone());
        drop(self);
        mark(&mut steps, "flushed");
        if let Some(t) = transport {
            t.released(Duration::from_secs(5)).await;
            mark(&mut steps, "transport");
        }
        // Every component holding the store has stopped; wait for sled to release the
        // data directory so it can be reopened at once (restarts, in-process tests).
        let both = async move {
            closed.await;
            log_closed.await;
        };
        if tokio::time::timeout(Duration::from_secs(5), both).await.is_err() {
            tracing::warn!(message = "storage still held after shutdown");
        }
        mark(&mut steps, "storage");
        // Milliseconds since the stop began at the end of each step.
        tracing::info!(message = "node stopped", steps = ?steps);
        Ok(())
    }
}
