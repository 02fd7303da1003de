//! `homeport ctl cluster`: members, groups, init, join, drain, undrain, remove, and the
//! transport's fault layer, through a node's admin API (`/api/cluster/...`).

use serde_json::{json, Value};

use super::ctl::{call, cell, table, CtlArgs};

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// This node, the members and every group, with moves in progress.
    Status,
    /// Members with their state, addresses, health and the groups they lead.
    Members,
    /// Every group: placement, voters, learners, leader, term, follower lag.
    Shards,
    /// Make this fresh node the first node of a new cluster.
    Init,
    /// Make this fresh node join the cluster of the member at ADDRESS (its cluster
    /// address, host:port).
    Join { address: String },
    /// Move a node's leaders and (where others can take them) replicas away.
    Drain { node: u64 },
    /// Make a draining node active again.
    Undrain { node: u64 },
    /// Remove a node for good (refused while a group would lose its majority).
    Remove { node: u64 },
    /// Transport fault injection on the node ctl talks to (needs
    /// cluster.fault_injection on that node).
    #[command(subcommand)]
    Faults(FaultCmd),
}

#[derive(clap::Subcommand)]
pub enum FaultCmd {
    /// The faults in force.
    List,
    /// Set the faults of the link to PEER (replacing earlier ones for it).
    Set {
        peer: u64,
        /// outbound, inbound or both.
        #[arg(long, default_value = "both")]
        direction: String,
        /// Cut the link.
        #[arg(long)]
        partition: bool,
        /// Share of frames dropped (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        drop: f64,
        /// Delay added to every frame, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Remove every fault.
    Heal,
}

fn ids(v: &Value) -> String {
    v.as_array().map(|a| a.iter().map(cell).collect::<Vec<_>>().join(",")).unwrap_or_default()
}

fn member_rows(members: &Value) -> Vec<Vec<String>> {
    members
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let health = match (m["reachable"].as_bool(), m["ready"].as_bool()) {
                (Some(true), Some(true)) => "ok",
                (Some(true), _) => "no-quorum",
                _ => "unreachable",
            };
            vec![
                cell(&m["id"]),
                cell(&m["state"]),
                health.to_string(),
                cell(&m["clusterAddr"]),
                cell(&m["mqttAddr"]),
                ids(&m["leads"]),
            ]
        })
        .collect()
}

fn group_rows(groups: &Value) -> Vec<Vec<String>> {
    groups
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let lag = g["followers"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .map(|f| format!("{}:{}", cell(&f["node"]), cell(&f["lag"])))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
                .join(",");
            vec![
                cell(&g["group"]),
                cell(&g["kind"]),
                cell(&g["leader"]),
                cell(&g["term"]),
                ids(&g["voters"]),
                ids(&g["learners"]),
                ids(&g["placement"]),
                cell(&g["applied"]),
                lag,
                if g["moving"].as_bool() == Some(true) { "moving".into() } else { String::new() },
            ]
        })
        .collect()
}

const MEMBER_HEAD: [&str; 6] = ["ID", "STATE", "HEALTH", "CLUSTER", "MQTT", "LEADS"];
const GROUP_HEAD: [&str; 10] =
    ["GROUP", "KIND", "LEADER", "TERM", "VOTERS", "LEARNERS", "PLACEMENT", "APPLIED", "LAG", ""];

/// Runs one cluster command: the API's JSON and the text to print.
pub fn run(a: &CtlArgs, c: &ClusterCmd) -> anyhow::Result<(Value, String)> {
    Ok(match c {
        ClusterCmd::Status => {
            let v = call(a, "GET", "/api/cluster", None)?;
            let head = format!(
                "cluster {} (asked node {}, {}), replication factor {}{}",
                cell(&v["cluster"]),
                cell(&v["node"]),
                if v["healthy"].as_bool() == Some(true) { "healthy" } else { "NO QUORUM" },
                cell(&v["replicationFactor"]),
                match ids(&v["moving"]) {
                    m if m.is_empty() => String::new(),
                    m => format!(", moving groups {m}"),
                }
            );
            let t = format!(
                "{head}\n\n{}\n{}",
                table(&MEMBER_HEAD, &member_rows(&v["members"])),
                table(&GROUP_HEAD, &group_rows(&v["groups"]))
            );
            (v, t)
        }
        ClusterCmd::Members => {
            let v = call(a, "GET", "/api/cluster/members", None)?;
            let t = table(&MEMBER_HEAD, &member_rows(&v));
            (v, t)
        }
        ClusterCmd::Shards => {
            let v = call(a, "GET", "/api/cluster/shards", None)?;
            let t = table(&GROUP_HEAD, &group_rows(&v));
            (v, t)
        }
        ClusterCmd::Init => {
            let v = call(a, "POST", "/api/cluster/init", None)?;
            let t = format!(
                "node {} is the first node of cluster {}",
                cell(&v["node"]),
                cell(&v["cluster"])
            );
            (v, t)
        }
        ClusterCmd::Join { address } => {
            let v = call(a, "POST", "/api/cluster/join", Some(&json!({"address": address})))?;
            (v, format!("joining through {address}; `ctl cluster status` shows progress"))
        }
        ClusterCmd::Drain { node } => {
            let v = call(a, "POST", &format!("/api/cluster/members/{node}/drain"), None)?;
            (v, format!("node {node} is draining"))
        }
        ClusterCmd::Undrain { node } => {
            let v = call(a, "POST", &format!("/api/cluster/members/{node}/undrain"), None)?;
            (v, format!("node {node} is active"))
        }
        ClusterCmd::Remove { node } => {
            let v = call(a, "DELETE", &format!("/api/cluster/members/{node}"), None)?;
            (v, format!("node {node} is removed"))
        }
        ClusterCmd::Faults(f) => faults(a, f)?,
    })
}

fn fault_rows(v: &Value) -> Vec<Vec<String>> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let side = |d: &Value| {
                let mut parts = Vec::new();
                if d["partition"].as_bool() == Some(true) {
                    parts.push("partition".to_string());
                }
                if d["drop"].as_f64().unwrap_or(0.0) > 0.0 {
                    parts.push(format!("drop {}", cell(&d["drop"])));
                }
                if d["delay_ms"].as_u64().unwrap_or(0) > 0 {
                    parts.push(format!("delay {} ms", cell(&d["delay_ms"])));
                }
                parts.join(", ")
            };
            vec![cell(&f["peer"]), side(&f["outbound"]), side(&f["inbound"])]
        })
        .collect()
}

fn faults(a: &CtlArgs, f: &FaultCmd) -> anyhow::Result<(Value, String)> {
    let v = match f {
        FaultCmd::List => call(a, "GET", "/api/cluster/faults", None)?,
        FaultCmd::Heal => call(a, "DELETE", "/api/cluster/faults", None)?,
        FaultCmd::Set { peer, direction, partition, drop, delay_ms } => {
            let fault = json!({"partition": partition, "drop": drop, "delay_ms": delay_ms});
            let none = json!({});
            let (outbound, inbound) = match direction.as_str() {
                "both" => (&fault, &fault),
                "outbound" => (&fault, &none),
                "inbound" => (&none, &fault),
                other => anyhow::bail!("--direction: outbound, inbound or both, not {other:?}"),
            };
            let body = json!({"peer": peer, "outbound": outbound, "inbound": inbound});
            call(a, "PUT", "/api/cluster/faults", Some(&body))?
        }
    };
    let t = table(&["PEER", "OUTBOUND", "INBOUND"], &fault_rows(&v));
    Ok((v, t))
}
