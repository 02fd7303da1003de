//! Listeners through real sockets: TLS with and without client certificates (certificates
//! made by rcgen, client rumqttc over rustls), the TLS handshake deadline, MQTT over
//! WebSocket, and a client holding 10,000 subscriptions next to healthy clients.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::raw::*;
use common::*;
use homeport::config::TlsListenerConfig;
use homeport::mqtt::{Packet, Properties, Protocol, QoS as HQoS};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rumqttc::{
    AsyncClient, Event, MqttOptions, Packet as RPacket, QoS, TlsConfiguration, Transport,
};
use tokio::io::AsyncReadExt;

/// PEM files of a test PKI: one CA, a server certificate for localhost/127.0.0.1 and a
/// client certificate, all signed by the CA.
struct Pki {
    ca_pem: String,
    client: (String, String),
}

fn pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();

    let client_key = KeyPair::generate().unwrap();
    // The certificate names the device: its common name is the client id it uses.
    let mut client_params = CertificateParams::new(vec!["device-1".into()]).unwrap();
    client_params.distinguished_name.push(rcgen::DnType::CommonName, "tls-client");
    let client = client_params.signed_by(&client_key, &ca).unwrap();
    Pki { ca_pem: ca.pem(), client: (client.pem(), client_key.serialize_pem()) }
}

fn tls_client(pki: &Pki, with_cert: bool) -> TlsConfiguration {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = if with_cert {
        let certs: Vec<_> =
            rustls_pemfile::certs(&mut pki.client.0.as_bytes()).collect::<Result<_, _>>().unwrap();
        let key = rustls_pemfile::private_key(&mut pki.client.1.as_bytes()).unwrap().unwrap();
        builder.with_client_auth_cert(certs, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    TlsConfiguration::Rustls(Arc::new(cfg))
}

async fn tls_node(dir: &Path, require_client_cert: bool) -> homeport::node::Node {
    let mut cfg = config(dir);
    cfg.listeners.tls = Some(TlsListenerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: require_client_cert.then(|| dir.join("ca.pem")),
        require_client_cert,
        handshake_timeout_secs: 1,
    });
    homeport::node::Node::start(cfg).await.expect("node starts")
}

/// Connects over TLS and round-trips one QoS 1 message through the broker.
async fn tls_round_trip(node: &homeport::node::Node, tls: TlsConfiguration) {
    let a = node.tls_addr.expect("tls listener");
    let mut o = MqttOptions::new("tls-client", "localhost", a.port());
    o.set_transport(Transport::Tls(tls));
    let (c, mut ev) = AsyncClient::new(o, 10);
    until(&mut ev, |e| matches!(e, Event::Incoming(RPacket::ConnAck(_))).then_some(())).await;
    c.subscribe("devices/tls-client/t", QoS::AtLeastOnce).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(RPacket::SubAck(_))).then_some(())).await;
    c.publish("devices/tls-client/t", QoS::AtLeastOnce, false, "secret").await.unwrap();
    let p = until(&mut ev, |e| match e {
        Event::Incoming(RPacket::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&p.payload[..], b"secret");
}

/// Tries to connect over TLS; true if a CONNACK arrives.
async fn tls_connects(node: &homeport::node::Node, tls: TlsConfiguration) -> bool {
    let a = node.tls_addr.expect("tls listener");
    let mut o = MqttOptions::new("tls-nocert", "localhost", a.port());
    o.set_transport(Transport::Tls(tls));
    let (_c, mut ev) = AsyncClient::new(o, 10);
    let r = tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(RPacket::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    r.unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_and_without_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());

    // Server authentication only.
    let node = tls_node(dir.path(), false).await;
    tls_round_trip(&node, tls_client(&pki, false)).await;
    node.shutdown().await.unwrap();

    // Mutual TLS: a certificate from our CA is required.
    let data = tempfile::tempdir().unwrap();
    for f in ["server.pem", "server.key", "ca.pem"] {
        std::fs::copy(dir.path().join(f), data.path().join(f)).unwrap();
    }
    let node = tls_node(data.path(), true).await;
    tls_round_trip(&node, tls_client(&pki, true)).await;
    assert!(!tls_connects(&node, tls_client(&pki, false)).await, "no client cert, no session");
    assert!(
        metric_reaches(
            &node,
            "homeport_protocol_errors_total{reason=\"tls_handshake_failed\"}",
            1.0
        )
        .await
            >= 1.0
    );

    // A client that opens TCP and never starts the handshake is cut off at the deadline.
    let mut s = tokio::net::TcpStream::connect(node.tls_addr.unwrap()).await.unwrap();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(WAIT, s.read(&mut b)).await.expect("closed at the deadline");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert!(
        metric_reaches(
            &node,
            "homeport_protocol_errors_total{reason=\"tls_handshake_timeout\"}",
            1.0
        )
        .await
            >= 1.0
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let ws = node.ws_addr.expect("ws listener");
    let url = format!("ws://127.0.0.1:{}/mqtt", ws.port());
    let mut o = MqttOptions::new("ws-client", url, ws.port());
    o.set_transport(Transport::Ws);
    let (c, mut ev) = AsyncClient::new(o, 10);
    until(&mut ev, |e| matches!(e, Event::Incoming(RPacket::ConnAck(_))).then_some(())).await;
    c.subscribe("ws/+", QoS::ExactlyOnce).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(RPacket::SubAck(_))).then_some(())).await;
    // A TCP client publishes; the WebSocket client receives.
    let mut publ = Raw::open(&node).await;
    publ.connect("ws-pub", Protocol::V311, Properties::default()).await;
    publ.send(&publish("ws/a", HQoS::ExactlyOnce, 1, "over ws")).await;
    let p = until(&mut ev, |e| match e {
        Event::Incoming(RPacket::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&p.payload[..], b"over ws");
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert!(metric(&node, "homeport_connections{listener=\"ws\"}").await >= 1.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscriptions_on_one_client_do_not_disturb_others() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let (mut sub, mut publ) = healthy_pair(&node).await;
    let mut big = Raw::open(&node).await;
    big.connect("hoarder", Protocol::V5, Properties::default()).await;
    let filters: Vec<String> = (0..10_000).map(|i| format!("many/{i}/+")).collect();
    for (n, chunk) in filters.chunks(100).enumerate() {
        let refs: Vec<(&str, HQoS)> =
            chunk.iter().map(|f| (f.as_str(), HQoS::AtLeastOnce)).collect();
        big.send(&subscribe(n as u16 + 1, &refs, None)).await;
        match big.recv().await {
            Some(Packet::SubAck(a)) => assert!(a.reasons.iter().all(|r| !r.is_error())),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        if n % 20 == 0 {
            still_works(&mut sub, &mut publ, n as u16 + 1).await;
        }
    }
    assert!(metric(&node, "homeport_subscriptions").await >= 10_000.0);
    // One of them matches: delivered once.
    publ.send(&publish("many/9999/x", HQoS::AtLeastOnce, 900, "hit")).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let p = big.next_publish(true).await;
    assert_eq!(&*p.topic, "many/9999/x");
    still_works(&mut sub, &mut publ, 901).await;
    node.shutdown().await.unwrap();
}
