//! Publish/subscribe core: the subscription trie, the router, retained messages and the
//! routing entry of each session ([`SessionSlot`]).
//!
//! Owns: matching a published message to subscribers, the delivery rules (highest granted
//! QoS, all subscription identifiers, no-local, retain-as-published, shared round robin),
//! retained state, and the hand-off to a connected session's outbound queue or, for an
//! offline persistent session, to its device actor. Must not touch: sockets or the MQTT
//! codec; session state belongs to the device actor and the connection.

mod message;
mod outq;
mod retained;
mod router;
mod slot;
pub mod trie;

#[cfg(test)]
pub(crate) use message::test_delivery;
pub use message::{
    app_properties, now_ms, Delivery, Message, Publisher, StoredMessage, StoredProps,
};
pub use outq::{next_conn_id, ConnQueue, Offer};
pub use retained::{RetainLimits, Retained};
pub use router::{AckWait, Forwarder, Routed, Router, ShardScope, SubscribeOutcome};
pub use slot::{Control, LiveState, SessionSlot, SlotRef};
pub use trie::SharedKey;
