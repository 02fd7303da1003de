//! PUBLISH decode/encode throughput (64-byte and 1 KiB payloads, v3.1.1 and v5).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use homeport::mqtt::{self, Packet, Properties, Protocol, Publish, QoS};

fn publish(size: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "devices/sensor-0042/telemetry".into(),
        pkid: 42,
        properties: Properties::default(),
        payload: Bytes::from(vec![7u8; size]),
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    for v in [Protocol::V311, Protocol::V5] {
        for size in [64usize, 1024] {
            let p = publish(size);
            let mut wire = BytesMut::new();
            mqtt::encode(&p, v, &mut wire);
            let wire = wire.freeze();
            g.throughput(Throughput::Elements(1));
            g.bench_with_input(
                BenchmarkId::new(format!("decode_{}", v.label()), size),
                &wire,
                |b, w| {
                    b.iter(|| {
                        let mut buf = BytesMut::from(&w[..]);
                        mqtt::decode(&mut buf, v, 1 << 20, 64).unwrap().unwrap()
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new(format!("encode_{}", v.label()), size),
                &p,
                |b, p| {
                    let mut out = BytesMut::with_capacity(4096);
                    b.iter(|| {
                        out.clear();
                        mqtt::encode(p, v, &mut out);
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
