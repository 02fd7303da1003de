//! Device identity from client certificates over mutual TLS (rumqttc v5 over rustls,
//! certificates made by rcgen): CA and device certificate registration through the admin
//! API, identity from the common name, policies attached to a certificate, revocation and
//! CA deactivation closing live connections and refusing new ones.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use homeport::config::TlsListenerConfig;
use homeport::node::Node;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet as P5, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::{json, Value};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A device certificate with this common name: (certificate PEM, key PEM).
    fn device(&self, cn: &str) -> (String, String) {
        self.device_in(cn, None)
    }

    /// The same, with an organizational unit.
    fn device_in(&self, cn: &str, ou: Option<&str>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(ou) = ou {
            p.distinguished_name.push(DnType::OrganizationalUnitName, ou);
        }
        let c = p.signed_by(&key, &self.issuer).unwrap();
        (c.pem(), key.serialize_pem())
    }
}

/// A node with a TLS listener whose server certificate `server_ca` signed; no
/// `client_ca` file: client certificates are trusted through registered CAs only.
async fn node(dir: &Path, server_ca: &Ca) -> Node {
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &server_ca.issuer)
        .unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let mut cfg = config(dir);
    cfg.auth.allow_anonymous = false;
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

fn tls(server_ca: &Ca, client: Option<&(String, String)>) -> TlsConfiguration {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut server_ca.pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => {
            let certs: Vec<_> =
                rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<_, _>>().unwrap();
            let key = rustls_pemfile::private_key(&mut key.as_bytes()).unwrap().unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    TlsConfiguration::Rustls(Arc::new(cfg))
}

/// Connects over TLS: the client, or the CONNACK refusal (`None`: no CONNACK at all,
/// the TLS handshake failed).
async fn connect(
    node: &Node,
    id: &str,
    t: TlsConfiguration,
) -> Result<(AsyncClient, EventLoop), Option<ConnectReturnCode>> {
    let mut o = MqttOptions::new(id, "localhost", node.tls_addr.unwrap().port());
    o.set_transport(Transport::Tls(t));
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 10);
    let r = tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(P5::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(Some(code)),
                Err(_) => return Err(None),
            }
        }
    })
    .await
    .expect("an answer in time");
    r.map(|()| (c, ev))
}

async fn api(node: &Node, method: &str, path: &str, body: Value) -> (u16, Value) {
    let (s, text) = http(node.admin_addr.unwrap(), method, path, &body.to_string()).await;
    (s, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn puback(ev: &mut EventLoop) -> PubAckReason {
    until5(ev, |e| match e {
        Ok(Event::Incoming(P5::PubAck(a))) => Some(a.reason),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_certificates_authenticate_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Ca::new("fleet CA");
    let stranger = Ca::new("someone else");
    let node = node(dir.path(), &fleet).await;

    // Before its CA is registered, a certificate gets no session.
    let cam1 = fleet.device("cam-1");
    assert!(connect(&node, "cam-1", tls(&fleet, Some(&cam1))).await.is_err());

    let (s, ca) = api(&node, "POST", "/api/cas", json!({"caCertificatePem": fleet.pem()})).await;
    assert_eq!((s, ca["status"].as_str()), (201, Some("ACTIVE")), "{ca}");
    let ca_id = ca["certificateId"].as_str().unwrap().to_string();
    let (s, b) = api(&node, "POST", "/api/cas", json!({"caCertificatePem": cam1.0})).await;
    assert_eq!(s, 400, "a device certificate is not a CA: {b}");
    let (s, b) =
        api(&node, "POST", "/api/certificates", json!({"certificatePem": stranger.device("x").0}))
            .await;
    assert_eq!(s, 400, "its issuer is not registered: {b}");

    let (s, cert) =
        api(&node, "POST", "/api/certificates", json!({"certificatePem": cam1.0})).await;
    assert_eq!(s, 201, "{cert}");
    let cert_id = cert["certificateId"].as_str().unwrap().to_string();
    assert_eq!(cert["caCertificateId"].as_str(), Some(ca_id.as_str()));

    // The identity is the common name: the client id must be it.
    let (c, mut ev) = connect(&node, "cam-1", tls(&fleet, Some(&cam1))).await.expect("registered");
    assert_eq!(
        connect(&node, "cam-2", tls(&fleet, Some(&cam1))).await.err(),
        Some(Some(ConnectReturnCode::NotAuthorized))
    );
    // Issued by the registered CA but not registered itself: refused.
    let cam3 = fleet.device("cam-3");
    assert_eq!(
        connect(&node, "cam-3", tls(&fleet, Some(&cam3))).await.err(),
        Some(Some(ConnectReturnCode::NotAuthorized))
    );
    // Another CA's certificate fails the TLS handshake; no certificate and no password is
    // anonymous, which is off.
    assert_eq!(
        connect(&node, "x", tls(&fleet, Some(&stranger.device("x")))).await.err(),
        Some(None)
    );
    assert_eq!(
        connect(&node, "x", tls(&fleet, None)).await.err(),
        Some(Some(ConnectReturnCode::NotAuthorized))
    );

    // Policies attach to the certificate; subject fields are variables.
    c.publish("devices/cam-1/frame", QoS::AtLeastOnce, false, "f").await.unwrap();
    assert_eq!(puback(&mut ev).await, PubAckReason::NoMatchingSubscribers);
    c.publish("cams/cam-1/frame", QoS::AtLeastOnce, false, "f").await.unwrap();
    assert_eq!(puback(&mut ev).await, PubAckReason::NotAuthorized);
    let doc = json!({"statements": [{"effect": "allow", "actions": ["publish"], "topics": ["cams/${cert.subject.cn}/#"]}]});
    assert_eq!(api(&node, "PUT", "/api/policies/cams", json!({"document": doc})).await.0, 200);
    let path = format!("/api/policies/cams/attachments/certificate/{cert_id}");
    assert_eq!(api(&node, "PUT", &path, json!({})).await.0, 204);
    c.publish("cams/cam-1/frame", QoS::AtLeastOnce, false, "f").await.unwrap();
    assert_eq!(puback(&mut ev).await, PubAckReason::NoMatchingSubscribers);

    // Revoked: the live connection is closed, the next connect refused, and it stays
    // revoked.
    let (s, b) =
        api(&node, "PATCH", &format!("/api/certificates/{cert_id}"), json!({"status": "REVOKED"}))
            .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("REVOKED")));
    until5(&mut ev, |e| e.is_err().then_some(())).await;
    assert_eq!(
        connect(&node, "cam-1", tls(&fleet, Some(&cam1))).await.err(),
        Some(Some(ConnectReturnCode::NotAuthorized))
    );
    let (s, _) =
        api(&node, "PATCH", &format!("/api/certificates/{cert_id}"), json!({"status": "ACTIVE"}))
            .await;
    assert_eq!(s, 409);
    assert_eq!(
        metric(&node, "homeport_auth_failures_total{reason=\"certificate_revoked\"}").await,
        1.0
    );
    assert_eq!(
        metric(&node, "homeport_auth_failures_total{reason=\"certificate_unregistered\"}").await,
        1.0
    );
    assert_eq!(
        metric(&node, "homeport_auth_failures_total{reason=\"client_id_mismatch\"}").await,
        1.0
    );
    assert_eq!(metric(&node, "homeport_auth_revoked_connections_closed_total").await, 1.0);

    // Deactivating the CA closes its devices' connections and stops new handshakes.
    let cam4 = fleet.device("cam-4");
    assert_eq!(
        api(&node, "POST", "/api/certificates", json!({"certificatePem": cam4.0})).await.0,
        201
    );
    let (_c4, mut ev4) = connect(&node, "cam-4", tls(&fleet, Some(&cam4))).await.expect("cam-4");
    let (s, _) =
        api(&node, "PATCH", &format!("/api/cas/{ca_id}"), json!({"status": "INACTIVE"})).await;
    assert_eq!(s, 200);
    until5(&mut ev4, |e| e.is_err().then_some(())).await;
    assert_eq!(connect(&node, "cam-4", tls(&fleet, Some(&cam4))).await.err(), Some(None));
    let (s, b) =
        api(&node, "PATCH", &format!("/api/cas/{ca_id}"), json!({"status": "sideways"})).await;
    assert_eq!(s, 400, "{b}");
    drop(c);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_with_auto_registration_provisions_devices_at_first_connect() {
    let dir = tempfile::tempdir().unwrap();
    let factory = Ca::new("factory CA");
    let node = node(dir.path(), &factory).await;
    let doc = json!({"statements": [{"effect": "allow", "actions": ["publish"],
        "topics": ["sites/${thing.attributes[site]}/#"]}]});
    assert_eq!(api(&node, "PUT", "/api/policies/site-pub", json!({"document": doc})).await.0, 200);
    assert_eq!(api(&node, "POST", "/api/groups", json!({"groupName": "cameras"})).await.0, 201);
    let template = json!({"attributes": {"site": "${cert.subject.ou}"},
        "thingGroups": ["cameras"], "policies": ["site-pub"]});
    let (s, b) = api(
        &node,
        "POST",
        "/api/cas",
        json!({"caCertificatePem": factory.pem(),
        "autoRegister": true, "provisioningTemplate": template}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = api(
        &node,
        "POST",
        "/api/cas",
        json!({"caCertificatePem": Ca::new("x").pem(),
        "autoRegister": true, "provisioningTemplate": {"thingName": "${thing.name}"}}),
    )
    .await;
    assert_eq!(s, 400, "an unknown template parameter is refused: {b}");

    // Its first connect registers the certificate, creates the thing from the template
    // and attaches the policy.
    let cam = factory.device_in("cam-9", Some("north"));
    let (c, mut ev) =
        connect(&node, "cam-9", tls(&factory, Some(&cam))).await.expect("provisioned");
    let (s, thing) = api(&node, "GET", "/api/things/cam-9", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(thing["attributes"]["site"], "north");
    assert_eq!(thing["groups"], json!(["cameras"]));
    let (_, attached) = api(&node, "GET", "/api/attachments/thing/cam-9", json!({})).await;
    assert_eq!(attached["policyNames"], json!(["site-pub"]));
    let (_, certs) = api(&node, "GET", "/api/certificates", json!({})).await;
    let certs = certs["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(
        (certs[0]["thingName"].as_str(), certs[0]["status"].as_str()),
        (Some("cam-9"), Some("ACTIVE"))
    );
    c.publish("sites/north/cam-9", QoS::AtLeastOnce, false, "f").await.unwrap();
    assert_eq!(puback(&mut ev).await, PubAckReason::NoMatchingSubscribers);
    c.publish("sites/south/cam-9", QoS::AtLeastOnce, false, "f").await.unwrap();
    assert_eq!(puback(&mut ev).await, PubAckReason::NotAuthorized);
    assert_eq!(metric(&node, "homeport_auth_jit_provisioned_total").await, 1.0);

    // The second connect finds it registered; once revoked, it is not provisioned again.
    drop(c);
    let (_c2, _ev2) = connect(&node, "cam-9", tls(&factory, Some(&cam))).await.expect("again");
    assert_eq!(metric(&node, "homeport_auth_jit_provisioned_total").await, 1.0);
    let id = certs[0]["certificateId"].as_str().unwrap();
    assert_eq!(
        api(&node, "PATCH", &format!("/api/certificates/{id}"), json!({"status": "REVOKED"}))
            .await
            .0,
        200
    );
    assert_eq!(
        connect(&node, "cam-9", tls(&factory, Some(&cam))).await.err(),
        Some(Some(ConnectReturnCode::NotAuthorized))
    );
    node.shutdown().await.unwrap();
}
