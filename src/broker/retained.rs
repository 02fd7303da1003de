//! Retained messages in memory, mirrored to the store by the router.

use std::collections::HashMap;
use std::sync::Arc;

use super::message::Message;
use crate::mqtt::topic;

/// Topic -> last retained message.
#[derive(Debug, Default)]
pub struct Retained {
    by_topic: HashMap<Arc<str>, Arc<Message>>,
}

impl Retained {
    /// Sets (or with an empty payload, clears) the retained message of its topic. Returns
    /// true if the set changed size.
    pub fn apply(&mut self, msg: &Arc<Message>) {
        if msg.payload.is_empty() {
            self.by_topic.remove(&msg.topic);
        } else {
            self.by_topic.insert(msg.topic.clone(), msg.clone());
        }
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
