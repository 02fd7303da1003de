//! The `homeport` binary: `serve`, `ctl`, `gen-config`, `check-config`, `bench`.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use homeport::config::{Config, LogFormat, DEFAULT_TOML};
use homeport::node::Node;

#[derive(Parser)]
#[command(name = "homeport", version, about = "Clustered IoT device broker and runtime")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node (embedded default config unless --config is given).
    Serve(ServeArgs),
    /// Print the documented default configuration.
    GenConfig,
    /// Validate a configuration file; names the bad field.
    CheckConfig { file: PathBuf },
    /// Load generator (conn, pub, sub, pubsub, shadow) against any MQTT broker.
    Bench(cli::bench::BenchArgs),
    /// Talk to a node's admin API: things, groups, shadows, jobs, credentials,
    /// policies, certificates, tokens and the audit log.
    Ctl(cli::ctl::CtlArgs),
    /// Print a new admin root token and the `admin.root_token_sha256` line for it.
    GenToken,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "HOMEPORT_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides node.id (non-zero; this node's id in its cluster).
    #[arg(long, env = "HOMEPORT_NODE_ID")]
    node_id: Option<u64>,
    /// Overrides node.name (in logs and $SYS topics).
    #[arg(long, env = "HOMEPORT_NODE_NAME")]
    node_name: Option<String>,
    /// Overrides node.data_dir.
    #[arg(long, env = "HOMEPORT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides node.cache_mib (page cache of each sled database, MiB).
    #[arg(long, env = "HOMEPORT_CACHE_MIB")]
    cache_mib: Option<u64>,
    /// Overrides listeners.tcp.bind.
    #[arg(long, env = "HOMEPORT_MQTT_BIND")]
    mqtt_bind: Option<SocketAddr>,
    /// Overrides listeners.ws.bind.
    #[arg(long, env = "HOMEPORT_WS_BIND")]
    ws_bind: Option<SocketAddr>,
    /// Overrides admin.bind.
    #[arg(long, env = "HOMEPORT_ADMIN_BIND")]
    admin_bind: Option<SocketAddr>,
    /// Overrides log.format (text or json).
    #[arg(long, env = "HOMEPORT_LOG_FORMAT")]
    log_format: Option<String>,
    /// Overrides log.level (a tracing filter such as "info" or "homeport=debug").
    #[arg(long, env = "HOMEPORT_LOG_LEVEL")]
    log_level: Option<String>,
    /// Overrides cluster.name.
    #[arg(long, env = "HOMEPORT_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Overrides cluster.bind (UDP address of the cluster's QUIC listener; turns the
    /// cluster on).
    #[arg(long, env = "HOMEPORT_CLUSTER_BIND")]
    cluster_bind: Option<SocketAddr>,
    /// Overrides cluster.advertise (host:port peers dial).
    #[arg(long, env = "HOMEPORT_CLUSTER_ADVERTISE")]
    cluster_advertise: Option<String>,
    /// Overrides cluster.initial_members: ID@HOST:PORT,... (the same list on every node).
    #[arg(long, env = "HOMEPORT_INITIAL_MEMBERS", value_delimiter = ',')]
    initial_members: Option<Vec<homeport::config::MemberAddr>>,
    /// Overrides cluster.join: cluster addresses of running nodes (HOST:PORT,...).
    #[arg(long, env = "HOMEPORT_JOIN", value_delimiter = ',')]
    join: Option<Vec<String>>,
    /// Overrides cluster.replication_factor.
    #[arg(long, env = "HOMEPORT_REPLICATION_FACTOR")]
    replication_factor: Option<usize>,
    /// Overrides cluster.ca (PEM of the cluster CA).
    #[arg(long, env = "HOMEPORT_CLUSTER_CA")]
    cluster_ca: Option<PathBuf>,
    /// Overrides cluster.cert (this node's PEM certificate).
    #[arg(long, env = "HOMEPORT_CLUSTER_CERT")]
    cluster_cert: Option<PathBuf>,
    /// Overrides cluster.key (this node's PEM key).
    #[arg(long, env = "HOMEPORT_CLUSTER_KEY")]
    cluster_key: Option<PathBuf>,
    /// Sets cluster.insecure_dev (peers not authenticated; development only).
    #[arg(long, env = "HOMEPORT_CLUSTER_INSECURE_DEV")]
    cluster_insecure_dev: Option<bool>,
    /// Sets cluster.fault_injection (the admin API may inject transport faults).
    #[arg(long, env = "HOMEPORT_CLUSTER_FAULT_INJECTION")]
    cluster_fault_injection: Option<bool>,
}

fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::from_toml(DEFAULT_TOML)?,
    };
    if let Some(v) = args.node_id {
        cfg.node.id = v;
    }
    if let Some(v) = &args.node_name {
        cfg.node.name.clone_from(v);
    }
    let c = &mut cfg.cluster;
    if let Some(v) = &args.cluster_name {
        c.name.clone_from(v);
    }
    if let Some(v) = args.cluster_bind {
        c.bind = Some(v);
    }
    if let Some(v) = &args.cluster_advertise {
        c.advertise = Some(v.clone());
    }
    if let Some(v) = &args.initial_members {
        c.initial_members.clone_from(v);
    }
    if let Some(v) = &args.join {
        c.join.clone_from(v);
    }
    if let Some(v) = args.replication_factor {
        c.replication_factor = v;
    }
    if let Some(v) = &args.cluster_ca {
        c.ca = Some(v.clone());
    }
    if let Some(v) = &args.cluster_cert {
        c.cert = Some(v.clone());
    }
    if let Some(v) = &args.cluster_key {
        c.key = Some(v.clone());
    }
    if let Some(v) = args.cluster_insecure_dev {
        c.insecure_dev = v;
    }
    if let Some(v) = args.cluster_fault_injection {
        c.fault_injection = v;
    }
    if let Some(v) = &args.data_dir {
        cfg.node.data_dir.clone_from(v);
    }
    if let Some(v) = args.cache_mib {
        cfg.node.cache_mib = v;
    }
    if let Some(v) = args.mqtt_bind {
        cfg.listeners.tcp.get_or_insert(homeport::config::TcpListenerConfig { bind: v }).bind = v;
    }
    if let Some(v) = args.ws_bind {
        match &mut cfg.listeners.ws {
            Some(ws) => ws.bind = v,
            None => {
                cfg.listeners.ws =
                    Some(homeport::config::WsListenerConfig { bind: v, path: "/mqtt".into() })
            }
        }
    }
    if let Some(v) = args.admin_bind {
        cfg.admin.bind = Some(v);
    }
    if let Some(v) = &args.log_format {
        cfg.log.format = match v.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => anyhow::bail!("--log-format: expected text or json, got {other:?}"),
        };
    }
    if let Some(v) = &args.log_level {
        cfg.log.level.clone_from(v);
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = load(&args)?;
    homeport::telemetry::init_logging(&cfg.log);
    let leave = cfg.cluster.enabled().then_some(cfg.cluster.leave_timeout_ms);
    let node = Node::start(cfg).await.context("starting node")?;
    wait_for_signal().await;
    if let Some(ms) = leave {
        // Leaders and clients move to the other nodes first.
        tracing::info!(message = "leaving the cluster's service before stopping");
        node.leave(std::time::Duration::from_millis(ms)).await;
    }
    tracing::info!(message = "shutting down");
    node.shutdown().await.context("shutting down")?;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::GenConfig => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("{}: {e}", file.display())),
        },
        Cmd::Bench(args) => cli::bench::main(args),
        Cmd::GenToken => homeport::auth::tokens::new_root_token()
            .map(|(token, hash)| {
                println!("token (keep it secret; it is not stored): {token}");
                println!("config line for [admin]: root_token_sha256 = \"{hash}\"");
            })
            .map_err(anyhow::Error::from),
        Cmd::Ctl(args) => cli::ctl::main(args),
        Cmd::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting runtime")
            .and_then(|rt| rt.block_on(serve(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
