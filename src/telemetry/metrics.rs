//! The node's Prometheus metrics, one registry per node so in-process test clusters do not
//! share counters.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Why a message was not delivered. Each drop is counted; none is silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A QoS 0 message found a connected subscriber's backlog at its limit
    /// (`mqtt.outbound_queue`). QoS 1/2 messages are never dropped there: their
    /// publishers wait instead (`homeport_backpressure_waits_total`).
    QueueFull,
    /// The offline queue of a persistent session hit its limit (policy drop-oldest).
    OfflineQueueDropOldest,
    /// The offline queue of a persistent session hit its limit (policy reject-new).
    OfflineQueueRejectNew,
    /// QoS 0 messages are not queued for offline sessions.
    OfflineQos0,
    /// The v5 message expiry interval passed before delivery.
    Expired,
    /// The message is larger than the subscriber's maximum packet size.
    TooLargeForClient,
    /// No subscriber matched.
    NoSubscribers,
    /// Storage refused the write.
    StorageError,
    /// The session's shard moved to another node while the message was on its way to
    /// the session's actor here: refused, and the publisher's PUBACK/PUBREC says so
    /// (QoS 1/2), so it may send it again.
    SessionMoved,
}

impl DropReason {
    const ALL: [DropReason; 9] = [
        DropReason::QueueFull,
        DropReason::OfflineQueueDropOldest,
        DropReason::OfflineQueueRejectNew,
        DropReason::OfflineQos0,
        DropReason::Expired,
        DropReason::TooLargeForClient,
        DropReason::NoSubscribers,
        DropReason::StorageError,
        DropReason::SessionMoved,
    ];

    fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::OfflineQueueDropOldest => "offline_queue_drop_oldest",
            DropReason::OfflineQueueRejectNew => "offline_queue_reject_new",
            DropReason::OfflineQos0 => "offline_qos0",
            DropReason::Expired => "expired",
            DropReason::TooLargeForClient => "too_large_for_client",
            DropReason::NoSubscribers => "no_subscribers",
            DropReason::StorageError => "storage_error",
            DropReason::SessionMoved => "session_moved",
        }
    }
}

const PACKET_KINDS: [&str; 16] = [
    "reserved",
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
];

/// All metrics of one node.
pub struct Metrics {
    registry: Registry,
    /// Open device connections by listener.
    pub connections: IntGaugeVec,
    /// CONNECT outcomes by result ("accepted" or a reason label).
    pub connects: IntCounterVec,
    /// Connection ends by reason label.
    pub disconnects: IntCounterVec,
    /// Live connections re-attached to their session's actor on a new shard leader
    /// (`resumed`) or closed because that failed (`failed`).
    pub session_resumes: IntCounterVec,
    /// Bad input by reason label (malformed, protocol error, oversize, ...).
    pub protocol_errors: IntCounterVec,
    packets_in: Vec<IntCounter>,
    packets_out: Vec<IntCounter>,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    /// PUBLISH messages accepted from clients.
    pub messages_in: IntCounter,
    /// PUBLISH messages written to clients.
    pub messages_out: IntCounter,
    drops: Vec<IntCounter>,
    /// Messages waiting in offline queues of persistent sessions.
    pub offline_queue_depth: IntGauge,
    pub retained: IntGauge,
    /// Topic and payload bytes of the retained messages.
    pub retained_bytes: IntGauge,
    pub subscriptions: IntGauge,
    /// Sessions known to the node, connected or not.
    pub sessions: IntGauge,
    /// Time of one group-commit flush of the store.
    pub flush_seconds: Histogram,
    /// Writes covered by one flush (group-commit batch size).
    pub flush_batch: Histogram,
    /// Device actors restarted after a panic or error.
    pub actor_restarts: IntCounter,
    /// Device actors running now (an idle session, connected or not, has none).
    pub actors: IntGauge,
    /// Connections hibernating now (idle, their working state freed).
    pub hibernating: IntGauge,
    /// Unacknowledged shared-subscription messages handed to another group member.
    pub shared_redispatched: IntCounter,
    /// Storage writes that failed where the message still went on (journal writes).
    pub storage_errors: IntCounter,
    /// Deliveries queued above a subscriber's backlog limit: a QoS 1/2 publisher's
    /// acknowledgement, or a QoS 0 publisher's reading, waited for room (flow control).
    pub backpressure_waits: IntCounter,
    /// Offline-queue entries that landed after their session attached (submitted by the
    /// shard's previous leader before a hand-off) and were delivered by a rescan.
    pub late_queue_entries: IntCounter,
    /// Times a QoS 0 publisher's reading paused for a full subscriber.
    pub publisher_pauses: IntCounter,
    /// Commands proposed to Raft groups, by outcome (`applied`, `conflict`, `error`).
    pub raft_writes: IntCounterVec,
    /// Time from proposing a command to its being applied.
    pub raft_write_seconds: Histogram,
    /// Commands carried by one Raft log entry (batching of many devices' writes).
    pub raft_batch: Histogram,
    /// Write batches sent to the group's leader on another node, by result.
    pub raft_forwarded: IntCounterVec,
    /// Shadow requests by operation and outcome (`accepted`, or the rejection code).
    pub shadow_requests: IntCounterVec,
    /// Jobs requests and service calls by operation and outcome.
    pub jobs_requests: IntCounterVec,
    /// Job executions created by rollouts.
    pub jobs_executions_created: IntCounter,
    /// Refused CONNECTs by authentication reason (`bad_secret`, `token_expired`,
    /// `certificate_revoked`, ...).
    pub auth_failures: IntCounterVec,
    /// CONNECTs slowed down because their address failed too often.
    pub auth_throttled: IntCounter,
    /// Live connections closed because their credential was revoked or deactivated.
    pub auth_revoked_closed: IntCounter,
    /// Publish, subscribe and receive decisions that denied, by action.
    pub authz_denied: IntCounterVec,
    /// Certificates (and their things) registered just in time at first connect.
    pub auth_jit_provisioned: IntCounter,
    /// Fleet provisioning requests by operation and outcome (`accepted` or the error code).
    pub fleet_requests: IntCounterVec,
    /// Admin API requests refused (`unauthorized`, `forbidden`).
    pub admin_denied: IntCounterVec,
    /// Abuse limits reached, by limit (`publish_rate`, `inbound_bytes_rate`,
    /// `connections_per_address`, `subscriptions`, `topic_size`, `user_property_bytes`).
    pub limit_hits: IntCounterVec,
}

impl Metrics {
    /// # Panics
    /// Only if two metrics share a name, a programming error caught by the unit test.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        r.register(Box::new(super::MemoryCollector::new())).expect("unique metric");
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let packets_in_vec =
            counter_vec("homeport_packets_received_total", "MQTT packets received", &["type"]);
        let packets_out_vec =
            counter_vec("homeport_packets_sent_total", "MQTT packets sent", &["type"]);
        let drops_vec = counter_vec(
            "homeport_messages_dropped_total",
            "Messages not delivered, by reason",
            &["reason"],
        );
        let m = Metrics {
            connections: gauge_vec(
                "homeport_connections",
                "Open device connections",
                &["listener"],
            ),
            connects: counter_vec("homeport_connects_total", "CONNECT outcomes", &["result"]),
            disconnects: counter_vec(
                "homeport_disconnects_total",
                "Connection ends by reason",
                &["reason"],
            ),
            session_resumes: counter_vec(
                "homeport_session_resumes_total",
                "Live connections re-attached after their shard's leader changed, by outcome",
                &["result"],
            ),
            protocol_errors: counter_vec(
                "homeport_protocol_errors_total",
                "Bad input from clients by reason",
                &["reason"],
            ),
            packets_in: PACKET_KINDS
                .iter()
                .map(|k| packets_in_vec.with_label_values(&[k]))
                .collect(),
            packets_out: PACKET_KINDS
                .iter()
                .map(|k| packets_out_vec.with_label_values(&[k]))
                .collect(),
            bytes_in: counter("homeport_bytes_received_total", "Bytes received from clients"),
            bytes_out: counter("homeport_bytes_sent_total", "Bytes sent to clients"),
            messages_in: counter(
                "homeport_messages_received_total",
                "PUBLISH messages received from clients",
            ),
            messages_out: counter("homeport_messages_sent_total", "PUBLISH messages sent"),
            drops: DropReason::ALL
                .iter()
                .map(|d| drops_vec.with_label_values(&[d.label()]))
                .collect(),
            offline_queue_depth: gauge(
                "homeport_offline_queue_depth",
                "Messages queued for offline persistent sessions",
            ),
            retained: gauge("homeport_retained_messages", "Retained messages"),
            retained_bytes: gauge(
                "homeport_retained_bytes",
                "Topic and payload bytes of the retained messages",
            ),
            subscriptions: gauge("homeport_subscriptions", "Subscriptions"),
            sessions: gauge("homeport_sessions", "Sessions, connected or not"),
            flush_seconds: histogram(
                "homeport_storage_flush_seconds",
                "Duration of one storage group-commit flush",
                prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
            ),
            flush_batch: histogram(
                "homeport_storage_flush_batch",
                "Waiters covered by one storage flush",
                prometheus::exponential_buckets(1.0, 2.0, 14).expect("valid buckets"),
            ),
            actors: gauge("homeport_device_actors", "Device actors running now"),
            hibernating: gauge(
                "homeport_connections_hibernating",
                "Idle connections hibernating now (working state freed)",
            ),
            actor_restarts: counter(
                "homeport_device_actor_restarts_total",
                "Device actors restarted after a failure",
            ),
            storage_errors: counter(
                "homeport_storage_errors_total",
                "Storage writes that failed without dropping the message",
            ),
            shared_redispatched: counter(
                "homeport_shared_redispatched_total",
                "Unacknowledged shared-subscription messages handed to another member",
            ),
            publisher_pauses: counter(
                "homeport_publisher_pauses_total",
                "Times a QoS 0 publisher's reading paused because a subscriber's backlog was full",
            ),
            backpressure_waits: counter(
                "homeport_backpressure_waits_total",
                "Deliveries queued above a subscriber's backlog limit (the publisher waits for room)",
            ),
            late_queue_entries: counter(
                "homeport_late_queue_entries_total",
                "Offline-queue entries that landed after their session attached, delivered by a rescan",
            ),
            raft_writes: counter_vec(
                "homeport_raft_writes_total",
                "Commands proposed to Raft groups, by outcome",
                &["result"],
            ),
            raft_write_seconds: histogram(
                "homeport_raft_write_seconds",
                "Time from proposing a Raft command to its being applied",
                prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
            ),
            raft_forwarded: counter_vec(
                "homeport_raft_forwarded_writes_total",
                "Write batches sent to the group's leader on another node, by result",
                &["result"],
            ),
            raft_batch: histogram(
                "homeport_raft_batch_commands",
                "Commands carried by one Raft log entry",
                prometheus::exponential_buckets(1.0, 2.0, 12).expect("valid buckets"),
            ),
            shadow_requests: counter_vec(
                "homeport_shadow_requests_total",
                "Shadow requests by operation and outcome (accepted or the rejection code)",
                &["op", "result"],
            ),
            jobs_requests: counter_vec(
                "homeport_jobs_requests_total",
                "Jobs requests and service calls by operation and outcome (accepted or the error code)",
                &["op", "result"],
            ),
            jobs_executions_created: counter(
                "homeport_jobs_executions_created_total",
                "Job executions queued by rollouts",
            ),
            auth_failures: counter_vec(
                "homeport_auth_failures_total",
                "CONNECTs refused by authentication, by reason",
                &["reason"],
            ),
            auth_throttled: counter(
                "homeport_auth_throttled_total",
                "CONNECTs slowed down after repeated failures from their address",
            ),
            auth_revoked_closed: counter(
                "homeport_auth_revoked_connections_closed_total",
                "Live connections closed because their credential was revoked or deactivated",
            ),
            authz_denied: counter_vec(
                "homeport_authz_denied_total",
                "Publish, subscribe and receive requests denied by policy, by action",
                &["action"],
            ),
            auth_jit_provisioned: counter(
                "homeport_auth_jit_provisioned_total",
                "Certificates registered just in time at their first connect",
            ),
            fleet_requests: counter_vec(
                "homeport_fleet_provisioning_requests_total",
                "Fleet provisioning requests by operation and outcome",
                &["op", "result"],
            ),
            admin_denied: counter_vec(
                "homeport_admin_requests_denied_total",
                "Admin API requests refused for a missing or weak token, by reason",
                &["reason"],
            ),
            limit_hits: counter_vec(
                "homeport_limit_hits_total",
                "Abuse limits reached, by limit",
                &["limit"],
            ),
            registry,
        };
        for l in [
            "publish_rate",
            "inbound_bytes_rate",
            "connections_per_address",
            "subscriptions",
            "topic_size",
            "user_property_bytes",
        ] {
            m.limit_hits.with_label_values(&[l]);
        }
        for a in ["publish", "subscribe", "receive"] {
            m.authz_denied.with_label_values(&[a]);
        }
        // Export the usual series from the start, at zero.
        for l in ["tcp", "tls", "ws"] {
            m.connections.with_label_values(&[l]).set(0);
        }
        m.connects.with_label_values(&["accepted"]);
        m.disconnects.with_label_values(&["normal"]);
        m
    }

    /// Counts a received packet by its fixed-header type nibble.
    pub fn packet_in(&self, first_byte: u8, size: usize) {
        self.packets_in[(first_byte >> 4) as usize].inc();
        self.bytes_in.inc_by(size as u64);
    }

    /// Counts a sent packet by its fixed-header type nibble.
    pub fn packet_out(&self, first_byte: u8, size: usize) {
        self.packets_out[(first_byte >> 4) as usize].inc();
        self.bytes_out.inc_by(size as u64);
    }

    pub fn dropped(&self, reason: DropReason) {
        self.drops[DropReason::ALL.iter().position(|r| *r == reason).unwrap_or(0)].inc();
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.drops[DropReason::ALL.iter().position(|r| *r == reason).unwrap_or(0)].get()
    }

    /// The registry, for components that register metrics of their own (the cluster).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(message = "metrics encoding failed", %e);
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions() {
        let m = Metrics::new();
        m.packet_in(0x30, 10);
        m.dropped(DropReason::QueueFull);
        m.connects.with_label_values(&["accepted"]).inc();
        m.disconnects.with_label_values(&["normal"]).inc();
        m.protocol_errors.with_label_values(&["malformed_packet"]).inc();
        m.connections.with_label_values(&["tcp"]).set(0);
        let text = m.render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("homeport_"), "{name}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
        }
        assert!(text.contains("homeport_packets_received_total{type=\"publish\"} 1"));
        assert_eq!(m.dropped_count(DropReason::QueueFull), 1);
    }
}
