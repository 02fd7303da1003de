//! Typed, validated configuration tree.
//!
//! Owns: the config structs, their defaults (from functions, matching the embedded
//! `default.toml` that `homeport gen-config` prints), loading from TOML, and `validate()`,
//! which names the bad field. Must not touch: running components; `node` builds those from
//! a validated config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod cluster;
pub use cluster::{check_host_port, ClusterConfig, MemberAddr};

/// The documented default configuration.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The TOML does not parse or has an unknown or mistyped field.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A field has a value outside its range.
    #[error("invalid value for `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub mqtt: MqttConfig,
    pub listeners: ListenersConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub raft: RaftConfig,
    pub shadow: ShadowConfig,
    pub jobs: JobsConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub provisioning: ProvisioningConfig,
    pub cluster: ClusterConfig,
    pub rules: RulesConfig,
}

/// The rule engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Off: no rule runs on this node (rules can still be written and listed). For
    /// measuring the engine's cost; on by default.
    pub enabled: bool,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id (non-zero, unique in its cluster): its Raft id in every group and
    /// the name its cluster certificate carries. Recorded in the data directory.
    pub id: u64,
    /// Name in logs and `$SYS` topics; `homeport-{id}` when empty.
    pub name: String,
    pub data_dir: PathBuf,
    /// Page cache of each of the node's two sled databases (state machines and Raft log),
    /// in MiB. sled's own default is 1 GiB each, which a busy node fills slowly and never
    /// gives back; the cache is a bound on resident memory, not a preallocation.
    pub cache_mib: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { id: 1, name: String::new(), data_dir: PathBuf::from("./data"), cache_mib: 64 }
    }
}

impl NodeConfig {
    /// `name`, or `homeport-{id}`.
    pub fn display_name(&self) -> String {
        if self.name.trim().is_empty() {
            format!("homeport-{}", self.id)
        } else {
            self.name.clone()
        }
    }
}

/// What to do when an offline session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueuePolicy {
    DropOldest,
    RejectNew,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub max_packet_size: u32,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub maximum_qos: u8,
    pub retain_available: bool,
    pub wildcard_subscription_available: bool,
    pub shared_subscription_available: bool,
    pub subscription_identifiers_available: bool,
    pub server_keep_alive: Option<u16>,
    pub connect_timeout_secs: u64,
    pub max_session_expiry_secs: u32,
    pub max_user_properties: usize,
    pub max_subscriptions_per_client: usize,
    pub offline_queue_limit: usize,
    pub offline_queue_policy: QueuePolicy,
    pub durable_inflight: bool,
    pub outbound_queue: usize,
    pub actor_idle_secs: u64,
    /// How long the device actor of a *connected* session stays up after its last
    /// message. The connection carries the live session; the actor is needed only for
    /// control operations, and a short life keeps a connect storm from holding an actor
    /// per client.
    pub actor_idle_connected_ms: u64,
    /// Milliseconds a plain-TCP connection with nothing in progress waits before it
    /// hibernates: its working state (the pump loop's futures) is freed and a small wait
    /// for its socket, deliveries, shutdown and keep-alive takes its place. 0: never.
    pub hibernate_after_ms: u64,
    pub sys_interval_secs: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1 << 20,
            receive_maximum: 128,
            topic_alias_maximum: 64,
            maximum_qos: 2,
            retain_available: true,
            wildcard_subscription_available: true,
            shared_subscription_available: true,
            subscription_identifiers_available: true,
            server_keep_alive: None,
            connect_timeout_secs: 10,
            max_session_expiry_secs: 7 * 24 * 3600,
            max_user_properties: 64,
            max_subscriptions_per_client: 100_000,
            offline_queue_limit: 100_000,
            offline_queue_policy: QueuePolicy::DropOldest,
            durable_inflight: true,
            outbound_queue: 1024,
            actor_idle_secs: 30,
            actor_idle_connected_ms: 250,
            hibernate_after_ms: 2000,
            sys_interval_secs: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// Accept queue length of each listening socket (the kernel caps it at
    /// `net.core.somaxconn`). A connect storm that overflows it has SYNs dropped and
    /// retried a second later, which caps the connect rate.
    pub backlog: u32,
    pub tcp: Option<TcpListenerConfig>,
    pub tls: Option<TlsListenerConfig>,
    pub ws: Option<WsListenerConfig>,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        Self {
            backlog: 4096,
            tcp: Some(TcpListenerConfig { bind: ([0, 0, 0, 0], 1883).into() }),
            tls: None,
            ws: Some(WsListenerConfig { bind: ([0, 0, 0, 0], 8083).into(), path: "/mqtt".into() }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListenerConfig {
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    pub bind: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub require_client_cert: bool,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
}

fn default_handshake_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsListenerConfig {
    pub bind: SocketAddr,
    #[serde(default = "default_ws_path")]
    pub path: String,
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `None` turns the admin HTTP server off.
    pub bind: Option<SocketAddr>,
    /// Every API request but health, readiness, metrics and the OpenAPI document needs
    /// a bearer token. On unless configured; the quick-start file turns it off.
    pub require_token: bool,
    /// SHA-256 (hex) of the root token, which has the admin role. `homeport gen-token`
    /// makes one.
    pub root_token_sha256: Option<String>,
    /// Audit log entries kept (the oldest go first).
    pub audit_keep: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            bind: Some(([0, 0, 0, 0], 8080).into()),
            require_token: true,
            root_token_sha256: None,
            audit_keep: 100_000,
        }
    }
}

/// The Raft groups that hold durable device state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Shard groups; fixed when the data directory is first created.
    pub shards: u32,
    /// Build a snapshot (and compact the log) after this many applied entries.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log behind the latest snapshot (for slow followers).
    pub keep_logs: u64,
    /// Raft's heartbeat interval. openraft 0.9 times every append out after this long,
    /// entries included: a follower must receive, append, flush and answer within it.
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout; the upper bound (and openraft's leader
    /// lease) is 1.5 times this ([`RaftConfig::election_timeout_max_ms`]).
    pub election_timeout_ms: u64,
    /// Most log entries in one append (each entry holds up to 1024 commands).
    pub max_payload_entries: u64,
    /// Longest a snapshot chunk may take to send and install, in milliseconds.
    pub snapshot_timeout_ms: u64,
    /// Bytes of snapshot in one chunk.
    pub snapshot_chunk_bytes: u64,
}

impl RaftConfig {
    /// The election timeout's upper bound, which openraft 0.9 also takes as its leader
    /// lease: a follower that has a leader stands only after the lease plus a timeout
    /// drawn from [min, max], so a leader's death is noticed after 2.5 to 3 times
    /// `election_timeout_ms`.
    pub fn election_timeout_max_ms(&self) -> u64 {
        (self.election_timeout_ms * 3 / 2).max(self.election_timeout_ms + 1)
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            shards: 16,
            snapshot_after_logs: 10_000,
            keep_logs: 1_000,
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            max_payload_entries: 64,
            snapshot_timeout_ms: 10_000,
            snapshot_chunk_bytes: 1 << 20,
        }
    }
}

/// Jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// How often the scheduler rolls jobs out and checks timeouts, in milliseconds.
    pub scheduler_interval_ms: u64,
    /// The length of a minute in job timeouts and rollout rates, in milliseconds. 60000;
    /// only tests and drills shorten it.
    pub minute_ms: u64,
    /// Jobs requests of one thing waiting for or being served by its device actor; more
    /// get `RequestThrottled`.
    pub max_pending_per_thing: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self { scheduler_interval_ms: 1000, minute_ms: 60_000, max_pending_per_thing: 10 }
    }
}

/// Device shadows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// Largest shadow document (state and metadata, as stored), in bytes.
    pub max_document_bytes: usize,
    /// Named shadows one thing may have (the classic shadow not counted).
    pub max_named_shadows: usize,
    /// Shadow requests of one thing waiting for or being served by its device actor;
    /// more get 429 (AWS IoT allows 10 in flight per thing).
    pub max_pending_per_thing: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self { max_document_bytes: 8 * 1024, max_named_shadows: 64, max_pending_per_thing: 10 }
    }
}

/// Fleet provisioning by claim: the CA that issues device certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisioningConfig {
    /// PEM certificate of the issuing CA; with `ca_key`, turns fleet provisioning on.
    pub ca_cert: Option<PathBuf>,
    /// PEM private key of the issuing CA.
    pub ca_key: Option<PathBuf>,
}

/// Limits against abuse. Zero turns a rate or count limit off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// PUBLISH packets per second one connection may send; beyond it the connection
    /// stops reading until its budget refills (TCP pushes back on the client).
    pub max_publish_rate: u64,
    /// Inbound bytes per second of one connection, enforced the same way.
    pub max_inbound_bytes_rate: u64,
    /// Connections one source address may hold; more get CONNACK 0x97 (3.1.1: 0x05).
    pub max_connections_per_address: u32,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// Most levels (`/`-separated) in a topic name or filter.
    pub max_topic_levels: usize,
    /// Most bytes of user property keys and values in one packet (v5).
    pub max_user_property_bytes: usize,
    /// Most retained messages the node keeps (0: no limit). A retained PUBLISH to a new
    /// topic beyond it is delivered but not retained.
    pub max_retained_messages: usize,
    /// Most bytes (topics and payloads) of retained messages the node keeps (0: no limit).
    pub max_retained_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_publish_rate: 0,
            max_inbound_bytes_rate: 0,
            max_connections_per_address: 0,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_user_property_bytes: 8192,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1 << 30,
        }
    }
}

/// Where a client certificate's device identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertIdentity {
    /// The subject's common name.
    CommonName,
    /// The first DNS name of the subject alternative names.
    DnsName,
}

/// Device authentication and authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept clients that present no credentials, with every permission, as long as
    /// their client id has no registered credential. Off unless configured; the
    /// quick-start configuration (`default.toml`) turns it on.
    pub allow_anonymous: bool,
    /// PBKDF2 iterations for new device secrets and admin tokens.
    pub secret_iterations: u32,
    /// Longest lifetime (`exp - iat`) of a device JWT.
    pub jwt_max_lifetime_secs: u64,
    /// Clock difference tolerated when checking `iat` and `exp`.
    pub jwt_clock_skew_secs: u64,
    /// Which certificate field names the device.
    pub cert_identity: CertIdentity,
    /// Give every authenticated device the default policy (its own topics), on top of
    /// the policies attached to it.
    pub device_default_policy: bool,
    /// Failed connects one source address may make within `failure_window_secs` before
    /// its further connects are slowed down.
    pub max_failures_per_address: u32,
    pub failure_window_secs: u64,
    /// How long a slowed-down connect waits before it is looked at.
    pub failure_delay_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            secret_iterations: 64,
            jwt_max_lifetime_secs: 86_400,
            jwt_clock_skew_secs: 60,
            cert_identity: CertIdentity::CommonName,
            device_default_policy: true,
            max_failures_per_address: 10,
            failure_window_secs: 60,
            failure_delay_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

impl Config {
    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text)
    }

    /// Checks ranges the types cannot express; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        if self.node.id == 0 {
            return Err(invalid("node.id", "must not be 0"));
        }
        if self.node.cache_mib == 0 || self.node.cache_mib > 1 << 20 {
            return Err(invalid("node.cache_mib", "must be between 1 and 1048576"));
        }
        if self.listeners.backlog == 0 || self.listeners.backlog > 65535 {
            return Err(invalid("listeners.backlog", "must be between 1 and 65535"));
        }
        if m.max_packet_size < 64 || m.max_packet_size > crate::mqtt::MAX_PACKET_SIZE {
            return Err(invalid("mqtt.max_packet_size", "must be between 64 and 268435460"));
        }
        if m.receive_maximum == 0 {
            return Err(invalid("mqtt.receive_maximum", "must be at least 1"));
        }
        if m.maximum_qos > 2 {
            return Err(invalid("mqtt.maximum_qos", "must be 0, 1 or 2"));
        }
        if m.connect_timeout_secs == 0 {
            return Err(invalid("mqtt.connect_timeout_secs", "must be at least 1"));
        }
        if m.max_user_properties == 0 {
            return Err(invalid("mqtt.max_user_properties", "must be at least 1"));
        }
        if m.offline_queue_limit == 0 {
            return Err(invalid("mqtt.offline_queue_limit", "must be at least 1"));
        }
        if m.outbound_queue == 0 {
            return Err(invalid("mqtt.outbound_queue", "must be at least 1"));
        }
        let r = &self.raft;
        if r.shards == 0 || r.shards > 4096 {
            return Err(invalid("raft.shards", "must be between 1 and 4096"));
        }
        if r.snapshot_after_logs == 0 {
            return Err(invalid("raft.snapshot_after_logs", "must be at least 1"));
        }
        if r.heartbeat_ms == 0 || r.election_timeout_ms <= r.heartbeat_ms {
            return Err(invalid(
                "raft.election_timeout_ms",
                "must be larger than raft.heartbeat_ms, which must be at least 1",
            ));
        }
        if r.max_payload_entries == 0 {
            return Err(invalid("raft.max_payload_entries", "must be at least 1"));
        }
        if r.snapshot_timeout_ms < 100 {
            return Err(invalid("raft.snapshot_timeout_ms", "must be at least 100"));
        }
        if r.snapshot_chunk_bytes < 4096 || r.snapshot_chunk_bytes > 64 << 20 {
            return Err(invalid("raft.snapshot_chunk_bytes", "must be between 4096 and 67108864"));
        }
        if self.jobs.scheduler_interval_ms < 10 {
            return Err(invalid("jobs.scheduler_interval_ms", "must be at least 10"));
        }
        if self.jobs.minute_ms < 100 {
            return Err(invalid("jobs.minute_ms", "must be at least 100"));
        }
        if self.shadow.max_pending_per_thing == 0 {
            return Err(invalid("shadow.max_pending_per_thing", "must be at least 1"));
        }
        if self.jobs.max_pending_per_thing == 0 {
            return Err(invalid("jobs.max_pending_per_thing", "must be at least 1"));
        }
        if self.shadow.max_document_bytes < 256 {
            return Err(invalid("shadow.max_document_bytes", "must be at least 256"));
        }
        if m.max_subscriptions_per_client == 0 {
            return Err(invalid("mqtt.max_subscriptions_per_client", "must be at least 1"));
        }
        if let Some(ws) = &self.listeners.ws {
            if !ws.path.starts_with('/') {
                return Err(invalid("listeners.ws.path", "must start with '/'"));
            }
        }
        if let Some(tls) = &self.listeners.tls {
            if tls.require_client_cert && tls.client_ca.is_none() {
                return Err(invalid(
                    "listeners.tls.require_client_cert",
                    "needs listeners.tls.client_ca",
                ));
            }
            if tls.handshake_timeout_secs == 0 {
                return Err(invalid("listeners.tls.handshake_timeout_secs", "must be at least 1"));
            }
        }
        if self.listeners.tcp.is_none()
            && self.listeners.tls.is_none()
            && self.listeners.ws.is_none()
        {
            return Err(invalid("listeners", "at least one listener is required"));
        }
        let ad = &self.admin;
        if let Some(h) = &ad.root_token_sha256 {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                return Err(invalid("admin.root_token_sha256", "must be 64 lower-case hex digits"));
            }
        }
        if ad.require_token && ad.bind.is_some() && ad.root_token_sha256.is_none() {
            return Err(invalid(
                "admin.root_token_sha256",
                "required while admin.require_token is true (`homeport gen-token` makes one)",
            ));
        }
        if ad.audit_keep == 0 {
            return Err(invalid("admin.audit_keep", "must be at least 1"));
        }
        if self.provisioning.ca_cert.is_some() != self.provisioning.ca_key.is_some() {
            return Err(invalid("provisioning.ca_key", "ca_cert and ca_key go together"));
        }
        let l = &self.limits;
        if l.max_topic_length == 0 || l.max_topic_length > 65_535 {
            return Err(invalid("limits.max_topic_length", "must be between 1 and 65535"));
        }
        if l.max_topic_levels == 0 {
            return Err(invalid("limits.max_topic_levels", "must be at least 1"));
        }
        let a = &self.auth;
        if a.secret_iterations == 0 || a.secret_iterations > 1_000_000 {
            return Err(invalid("auth.secret_iterations", "must be between 1 and 1000000"));
        }
        if a.jwt_max_lifetime_secs == 0 {
            return Err(invalid("auth.jwt_max_lifetime_secs", "must be at least 1"));
        }
        if a.failure_window_secs == 0 {
            return Err(invalid("auth.failure_window_secs", "must be at least 1"));
        }
        self.cluster.validate(self.node.id)?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid("log.level", "not a valid tracing filter"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_validates_and_matches_code_defaults() {
        let parsed = Config::from_toml(DEFAULT_TOML).expect("default config is valid");
        // The quick-start file differs from the code defaults in one place only: it lets
        // clients in without credentials.
        let mut quick_start = Config::default();
        assert!(!quick_start.auth.allow_anonymous);
        assert!(quick_start.admin.require_token);
        quick_start.auth.allow_anonymous = true;
        quick_start.admin.require_token = false;
        assert_eq!(parsed, quick_start);
    }

    #[test]
    fn an_empty_file_is_the_default_and_must_name_a_root_token() {
        // Outside the quick start the admin API needs tokens, so a root token is required.
        let e = Config::from_toml("").unwrap_err();
        assert!(e.to_string().contains("admin.root_token_sha256"), "{e}");
        let h = "ab".repeat(32);
        let cfg = Config::from_toml(&format!("[admin]\nroot_token_sha256 = \"{h}\"\n")).unwrap();
        let mut want = Config::default();
        want.admin.root_token_sha256 = Some(h);
        assert_eq!(cfg, want);
    }

    #[test]
    fn bad_field_is_named() {
        let e = Config::from_toml("[mqtt]\nreceive_maximum = 0\n").unwrap_err();
        assert!(e.to_string().contains("mqtt.receive_maximum"), "{e}");
        let e = Config::from_toml("[mqtt]\nmaximum_qos = 3\n").unwrap_err();
        assert!(e.to_string().contains("mqtt.maximum_qos"), "{e}");
        let e = Config::from_toml("[mqtt]\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::from_toml("[mqtt]\nreceive_maximum = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("receive_maximum"), "{e}");
        let e =
            Config::from_toml("[listeners.ws]\nbind = \"0.0.0.0:1\"\npath = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("listeners.ws.path"), "{e}");
    }
}
