//! Fleet provisioning by claim through real sockets (rumqttc v5 over mutual TLS): a
//! claim certificate limited to the provisioning topics, `$aws/certificates/create/json`
//! and `create-from-csr/json` answered to the requester alone, a template that names the
//! thing and attaches its policy, wrong tokens and missing parameters rejected, and the
//! issued certificate then connecting as the new thing.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use homeport::config::TlsListenerConfig;
use homeport::node::Node;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::{json, Value};

/// A node whose TLS listener and fleet provisioning both use `ca`.
async fn node(dir: &Path, ca: &CertifiedIssuer<'static, KeyPair>) -> Node {
    let key = KeyPair::generate().unwrap();
    let server =
        CertificateParams::new(vec!["localhost".into()]).unwrap().signed_by(&key, ca).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), ca.key().serialize_pem()).unwrap();
    let mut cfg = config(dir);
    cfg.auth.allow_anonymous = false;
    cfg.provisioning.ca_cert = Some(dir.join("ca.pem"));
    cfg.provisioning.ca_key = Some(dir.join("ca.key"));
    cfg.listeners.tls = Some(TlsListenerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: None,
        require_client_cert: false,
        handshake_timeout_secs: 2,
    });
    Node::start(cfg).await.expect("node starts")
}

fn tls(ca_pem: &str, cert: &str, key: &str) -> TlsConfiguration {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = rustls_pemfile::private_key(&mut key.as_bytes()).unwrap().unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    TlsConfiguration::Rustls(Arc::new(cfg))
}

async fn connect(node: &Node, id: &str, t: TlsConfiguration) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "localhost", node.tls_addr.unwrap().port());
    o.set_transport(Transport::Tls(t));
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 20);
    until5(&mut ev, |e| match e {
        Ok(Event::Incoming(P5::ConnAck(_))) => Some(()),
        Err(ConnectionError::ConnectionRefused(code)) => panic!("{id} refused: {code:?}"),
        _ => None,
    })
    .await;
    (c, ev)
}

async fn api(node: &Node, method: &str, path: &str, body: Value) -> (u16, Value) {
    let (s, text) = http(node.admin_addr.unwrap(), method, path, &body.to_string()).await;
    (s, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The next PUBLISH: (topic, JSON payload).
async fn answer(ev: &mut EventLoop) -> (String, Value) {
    until5(ev, |e| match e {
        Ok(Event::Incoming(P5::Publish(p))) => Some((
            String::from_utf8_lossy(&p.topic).to_string(),
            serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
        )),
        _ => None,
    })
    .await
}

async fn suback(ev: &mut EventLoop) -> Vec<SubscribeReasonCode> {
    until5(ev, |e| match e {
        Ok(Event::Incoming(P5::SubAck(a))) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_provision_themselves_with_a_claim_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "fleet issuing CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let node = node(dir.path(), &ca).await;

    // The operator: a policy for provisioned devices, a template, a claim certificate.
    let doc = json!({"statements": [{"effect": "allow", "actions": ["publish"], "topics": ["sensors/${thing.name}/#"]}]});
    assert_eq!(api(&node, "PUT", "/api/policies/sensor", json!({"document": doc})).await.0, 200);
    let template = json!({"thingName": "sensor-${SerialNumber}", "attributes": {"serial": "${SerialNumber}"},
        "policies": ["sensor"], "deviceConfiguration": {"telemetry": "sensors/sensor-${SerialNumber}/t"}});
    let (s, b) = api(&node, "PUT", "/api/provisioning-templates/fleet", template).await;
    assert_eq!(s, 200, "{b}");
    let claim_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name.push(DnType::CommonName, "claim");
    let claim = cp.signed_by(&claim_key, &ca).unwrap();
    let (s, b) = api(
        &node,
        "POST",
        "/api/certificates",
        json!({"certificatePem": claim.pem(), "claim": true}),
    )
    .await;
    assert_eq!((s, b["claim"].as_bool()), (201, Some(true)), "{b}");
    let claim_tls = || tls(&ca.pem(), &claim.pem(), &claim_key.serialize_pem());

    // A device with the claim certificate may use the provisioning topics only.
    let (c, mut ev) = connect(&node, "serial-42", claim_tls()).await;
    for t in
        ["$aws/certificates/create/json/+", "$aws/provisioning-templates/fleet/provision/json/+"]
    {
        c.subscribe(t, QoS::AtLeastOnce).await.unwrap();
        assert_eq!(suback(&mut ev).await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    }
    c.subscribe("devices/serial-42/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(suback(&mut ev).await, vec![SubscribeReasonCode::NotAuthorized]);
    // Another claimant listening on the answer topic gets nothing of ours.
    let (o, mut oev) = connect(&node, "serial-43", claim_tls()).await;
    o.subscribe("$aws/certificates/create/json/+", QoS::AtLeastOnce).await.unwrap();
    suback(&mut oev).await;

    c.publish("$aws/certificates/create/json", QoS::AtLeastOnce, false, "{}").await.unwrap();
    let (topic, created) = answer(&mut ev).await;
    assert_eq!(topic, "$aws/certificates/create/json/accepted", "{created}");
    for f in ["certificateId", "certificatePem", "privateKey", "certificateOwnershipToken"] {
        assert!(created[f].is_string(), "{f} in {created}");
    }
    let token = created["certificateOwnershipToken"].as_str().unwrap().to_string();

    // Wrong token, missing parameter, unknown template: rejected with AWS's fields.
    let provision = |tpl: &str, body: Value| {
        let c = c.clone();
        let topic = format!("$aws/provisioning-templates/{tpl}/provision/json");
        async move { c.publish(topic, QoS::AtLeastOnce, false, body.to_string()).await.unwrap() }
    };
    provision("fleet", json!({"certificateOwnershipToken": format!("{token}x"), "parameters": {"SerialNumber": "42"}})).await;
    let (t, r) = answer(&mut ev).await;
    assert!(t.ends_with("/rejected"), "{t}");
    assert_eq!(
        (r["statusCode"].as_u64(), r["errorCode"].as_str()),
        (Some(400), Some("InvalidCertificateOwnershipToken"))
    );
    provision("fleet", json!({"certificateOwnershipToken": token, "parameters": {}})).await;
    assert_eq!(answer(&mut ev).await.1["errorCode"], "InvalidParameters");
    provision(
        "fleet",
        json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "42"}}),
    )
    .await;
    let (t, done) = answer(&mut ev).await;
    assert_eq!(t, "$aws/provisioning-templates/fleet/provision/json/accepted", "{done}");
    assert_eq!(done["thingName"], "sensor-42");
    assert_eq!(done["deviceConfiguration"]["telemetry"], "sensors/sensor-42/t");
    // The token is spent.
    provision(
        "fleet",
        json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "42"}}),
    )
    .await;
    assert_eq!(answer(&mut ev).await.1["errorCode"], "InvalidCertificateOwnershipToken");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), answer(&mut oev)).await.is_err(),
        "answers go to the requester alone"
    );

    // The new certificate is the device's identity now.
    let cert = created["certificatePem"].as_str().unwrap();
    let key = created["privateKey"].as_str().unwrap();
    let (d, mut dev) = connect(&node, "sensor-42", tls(&ca.pem(), cert, key)).await;
    d.publish("sensors/sensor-42/t", QoS::AtLeastOnce, false, "21.5").await.unwrap();
    let ack = until5(&mut dev, |e| match e {
        Ok(Event::Incoming(P5::PubAck(a))) => Some(a.reason),
        _ => None,
    })
    .await;
    assert_eq!(ack, PubAckReason::NoMatchingSubscribers);
    let (_, thing) = api(&node, "GET", "/api/things/sensor-42", json!({})).await;
    assert_eq!(thing["attributes"]["serial"], "42");

    // From a CSR: the device keeps its key.
    let own = KeyPair::generate().unwrap();
    let csr =
        CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&own).unwrap();
    c.publish(
        "$aws/certificates/create-from-csr/json",
        QoS::AtLeastOnce,
        false,
        json!({"certificateSigningRequest": csr.pem().unwrap()}).to_string(),
    )
    .await
    .unwrap();
    c.subscribe("$aws/certificates/create-from-csr/json/+", QoS::AtLeastOnce).await.unwrap();
    let (t, signed) = answer(&mut ev).await;
    assert_eq!(t, "$aws/certificates/create-from-csr/json/accepted", "{signed}");
    assert!(signed.get("privateKey").is_none());
    let token = signed["certificateOwnershipToken"].as_str().unwrap();
    provision(
        "fleet",
        json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "7"}}),
    )
    .await;
    assert_eq!(answer(&mut ev).await.1["thingName"], "sensor-7");
    let (_d7, _ev7) = connect(
        &node,
        "sensor-7",
        tls(&ca.pem(), signed["certificatePem"].as_str().unwrap(), &own.serialize_pem()),
    )
    .await;
    c.publish(
        "$aws/certificates/create-from-csr/json",
        QoS::AtLeastOnce,
        false,
        "{\"certificateSigningRequest\":\"junk\"}",
    )
    .await
    .unwrap();
    assert_eq!(answer(&mut ev).await.1["errorCode"], "InvalidCsr");
    assert_eq!(
        metric(
            &node,
            "homeport_fleet_provisioning_requests_total{op=\"provision\",result=\"accepted\"}"
        )
        .await,
        2.0
    );
    drop(o);
    node.shutdown().await.unwrap();
}
