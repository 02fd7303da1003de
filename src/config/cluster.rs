//! The `[cluster]` section: whether this node is part of a cluster, how it reaches its
//! peers (QUIC on `bind`, advertised as `advertise`), how the cluster forms (static
//! `initial_members`, or `join` a running node), the replication factor and the cluster
//! certificates. Without `bind` the node is a single node, exactly as before the cluster
//! existed.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// One entry of `cluster.initial_members`: `ID@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAddr {
    pub id: u64,
    /// `host:port` as written (a name is resolved when it is dialed).
    pub addr: String,
}

impl std::str::FromStr for MemberAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (id, addr) =
            s.split_once('@').ok_or_else(|| format!("{s:?}: expected ID@HOST:PORT"))?;
        let id: u64 = id.parse().map_err(|_| format!("{s:?}: node id {id:?} is not a number"))?;
        if id == 0 {
            return Err(format!("{s:?}: node id must not be 0"));
        }
        check_host_port(addr).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(MemberAddr { id, addr: addr.to_string() })
    }
}

impl std::fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

impl Serialize for MemberAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemberAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `host:port` with a non-empty host and a port.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s.rsplit_once(':').ok_or("expected HOST:PORT")?;
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("port {port:?} is not a number between 1 and 65535")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The cluster's name: checked when nodes meet and recorded in the data directory,
    /// which then refuses to serve another cluster. Also part of every node certificate's
    /// name, so a certificate made for one cluster is not accepted by another.
    pub name: String,
    /// UDP address of the QUIC listener. `None`: this node is a single node (no peers).
    pub bind: Option<SocketAddr>,
    /// `host:port` other nodes dial to reach this one. Defaults to `bind`, which must
    /// then not be an unspecified address such as 0.0.0.0.
    pub advertise: Option<String>,
    /// Static formation: every member of the first configuration, the same list on every
    /// node (this node included). A fresh data directory initializes its groups from it.
    pub initial_members: Vec<MemberAddr>,
    /// Running nodes to join through (their cluster addresses); tried in turn.
    pub join: Vec<String>,
    /// Voters of each Raft group (capped by the number of nodes).
    pub replication_factor: usize,
    /// PEM file of the cluster CA (`homeport ctl certs init` makes one).
    pub ca: Option<PathBuf>,
    /// PEM certificate of this node, issued by the cluster CA for `node-{id}.{name}`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Run without cluster certificates: every peer is trusted. Development only; logged
    /// loudly at start.
    pub insecure_dev: bool,
    /// Lets the admin API (`/api/cluster/faults`) switch on the transport's fault
    /// injection (drop, delay, partition per peer). For tests and chaos drills.
    pub fault_injection: bool,
    /// How long a request to a peer (other than Raft's, which openraft times) may take.
    pub rpc_timeout_ms: u64,
    /// How long a durable write waits for its group to commit it before the caller gets
    /// "unavailable" (a minority side, a group without a leader).
    pub write_timeout_ms: u64,
    /// How often the placement controller (on the meta group's leader) and each group
    /// leader's membership reconciler look at their work.
    pub placement_interval_ms: u64,
    /// When a shard's leadership moves, the sessions that were connected to the old
    /// leader are redirected; their wills wait this much longer than their delay, so a
    /// device that reconnects in time sends none.
    pub session_grace_ms: u64,
    /// A peer that has not answered for this long is declared down: the sessions of
    /// its connections served here detach as lost (wills fire, clean sessions end,
    /// persistent ones go offline), connections here served by its device actors
    /// close, and its routes are dropped until it answers again. More than
    /// `rpc_timeout_ms` (peers are asked every second, and one slow answer must not
    /// count as a death).
    pub node_down_ms: u64,
    /// At SIGTERM a cluster node first hands its groups' leaderships off (at most half
    /// of this) and sends its clients to other nodes (DISCONNECT 0x9C with a Server
    /// Reference), waiting at most this long in all before it stops.
    pub leave_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: "homeport".into(),
            bind: None,
            advertise: None,
            initial_members: Vec::new(),
            join: Vec::new(),
            replication_factor: 3,
            ca: None,
            cert: None,
            key: None,
            insecure_dev: false,
            fault_injection: false,
            rpc_timeout_ms: 2000,
            write_timeout_ms: 5000,
            placement_interval_ms: 1000,
            session_grace_ms: 5000,
            node_down_ms: 5000,
            leave_timeout_ms: 20_000,
        }
    }
}

impl ClusterConfig {
    /// Whether this node runs the cluster transport.
    pub fn enabled(&self) -> bool {
        self.bind.is_some()
    }

    /// The address peers dial (`advertise`, else `bind`).
    pub fn advertised(&self) -> Option<String> {
        match (&self.advertise, self.bind) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(b)) => Some(b.to_string()),
            (None, None) => None,
        }
    }

    /// Checks `name`: a DNS label, since node certificates are named `node-{id}.{name}`.
    pub fn check_name(&self) -> Result<(), String> {
        let n = &self.name;
        let label_ok = !n.is_empty()
            && n.len() <= 63
            && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if label_ok {
            Ok(())
        } else {
            Err("1 to 63 lower-case letters, digits or '-', not starting or ending with '-'".into())
        }
    }

    pub(super) fn validate(&self, node_id: u64) -> Result<(), ConfigError> {
        self.check_name().map_err(|e| invalid("cluster.name", e))?;
        if self.replication_factor == 0 || self.replication_factor > 7 {
            return Err(invalid("cluster.replication_factor", "must be between 1 and 7"));
        }
        if let Some(a) = &self.advertise {
            check_host_port(a).map_err(|e| invalid("cluster.advertise", e))?;
        }
        for j in &self.join {
            check_host_port(j).map_err(|e| invalid("cluster.join", format!("{j:?}: {e}")))?;
        }
        if self.rpc_timeout_ms < 10 {
            return Err(invalid("cluster.rpc_timeout_ms", "must be at least 10"));
        }
        if self.write_timeout_ms < 10 {
            return Err(invalid("cluster.write_timeout_ms", "must be at least 10"));
        }
        if self.node_down_ms <= self.rpc_timeout_ms {
            return Err(invalid(
                "cluster.node_down_ms",
                format!("must be more than cluster.rpc_timeout_ms ({})", self.rpc_timeout_ms),
            ));
        }
        if self.placement_interval_ms < 10 {
            return Err(invalid("cluster.placement_interval_ms", "must be at least 10"));
        }
        let Some(bind) = self.bind else {
            if !self.initial_members.is_empty() || !self.join.is_empty() {
                return Err(invalid(
                    "cluster.bind",
                    "required with cluster.initial_members or cluster.join",
                ));
            }
            return Ok(());
        };
        if self.advertise.is_none() && bind.ip().is_unspecified() {
            return Err(invalid(
                "cluster.advertise",
                format!("required when cluster.bind is {bind} (peers cannot dial it)"),
            ));
        }
        if !self.initial_members.is_empty() && !self.join.is_empty() {
            return Err(invalid(
                "cluster.join",
                "use either cluster.initial_members or cluster.join",
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for m in &self.initial_members {
            if !ids.insert(m.id) {
                return Err(invalid(
                    "cluster.initial_members",
                    format!("node id {} is listed twice", m.id),
                ));
            }
        }
        if !self.initial_members.is_empty() && !ids.contains(&node_id) {
            return Err(invalid(
                "cluster.initial_members",
                format!("must list this node (node.id = {node_id})"),
            ));
        }
        let certs = [&self.ca, &self.cert, &self.key];
        let given = certs.iter().filter(|c| c.is_some()).count();
        if given != 0 && given != 3 {
            return Err(invalid(
                "cluster.cert",
                "cluster.ca, cluster.cert and cluster.key go together",
            ));
        }
        if given == 0 && !self.insecure_dev {
            return Err(invalid(
                "cluster.cert",
                "a cluster node needs cluster.ca, cluster.cert and cluster.key \
                 (`homeport ctl certs init`), or cluster.insecure_dev = true for development",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ClusterConfig {
        ClusterConfig {
            bind: Some("127.0.0.1:7001".parse().unwrap()),
            insecure_dev: true,
            ..Default::default()
        }
    }

    #[test]
    fn member_addresses_parse_and_name_the_fault() {
        let m: MemberAddr = "3@node-3:7003".parse().unwrap();
        assert_eq!(m, MemberAddr { id: 3, addr: "node-3:7003".into() });
        assert_eq!(m.to_string(), "3@node-3:7003");
        for bad in ["3", "x@h:1", "0@h:1", "3@h", "3@:1", "3@h:0", "3@h:99999"] {
            assert!(bad.parse::<MemberAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: &ClusterConfig| match c.validate(1) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an error, got {other:?}"),
        };
        assert!(ClusterConfig::default().validate(1).is_ok());
        assert!(base().validate(1).is_ok());
        let mut c = base();
        c.name = "Bad_Name".into();
        assert_eq!(field(&c), "cluster.name");
        let mut c = base();
        c.insecure_dev = false;
        assert_eq!(field(&c), "cluster.cert");
        let mut c = base();
        c.bind = Some("0.0.0.0:7001".parse().unwrap());
        assert_eq!(field(&c), "cluster.advertise");
        let mut c = base();
        c.initial_members = vec!["2@h:1".parse().unwrap()];
        assert_eq!(field(&c), "cluster.initial_members");
        c.initial_members.push("1@h:2".parse().unwrap());
        assert!(c.validate(1).is_ok());
        c.join = vec!["h:1".into()];
        assert_eq!(field(&c), "cluster.join");
        let c = ClusterConfig { join: vec!["h:1".into()], ..Default::default() };
        assert_eq!(field(&c), "cluster.bind");
        let mut c = base();
        c.replication_factor = 0;
        assert_eq!(field(&c), "cluster.replication_factor");
    }
}
