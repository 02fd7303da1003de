//! One load-generator client: a tokio task that connects, optionally subscribes, and then
//! publishes at its rate (or as fast as its in-flight window allows) while reading what
//! comes back. It holds no read buffer while idle, so tens of thousands fit in one process.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use super::stats::{wall_ns, Seen, Stats, Streams, STAMP_LEN};
use super::{LoadgenError, Mode, Opts};
use crate::mqtt::{
    self, Connect, Disconnect, Packet, Properties, PubResp, PublishRef, QoS, ReasonCode,
    SubOptions, Subscribe,
};

/// What this client does besides connecting.
#[derive(Debug, Clone)]
pub struct Role {
    /// Client number, used for `%i` in topics and ids.
    pub index: usize,
    /// Publish to this topic, with this publisher id in the stamp.
    pub publish: Option<(String, u32)>,
    /// Subscribe to this filter.
    pub subscribe: Option<String>,
}

/// Runs one client until `stop` turns true (or its work is done).
pub async fn run(
    opts: Arc<Opts>,
    role: Role,
    stats: Arc<Stats>,
    stop: watch::Receiver<bool>,
) -> Result<(), LoadgenError> {
    let mut target = opts.targets[role.index % opts.targets.len()];
    stats.connecting();
    let mut visited = vec![target];
    loop {
        let res = connect_once(&opts, &role, target, &stats, &stop).await;
        let Err(LoadgenError::Redirect(to)) = &res else { return res };
        // The redirect's own CONNACK was not counted: a followed one is not a failure.
        let next = tokio::net::lookup_host(to.as_str()).await.ok().and_then(|mut a| a.next());
        match next {
            Some(a) if visited.len() <= 3 && !visited.contains(&a) => {
                stats.redirects.fetch_add(1, Ordering::Relaxed);
                visited.push(a);
                target = a;
            }
            _ => {
                stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                return Err(LoadgenError::Protocol(format!("redirect loop or bad reference {to}")));
            }
        }
    }
}

async fn connect_once(
    opts: &Arc<Opts>,
    role: &Role,
    target: SocketAddr,
    stats: &Arc<Stats>,
    stop: &watch::Receiver<bool>,
) -> Result<(), LoadgenError> {
    let (opts, role, stats, stop) = (opts.clone(), role.clone(), stats.clone(), stop.clone());
    let tcp = match connect_tcp(&opts, role.index, target).await {
        Ok(s) => s,
        Err(e) => {
            stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    match &opts.tls {
        None => session(tcp, opts, role, stats, stop).await,
        Some((cfg, name)) => {
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| {
                    stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                    LoadgenError::Io(e.to_string())
                })?;
            session(tls, opts, role, stats, stop).await
        }
    }
}

async fn connect_tcp(
    opts: &Opts,
    index: usize,
    target: SocketAddr,
) -> Result<tokio::net::TcpStream, LoadgenError> {
    let sock = if target.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| LoadgenError::Io(e.to_string()))?;
    if !opts.binds.is_empty() {
        let ip = opts.binds[index % opts.binds.len()];
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| LoadgenError::Io(format!("bind {ip}: {e}")))?;
    }
    let s = sock.connect(target).await.map_err(|e| LoadgenError::Io(format!("{target}: {e}")))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Client state while connected.
struct Client<S> {
    io: S,
    opts: Arc<Opts>,
    stats: Arc<Stats>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_pkid: u16,
    /// Our QoS 1/2 publishes not yet completed.
    outstanding: usize,
    /// Messages published so far (the next sequence number).
    seq: u64,
    streams: Streams,
    latencies: Vec<u64>,
    received: u64,
    /// Payload scratch of publishers.
    payload: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid = if id == u16::MAX { 1 } else { id + 1 };
        id
    }

    fn queue(&mut self, p: &Packet) {
        mqtt::encode(p, self.opts.protocol, &mut self.wbuf);
    }

    async fn flush(&mut self) -> Result<(), LoadgenError> {
        if !self.wbuf.is_empty() {
            let buf = std::mem::take(&mut self.wbuf);
            self.io.write_all(&buf).await.map_err(|e| LoadgenError::Io(e.to_string()))?;
        }
        Ok(())
    }

    /// Reads until one packet is decoded. Returns None on close.
    async fn next_packet(&mut self) -> Result<Option<Packet>, LoadgenError> {
        loop {
            if let Some(p) = self.decode()? {
                return Ok(Some(p));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 512 {
                self.rbuf.reserve(4096);
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(LoadgenError::Io(e.to_string())),
            }
        }
    }

    fn decode(&mut self) -> Result<Option<Packet>, LoadgenError> {
        let d =
            mqtt::decode(&mut self.rbuf, self.opts.protocol, mqtt::MAX_PACKET_SIZE as usize, 4096)
                .map_err(|e| LoadgenError::Protocol(e.to_string()))?;
        if self.rbuf.is_empty() {
            // Hold no buffer while idle.
            self.rbuf = BytesMut::new();
        }
        Ok(d.map(|d| d.packet))
    }

    fn publish_one(&mut self, topic: &str, publisher: u32) {
        let shadow = self.opts.mode == Mode::Shadow;
        let qos = if shadow { QoS::AtLeastOnce } else { self.opts.qos };
        let pkid = if qos == QoS::AtMostOnce { 0 } else { self.pkid() };
        // One payload buffer per client, its stamp rewritten in place for each message.
        let mut payload = std::mem::take(&mut self.payload);
        if shadow {
            payload.clear();
            let body =
                format!(r#"{{"state":{{"reported":{{"t":{},"s":{}}}}}}}"#, wall_ns(), self.seq);
            payload.extend_from_slice(body.as_bytes());
        } else {
            payload.resize(self.opts.size, 0);
        }
        if !shadow && self.opts.size >= STAMP_LEN {
            payload[0..8].copy_from_slice(&wall_ns().to_be_bytes());
            payload[8..12].copy_from_slice(&publisher.to_be_bytes());
            payload[12..16].copy_from_slice(&(self.seq as u32).to_be_bytes());
        }
        let props = Properties::default();
        PublishRef {
            dup: false,
            qos,
            retain: false,
            topic,
            pkid,
            properties: &props,
            payload: &payload,
        }
        .encode(self.opts.protocol, &mut self.wbuf);
        self.payload = payload;
        self.seq += 1;
        if qos != QoS::AtMostOnce {
            self.outstanding += 1;
        }
    }

    /// A shadow reply: `accepted` carries the stamp we sent; either ends one update.
    fn shadow_reply(&mut self, topic: &str, payload: &[u8], now: u64) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if topic.ends_with("/update/accepted") {
            self.received += 1;
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            if let Some(sent) = v["state"]["reported"]["t"].as_u64() {
                self.latencies.push(now.saturating_sub(sent) / 1000);
            }
        } else {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Handles one incoming packet; answers go into the write buffer.
    fn handle(&mut self, p: Packet) {
        let now = wall_ns();
        let shadow = self.opts.mode == Mode::Shadow;
        match p {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.queue(&Packet::PubAck(PubResp::ok(p.pkid))),
                    QoS::ExactlyOnce => self.queue(&Packet::PubRec(PubResp::ok(p.pkid))),
                }
                if shadow {
                    self.shadow_reply(&p.topic, &p.payload, now);
                    return;
                }
                self.received += 1;
                if p.payload.len() >= STAMP_LEN {
                    let b = &p.payload;
                    let sent = u64::from_be_bytes(b[0..8].try_into().unwrap_or([0; 8]));
                    let publisher = u32::from_be_bytes(b[8..12].try_into().unwrap_or([0; 4]));
                    let seq = u32::from_be_bytes(b[12..16].try_into().unwrap_or([0; 4]));
                    // In pubsub mode subscribers are ready before publishers start, so a
                    // missing first message is a loss.
                    let leading = self.opts.mode == Mode::PubSub;
                    match self.streams.see(publisher, u64::from(seq), leading) {
                        Seen::Duplicate => {
                            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        Seen::New { gap } => {
                            // Shared members see interleaved parts of each stream.
                            if gap > 0 && self.opts.shared.is_none() {
                                self.stats.gaps.fetch_add(gap, Ordering::Relaxed);
                            }
                        }
                    }
                    self.latencies.push(now.saturating_sub(sent) / 1000);
                }
            }
            Packet::PubRel(r) => self.queue(&Packet::PubComp(PubResp::ok(r.pkid))),
            Packet::PubAck(_) | Packet::PubComp(_) => {
                // A shadow update ends with its reply, not its PUBACK.
                if !shadow {
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            Packet::PubRec(r) => self.queue(&Packet::PubRel(PubResp::ok(r.pkid))),
            _ => {}
        }
    }

    fn report_received(&mut self) {
        if self.received > 0 {
            self.stats.received(self.received, &self.latencies);
            self.received = 0;
            self.latencies.clear();
        }
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    opts: Arc<Opts>,
    role: Role,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LoadgenError> {
    let mut c = Client {
        io,
        opts: opts.clone(),
        stats: stats.clone(),
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        next_pkid: 1,
        outstanding: 0,
        seq: 0,
        streams: Streams::default(),
        latencies: Vec::new(),
        received: 0,
        payload: Vec::new(),
    };
    let id = opts.id_prefix.replace("%i", &role.index.to_string());
    let mut properties = Properties::default();
    if opts.protocol.is_v5() && opts.session_expiry > 0 {
        properties.session_expiry_interval = Some(opts.session_expiry);
    }
    let connect = Connect {
        protocol: opts.protocol,
        clean_start: opts.session_expiry == 0,
        keep_alive: opts.keepalive,
        client_id: id,
        will: None,
        username: opts.password.as_ref().map(|_| String::new()),
        password: opts
            .password
            .as_ref()
            .map(|p| bytes::Bytes::from(p.replace("%i", &role.index.to_string()))),
        properties,
    };
    let began = Instant::now();
    c.queue(&Packet::Connect(Box::new(connect)));
    c.flush().await?;
    match c.next_packet().await? {
        Some(Packet::ConnAck(a)) if !a.reason.is_error() => stats.connack(began.elapsed()),
        Some(Packet::ConnAck(a))
            if c.opts.follow_redirects
                && matches!(a.reason, ReasonCode::UseAnotherServer | ReasonCode::ServerMoved)
                && a.properties.server_reference.is_some() =>
        {
            let to = a.properties.server_reference.unwrap_or_default();
            // The first of a comma-separated list (MQTT 5 4.11).
            let first = to.split(',').next().unwrap_or_default().trim().to_string();
            return Err(LoadgenError::Redirect(first));
        }
        other => {
            stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            return Err(LoadgenError::Protocol(format!("expected CONNACK, got {other:?}")));
        }
    }
    if let Some(filter) = &role.subscribe {
        let filter = match &opts.shared {
            Some(g) => format!("$share/{g}/{filter}"),
            None => filter.clone(),
        };
        let pkid = c.pkid();
        c.queue(&Packet::Subscribe(Subscribe {
            pkid,
            filters: vec![(filter, SubOptions::qos(opts.qos))],
            properties: Properties::default(),
        }));
        c.flush().await?;
        loop {
            match c.next_packet().await? {
                Some(Packet::SubAck(a)) if a.reasons.iter().all(|r| !r.is_error()) => break,
                Some(Packet::SubAck(a)) => {
                    return Err(LoadgenError::Protocol(format!("subscription refused: {:?}", a)))
                }
                Some(p) => c.handle(p),
                None => return Err(LoadgenError::Protocol("closed before SUBACK".into())),
            }
        }
        stats.subscribed.fetch_add(1, Ordering::Relaxed);
        // Acknowledgements of messages that came before the SUBACK (a stored backlog).
        c.report_received();
        c.flush().await?;
        if opts.subscribe_only {
            c.queue(&Packet::Disconnect(Disconnect {
                reason: ReasonCode::Success,
                properties: Properties::default(),
            }));
            return c.flush().await;
        }
    }

    let ping_every = Duration::from_secs(u64::from(opts.keepalive.max(1))) / 2;
    let mut next_ping = Instant::now() + ping_every;
    let pub_start = Instant::now();
    let mut next_send = pub_start;
    let publishing = role.publish.as_ref();
    let window = if opts.qos == QoS::AtMostOnce && opts.mode != Mode::Shadow {
        usize::MAX
    } else {
        opts.inflight.max(1)
    };
    let result = loop {
        let more = publishing.is_some() && (opts.count == 0 || c.seq < opts.count);
        let can_send = more && c.outstanding < window;
        let done_publishing = publishing.is_some() && !more && c.outstanding == 0;
        if done_publishing && role.subscribe.is_none() {
            break Ok(());
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break Ok(()),
            r = c.io.read_buf(&mut c.rbuf) => {
                match r {
                    Ok(0) => break Err(LoadgenError::Io("server closed the connection".into())),
                    Err(e) => break Err(LoadgenError::Io(e.to_string())),
                    Ok(_) => {}
                }
                loop {
                    match c.decode() {
                        Ok(Some(p)) => c.handle(p),
                        Ok(None) => break,
                        Err(e) => return Err(e),
                    }
                }
                c.report_received();
            }
            _ = tokio::time::sleep_until(next_send), if can_send => {
                let Some((topic, publisher)) = &publishing else { continue };
                let (topic, publisher) = (topic.as_str(), *publisher);
                let mut n = 0;
                if opts.rate > 0.0 {
                    // Send everything due by now, so the offered load holds even if a
                    // wake comes late.
                    let due = (pub_start.elapsed().as_secs_f64() * opts.rate) as u64 + 1;
                    while c.seq < due && c.outstanding < window && (opts.count == 0 || c.seq < opts.count) {
                        c.publish_one(topic, publisher);
                        n += 1;
                    }
                    next_send = pub_start + Duration::from_secs_f64((c.seq as f64) / opts.rate);
                } else {
                    while n < 64 && c.outstanding < window && (opts.count == 0 || c.seq < opts.count) {
                        c.publish_one(topic, publisher);
                        n += 1;
                    }
                }
                stats.sent(n);
            }
            _ = tokio::time::sleep_until(next_ping) => {
                c.queue(&Packet::PingReq);
                next_ping = Instant::now() + ping_every;
            }
        }
        if let Err(e) = c.flush().await {
            break Err(e);
        }
    };
    if let Some((_, publisher)) = &role.publish {
        stats.publisher_done(*publisher, c.seq);
    }
    c.report_received();
    stats.subscriber_done(std::mem::take(&mut c.streams).into_last());
    c.queue(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), c.flush()).await;
    stats.connected.fetch_sub(1, Ordering::Relaxed);
    result
}
