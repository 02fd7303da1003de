//! Per-connection and per-address limits against abuse: a token bucket for publish rate
//! and inbound bandwidth (the connection stops reading while it is empty), a count of
//! connections per source address, and the topic and user-property size checks.
//! The arithmetic is pure and takes the time as an argument.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::LimitsConfig;
use crate::mqtt::Properties;

/// A token bucket: `rate` tokens per second, holding at most one second's worth. Takes
/// may overdraw it; the debt is the wait.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: u64, now: Instant) -> Bucket {
        Bucket { rate: rate as f64, tokens: rate as f64, at: now }
    }

    /// Takes `n` tokens; how long to wait before the next take, if the bucket is in debt.
    pub fn take(&mut self, n: u64, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.tokens -= n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// The publish rate and bandwidth buckets of one connection.
#[derive(Debug, Clone)]
pub struct ConnLimiter {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl ConnLimiter {
    /// `None` when neither limit is set (the default): nothing to count.
    pub fn new(cfg: &LimitsConfig, now: Instant) -> Option<Box<ConnLimiter>> {
        let m = (cfg.max_publish_rate > 0).then(|| Bucket::new(cfg.max_publish_rate, now));
        let b =
            (cfg.max_inbound_bytes_rate > 0).then(|| Bucket::new(cfg.max_inbound_bytes_rate, now));
        (m.is_some() || b.is_some()).then(|| Box::new(ConnLimiter { messages: m, bytes: b }))
    }

    /// Counts one inbound packet of `size` bytes (`publish`: it is a PUBLISH). The wait
    /// before reading more, and which limit asked for it.
    pub fn packet(
        &mut self,
        size: usize,
        publish: bool,
        now: Instant,
    ) -> Option<(Duration, &'static str)> {
        let by_bytes = self.bytes.as_mut().and_then(|b| b.take(size as u64, now));
        let by_messages = match (&mut self.messages, publish) {
            (Some(m), true) => m.take(1, now),
            _ => None,
        };
        match (by_messages, by_bytes) {
            (Some(m), Some(b)) if b > m => Some((b, "inbound_bytes_rate")),
            (Some(m), _) => Some((m, "publish_rate")),
            (None, Some(b)) => Some((b, "inbound_bytes_rate")),
            (None, None) => None,
        }
    }
}

/// Connections per source address.
#[derive(Debug, Default)]
pub struct Addresses {
    open: DashMap<IpAddr, u32>,
}

/// Holds one connection's place in its address's count.
#[derive(Debug)]
pub struct AddressGuard {
    addresses: Arc<Addresses>,
    ip: IpAddr,
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut e) = self.addresses.open.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl Addresses {
    /// A place for one more connection from `ip`, unless it has `max` (0: no limit).
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<Option<AddressGuard>> {
        if max == 0 {
            return Some(None);
        }
        let mut n = self.open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Some(AddressGuard { addresses: self.clone(), ip }))
    }
}

/// Whether a topic name or filter is within the configured length and depth.
pub fn topic_ok(topic: &str, cfg: &LimitsConfig) -> bool {
    topic.len() <= cfg.max_topic_length && topic.split('/').count() <= cfg.max_topic_levels
}

/// Bytes of user property keys and values.
pub fn user_property_bytes(p: &Properties) -> usize {
    p.user_properties.iter().map(|(k, v)| k.len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_then_asks_to_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, t0);
        for _ in 0..10 {
            assert_eq!(b.take(1, t0), None);
        }
        let w = b.take(1, t0).expect("in debt");
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-9, "{w:?}");
        // Half a second later, five more fit (after the debt of one is paid).
        let t1 = t0 + Duration::from_millis(500);
        for _ in 0..4 {
            assert_eq!(b.take(1, t1), None);
        }
        assert!(b.take(1, t1).is_some());
        // Idle time refills at most one second's worth.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(b.take(1, t2), None);
        }
        assert!(b.take(1, t2).is_some());
    }

    #[test]
    fn the_limiter_names_the_limit_that_binds() {
        let t0 = Instant::now();
        let cfg = LimitsConfig {
            max_publish_rate: 2,
            max_inbound_bytes_rate: 1000,
            ..Default::default()
        };
        let mut l = ConnLimiter::new(&cfg, t0).unwrap();
        assert!(l.packet(10, true, t0).is_none());
        assert!(l.packet(10, true, t0).is_none());
        assert_eq!(l.packet(10, true, t0).map(|w| w.1), Some("publish_rate"));
        assert!(l.packet(5000, false, t0).map(|w| w.1) == Some("inbound_bytes_rate"));
        assert!(ConnLimiter::new(&LimitsConfig::default(), t0).is_none());
    }

    #[test]
    fn addresses_count_and_release() {
        let a = Arc::new(Addresses::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let g1 = a.acquire(ip, 2).unwrap();
        let g2 = a.acquire(ip, 2).unwrap();
        assert!(a.acquire(ip, 2).is_none());
        assert!(a.acquire("10.0.0.2".parse().unwrap(), 2).is_some());
        drop(g1);
        assert!(a.acquire(ip, 2).is_some());
        drop(g2);
        assert!(a.acquire(ip, 0).unwrap().is_none(), "no limit, nothing counted");
    }

    #[test]
    fn topics_are_checked_for_length_and_depth() {
        let cfg = LimitsConfig { max_topic_length: 10, max_topic_levels: 3, ..Default::default() };
        assert!(topic_ok("a/b/c", &cfg));
        assert!(!topic_ok("a/b/c/d", &cfg));
        assert!(!topic_ok("abcdefghijk", &cfg));
    }
}
