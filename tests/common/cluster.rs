//! In-process clusters on loopback QUIC for integration tests: N nodes, each with its
//! own data directory and ports chosen by the OS (the cluster ports are picked first so
//! that a static member list can name them).
#![allow(dead_code)]

use std::time::Duration;

use homeport::config::{Config, MemberAddr};
use homeport::node::Node;

/// A free UDP port on 127.0.0.1 (bound and released; the OS does not hand it out again
/// at once).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.local_addr().expect("addr").port()
}

pub struct TestCluster {
    pub nodes: Vec<Option<Node>>,
    pub cfgs: Vec<Config>,
    pub dirs: Vec<tempfile::TempDir>,
}

/// The configuration of node `id` (1-based) of a test cluster.
pub fn node_config(dir: &std::path::Path, id: u64, port: u16) -> Config {
    let mut cfg = super::config(dir);
    cfg.node.id = id;
    cfg.cluster.bind = Some(format!("127.0.0.1:{port}").parse().unwrap());
    cfg.cluster.insecure_dev = true;
    cfg.cluster.fault_injection = true;
    cfg.cluster.placement_interval_ms = 200;
    cfg.cluster.write_timeout_ms = 3000;
    cfg.raft.shards = 4;
    cfg
}

/// Logs to stderr when `HOMEPORT_TEST_LOG` holds a filter (`homeport=debug`, say).
pub fn log() {
    if let Ok(f) = std::env::var("HOMEPORT_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(f))
            .with_test_writer()
            .try_init();
    }
}

impl TestCluster {
    /// `n` nodes formed from a static member list, started at once.
    pub async fn start_static(n: usize) -> TestCluster {
        TestCluster::start_static_with(n, |_| {}).await
    }

    /// [`TestCluster::start_static`] with each node's configuration changed by `f`.
    pub async fn start_static_with(n: usize, f: impl Fn(&mut Config)) -> TestCluster {
        log();
        let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
        let members: Vec<MemberAddr> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1).parse().unwrap())
            .collect();
        let mut dirs = Vec::new();
        let mut cfgs = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = node_config(dir.path(), i as u64 + 1, *port);
            cfg.cluster.initial_members = members.clone();
            f(&mut cfg);
            dirs.push(dir);
            cfgs.push(cfg);
        }
        let starts = cfgs.iter().cloned().map(Node::start);
        let nodes = futures_util::future::join_all(starts)
            .await
            .into_iter()
            .map(|r| Some(r.expect("node starts")))
            .collect();
        TestCluster { nodes, cfgs, dirs }
    }

    /// Node 1 alone (a fresh single node with the cluster on), then nodes 2..=n joining
    /// through it.
    pub async fn start_joined(n: usize, replication: usize) -> TestCluster {
        log();
        let mut c = TestCluster { nodes: Vec::new(), cfgs: Vec::new(), dirs: Vec::new() };
        c.add_first(replication).await;
        for _ in 1..n {
            c.add_joining(replication).await;
        }
        c
    }

    async fn add_first(&mut self, replication: usize) {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let mut cfg = node_config(dir.path(), 1, port);
        cfg.cluster.replication_factor = replication;
        // A one-member static formation: the first node of a cluster others join.
        cfg.cluster.initial_members = vec![format!("1@127.0.0.1:{port}").parse().unwrap()];
        let node = Node::start(cfg.clone()).await.expect("node 1 starts");
        self.nodes.push(Some(node));
        self.cfgs.push(cfg);
        self.dirs.push(dir);
    }

    /// Starts one more node that joins through node 1. Returns its index.
    pub async fn add_joining(&mut self, replication: usize) -> usize {
        let id = self.cfgs.len() as u64 + 1;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = node_config(dir.path(), id, free_udp_port());
        cfg.cluster.replication_factor = replication;
        let via = self.cfgs[0].cluster.bind.unwrap().to_string();
        cfg.cluster.join = vec![via];
        let node = Node::start(cfg.clone()).await.expect("joining node starts");
        self.nodes.push(Some(node));
        self.cfgs.push(cfg);
        self.dirs.push(dir);
        self.nodes.len() - 1
    }

    /// Stops node `i` cleanly.
    pub async fn stop(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await.expect("clean shutdown");
        }
    }

    /// Starts node `i` again on its data directory and configuration.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let n = Node::start(self.cfgs[i].clone()).await.expect("node restarts");
        self.nodes[i] = Some(n);
    }

    /// The running node that leads `group`, by index.
    pub fn leader_of(&self, group: u32) -> Option<usize> {
        self.nodes.iter().position(|n| n.as_ref().is_some_and(|n| n.groups.is_leader(group)))
    }

    /// Waits until every group has a leader that the running nodes agree on, with
    /// `voters` voters each (the nodes' own views).
    pub async fn wait_settled(&self, voters: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let running: Vec<&Node> = self.nodes.iter().flatten().collect();
            let ok = running[0].groups.ids().all(|g| {
                let leaders: Vec<_> = running.iter().filter(|n| n.groups.is_leader(g)).collect();
                let [leader] = leaders.as_slice() else { return false };
                // Every running member of the group knows who leads it.
                let id = leader.groups.node();
                let agreed = running.iter().all(|n| {
                    let m = n.groups.raft(g).unwrap().metrics().borrow().clone();
                    m.membership_config.membership().get_node(&n.groups.node()).is_none()
                        || m.current_leader == Some(id)
                });
                if !agreed {
                    return false;
                }
                let m = leader.groups.raft(g).unwrap().metrics().borrow().clone();
                m.membership_config.membership().voter_ids().count() == voters
                    && m.membership_config.membership().get_joint_config().len() == 1
            });
            // Every running node knows every member's addresses.
            let n = self.nodes.len();
            let registered = running.iter().all(|node| {
                let members = node.cluster.as_ref().unwrap().members();
                members.len() >= n.min(self.cfgs.len())
                    && members.iter().all(|m| m.info.mqtt_addr.is_some())
            });
            if ok && registered {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "cluster did not settle in {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Waits until every group has a leader known to every running node and `voters`
    /// voters.
    pub async fn wait_formed(&self, voters: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut ok = true;
            for n in self.nodes.iter().flatten() {
                for g in n.groups.ids() {
                    let m = n.groups.raft(g).unwrap().metrics().borrow().clone();
                    let v = m.membership_config.membership().voter_ids().count();
                    if m.current_leader.is_none() || v != voters {
                        ok = false;
                    }
                }
            }
            if ok {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "cluster did not form in {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                n.shutdown().await.expect("clean shutdown");
            }
        }
    }
}

impl TestCluster {
    /// Cuts node `i` off from every other node, both ways.
    pub fn isolate(&self, i: usize) {
        let me = self.cfgs[i].node.id;
        for (j, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let t = &n.cluster.as_ref().unwrap().transport;
            if j == i {
                for c in &self.cfgs {
                    if c.node.id != me {
                        t.faults().partition(c.node.id);
                    }
                }
            } else {
                t.faults().partition(me);
            }
        }
    }

    /// Removes every injected fault.
    pub fn heal(&self) {
        for n in self.nodes.iter().flatten() {
            n.cluster.as_ref().unwrap().transport.faults().heal();
        }
    }

    /// Waits until every running member of each group (as its leader's membership has
    /// them) has the same digest of the group's data at the same applied index.
    pub async fn wait_replicas_equal(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let running: Vec<&Node> = self.nodes.iter().flatten().collect();
            let mut ok = true;
            let mut detail = String::new();
            for g in running[0].groups.ids() {
                let Some(leader) = running.iter().find(|n| n.groups.is_leader(g)) else {
                    ok = false;
                    detail = format!("group {g} has no leader");
                    continue;
                };
                let m = leader.groups.raft(g).unwrap().metrics().borrow().clone();
                let members = m.membership_config.membership().clone();
                let ds: Vec<_> = running
                    .iter()
                    .filter(|n| members.get_node(&n.groups.node()).is_some())
                    .map(|n| n.groups.digest(g).unwrap())
                    .collect();
                if ds.windows(2).any(|w| w[0] != w[1]) {
                    ok = false;
                    detail = format!("group {g}: {ds:?}");
                }
            }
            if ok {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "replicas differ: {detail}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A thing name whose shard (of `shards`) is `shard`.
pub fn thing_in_shard(shard: u32, shards: u32, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|t| homeport::raft::shard_of(t, shards) == shard)
        .unwrap()
}
