//! Telemetry: tracing setup and the Prometheus registry of one node.
//!
//! Owns: metric definitions (`homeport_*`, `_total` for counters, low-cardinality labels,
//! never a client id) and log initialisation. Must not touch: broker state. Hot-path label
//! values are resolved once at start-up so counting a packet is a single atomic add.

mod memory;
mod metrics;

pub use memory::{allocator_stats, process_resident_bytes, MemoryCollector};
pub use metrics::{DropReason, Metrics};

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber. Safe to call once per process.
pub fn init_logging(cfg: &LogConfig) {
    // openraft logs every vote and membership step at info; unless the filter names it,
    // it logs at warn (its errors and warnings stay).
    let level = if cfg.level.contains("openraft") {
        cfg.level.clone()
    } else {
        format!("{},openraft=warn", cfg.level)
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let res = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = res {
        eprintln!("logging already initialised: {e}");
    }
}
