//! Discovery at scale: compiling a cluster of 100,000 endpoints (weighted
//! round-robin, ring_hash, maglev), and a discovery update of that size
//! (new endpoints, carry-over of the old ones' state). docs/benchmarks.md
//! has the figures.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};

/// A config with one cluster of `n` endpoints (weights 1..3) balanced by
/// `balance`.
fn config(n: usize, balance: &str) -> String {
    let mut s = String::from(
        "[runtime]\nworkers = 2\n[listeners.l]\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"big\"\n[clusters.big]\n",
    );
    s.push_str(&format!("balance = \"{balance}\"\nendpoints = [\n"));
    for i in 0..n {
        s.push_str(&format!(
            "{{ address = \"10.{}.{}.{}:80\", weight = {} }},\n",
            i / 65536,
            (i / 256) % 256,
            i % 256,
            1 + i % 3
        ));
    }
    s.push_str("]\n");
    s
}

fn found(n: usize, offset: usize) -> Vec<outrigger::discovery::Found> {
    (0..n)
        .map(|i| {
            let j = i + offset;
            let a: std::net::SocketAddr =
                format!("10.{}.{}.{}:80", j / 65536, (j / 256) % 256, j % 256)
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}"));
            outrigger::discovery::Found::new(a, a.to_string(), 1 + (j % 3) as u32)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("100k endpoints");
    g.sample_size(10);
    for balance in ["round_robin", "ring_hash", "maglev"] {
        let text = config(100_000, balance);
        g.bench_function(format!("compile {balance}"), |b| {
            b.iter(|| outrigger::config::compile(Path::new("big.toml"), &text))
        });
    }
    // A discovery update: half the endpoints replaced; the new cluster is
    // built and the state of those that stay is carried over.
    let text = config(100_000, "round_robin");
    let snapshot =
        outrigger::config::compile(Path::new("big.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let update = found(100_000, 50_000);
    g.bench_function("discovery update (with_endpoints + adopt_stats)", |b| {
        b.iter(|| {
            let mut next = snapshot.derive();
            let cluster = snapshot.clusters["big"].with_endpoints(&update, 2);
            next.clusters
                .insert("big".into(), std::sync::Arc::new(cluster));
            next.adopt_stats(&snapshot);
            next
        })
    });
    g.bench_function("xds endpoints (ClusterLoadAssignment)", |b| {
        use envoy_types::pb::envoy::config::core::v3::{
            address, socket_address, Address, SocketAddress,
        };
        use envoy_types::pb::envoy::config::endpoint::v3::{
            lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
        };
        let lb: Vec<LbEndpoint> = update
            .iter()
            .map(|f| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: f.address.ip().to_string(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(80)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect();
        let cla = ClusterLoadAssignment {
            cluster_name: "big".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: lb,
                ..Default::default()
            }],
            ..Default::default()
        };
        b.iter(|| outrigger::xds::assignment(&cla))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
