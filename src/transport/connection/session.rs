//! The live session of one connection: the pump loop and per-packet handling.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use prometheus::IntGauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::broker::Publisher;
use tokio::time::Instant;

use super::handshake::{self, Negotiated, Refused};
use super::outbound::Outbound;
use super::{presence, reserved};
use super::{ConnCtx, DeviceIo, Peer};

mod end;
mod publish;
mod subscribe;
use crate::auth::policy::Action;
use crate::auth::{Access, ConnectAuth, Tracked};
use crate::broker::{ConnQueue, Control, Delivery, LiveState, SessionSlot};
use crate::device::AttachRequest;
use crate::mqtt::{self, DecodeError, Packet, Properties, PubResp, QoS, ReasonCode};
use crate::session::{AckKind, Acked, Incoming, Outgoing, Resend};
use crate::transport::limits::{AddressGuard, ConnLimiter};

/// How long a connection whose session's actor moved tries to re-attach (an election
/// may have to finish first).
const RESUME_WITHIN: Duration = Duration::from_secs(5);
/// Read chunk reserved once the socket is readable.
const READ_CHUNK: usize = 4096;
/// How many completed stored entries a connection remembers for a takeover.
const RECENT_DONE: usize = 128;
/// Acknowledgements a connection may owe at once. v5 clients are held to our Receive
/// Maximum; 3.1.1 has none, and this is as many as a client has packet identifiers.
const MAX_OWED_ACKS: usize = u16::MAX as usize;

/// The acknowledgement of one QoS 1/2 PUBLISH, once what it waits for has happened.
struct AckDone {
    pkid: u16,
    qos: QoS,
    reason: ReasonCode,
    /// It waited in `owed` (and counted against our Receive Maximum).
    owed: bool,
}

/// An acknowledgement that waits for durable writes or for room at subscribers.
type OwedAck = Pin<Box<dyn Future<Output = AckDone> + Send>>;

/// A pause in reading a QoS 0 publisher: until its full subscribers have room, or
/// [`MAX_PAUSE`] at the most.
type Pause = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The longest a publisher's reading pauses for one full subscriber. Bounded, so two
/// clients publishing to each other's full backlogs cannot stall each other for good;
/// after it, their QoS 0 messages are dropped at twice the backlog limit.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// A packet that needs the device actor.
enum DeviceCall {
    Subscribe(Box<mqtt::Subscribe>),
    Unsubscribe(Box<mqtt::Unsubscribe>),
}

/// Why the pump stopped.
enum End {
    /// DISCONNECT from the client; `will` if it asked for the will (v5 0x04).
    Client {
        will: bool,
    },
    /// The socket closed or failed without DISCONNECT.
    Io,
    /// The client broke the protocol; v5 gets DISCONNECT with this reason.
    Violation(ReasonCode, &'static str),
    KeepAlive,
    /// Not an end: nothing is in progress and nothing happened for
    /// `mqtt.hibernate_after_ms`; the connection hibernates (`Conn::hibernate`).
    Idle,
    TakenOver(oneshot::Sender<LiveState>),
    Shutdown,
    Kicked(ReasonCode),
    /// The session's shard moved to another node: DISCONNECT 0x9C (v5) with the node's
    /// address as Server Reference, no will (the session goes on there).
    Redirected(Option<String>),
    /// This node is leaving (`Devices::set_leaving`): DISCONNECT 0x9C (v5) naming
    /// another node. The session detaches as at a shutdown (its will is due after its
    /// delay; a client back within the delay sends none).
    Left(Option<String>),
}

struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Conn {
    ctx: Arc<ConnCtx>,
    neg: Negotiated,
    client: Arc<str>,
    slot: Arc<SessionSlot>,
    queue: Arc<ConnQueue>,
    out: Outbound,
    outgoing: Outgoing,
    incoming: Incoming,
    in_aliases: HashMap<u16, Arc<str>>,
    /// Acknowledgements owed to the client, in the order its PUBLISH packets came (MQTT
    /// requires that order). Only the front is polled: what the others wait for happens
    /// on its own, so each is ready or nearly so when its turn comes.
    owed: VecDeque<OwedAck>,
    /// Reading is paused: a QoS 0 message found a subscriber's backlog full (flow
    /// control, as for QoS 1/2 through the window; see `broker/outq.rs`).
    paused: Option<Pause>,
    /// Offline-queue entries completed since the last report to the actor.
    delivered: Vec<u64>,
    /// The last [`RECENT_DONE`] of them already sent (no allocation until the first).
    recent_done: VecDeque<u64>,
    expiry_update: Option<u32>,
    /// What this client may publish, subscribe to and receive.
    access: Access,
    /// In the node's set of authenticated connections while it lives.
    _tracked: Option<Tracked>,
    /// Its place in its source address's connection count.
    _address: Option<AddressGuard>,
    /// Publish rate and inbound bandwidth budgets, if limited.
    limiter: Option<Box<ConnLimiter>>,
    /// When the client last sent anything (keep-alive).
    last_read: Instant,
    /// CONNECT's user name and the client's address, for rules' `username` / `peerhost`
    /// (its messages share it).
    publisher: Arc<Publisher>,
}

/// Serves one device connection from CONNECT to close.
pub async fn serve_connection<S: DeviceIo>(mut io: S, peer: Peer, ctx: Arc<ConnCtx>) {
    let gauge = ctx.metrics.connections.with_label_values(&[peer.listener]);
    gauge.inc();
    let _guard = GaugeGuard(gauge);
    let mut rbuf = BytesMut::new();
    // The handshake, the pump loop and the close are boxed, and so is the connection's
    // state: their futures (deadlines, device calls, the loop's select) would otherwise
    // size every connection's task for as long as it lives. A hibernating connection's
    // task holds pointers and the small wait of `Conn::hibernate`.
    let Some(mut conn) = Box::pin(open(&mut io, &mut rbuf, peer, &ctx)).await else { return };
    if rbuf.is_empty() {
        // The CONNECT buffer goes; an idle connection holds none.
        rbuf = BytesMut::new();
    }
    let end = loop {
        match Box::pin(conn.run(&mut io, std::mem::take(&mut rbuf))).await {
            End::Idle => {}
            end => break end,
        }
        let gauge = GaugeGuard(ctx.metrics.hibernating.clone());
        gauge.0.inc();
        let woke = conn.hibernate(&io).await;
        drop(gauge);
        if let Some(end) = woke {
            break end;
        }
    };
    Box::pin(conn.finish(&mut io, end)).await;
}

/// Reads CONNECT, attaches to the session and queues CONNACK and what the session has
/// to resend. `None` if the connection was refused (and answered).
async fn open<S: DeviceIo>(
    io: &mut S,
    rbuf: &mut BytesMut,
    peer: Peer,
    ctx: &Arc<ConnCtx>,
) -> Option<Box<Conn>> {
    let ctx = ctx.clone();
    let io = &mut *io;
    let connect = match handshake::read_connect(io, rbuf, &ctx).await {
        Ok(c) => c,
        Err(r) => {
            let label = match &r {
                Refused::Io => "closed_before_connect",
                Refused::Timeout => "connect_timeout",
                Refused::NotConnect => "first_packet_not_connect",
                Refused::Decode(e, _) => e.label(),
            };
            ctx.metrics.protocol_errors.with_label_values(&[label]).inc();
            ctx.metrics.connects.with_label_values(&[label]).inc();
            if let Refused::Decode(e, v5) = &r {
                if let Some((v, code)) = handshake::connack_for_decode_error(e, *v5) {
                    handshake::refuse(io, v, code, &ctx).await;
                }
            }
            tracing::debug!(message = "connection refused before CONNECT", peer = %peer.addr, reason = label);
            return None;
        }
    };
    let mut neg = match handshake::negotiate(&connect, &ctx) {
        Ok(n) => n,
        Err(code) => {
            handshake::refuse(io, connect.protocol, code, &ctx).await;
            return None;
        }
    };
    let limits = &ctx.cfg.limits;
    let Some(address) = ctx.addresses.acquire(peer.addr.ip(), limits.max_connections_per_address)
    else {
        ctx.metrics.limit_hits.with_label_values(&["connections_per_address"]).inc();
        handshake::refuse(io, connect.protocol, ReasonCode::QuotaExceeded, &ctx).await;
        return None;
    };
    let props_too_large = |p: &Properties| {
        connect.protocol.is_v5()
            && crate::transport::limits::user_property_bytes(p) > limits.max_user_property_bytes
    };
    let will_too_large = connect.will.as_ref().is_some_and(|w| props_too_large(&w.properties));
    if props_too_large(&connect.properties) || will_too_large {
        ctx.metrics.limit_hits.with_label_values(&["user_property_bytes"]).inc();
        handshake::refuse(io, connect.protocol, ReasonCode::QuotaExceeded, &ctx).await;
        return None;
    }
    if connect.will.as_ref().is_some_and(|w| !crate::transport::limits::topic_ok(&w.topic, limits))
    {
        ctx.metrics.limit_hits.with_label_values(&["topic_size"]).inc();
        handshake::refuse(io, connect.protocol, ReasonCode::TopicNameInvalid, &ctx).await;
        return None;
    }
    let cert = io.peer_certificate();
    ctx.auth.pace(peer.addr.ip()).await;
    let presented = ConnectAuth {
        client_id: &neg.client_id,
        password: connect.password.as_deref(),
        cert: cert.as_deref(),
    };
    let grant = match ctx.auth.authenticate(&presented).await {
        Ok(g) => g,
        Err(r) => {
            ctx.auth.failed(peer.addr.ip(), r.label);
            tracing::info!(message = "connect refused", client = %neg.client_id, peer = %peer.addr, reason = r.label);
            handshake::refuse(io, connect.protocol, r.reason, &ctx).await;
            return None;
        }
    };
    // A node that is leaving sends the client to another (after authentication: the
    // address of a peer is not told to anyone).
    if ctx.devices.leaving() {
        let server_reference = ctx.devices.elsewhere(&neg.client_id);
        let props = Properties { server_reference, ..Default::default() };
        handshake::refuse_with(io, connect.protocol, ReasonCode::UseAnotherServer, props, &ctx)
            .await;
        return None;
    }
    let queue = Arc::new(ConnQueue::new(handshake::next_conn_id(), ctx.cfg.mqtt.outbound_queue));
    let tracked = ctx.auth.track(queue.id, &grant, &queue);
    let req = AttachRequest {
        conn: queue.clone(),
        clean_start: connect.clean_start,
        expiry_secs: neg.expiry_secs,
        // The session keeps the will; the connection needs no copy.
        will: neg.will.take().map(|w| *w),
        resume: None,
    };
    let reply = match ctx.devices.attach(&neg.client_id, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(message = "session attach failed", client = %neg.client_id, error = %e);
            handshake::refuse(io, connect.protocol, ReasonCode::ServerUnavailable, &ctx).await;
            return None;
        }
    };
    let mut conn = Box::new(Conn {
        // The slot's copy of the client id: an idle connection keeps one, not three.
        client: reply.slot.client_id.clone(),
        slot: reply.slot.clone(),
        queue,
        out: Outbound::new(neg.protocol, neg.client_alias_max, neg.client_max_packet),
        outgoing: Outgoing::new(neg.client_receive_max),
        incoming: Incoming::new(ctx.cfg.mqtt.receive_maximum, reply.awaiting_rel.iter().copied()),
        in_aliases: HashMap::new(),
        owed: VecDeque::new(),
        paused: None,
        delivered: Vec::new(),
        recent_done: VecDeque::new(),
        expiry_update: None,
        access: Access::new(grant),
        _tracked: tracked,
        _address: address,
        limiter: ConnLimiter::new(limits, std::time::Instant::now()),
        last_read: Instant::now(),
        publisher: Arc::new(Publisher {
            username: connect.username.as_deref().map(Arc::from),
            peer_ip: peer.addr.ip(),
        }),
        ctx: ctx.clone(),
        neg,
    });
    if let Some(d) = reply.durable {
        if !matches!(d.await, Ok(Ok(()))) {
            handshake::refuse(io, connect.protocol, ReasonCode::ServerUnavailable, &ctx).await;
            conn.queue.close();
            conn.detach(LiveState::default(), false);
            return None;
        }
    }
    let ack = handshake::connack(&conn.neg, &connect, &ctx, reply.session_present);
    // CONNACK was its last use (an assigned id); `conn.client` names the client from here.
    conn.neg.client_id = String::new();
    conn.out.packet(&ack, &ctx.metrics);
    ctx.metrics.connects.with_label_values(&["accepted"]).inc();
    tracing::debug!(message = "client connected", client = %conn.client, peer = %peer.addr, protocol = conn.neg.protocol.label());

    conn.outgoing.restore(reply.inflight);
    for r in conn.outgoing.resend() {
        match r {
            Resend::Publish(pkid, d) => conn.send_publish(pkid, &d, true),
            Resend::PubRel(pkid) => {
                conn.out.packet(&Packet::PubRel(PubResp::ok(pkid)), &ctx.metrics)
            }
        }
    }
    for d in reply.queued {
        conn.deliver(d);
    }
    let level = if conn.neg.protocol.is_v5() { 5 } else { 4 };
    presence::connected(
        &ctx.router,
        &conn.client,
        &conn.publisher,
        conn.queue.id,
        peer.addr,
        level,
    );
    Some(conn)
}

/// The end of a pause in reading; never resolves when not paused.
async fn pause_end(paused: &mut Option<Pause>) {
    match paused {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

/// The front owed acknowledgement, once ready; never resolves when none is owed.
async fn front(owed: &mut VecDeque<OwedAck>) -> AckDone {
    match owed.front_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Conn {
    fn deliver(&mut self, d: Delivery) {
        // Checked at delivery too: policies change, and retained and queued messages
        // were published before this connection's rules were known.
        if !self.access.allows(&self.ctx.auth, Action::Receive, &d.msg.topic) {
            if let Some(seq) = d.seq {
                self.delivered.push(seq);
            }
            return;
        }
        if let Some((pkid, d)) = self.outgoing.submit(d) {
            self.send_publish(pkid, &d, false);
        }
    }

    fn send_publish(&mut self, pkid: u16, d: &Delivery, dup: bool) {
        let mut work = vec![(pkid, d.clone(), dup)];
        while let Some((pkid, d, dup)) = work.pop() {
            let sent = self.out.publish(pkid, &d, dup, &self.ctx.metrics);
            if sent && pkid != 0 {
                continue;
            }
            // QoS 0 written, or dropped: complete it now.
            if let Some(seq) = d.seq {
                self.delivered.push(seq);
            }
            if !sent && pkid != 0 {
                let acked = self.outgoing.abandon(pkid);
                work.extend(acked.next.into_iter().rev().map(|(p, d)| (p, d, false)));
            }
        }
    }

    fn completed(&mut self, acked: Acked) {
        if let Some(seq) = acked.done.and_then(|d| d.seq) {
            self.delivered.push(seq);
        }
        for (pkid, d) in acked.next {
            self.send_publish(pkid, &d, false);
        }
    }

    /// How long the client may stay silent (1.5 times its keep-alive), if it must not.
    fn keep_alive(&self) -> Option<Duration> {
        let ka = Duration::from_millis(u64::from(self.neg.keep_alive) * 1500);
        (!ka.is_zero()).then_some(ka)
    }

    /// Nothing is in progress: nothing to write, owed, paused for or waiting for a
    /// window slot, and no partial packet read.
    fn quiescent(&self, rbuf: &BytesMut) -> bool {
        rbuf.is_empty()
            && self.out.buf.is_empty()
            && self.delivered.is_empty()
            && self.owed.is_empty()
            && self.paused.is_none()
            && self.outgoing.pending_len() == 0
    }

    /// Waits, holding no working state, until the connection has work again (`None`: the
    /// socket is readable, or a delivery or order came) or it ends. Polled by hand, with
    /// no future per source: this wait is what a hibernating connection's task holds.
    /// Shutdown comes as a wake of the queue (`Devices::wake_connections`) and is seen
    /// by the loop.
    async fn hibernate<S: DeviceIo>(&mut self, io: &S) -> Option<End> {
        if *self.ctx.shutdown.borrow() {
            return Some(End::Shutdown);
        }
        let keepalive = self.keep_alive().map(|ka| tokio::time::sleep_until(self.last_read + ka));
        tokio::pin!(keepalive);
        let queue = &self.queue;
        std::future::poll_fn(|cx| {
            if queue.poll_woken(cx).is_ready() {
                return Poll::Ready(None);
            }
            match io.poll_readable(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(None),
                Poll::Ready(Err(_)) => return Poll::Ready(Some(End::Io)),
                Poll::Pending => {}
            }
            match keepalive.as_mut().as_pin_mut().map(|k| k.poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Some(End::KeepAlive)),
                _ => Poll::Pending,
            }
        })
        .await
    }

    async fn run<S: DeviceIo>(&mut self, io: &mut S, mut rbuf: BytesMut) -> End {
        const FAR: Duration = Duration::from_secs(86400 * 365);
        let ka = self.keep_alive().unwrap_or(FAR);
        let keepalive = tokio::time::sleep_until(self.last_read + ka);
        tokio::pin!(keepalive);
        let idle_after = Duration::from_millis(self.ctx.cfg.mqtt.hibernate_after_ms);
        let hibernates = S::WAITS_READABLE && !idle_after.is_zero();
        let mut last_work = Instant::now();
        let idle = tokio::time::sleep(if hibernates { idle_after } else { FAR });
        tokio::pin!(idle);
        let mut shutdown = self.ctx.shutdown.clone();
        if *shutdown.borrow() {
            return End::Shutdown;
        }
        // Attached while the node started leaving (or back from hibernation since).
        if self.ctx.devices.leaving() {
            return End::Left(self.ctx.devices.elsewhere(&self.client));
        }
        loop {
            if !self.out.buf.is_empty() {
                let buf = std::mem::take(&mut self.out.buf);
                if io.write_all(&buf).await.is_err() || io.flush().await.is_err() {
                    return End::Io;
                }
            }
            self.flush_delivered();
            // What waits for a window slot counts towards the backlog limit.
            self.queue.settle(self.outgoing.pending_len());
            let reading = self.paused.is_none();
            tokio::select! {
                biased;
                _ = shutdown.changed() => return End::Shutdown,
                _ = self.queue.ready() => {
                    if self.ctx.devices.leaving() {
                        return End::Left(self.ctx.devices.elsewhere(&self.client));
                    }
                    let (items, control) = self.queue.take();
                    if let Some(c) = control {
                        // Not sent yet: they go with the live state, or stay for the
                        // session's new actor.
                        self.outgoing.hold(items);
                        match c {
                            Control::TakeOver { reply } => return End::TakenOver(reply),
                            Control::Kick(code) => return End::Kicked(code),
                            Control::Redirect { server, record } => {
                                if !Box::pin(self.resume(record)).await {
                                    return End::Redirected(server);
                                }
                                last_work = Instant::now();
                                continue;
                            }
                        }
                    }
                    for d in items {
                        self.deliver(d);
                    }
                    last_work = Instant::now();
                }
                done = front(&mut self.owed) => {
                    self.owed.pop_front();
                    if let Err(end) = self.acknowledge(done) {
                        return end;
                    }
                }
                () = pause_end(&mut self.paused) => {
                    self.paused = None;
                    // What was read before the pause, first.
                    if let Err(end) = self.on_input(&mut rbuf).await {
                        return end;
                    }
                }
                read = async {
                    io.wait_readable().await?;
                    rbuf.reserve(READ_CHUNK);
                    io.read_buf(&mut rbuf).await
                }, if reading => {
                    match read {
                        Ok(0) | Err(_) => return End::Io,
                        Ok(_) => {}
                    }
                    self.last_read = Instant::now();
                    last_work = self.last_read;
                    if let Err(end) = self.on_input(&mut rbuf).await {
                        return end;
                    }
                    if rbuf.is_empty() {
                        // Release the read buffer while idle.
                        rbuf = BytesMut::new();
                    }
                }
                _ = &mut keepalive => {
                    let deadline = self.last_read + ka;
                    if Instant::now() >= deadline {
                        return End::KeepAlive;
                    }
                    keepalive.as_mut().reset(deadline);
                }
                _ = &mut idle, if hibernates => {
                    let now = Instant::now();
                    if self.quiescent(&rbuf) && now >= last_work + idle_after {
                        return End::Idle;
                    }
                    idle.as_mut().reset((last_work + idle_after).max(now + idle_after / 4));
                }
            }
        }
    }

    /// Handles every whole packet in `rbuf`. SUBSCRIBE and UNSUBSCRIBE need their device
    /// actor and are awaited here, boxed: an inline device call would size every
    /// connection's task for as long as it lives.
    async fn on_input(&mut self, rbuf: &mut BytesMut) -> Result<(), End> {
        while let Some(call) = self.on_bytes(rbuf)? {
            match call {
                DeviceCall::Subscribe(s) => Box::pin(self.on_subscribe(*s)).await?,
                DeviceCall::Unsubscribe(u) => Box::pin(self.on_unsubscribe(*u)).await?,
            }
        }
        Ok(())
    }

    /// Decodes and handles packets until the buffer holds no whole packet (`None`) or a
    /// packet needs the device actor.
    fn on_bytes(&mut self, rbuf: &mut BytesMut) -> Result<Option<DeviceCall>, End> {
        let cfg = &self.ctx.cfg.mqtt;
        let (max, max_up) = (cfg.max_packet_size as usize, cfg.max_user_properties);
        loop {
            let first = rbuf.first().copied();
            match mqtt::decode(rbuf, self.neg.protocol, max, max_up) {
                Ok(Some(d)) => {
                    self.ctx.metrics.packet_in(first.unwrap_or(0), d.size);
                    let publish = matches!(d.packet, Packet::Publish(_));
                    let size = d.size;
                    let call = self.on_packet(d.packet)?;
                    self.limit(size, publish);
                    if let Some(call) = call {
                        return Ok(Some(call));
                    }
                    if self.paused.is_some() {
                        // The rest waits in the buffer until the pause ends.
                        return Ok(None);
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(decode_end(&e)),
            }
        }
    }

    fn on_packet(&mut self, p: Packet) -> Result<Option<DeviceCall>, End> {
        let v5 = self.neg.protocol.is_v5();
        match p {
            Packet::Subscribe(s) => return Ok(Some(DeviceCall::Subscribe(Box::new(s)))),
            Packet::Unsubscribe(u) => return Ok(Some(DeviceCall::Unsubscribe(Box::new(u)))),
            _ => {}
        }
        let done = match p {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(r) => {
                if let Ok(a) = self.outgoing.ack(r.pkid, AckKind::PubAck) {
                    self.completed(a);
                }
                Ok(())
            }
            Packet::PubRec(r) => {
                if r.reason.is_error() {
                    let a = self.outgoing.abandon(r.pkid);
                    self.completed(a);
                    return Ok(None);
                }
                let reason = match self.outgoing.ack(r.pkid, AckKind::PubRec) {
                    Ok(_) => ReasonCode::Success,
                    Err(_) => ReasonCode::PacketIdentifierNotFound,
                };
                let rel = PubResp {
                    pkid: r.pkid,
                    reason: if v5 { reason } else { ReasonCode::Success },
                    properties: Properties::default(),
                };
                self.out.packet(&Packet::PubRel(rel), &self.ctx.metrics);
                Ok(())
            }
            Packet::PubComp(r) => {
                if let Ok(a) = self.outgoing.ack(r.pkid, AckKind::PubComp) {
                    self.completed(a);
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                let known = self.incoming.release(r.pkid);
                let reason = if known || !v5 {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                let comp = PubResp { pkid: r.pkid, reason, properties: Properties::default() };
                self.out.packet(&Packet::PubComp(comp), &self.ctx.metrics);
                Ok(())
            }
            Packet::PingReq => {
                self.out.packet(&Packet::PingResp, &self.ctx.metrics);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    if self.neg.expiry_secs == 0 && e != 0 {
                        return Err(End::Violation(
                            ReasonCode::ProtocolError,
                            "session_expiry_after_zero",
                        ));
                    }
                    self.expiry_update = Some(e.min(self.ctx.cfg.mqtt.max_session_expiry_secs));
                }
                Err(End::Client { will: d.reason == ReasonCode::DisconnectWithWill })
            }
            Packet::Connect(_) => Err(End::Violation(ReasonCode::ProtocolError, "second_connect")),
            _ => Err(End::Violation(ReasonCode::ProtocolError, "unexpected_packet")),
        };
        done.map(|()| None)
    }
}

fn decode_end(e: &DecodeError) -> End {
    End::Violation(e.reason(), e.label())
}
