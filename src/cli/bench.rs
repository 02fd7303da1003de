//! `homeport bench`: command-line options of the load generator and its output.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use homeport::loadgen::{self, Mode, Opts};
use homeport::mqtt::{Protocol, QoS};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BenchMode {
    /// Open connections at a rate and hold them for --duration.
    Conn,
    /// Publish only.
    Pub,
    /// Subscribe only.
    Sub,
    /// Subscribers and publishers in one process: latency, loss, duplicates.
    Pubsub,
    /// Devices updating their shadows (client id = thing): accepted updates per second and
    /// update-to-accepted latency; --inflight updates outstanding per device (above the
    /// broker's shadow.max_pending_per_thing, 10 by default, the excess gets 429).
    Shadow,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    mode: BenchMode,
    /// Broker addresses (host:port), comma separated; clients are spread over them.
    #[arg(long, short = 'H', value_delimiter = ',', default_value = "127.0.0.1:1883")]
    host: Vec<String>,
    /// Local addresses to bind, comma separated (e.g. 127.0.0.1,127.0.0.2).
    #[arg(long, value_delimiter = ',')]
    bind: Vec<IpAddr>,
    /// Clients (conn, pub, sub) or publishers (pubsub).
    #[arg(long, short = 'c', default_value_t = 1)]
    clients: usize,
    /// Subscribers (pubsub).
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 1000)]
    conn_rate: u32,
    /// Publish topic; %i is the client number.
    #[arg(long, short = 't', default_value = "bench/%i")]
    topic: String,
    /// Subscription filter (default: the topic); %i is the client number.
    #[arg(long)]
    filter: Option<String>,
    /// Subscribe through the shared subscription group $share/GROUP/...
    #[arg(long)]
    shared: Option<String>,
    #[arg(long, short = 'q', default_value_t = 0)]
    qos: u8,
    /// Payload size in bytes (16 or more carry the latency stamp).
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Messages per second per publisher; 0 is as fast as the in-flight window allows.
    #[arg(long, short = 'r', default_value_t = 0.0)]
    rate: f64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Messages per publisher (0: until --duration).
    #[arg(long, short = 'n', default_value_t = 0)]
    count: u64,
    /// Seconds to run.
    #[arg(long, short = 'd')]
    duration: Option<f64>,
    /// Stop once this many messages arrived in total.
    #[arg(long, default_value_t = 0)]
    expect: u64,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long, default_value = "5")]
    mqtt: String,
    /// Connect with TLS, trusting --ca.
    #[arg(long)]
    tls: bool,
    /// CA bundle (PEM) for --tls.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Server name to verify with --tls (default: localhost).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, default_value_t = 300)]
    keepalive: u16,
    /// Client id pattern; %i is the client number.
    #[arg(long, default_value = "bench-%i")]
    id: String,
    /// MQTT password; %i is the client number (per-device secrets).
    #[arg(long)]
    password: Option<String>,
    /// Session expiry in seconds (0: clean session).
    #[arg(long, default_value_t = 0)]
    session_expiry: u32,
    /// Subscribers subscribe, then disconnect (builds a persistent-session backlog).
    #[arg(long)]
    subscribe_only: bool,
    /// Follow CONNACK 0x9C/0x9D redirects (v5 Server Reference), at most 3 per connect
    /// and never back to a server already tried: a cluster sends each device to the
    /// node that serves its session.
    #[arg(long)]
    follow_redirects: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn opts(a: &BenchArgs) -> anyhow::Result<Opts> {
    let mut targets = Vec::new();
    for h in &a.host {
        let addr: SocketAddr = h
            .to_socket_addrs()
            .with_context(|| format!("--host {h}"))?
            .next()
            .ok_or_else(|| anyhow!("--host {h}: no address"))?;
        targets.push(addr);
    }
    let qos = QoS::from_u8(a.qos).ok_or_else(|| anyhow!("--qos must be 0, 1 or 2"))?;
    let protocol = match a.mqtt.as_str() {
        "3.1.1" | "4" | "311" => Protocol::V311,
        "5" | "5.0" => Protocol::V5,
        other => bail!("--mqtt {other}: use 3.1.1 or 5"),
    };
    let tls = if a.tls {
        let ca = a.ca.as_ref().ok_or_else(|| anyhow!("--tls needs --ca FILE"))?;
        let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(c.with_context(|| format!("--ca {}", ca.display()))?)?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(a.server_name.clone())
            .with_context(|| format!("--server-name {}", a.server_name))?;
        Some((Arc::new(cfg), name))
    } else {
        None
    };
    let mode = match a.mode {
        BenchMode::Conn => Mode::Conn,
        BenchMode::Pub => Mode::Pub,
        BenchMode::Sub => Mode::Sub,
        BenchMode::Pubsub => Mode::PubSub,
        BenchMode::Shadow => Mode::Shadow,
    };
    Ok(Opts {
        mode,
        targets,
        binds: a.bind.clone(),
        clients: a.clients,
        subscribers: a.subscribers,
        conn_rate: a.conn_rate,
        topic: a.topic.clone(),
        filter: a.filter.clone().unwrap_or_else(|| a.topic.clone()),
        shared: a.shared.clone(),
        qos,
        size: a.size,
        rate: a.rate,
        inflight: a.inflight,
        count: a.count,
        duration: a.duration.map(Duration::from_secs_f64),
        expect: a.expect,
        protocol,
        tls,
        keepalive: a.keepalive,
        id_prefix: a.id.clone(),
        password: a.password.clone(),
        session_expiry: a.session_expiry,
        subscribe_only: a.subscribe_only,
        progress: !a.quiet,
        follow_redirects: a.follow_redirects,
    })
}

pub fn main(a: BenchArgs) -> anyhow::Result<()> {
    let o = opts(&a)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("starting runtime")?;
    let report = rt.block_on(loadgen::run(o))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
