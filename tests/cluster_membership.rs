//! Membership with real nodes (in-process clusters over loopback QUIC): five nodes with
//! three replicas per group, a fourth node joining while writes go on, removing a node
//! (and refusing a removal that would lose a majority), restarting every node, and a
//! single node's data directory becoming the first node of a cluster.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{thing_in_shard, TestCluster};

/// Voters of each group as its leader sees them, and the meta group's learners.
fn layout(c: &TestCluster) -> (BTreeMap<u32, Vec<u64>>, Vec<u64>) {
    let mut voters = BTreeMap::new();
    let mut learners = Vec::new();
    for n in c.nodes.iter().flatten() {
        for g in n.groups.ids() {
            if n.groups.is_leader(g) {
                let m = n.groups.raft(g).unwrap().metrics().borrow().clone();
                let mem = m.membership_config.membership();
                voters.insert(g, mem.voter_ids().collect());
                if g == 0 {
                    learners = mem.learner_ids().collect();
                }
            }
        }
    }
    (voters, learners)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_hold_three_replicas_per_group_and_every_node_reads_the_meta_group() {
    let c = TestCluster::start_joined(5, 3).await;
    c.wait_settled(3, Duration::from_secs(60)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (voters, learners) = layout(&c);
        let mut load: BTreeMap<u64, usize> = BTreeMap::new();
        for v in voters.values().flatten() {
            *load.entry(*v).or_default() += 1;
        }
        let even =
            load.len() == 5 && load.values().max().unwrap() - load.values().min().unwrap() <= 1;
        if voters.values().all(|v| v.len() == 3) && learners.len() == 2 && even {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "layout {voters:?} learners {learners:?} load {load:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A thing registered through node 5 is readable on node 1 (every node has the meta
    // group, as voter or learner).
    let (status, body) = common::http(
        c.node(4).admin_addr.unwrap(),
        "POST",
        "/api/things",
        r#"{"thingName":"five"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while common::http_get(c.node(0).admin_addr.unwrap(), "/api/things/five").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.wait_replicas_equal(Duration::from_secs(20)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_while_writes_go_on_and_nothing_acknowledged_is_lost() {
    let mut c = TestCluster::start_joined(3, 3).await;
    c.wait_settled(3, Duration::from_secs(30)).await;
    let shards = c.cfgs[0].raft.shards;
    let stop = Arc::new(AtomicBool::new(false));
    let admin = c.node(0).admin_addr.unwrap();
    let mut writers = Vec::new();
    for s in 1..=shards {
        let thing = thing_in_shard(s, shards, "grow");
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let (mut acked, mut attempted) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                attempted += 1;
                let body = format!(r#"{{"state":{{"reported":{{"n":{attempted}}}}}}}"#);
                let (status, _) =
                    common::http(admin, "POST", &format!("/api/things/{thing}/shadow"), &body)
                        .await;
                if status == 200 {
                    acked = attempted;
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (thing, acked, attempted)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let four = c.add_joining(3).await;
    // The new node gets its share of replicas: 15 voters over 4 nodes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (voters, _) = layout(&c);
        let on_four = voters.values().filter(|v| v.contains(&(four as u64 + 1))).count();
        if on_four >= 3 && voters.values().all(|v| v.len() == 3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 4 has {on_four} replicas: {voters:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let (thing, acked, attempted) = w.await.unwrap();
        assert!(acked > 0, "{thing}: nothing accepted while the node joined");
        let (_, doc) = common::http_get(admin, &format!("/api/things/{thing}/shadow")).await;
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        let n = v["state"]["reported"]["n"].as_u64().unwrap();
        assert!(n >= acked && n <= attempted, "{thing}: {n} < acknowledged {acked}");
    }
    c.wait_replicas_equal(Duration::from_secs(30)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_refuses_to_lose_a_majority_and_replaces_a_removed_nodes_replicas() {
    let mut c = TestCluster::start_joined(4, 3).await;
    c.wait_settled(3, Duration::from_secs(60)).await;
    let admin = c.node(0).admin_addr.unwrap();
    let (voters, _) = layout(&c);
    // Five groups of three voters over four nodes, spread evenly: some group has both
    // nodes 3 and 4.
    assert!(voters.values().any(|v| v.contains(&3) && v.contains(&4)), "{voters:?}");
    // Node 4 stops; removing node 3 as well would leave that group with one live voter
    // of two (or, while node 4's groups elect, without a leader): refused.
    c.stop(3).await;
    let (status, body) = common::http(admin, "DELETE", "/api/cluster/members/3", "").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no majority") || body.contains("no leader"), "{body}");
    // Removing the stopped node 4 is fine: its replicas go to the others.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = common::http(admin, "DELETE", "/api/cluster/members/4", "").await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (voters, _) = layout(&c);
        if voters.len() == 5 && voters.values().all(|v| v.len() == 3 && !v.contains(&4)) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let cl = c.node(0).cluster.as_ref().unwrap();
            let detail: Vec<_> = c
                .nodes
                .iter()
                .flatten()
                .flat_map(|n| {
                    n.groups.ids().map(move |g| {
                        let m = n.groups.raft(g).unwrap().metrics().borrow().clone();
                        format!(
                            "n{} g{g} {:?} leader {:?} mem {:?}",
                            n.groups.node(),
                            m.state,
                            m.current_leader,
                            m.membership_config.membership()
                        )
                    })
                })
                .collect();
            panic!(
                "{voters:?} moving {:?} placements {:?}\n{}",
                cl.moving(),
                cl.placements(),
                detail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A removed node is refused when it comes back.
    c.restart(3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused =
        common::metric(c.node(0), "homeport_cluster_refused_total{reason=\"hello\"}").await;
    assert!(refused >= 1.0, "node 4's hello refused: {refused}");
    let members = c.node(0).cluster.as_ref().unwrap().members();
    assert!(members
        .iter()
        .any(|m| m.info.id == 4 && m.state == homeport::cluster::MemberState::Removed));
    c.stop(3).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_restarts_at_once_and_the_data_is_there() {
    let mut c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(30)).await;
    let admin = c.node(1).admin_addr.unwrap();
    let (status, body) =
        common::http(admin, "POST", "/api/things", r#"{"thingName":"phoenix"}"#).await;
    assert_eq!(status, 201, "{body}");
    let shards = c.cfgs[0].raft.shards;
    let thing = thing_in_shard(2, shards, "phoenix-meter");
    let path = format!("/api/things/{thing}/shadow");
    let (status, body) =
        common::http(admin, "POST", &path, r#"{"state":{"reported":{"up":1}}}"#).await;
    assert_eq!(status, 200, "{body}");
    for i in 0..3 {
        c.stop(i).await;
    }
    let restarts = (0..3).map(|i| homeport::node::Node::start(c.cfgs[i].clone()));
    let nodes = futures_util::future::join_all(restarts).await;
    for (i, n) in nodes.into_iter().enumerate() {
        c.nodes[i] = Some(n.expect("node restarts"));
    }
    c.wait_settled(3, Duration::from_secs(30)).await;
    let admin = c.node(2).admin_addr.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let doc = loop {
        let (status, doc) = common::http_get(admin, &path).await;
        if status == 200 {
            break doc;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(doc.contains("\"up\":1"), "{doc}");
    assert_eq!(common::http_get(admin, "/api/things/phoenix").await.0, 200);
    c.shutdown().await;
}

/// Today's single-node data directory becomes the first node of a cluster: the same
/// directory restarted with the cluster on (no member list, no join) keeps its data, two
/// fresh nodes join it, and they read what the single node had written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_nodes_data_directory_becomes_the_first_node_of_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut single = common::config(dir.path());
    single.raft.shards = 4;
    let node = homeport::node::Node::start(single).await.expect("single node starts");
    assert!(node.cluster.is_none());
    let admin = node.admin_addr.unwrap();
    let (status, body) =
        common::http(admin, "POST", "/api/things", r#"{"thingName":"veteran"}"#).await;
    assert_eq!(status, 201, "{body}");
    let things: Vec<String> = (1..=4).map(|s| thing_in_shard(s, 4, "veteran-meter")).collect();
    for (i, t) in things.iter().enumerate() {
        let body = format!(r#"{{"state":{{"reported":{{"since":{i}}}}}}}"#);
        let (status, doc) =
            common::http(admin, "POST", &format!("/api/things/{t}/shadow"), &body).await;
        assert_eq!(status, 200, "{doc}");
    }
    node.shutdown().await.expect("clean shutdown");

    let port = common::cluster::free_udp_port();
    let cfg = common::cluster::node_config(dir.path(), 1, port);
    let first = homeport::node::Node::start(cfg.clone()).await.expect("first node starts");
    let mut c = TestCluster { nodes: vec![Some(first)], cfgs: vec![cfg], dirs: vec![dir] };
    c.add_joining(3).await;
    c.add_joining(3).await;
    c.wait_settled(3, Duration::from_secs(60)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (voters, _) = layout(&c);
        if voters.len() == 5 && voters.values().all(|v| v.len() == 3) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not replicated: {voters:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in 1..3 {
        let admin = c.node(n).admin_addr.unwrap();
        assert_eq!(common::http_get(admin, "/api/things/veteran").await.0, 200);
        for (i, t) in things.iter().enumerate() {
            let (status, doc) = common::http_get(admin, &format!("/api/things/{t}/shadow")).await;
            assert_eq!(status, 200, "node {}: {doc}", n + 1);
            assert!(doc.contains(&format!("\"since\":{i}")), "node {}: {doc}", n + 1);
        }
    }
    c.wait_replicas_equal(Duration::from_secs(30)).await;
    c.shutdown().await;
}
