//! A connection's access decisions: its grant, its compiled policies and a small cache of
//! answers, all dropped and rebuilt when the meta group applies a change that bears on
//! access.

use std::collections::HashMap;

use super::policy::{Action, Rules};
use super::{Auth, Grant};

/// Topics whose answers a connection remembers; past it the cache starts over.
const CACHE_TOPICS: usize = 64;

/// What one connection may do.
pub enum Access {
    /// Every permission (anonymous clients of the quick-start configuration).
    All,
    Device(Box<DeviceAccess>),
}

pub struct DeviceAccess {
    grant: Grant,
    /// The access epoch `rules` were compiled at (`u64::MAX`: not yet).
    epoch: u64,
    rules: Rules,
    /// Per topic: which actions have an answer (bits), and which of them are allowed.
    cache: HashMap<Box<str>, (u8, u8)>,
}

impl Access {
    pub fn new(grant: Grant) -> Access {
        if grant.all {
            return Access::All;
        }
        Access::Device(Box::new(DeviceAccess {
            grant,
            epoch: u64::MAX,
            rules: Rules::default(),
            cache: HashMap::new(),
        }))
    }

    /// Whether `action` on `topic` (a filter, for subscribe) is allowed now. Denials are
    /// counted.
    pub fn allows(&mut self, auth: &Auth, action: Action, topic: &str) -> bool {
        let Access::Device(d) = self else { return true };
        let epoch = auth.epoch();
        if epoch != d.epoch {
            d.rules = auth.rules(&d.grant);
            d.cache.clear();
            d.epoch = epoch;
        }
        let bit = action as u8;
        let allowed = match d.cache.get(topic) {
            Some((known, yes)) if known & bit != 0 => yes & bit != 0,
            _ => {
                let yes = d.rules.allows(action, topic);
                if d.cache.len() >= CACHE_TOPICS && !d.cache.contains_key(topic) {
                    d.cache.clear();
                }
                let e = d.cache.entry(topic.into()).or_insert((0, 0));
                e.0 |= bit;
                if yes {
                    e.1 |= bit;
                }
                yes
            }
        };
        if !allowed {
            auth.metrics.authz_denied.with_label_values(&[action.label()]).inc();
        }
        allowed
    }
}
