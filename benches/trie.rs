//! Subscription matching with 100,000 subscriptions (exact, `+` and `#` filters mixed).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use homeport::broker::trie::{Entry, Trie};
use homeport::mqtt::{QoS, SubOptions};

fn bench(c: &mut Criterion) {
    let mut t: Trie<u32> = Trie::new();
    let opts = SubOptions::qos(QoS::AtLeastOnce);
    for i in 0..100_000u32 {
        let f = match i % 10 {
            0 => format!("devices/d{i}/+"),
            1 => format!("fleet/{}/#", i % 1000),
            _ => format!("devices/d{i}/telemetry"),
        };
        t.insert(&f, None, Entry { key: i, opts, id: None });
    }
    let mut g = c.benchmark_group("trie_100k");
    g.throughput(Throughput::Elements(1));
    g.bench_function("match_exact_and_plus", |b| {
        b.iter(|| t.matches("devices/d50000/telemetry", |_| true))
    });
    g.bench_function("match_hash", |b| b.iter(|| t.matches("fleet/501/a/b/c", |_| true)));
    g.bench_function("match_miss", |b| b.iter(|| t.matches("nobody/here", |_| true)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
