//! The connection task: a thin pump between one socket, the router and the device actor.
//!
//! Reads are decoded into packets and handled in order; deliveries from the router arrive
//! on the connection's queue and are drained in batches; everything a batch produces is
//! written with one `write_all`. No read or write buffer is held while a plain TCP
//! connection is idle, and after `mqtt.hibernate_after_ms` without work it hibernates:
//! the pump loop's futures are freed and a small wait takes their place.

mod handshake;
mod outbound;
mod presence;
mod reserved;
mod session;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub use session::serve_connection;

use crate::auth::Auth;
use crate::broker::Router;
use crate::config::Config;
use crate::device::Devices;
use crate::telemetry::Metrics;

/// A device byte stream. Plain TCP can wait for readability without a buffer; streams with
/// their own buffering (TLS, WebSocket bridge) are always "ready" and read directly.
pub trait DeviceIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// `wait_readable` really waits (the stream holds no buffered input of its own), so
    /// an idle connection on it can hibernate.
    const WAITS_READABLE: bool = false;

    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Poll form of `wait_readable`, for a hibernating connection.
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The client certificate the TLS layer verified (DER), if any.
    fn peer_certificate(&self) -> Option<Vec<u8>> {
        None
    }
}

impl DeviceIo for TcpStream {
    const WAITS_READABLE: bool = true;

    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.readable()
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl DeviceIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn peer_certificate(&self) -> Option<Vec<u8>> {
        self.get_ref().1.peer_certificates()?.first().map(|c| c.to_vec())
    }
}
impl DeviceIo for tokio::io::DuplexStream {}

/// What every connection of a node shares.
pub struct ConnCtx {
    pub cfg: Arc<Config>,
    pub router: Arc<Router>,
    pub devices: Arc<Devices>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Auth>,
    /// Open connections per source address (`limits.max_connections_per_address`).
    pub addresses: Arc<crate::transport::limits::Addresses>,
    /// Flips to true when the node shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Identifies a connection in logs.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub listener: &'static str,
}
