//! Cluster metrics: the links to peers (requests, latency, reconnects, dropped frames,
//! round-trip time, bytes, open streams) and each Raft group as this node sees it
//! (leader, term, log, commit and apply indexes, follower lag, quorum age). Registered in
//! the node's registry; labels are peers and groups, never devices.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

pub struct ClusterMetrics {
    /// Requests sent to peers by class and result.
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub reconnects: IntCounterVec,
    /// Frames not delivered or not read, by reason (`fault`, `malformed`, `version`,
    /// `unreadable`).
    pub dropped_frames: IntCounterVec,
    /// Peers refused at connection time, by reason.
    pub refused: IntCounterVec,
    pub peer_rtt: GaugeVec,
    pub peer_sent: IntGaugeVec,
    pub peer_received: IntGaugeVec,
    pub peer_lost_packets: IntGaugeVec,
    /// 1 when this node leads the group.
    pub group_leader: IntGaugeVec,
    /// Node id of the group's leader as this node knows it (0: none).
    pub group_leader_id: IntGaugeVec,
    pub group_term: IntGaugeVec,
    pub group_last_log: IntGaugeVec,
    pub group_commit: IntGaugeVec,
    pub group_applied: IntGaugeVec,
    pub group_voters: IntGaugeVec,
    /// On the leader: entries each follower is behind.
    pub follower_lag: IntGaugeVec,
    /// On the leader: seconds since a quorum acknowledged it.
    pub quorum_ack_age: GaugeVec,
    /// Placement and membership steps taken, by kind.
    pub membership_changes: IntCounterVec,
    /// Messages forwarded to peers with matching routes, by result (`ok`, `failed`:
    /// the peer did not answer, `overflow`: its queue was full).
    pub forwarded: IntCounterVec,
    /// Messages received from peers and routed here.
    pub forwarded_in: IntCounterVec,
    /// Route updates sent to peers, by kind (`delta`, `full`) and result.
    pub route_updates: IntCounterVec,
    /// SUBACK waits for the peers' confirmation of a route, by result (`ok`, `late`).
    pub route_confirms: IntCounterVec,
    /// Filters the peers have announced (over all peers).
    pub peer_routes: prometheus::IntGauge,
    /// Peers this node declared down (`cluster.node_down_ms` without an answer), and
    /// back up, by the state entered.
    pub peer_state_changes: IntCounterVec,
    /// Peers this node holds down now.
    pub peers_down: prometheus::IntGauge,
}

impl ClusterMetrics {
    pub fn new(r: &Registry) -> ClusterMetrics {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            // A second in-process cluster node registers in its own registry, so names
            // are unique; a failure here would be a programming error caught by tests.
            if let Err(e) = r.register(Box::new(c.clone())) {
                tracing::error!(message = "metric registration failed", error = %e);
            }
            c
        }
        let counter = |n: &str, h: &str, l: &[&str]| {
            reg(r, IntCounterVec::new(Opts::new(n, h), l).expect("valid metric"))
        };
        let gauge = |n: &str, h: &str, l: &[&str]| {
            reg(r, IntGaugeVec::new(Opts::new(n, h), l).expect("valid metric"))
        };
        let fgauge = |n: &str, h: &str, l: &[&str]| {
            reg(r, GaugeVec::new(Opts::new(n, h), l).expect("valid metric"))
        };
        let m = ClusterMetrics {
            forwarded: counter(
                "homeport_cluster_forwarded_total",
                "Messages forwarded to peers with matching subscriptions, by result",
                &["result"],
            ),
            forwarded_in: counter(
                "homeport_cluster_forwarded_in_total",
                "Messages received from peers and routed on this node, by result",
                &["result"],
            ),
            route_updates: counter(
                "homeport_cluster_route_updates_total",
                "Route updates sent to peers, by kind and result",
                &["kind", "result"],
            ),
            route_confirms: counter(
                "homeport_cluster_route_confirms_total",
                "Waits of a SUBACK for every peer to confirm a new route, by result",
                &["result"],
            ),
            peer_routes: reg(
                r,
                prometheus::IntGauge::new(
                    "homeport_cluster_peer_routes",
                    "Topic filters announced by the peers, over all peers",
                )
                .expect("valid metric"),
            ),
            peer_state_changes: counter(
                "homeport_cluster_peer_state_changes_total",
                "Peers declared down after the detection time without an answer, or up again",
                &["state"],
            ),
            peers_down: reg(
                r,
                prometheus::IntGauge::new(
                    "homeport_cluster_peers_down",
                    "Peers this node has declared down and not heard from since",
                )
                .expect("valid metric"),
            ),
            requests: counter(
                "homeport_cluster_requests_total",
                "Requests sent to peers, by traffic class and result",
                &["class", "result"],
            ),
            request_seconds: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "homeport_cluster_request_seconds",
                        "Time to a peer's answer, by traffic class",
                    )
                    .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).expect("buckets")),
                    &["class"],
                )
                .expect("valid metric"),
            ),
            reconnects: counter(
                "homeport_cluster_reconnects_total",
                "Connections to a peer made again after the first",
                &["peer"],
            ),
            dropped_frames: counter(
                "homeport_cluster_dropped_frames_total",
                "Cluster frames dropped or unreadable, by reason",
                &["reason"],
            ),
            refused: counter(
                "homeport_cluster_refused_total",
                "Peers refused when they connected, by reason",
                &["reason"],
            ),
            peer_rtt: fgauge(
                "homeport_cluster_peer_rtt_seconds",
                "Round-trip time of the QUIC connection to a peer",
                &["peer"],
            ),
            peer_sent: gauge(
                "homeport_cluster_peer_sent_bytes",
                "UDP payload bytes sent on the current connection to a peer",
                &["peer"],
            ),
            peer_received: gauge(
                "homeport_cluster_peer_received_bytes",
                "UDP payload bytes received on the current connection to a peer",
                &["peer"],
            ),
            peer_lost_packets: gauge(
                "homeport_cluster_peer_lost_packets",
                "Packets lost on the current connection to a peer",
                &["peer"],
            ),
            group_leader: gauge(
                "homeport_raft_is_leader",
                "1 when this node leads the group",
                &["group"],
            ),
            group_leader_id: gauge(
                "homeport_raft_leader_id",
                "The group's leader as this node knows it (0: none)",
                &["group"],
            ),
            group_term: gauge("homeport_raft_term", "Current term of the group", &["group"]),
            group_last_log: gauge(
                "homeport_raft_last_log_index",
                "Last log index this node holds for the group",
                &["group"],
            ),
            group_commit: gauge(
                "homeport_raft_commit_index",
                "Highest log index known committed (leader: its own; others: applied)",
                &["group"],
            ),
            group_applied: gauge(
                "homeport_raft_applied_index",
                "Last log index applied to this node's state machine",
                &["group"],
            ),
            group_voters: gauge("homeport_raft_voters", "Voters of the group", &["group"]),
            follower_lag: gauge(
                "homeport_raft_follower_lag_entries",
                "On the leader: log entries a follower is behind",
                &["group", "follower"],
            ),
            quorum_ack_age: fgauge(
                "homeport_raft_quorum_ack_age_seconds",
                "On the leader: seconds since a quorum last acknowledged it",
                &["group"],
            ),
            membership_changes: counter(
                "homeport_cluster_membership_changes_total",
                "Group membership and placement steps, by kind",
                &["kind"],
            ),
        };
        for reason in ["fault", "malformed", "version", "unreadable"] {
            m.dropped_frames.with_label_values(&[reason]);
        }
        m
    }

    pub fn dropped(&self, reason: &str) {
        self.dropped_frames.with_label_values(&[reason]).inc();
    }

    pub fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}
