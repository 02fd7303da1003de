//! Which rules read a topic: a trie of the rules' topic filters. Finding the rules of a
//! topic walks the trie with the topic's levels and allocates nothing; a topic that
//! matches no rule costs that walk and nothing else.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct RuleIndex {
    root: Node,
    len: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Rules whose filter ends here.
    here: Vec<usize>,
    /// Rules whose filter ends with `#` below this level.
    hash: Vec<usize>,
}

impl RuleIndex {
    /// Adds rule `id` under `filter`.
    pub fn insert(&mut self, filter: &str, id: usize) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            if level == "#" {
                node.hash.push(id);
                self.len += 1;
                return;
            }
            node = node.children.entry(level.into()).or_default();
        }
        node.here.push(id);
        self.len += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `visit` with each rule whose filter matches `topic` (a rule with two
    /// matching filters is visited twice). Wildcards at the first level do not match
    /// topics starting with `$`, as in MQTT.
    pub fn for_each(&self, topic: &str, visit: &mut impl FnMut(usize)) {
        if self.len == 0 {
            return;
        }
        let dollar = topic.starts_with('$');
        walk(&self.root, topic, true, dollar, visit);
    }
}

fn walk(node: &Node, rest: &str, first: bool, dollar: bool, visit: &mut impl FnMut(usize)) {
    let wild = !(first && dollar);
    if wild {
        // `a/#` matches `a` as well as everything below it.
        node.hash.iter().copied().for_each(&mut *visit);
    }
    let (level, more) = match rest.split_once('/') {
        Some((l, m)) => (l, Some(m)),
        None => (rest, None),
    };
    for key in [level, "+"] {
        if key == "+" && !wild {
            continue;
        }
        let Some(child) = node.children.get(key) else { continue };
        match more {
            Some(m) => walk(child, m, false, dollar, visit),
            None => {
                child.here.iter().copied().for_each(&mut *visit);
                child.hash.iter().copied().for_each(&mut *visit);
            }
        }
        if key == "+" && level == "+" {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hits(ix: &RuleIndex, topic: &str) -> Vec<usize> {
        let mut v = Vec::new();
        ix.for_each(topic, &mut |i| v.push(i));
        v.sort_unstable();
        v
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut ix = RuleIndex::default();
        for (i, f) in
            ["t/#", "t/+/temp", "a/b", "#", "$events/client_connected", "+/x"].iter().enumerate()
        {
            ix.insert(f, i);
        }
        assert_eq!(hits(&ix, "t/room/temp"), vec![0, 1, 3]);
        assert_eq!(hits(&ix, "t"), vec![0, 3]);
        assert_eq!(hits(&ix, "a/b"), vec![2, 3]);
        assert_eq!(hits(&ix, "a/x"), vec![3, 5]);
        assert_eq!(hits(&ix, "$events/client_connected"), vec![4]);
        assert_eq!(hits(&ix, "$SYS/x"), Vec::<usize>::new());
        assert!(RuleIndex::default().is_empty());
    }

    proptest! {
        #[test]
        fn agrees_with_the_mqtt_matcher(
            filters in prop::collection::vec("(a|b|\\+)(/(a|b|\\+)){0,2}(/#)?|#", 1..6),
            topic in "\\$?(a|b)(/(a|b)){0,3}",
        ) {
            let mut ix = RuleIndex::default();
            for (i, f) in filters.iter().enumerate() {
                ix.insert(f, i);
            }
            let want: Vec<usize> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| crate::mqtt::topic::matches(f, &topic))
                .map(|(i, _)| i)
                .collect();
            prop_assert_eq!(hits(&ix, &topic), want);
        }
    }
}
