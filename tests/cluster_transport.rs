//! The cluster transport against bad peers: garbage frames, another wire version, an
//! unknown group, a peer that claims another node's id, and a node with a certificate
//! of another cluster. Each gets a clear refusal; the node keeps serving its cluster.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::TestCluster;
use homeport::cluster::certs;
use homeport::cluster::wire::{self, Answer, Hello, Request, WireError};

/// A raw QUIC client with `identity` (a node certificate), for sending what a node
/// never would.
fn endpoint(identity: &certs::Identity, insecure: bool) -> quinn::Endpoint {
    let tls = certs::client_config(identity, insecure).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep
}

async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Option<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    send.write_all(bytes).await.ok()?;
    send.finish().ok()?;
    tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20)).await.ok()?.ok()
}

fn hello(from: u64, to: u64, cluster: &str) -> Vec<u8> {
    wire::encode(&Request::Hello(Hello {
        cluster: cluster.into(),
        from,
        to,
        incarnation: 1,
        addr: "127.0.0.1:1".into(),
    }))
}

/// Node 1 of a 3-node cluster with real certificates, and the certificate directory.
async fn secure_cluster() -> (TestCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let g = certs::generate("homeport", &[1, 2, 3, 4]).unwrap();
    certs::write_dir(dir.path(), &g).unwrap();
    let mut c = TestCluster::start_static_with(3, |cfg| {
        let id = cfg.node.id;
        cfg.cluster.insecure_dev = false;
        cfg.cluster.ca = Some(dir.path().join("ca.pem"));
        cfg.cluster.cert = Some(dir.path().join(format!("node-{id}.pem")));
        cfg.cluster.key = Some(dir.path().join(format!("node-{id}.key")));
    })
    .await;
    c.wait_settled(3, Duration::from_secs(30)).await;
    c.dirs.push(tempfile::tempdir().unwrap());
    (c, dir)
}

fn cluster_addr(c: &TestCluster, i: usize) -> SocketAddr {
    c.cfgs[i].cluster.bind.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_frames_and_false_identities_are_refused() {
    let (c, dir) = secure_cluster().await;
    let p = |n: &str| dir.path().join(n);
    let target = cluster_addr(&c, 0);
    // Node 4's certificate (same CA) claiming to be node 2: refused at the hello.
    let four =
        certs::load(&p("ca.pem"), &p("node-4.pem"), &p("node-4.key"), "homeport", 4).unwrap();
    let ep = endpoint(&four, false);
    let conn = ep.connect(target, &certs::node_name("homeport", 1)).unwrap().await.unwrap();
    let answer = exchange(&conn, &hello(2, 1, "homeport")).await.unwrap();
    match wire::decode::<Answer>(&answer).unwrap() {
        Answer::Error(WireError::Refused(why)) => {
            assert!(why.contains("certificate names node 4"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // As itself it gets in; then garbage, another version and an unknown group.
    let conn = ep.connect(target, &certs::node_name("homeport", 1)).unwrap().await.unwrap();
    let answer = exchange(&conn, &hello(4, 1, "homeport")).await.unwrap();
    assert!(matches!(wire::decode::<Answer>(&answer).unwrap(), Answer::Welcome { node: 1, .. }));
    let garbage = exchange(&conn, &[wire::WIRE_VERSION, 0xde, 0xad, 0xbe, 0xef]).await.unwrap();
    assert!(matches!(
        wire::decode::<Answer>(&garbage).unwrap(),
        Answer::Error(WireError::Malformed(_))
    ));
    let mut other_version = wire::encode(&Request::Status);
    other_version[0] = 77;
    let answer = exchange(&conn, &other_version).await.unwrap();
    assert_eq!(
        wire::decode::<Answer>(&answer).unwrap().error(),
        Some(WireError::Version { found: 77 })
    );
    let unknown = wire::encode(&Request::Propose { group: 999, cmds: vec![] });
    let answer = exchange(&conn, &unknown).await.unwrap();
    assert_eq!(
        wire::decode::<Answer>(&answer).unwrap().error(),
        Some(WireError::UnknownGroup(999))
    );
    let empty = exchange(&conn, &[]).await.unwrap();
    assert!(matches!(
        wire::decode::<Answer>(&empty).unwrap(),
        Answer::Error(WireError::Malformed(_))
    ));
    // Session calls about connections that do not exist: answers, never a crash.
    let deliver = Request::Conn(wire::ConnCall::Deliver { conn: 424_242, batch: 1, items: vec![] });
    let answer = exchange(&conn, &wire::encode(&deliver)).await.unwrap();
    assert!(matches!(
        wire::decode::<Answer>(&answer).unwrap(),
        Answer::Conn(wire::ConnAnswer::Gone { taken: 0 })
    ));
    let order = Request::Conn(wire::ConnCall::Order { conn: 7, order: wire::WireOrder::TakeOver });
    let answer = exchange(&conn, &wire::encode(&order)).await.unwrap();
    assert!(matches!(
        wire::decode::<Answer>(&answer).unwrap(),
        Answer::Conn(wire::ConnAnswer::Gone { taken: 0 })
    ));
    let subscribe = Request::Device(wire::DeviceCall::Subscribe {
        client: "nobody".into(),
        conn: 3,
        filters: vec![(
            "a/b".into(),
            homeport::mqtt::SubOptions::qos(homeport::mqtt::QoS::AtLeastOnce),
        )],
        id: None,
    });
    let answer = exchange(&conn, &wire::encode(&subscribe)).await.unwrap();
    assert!(matches!(
        wire::decode::<Answer>(&answer).unwrap().error(),
        Some(WireError::Refused(_) | WireError::Unavailable(_))
    ));
    let detach = Request::Device(wire::DeviceCall::Detach {
        client: "nobody".into(),
        conn: 3,
        live: Default::default(),
        will: true,
        expiry_secs: None,
    });
    let answer = exchange(&conn, &wire::encode(&detach)).await.unwrap();
    assert!(matches!(
        wire::decode::<Answer>(&answer).unwrap(),
        Answer::Device(wire::DeviceAnswer::Done)
    ));
    // A hello of another cluster name.
    let conn = ep.connect(target, &certs::node_name("homeport", 1)).unwrap().await.unwrap();
    let answer = exchange(&conn, &hello(4, 1, "elsewhere")).await.unwrap();
    assert!(matches!(
        wire::decode::<Answer>(&answer).unwrap(),
        Answer::Error(WireError::Refused(_))
    ));
    // The cluster still serves: a write through node 1 reads back on node 3.
    let admin = c.node(0).admin_addr.unwrap();
    let (status, body) =
        common::http(admin, "POST", "/api/things", r#"{"thingName":"after-bad"}"#).await;
    assert_eq!(status, 201, "{body}");
    let refused =
        common::metric(c.node(0), "homeport_cluster_refused_total{reason=\"hello\"}").await;
    assert!(refused >= 2.0, "refusals counted: {refused}");
    let malformed =
        common::metric(c.node(0), "homeport_cluster_dropped_frames_total{reason=\"malformed\"}")
            .await;
    assert!(malformed >= 1.0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_of_another_cluster_is_refused() {
    let (c, _dir) = secure_cluster().await;
    let target = cluster_addr(&c, 0);
    // Another CA, even with the same cluster name and node id: the handshake fails.
    let other = tempfile::tempdir().unwrap();
    let g = certs::generate("homeport", &[2]).unwrap();
    certs::write_dir(other.path(), &g).unwrap();
    let p = |n: &str| other.path().join(n);
    let stranger =
        certs::load(&p("ca.pem"), &p("node-2.pem"), &p("node-2.key"), "homeport", 2).unwrap();
    let ep = endpoint(&stranger, false);
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        ep.connect(target, &certs::node_name("homeport", 1)).unwrap(),
    )
    .await
    .unwrap();
    match res {
        Err(_) => {}
        // TLS 1.3: the client may finish before the server rejects its certificate.
        Ok(conn) => assert!(exchange(&conn, &hello(2, 1, "homeport")).await.is_none()),
    }
    // Another cluster's name with our CA: the node names differ, the dialer refuses the
    // server (it is not `node-1.elsewhere`).
    let g2 = certs::generate("elsewhere", &[2]).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    certs::write_dir(dir2.path(), &g2).unwrap();
    let p2 = |n: &str| dir2.path().join(n);
    let elsewhere =
        certs::load(&p2("ca.pem"), &p2("node-2.pem"), &p2("node-2.key"), "elsewhere", 2).unwrap();
    let ep = endpoint(&elsewhere, false);
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        ep.connect(target, &certs::node_name("elsewhere", 1)).unwrap(),
    )
    .await
    .unwrap();
    assert!(res.is_err(), "a server of another cluster is not accepted");
    assert!(
        common::metric(c.node(0), "homeport_cluster_refused_total{reason=\"handshake\"}").await
            >= 1.0
    );
    c.shutdown().await;
}
