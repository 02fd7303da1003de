//! Device identity and access through real sockets (rumqttc): anonymous refusal, device
//! secrets, JWTs signed by registered keys (expiry, wrong subject), revocation closing a
//! live connection, repeated failures slowed down, and policies (the default policy,
//! attached policies with variables, deny at delivery, recompiling on change).

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use homeport::mqtt::{Packet, Properties, Protocol, ReasonCode};
use homeport::node::Node;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Packet as P5, PubAckReason, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::{
    AsyncClient as Client5, ConnectionError, Event as E5, EventLoop as Ev5, MqttOptions as Opts5,
};
use serde_json::{json, Value};

async fn secure_node(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut homeport::config::Config),
) -> Node {
    let mut cfg = config(dir);
    cfg.auth.allow_anonymous = false;
    tune(&mut cfg);
    Node::start(cfg).await.expect("node starts")
}

async fn api(node: &Node, method: &str, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = http(node.admin_addr.unwrap(), method, path, &body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Registers a thing (with attributes) and gives it a generated secret.
async fn device(node: &Node, name: &str, attributes: Value) -> String {
    let (s, _) =
        api(node, "POST", "/api/things", json!({"thingName": name, "attributes": attributes}))
            .await;
    assert_eq!(s, 201);
    let (s, b) =
        api(node, "POST", &format!("/api/things/{name}/credentials"), json!({"type": "secret"}))
            .await;
    assert_eq!(s, 201, "{b}");
    b["secret"].as_str().expect("secret shown once").to_string()
}

fn opts(node: &Node, id: &str, password: Option<&str>) -> Opts5 {
    let mut o = Opts5::new(id, "127.0.0.1", port(node));
    o.set_keep_alive(Duration::from_secs(30));
    if let Some(p) = password {
        o.set_credentials("ignored", p);
    }
    o
}

/// Connects and returns the client, or the refusal code.
async fn connect(o: Opts5) -> Result<(Client5, Ev5), ConnectReturnCode> {
    let (c, mut ev) = Client5::new(o, 20);
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(E5::Incoming(P5::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("unexpected: {e:?}"),
            }
        }
    })
    .await
    .expect("CONNACK in time")?;
    Ok((c, ev))
}

async fn puback(ev: &mut Ev5) -> PubAckReason {
    until5(ev, |e| match e {
        Ok(E5::Incoming(P5::PubAck(a))) => Some(a.reason),
        _ => None,
    })
    .await
}

async fn suback(ev: &mut Ev5) -> Vec<SubscribeReasonCode> {
    until5(ev, |e| match e {
        Ok(E5::Incoming(P5::SubAck(a))) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await
}

/// Messages that arrive within `window`.
async fn received(ev: &mut Ev5, window: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(window, async {
        loop {
            if let Ok(E5::Incoming(P5::Publish(p))) = ev.poll().await {
                out.push(String::from_utf8_lossy(&p.topic).to_string());
            }
        }
    })
    .await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_authenticate_and_everything_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = secure_node(dir.path(), |_| {}).await;
    let secret = device(&node, "dev-1", json!({})).await;

    // Anonymous is off outside the quick-start file: 0x87 on v5, 0x05 on 3.1.1.
    assert_eq!(
        connect(opts(&node, "dev-1", None)).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(
        connect(opts(&node, "stranger", None)).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    let mut o4 = rumqttc::MqttOptions::new("stranger", "127.0.0.1", port(&node));
    o4.set_keep_alive(Duration::from_secs(30));
    let (_c4, mut ev4) = rumqttc::AsyncClient::new(o4, 10);
    let refused = tokio::time::timeout(WAIT, ev4.poll()).await.unwrap();
    assert!(matches!(
        refused,
        Err(rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized))
    ));

    // Wrong secret, or a secret for an id without credentials: 0x86.
    assert_eq!(
        connect(opts(&node, "dev-1", Some("wrong-secret-wrong-secret"))).await.err(),
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(
        connect(opts(&node, "dev-2", Some(&secret))).await.err(),
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    let (c, mut ev) = connect(opts(&node, "dev-1", Some(&secret))).await.expect("the right secret");
    c.publish("devices/dev-1/t", Q5::AtLeastOnce, false, "x").await.unwrap();
    assert_eq!(puback(&mut ev).await, PubAckReason::NoMatchingSubscribers);

    assert_eq!(metric(&node, "homeport_auth_failures_total{reason=\"bad_secret\"}").await, 1.0);
    assert_eq!(
        metric(&node, "homeport_auth_failures_total{reason=\"unknown_device\"}").await,
        1.0,
        "before revocation"
    );
    assert_eq!(metric(&node, "homeport_auth_failures_total{reason=\"anonymous\"}").await, 2.0);
    assert_eq!(
        metric(&node, "homeport_auth_failures_total{reason=\"credentials_required\"}").await,
        1.0
    );

    // The stored record holds no secret, and a listing never shows one.
    let (_, list) = api(&node, "GET", "/api/things/dev-1/credentials", json!({})).await;
    let creds = list["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 1);
    assert!(creds[0].get("secret").is_none());
    let id = creds[0]["credentialId"].as_str().unwrap().to_string();

    // Revoking the credential closes the live connections that used it (DISCONNECT
    // 0x87, read here with a raw client to see the code) and the next connect is refused.
    let mut raw = common::raw::Raw::open(&node).await;
    let mut c = common::raw::connect_packet("dev-1", Protocol::V5, true, Properties::default());
    c.password = Some(bytes::Bytes::from(secret.clone()));
    assert!(
        matches!(raw.connect_with(c).await, Packet::ConnAck(a) if a.reason == ReasonCode::Success)
    );
    let (s, _) =
        api(&node, "DELETE", &format!("/api/things/dev-1/credentials/{id}"), json!({})).await;
    assert_eq!(s, 204);
    assert_eq!(raw.closed_with().await, Some(ReasonCode::NotAuthorized));
    until5(&mut ev, |e| e.is_err().then_some(())).await;
    assert_eq!(
        connect(opts(&node, "dev-1", Some(&secret))).await.err(),
        Some(ConnectReturnCode::BadUserNamePassword),
        "the secret no longer exists"
    );
    assert_eq!(metric(&node, "homeport_auth_revoked_connections_closed_total").await, 1.0);

    // A credential with an expiry works until then, and not after.
    assert_eq!(api(&node, "POST", "/api/things", json!({"thingName": "dev-exp"})).await.0, 201);
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    let (s, b) = api(
        &node,
        "POST",
        "/api/things/dev-exp/credentials",
        json!({"type": "secret", "expiresAt": now_ms + 1500}),
    )
    .await;
    assert_eq!((s, b["expiresAt"].as_u64()), (201, Some(now_ms + 1500)), "{b}");
    let short = b["secret"].as_str().unwrap().to_string();
    assert!(connect(opts(&node, "dev-exp", Some(&short))).await.is_ok(), "before its expiry");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        connect(opts(&node, "dev-exp", Some(&short))).await.err(),
        Some(ConnectReturnCode::BadUserNamePassword),
        "after its expiry"
    );

    // Bad input to the API is a 4xx naming the field.
    let (s, b) = api(
        &node,
        "POST",
        "/api/things/dev-1/credentials",
        json!({"type": "secret", "secret": "short"}),
    )
    .await;
    assert_eq!((s, b["message"].as_str().unwrap().starts_with("secret:")), (400, true), "{b}");
    let (s, _) =
        api(&node, "POST", "/api/things/nobody/credentials", json!({"type": "secret"})).await;
    assert_eq!(s, 404);
    node.shutdown().await.unwrap();
}

fn jwt(key: &ring::signature::EcdsaKeyPair, sub: &str, iat: u64, exp: u64) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        e.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
        e.encode(json!({"sub": sub, "iat": iat, "exp": exp}).to_string())
    );
    let sig = key.sign(&ring::rand::SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", e.encode(sig.as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_passwords_verify_against_registered_keys() {
    let dir = tempfile::tempdir().unwrap();
    let node = secure_node(dir.path(), |_| {}).await;
    let (s, _) = api(&node, "POST", "/api/things", json!({"thingName": "sensor-9"})).await;
    assert_eq!(s, 201);
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (s, b) = api(
        &node,
        "POST",
        "/api/things/sensor-9/credentials",
        json!({"type": "publicKey", "publicKeyPem": kp.public_key_pem()}),
    )
    .await;
    assert_eq!((s, b["algorithm"].as_str()), (201, Some("ES256")), "{b}");
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &kp.serialize_der(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();

    let good = jwt(&signer, "sensor-9", now - 10, now + 3600);
    let (_c, _ev) = connect(opts(&node, "sensor-9", Some(&good))).await.expect("a valid token");
    let refused = |t: String| {
        let o = opts(&node, "sensor-9", Some(&t));
        async move { connect(o).await.err() }
    };
    assert_eq!(
        refused(jwt(&signer, "sensor-9", now - 7200, now - 3600)).await,
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(
        refused(jwt(&signer, "sensor-9", now + 3600, now + 7200)).await,
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(
        refused(jwt(&signer, "other", now, now + 60)).await,
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(
        refused(jwt(&signer, "sensor-9", now, now + 10 * 86_400)).await,
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forger = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &other.serialize_der(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    assert_eq!(
        refused(jwt(&forger, "sensor-9", now, now + 60)).await,
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    for (reason, n) in [
        ("token_expired", 1.0),
        ("token_not_yet_valid", 1.0),
        ("token_subject", 1.0),
        ("token_lifetime", 1.0),
        ("bad_signature", 1.0),
    ] {
        assert_eq!(
            metric(&node, &format!("homeport_auth_failures_total{{reason=\"{reason}\"}}")).await,
            n,
            "{reason}"
        );
    }
    // A key that is not P-256 or Ed25519 is refused with the field named.
    let rsa_like = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let (s, b) = api(
        &node,
        "POST",
        "/api/things/sensor-9/credentials",
        json!({"type": "publicKey", "publicKeyPem": rsa_like.public_key_pem()}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(b["message"].as_str().unwrap().starts_with("publicKey"), "{b}");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_address_are_slowed_down() {
    let dir = tempfile::tempdir().unwrap();
    let node = secure_node(dir.path(), |c| {
        c.auth.max_failures_per_address = 3;
        c.auth.failure_delay_ms = 300;
    })
    .await;
    for _ in 0..3 {
        assert!(connect(opts(&node, "x", Some("not-a-valid-secret!"))).await.is_err());
    }
    assert_eq!(metric(&node, "homeport_auth_throttled_total").await, 0.0);
    let started = std::time::Instant::now();
    assert!(connect(opts(&node, "x", Some("not-a-valid-secret!"))).await.is_err());
    assert!(started.elapsed() >= Duration::from_millis(300), "the fourth attempt waited");
    assert_eq!(metric(&node, "homeport_auth_throttled_total").await, 1.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_keeps_a_device_to_its_own_topics() {
    let dir = tempfile::tempdir().unwrap();
    let node = secure_node(dir.path(), |_| {}).await;
    let s1 = device(&node, "d1", json!({})).await;
    let s2 = device(&node, "d2", json!({})).await;
    let (c1, mut ev1) = connect(opts(&node, "d1", Some(&s1))).await.unwrap();
    let (c2, mut ev2) = connect(opts(&node, "d2", Some(&s2))).await.unwrap();

    c1.subscribe("devices/d1/#", Q5::AtLeastOnce).await.unwrap();
    assert_eq!(suback(&mut ev1).await, vec![SubscribeReasonCode::Success(Q5::AtLeastOnce)]);
    c1.subscribe("devices/d2/#", Q5::AtLeastOnce).await.unwrap();
    assert_eq!(suback(&mut ev1).await, vec![SubscribeReasonCode::NotAuthorized]);
    c1.subscribe("#", Q5::AtLeastOnce).await.unwrap();
    assert_eq!(suback(&mut ev1).await, vec![SubscribeReasonCode::NotAuthorized]);

    // d2 may not publish into d1's topics: PUBACK 0x87, nothing delivered.
    c2.publish("devices/d1/cmd", Q5::AtLeastOnce, false, "x").await.unwrap();
    assert_eq!(puback(&mut ev2).await, PubAckReason::NotAuthorized);
    c1.publish("devices/d1/echo", Q5::AtLeastOnce, false, "x").await.unwrap();
    let got = received(&mut ev1, Duration::from_millis(500)).await;
    assert_eq!(got, vec!["devices/d1/echo".to_string()]);
    assert_eq!(metric(&node, "homeport_authz_denied_total{action=\"publish\"}").await, 1.0);
    assert_eq!(metric(&node, "homeport_authz_denied_total{action=\"subscribe\"}").await, 2.0);

    // A 3.1.1 client: the denied SUBSCRIBE gets 0x80, the denied PUBLISH is acknowledged
    // and dropped.
    let mut o = rumqttc::MqttOptions::new("d2", "127.0.0.1", port(&node));
    o.set_credentials("ignored", s2.clone());
    let (c4, mut ev4) = rumqttc::AsyncClient::new(o, 10);
    until(&mut ev4, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))).then_some(())
    })
    .await;
    c4.subscribe("devices/d1/#", rumqttc::QoS::AtLeastOnce).await.unwrap();
    let codes = until(&mut ev4, |e| match e {
        rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s)) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    c4.publish("devices/d1/cmd", rumqttc::QoS::AtLeastOnce, false, "x").await.unwrap();
    until(&mut ev4, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
    })
    .await;
    assert!(received(&mut ev1, Duration::from_millis(300)).await.is_empty());
    drop((c1, c2));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_policies_with_variables_follow_changes() {
    let dir = tempfile::tempdir().unwrap();
    let node = secure_node(dir.path(), |_| {}).await;
    let secret = device(&node, "meter-1", json!({"site": "north"})).await;
    let watcher = device(&node, "watcher", json!({})).await;
    let (s, b) = api(&node, "PUT", "/api/policies/site-telemetry", json!({"document": {"statements": [
        {"effect": "allow", "actions": ["publish"], "topics": ["sites/${thing.attributes[site]}/${clientid}"]}
    ]}})).await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = api(&node, "POST", "/api/groups", json!({"groupName": "meters"})).await;
    assert_eq!(s, 201);
    assert_eq!(api(&node, "PUT", "/api/groups/meters/things/meter-1", json!({})).await.0, 200);
    let (s, b) =
        api(&node, "PUT", "/api/policies/site-telemetry/attachments/group/meters", json!({})).await;
    assert_eq!(s, 204, "{b}");
    let (s, _) = api(
        &node,
        "PUT",
        "/api/policies/site-reader",
        json!({"document": {"statements": [
            {"effect": "allow", "actions": ["subscribe", "receive"], "topics": ["sites/#"]},
            {"effect": "deny", "actions": ["receive"], "topics": ["sites/+/secret"]}
        ]}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        api(&node, "PUT", "/api/policies/site-reader/attachments/thing/watcher", json!({})).await.0,
        204
    );
    let (_, b) = api(&node, "GET", "/api/attachments/thing/watcher", json!({})).await;
    assert_eq!(b["policyNames"], json!(["site-reader"]));

    let (w, mut wev) = connect(opts(&node, "watcher", Some(&watcher))).await.unwrap();
    w.subscribe("sites/#", Q5::AtLeastOnce).await.unwrap();
    assert_eq!(suback(&mut wev).await, vec![SubscribeReasonCode::Success(Q5::AtLeastOnce)]);
    let (m, mut mev) = connect(opts(&node, "meter-1", Some(&secret))).await.unwrap();
    m.publish("sites/north/meter-1", Q5::AtLeastOnce, false, "1").await.unwrap();
    assert_eq!(puback(&mut mev).await, PubAckReason::Success);
    m.publish("sites/south/meter-1", Q5::AtLeastOnce, false, "2").await.unwrap();
    assert_eq!(puback(&mut mev).await, PubAckReason::NotAuthorized);
    assert_eq!(
        received(&mut wev, Duration::from_millis(500)).await,
        vec!["sites/north/meter-1".to_string()]
    );

    // The thing moves: the live connection's rules follow the attribute.
    let (s, _) =
        api(&node, "PATCH", "/api/things/meter-1", json!({"attributes": {"site": "south"}})).await;
    assert_eq!(s, 200);
    m.publish("sites/north/meter-1", Q5::AtLeastOnce, false, "3").await.unwrap();
    assert_eq!(puback(&mut mev).await, PubAckReason::NotAuthorized);
    m.publish("sites/south/meter-1", Q5::AtLeastOnce, false, "4").await.unwrap();
    assert_eq!(puback(&mut mev).await, PubAckReason::Success);

    // Receive is checked at delivery, for retained messages too.
    let (s, _) = api(
        &node,
        "PUT",
        "/api/policies/site-telemetry",
        json!({"document": {"statements": [
            {"effect": "allow", "actions": ["publish"], "topics": ["sites/#"]}
        ]}}),
    )
    .await;
    assert_eq!(s, 200);
    m.publish("sites/south/secret", Q5::AtLeastOnce, true, "s").await.unwrap();
    assert_eq!(puback(&mut mev).await, PubAckReason::Success);
    m.publish("sites/south/open", Q5::AtLeastOnce, true, "o").await.unwrap();
    assert_eq!(puback(&mut mev).await, PubAckReason::Success);
    let got = received(&mut wev, Duration::from_millis(500)).await;
    assert_eq!(got, vec!["sites/south/meter-1".to_string(), "sites/south/open".to_string()]);
    w.subscribe("sites/south/+", Q5::AtLeastOnce).await.unwrap();
    let retained = received(&mut wev, Duration::from_millis(500)).await;
    assert_eq!(
        retained,
        vec!["sites/south/open".to_string()],
        "the retained secret is not delivered"
    );
    assert!(metric(&node, "homeport_authz_denied_total{action=\"receive\"}").await >= 2.0);

    // Detached, the device is back to its own topics; an attached policy cannot be deleted.
    assert_eq!(api(&node, "DELETE", "/api/policies/site-reader", json!({})).await.0, 409);
    assert_eq!(
        api(&node, "DELETE", "/api/policies/site-reader/attachments/thing/watcher", json!({}))
            .await
            .0,
        204
    );
    assert_eq!(api(&node, "DELETE", "/api/policies/site-reader", json!({})).await.0, 204);
    m.publish("sites/south/open", Q5::AtLeastOnce, false, "again").await.unwrap();
    assert_eq!(puback(&mut mev).await, PubAckReason::Success);
    // Its subscription stays, but what it may receive is checked at delivery.
    assert!(received(&mut wev, Duration::from_millis(500)).await.is_empty());
    // A bad document names the statement and field.
    let (s, b) = api(
        &node,
        "PUT",
        "/api/policies/bad",
        json!({"document": {"statements": [
        {"effect": "allow", "actions": ["fly"], "topics": ["a"]}]}}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(b["message"].as_str().unwrap().contains("statements[0].actions"), "{b}");
    drop(w);
    node.shutdown().await.unwrap();
}
