//! Rule SQL: parsing, finding the rules of a topic among 100 (hit and miss), and
//! evaluating typical rules (a filter-and-project SELECT in both dialects, a FOREACH
//! fan-out, a rule whose WHERE is false).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use homeport::rules::index::RuleIndex;
use homeport::rules::{parser, Dialect, Input, Rule};
use std::hint::black_box;

const EMQX: &str = r#"SELECT payload.temp AS temp, payload.hum AS hum, clientid, topic
    FROM "sensors/+/data" WHERE temp > 30 AND hum < 80"#;
const AWS: &str = "SELECT temp, hum, topic(2) AS device FROM 'sensors/+/data' WHERE temp > 30";
const FOREACH: &str = r#"FOREACH payload.readings AS r DO r.name AS name, r.value * 1.8 + 32 AS f
    INCASE r.value > 0 FROM "sensors/+/data""#;
const PAYLOAD: &[u8] = br#"{"temp": 35.5, "hum": 40, "site": "plant-7", "fw": "1.4.2",
    "readings": [{"name": "a", "value": 21.5}, {"name": "b", "value": -3}, {"name": "c", "value": 7}]}"#;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| b.iter(|| parser::parse(black_box(EMQX)).unwrap()));

    let mut ix = RuleIndex::default();
    for i in 0..100 {
        ix.insert(&format!("fleet/{i}/+/data"), i);
    }
    ix.insert("sensors/#", 100);
    g.bench_function("index_100_hit", |b| {
        b.iter(|| {
            let mut n = 0;
            ix.for_each(black_box("fleet/42/dev-1/data"), &mut |_| n += 1);
            n
        })
    });
    g.bench_function("index_100_miss", |b| {
        b.iter(|| {
            let mut n = 0;
            ix.for_each(black_box("other/topic/x"), &mut |_| n += 1);
            n
        })
    });

    let input = || {
        let mut i = Input::message("sensors/dev-1/data", PAYLOAD);
        i.clientid = "dev-1";
        i
    };
    for (name, sql, dialect) in [
        ("eval_emqx_select", EMQX, Dialect::Emqx),
        ("eval_aws_select", AWS, Dialect::Aws),
        ("eval_foreach", FOREACH, Dialect::Emqx),
    ] {
        let rule = Rule::compile(sql, dialect).unwrap();
        g.bench_function(name, |b| b.iter(|| rule.eval(black_box(&input())).unwrap()));
    }
    let false_where =
        Rule::compile(r#"SELECT * FROM "sensors/#" WHERE payload.temp > 100"#, Dialect::Emqx)
            .unwrap();
    g.bench_function("eval_where_false", |b| {
        b.iter(|| false_where.eval(black_box(&input())).unwrap())
    });
    // Ten rules on one message: the payload is decoded once for all of them.
    let ten: Vec<Rule> = (0..10)
        .map(|i| {
            Rule::compile(
                &format!(r#"SELECT payload.temp AS t FROM "sensors/#" WHERE payload.hum > {i}"#),
                Dialect::Emqx,
            )
            .unwrap()
        })
        .collect();
    g.bench_function("eval_ten_rules_one_decode", |b| {
        b.iter(|| {
            let i = input();
            ten.iter().map(|r| r.eval(&i).unwrap().len()).sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
