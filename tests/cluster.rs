//! Multi-node behaviour with real nodes: in-process clusters over loopback QUIC.

mod common;

use std::time::Duration;

use common::cluster::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_and_replicate_the_registry() {
    let c = TestCluster::start_static(3).await;
    c.wait_formed(3, Duration::from_secs(20)).await;
    let a1 = c.node(0).admin_addr.unwrap();
    let (status, body) = common::http(a1, "POST", "/api/things", r#"{"thingName":"lamp-1"}"#).await;
    assert_eq!(status, 201, "{body}");
    let a3 = c.node(2).admin_addr.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = common::http_get(a3, "/api/things/lamp-1").await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_join_a_first_node_and_get_replicas() {
    let c = TestCluster::start_joined(3, 3).await;
    c.wait_settled(3, Duration::from_secs(30)).await;
    for n in c.nodes.iter().flatten() {
        let members = n.cluster.as_ref().unwrap().members();
        assert_eq!(members.len(), 3);
        assert!(members.iter().all(|m| m.state == homeport::cluster::MemberState::Active));
    }
    c.shutdown().await;
}
