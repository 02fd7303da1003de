//! A thing's line of waiting device-API requests is bounded: a client that sends shadow or
//! jobs requests faster than its device actor serves them gets 429 / `RequestThrottled`
//! for the excess, every request is answered exactly once, and the line empties again.
//! A raw v5 client writes all requests in one burst.

mod common;

use bytes::BytesMut;
use common::raw::{publish, Raw};
use common::*;
use homeport::mqtt::{self, Properties, Protocol, QoS};
use homeport::node::Node;
use serde_json::Value;

/// Sends `n` requests to `topic` in one write, each with clientToken `t{i}` (and a
/// reported state, which shadow updates need and jobs requests ignore), and returns the
/// answers: (reply topic suffix, payload).
async fn burst(c: &mut Raw, topics: &[&str]) -> Vec<(String, Value)> {
    let n = topics.len();
    let mut out = BytesMut::new();
    for (i, topic) in topics.iter().enumerate() {
        let body = format!(r#"{{"state":{{"reported":{{"i":{i}}}}},"clientToken":"t{i}"}}"#);
        let p = publish(topic, QoS::AtMostOnce, 0, &body);
        mqtt::encode(&p, Protocol::V5, &mut out);
    }
    c.send_bytes(&out).await;
    let mut got = Vec::new();
    while got.len() < n {
        let p = c.next_publish(true).await;
        let kind = p.topic.rsplit('/').next().unwrap().to_string();
        got.push((kind, serde_json::from_slice(&p.payload).unwrap()));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_requests_are_refused_and_every_request_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.shadow.max_pending_per_thing = 2;
    cfg.jobs.max_pending_per_thing = 2;
    let node = Node::start(cfg).await.unwrap();
    let mut c = Raw::open(&node).await;
    c.connect("tt-1", Protocol::V5, Properties::default()).await;

    let n = 60;
    // The first update holds the actor for a Raft write (a disk flush) while the rest
    // arrive in the same read.
    let got = burst(&mut c, &["$aws/things/tt-1/shadow/update"; 60]).await;
    let mut tokens: Vec<String> =
        got.iter().map(|(_, v)| v["clientToken"].as_str().unwrap().to_string()).collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), n, "each request answered once, with its token");
    let throttled: Vec<_> = got.iter().filter(|(k, _)| k == "rejected").collect();
    for (_, v) in &throttled {
        assert_eq!(
            (v["code"].as_u64(), v["message"].as_str()),
            (Some(429), Some("Too many requests"))
        );
    }
    let served = got.iter().filter(|(k, _)| k == "accepted").count();
    assert!(!throttled.is_empty(), "a burst of {n} beyond a line of 2 is throttled");
    assert_eq!(served + throttled.len(), n);
    let counted =
        metric(&node, "homeport_shadow_requests_total{op=\"update\",result=\"429\"}").await;
    assert_eq!(counted, throttled.len() as f64);

    // Shadow and jobs requests stand in one line: a shadow update first holds the actor.
    let mut topics = vec!["$aws/things/tt-1/shadow/update"];
    topics.extend(["$aws/things/tt-1/jobs/get"; 60]);
    let got = burst(&mut c, &topics).await;
    let got: Vec<_> = got.into_iter().filter(|(_, v)| v["clientToken"] != "t0").collect();
    let throttled =
        got.iter().filter(|(k, v)| k == "rejected" && v["code"] == "RequestThrottled").count();
    let accepted = got.iter().filter(|(k, _)| k == "accepted").count();
    assert!(throttled > 0);
    assert_eq!(accepted + throttled, n);

    // The line is empty again: one request at a time is never refused.
    for i in 0..5 {
        let body = format!(r#"{{"state":{{"reported":{{"i":{i}}}}},"clientToken":"s{i}"}}"#);
        c.send(&publish("$aws/things/tt-1/shadow/update", QoS::AtMostOnce, 0, &body)).await;
        let p = c.next_publish(true).await;
        assert!(p.topic.ends_with("/update/accepted"), "{}", p.topic);
    }
    node.shutdown().await.unwrap();
}
