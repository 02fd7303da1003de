//! openraft's storage test suite (`openraft::testing::Suite`) against our sled log store
//! and state machine, plus our own checks: reopening, snapshots and compaction.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

use super::{LogStore, StateMachine, TypeConfig};
use crate::store::Store;
use crate::telemetry::Metrics;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), Arc::new(Metrics::new())).expect("store opens");
        let log = LogStore::open(&store, 3).expect("log opens");
        let sm = StateMachine::open(&store, 3).expect("state machine opens");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(SledBuilder).expect("openraft storage suite");
}

fn put(thing: &str, version: u64, expect: Option<u64>) -> super::Command {
    super::Command::PutShadow {
        thing: thing.into(),
        name: String::new(),
        expect,
        value: super::StoredShadow {
            version,
            updated_ms: 0,
            doc: Some(format!("{{\"v\":{version}}}")),
        },
    }
}

/// Writes through real groups, with snapshots every 20 entries, then reopens the
/// directory: applied state survives, compaction happened, the shard count is pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_write_snapshot_compact_and_reopen() {
    use super::{machine, shard_of, Groups, RaftStartError, Response};
    use crate::config::RaftConfig;

    let dir = tempfile::tempdir().unwrap();
    let cfg = RaftConfig {
        shards: 4,
        snapshot_after_logs: 20,
        keep_logs: 5,
        heartbeat_ms: 50,
        election_timeout_ms: 150,
        ..RaftConfig::default()
    };
    let thing = "dev-7";
    let shard = shard_of(thing, 4);
    {
        let store = Store::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        let groups =
            Groups::start_single(&store, &store, &cfg, Arc::new(Metrics::new())).await.unwrap();
        assert_eq!(groups.shard_of(thing), shard);
        let mut expect = None;
        for v in 1..=60u64 {
            assert_eq!(
                groups.write(shard, put(thing, v, expect)).await.unwrap(),
                Response::Applied
            );
            expect = Some(v);
        }
        // A stale writer is refused without a change.
        assert_eq!(
            groups.write(shard, put(thing, 9, Some(3))).await.unwrap(),
            Response::Conflict { found: Some(60) }
        );
        // Snapshots were built and the log compacted behind them.
        let log = store.db().open_tree(format!("raft.{shard}.log")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while log.len() > 30 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(log.len() <= 30, "log not compacted: {} entries", log.len());
        groups.shutdown().await;
        drop(groups);
        let closed = store.closed();
        drop(store);
        closed.await;
    }
    let store = Store::open(dir.path(), Arc::new(Metrics::new())).unwrap();
    let wrong = RaftConfig { shards: 8, ..cfg.clone() };
    assert!(matches!(
        Groups::start_single(&store, &store, &wrong, Arc::new(Metrics::new())).await,
        Err(RaftStartError::ShardCountChanged { stored: 4, configured: 8 })
    ));
    let groups =
        Groups::start_single(&store, &store, &cfg, Arc::new(Metrics::new())).await.unwrap();
    let data = groups.data(shard).unwrap();
    let s = machine::read_shadow(data, thing, "").unwrap().unwrap();
    assert_eq!(s.version, 60);
    assert_eq!(groups.write(shard, put(thing, 61, Some(60))).await.unwrap(), Response::Applied);
    groups.shutdown().await;
}
