//! Pure MQTT wire protocol: packets of MQTT 3.1.1 and 5.0, v5 properties, reason codes and
//! topic rules.
//!
//! Owns: turning bytes into [`Packet`]s and back, with the strict validation both specs ask
//! for (variable-byte integers, fixed-header flags, UTF-8 rules, topic names vs filters,
//! packet ids, duplicate properties, maximum packet size checked before buffering).
//! Must not touch: sockets, clocks, sessions or routing. Payloads are `Bytes` slices of the
//! input buffer, never copied.

mod codec;
mod decode;
mod encode;
mod packet;
mod properties;
mod reason;
pub mod topic;

pub use decode::{decode, DecodeError, Decoded};
pub use encode::{encode, encoded_len, PublishRef};
pub use packet::*;
pub use properties::Properties;
pub use reason::{connack_v3_code, ReasonCode};

/// Largest packet the protocol can express (remaining length 268,435,455 plus header).
pub const MAX_PACKET_SIZE: u32 = 268_435_460;

#[cfg(test)]
mod tests;
