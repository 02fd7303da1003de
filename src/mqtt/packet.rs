//! The packet model shared by both protocol versions. Fields that only exist in v5 are
//! empty or default under 3.1.1.

use bytes::Bytes;

use super::properties::Properties;
use super::reason::ReasonCode;

/// Protocol level from CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Protocol {
    pub fn is_v5(self) -> bool {
        matches!(self, Protocol::V5)
    }

    pub fn label(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

/// Quality of service.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(b: u8) -> Option<QoS> {
        match b {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Retain handling subscription option (v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RetainHandling {
    /// Send retained messages at subscribe time.
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// Never send retained messages at subscribe time.
    DoNotSend = 2,
}

/// Will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (delay interval, expiry, content type, ...).
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// Under 3.1.1 this is mapped to a return code with [`super::connack_v3_code`].
    pub reason: ReasonCode,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in v5 when a topic alias stands in for it.
    pub topic: String,
    /// Zero for QoS 0.
    pub pkid: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResp {
    pub pkid: u16,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl PubResp {
    pub fn ok(pkid: u16) -> Self {
        Self { pkid, reason: ReasonCode::Success, properties: Properties::default() }
    }
}

/// Subscription options byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubOptions {
    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<(String, SubOptions)>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    /// One per filter: granted QoS (0x00-0x02) or a failure code. Under 3.1.1 every failure
    /// is sent as 0x80.
    pub reasons: Vec<ReasonCode>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<String>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub pkid: u16,
    /// v5 only; empty under 3.1.1.
    pub reasons: Vec<ReasonCode>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResp),
    PubRec(PubResp),
    PubRel(PubResp),
    PubComp(PubResp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// Low-cardinality packet type label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "connect",
            Packet::ConnAck(_) => "connack",
            Packet::Publish(_) => "publish",
            Packet::PubAck(_) => "puback",
            Packet::PubRec(_) => "pubrec",
            Packet::PubRel(_) => "pubrel",
            Packet::PubComp(_) => "pubcomp",
            Packet::Subscribe(_) => "subscribe",
            Packet::SubAck(_) => "suback",
            Packet::Unsubscribe(_) => "unsubscribe",
            Packet::UnsubAck(_) => "unsuback",
            Packet::PingReq => "pingreq",
            Packet::PingResp => "pingresp",
            Packet::Disconnect(_) => "disconnect",
            Packet::Auth(_) => "auth",
        }
    }
}
