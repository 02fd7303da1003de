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

/// Shadow updates sent to the admin API of every node for things in every shard: each
/// reaches its thing's device actor on the shard's leader, and reads from any node agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadows_through_any_node_reach_the_leaders_actor() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    for shard in 1..=shards {
        let thing = common::cluster::thing_in_shard(shard, shards, "lamp");
        for (i, n) in c.nodes.iter().flatten().enumerate() {
            let body = format!(r#"{{"state":{{"desired":{{"via":{i}}}}}}}"#);
            let path = format!("/api/things/{thing}/shadow");
            // 503 while the shard's leadership is being handed over (the placement
            // controller may still do that right after settling): nothing was applied
            // (a yielding leader commits nothing), so a client tries again.
            let mut tries = 0;
            loop {
                let (status, answer) =
                    common::http(n.admin_addr.unwrap(), "POST", &path, &body).await;
                if status == 503 && tries < 50 {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                assert_eq!(status, 200, "shard {shard} via node {i}: {answer}");
                break;
            }
        }
        for n in c.nodes.iter().flatten() {
            let path = format!("/api/things/{thing}/shadow");
            let (status, doc) = common::http_get(n.admin_addr.unwrap(), &path).await;
            assert_eq!(status, 200, "{doc}");
            let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
            assert_eq!(v["state"]["desired"]["via"], 2, "{doc}");
            assert_eq!(v["version"], 3, "{doc}");
        }
    }
    c.wait_replicas_equal(Duration::from_secs(10)).await;
    c.shutdown().await;
}

/// One node cut off from the others: it stops acknowledging durable writes (503 from
/// the admin API, not ready), the majority goes on, and after healing it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_node_refuses_durable_writes_then_catches_up() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    // The node that leads shard 1 is cut off, with the shard's things.
    let minority = c.leader_of(1).unwrap();
    let thing = common::cluster::thing_in_shard(1, shards, "cut");
    let admin = |i: usize| c.node(i).admin_addr.unwrap();
    let path = format!("/api/things/{thing}/shadow");
    let (status, body) =
        common::http(admin(minority), "POST", &path, r#"{"state":{"desired":{"n":1}}}"#).await;
    assert_eq!(status, 200, "{body}");
    c.isolate(minority);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = common::http_get(admin(minority), "/readyz").await;
        if status == 503 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the minority stays ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) =
        common::http(admin(minority), "POST", &path, r#"{"state":{"desired":{"n":2}}}"#).await;
    assert_eq!(status, 503, "{body}");
    // The majority elects a new leader for shard 1 and takes writes through any node.
    let majority = (minority + 1) % 3;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) =
            common::http(admin(majority), "POST", &path, r#"{"state":{"desired":{"n":3}}}"#).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "majority refuses: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = common::http_get(admin(majority), "/readyz").await;
    assert_eq!(status, 200);
    c.heal();
    c.wait_replicas_equal(Duration::from_secs(20)).await;
    // Healing may take an election (the cut-off node's term moved on); reads through it
    // then reach the shard's leader again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let (status, doc) = common::http_get(admin(minority), &path).await;
        if status == 200 {
            break doc;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(v["state"]["desired"]["n"], 3, "{doc}");
    c.shutdown().await;
}

/// A shadow request sent through another node to a shard leader that has just been cut
/// off ends when the shard elects a new leader ("unavailable": the old leader may have
/// applied it), not at the transport's timeout, which is set longer than the admin
/// API's here: a 504 would mean the call waited for the dead leader. The next request
/// reaches the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_to_a_replaced_leader_ends_at_the_election() {
    let c = TestCluster::start_static_with(3, |cfg| {
        cfg.cluster.rpc_timeout_ms = 60_000;
        cfg.cluster.node_down_ms = 120_000;
    })
    .await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let shards = c.cfgs[0].raft.shards;
    let cut = c.leader_of(1).unwrap();
    let via = c.node((cut + 1) % 3).admin_addr.unwrap();
    let thing = common::cluster::thing_in_shard(1, shards, "gone");
    let path = format!("/api/things/{thing}/shadow");
    let (status, body) = common::http(via, "POST", &path, r#"{"state":{"desired":{"n":1}}}"#).await;
    assert_eq!(status, 200, "{body}");
    c.isolate(cut);
    // Sent before the majority can have elected anyone (that takes over a second).
    let (status, body) = common::http(via, "POST", &path, r#"{"state":{"desired":{"n":2}}}"#).await;
    assert_eq!(status, 503, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) =
            common::http(via, "POST", &path, r#"{"state":{"desired":{"n":3}}}"#).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.heal();
    c.shutdown().await;
}

/// Leaders spread over the nodes (each leads its share, give or take one), a drained
/// node hands every group's leadership off and keeps its replicas (three nodes: nobody
/// else can take them), and an undrained one gets its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaders_spread_and_move_off_a_draining_node() {
    let c = TestCluster::start_static(3).await;
    c.wait_settled(3, Duration::from_secs(20)).await;
    let groups = c.node(0).groups.ids().count();
    let leads = |c: &TestCluster, i: usize| {
        let n = c.node(i);
        n.groups.ids().filter(|g| n.groups.is_leader(*g)).count()
    };
    let fair = groups.div_ceil(3);
    let spread =
        |c: &TestCluster| (0..3).all(|i| leads(c, i) + 1 >= groups / 3 && leads(c, i) <= fair);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !spread(&c) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "leaders not spread: {:?}",
            (0..3).map(|i| leads(&c, i)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let admin = c.node(0).admin_addr.unwrap();
    let (status, body, _) =
        common::http_retrying(admin, "POST", "/api/cluster/members/3/drain", "").await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while leads(&c, 2) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "node 3 still leads {}", leads(&c, 2));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.wait_settled(3, Duration::from_secs(20)).await;
    let (status, body, _) =
        common::http_retrying(admin, "POST", "/api/cluster/members/3/undrain", "").await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while leads(&c, 2) + 1 < groups / 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 leads {} after undrain",
            leads(&c, 2)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.shutdown().await;
}
