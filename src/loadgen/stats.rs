//! Counters and histograms shared by every load-generator client, and the final report.
//!
//! Clients update atomics on every event and hand latency samples over in small batches
//! so the shared histogram lock is taken rarely. Loss and duplicates are worked out from
//! (publisher, sequence) pairs stamped into each payload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Bytes at the front of a stamped payload: send time (ns since the Unix epoch), publisher
/// id and sequence number, all big-endian.
pub const STAMP_LEN: usize = 16;

/// Nanoseconds since the Unix epoch (publisher and subscriber share the machine's clock).
pub fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Shared by every client of one run.
pub struct Stats {
    start: Instant,
    /// Clients connected now.
    pub connected: AtomicU64,
    /// Successful CONNACKs over the run.
    pub connects: AtomicU64,
    pub connect_failed: AtomicU64,
    /// CONNACK redirects followed (`--follow-redirects`).
    pub redirects: AtomicU64,
    pub subscribed: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    /// Shadow updates answered `rejected` (shadow mode).
    pub rejected: AtomicU64,
    /// Sequence numbers skipped within one (publisher, subscriber) stream.
    pub gaps: AtomicU64,
    /// Nanoseconds since `start` of the first and last send and receive and of the first
    /// connect attempt and the last CONNACK.
    first_send: AtomicU64,
    last_send: AtomicU64,
    first_recv: AtomicU64,
    last_recv: AtomicU64,
    first_connect: AtomicU64,
    last_connack: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    connack: Mutex<Histogram<u64>>,
    /// Messages each publisher sent (its last sequence number is this minus one).
    published: Mutex<HashMap<u32, u64>>,
    /// Last sequence number each subscriber saw from each publisher.
    last_seen: Mutex<Vec<(u32, u64)>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            start: Instant::now(),
            connected: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            redirects: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            first_send: AtomicU64::new(u64::MAX),
            last_send: AtomicU64::new(0),
            first_recv: AtomicU64::new(u64::MAX),
            last_recv: AtomicU64::new(0),
            first_connect: AtomicU64::new(u64::MAX),
            last_connack: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
            connack: Mutex::new(histogram()),
            published: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(Vec::new()),
        }
    }
}

impl Stats {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn connecting(&self) {
        self.first_connect.fetch_min(self.now(), Ordering::Relaxed);
    }

    pub fn connack(&self, took: Duration) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.last_connack.fetch_max(self.now(), Ordering::Relaxed);
        let _ = self.connack.lock().record((took.as_micros() as u64).max(1));
    }

    pub fn sent(&self, n: u64) {
        let now = self.now();
        self.first_send.fetch_min(now, Ordering::Relaxed);
        self.last_send.fetch_max(now, Ordering::Relaxed);
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Records received messages and their latencies (µs).
    pub fn received(&self, n: u64, latencies_us: &[u64]) {
        let now = self.now();
        self.first_recv.fetch_min(now, Ordering::Relaxed);
        self.last_recv.fetch_max(now, Ordering::Relaxed);
        self.received.fetch_add(n, Ordering::Relaxed);
        if !latencies_us.is_empty() {
            let mut h = self.latency.lock();
            for l in latencies_us {
                let _ = h.record((*l).max(1));
            }
        }
    }

    pub fn publisher_done(&self, id: u32, sent: u64) {
        self.published.lock().insert(id, sent);
    }

    pub fn subscriber_done(&self, last: impl IntoIterator<Item = (u32, u64)>) {
        self.last_seen.lock().extend(last);
    }

    pub fn p99_us(&self) -> u64 {
        self.latency.lock().value_at_quantile(0.99)
    }

    /// Messages lost: with `shared` every message goes to one subscriber, so it is what was
    /// sent minus what arrived once; otherwise gaps within each stream plus the tail each
    /// subscriber never got from a publisher it heard from.
    fn lost(&self, mode: &str, shared: bool) -> u64 {
        let received = self.received.load(Ordering::Relaxed);
        if mode == "shadow" {
            // Every update is answered, accepted or rejected.
            let answered = received + self.rejected.load(Ordering::Relaxed);
            return self.sent.load(Ordering::Relaxed).saturating_sub(answered);
        }
        let dups = self.duplicates.load(Ordering::Relaxed);
        if shared {
            return self.sent.load(Ordering::Relaxed).saturating_sub(received - dups.min(received));
        }
        let published = self.published.lock();
        let tail: u64 = self
            .last_seen
            .lock()
            .iter()
            .filter_map(|(p, last)| published.get(p).map(|n| n.saturating_sub(last + 1)))
            .sum();
        self.gaps.load(Ordering::Relaxed) + tail
    }

    pub fn report(&self, mode: &str, clients: usize, shared: bool) -> Report {
        let rate = |n: u64, first: &AtomicU64, last: &AtomicU64| {
            let (f, l) = (first.load(Ordering::Relaxed), last.load(Ordering::Relaxed));
            if f == u64::MAX || l <= f {
                return n as f64;
            }
            n as f64 / ((l - f) as f64 / 1e9)
        };
        let sent = self.sent.load(Ordering::Relaxed);
        let received = self.received.load(Ordering::Relaxed);
        let connected = self.connects.load(Ordering::Relaxed);
        Report {
            mode: mode.to_string(),
            clients,
            elapsed_secs: self.start.elapsed().as_secs_f64(),
            connected,
            connect_failed: self.connect_failed.load(Ordering::Relaxed),
            redirects: self.redirects.load(Ordering::Relaxed),
            connect_rate_per_sec: rate(connected, &self.first_connect, &self.last_connack),
            connack_us: Quantiles::of(&self.connack.lock()),
            sent,
            acked: self.acked.load(Ordering::Relaxed),
            sent_per_sec: rate(sent, &self.first_send, &self.last_send),
            received,
            received_per_sec: rate(received, &self.first_recv, &self.last_recv),
            lost: self.lost(mode, shared),
            rejected: self.rejected.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            latency_us: Quantiles::of(&self.latency.lock()),
        }
    }
}

/// Latency quantiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Quantiles {
        Quantiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// What `homeport bench` prints at the end (as text, or JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub clients: usize,
    pub elapsed_secs: f64,
    pub connected: u64,
    pub connect_failed: u64,
    /// Redirects followed (CONNACK 0x9C/0x9D with a Server Reference).
    pub redirects: u64,
    pub connect_rate_per_sec: f64,
    pub connack_us: Quantiles,
    pub sent: u64,
    pub acked: u64,
    pub sent_per_sec: f64,
    pub received: u64,
    pub received_per_sec: f64,
    pub lost: u64,
    pub duplicates: u64,
    /// Shadow updates rejected (shadow mode).
    pub rejected: u64,
    pub latency_us: Quantiles,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = |q: &Quantiles| {
            format!(
                "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
                q.p50, q.p90, q.p99, q.p999, q.max, q.count
            )
        };
        writeln!(
            f,
            "mode {} clients {} elapsed {:.1}s",
            self.mode, self.clients, self.elapsed_secs
        )?;
        writeln!(
            f,
            "connect: {} ok, {} failed, {} redirected, {:.0}/s; CONNACK µs {}",
            self.connected,
            self.connect_failed,
            self.redirects,
            self.connect_rate_per_sec,
            q(&self.connack_us)
        )?;
        writeln!(
            f,
            "sent {} ({:.0}/s, {} acknowledged); received {} ({:.0}/s); lost {}; duplicates {}; rejected {}",
            self.sent,
            self.sent_per_sec,
            self.acked,
            self.received,
            self.received_per_sec,
            self.lost,
            self.duplicates,
            self.rejected
        )?;
        write!(f, "latency µs: {}", q(&self.latency_us))
    }
}

/// Per-subscriber tracking of (publisher, sequence) streams for duplicates and gaps.
#[derive(Default)]
pub struct Streams {
    last: HashMap<u32, u64>,
}

/// What one stamped message was, relative to its stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// The next message, after `gap` missing ones.
    New {
        gap: u64,
    },
    Duplicate,
}

impl Streams {
    /// `count_leading`: messages before the first one seen count as a gap (the subscriber
    /// was there before the publisher started).
    pub fn see(&mut self, publisher: u32, seq: u64, count_leading: bool) -> Seen {
        match self.last.get_mut(&publisher) {
            Some(last) if seq <= *last => Seen::Duplicate,
            Some(last) => {
                let gap = seq - *last - 1;
                *last = seq;
                Seen::New { gap }
            }
            None => {
                self.last.insert(publisher, seq);
                Seen::New { gap: if count_leading { seq } else { 0 } }
            }
        }
    }

    pub fn into_last(self) -> impl Iterator<Item = (u32, u64)> {
        self.last.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_find_gaps_and_duplicates() {
        let mut s = Streams::default();
        assert_eq!(s.see(1, 0, true), Seen::New { gap: 0 });
        assert_eq!(s.see(1, 1, true), Seen::New { gap: 0 });
        assert_eq!(s.see(1, 4, true), Seen::New { gap: 2 });
        assert_eq!(s.see(1, 4, true), Seen::Duplicate);
        assert_eq!(s.see(1, 2, true), Seen::Duplicate);
        assert_eq!(s.see(2, 3, true), Seen::New { gap: 3 });
        assert_eq!(s.see(3, 3, false), Seen::New { gap: 0 });
    }

    #[test]
    fn loss_counts_gaps_and_tails() {
        let st = Stats::default();
        st.publisher_done(1, 10);
        st.publisher_done(2, 5);
        // Subscriber A saw all of 1 and up to seq 2 of 2; subscriber B saw up to 7 of 1.
        st.subscriber_done([(1, 9), (2, 2)]);
        st.subscriber_done([(1, 7)]);
        st.gaps.store(1, Ordering::Relaxed);
        assert_eq!(st.lost("pubsub", false), 1 + 2 + 2);
        // Shared: sent minus received once.
        st.sent(20);
        st.received(18, &[]);
        st.duplicates.store(1, Ordering::Relaxed);
        assert_eq!(st.lost("pubsub", true), 3);
    }
}
