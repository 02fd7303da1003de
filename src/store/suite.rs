//! Behaviour every store backend must have, run against sled on a temporary directory,
//! including reopening after the store is dropped.

use std::sync::Arc;

use super::*;
use crate::broker::StoredMessage;
use crate::mqtt::QoS;

fn msg(topic: &str, payload: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        qos: QoS::AtLeastOnce,
        retain: false,
        expires_at_ms: None,
        props: Default::default(),
    }
}

#[tokio::test]
async fn journal_is_ordered_per_client_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        for i in [3u64, 1, 256] {
            s.inflight_push("a", i, &msg("t", &format!("a{i}"))).unwrap();
        }
        // A client id that is a prefix of another must not see its messages.
        s.inflight_push("ab", 1, &msg("t", "ab1")).unwrap();
        s.durable().await.unwrap().unwrap();
        let closed = s.closed();
        drop(s);
        closed.await;
    }
    let s = Store::open(dir.path(), Arc::new(Metrics::new())).unwrap();
    let q = s.inflight("a").unwrap();
    let payloads: Vec<_> =
        q.iter().map(|(_, m)| String::from_utf8(m.payload.clone()).unwrap()).collect();
    assert_eq!(payloads, ["a1", "a3", "a256"]);
    assert_eq!(s.inflight_last("a").unwrap(), Some(256));
    assert!(s.inflight_remove("a", 1).unwrap());
    assert!(!s.inflight_remove("a", 1).unwrap());
    s.inflight_clear("a").unwrap();
    assert_eq!(s.inflight_last("a").unwrap(), None);
    assert!(s.inflight("a").unwrap().is_empty());
    assert_eq!(s.inflight("ab").unwrap().len(), 1);
}

#[tokio::test]
async fn many_waiters_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let s = Store::open(dir.path(), metrics.clone()).unwrap();
    let acks: Vec<_> = (0..200u64)
        .map(|i| {
            s.inflight_push("c", i, &msg("t", "x")).unwrap();
            s.durable()
        })
        .collect();
    for a in acks {
        a.await.unwrap().unwrap();
    }
    // Fewer flushes than waiters: group commit worked.
    let flushes = metrics.flush_seconds.get_sample_count();
    assert!(flushes < 200, "{flushes} flushes for 200 waiters");
}
