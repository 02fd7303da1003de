//! A raw MQTT client for tests: exact packets in and out over a TCP socket, using our own
//! codec only to frame what the test sends and to parse what the server answers.

use bytes::{Bytes, BytesMut};
use homeport::mqtt::{
    self, Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode, SubOptions, Subscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{addr, WAIT};

pub struct Raw {
    pub s: TcpStream,
    pub buf: BytesMut,
    pub v: Protocol,
}

impl Raw {
    pub async fn open(node: &homeport::node::Node) -> Raw {
        Raw::open_addr(addr(node)).await
    }

    pub async fn open_addr(a: std::net::SocketAddr) -> Raw {
        Raw { s: TcpStream::connect(a).await.unwrap(), buf: BytesMut::new(), v: Protocol::V5 }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        mqtt::encode(p, self.v, &mut out);
        self.s.write_all(&out).await.unwrap();
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b).await;
    }

    /// Next packet, or None when the server closed the connection. Panics after WAIT.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(d) = mqtt::decode(&mut self.buf, self.v, 1 << 24, 1024).unwrap() {
                    return Some(d.packet);
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("server answers or closes in time")
    }

    /// Sends `c` and returns the server's answer (CONNACK).
    pub async fn connect_with(&mut self, c: Connect) -> Packet {
        self.v = c.protocol;
        self.send(&Packet::Connect(Box::new(c))).await;
        self.recv().await.expect("CONNACK")
    }

    /// The next PUBLISH, acknowledged (QoS 1) unless `ack` is false.
    pub async fn next_publish(&mut self, ack: bool) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => {
                    if ack && p.qos == QoS::AtLeastOnce {
                        self.send(&Packet::PubAck(mqtt::PubResp::ok(p.pkid))).await;
                    }
                    return p;
                }
                Some(_) => continue,
                None => panic!("connection closed while waiting for PUBLISH"),
            }
        }
    }

    /// Reads packets for `d`; returns the first PUBLISH if one arrives.
    pub async fn publish_within(&mut self, d: std::time::Duration) -> Option<Publish> {
        let r = tokio::time::timeout(d, async {
            loop {
                match self.recv().await {
                    Some(Packet::Publish(p)) => return Some(p),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await;
        r.ok().flatten()
    }

    /// CONNECT as a client would in a cluster: CONNACK "server unavailable" (the
    /// session's shard is changing leaders) is tried again on a new connection to the
    /// same node, for up to 5 s. Returns the first other answer.
    pub async fn connect_retrying(&mut self, c: Connect) -> Packet {
        for _ in 0..50 {
            match self.connect_with(c.clone()).await {
                Packet::ConnAck(a) if a.reason == ReasonCode::ServerUnavailable => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    let node = self.s.peer_addr().expect("connected socket");
                    *self = Raw::open_addr(node).await;
                }
                other => return other,
            }
        }
        panic!("{}: server unavailable for 5 s", c.client_id)
    }

    /// A connection to `node` whose CONNECT (retried as [`Raw::connect_retrying`]) was
    /// accepted.
    pub async fn connected(node: &homeport::node::Node, c: Connect) -> Raw {
        let id = c.client_id.clone();
        let mut raw = Raw::open(node).await;
        match raw.connect_retrying(c).await {
            Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::Success, "{id}: {a:?}"),
            p => panic!("{id}: {p:?}"),
        }
        raw
    }

    pub async fn connect(&mut self, id: &str, v: Protocol, props: Properties) -> Packet {
        self.connect_with(connect_packet(id, v, true, props)).await
    }

    /// Reads until close; returns the DISCONNECT reason if one came.
    pub async fn closed_with(&mut self) -> Option<ReasonCode> {
        let mut reason = None;
        while let Some(p) = self.recv().await {
            if let Packet::Disconnect(d) = p {
                reason = Some(d.reason);
            }
        }
        reason
    }
}

/// A CONNECT with keep alive 30 and no will or credentials.
pub fn connect_packet(id: &str, v: Protocol, clean: bool, props: Properties) -> Connect {
    Connect {
        protocol: v,
        clean_start: clean,
        keep_alive: 30,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: props,
    }
}

pub fn publish(topic: &str, qos: QoS, pkid: u16, payload: &str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid,
        properties: Properties::default(),
        payload: Bytes::from(payload.to_string()),
    })
}

pub fn subscribe(pkid: u16, filters: &[(&str, QoS)], id: Option<u32>) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid,
        filters: filters.iter().map(|(f, q)| (f.to_string(), SubOptions::qos(*q))).collect(),
        properties: Properties {
            subscription_identifiers: id.into_iter().collect(),
            ..Default::default()
        },
    })
}

/// A healthy client that must keep working while others misbehave.
pub async fn healthy_pair(node: &homeport::node::Node) -> (Raw, Raw) {
    let mut sub = Raw::open(node).await;
    sub.connect("healthy-sub", Protocol::V5, Properties::default()).await;
    sub.send(&subscribe(1, &[("h/#", QoS::AtLeastOnce)], None)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let mut publ = Raw::open(node).await;
    publ.connect("healthy-pub", Protocol::V5, Properties::default()).await;
    (sub, publ)
}

pub async fn still_works(sub: &mut Raw, publ: &mut Raw, n: u16) {
    publ.send(&publish("h/x", QoS::AtLeastOnce, n, "ok")).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(a)) if a.pkid == n));
    match sub.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(&p.payload[..], b"ok");
            sub.send(&Packet::PubAck(mqtt::PubResp::ok(p.pkid))).await;
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}
