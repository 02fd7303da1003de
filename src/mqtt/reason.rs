//! MQTT 5 reason codes and their MQTT 3.1.1 CONNACK equivalents.

/// Every MQTT 5.0 reason code (spec 2.4). 0x00 means success, normal disconnection or
/// granted QoS 0 depending on the packet.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReasonCode {
    Success = 0x00,
    GrantedQos1 = 0x01,
    GrantedQos2 = 0x02,
    DisconnectWithWill = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QosNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

// Packet types (fixed-header high nibble) as bits, for the table of where each reason code
// may appear (MQTT 5 section 2.4, table 2-6).
const CONNACK: u16 = 1 << 2;
const PUBACK: u16 = 1 << 4;
const PUBREC: u16 = 1 << 5;
const PUBREL: u16 = 1 << 6;
const PUBCOMP: u16 = 1 << 7;
const SUBACK: u16 = 1 << 9;
const UNSUBACK: u16 = 1 << 11;
const DISCONNECT: u16 = 1 << 14;
const AUTH: u16 = 1 << 15;
/// Error codes CONNACK, PUBACK, PUBREC, SUBACK, UNSUBACK and DISCONNECT share.
const GENERAL: u16 = CONNACK | PUBACK | PUBREC | SUBACK | UNSUBACK | DISCONNECT;

impl ReasonCode {
    /// Whether this code may appear in a packet of type `packet_type` (the fixed-header
    /// high nibble), per MQTT 5 table 2-6. Anything else is a malformed packet.
    pub fn allowed_in(self, packet_type: u8) -> bool {
        use ReasonCode::*;
        let set: u16 = match self {
            Success => {
                CONNACK | PUBACK | PUBREC | PUBREL | PUBCOMP | SUBACK | UNSUBACK | DISCONNECT | AUTH
            }
            GrantedQos1 | GrantedQos2 => SUBACK,
            DisconnectWithWill | ServerShuttingDown | KeepAliveTimeout | SessionTakenOver => {
                DISCONNECT
            }
            ReceiveMaximumExceeded | TopicAliasInvalid | MessageRateTooHigh => DISCONNECT,
            AdministrativeAction | MaximumConnectTime => DISCONNECT,
            NoMatchingSubscribers => PUBACK | PUBREC,
            NoSubscriptionExisted => UNSUBACK,
            ContinueAuthentication | ReAuthenticate => AUTH,
            UnspecifiedError | ImplementationSpecificError | NotAuthorized => GENERAL,
            MalformedPacket | ProtocolError | PacketTooLarge | ServerBusy => CONNACK | DISCONNECT,
            BadAuthenticationMethod | RetainNotSupported | QosNotSupported => CONNACK | DISCONNECT,
            UseAnotherServer | ServerMoved | ConnectionRateExceeded => CONNACK | DISCONNECT,
            UnsupportedProtocolVersion | ClientIdentifierNotValid | BadUserNameOrPassword => {
                CONNACK
            }
            ServerUnavailable | Banned => CONNACK,
            TopicFilterInvalid => SUBACK | UNSUBACK | DISCONNECT,
            TopicNameInvalid | PayloadFormatInvalid => CONNACK | PUBACK | PUBREC | DISCONNECT,
            PacketIdentifierInUse => PUBACK | PUBREC | SUBACK | UNSUBACK,
            PacketIdentifierNotFound => PUBREL | PUBCOMP,
            QuotaExceeded => CONNACK | PUBACK | PUBREC | SUBACK | DISCONNECT,
            SharedSubscriptionsNotSupported
            | SubscriptionIdentifiersNotSupported
            | WildcardSubscriptionsNotSupported => SUBACK | DISCONNECT,
        };
        packet_type < 16 && set & (1 << packet_type) != 0
    }

    /// Parses a reason code byte; unknown values are `None` (a malformed packet).
    pub fn from_u8(b: u8) -> Option<Self> {
        use ReasonCode::*;
        Some(match b {
            0x00 => Success,
            0x01 => GrantedQos1,
            0x02 => GrantedQos2,
            0x04 => DisconnectWithWill,
            0x10 => NoMatchingSubscribers,
            0x11 => NoSubscriptionExisted,
            0x18 => ContinueAuthentication,
            0x19 => ReAuthenticate,
            0x80 => UnspecifiedError,
            0x81 => MalformedPacket,
            0x82 => ProtocolError,
            0x83 => ImplementationSpecificError,
            0x84 => UnsupportedProtocolVersion,
            0x85 => ClientIdentifierNotValid,
            0x86 => BadUserNameOrPassword,
            0x87 => NotAuthorized,
            0x88 => ServerUnavailable,
            0x89 => ServerBusy,
            0x8A => Banned,
            0x8B => ServerShuttingDown,
            0x8C => BadAuthenticationMethod,
            0x8D => KeepAliveTimeout,
            0x8E => SessionTakenOver,
            0x8F => TopicFilterInvalid,
            0x90 => TopicNameInvalid,
            0x91 => PacketIdentifierInUse,
            0x92 => PacketIdentifierNotFound,
            0x93 => ReceiveMaximumExceeded,
            0x94 => TopicAliasInvalid,
            0x95 => PacketTooLarge,
            0x96 => MessageRateTooHigh,
            0x97 => QuotaExceeded,
            0x98 => AdministrativeAction,
            0x99 => PayloadFormatInvalid,
            0x9A => RetainNotSupported,
            0x9B => QosNotSupported,
            0x9C => UseAnotherServer,
            0x9D => ServerMoved,
            0x9E => SharedSubscriptionsNotSupported,
            0x9F => ConnectionRateExceeded,
            0xA0 => MaximumConnectTime,
            0xA1 => SubscriptionIdentifiersNotSupported,
            0xA2 => WildcardSubscriptionsNotSupported,
            _ => return None,
        })
    }

    pub fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// Low-cardinality label for metrics.
    pub fn label(self) -> &'static str {
        use ReasonCode::*;
        match self {
            Success => "normal",
            DisconnectWithWill => "disconnect_with_will",
            MalformedPacket => "malformed_packet",
            ProtocolError => "protocol_error",
            UnsupportedProtocolVersion => "unsupported_protocol_version",
            ClientIdentifierNotValid => "client_id_not_valid",
            BadUserNameOrPassword => "bad_credentials",
            NotAuthorized => "not_authorized",
            ServerShuttingDown => "server_shutting_down",
            KeepAliveTimeout => "keep_alive_timeout",
            SessionTakenOver => "session_taken_over",
            TopicFilterInvalid => "topic_filter_invalid",
            TopicNameInvalid => "topic_name_invalid",
            ReceiveMaximumExceeded => "receive_maximum_exceeded",
            TopicAliasInvalid => "topic_alias_invalid",
            PacketTooLarge => "packet_too_large",
            QuotaExceeded => "quota_exceeded",
            QosNotSupported => "qos_not_supported",
            RetainNotSupported => "retain_not_supported",
            _ => "other",
        }
    }
}

/// The MQTT 3.1.1 CONNACK return code for a v5 reason (spec 5.0 leaves the mapping to us;
/// this follows the nearest meaning).
pub fn connack_v3_code(reason: ReasonCode) -> u8 {
    use ReasonCode::*;
    match reason {
        Success => 0,
        UnsupportedProtocolVersion => 1,
        ClientIdentifierNotValid => 2,
        ServerUnavailable | ServerBusy | ServerShuttingDown | UseAnotherServer | ServerMoved => 3,
        BadUserNameOrPassword | BadAuthenticationMethod => 4,
        _ => 5,
    }
}
