//! Retained messages in memory, mirrored to the store by the router, and the limits on
//! how many (and how many bytes) the node keeps.

use std::collections::HashMap;
use std::sync::Arc;

use super::message::Message;
use crate::mqtt::topic;

/// How much the retained set may hold (0: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct RetainLimits {
    pub messages: usize,
    pub bytes: u64,
}

/// Topic -> last retained message.
#[derive(Debug, Default)]
pub struct Retained {
    by_topic: HashMap<Arc<str>, Arc<Message>>,
    /// Topic and payload bytes of every retained message.
    bytes: u64,
}

fn size(m: &Message) -> u64 {
    (m.topic.len() + m.payload.len()) as u64
}

impl Retained {
    /// Sets (or with an empty payload, clears) the retained message of its topic.
    pub fn apply(&mut self, msg: &Arc<Message>) {
        let old = if msg.payload.is_empty() {
            self.by_topic.remove(&msg.topic)
        } else {
            self.bytes += size(msg);
            self.by_topic.insert(msg.topic.clone(), msg.clone())
        };
        if let Some(old) = old {
            self.bytes = self.bytes.saturating_sub(size(&old));
        }
    }

    /// Clears the retained message of `topic`.
    pub fn clear(&mut self, topic: &str) {
        if let Some(old) = self.by_topic.remove(topic) {
            self.bytes = self.bytes.saturating_sub(size(&old));
        }
    }

    /// Whether `msg` may be applied within `limits`: clearing always may; setting may if
    /// the count and bytes after it are within the limits, or it does not grow them.
    pub fn admits(&self, msg: &Message, limits: RetainLimits) -> bool {
        if msg.payload.is_empty() {
            return true;
        }
        let old = self.by_topic.get(&msg.topic).map(|m| size(m));
        let count = self.by_topic.len() + usize::from(old.is_none());
        let bytes = self.bytes.saturating_sub(old.unwrap_or(0)) + size(msg);
        let count_ok = limits.messages == 0 || count <= limits.messages || old.is_some();
        let bytes_ok = limits.bytes == 0 || bytes <= limits.bytes || bytes <= self.bytes;
        count_ok && bytes_ok
    }

    /// Topic and payload bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }

    /// Retained messages matching `filter` (exact lookups avoid the scan).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        if !topic::has_wildcard(filter) {
            return self.by_topic.get(filter).cloned().into_iter().collect();
        }
        self.by_topic.values().filter(|m| topic::matches(filter, &m.topic)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from(topic),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            qos: crate::mqtt::QoS::AtMostOnce,
            retain: true,
            props: Default::default(),
            expires_at_ms: None,
            origin: None,
            publisher: None,
        })
    }

    #[test]
    fn limits_count_new_topics_and_bytes() {
        let limits = RetainLimits { messages: 2, bytes: 20 };
        let mut r = Retained::default();
        for m in [msg("a/1", "xxxx"), msg("a/2", "yyyy")] {
            assert!(r.admits(&m, limits));
            r.apply(&m);
        }
        assert_eq!((r.len(), r.bytes()), (2, 14));
        // A third topic is over the count; replacing one is not, unless it grows past
        // the bytes.
        assert!(!r.admits(&msg("a/3", "z"), limits));
        assert!(r.admits(&msg("a/1", "0123456"), limits));
        assert!(!r.admits(&msg("a/1", "0123456789ab"), limits));
        // Clearing is always admitted, and makes room.
        let clear = msg("a/2", "");
        assert!(r.admits(&clear, limits));
        r.apply(&clear);
        assert_eq!((r.len(), r.bytes()), (1, 7));
        assert!(r.admits(&msg("a/3", "z"), limits));
        // No limits: anything goes.
        assert!(r.admits(&msg("b/1", &"x".repeat(100)), RetainLimits::default()));
    }

    #[test]
    fn over_limit_state_still_allows_shrinking() {
        // Limits lowered below what is stored (a restart with a new config).
        let mut r = Retained::default();
        r.apply(&msg("a/1", "0123456789"));
        let limits = RetainLimits { messages: 1, bytes: 5 };
        assert!(r.admits(&msg("a/1", "01234"), limits));
        assert!(!r.admits(&msg("a/1", "0123456789abc"), limits));
    }
}
