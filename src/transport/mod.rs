//! Device-facing transport: TCP, TLS (rustls) and WebSocket listeners, and the connection
//! task that owns one device socket.
//!
//! Owns: accepting sockets, the CONNECT deadline, the TLS handshake deadline, the WebSocket
//! upgrade, and the connection pump (decode, route, encode, batch writes, keepalive).
//! Must not touch: session durability (the device actor owns it) or matching (the router).

mod connection;
pub mod limits;
mod listeners;

pub use connection::{serve_connection, ConnCtx, DeviceIo};
pub use listeners::{bind_listeners, BoundListeners, TransportError};
