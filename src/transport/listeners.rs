//! Listeners: bind, accept until shutdown, and spawn one connection task per socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::connection::{serve_connection, ConnCtx, Peer};
use crate::config::{TlsListenerConfig, WsListenerConfig};

/// Listener start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A port could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The TLS certificate, key or CA bundle is unusable.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Addresses actually bound (port 0 resolved) and the accept tasks.
pub struct BoundListeners {
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
}

/// Binds a listening socket with SO_REUSEADDR (a restarted node rebinds at once) and an
/// accept queue of `backlog` (std's default is 128).
fn bind(addr: SocketAddr, backlog: u32) -> Result<(TcpListener, SocketAddr), TransportError> {
    let err = |source| TransportError::Bind { addr, source };
    let socket =
        if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let l = socket.listen(backlog).map_err(err)?;
    let local = l.local_addr().map_err(|source| TransportError::Bind { addr, source })?;
    Ok((l, local))
}

/// Binds every configured listener and starts accepting. Each connection task holds a
/// clone of `done`, so the node knows when the last one has ended.
pub async fn bind_listeners(
    ctx: Arc<ConnCtx>,
    done: mpsc::Sender<()>,
) -> Result<BoundListeners, TransportError> {
    let cfg = ctx.cfg.clone();
    let mut bound = BoundListeners { tcp: None, tls: None, ws: None };
    if let Some(t) = &cfg.listeners.tcp {
        let (l, addr) = bind(t.bind, cfg.listeners.backlog)?;
        bound.tcp = Some(addr);
        tokio::spawn(accept_loop(l, ctx.clone(), done.clone(), Kind::Tcp));
    }
    if let Some(t) = &cfg.listeners.tls {
        let acceptor = tls_acceptor(t, ctx.auth.verifier())?;
        let (l, addr) = bind(t.bind, cfg.listeners.backlog)?;
        bound.tls = Some(addr);
        let deadline = Duration::from_secs(t.handshake_timeout_secs);
        tokio::spawn(accept_loop(l, ctx.clone(), done.clone(), Kind::Tls(acceptor, deadline)));
    }
    if let Some(w) = &cfg.listeners.ws {
        let (l, addr) = bind(w.bind, cfg.listeners.backlog)?;
        bound.ws = Some(addr);
        tokio::spawn(accept_loop(l, ctx.clone(), done.clone(), Kind::Ws(w.clone())));
    }
    Ok(bound)
}

#[derive(Clone)]
enum Kind {
    Tcp,
    Tls(TlsAcceptor, Duration),
    Ws(WsListenerConfig),
}

async fn accept_loop(l: TcpListener, ctx: Arc<ConnCtx>, done: mpsc::Sender<()>, kind: Kind) {
    let mut shutdown: watch::Receiver<bool> = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = l.accept() => a,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(message = "accept failed", error = %e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let done = done.clone();
        let kind = kind.clone();
        // One task per kind, so a plain TCP connection's task is not sized for the
        // largest (TLS) variant.
        match kind {
            Kind::Tcp => {
                tokio::spawn(async move {
                    let _done = done;
                    serve_connection(stream, Peer { addr, listener: "tcp" }, ctx).await
                });
            }
            Kind::Tls(acceptor, deadline) => {
                // Registered CAs may have changed since the last handshake.
                ctx.auth.refresh_anchors();
                tokio::spawn(async move {
                    let _done = done;
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            serve_connection(tls, Peer { addr, listener: "tls" }, ctx).await
                        }
                        Ok(Err(e)) => {
                            ctx.metrics
                                .protocol_errors
                                .with_label_values(&["tls_handshake_failed"])
                                .inc();
                            tracing::debug!(message = "TLS handshake failed", peer = %addr, error = %e);
                        }
                        Err(_) => {
                            ctx.metrics
                                .protocol_errors
                                .with_label_values(&["tls_handshake_timeout"])
                                .inc();
                        }
                    }
                });
            }
            Kind::Ws(cfg) => {
                tokio::spawn(async move {
                    let _done = done;
                    serve_ws(stream, addr, cfg, ctx).await
                });
            }
        }
    }
}

/// The listener's TLS configuration. Client certificates are verified by `verifier`,
/// whose anchors are the `client_ca` file and the registered, active CAs.
fn tls_acceptor(
    t: &TlsListenerConfig,
    verifier: Option<Arc<crate::auth::x509::DynamicVerifier>>,
) -> Result<TlsAcceptor, TransportError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| TransportError::Tls(format!("{}: {e}", p.display())))
    };
    let certs = rustls_pemfile::certs(&mut &read(&t.cert)?[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Tls(format!("{}: {e}", t.cert.display())))?;
    if certs.is_empty() {
        return Err(TransportError::Tls(format!("{}: no certificate", t.cert.display())));
    }
    let key = rustls_pemfile::private_key(&mut &read(&t.key)?[..])
        .map_err(|e| TransportError::Tls(format!("{}: {e}", t.key.display())))?
        .ok_or_else(|| TransportError::Tls(format!("{}: no private key", t.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg =
        builder.with_single_cert(certs, key).map_err(|e| TransportError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// MQTT over WebSocket: upgrade on the configured path with subprotocol `mqtt`, then
/// bridge binary frames to a byte pipe the ordinary connection task reads.
async fn serve_ws(stream: TcpStream, addr: SocketAddr, cfg: WsListenerConfig, ctx: Arc<ConnCtx>) {
    let path = cfg.path.clone();
    // The error type is tungstenite's callback contract, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut e = ErrorResponse::new(Some("not found".into()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(str::trim))
            .any(|p| p == "mqtt" || p == "mqttv3.1");
        if offered {
            resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(resp)
    };
    let upgrade = tokio::time::timeout(
        Duration::from_secs(ctx.cfg.mqtt.connect_timeout_secs),
        tokio_tungstenite::accept_hdr_async(stream, callback),
    )
    .await;
    let ws = match upgrade {
        Ok(Ok(ws)) => ws,
        _ => {
            ctx.metrics.protocol_errors.with_label_values(&["websocket_upgrade_failed"]).inc();
            return;
        }
    };
    let (near, far) = tokio::io::duplex(64 * 1024);
    let mut bridge = tokio::spawn(async move {
        let (mut sink, mut source) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(far);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                m = source.next() => match m {
                    Some(Ok(WsMessage::Binary(b))) => {
                        if wr.write_all(&b).await.is_err() { break; }
                    }
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                    // MQTT over WebSocket is binary only; text frames and close end it.
                    _ => break,
                },
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let frame = WsMessage::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                        if sink.send(frame).await.is_err() { break; }
                    }
                },
            }
        }
        let _ = sink.close().await;
    });
    serve_connection(near, Peer { addr, listener: "ws" }, ctx).await;
    // Let the bridge write the last frames (DISCONNECT) and close the WebSocket.
    if tokio::time::timeout(Duration::from_secs(2), &mut bridge).await.is_err() {
        bridge.abort();
    }
}
