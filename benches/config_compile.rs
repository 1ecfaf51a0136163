//! Config compile time: the example sidecar config, and a generated one with
//! 1,000 routes (reload latency grows with it).

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};

fn generated(routes: usize) -> String {
    let mut s = String::from(
        "[listeners.public]\naddress = \"127.0.0.1:8080\"\nprotocol = \"http\"\nroutes = \"t\"\n\n",
    );
    for i in 0..routes {
        s.push_str(&format!(
            "[[routes.t]]\nmatch.host = \"svc{i}.example.com\"\nmatch.path_prefix = \"/api/{i}/\"\ncluster = \"c{}\"\n\n",
            i % 10
        ));
    }
    for c in 0..10 {
        s.push_str(&format!(
            "[clusters.c{c}]\nendpoints = [\"127.0.0.1:{}\"]\n\n",
            9000 + c
        ));
    }
    s
}

fn bench(c: &mut Criterion) {
    let sidecar = include_str!("../configs/sidecar.toml");
    c.bench_function("compile sidecar.toml", |b| {
        b.iter(|| outrigger::config::compile(Path::new("sidecar.toml"), sidecar))
    });
    let big = generated(1000);
    c.bench_function("compile 1000 routes", |b| {
        b.iter(|| outrigger::config::compile(Path::new("big.toml"), &big))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
