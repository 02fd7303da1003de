//! Presence events as AWS IoT publishes them: `$aws/events/presence/connected/{clientId}`
//! when a session attaches and `$aws/events/presence/disconnected/{clientId}` when its
//! connection ends, with AWS's JSON fields.

use std::net::SocketAddr;

use serde_json::json;

use crate::broker::{now_ms, Router};

/// A client id that cannot be part of a topic name (wildcards) gets no event.
fn topic(kind: &str, client: &str) -> Option<String> {
    if client.is_empty() || client.contains(['+', '#']) {
        return None;
    }
    Some(format!("$aws/events/presence/{kind}/{client}"))
}

/// Publishes the `connected` event. `version` orders a client's events (the connection
/// id: it grows with every connection on this node).
pub fn connected(router: &Router, client: &str, version: u64, peer: SocketAddr) {
    let Some(topic) = topic("connected", client) else { return };
    let body = json!({
        "clientId": client,
        "timestamp": now_ms(),
        "eventType": "connected",
        "sessionIdentifier": format!("{version:016x}"),
        "principalIdentifier": client,
        "ipAddress": peer.ip().to_string(),
        "versionNumber": version,
    });
    router.publish_reply(&topic, &body, None);
}

/// Publishes the `disconnected` event; `reason` is one of AWS's disconnect reasons.
pub fn disconnected(router: &Router, client: &str, version: u64, reason: &str) {
    let Some(topic) = topic("disconnected", client) else { return };
    let body = json!({
        "clientId": client,
        "timestamp": now_ms(),
        "eventType": "disconnected",
        "sessionIdentifier": format!("{version:016x}"),
        "principalIdentifier": client,
        "clientInitiatedDisconnect": reason == "CLIENT_INITIATED_DISCONNECT",
        "disconnectReason": reason,
        "versionNumber": version,
    });
    router.publish_reply(&topic, &body, None);
}
