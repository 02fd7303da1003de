//! MQTT session state: packet identifiers, the outbound in-flight window with its pending
//! queue, inbound QoS 2 tracking, and the persisted session record.
//!
//! Owns: the pure state machines. While a connection is attached, its live part
//! ([`Outgoing`], [`Incoming`]) runs inside the connection task; the device actor owns the
//! [`SessionRecord`] and stores it. Must not touch: sockets, routing or storage.

mod incoming;
mod outgoing;
mod record;

pub use incoming::{Incoming, QuotaExceeded};
pub use outgoing::{AckError, AckKind, Acked, Inflight, Outgoing, Resend, Stage};
pub use record::{SessionRecord, StoredInflight, StoredSubscription, StoredWill, NEVER_EXPIRES};
