//! The CPU cost of authenticating a CONNECT and of a policy decision: a device secret
//! at the default iteration count (and at 1 and 1000 for comparison), JWTs signed with
//! ES256 and Ed25519, compiling a device's policies, and an uncached decision.

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use homeport::auth::jwt::{self, DeviceKey, KeyAlg};
use homeport::auth::policy::{Action, Policy, Rules, Subject};
use homeport::auth::secret;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

fn token(alg: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        e.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
        e.encode(r#"{"sub":"dev-1","iat":1000,"exp":4600}"#)
    );
    format!("{input}.{}", e.encode(sign(input.as_bytes())))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("connect_auth");
    g.throughput(Throughput::Elements(1));
    let s = secret::generate().unwrap();
    for iterations in [1, 64, 1000] {
        let h = secret::hash(&s, iterations).unwrap();
        g.bench_function(format!("secret_pbkdf2_{iterations}"), |b| {
            b.iter(|| secret::verify(&h, s.as_bytes()))
        });
    }
    let rng = SystemRandom::new();
    let rules = jwt::Rules { now_secs: 2000, skew_secs: 60, max_lifetime_secs: 86_400 };
    let p = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, p.as_ref(), &rng).unwrap();
    let key = DeviceKey { alg: KeyAlg::Es256, raw: ec.public_key().as_ref().to_vec() };
    let t = token("ES256", |m| ec.sign(&rng, m).unwrap().as_ref().to_vec());
    g.bench_function("jwt_es256", |b| {
        b.iter(|| jwt::verify(t.as_bytes(), std::slice::from_ref(&key), "dev-1", rules))
    });
    let p = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(p.as_ref()).unwrap();
    let key = DeviceKey { alg: KeyAlg::Ed25519, raw: ed.public_key().as_ref().to_vec() };
    let t = token("EdDSA", |m| ed.sign(m).as_ref().to_vec());
    g.bench_function("jwt_ed25519", |b| {
        b.iter(|| jwt::verify(t.as_bytes(), std::slice::from_ref(&key), "dev-1", rules))
    });
    g.finish();

    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(1));
    let extra = Policy::parse(
        r#"{"statements":[
            {"effect":"allow","actions":["publish","subscribe","receive"],"topics":["sites/${thing.attributes[site]}/#","fleet/+/status"]},
            {"effect":"deny","actions":["publish"],"topics":["sites/+/admin/#"]}]}"#,
    )
    .unwrap();
    let subject = Subject {
        client_id: "dev-1".into(),
        thing: Some(("dev-1".into(), [("site".to_string(), "north".to_string())].into())),
        cert: Default::default(),
    };
    let default = Policy::device_default();
    g.bench_function("compile_two_policies", |b| {
        b.iter(|| Rules::compile([&default, &extra], &subject))
    });
    let r = Rules::compile([&default, &extra], &subject);
    g.bench_function("decide_publish_uncached", |b| {
        b.iter(|| r.allows(Action::Publish, "sites/north/dev-1/telemetry"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
