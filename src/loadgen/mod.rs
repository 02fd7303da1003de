//! The load generator behind `homeport bench`, in the spirit of emqtt-bench: many MQTT
//! clients on one tokio runtime, written on our own codec.
//!
//! Owns: scenario options ([`Opts`]), starting clients at a connection rate over several
//! targets and local addresses, the once-a-second progress line and the final [`Report`].
//! Must not touch: broker internals; it only speaks MQTT over sockets, so it measures
//! mosquitto, rumqttd or any other broker the same way.

mod client;
mod stats;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use stats::{Quantiles, Report, Stats};

use crate::mqtt::{Protocol, QoS};
use client::Role;

/// Load-generator failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadgenError {
    #[error("i/o: {0}")]
    Io(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("invalid option {field}: {why}")]
    Option { field: &'static str, why: String },
    /// CONNACK 0x9C or 0x9D with a Server Reference (followed with `--follow-redirects`).
    #[error("redirected to {0}")]
    Redirect(String),
}

/// Scenario kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Open connections at a rate and hold them.
    Conn,
    /// Publishers only.
    Pub,
    /// Subscribers only (publishers elsewhere).
    Sub,
    /// Subscribers and publishers in one process: end-to-end latency, loss, duplicates.
    PubSub,
    /// Devices updating their shadows (`$aws/things/{id}/shadow/update`, reported state
    /// stamped with the send time), each waiting for `accepted` before the next update
    /// (up to `inflight`): accepted updates per second and update-to-accepted latency.
    Shadow,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Conn => "conn",
            Mode::Pub => "pub",
            Mode::Sub => "sub",
            Mode::PubSub => "pubsub",
            Mode::Shadow => "shadow",
        }
    }
}

/// One run of the load generator.
#[derive(Debug, Clone)]
pub struct Opts {
    pub mode: Mode,
    /// Broker addresses; clients are spread over them round robin.
    pub targets: Vec<SocketAddr>,
    /// Local addresses to bind, round robin (each holds about 28,000 ports).
    pub binds: Vec<IpAddr>,
    /// Clients (conn, pub, sub) or publishers (pubsub).
    pub clients: usize,
    /// Subscribers (pubsub).
    pub subscribers: usize,
    /// New connections per second.
    pub conn_rate: u32,
    /// Publish topic; `%i` is the client number.
    pub topic: String,
    /// Subscription filter; `%i` is the client number.
    pub filter: String,
    /// Subscribe as `$share/{group}/{filter}`.
    pub shared: Option<String>,
    pub qos: QoS,
    /// Payload bytes; 16 or more carry a send-time stamp for latency and loss.
    pub size: usize,
    /// Messages per second per publisher; 0 is as fast as the in-flight window allows.
    pub rate: f64,
    /// Unacknowledged QoS 1/2 publishes per publisher.
    pub inflight: usize,
    /// Messages per publisher; 0 is no limit.
    pub count: u64,
    /// Stop after this long (conn mode holds connections this long).
    pub duration: Option<Duration>,
    /// Stop once this many messages arrived in total (sub, pubsub).
    pub expect: u64,
    pub protocol: Protocol,
    /// TLS client configuration and the server name to check.
    pub tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    pub keepalive: u16,
    /// Client id pattern; `%i` is the client number.
    pub id_prefix: String,
    /// MQTT password; `%i` is the client number (a per-device secret or token).
    pub password: Option<String>,
    /// Session expiry in seconds; 0 is a clean session.
    pub session_expiry: u32,
    /// Subscribers subscribe and disconnect (to build a persistent-session backlog).
    pub subscribe_only: bool,
    /// Print a progress line each second on stderr.
    pub progress: bool,
    /// Follow CONNACK 0x9C/0x9D redirects (v5): at most 3 per connect, never back to a
    /// server already visited.
    pub follow_redirects: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            mode: Mode::PubSub,
            targets: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            binds: Vec::new(),
            clients: 1,
            subscribers: 1,
            conn_rate: 1000,
            topic: "bench/%i".into(),
            filter: "bench/%i".into(),
            shared: None,
            qos: QoS::AtMostOnce,
            size: 64,
            rate: 0.0,
            inflight: 64,
            count: 0,
            duration: None,
            expect: 0,
            protocol: Protocol::V5,
            tls: None,
            keepalive: 300,
            id_prefix: "bench-%i".into(),
            password: None,
            session_expiry: 0,
            follow_redirects: false,
            subscribe_only: false,
            progress: true,
        }
    }
}

impl Opts {
    fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |field, why: &str| Err(LoadgenError::Option { field, why: why.into() });
        if self.targets.is_empty() {
            return bad("host", "at least one target address is needed");
        }
        if self.clients == 0 && self.mode != Mode::Sub {
            return bad("clients", "must be at least 1");
        }
        if self.conn_rate == 0 {
            return bad("conn-rate", "must be at least 1");
        }
        if self.rate < 0.0 || !self.rate.is_finite() {
            return bad("rate", "must be a finite number >= 0");
        }
        if self.mode == Mode::Conn && self.duration.is_none() {
            return bad("duration", "conn mode holds connections for a duration");
        }
        Ok(())
    }
}

/// Runs a scenario to its end and returns the report.
pub async fn run(opts: Opts) -> Result<Report, LoadgenError> {
    opts.validate()?;
    let opts = Arc::new(opts);
    let stats = Arc::new(Stats::default());
    // Publishers stop first; subscribers get to drain what is in flight before they stop.
    let (stop_tx, stop) = watch::channel(false);
    let (pub_stop_tx, pub_stop) = watch::channel(false);
    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);

    let progress = opts.progress.then(|| tokio::spawn(progress_line(stats.clone(), opts.clone())));
    let mut subs = JoinSet::new();
    let mut pubs = JoinSet::new();
    let (n_subs, n_pubs) = match opts.mode {
        Mode::Conn => (0, 0),
        Mode::Pub => (0, opts.clients),
        Mode::Sub => (opts.clients, 0),
        Mode::PubSub => (opts.subscribers, opts.clients),
        Mode::Shadow => (0, opts.clients),
    };
    if opts.mode == Mode::Conn {
        let roles = (0..opts.clients).map(|i| Role { index: i, publish: None, subscribe: None });
        spawn_paced(&mut subs, roles, &opts, &stats, &stop).await;
    }
    // Subscribers first; publishers start once they are all subscribed.
    let roles = (0..n_subs).map(|i| Role {
        index: i,
        publish: None,
        subscribe: Some(opts.filter.replace("%i", &i.to_string())),
    });
    spawn_paced(&mut subs, roles, &opts, &stats, &stop).await;
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while stats.subscribed.load(Ordering::Relaxed)
            + stats.connect_failed.load(Ordering::Relaxed)
            < n_subs as u64
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if ready.is_err() {
        tracing::warn!(message = "not every subscriber was ready after 60 s; publishing anyway");
    }
    // Publishers are numbered after the subscribers so client ids do not collide.
    let roles = (0..n_pubs).map(|i| {
        let index = n_subs + i;
        let topic_index = if opts.mode == Mode::PubSub { i } else { index };
        let topic = match opts.mode {
            Mode::Shadow => {
                let thing = opts.id_prefix.replace("%i", &index.to_string());
                format!("$aws/things/{thing}/shadow/update")
            }
            _ => opts.topic.replace("%i", &topic_index.to_string()),
        };
        Role { index, publish: Some((topic, i as u32)), subscribe: None }
    });
    spawn_paced(&mut pubs, roles, &opts, &stats, &pub_stop).await;

    // The end: the deadline, or publishers done and subscribers drained (or the expected
    // count reached).
    let mut last_received = 0;
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // Finished tasks stay in a JoinSet until joined.
        while let Some(r) = pubs.try_join_next() {
            log_end(r);
        }
        while let Some(r) = subs.try_join_next() {
            log_end(r);
        }
        let received = stats.received.load(Ordering::Relaxed);
        if opts.expect > 0 && received >= opts.expect {
            break;
        }
        if received != last_received {
            last_received = received;
            quiet_since = Instant::now();
        }
        let pubs_done = n_pubs > 0 && pubs.is_empty();
        if pubs_done && (n_subs == 0 || quiet_since.elapsed() > Duration::from_secs(2)) {
            break;
        }
        if opts.subscribe_only && n_subs > 0 && subs.is_empty() {
            break;
        }
        if opts.mode != Mode::Conn && n_pubs == 0 && n_subs > 0 && subs.is_empty() {
            break;
        }
    }
    let _ = pub_stop_tx.send(true);
    let drain = async {
        while let Some(r) = pubs.join_next().await {
            log_end(r);
        }
        // Subscribers take what is still on its way until nothing arrives for a second.
        let mut last = stats.received.load(Ordering::Relaxed);
        while n_subs > 0 && !subs.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = stats.received.load(Ordering::Relaxed);
            if now == last || (opts.expect > 0 && now >= opts.expect) {
                break;
            }
            last = now;
        }
        let _ = stop_tx.send(true);
        while let Some(r) = subs.join_next().await {
            log_end(r);
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(15), drain).await;
    if let Some(p) = progress {
        p.abort();
    }
    let clients = n_subs + n_pubs + if opts.mode == Mode::Conn { opts.clients } else { 0 };
    Ok(stats.report(opts.mode.label(), clients, opts.shared.is_some()))
}

fn log_end(r: Result<Result<(), LoadgenError>, tokio::task::JoinError>) {
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(message = "bench client ended", error = %e),
        Err(e) => tracing::warn!(message = "bench client task failed", error = %e),
    }
}

/// Spawns one task per role at `conn_rate` per second.
async fn spawn_paced(
    set: &mut JoinSet<Result<(), LoadgenError>>,
    roles: impl Iterator<Item = Role>,
    opts: &Arc<Opts>,
    stats: &Arc<Stats>,
    stop: &watch::Receiver<bool>,
) {
    let start = Instant::now();
    for (n, role) in roles.enumerate() {
        let at = start + Duration::from_secs_f64(n as f64 / f64::from(opts.conn_rate));
        tokio::time::sleep_until(at).await;
        set.spawn(client::run(opts.clone(), role, stats.clone(), stop.clone()));
    }
}

async fn progress_line(stats: Arc<Stats>, opts: Arc<Opts>) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut sent, mut recv) = (0, 0);
    loop {
        tick.tick().await;
        let s = stats.sent.load(Ordering::Relaxed);
        let r = stats.received.load(Ordering::Relaxed);
        eprintln!(
            "[{:>4}s] {} connected {} failed {} | sent {}/s received {}/s | p99 {} µs",
            start.elapsed().as_secs(),
            opts.mode.label(),
            stats.connected.load(Ordering::Relaxed),
            stats.connect_failed.load(Ordering::Relaxed),
            s - sent,
            r - recv,
            stats.p99_us(),
        );
        (sent, recv) = (s, r);
    }
}
