//! What a command does to a group's data: pure logic over a key-value view, so it is
//! unit-tested without sled and every replica computes the same writes.
//!
//! Data keys start with `d`; the state machine keeps its own bookkeeping under `\0`.

use std::collections::BTreeMap;

use super::types::{Command, Response, StoredShadow};
use crate::jobs::model::{Execution, Job};
use crate::registry::{Group, Thing};
use crate::store::{decode, encode, StoreError};

/// Read access to a group's data.
pub trait Kv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Visits the keys starting with `prefix` in ascending order until `visit` returns
    /// false.
    fn scan_keys(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), StoreError>;
}

impl Kv for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(BTreeMap::get(self, key).cloned())
    }

    fn scan_keys(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for k in self.range(prefix.to_vec()..).map(|(k, _)| k) {
            if !k.starts_with(prefix) || !visit(k) {
                break;
            }
        }
        Ok(())
    }
}

impl Kv for sled::Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sled::Tree::get(self, key)?.map(|v| v.to_vec()))
    }

    fn scan_keys(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for k in self.scan_prefix(prefix).keys() {
            if !visit(&k?) {
                break;
            }
        }
        Ok(())
    }
}

/// One write: a key and its new value (`None` removes it).
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// A view of `base` with the writes of earlier commands in the same batch on top.
struct Overlay<'a, K: Kv> {
    base: &'a K,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<K: Kv> Kv for Overlay<'_, K> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    /// The base's keys merged with this batch's writes: written keys appear, removed
    /// ones do not.
    fn scan_keys(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let own: Vec<(&Vec<u8>, bool)> = self
            .writes
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k, v.is_some()))
            .collect();
        let mut i = 0;
        let mut stopped = false;
        self.base.scan_keys(prefix, &mut |k| {
            while let Some((ok, present)) = own.get(i).filter(|(ok, _)| ok.as_slice() < k) {
                i += 1;
                if *present && !visit(ok) {
                    stopped = true;
                    return false;
                }
            }
            if own.get(i).is_some_and(|(ok, _)| ok.as_slice() == k) {
                let present = own[i].1;
                i += 1;
                if !present {
                    return true;
                }
            }
            let go = visit(k);
            stopped = !go;
            go
        })?;
        if !stopped {
            for (k, present) in &own[i..] {
                if *present && !visit(k) {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The key of a shadow: `d` `shadow` NUL thing NUL name (`""` for the classic shadow).
/// Thing names cannot contain NUL, so keys of different things never collide.
pub fn shadow_key(thing: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + thing.len() + name.len());
    k.extend_from_slice(b"dshadow\0");
    k.extend_from_slice(thing.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Reads a shadow record (a tombstone included).
pub fn read_shadow(
    kv: &impl Kv,
    thing: &str,
    name: &str,
) -> Result<Option<StoredShadow>, StoreError> {
    kv.get(&shadow_key(thing, name))?.map(|v| decode(&v)).transpose()
}

fn key(parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// The key of a job definition (meta group).
pub fn job_key(job_id: &str) -> Vec<u8> {
    key(&["djob", job_id])
}

/// Prefix of every job definition.
pub const JOB_PREFIX: &[u8] = b"djob\0";

/// The key of a thing's execution of a job (shard group).
pub fn exec_key(thing: &str, job_id: &str) -> Vec<u8> {
    key(&["dexec", thing, job_id])
}

/// Prefix of a thing's executions.
pub fn thing_exec_prefix(thing: &str) -> Vec<u8> {
    let mut k = key(&["dexec", thing]);
    k.push(0);
    k
}

/// Index entry: job, then thing (lists a job's executions in a shard).
pub fn job_index_key(job_id: &str, thing: &str) -> Vec<u8> {
    key(&["djobx", job_id, thing])
}

/// Prefix of a job's index entries.
pub fn job_index_prefix(job_id: &str) -> Vec<u8> {
    let mut k = key(&["djobx", job_id]);
    k.push(0);
    k
}

/// Prefix of the timeout index: `dtmo` NUL, then the deadline (big-endian milliseconds),
/// then thing NUL job.
pub const TIMEOUT_PREFIX: &[u8] = b"dtmo\0";

pub fn timeout_key(at_ms: u64, thing: &str, job_id: &str) -> Vec<u8> {
    let mut k = TIMEOUT_PREFIX.to_vec();
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&key(&[thing, job_id]));
    k
}

/// Splits a timeout index key into (deadline, thing, job).
pub fn parse_timeout_key(k: &[u8]) -> Option<(u64, String, String)> {
    let rest = k.strip_prefix(TIMEOUT_PREFIX)?;
    let (at, rest) = rest.split_at_checked(8)?;
    let at = u64::from_be_bytes(at.try_into().ok()?);
    let text = std::str::from_utf8(rest).ok()?;
    let (thing, job) = text.split_once('\0')?;
    Some((at, thing.into(), job.into()))
}

/// Prefix of every registered thing (meta group).
pub const THING_PREFIX: &[u8] = b"dthing\0";
/// Prefix of every thing group (meta group).
pub const GROUP_PREFIX: &[u8] = b"dgroup\0";

/// Prefix of every rule definition (meta group).
pub const RULE_PREFIX: &[u8] = b"drule\0";

pub fn rule_key(name: &str) -> Vec<u8> {
    key(&["drule", name])
}

pub fn read_rule(
    kv: &impl Kv,
    name: &str,
) -> Result<Option<crate::rules::store::RuleDef>, StoreError> {
    kv.get(&rule_key(name))?.map(|v| decode(&v)).transpose()
}

pub fn thing_key(name: &str) -> Vec<u8> {
    key(&["dthing", name])
}

pub fn group_key(name: &str) -> Vec<u8> {
    key(&["dgroup", name])
}

/// Membership index entry: group, then thing.
pub fn member_key(group: &str, thing: &str) -> Vec<u8> {
    key(&["dmember", group, thing])
}

/// Prefix of a group's membership entries.
pub fn member_prefix(group: &str) -> Vec<u8> {
    let mut k = key(&["dmember", group]);
    k.push(0);
    k
}

pub fn read_thing(kv: &impl Kv, name: &str) -> Result<Option<Thing>, StoreError> {
    kv.get(&thing_key(name))?.map(|v| decode(&v)).transpose()
}

pub fn read_group(kv: &impl Kv, name: &str) -> Result<Option<Group>, StoreError> {
    kv.get(&group_key(name))?.map(|v| decode(&v)).transpose()
}

/// The key of a job's target list (meta group).
pub fn job_targets_key(job_id: &str) -> Vec<u8> {
    key(&["djobt", job_id])
}

pub fn read_job_targets(kv: &impl Kv, job_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(kv.get(&job_targets_key(job_id))?.map(|v| decode(&v)).transpose()?.unwrap_or_default())
}

pub fn read_job(kv: &impl Kv, job_id: &str) -> Result<Option<Job>, StoreError> {
    kv.get(&job_key(job_id))?.map(|v| decode(&v)).transpose()
}

pub fn read_execution(
    kv: &impl Kv,
    thing: &str,
    job_id: &str,
) -> Result<Option<Execution>, StoreError> {
    kv.get(&exec_key(thing, job_id))?.map(|v| decode(&v)).transpose()
}

/// Whether applying `cmd` may change an access decision (credentials, certificates,
/// policies, things and their groups).
pub fn touches_access(cmd: &Command) -> bool {
    match cmd {
        Command::PutAuth { .. } | Command::PutThing { .. } | Command::PutGroup { .. } => true,
        Command::Batch(cmds) => cmds.iter().any(touches_access),
        _ => false,
    }
}

/// Whether applying `cmd` may change a rule definition.
pub fn touches_rules(cmd: &Command) -> bool {
    match cmd {
        Command::PutRule { .. } => true,
        Command::Batch(cmds) => cmds.iter().any(touches_rules),
        _ => false,
    }
}

/// Applies one command: the writes to make and the answer for the proposer.
pub fn apply(kv: &impl Kv, cmd: &Command) -> Result<(Vec<Write>, Response), StoreError> {
    match cmd {
        Command::Batch(cmds) => {
            let mut view = Overlay { base: kv, writes: BTreeMap::new() };
            let mut all = Vec::new();
            let mut answers = Vec::with_capacity(cmds.len());
            for c in cmds {
                let (writes, resp) = apply_one(&view, c)?;
                for (k, v) in writes {
                    view.writes.insert(k.clone(), v.clone());
                    all.push((k, v));
                }
                answers.push(resp);
            }
            Ok((all, Response::Batch(answers)))
        }
        other => apply_one(kv, other),
    }
}

/// Applies one command that is not a batch.
fn apply_one(kv: &impl Kv, cmd: &Command) -> Result<(Vec<Write>, Response), StoreError> {
    match cmd {
        Command::Batch(_) => Err(StoreError::Codec("a batch inside a batch".into())),
        Command::PutShadow { thing, name, expect, value } => {
            let found = read_shadow(kv, thing, name)?.map(|s| s.version);
            if found != *expect {
                return Ok((Vec::new(), Response::Conflict { found }));
            }
            Ok((vec![(shadow_key(thing, name), Some(encode(value)?))], Response::Applied))
        }
        Command::PutRule { name, expect, value } => {
            let found = read_rule(kv, name)?.map(|r| r.version);
            if found != *expect {
                return Ok((Vec::new(), Response::Conflict { found }));
            }
            Ok((vec![(rule_key(name), value.as_ref().map(encode).transpose()?)], Response::Applied))
        }
        Command::PutJob { expect, value, targets } => {
            let found = read_job(kv, &value.job_id)?.map(|j| j.version);
            if found != *expect {
                return Ok((Vec::new(), Response::Conflict { found }));
            }
            let mut writes = vec![(job_key(&value.job_id), Some(encode(value)?))];
            if let Some(t) = targets {
                writes.push((job_targets_key(&value.job_id), Some(encode(t)?)));
            }
            Ok((writes, Response::Applied))
        }
        Command::PutThing { name, expect, value } => {
            let old = read_thing(kv, name)?;
            let found = old.as_ref().map(|t| t.version);
            if found != *expect {
                return Ok((Vec::new(), Response::Conflict { found }));
            }
            let old_groups = old.map(|t| t.groups).unwrap_or_default();
            let new_groups = value.as_ref().map(|t| t.groups.clone()).unwrap_or_default();
            let mut writes = Vec::new();
            for g in old_groups.difference(&new_groups) {
                writes.push((member_key(g, name), None));
            }
            for g in new_groups.difference(&old_groups) {
                writes.push((member_key(g, name), Some(Vec::new())));
            }
            if value.is_none() {
                // A deleted thing's credentials and its policy attachments go with it.
                let cred = crate::auth::records::prefix(&["cred", name]);
                let attached = crate::auth::records::attachment_prefix(
                    &crate::auth::records::Target::Thing(name.clone()),
                );
                for p in [cred, attached] {
                    kv.scan_keys(&p, &mut |k| {
                        writes.push((k.to_vec(), None));
                        true
                    })?;
                }
            }
            let v = value.as_ref().map(encode).transpose()?;
            writes.push((thing_key(name), v));
            Ok((writes, Response::Applied))
        }
        Command::PutGroup { name, expect, value } => {
            let found = read_group(kv, name)?.map(|g| g.version);
            if found != *expect {
                return Ok((Vec::new(), Response::Conflict { found }));
            }
            let v = value.as_ref().map(encode).transpose()?;
            Ok((vec![(group_key(name), v)], Response::Applied))
        }
        Command::PutSession { .. }
        | Command::EndSession { .. }
        | Command::Enqueue { .. }
        | Command::Dequeue { .. }
        | Command::ClearQueue { .. }
        | Command::PutRetained { .. } => super::sessions::apply(kv, cmd),
        Command::PutAuth { key, expect, value } => {
            crate::auth::records::put(kv, key, *expect, value.as_ref())
        }
        Command::Audit { entry, keep } => crate::auth::records::audit(kv, entry, *keep),
        Command::Cluster(c) => crate::cluster::records::apply(kv, c),
        Command::PutExecution { expect, value } => {
            let old = read_execution(kv, &value.thing, &value.job_id)?;
            let found = old.as_ref().map(|e| e.version);
            if found != *expect {
                return Ok((Vec::new(), Response::Conflict { found }));
            }
            let mut writes = Vec::with_capacity(4);
            if let Some(at) = old.and_then(|o| o.timeout_at_ms) {
                writes.push((timeout_key(at, &value.thing, &value.job_id), None));
            }
            if let Some(at) = value.timeout_at_ms {
                writes.push((timeout_key(at, &value.thing, &value.job_id), Some(Vec::new())));
            }
            writes.push((job_index_key(&value.job_id, &value.thing), Some(Vec::new())));
            writes.push((exec_key(&value.thing, &value.job_id), Some(encode(value)?)));
            Ok((writes, Response::Applied))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(version: u64, expect: Option<u64>, doc: Option<&str>) -> Command {
        Command::PutShadow {
            thing: "t".into(),
            name: String::new(),
            expect,
            value: StoredShadow { version, updated_ms: 1, doc: doc.map(String::from) },
        }
    }

    fn run(kv: &mut BTreeMap<Vec<u8>, Vec<u8>>, cmd: &Command) -> Response {
        let (writes, resp) = apply(kv, cmd).unwrap();
        for (k, v) in writes {
            match v {
                Some(v) => kv.insert(k, v),
                None => kv.remove(&k),
            };
        }
        resp
    }

    #[test]
    fn put_shadow_is_compare_and_set_on_the_version() {
        let mut kv = BTreeMap::new();
        assert_eq!(run(&mut kv, &put(1, None, Some("{}"))), Response::Applied);
        // A second creator lost the race.
        assert_eq!(run(&mut kv, &put(1, None, Some("{}"))), Response::Conflict { found: Some(1) });
        assert_eq!(run(&mut kv, &put(2, Some(1), Some("{\"a\":1}"))), Response::Applied);
        assert_eq!(
            run(&mut kv, &put(3, Some(1), Some("{}"))),
            Response::Conflict { found: Some(2) }
        );
        // A delete leaves a tombstone that keeps the version.
        assert_eq!(run(&mut kv, &put(3, Some(2), None)), Response::Applied);
        let s = read_shadow(&kv, "t", "").unwrap().unwrap();
        assert_eq!((s.version, s.doc), (3, None));
    }

    #[test]
    fn a_batch_applies_in_order_and_sees_its_own_writes() {
        let mut kv = BTreeMap::new();
        let batch = Command::Batch(vec![
            put(1, None, Some("{}")),
            // Sees the first write: conflicts instead of overwriting it.
            put(1, None, Some("{}")),
            put(2, Some(1), Some("{\"a\":1}")),
        ]);
        assert_eq!(
            run(&mut kv, &batch),
            Response::Batch(vec![
                Response::Applied,
                Response::Conflict { found: Some(1) },
                Response::Applied
            ])
        );
        assert_eq!(read_shadow(&kv, "t", "").unwrap().unwrap().version, 2);
    }

    #[test]
    fn deleting_a_thing_deletes_its_credentials_and_attachments() {
        use crate::auth::records::{AuthKey, AuthRecord, Target};
        let mut kv = BTreeMap::new();
        let thing = |v| Thing {
            name: "t".into(),
            attributes: Default::default(),
            groups: Default::default(),
            created_at: 1,
            version: v,
        };
        run(&mut kv, &Command::PutThing { name: "t".into(), expect: None, value: Some(thing(1)) });
        for (t, p) in [("t", "p"), ("t2", "p")] {
            let key = AuthKey::Attachment { target: Target::Thing(t.into()), policy: p.into() };
            let cmd = Command::PutAuth { key, expect: None, value: Some(AuthRecord::Attachment) };
            assert_eq!(run(&mut kv, &cmd), Response::Applied);
        }
        kv.insert(AuthKey::Credential { thing: "t".into(), id: "c1".into() }.bytes(), vec![1]);
        kv.insert(AuthKey::Credential { thing: "t2".into(), id: "c2".into() }.bytes(), vec![1]);
        let del = Command::PutThing { name: "t".into(), expect: Some(1), value: None };
        assert_eq!(run(&mut kv, &del), Response::Applied);
        let left: Vec<_> = kv.keys().filter(|k| k.starts_with(b"dauth")).cloned().collect();
        assert_eq!(left.len(), 2, "only t2's records stay");
        assert!(left.iter().all(|k| k.windows(3).any(|w| w == b"\0t2")));
    }

    #[test]
    fn keys_of_different_things_and_names_do_not_collide() {
        assert_ne!(shadow_key("a", "b"), shadow_key("a\0b", ""));
        assert_ne!(shadow_key("ab", ""), shadow_key("a", "b"));
        assert!(shadow_key("x", "").starts_with(b"d"));
    }
}
