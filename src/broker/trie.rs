//! Subscription trie: topic filters split by level, with `+` and `#` as ordinary child keys,
//! and shared-subscription groups that deliver each message to one member, round robin.
//!
//! Pure: no locks, no I/O. The router wraps it in a read-mostly lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::mqtt::SubOptions;

/// A subscription held in the trie.
#[derive(Debug, Clone)]
pub struct Entry<K> {
    pub key: K,
    pub opts: SubOptions,
    pub id: Option<u32>,
}

/// Names one shared subscription: `$share/{group}/{filter}`. Carried by deliveries that
/// came through it, so that a member that leaves can hand them to another member.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SharedKey {
    pub group: Box<str>,
    pub filter: Box<str>,
}

/// A shared subscription group at one filter.
#[derive(Debug)]
struct Group<K> {
    key: Arc<SharedKey>,
    members: Vec<Entry<K>>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Node<K> {
    children: HashMap<Box<str>, Node<K>>,
    subs: Vec<Entry<K>>,
    groups: Vec<Group<K>>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node { children: HashMap::new(), subs: Vec::new(), groups: Vec::new() }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.groups.is_empty()
    }
}

/// One match: a subscriber and the subscription that matched. Shared groups contribute one
/// member each, tagged with the shared subscription.
#[derive(Debug, Clone)]
pub struct Match<K> {
    pub key: K,
    pub opts: SubOptions,
    pub id: Option<u32>,
    pub group: Option<Arc<SharedKey>>,
}

/// The subscription trie, generic over the subscriber key.
#[derive(Debug)]
pub struct Trie<K> {
    root: Node<K>,
    len: usize,
}

impl<K> Default for Trie<K> {
    fn default() -> Self {
        Trie { root: Node::default(), len: 0 }
    }
}

impl<K: Clone + PartialEq> Trie<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions (shared members included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn node_mut(&mut self, filter: &str) -> &mut Node<K> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node
    }

    /// Adds or replaces `key`'s subscription to `filter` (in `group` if shared). Returns
    /// true if it replaced an existing one.
    pub fn insert(&mut self, filter: &str, group: Option<&str>, entry: Entry<K>) -> bool {
        let node = self.node_mut(filter);
        let list = match group {
            None => &mut node.subs,
            Some(g) => {
                let idx = match node.groups.iter().position(|x| &*x.key.group == g) {
                    Some(i) => i,
                    None => {
                        node.groups.push(Group {
                            key: Arc::new(SharedKey { group: g.into(), filter: filter.into() }),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.groups.len() - 1
                    }
                };
                &mut node.groups[idx].members
            }
        };
        if let Some(e) = list.iter_mut().find(|e| e.key == entry.key) {
            *e = entry;
            true
        } else {
            list.push(entry);
            self.len += 1;
            false
        }
    }

    /// Removes `key`'s subscription to `filter`. Returns true if there was one.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, key: &K) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, group, key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<K>, levels: &[&str], group: Option<&str>, key: &K) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return match group {
                None => {
                    let before = node.subs.len();
                    node.subs.retain(|e| &e.key != key);
                    node.subs.len() != before
                }
                Some(g) => {
                    let Some(i) = node.groups.iter().position(|x| &*x.key.group == g) else {
                        return false;
                    };
                    let members = &mut node.groups[i].members;
                    let before = members.len();
                    members.retain(|e| &e.key != key);
                    let removed = members.len() != before;
                    if members.is_empty() {
                        node.groups.swap_remove(i);
                    }
                    removed
                }
            };
        };
        let Some(child) = node.children.get_mut(*first) else {
            return false;
        };
        let removed = Self::remove_at(child, rest, group, key);
        if child.is_empty() {
            node.children.remove(*first);
        }
        removed
    }

    /// Every subscription matching `topic`. For each shared group one member is chosen,
    /// round robin, preferring members for which `prefer` holds (e.g. connected ones).
    pub fn matches(&self, topic: &str, prefer: impl Fn(&K) -> bool) -> Vec<Match<K>> {
        let mut out = Vec::new();
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::collect(&self.root, &levels, !dollar, &prefer, &mut out);
        out
    }

    fn collect(
        node: &Node<K>,
        levels: &[&str],
        wildcards: bool,
        prefer: &impl Fn(&K) -> bool,
        out: &mut Vec<Match<K>>,
    ) {
        if wildcards {
            // `#` matches this level and everything below, including nothing ("a/#" ~ "a").
            if let Some(hash) = node.children.get("#") {
                Self::emit(hash, prefer, out);
            }
        }
        let Some((first, rest)) = levels.split_first() else {
            Self::emit(node, prefer, out);
            return;
        };
        if let Some(child) = node.children.get(*first) {
            Self::collect(child, rest, true, prefer, out);
        }
        if wildcards {
            if let Some(plus) = node.children.get("+") {
                Self::collect(plus, rest, true, prefer, out);
            }
        }
    }

    fn emit(node: &Node<K>, prefer: &impl Fn(&K) -> bool, out: &mut Vec<Match<K>>) {
        for e in &node.subs {
            out.push(Match { key: e.key.clone(), opts: e.opts, id: e.id, group: None });
        }
        for g in &node.groups {
            let n = g.members.len();
            if n == 0 {
                continue;
            }
            let start = g.next.fetch_add(1, Ordering::Relaxed);
            let pick = (0..n)
                .map(|i| &g.members[(start + i) % n])
                .find(|e| prefer(&e.key))
                .unwrap_or(&g.members[start % n]);
            out.push(Match {
                key: pick.key.clone(),
                opts: pick.opts,
                id: pick.id,
                group: Some(g.key.clone()),
            });
        }
    }

    /// One member of the shared subscription `key` for which `eligible` holds, round robin;
    /// `None` if there is none. Used to hand a leaving member's messages to another one.
    pub fn pick(&self, key: &SharedKey, eligible: impl Fn(&K) -> bool) -> Option<Match<K>> {
        let mut node = &self.root;
        for level in key.filter.split('/') {
            node = node.children.get(level)?;
        }
        let g = node.groups.iter().find(|g| g.key.group == key.group)?;
        let n = g.members.len();
        let start = g.next.fetch_add(1, Ordering::Relaxed);
        let e = (0..n).map(|i| &g.members[(start + i) % n]).find(|e| eligible(&e.key))?;
        Some(Match { key: e.key.clone(), opts: e.opts, id: e.id, group: Some(g.key.clone()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{topic, QoS};

    fn e(key: u32) -> Entry<u32> {
        Entry { key, opts: SubOptions::qos(QoS::AtLeastOnce), id: None }
    }

    fn keys(t: &Trie<u32>, topic: &str) -> Vec<u32> {
        let mut k: Vec<u32> = t.matches(topic, |_| true).into_iter().map(|m| m.key).collect();
        k.sort();
        k
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut t = Trie::new();
        t.insert("a/b", None, e(1));
        t.insert("a/+", None, e(2));
        t.insert("a/#", None, e(3));
        t.insert("#", None, e(4));
        t.insert("+/b", None, e(5));
        t.insert("$SYS/#", None, e(6));
        assert_eq!(keys(&t, "a/b"), [1, 2, 3, 4, 5]);
        assert_eq!(keys(&t, "a"), [3, 4]);
        assert_eq!(keys(&t, "a/b/c"), [3, 4]);
        assert_eq!(keys(&t, "$SYS/x"), [6]);
        assert_eq!(keys(&t, "$SYS/b"), [6]);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn replace_and_remove_prune() {
        let mut t = Trie::new();
        assert!(!t.insert("a/b/c", None, e(1)));
        assert!(t.insert("a/b/c", None, e(1)));
        assert_eq!(t.len(), 1);
        assert!(t.remove("a/b/c", None, &1));
        assert!(!t.remove("a/b/c", None, &1));
        assert!(t.root.is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn shared_groups_round_robin_and_prefer() {
        let mut t = Trie::new();
        for k in 1..=3 {
            t.insert("s/+", Some("g"), e(k));
        }
        t.insert("s/+", Some("h"), e(9));
        let mut seen = Vec::new();
        for _ in 0..6 {
            let m = t.matches("s/x", |_| true);
            assert_eq!(m.len(), 2);
            seen.extend(
                m.iter()
                    .filter(|m| m.group.as_ref().is_some_and(|g| &*g.group == "g"))
                    .map(|m| m.key),
            );
        }
        for k in 1..=3 {
            assert_eq!(seen.iter().filter(|x| **x == k).count(), 2);
        }
        // Only member 2 is "online": it gets every message of group g.
        for _ in 0..4 {
            let m = t.matches("s/x", |k| *k == 2 || *k == 9);
            assert!(m.iter().any(|m| m.key == 2));
        }
        assert!(t.remove("s/+", Some("g"), &2));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn pick_finds_another_eligible_member() {
        let mut t = Trie::new();
        for k in 1..=3 {
            t.insert("s/#", Some("g"), e(k));
        }
        let key = SharedKey { group: "g".into(), filter: "s/#".into() };
        for _ in 0..6 {
            let m = t.pick(&key, |k| *k != 1).map(|m| m.key);
            assert!(matches!(m, Some(2) | Some(3)));
        }
        assert!(t.pick(&key, |_| false).is_none());
        let other = SharedKey { group: "h".into(), filter: "s/#".into() };
        assert!(t.pick(&other, |_| true).is_none());
        let missing = SharedKey { group: "g".into(), filter: "s/x".into() };
        assert!(t.pick(&missing, |_| true).is_none());
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_reference_matcher(
            filters in proptest::collection::vec("(a|b|\\+|\\$s)(/(a|b|\\+|#)){0,3}", 1..12),
            topic in "(a|b|\\$s)(/(a|b)){0,3}",
        ) {
            let mut t = Trie::new();
            let mut want = Vec::new();
            for (i, f) in filters.iter().enumerate() {
                if !topic::valid_filter(f) { continue; }
                t.insert(f, None, e(i as u32));
                if topic::matches(f, &topic) { want.push(i as u32); }
            }
            proptest::prop_assert_eq!(keys(&t, &topic), want);
        }
    }
}
