//! Clusters of `homeport serve` processes for tests: static members on loopback QUIC
//! with cluster certificates made by the library (as `ctl certs init` makes them), MQTT
//! and admin ports chosen by the OS.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use homeport::mqtt::{self, Packet, Properties, Protocol, ReasonCode};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cluster::free_udp_port;
use super::process::Proc;

pub struct ProcCluster {
    pub procs: Vec<Option<Proc>>,
    pub dirs: Vec<tempfile::TempDir>,
    pub certs: tempfile::TempDir,
    members: String,
    ports: Vec<u16>,
    extra: Vec<String>,
}

fn cert(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

impl ProcCluster {
    /// `n` nodes with `extra` arguments each (a config file, say).
    pub fn start(n: usize, extra: &[&str]) -> ProcCluster {
        let certs = tempfile::tempdir().unwrap();
        let ids: Vec<u64> = (1..=n as u64).collect();
        let g = homeport::cluster::certs::generate("homeport", &ids).unwrap();
        homeport::cluster::certs::write_dir(certs.path(), &g).unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = ProcCluster {
            procs: Vec::new(),
            dirs: Vec::new(),
            certs,
            members,
            ports,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..n {
            c.dirs.push(tempfile::tempdir().unwrap());
        }
        // Started in parallel: each waits for its own start line.
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let args = c.args(i);
                let dir = c.dirs[i].path().to_path_buf();
                std::thread::spawn(move || spawn(&dir, &args))
            })
            .collect();
        c.procs = handles.into_iter().map(|h| Some(h.join().expect("node starts"))).collect();
        c
    }

    fn args(&self, i: usize) -> Vec<String> {
        let id = i + 1;
        let mut a: Vec<String> = vec![
            "--node-id".into(),
            id.to_string(),
            "--cluster-bind".into(),
            format!("127.0.0.1:{}", self.ports[i]),
            "--initial-members".into(),
            self.members.clone(),
            "--cluster-ca".into(),
            cert(self.certs.path(), "ca.pem"),
            "--cluster-cert".into(),
            cert(self.certs.path(), &format!("node-{id}.pem")),
            "--cluster-key".into(),
            cert(self.certs.path(), &format!("node-{id}.key")),
            "--cluster-fault-injection".into(),
            "true".into(),
        ];
        a.extend(self.extra.iter().cloned());
        a
    }

    pub fn proc(&self, i: usize) -> &Proc {
        self.procs[i].as_ref().expect("node is running")
    }

    /// `kill -9` of node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.child.kill().expect("SIGKILL");
            p.child.wait().expect("reaped");
        }
    }

    /// SIGTERM to node `i`; waits until it has exited (at most 60 s, then SIGKILL and a
    /// failed test).
    pub fn stop(&mut self, i: usize) {
        let Some(mut p) = self.procs[i].take() else { return };
        p.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match p.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "node {i} exited with {status}");
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = p.child.kill();
                    panic!("node {i} did not stop within 60 s of SIGTERM");
                }
            }
        }
    }

    /// Starts node `i` again on its data directory (new MQTT and admin ports).
    pub fn restart(&mut self, i: usize) {
        assert!(self.procs[i].is_none(), "node {i} is running");
        let dir: PathBuf = self.dirs[i].path().to_path_buf();
        self.procs[i] = Some(spawn(&dir, &self.args(i)));
    }

    /// Running nodes, by index.
    pub fn running(&self) -> Vec<usize> {
        (0..self.procs.len()).filter(|i| self.procs[*i].is_some()).collect()
    }
}

fn spawn(dir: &Path, args: &[String]) -> Proc {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn_with(dir, &refs)
}

/// GET `path` on node `i`'s admin API as JSON.
pub async fn get_json(p: &Proc, path: &str) -> Option<serde_json::Value> {
    let (status, body) = super::http_get(p.admin, path).await;
    (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

/// Waits until `/api/cluster` on node `p` shows every group with a leader and `voters`
/// voters.
pub async fn wait_formed(p: &Proc, voters: usize, within: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = get_json(p, "/api/cluster").await {
            let groups = v["groups"].as_array().cloned().unwrap_or_default();
            let ok = !groups.is_empty()
                && groups.iter().all(|g| {
                    g["leader"].is_u64() && g["voters"].as_array().map(Vec::len) == Some(voters)
                })
                // Every node registered (a static formation elects leaders before the
                // members' records are written).
                && v["members"].as_array().is_some_and(|m| {
                    m.len() >= voters
                        && m.iter().all(|m| m["mqttAddr"].is_string() && m["reachable"] == true)
                });
            if ok {
                return v;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "cluster did not form in {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A v5 connection that follows CONNACK 0x9C redirects (at most 3) and never panics on
/// a broken socket: the load must survive the nodes it talks to dying.
pub struct Conn {
    pub s: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub async fn send(&mut self, p: &Packet) -> bool {
        let mut out = BytesMut::new();
        mqtt::encode(p, Protocol::V5, &mut out);
        self.s.write_all(&out).await.is_ok()
    }

    pub async fn recv(&mut self, within: Duration) -> Option<Packet> {
        tokio::time::timeout(within, async {
            loop {
                match mqtt::decode(&mut self.buf, Protocol::V5, 1 << 24, 1024) {
                    Ok(Some(d)) => return Some(d.packet),
                    Ok(None) => {}
                    Err(_) => return None,
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Connects `id` through any of `nodes`, following redirects, retrying for up to 15 s
    /// (a shard without a leader for a moment answers 0x88, as clients expect); the
    /// CONNACK's session present flag.
    pub async fn open(nodes: &[SocketAddr], id: &str, clean: bool) -> Option<(Conn, bool)> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(c) = Conn::open_once(nodes, id, clean).await {
                return Some(c);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    pub async fn open_once(nodes: &[SocketAddr], id: &str, clean: bool) -> Option<(Conn, bool)> {
        for start in nodes {
            let mut at = *start;
            for _ in 0..3 {
                let Ok(Ok(s)) =
                    tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(at)).await
                else {
                    break;
                };
                let mut c = Conn { s, buf: BytesMut::new() };
                let mut props = Properties::default();
                if !clean {
                    props.session_expiry_interval = Some(3600);
                }
                let connect = super::raw::connect_packet(id, Protocol::V5, clean, props);
                if !c.send(&Packet::Connect(Box::new(connect))).await {
                    break;
                }
                match c.recv(Duration::from_secs(10)).await {
                    Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success => {
                        return Some((c, a.session_present))
                    }
                    Some(Packet::ConnAck(a)) if a.reason == ReasonCode::UseAnotherServer => {
                        match a.properties.server_reference.and_then(|r| r.parse().ok()) {
                            Some(next) => at = next,
                            None => break,
                        }
                    }
                    _ => break,
                }
            }
        }
        None
    }
}
