//! The load generator against an in-process node: counts, loss and duplicates add up.

mod common;

use std::time::Duration;

use common::*;
use homeport::loadgen::{self, Mode, Opts};
use homeport::mqtt::{Protocol, QoS};

fn opts(node: &homeport::node::Node, mode: Mode) -> Opts {
    Opts { mode, targets: vec![addr(node)], progress: false, ..Opts::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_counts_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    for (qos, protocol) in [(QoS::AtLeastOnce, Protocol::V5), (QoS::ExactlyOnce, Protocol::V311)] {
        let r = loadgen::run(Opts {
            clients: 3,
            subscribers: 3,
            qos,
            protocol,
            count: 300,
            inflight: 16,
            ..opts(&node, Mode::PubSub)
        })
        .await
        .unwrap();
        assert_eq!(r.connected, 6);
        assert_eq!(r.sent, 900);
        assert_eq!(r.acked, 900);
        assert_eq!(r.received, 900, "{r}");
        assert_eq!((r.lost, r.duplicates), (0, 0));
        assert_eq!(r.latency_us.count, 900);
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_shared_and_conn_modes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    // One publisher, four subscribers on the same topic: each message four times.
    let r = loadgen::run(Opts {
        clients: 1,
        subscribers: 4,
        topic: "fan/x".into(),
        filter: "fan/+".into(),
        qos: QoS::AtLeastOnce,
        count: 100,
        ..opts(&node, Mode::PubSub)
    })
    .await
    .unwrap();
    assert_eq!((r.received, r.lost, r.duplicates), (400, 0, 0));

    // A shared group: each message once, to one of the members.
    let r = loadgen::run(Opts {
        clients: 4,
        subscribers: 3,
        topic: "sh/%i".into(),
        filter: "sh/#".into(),
        shared: Some("g".into()),
        qos: QoS::AtLeastOnce,
        count: 50,
        ..opts(&node, Mode::PubSub)
    })
    .await
    .unwrap();
    assert_eq!((r.received, r.lost, r.duplicates), (200, 0, 0));

    // Held connections are visible in the broker's gauge.
    let conn = tokio::spawn(loadgen::run(Opts {
        clients: 200,
        conn_rate: 2000,
        duration: Some(Duration::from_secs(2)),
        ..opts(&node, Mode::Conn)
    }));
    assert!(metric_reaches(&node, "homeport_connections{listener=\"tcp\"}", 200.0).await >= 200.0);
    let r = conn.await.unwrap().unwrap();
    assert_eq!((r.connected, r.connect_failed), (200, 0));
    assert!(r.connack_us.count == 200);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_name_the_field() {
    let e = loadgen::run(Opts { clients: 0, mode: Mode::Pub, ..Opts::default() }).await;
    assert!(e.unwrap_err().to_string().contains("clients"));
    let e = loadgen::run(Opts { mode: Mode::Conn, duration: None, ..Opts::default() }).await;
    assert!(e.unwrap_err().to_string().contains("duration"));
}
