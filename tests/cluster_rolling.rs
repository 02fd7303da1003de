//! A rolling restart of `homeport serve` processes under load: each node in turn gets
//! SIGTERM (it hands its leaders off and sends its clients elsewhere with DISCONNECT
//! 0x9C), starts again on its data directory and rejoins, while persistent QoS 1
//! subscribers and a publisher keep going. Nothing acknowledged is lost, and no device
//! is disconnected more often than the nodes it was connected to were restarted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::procs::{wait_formed, Conn, ProcCluster};
use homeport::mqtt::{self, Packet, QoS, ReasonCode};
use parking_lot::Mutex;

const DEVICES: usize = 6;

type Addrs = Arc<Mutex<Vec<SocketAddr>>>;

/// Connects `id` (persistent), preferring `first` (a Server Reference) over the list.
async fn reconnect(addrs: &Addrs, first: Option<SocketAddr>, id: &str) -> (Conn, bool) {
    let mut list: Vec<SocketAddr> = first.into_iter().collect();
    list.extend(addrs.lock().iter().copied());
    for _ in 0..10 {
        if let Some(c) = Conn::open(&list, id, false).await {
            return c;
        }
        list = addrs.lock().clone();
    }
    panic!("{id} found no node to connect to")
}

struct Seen {
    /// When (since `began`) it connected, to which node, and why it left the last one.
    log: Vec<String>,
    disconnects: u32,
    /// Reconnects that found no session.
    fresh: u32,
    got: BTreeSet<u32>,
}

/// A persistent QoS 1 subscriber to `roll/{id}` that follows redirects until `stop`
/// and then 3 quiet seconds.
async fn subscriber(
    id: String,
    addrs: Addrs,
    stop: Arc<AtomicBool>,
    subscribed: tokio::sync::mpsc::Sender<()>,
    began: Instant,
) -> Seen {
    let mut seen = Seen { log: Vec::new(), disconnects: 0, fresh: 0, got: BTreeSet::new() };
    let (mut c, _) = reconnect(&addrs, None, &id).await;
    seen.log.push(format!("{:?} on {:?}", began.elapsed(), c.s.peer_addr().ok()));
    let sub = common::raw::subscribe(1, &[(&format!("roll/{id}"), QoS::AtLeastOnce)], None);
    assert!(c.send(&sub).await);
    assert!(matches!(c.recv(Duration::from_secs(10)).await, Some(Packet::SubAck(_))));
    let _ = subscribed.send(()).await;
    let mut quiet_since = Instant::now();
    loop {
        let asked = Instant::now();
        let next = match c.recv(Duration::from_secs(1)).await {
            Some(Packet::Publish(p)) => {
                let seq: u32 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                seen.got.insert(seq);
                c.send(&Packet::PubAck(mqtt::PubResp::ok(p.pkid))).await;
                quiet_since = Instant::now();
                continue;
            }
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, ReasonCode::UseAnotherServer, "{id}: {d:?}");
                seen.log.push(format!(
                    "{:?} sent to {:?} (last got {:?})",
                    began.elapsed(),
                    d.properties.server_reference,
                    seen.got.last()
                ));
                d.properties.server_reference.and_then(|r| r.parse().ok())
            }
            Some(_) => continue,
            // A timeout: nothing came for a second.
            None if asked.elapsed() >= Duration::from_millis(900) => {
                if stop.load(Ordering::Relaxed) && quiet_since.elapsed() >= Duration::from_secs(3) {
                    return seen;
                }
                continue;
            }
            // Closed without DISCONNECT.
            None => {
                seen.log.push(format!(
                    "{:?} closed (last got {:?})",
                    began.elapsed(),
                    seen.got.last()
                ));
                None
            }
        };
        seen.disconnects += 1;
        let (conn, present) = reconnect(&addrs, next, &id).await;
        seen.log.push(format!(
            "{:?} on {:?}, present {present}",
            began.elapsed(),
            conn.s.peer_addr().ok()
        ));
        if !present {
            seen.fresh += 1;
        }
        c = conn;
    }
}

/// Publishes numbered QoS 1 messages to the devices in turn until `stop`; what was
/// acknowledged with 0x00, per device, and how many got 0x10 (no subscribers); when
/// (since `began`) and through which node each was acknowledged.
async fn publisher(
    addrs: Addrs,
    stop: Arc<AtomicBool>,
    began: Instant,
) -> (Vec<BTreeSet<u32>>, u32, BTreeMap<u32, String>) {
    let mut acked = vec![BTreeSet::new(); DEVICES];
    let mut acked_at = BTreeMap::new();
    let mut unmatched = 0;
    let mut seq: u32 = 0;
    let mut next = None;
    while !stop.load(Ordering::Relaxed) {
        let list: Vec<SocketAddr> = next.take().into_iter().chain(addrs.lock().clone()).collect();
        let Some((mut p, _)) = Conn::open(&list, "roll-publisher", true).await else { continue };
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let k = seq as usize % DEVICES;
            let pkid = (seq % 60_000) as u16 + 1;
            let pkt = common::raw::publish(
                &format!("roll/dev-{k}"),
                QoS::AtLeastOnce,
                pkid,
                &seq.to_string(),
            );
            if !p.send(&pkt).await {
                break;
            }
            match p.recv(Duration::from_secs(10)).await {
                Some(Packet::PubAck(a)) if a.pkid == pkid && a.reason == ReasonCode::Success => {
                    acked[k].insert(seq);
                    acked_at.insert(
                        seq,
                        format!("{:?} via {:?}", began.elapsed(), p.s.peer_addr().ok()),
                    );
                }
                Some(Packet::PubAck(a)) if a.reason == ReasonCode::NoMatchingSubscribers => {
                    unmatched += 1
                }
                Some(Packet::PubAck(_)) => {}
                Some(Packet::Disconnect(d)) => {
                    next = d.properties.server_reference.and_then(|r| r.parse().ok());
                    break;
                }
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    (acked, unmatched, acked_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_loses_nothing_acknowledged() {
    let mut c = ProcCluster::start(3, &[]);
    wait_formed(c.proc(0), 3, Duration::from_secs(60)).await;
    let addrs: Addrs = Arc::new(Mutex::new((0..3).map(|i| c.proc(i).mqtt).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let (subscribed, mut ready) = tokio::sync::mpsc::channel(DEVICES);
    let subs: Vec<_> = (0..DEVICES)
        .map(|k| {
            let (id, addrs, stop) = (format!("dev-{k}"), addrs.clone(), stop.clone());
            tokio::spawn(subscriber(id, addrs, stop, subscribed.clone(), began))
        })
        .collect();
    // Every subscription is in place before the first publish.
    for _ in 0..DEVICES {
        ready.recv().await.expect("a subscriber subscribed");
    }
    let publ = tokio::spawn(publisher(addrs.clone(), stop.clone(), began));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        let t = Instant::now();
        c.stop(i);
        let stopped = t.elapsed();
        c.restart(i);
        *addrs.lock() = c.running().into_iter().map(|j| c.proc(j).mqtt).collect();
        wait_formed(c.proc(i), 3, Duration::from_secs(60)).await;
        eprintln!(
            "node {}: stopped in {stopped:?}, serving again after {:?}; {:?} since the start",
            i + 1,
            t.elapsed(),
            began.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, unmatched, acked_at) = publ.await.unwrap();
    let total: usize = acked.iter().map(BTreeSet::len).sum();
    assert!(total > 200, "the publisher got few acknowledgements: {total}");
    let mut report = BTreeMap::new();
    for (k, s) in subs.into_iter().enumerate() {
        let seen = s.await.unwrap();
        let lost: Vec<_> = acked[k].difference(&seen.got).take(10).collect();
        assert!(
            lost.is_empty(),
            "dev-{k}: acknowledged and lost: {:?}; received before them: {:?}; its connections: {:#?}",
            lost.iter().map(|l| (l, acked_at.get(l))).collect::<Vec<_>>(),
            lost.iter().map(|l| seen.got.range(..**l).next_back().copied()).collect::<Vec<_>>(),
            seen.log
        );
        assert!(seen.disconnects <= 3, "dev-{k} disconnected {} times", seen.disconnects);
        assert_eq!(seen.fresh, 0, "dev-{k} lost its session");
        report.insert(k, (acked[k].len(), seen.got.len(), seen.disconnects));
    }
    eprintln!("acknowledged {total}, unmatched {unmatched}; per device (acked, received, disconnects): {report:?}");
}
