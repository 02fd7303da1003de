//! The routed message and its stored form. A published payload is one `Bytes` shared by
//! every subscriber's delivery; nothing is copied per subscriber.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::trie::SharedKey;
use crate::mqtt::{Properties, QoS};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An application message as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Application properties forwarded to subscribers (payload format, content type,
    /// response topic, correlation data, user properties). Topic alias and subscription
    /// identifiers are per hop and never stored here.
    pub props: Properties,
    /// When the v5 message expiry interval runs out.
    pub expires_at_ms: Option<u64>,
    /// Client id of the publisher, for no-local subscriptions.
    pub origin: Option<Arc<str>>,
    /// The connection that published it (shared by its messages), for rules that read
    /// `username` / `peerhost`; None for broker-made and forwarded messages.
    pub publisher: Option<Arc<Publisher>>,
}

/// The connection a message (or a broker event) came from, as rules see it: one per
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// The CONNECT packet's user name.
    pub username: Option<Arc<str>>,
    /// The client's IP address.
    pub peer_ip: std::net::IpAddr,
}

impl Message {
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now)
    }

    /// Seconds left of the expiry interval, rounded up, for the outgoing PUBLISH.
    pub fn remaining_expiry(&self, now: u64) -> Option<u32> {
        self.expires_at_ms.map(|t| (t.saturating_sub(now)).div_ceil(1000) as u32)
    }
}

/// One message on its way to one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// The QoS it is delivered at: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// The RETAIN flag to send.
    pub retain: bool,
    /// Identifiers of every matching subscription (v5).
    pub sub_ids: Vec<u32>,
    /// Offline-queue sequence number when it was drained from the durable queue; the
    /// entry is removed once the client acknowledges it.
    pub seq: Option<u64>,
    /// Set when the message reached this session only through a shared subscription: if
    /// the session leaves before acknowledging it, another member gets it.
    pub shared: Option<Arc<SharedKey>>,
}

/// The persisted form of the application properties.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredProps {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub user_properties: Vec<(String, String)>,
}

/// The persisted form of a [`Message`] (offline queues, retained, wills).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub expires_at_ms: Option<u64>,
    pub props: StoredProps,
}

impl From<&Delivery> for StoredMessage {
    /// The stored form of one delivery: the message at the delivered QoS and RETAIN flag.
    fn from(d: &Delivery) -> Self {
        StoredMessage { qos: d.qos, retain: d.retain, ..StoredMessage::from(&*d.msg) }
    }
}

impl From<&Message> for StoredMessage {
    fn from(m: &Message) -> Self {
        StoredMessage {
            topic: m.topic.to_string(),
            payload: m.payload.to_vec(),
            qos: m.qos,
            retain: m.retain,
            expires_at_ms: m.expires_at_ms,
            props: StoredProps {
                payload_format_indicator: m.props.payload_format_indicator,
                content_type: m.props.content_type.clone(),
                response_topic: m.props.response_topic.clone(),
                correlation_data: m.props.correlation_data.as_ref().map(|b| b.to_vec()),
                user_properties: m.props.user_properties.clone(),
            },
        }
    }
}

impl StoredMessage {
    pub fn into_message(self, origin: Option<Arc<str>>) -> Message {
        Message {
            topic: self.topic.into(),
            payload: Bytes::from(self.payload),
            qos: self.qos,
            retain: self.retain,
            props: Properties {
                payload_format_indicator: self.props.payload_format_indicator,
                content_type: self.props.content_type,
                response_topic: self.props.response_topic,
                correlation_data: self.props.correlation_data.map(Bytes::from),
                user_properties: self.props.user_properties,
                ..Properties::default()
            },
            expires_at_ms: self.expires_at_ms,
            origin,
            publisher: None,
        }
    }
}

/// Keeps only the properties a message carries end to end.
pub fn app_properties(p: &Properties) -> Properties {
    Properties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        ..Properties::default()
    }
}

/// A delivery of a one-byte message on topic `t`, for unit tests.
#[cfg(test)]
pub(crate) fn test_delivery(qos: QoS, byte: u8) -> Delivery {
    Delivery {
        msg: Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from(vec![byte]),
            qos,
            retain: false,
            props: Default::default(),
            expires_at_ms: None,
            origin: None,
            publisher: None,
        }),
        qos,
        retain: false,
        sub_ids: vec![],
        seq: None,
        shared: None,
    }
}
