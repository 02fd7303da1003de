//! MQTT 3.1.1 behaviour through real sockets with rumqttc, an independent client.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};

fn opts(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

async fn connected(id: &str, port: u16, clean: bool) -> (AsyncClient, rumqttc::EventLoop, bool) {
    let mut o = opts(id, port);
    o.set_clean_session(clean);
    let (c, mut ev) = AsyncClient::new(o, 100);
    let present = until(&mut ev, |e| match e {
        Event::Incoming(Packet::ConnAck(a)) => Some(a.session_present),
        _ => None,
    })
    .await;
    (c, ev, present)
}

async fn suback(ev: &mut rumqttc::EventLoop) -> Vec<rumqttc::SubscribeReasonCode> {
    until(ev, |e| match e {
        Event::Incoming(Packet::SubAck(s)) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await
}

async fn next_publish(ev: &mut rumqttc::EventLoop) -> rumqttc::Publish {
    until(ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_round_trip_and_wildcards() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let port = port(&node);
    let (sub, mut sev, _) = connected("sub", port, true).await;
    sub.subscribe("t/+/x", QoS::ExactlyOnce).await.unwrap();
    assert_eq!(
        suback(&mut sev).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let (publ, mut pev, _) = connected("pub", port, true).await;
    for (i, q) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        publ.publish(format!("t/{i}/x"), q, false, format!("m{i}")).await.unwrap();
        // Drive the publisher until its flow completes.
        if q != QoS::AtMostOnce {
            until(&mut pev, |e| match e {
                Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => Some(()),
                _ => None,
            })
            .await;
        } else {
            until(&mut pev, |e| {
                matches!(e, Event::Outgoing(rumqttc::Outgoing::Publish(_))).then_some(())
            })
            .await;
        }
        let p = next_publish(&mut sev).await;
        assert_eq!(p.topic, format!("t/{i}/x"));
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
        assert_eq!(p.qos, q);
    }
    // A non-matching topic is not delivered: the next message is the matching one.
    publ.publish("t/a/y", QoS::AtLeastOnce, false, "no").await.unwrap();
    publ.publish("t/a/x", QoS::AtLeastOnce, false, "yes").await.unwrap();
    tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    assert_eq!(&next_publish(&mut sev).await.payload[..], b"yes");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_replace_clear() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let port = port(&node);
    let (publ, mut pev, _) = connected("pub", port, true).await;
    publ.publish("r/a", QoS::AtLeastOnce, true, "one").await.unwrap();
    publ.publish("r/a", QoS::AtLeastOnce, true, "two").await.unwrap();
    publ.publish("r/b", QoS::AtLeastOnce, true, "bee").await.unwrap();
    let mut acks = 0;
    until(&mut pev, |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            acks += 1;
        }
        (acks == 3).then_some(())
    })
    .await;
    let (sub, mut sev, _) = connected("sub", port, true).await;
    sub.subscribe("r/a", QoS::AtLeastOnce).await.unwrap();
    let p = next_publish(&mut sev).await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"two");
    // Clear with an empty payload; a new subscriber gets nothing for r/a but gets r/b.
    publ.publish("r/a", QoS::AtLeastOnce, true, "").await.unwrap();
    until(&mut pev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
    let (sub2, mut sev2, _) = connected("sub2", port, true).await;
    sub2.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let p = next_publish(&mut sev2).await;
    assert_eq!(p.topic, "r/b");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_survives_restart_with_queued_messages() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let port = port(&node);
    {
        let (sub, mut sev, present) = connected("keeper", port, false).await;
        assert!(!present);
        sub.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
        suback(&mut sev).await;
        sub.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while sev.poll().await.is_ok() {}
        })
        .await;
    }
    let (publ, mut pev, _) = connected("pub", port, true).await;
    for i in 0..5 {
        publ.publish(format!("q/{i}"), QoS::AtLeastOnce, false, format!("m{i}")).await.unwrap();
    }
    let mut acks = 0;
    until(&mut pev, |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            acks += 1;
        }
        (acks == 5).then_some(())
    })
    .await;
    drop(publ);
    drop(pev);
    node.shutdown().await.unwrap();

    // Restart on the same data directory (new ports).
    let node = start(dir.path()).await;
    let (_sub, mut sev, present) = connected("keeper", common::port(&node), false).await;
    assert!(present, "session present after restart");
    for i in 0..5 {
        let p = next_publish(&mut sev).await;
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes(), "queued in order");
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_sent_on_abnormal_close_but_not_after_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let port = port(&node);
    let (sub, mut sev, _) = connected("watcher", port, true).await;
    sub.subscribe("wills/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sev).await;

    // Normal DISCONNECT: no will.
    let mut o = opts("polite", port);
    o.set_last_will(LastWill::new("wills/polite", "gone", QoS::AtLeastOnce, false));
    let (c, mut ev) = AsyncClient::new(o, 10);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    c.disconnect().await.unwrap();
    let _ =
        tokio::time::timeout(Duration::from_secs(2), async { while ev.poll().await.is_ok() {} })
            .await;

    // Abrupt close: will goes out.
    let mut o = opts("rude", port);
    o.set_last_will(LastWill::new("wills/rude", "gone", QoS::AtLeastOnce, false));
    let (c, mut ev) = AsyncClient::new(o, 10);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    drop(c);
    drop(ev); // closes the socket without DISCONNECT
    let p = next_publish(&mut sev).await;
    assert_eq!(p.topic, "wills/rude", "only the abrupt client's will arrives");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_actor_panic_restarts_without_losing_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let port = port(&node);
    let (sub, mut sev, _) = connected("fragile", port, false).await;
    sub.subscribe("f/1", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sev).await;
    assert!(node.devices.inject_panic("fragile"));
    // The supervisor restarts the actor from stored state; the connection stays attached.
    tokio::time::timeout(WAIT, async {
        while node.metrics.actor_restarts.get() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("restart counted");
    // Subscribing again goes through the new actor; delivery still works on both filters.
    sub.subscribe("f/2", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sev).await;
    let (publ, mut pev, _) = connected("pub", port, true).await;
    publ.publish("f/1", QoS::AtLeastOnce, false, "a").await.unwrap();
    publ.publish("f/2", QoS::AtLeastOnce, false, "b").await.unwrap();
    tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    assert_eq!(&next_publish(&mut sev).await.payload[..], b"a");
    assert_eq!(&next_publish(&mut sev).await.payload[..], b"b");
    assert_eq!(metric(&node, "homeport_device_actor_restarts_total").await, 1.0);
    node.shutdown().await.unwrap();
}
