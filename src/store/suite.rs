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
async fn queue_is_ordered_per_client_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        for i in [3u64, 1, 2] {
            s.queue_push("a", i, &msg("t", &format!("a{i}"))).unwrap();
        }
        // A client id that is a prefix of another must not see its messages.
        s.queue_push("ab", 1, &msg("t", "ab1")).unwrap();
        s.durable().await.unwrap().unwrap();
        let closed = s.closed();
        drop(s);
        closed.await;
    }
    let s = Store::open(dir.path(), Arc::new(Metrics::new())).unwrap();
    let q = s.queue("a").unwrap();
    let payloads: Vec<_> =
        q.iter().map(|(_, m)| String::from_utf8(m.payload.clone()).unwrap()).collect();
    assert_eq!(payloads, ["a1", "a2", "a3"]);
    assert_eq!(s.queue_bounds("a").unwrap(), Some((1, 3, 3)));
    assert!(s.queue_remove("a", 1).unwrap());
    assert!(!s.queue_remove("a", 1).unwrap());
    assert_eq!(s.queue_bounds("a").unwrap(), Some((2, 3, 2)));
    assert_eq!(s.queue_clear("a").unwrap(), 2);
    assert_eq!(s.queue_bounds("a").unwrap(), None);
    assert_eq!(s.queue("ab").unwrap().len(), 1);
}

#[tokio::test]
async fn sessions_and_retained_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Arc::new(Metrics::new())).unwrap();
    let rec = SessionRecord { expiry_secs: 60, ..SessionRecord::default() };
    s.put_session("c1", &rec).unwrap();
    s.queue_push("c1", 1, &msg("t", "x")).unwrap();
    assert_eq!(s.get_session("c1").unwrap(), Some(rec.clone()));
    assert_eq!(s.sessions().unwrap(), vec![("c1".to_string(), rec)]);
    s.delete_session("c1").unwrap();
    assert_eq!(s.get_session("c1").unwrap(), None);
    assert!(s.queue("c1").unwrap().is_empty());

    s.put_retained("a/b", &msg("a/b", "r")).unwrap();
    assert_eq!(s.retained().unwrap().len(), 1);
    s.delete_retained("a/b").unwrap();
    assert!(s.retained().unwrap().is_empty());
}

#[tokio::test]
async fn many_waiters_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let s = Store::open(dir.path(), metrics.clone()).unwrap();
    let acks: Vec<_> = (0..200u64)
        .map(|i| {
            s.queue_push("c", i, &msg("t", "x")).unwrap();
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

#[tokio::test]
async fn inflight_journal_is_separate_from_the_queue_and_goes_with_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Arc::new(Metrics::new())).unwrap();
    s.queue_push("c", 1, &msg("t", "queued")).unwrap();
    s.inflight_push("c", 2, &msg("t", "sent")).unwrap();
    s.inflight_push("c", 5, &msg("t", "sent2")).unwrap();
    s.inflight_push("cd", 9, &msg("t", "other")).unwrap();
    assert_eq!(s.queue("c").unwrap().len(), 1);
    let seqs: Vec<u64> = s.inflight("c").unwrap().into_iter().map(|(q, _)| q).collect();
    assert_eq!(seqs, [2, 5]);
    assert_eq!(s.inflight_last("c").unwrap(), Some(5));
    assert!(s.inflight_remove("c", 2).unwrap());
    assert!(!s.inflight_remove("c", 2).unwrap());
    assert!(!s.queue_remove("c", 5).unwrap(), "queue and journal are apart");
    s.put_session("c", &SessionRecord::default()).unwrap();
    s.delete_session("c").unwrap();
    assert!(s.inflight("c").unwrap().is_empty());
    assert!(s.queue("c").unwrap().is_empty());
    assert_eq!(s.inflight_last("c").unwrap(), None);
    assert_eq!(s.inflight("cd").unwrap().len(), 1);
}
