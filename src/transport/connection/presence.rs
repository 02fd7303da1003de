//! Presence events as AWS IoT publishes them: `$aws/events/presence/connected/{clientId}`
//! when a session attaches and `$aws/events/presence/disconnected/{clientId}` when its
//! connection ends, with AWS's JSON fields; and the same moments as the rule engine's
//! `$events/client_connected` and `$events/client_disconnected` (EMQX's columns), for
//! rules that select them.

use std::net::SocketAddr;

use serde_json::json;

use crate::broker::{now_ms, Publisher, Router};
use crate::rules::Value;

/// A client id that cannot be part of a topic name (wildcards) gets no event.
fn topic(kind: &str, client: &str) -> Option<String> {
    if client.is_empty() || client.contains(['+', '#']) {
        return None;
    }
    Some(format!("$aws/events/presence/{kind}/{client}"))
}

/// Publishes the `connected` event. `version` orders a client's events (the connection
/// id: it grows with every connection on this node).
pub fn connected(
    router: &Router,
    client: &str,
    who: &Publisher,
    version: u64,
    peer: SocketAddr,
    proto: u8,
) {
    const CONNECTED: &str = "$events/client_connected";
    if let Some(r) = router.rules().filter(|r| r.wants(CONNECTED)) {
        let extra = [
            ("peername", Value::Str(peer.to_string())),
            ("proto_ver", Value::Int(i64::from(proto))),
            ("connected_at", Value::Int(now_ms() as i64)),
        ];
        r.on_event(router, CONNECTED, client, who, &extra);
    }
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
pub fn disconnected(
    router: &Router,
    client: &str,
    who: &Publisher,
    version: u64,
    reason: &str,
    label: &str,
) {
    const DISCONNECTED: &str = "$events/client_disconnected";
    if let Some(r) = router.rules().filter(|r| r.wants(DISCONNECTED)) {
        let extra = [
            ("reason", Value::Str(label.to_string())),
            ("disconnected_at", Value::Int(now_ms() as i64)),
        ];
        r.on_event(router, DISCONNECTED, client, who, &extra);
    }
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
