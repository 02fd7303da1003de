//! `$SYS/broker/...` topics, published retained at a fixed interval like mosquitto.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::broker::{Message, Router};
use crate::mqtt::{Properties, QoS};
use crate::telemetry::Metrics;

pub fn spawn(
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    every: Duration,
    started: Instant,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let connected: i64 = ["tcp", "tls", "ws"]
                .iter()
                .map(|l| metrics.connections.with_label_values(&[l]).get())
                .sum();
            let values: [(&str, String); 10] = [
                ("$SYS/broker/version", format!("homeport {}", env!("CARGO_PKG_VERSION"))),
                ("$SYS/broker/uptime", format!("{} seconds", started.elapsed().as_secs())),
                ("$SYS/broker/clients/connected", connected.to_string()),
                ("$SYS/broker/clients/total", metrics.sessions.get().to_string()),
                ("$SYS/broker/messages/received", metrics.messages_in.get().to_string()),
                ("$SYS/broker/messages/sent", metrics.messages_out.get().to_string()),
                ("$SYS/broker/bytes/received", metrics.bytes_in.get().to_string()),
                ("$SYS/broker/bytes/sent", metrics.bytes_out.get().to_string()),
                ("$SYS/broker/subscriptions/count", router.subscription_count().to_string()),
                ("$SYS/broker/retained messages/count", router.retained_count().to_string()),
            ];
            for (topic, value) in values {
                let msg = Message {
                    topic: topic.into(),
                    payload: Bytes::from(value),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    props: Properties::default(),
                    expires_at_ms: None,
                    origin: None,
                    publisher: None,
                };
                if let Err(e) = router.publish(Arc::new(msg)) {
                    tracing::warn!(message = "$SYS publish failed", error = %e);
                }
            }
        }
    });
}
