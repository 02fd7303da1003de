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

impl ReasonCode {
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
