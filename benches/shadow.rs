//! Shadow document work on the device actor's path: parsing an update, merging it into a
//! stored shadow of about 40 keys (with metadata, the delta and the replies) and the
//! stored form's round trip. No I/O: what Raft and MQTT add is measured end to end by
//! `homeport bench shadow`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use homeport::shadow::document::parse_update;
use homeport::shadow::{Limits, Shadow};

const LIMITS: Limits = Limits { max_document_bytes: 8 * 1024 };

/// A shadow with `n` desired and reported keys, a nested object among them.
fn shadow(n: usize) -> Shadow {
    let mut desired = serde_json::Map::new();
    let mut reported = serde_json::Map::new();
    for i in 0..n {
        desired.insert(format!("k{i}"), (i as u64).into());
        reported.insert(format!("k{i}"), (i as u64 + (i % 3) as u64).into());
    }
    desired.insert("config".into(), serde_json::json!({"mode": "eco", "interval": 30}));
    let body = serde_json::json!({"state": {"desired": desired, "reported": reported}});
    let req = parse_update(body.to_string().as_bytes(), LIMITS).expect("valid update");
    Shadow::empty(0).update(false, &req, 1, LIMITS, false).expect("fits").shadow
}

fn bench(c: &mut Criterion) {
    let base = shadow(20);
    let stored = base.to_stored();
    let report = br#"{"state":{"reported":{"k1":1,"k2":7,"temp":21.5}},"clientToken":"t-1"}"#;
    let desire = br#"{"state":{"desired":{"k3":9,"config":{"mode":"boost"}}},"version":1}"#;

    let mut g = c.benchmark_group("shadow");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_update", |b| b.iter(|| parse_update(report, LIMITS)));
    let req = parse_update(report, LIMITS).expect("valid");
    g.bench_function("merge_reported", |b| {
        b.iter(|| base.update(true, &req, 2, LIMITS, false).expect("applies"))
    });
    let req = parse_update(desire, LIMITS).expect("valid");
    g.bench_function("merge_desired_with_delta_and_documents", |b| {
        b.iter(|| base.update(true, &req, 2, LIMITS, true).expect("applies"))
    });
    g.bench_function("get_response", |b| b.iter(|| base.get_response(3, Some("t"))));
    g.bench_function("stored_round_trip", |b| {
        b.iter_batched(
            || stored.clone(),
            |s| Shadow::from_stored(1, &s).expect("reads back").to_stored(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
