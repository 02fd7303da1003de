//! MQTT session state in the shard groups: the key layout of persistent session records,
//! offline queues and retained messages, and what their commands write. Pure logic over
//! a [`Kv`] view, unit-tested without sled.
//!
//! Keys (client ids and topics cannot contain NUL, so NUL separates fields):
//! - `dsess` NUL client -> `SessionRecord` (shard of the client);
//! - `dq` NUL client NUL seq (8 bytes, big-endian) -> `StoredMessage` (shard of the client);
//! - `dret` NUL topic -> `StoredMessage` (shard of the topic).

use super::machine::{Kv, Write};
use super::types::{Command, Response};
use crate::broker::StoredMessage;
use crate::session::SessionRecord;
use crate::store::{decode, encode, StoreError};

/// Prefix of every session record.
pub const SESSION_PREFIX: &[u8] = b"dsess\0";
/// Prefix of every offline-queue entry.
pub const QUEUE_PREFIX: &[u8] = b"dq\0";
/// Prefix of every retained message.
pub const RETAINED_PREFIX: &[u8] = b"dret\0";

pub fn session_key(client: &str) -> Vec<u8> {
    [SESSION_PREFIX, client.as_bytes()].concat()
}

/// Prefix of one client's offline queue.
pub fn queue_prefix(client: &str) -> Vec<u8> {
    [QUEUE_PREFIX, client.as_bytes(), b"\0"].concat()
}

pub fn queue_key(client: &str, seq: u64) -> Vec<u8> {
    [queue_prefix(client).as_slice(), &seq.to_be_bytes()].concat()
}

pub fn retained_key(topic: &str) -> Vec<u8> {
    [RETAINED_PREFIX, topic.as_bytes()].concat()
}

/// The sequence number of a queue key under `prefix`.
pub fn seq_of(prefix: &[u8], key: &[u8]) -> Result<u64, StoreError> {
    key.get(prefix.len()..)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Codec("bad queue key".into()))
}

/// The client id of a session key.
pub fn client_of(key: &[u8]) -> Result<&str, StoreError> {
    key.strip_prefix(SESSION_PREFIX)
        .and_then(|c| std::str::from_utf8(c).ok())
        .ok_or_else(|| StoreError::Codec("bad session key".into()))
}

pub fn read_session(kv: &impl Kv, client: &str) -> Result<Option<SessionRecord>, StoreError> {
    kv.get(&session_key(client))?.map(|v| decode(&v)).transpose()
}

/// The keys of a client's queue, oldest first.
fn queue_keys(kv: &impl Kv, client: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut keys = Vec::new();
    kv.scan_keys(&queue_prefix(client), &mut |k| {
        keys.push(k.to_vec());
        true
    })?;
    Ok(keys)
}

/// (first sequence, last sequence, length) of a client's queue.
pub fn queue_bounds(kv: &impl Kv, client: &str) -> Result<Option<(u64, u64, usize)>, StoreError> {
    let prefix = queue_prefix(client);
    let keys = queue_keys(kv, client)?;
    match (keys.first(), keys.last()) {
        (Some(first), Some(last)) => {
            Ok(Some((seq_of(&prefix, first)?, seq_of(&prefix, last)?, keys.len())))
        }
        _ => Ok(None),
    }
}

/// A client's queued messages in order, with their sequence numbers.
pub fn read_queue(kv: &impl Kv, client: &str) -> Result<Vec<(u64, StoredMessage)>, StoreError> {
    let prefix = queue_prefix(client);
    let mut out = Vec::new();
    for k in queue_keys(kv, client)? {
        if let Some(v) = kv.get(&k)? {
            out.push((seq_of(&prefix, &k)?, decode(&v)?));
        }
    }
    Ok(out)
}

/// What a session, queue or retained command writes.
pub fn apply(kv: &impl Kv, cmd: &Command) -> Result<(Vec<Write>, Response), StoreError> {
    let writes = match cmd {
        Command::PutSession { client, value } => {
            vec![(session_key(client), Some(encode(value)?))]
        }
        Command::EndSession { client } => {
            let mut w: Vec<Write> =
                queue_keys(kv, client)?.into_iter().map(|k| (k, None)).collect();
            w.push((session_key(client), None));
            w
        }
        Command::Enqueue { client, seq, msg, drop_oldest } => {
            let mut w = Vec::with_capacity(2);
            if *drop_oldest {
                let mut first = None;
                kv.scan_keys(&queue_prefix(client), &mut |k| {
                    first = Some(k.to_vec());
                    false
                })?;
                w.extend(first.map(|k| (k, None)));
            }
            w.push((queue_key(client, *seq), Some(encode(msg)?)));
            w
        }
        Command::Dequeue { client, seqs } => {
            seqs.iter().map(|s| (queue_key(client, *s), None)).collect()
        }
        Command::ClearQueue { client } => {
            queue_keys(kv, client)?.into_iter().map(|k| (k, None)).collect()
        }
        Command::PutRetained { topic, msg } => {
            vec![(retained_key(topic), msg.as_ref().map(encode).transpose()?)]
        }
        other => {
            return Err(StoreError::Codec(format!("not a session command: {other:?}")));
        }
    };
    Ok((writes, Response::Applied))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::mqtt::QoS;
    use crate::raft::machine::apply as apply_any;

    fn msg(p: &str) -> StoredMessage {
        StoredMessage {
            topic: "t".into(),
            payload: p.as_bytes().to_vec(),
            qos: QoS::AtLeastOnce,
            retain: false,
            expires_at_ms: None,
            props: Default::default(),
        }
    }

    fn run(kv: &mut BTreeMap<Vec<u8>, Vec<u8>>, cmd: Command) -> Response {
        let (writes, resp) = apply_any(kv, &cmd).unwrap();
        for (k, v) in writes {
            match v {
                Some(v) => kv.insert(k, v),
                None => kv.remove(&k),
            };
        }
        resp
    }

    fn enqueue(client: &str, seq: u64, drop_oldest: bool) -> Command {
        Command::Enqueue {
            client: client.into(),
            seq,
            msg: msg(&format!("{client}{seq}")),
            drop_oldest,
        }
    }

    fn payloads(kv: &BTreeMap<Vec<u8>, Vec<u8>>, client: &str) -> Vec<String> {
        read_queue(kv, client)
            .unwrap()
            .into_iter()
            .map(|(_, m)| String::from_utf8(m.payload).unwrap())
            .collect()
    }

    #[test]
    fn queues_are_ordered_per_client_and_prefixes_do_not_mix() {
        let mut kv = BTreeMap::new();
        // Sequence order, not arrival order; 256 sorts after 2 only if big-endian.
        for s in [256, 1, 2] {
            run(&mut kv, enqueue("a", s, false));
        }
        run(&mut kv, enqueue("ab", 1, false));
        assert_eq!(payloads(&kv, "a"), ["a1", "a2", "a256"]);
        assert_eq!(queue_bounds(&kv, "a").unwrap(), Some((1, 256, 3)));
        assert_eq!(payloads(&kv, "ab"), ["ab1"]);
        run(&mut kv, Command::Dequeue { client: "a".into(), seqs: vec![2, 99] });
        assert_eq!(payloads(&kv, "a"), ["a1", "a256"]);
        run(&mut kv, enqueue("a", 257, true));
        assert_eq!(payloads(&kv, "a"), ["a256", "a257"]);
        run(&mut kv, Command::ClearQueue { client: "a".into() });
        assert_eq!(queue_bounds(&kv, "a").unwrap(), None);
        assert_eq!(payloads(&kv, "ab"), ["ab1"]);
    }

    #[test]
    fn ending_a_session_removes_its_record_and_queue_only() {
        let mut kv = BTreeMap::new();
        let rec = SessionRecord { expiry_secs: 60, ..Default::default() };
        for c in ["a", "ab"] {
            run(&mut kv, Command::PutSession { client: c.into(), value: rec.clone() });
            run(&mut kv, enqueue(c, 1, false));
        }
        assert_eq!(read_session(&kv, "a").unwrap(), Some(rec.clone()));
        run(&mut kv, Command::EndSession { client: "a".into() });
        assert_eq!(read_session(&kv, "a").unwrap(), None);
        assert!(payloads(&kv, "a").is_empty());
        assert_eq!(read_session(&kv, "ab").unwrap(), Some(rec));
        assert_eq!(payloads(&kv, "ab"), ["ab1"]);
    }

    #[test]
    fn a_batch_sees_its_own_queue_writes() {
        let mut kv = BTreeMap::new();
        run(&mut kv, enqueue("a", 1, false));
        run(&mut kv, enqueue("a", 3, false));
        let batch = Command::Batch(vec![
            // Inserted before the stored entries: the oldest is now 0.
            enqueue("a", 0, false),
            // Drops 0 (written in this batch), not 1.
            enqueue("a", 4, true),
            Command::Dequeue { client: "a".into(), seqs: vec![1] },
            // Drops 3: 1 was removed in this batch.
            enqueue("a", 5, true),
            enqueue("a", 6, false),
        ]);
        run(&mut kv, batch);
        assert_eq!(payloads(&kv, "a"), ["a4", "a5", "a6"]);
        let batch = Command::Batch(vec![
            enqueue("a", 7, false),
            Command::ClearQueue { client: "a".into() },
        ]);
        run(&mut kv, batch);
        assert!(payloads(&kv, "a").is_empty());
    }

    #[test]
    fn retained_set_and_clear() {
        let mut kv = BTreeMap::new();
        let put = |m: Option<StoredMessage>| Command::PutRetained { topic: "a/b".into(), msg: m };
        run(&mut kv, put(Some(msg("x"))));
        assert_eq!(kv.get(&retained_key("a/b")).map(|v| decode(v).unwrap()), Some(msg("x")));
        run(&mut kv, put(None));
        assert!(kv.is_empty());
    }

    #[test]
    fn keys_parse_back() {
        let p = queue_prefix("c");
        assert_eq!(seq_of(&p, &queue_key("c", 42)).unwrap(), 42);
        assert!(seq_of(&p, b"dq\0c\0short").is_err());
        assert_eq!(client_of(&session_key("dev-1")).unwrap(), "dev-1");
    }
}
