//! Shared helpers for integration tests: an in-process node on 127.0.0.1 ports chosen by
//! the OS, and small client helpers.
#![allow(dead_code)]

pub mod cluster;
pub mod process;
pub mod procs;
pub mod raw;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use homeport::config::{Config, TcpListenerConfig, WsListenerConfig};
use homeport::node::Node;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn config(dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.node.data_dir = dir.to_path_buf();
    cfg.listeners.tcp = Some(TcpListenerConfig { bind: "127.0.0.1:0".parse().unwrap() });
    cfg.listeners.ws =
        Some(WsListenerConfig { bind: "127.0.0.1:0".parse().unwrap(), path: "/mqtt".into() });
    cfg.admin.bind = Some("127.0.0.1:0".parse().unwrap());
    cfg.mqtt.sys_interval_secs = 0;
    // Most tests are about the broker, not identity: the quick-start setting.
    cfg.auth.allow_anonymous = true;
    cfg.admin.require_token = false;
    cfg
}

pub async fn start(dir: &Path) -> Node {
    Node::start(config(dir)).await.expect("node starts")
}

pub fn port(node: &Node) -> u16 {
    node.mqtt_addr.expect("tcp listener").port()
}

pub fn addr(node: &Node) -> SocketAddr {
    node.mqtt_addr.expect("tcp listener")
}

/// Polls a v3.1.1 event loop until `pred` returns Some, or panics after WAIT.
pub async fn until<T>(
    ev: &mut rumqttc::EventLoop,
    mut pred: impl FnMut(&rumqttc::Event) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = ev.poll().await.expect("connection stays up");
            if let Some(t) = pred(&e) {
                return t;
            }
        }
    })
    .await
    .expect("event arrives in time")
}

/// Same for a v5 event loop; connection errors are returned to the predicate as None.
pub async fn until5<T>(
    ev: &mut rumqttc::v5::EventLoop,
    mut pred: impl FnMut(Result<&rumqttc::v5::Event, &rumqttc::v5::ConnectionError>) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = ev.poll().await;
            if let Some(t) = pred(e.as_ref()) {
                return t;
            }
            if e.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await
    .expect("event arrives in time")
}

/// Scrapes one sample from /metrics.
pub async fn metric(node: &Node, name_and_labels: &str) -> f64 {
    let addr = node.admin_addr.expect("admin");
    let body = http_get(addr, "/metrics").await.1;
    body.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls a metric until it reaches `min` (metrics of a closing connection are updated
/// asynchronously); returns the last value seen.
pub async fn metric_reaches(node: &Node, name_and_labels: &str, min: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = metric(node, name_and_labels).await;
        if v >= min || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Minimal HTTP/1.1 GET over a raw socket: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "").await
}

/// Minimal HTTP/1.1 request with a body over a raw socket: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_as(addr, None, method, path, body).await
}

/// [`http`] as an API client of a cluster does it: a 503 (a leadership hand-off, as
/// the placement controller still does right after a cluster settled; the outcome of a
/// write answered so is unknown) is tried again, for up to 5 s. Returns the last answer
/// and whether an earlier try was answered 503 (a 409 "exists" may then be our own).
pub async fn http_retrying(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, bool) {
    let mut unknown = false;
    for _ in 0..50 {
        let (status, answer) = http(addr, method, path, body).await;
        if status != 503 {
            return (status, answer, unknown);
        }
        unknown = true;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{method} {path}: 503 for 5 s")
}

/// The same with `Authorization: Bearer {token}`.
pub async fn http_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin reachable");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
