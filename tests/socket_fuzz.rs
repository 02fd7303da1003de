//! Fuzzing a running broker through real sockets: many connections send sequences of
//! packets generated with our codec's types and encoder, then mutated (bit flips,
//! truncation, spliced and repeated bytes, corrupted lengths, garbage). Meanwhile a
//! healthy publisher and subscriber must keep round-tripping, and at the end the node
//! must still answer, its live heap (jemalloc's count, `homeport_memory_allocated_bytes`)
//! must be within a bound of where it started, and so must its resident memory.
//!
//! `HOMEPORT_SOCKET_FUZZ_SECS` sets the duration (default 15, the CI pass);
//! `HOMEPORT_SOCKET_FUZZ_BIN` runs another build of the broker (the release binary, for
//! long runs: what production runs). Longer runs' figures are in docs/security.md.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::process::Proc;
use common::raw::{publish, subscribe, Raw};
use homeport::mqtt::{
    self, Connect, Disconnect, LastWill, Packet, Properties, Protocol, PubResp, Publish, QoS,
    ReasonCode, SubOptions, Subscribe, Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// xorshift64*: a small, seedable generator (the seed is printed so a run can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const TOPICS: [&str; 8] =
    ["a", "a/b", "fuzz/+/x", "fuzz/#", "$SYS/x", "$aws/things/t/shadow/update", "", "a//b"];

fn string(r: &mut Rng) -> String {
    if r.chance(70) {
        return r.pick(&TOPICS).to_string();
    }
    let n = r.below(40) as usize;
    (0..n).map(|_| char::from(32 + r.below(95) as u8)).collect()
}

fn qos(r: &mut Rng) -> QoS {
    *r.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn props(r: &mut Rng) -> Properties {
    let mut p = Properties::default();
    if r.chance(30) {
        p.user_properties.push((string(r), string(r)));
    }
    if r.chance(20) {
        p.message_expiry_interval = Some(r.below(5) as u32);
    }
    if r.chance(20) {
        p.topic_alias = Some(r.below(70) as u16);
    }
    if r.chance(10) {
        p.subscription_identifiers.push(r.below(300) as u32);
    }
    p
}

fn packet(r: &mut Rng, v: Protocol) -> Packet {
    let pkid = r.below(5) as u16;
    match r.below(11) {
        0 => Packet::Connect(Box::new(Connect {
            protocol: v,
            clean_start: r.chance(50),
            keep_alive: r.below(5) as u16,
            client_id: string(r),
            will: r.chance(30).then(|| LastWill {
                topic: string(r),
                payload: Bytes::from(string(r)),
                qos: qos(r),
                retain: r.chance(50),
                properties: Properties::default(),
            }),
            username: r.chance(20).then(|| string(r)),
            password: r.chance(20).then(|| Bytes::from(string(r))),
            properties: Properties::default(),
        })),
        1..=4 => Packet::Publish(Publish {
            dup: r.chance(10),
            qos: qos(r),
            retain: r.chance(20),
            topic: string(r),
            pkid: pkid.max(1),
            properties: props(r),
            payload: Bytes::from(vec![b'p'; r.below(300) as usize]),
        }),
        5 => Packet::Subscribe(Subscribe {
            pkid: pkid.max(1),
            filters: (0..1 + r.below(3)).map(|_| (string(r), SubOptions::qos(qos(r)))).collect(),
            properties: props(r),
        }),
        6 => Packet::Unsubscribe(Unsubscribe {
            pkid: pkid.max(1),
            filters: vec![string(r)],
            properties: Properties::default(),
        }),
        7 => Packet::PubAck(PubResp::ok(pkid.max(1))),
        8 => Packet::PubRel(PubResp::ok(pkid.max(1))),
        9 => Packet::PingReq,
        _ => Packet::Disconnect(Disconnect {
            reason: *r.pick(&[ReasonCode::Success, ReasonCode::DisconnectWithWill]),
            properties: Properties::default(),
        }),
    }
}

/// Mutates encoded bytes in place.
fn mutate(r: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        return;
    }
    match r.below(6) {
        0 => {
            for _ in 0..1 + r.below(4) {
                let i = r.below(b.len() as u64) as usize;
                b[i] ^= 1 << r.below(8);
            }
        }
        1 => b.truncate(r.below(b.len() as u64) as usize),
        2 => {
            let i = r.below(b.len() as u64) as usize;
            let extra: Vec<u8> = b[i..].to_vec();
            b.extend_from_slice(&extra);
        }
        3 if b.len() > 1 => b[1] = r.next() as u8 | 0x80,
        4 => b.extend((0..r.below(64)).map(|_| r.next() as u8)),
        _ => b.insert(0, r.next() as u8),
    }
}

/// One fuzzing connection: maybe a valid CONNECT first, then a sequence of packets,
/// most of them mutated; what the broker answers is read and discarded.
async fn session(addr: std::net::SocketAddr, r: &mut Rng, sent: &AtomicU64) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return };
    let v = if r.chance(50) { Protocol::V5 } else { Protocol::V311 };
    let mut out = BytesMut::new();
    if r.chance(70) {
        let c = common::raw::connect_packet(
            &format!("fz-{}", r.below(50)),
            v,
            r.chance(50),
            Properties::default(),
        );
        mqtt::encode(&Packet::Connect(Box::new(c)), v, &mut out);
    }
    for _ in 0..1 + r.below(30) {
        let mut b = BytesMut::new();
        mqtt::encode(&packet(r, v), v, &mut b);
        let mut b = b.to_vec();
        if r.chance(40) {
            mutate(r, &mut b);
        }
        out.extend_from_slice(&b);
        sent.fetch_add(1, Ordering::Relaxed);
    }
    let _ = s.write_all(&out).await;
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(50 + r.below(200)), async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Page cache of each of the node's two sled databases, MiB: part of the live heap, which
/// may grow by this much twice as the caches fill. `HOMEPORT_SOCKET_FUZZ_CACHE_MIB`
/// overrides it (a tiny cache tells cache growth from other growth in a long run).
const CACHE_MIB: u64 = 16;

/// A gauge's value from the node's metrics, 0 if absent.
async fn gauge(admin: std::net::SocketAddr, name: &str) -> u64 {
    let metrics = common::http_get(admin, "/metrics").await.1;
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_broker_survives_mutated_packet_streams() {
    let secs: u64 =
        std::env::var("HOMEPORT_SOCKET_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let seed: u64 = std::env::var("HOMEPORT_SOCKET_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
                | 1
        });
    eprintln!("socket fuzz: {secs} s, HOMEPORT_SOCKET_FUZZ_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    // A small page cache per sled database, so that the bound below checks the rest of the
    // node's memory (the cache is a bound of its own, `node.cache_mib`).
    let cache_mib: u64 = std::env::var("HOMEPORT_SOCKET_FUZZ_CACHE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CACHE_MIB);
    let cache = cache_mib.to_string();
    let extra = ["--cache-mib", cache.as_str()];
    let node = match std::env::var_os("HOMEPORT_SOCKET_FUZZ_BIN") {
        Some(bin) => Proc::spawn_bin(std::path::Path::new(&bin), dir.path(), &extra),
        None => Proc::spawn_with(dir.path(), &extra),
    };
    let pid = node.child.id();
    let addr = node.mqtt;

    let mut sub = Raw::open_addr(addr).await;
    sub.connect("healthy-sub", Protocol::V5, Properties::default()).await;
    sub.send(&subscribe(1, &[("healthy/#", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let mut publ = Raw::open_addr(addr).await;
    publ.connect("healthy-pub", Protocol::V5, Properties::default()).await;
    let baseline = rss_kib(pid);
    let heap_baseline = gauge(node.admin, "homeport_memory_allocated_bytes").await / 1024;

    let sent = Arc::new(AtomicU64::new(0));
    let sessions = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for w in 0..16u64 {
        let (sent, sessions) = (sent.clone(), sessions.clone());
        workers.push(tokio::spawn(async move {
            let mut r = Rng(seed ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            while Instant::now() < deadline {
                session(addr, &mut r, &sent).await;
                sessions.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The healthy pair round-trips throughout.
    let mut n: u16 = 0;
    let mut peak = baseline;
    while Instant::now() < deadline {
        n = n % 60_000 + 1;
        publ.send(&publish("healthy/x", QoS::AtLeastOnce, n, "ok")).await;
        assert!(
            matches!(publ.recv().await, Some(Packet::PubAck(a)) if a.pkid == n),
            "publisher answered"
        );
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], b"ok");
                sub.send(&Packet::PubAck(PubResp::ok(p.pkid))).await;
            }
            other => panic!("healthy subscriber got {other:?}"),
        }
        let rss = rss_kib(pid);
        peak = peak.max(rss);
        if n.is_multiple_of(300) {
            // About once a minute: the curve tells a plateau from a leak. Resident memory
            // also grows while buffers allocated at start (sled's page tables, Raft's
            // queues) and the page caches are touched for the first time; the live heap
            // does not.
            let heap = gauge(node.admin, "homeport_memory_allocated_bytes").await / 1024;
            eprintln!(
                "socket fuzz: RSS {rss} KiB, live heap {heap} KiB after {} connections",
                sessions.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    let (status, _) = common::http_get(node.admin, "/healthz").await;
    assert_eq!(status, 200, "the node still answers");
    // Idle again, memory returns near where it began (sessions of fuzzed client ids may
    // stay, at most 50 of them).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let heap_after = gauge(node.admin, "homeport_memory_allocated_bytes").await / 1024;
    eprintln!(
        "socket fuzz: {} connections, {} packets, RSS {baseline} KiB before, {peak} KiB peak, {after} KiB after, live heap {heap_baseline} -> {heap_after} KiB, {} sessions kept, {} retained",
        sessions.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        gauge(node.admin, "homeport_sessions").await,
        gauge(node.admin, "homeport_retained_messages").await,
    );
    assert!(sessions.load(Ordering::Relaxed) > 0);
    assert!(heap_baseline > 0, "the node reports its live heap");
    assert!(
        heap_after < heap_baseline + (2 * cache_mib + 16) * 1024,
        "live heap stays bounded: {heap_baseline} -> {heap_after} KiB"
    );
    assert!(after < baseline + 64 * 1024, "memory stays bounded: {baseline} -> {after} KiB");
}
