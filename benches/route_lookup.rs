//! Route lookup over tables of 10 and 1,000 routes: the first route, the
//! last route, and a miss (the worst case: every route is tried); and a
//! 1,000-route table of which half are `path_regex` routes (matched as one
//! regex set), first and last route.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use outrigger::route::{RouteRequest, RouteTable};

struct Req {
    host: &'static str,
    path: &'static str,
}

impl RouteRequest for Req {
    fn host(&self) -> Option<&str> {
        Some(self.host)
    }
    fn path(&self) -> &str {
        self.path
    }
    fn method(&self) -> &str {
        "GET"
    }
    fn header(&self, _name: &str) -> Option<&str> {
        None
    }
}

fn table(routes: usize) -> std::sync::Arc<RouteTable> {
    let mut s = String::from(
        "[listeners.public]\naddress = \"127.0.0.1:8080\"\nprotocol = \"http\"\nroutes = \"t\"\n\n",
    );
    for i in 0..routes {
        s.push_str(&format!(
            "[[routes.t]]\nmatch.host = \"svc{i}.example.com\"\nmatch.path_prefix = \"/api/\"\ncluster = \"c\"\n\n"
        ));
    }
    s.push_str("[clusters.c]\nendpoints = [\"127.0.0.1:9000\"]\n");
    let snapshot = outrigger::config::compile(Path::new("bench.toml"), &s)
        .unwrap_or_else(|e| panic!("bench config: {e}"));
    snapshot.route_tables["t"].clone()
}

/// 1,000 routes without hosts, alternating prefix and regex paths.
fn mixed_table() -> std::sync::Arc<RouteTable> {
    let mut s = String::from(
        "[listeners.public]\naddress = \"127.0.0.1:8080\"\nprotocol = \"http\"\nroutes = \"t\"\n\n",
    );
    for i in 0..500 {
        s.push_str(&format!(
            "[[routes.t]]\nmatch.path_prefix = \"/prefix{i}/\"\ncluster = \"c\"\n\n[[routes.t]]\nmatch.path_regex = \"^/re{i}/[0-9]+/items$\"\ncluster = \"c\"\n\n"
        ));
    }
    s.push_str("[clusters.c]\nendpoints = [\"127.0.0.1:9000\"]\n");
    let snapshot = outrigger::config::compile(Path::new("bench.toml"), &s)
        .unwrap_or_else(|e| panic!("bench config: {e}"));
    snapshot.route_tables["t"].clone()
}

fn bench_regex(c: &mut Criterion) {
    let mut g = c.benchmark_group("route lookup, 500 of 1000 routes regex");
    let t = mixed_table();
    for (name, path) in [
        ("first", "/prefix0/users"),
        ("first regex", "/re0/42/items"),
        ("last", "/re499/42/items"),
        ("miss", "/nothing/here"),
    ] {
        let req = Req {
            host: "svc.example.com",
            path,
        };
        g.bench_function(name, |b| {
            b.iter(|| t.lookup(std::hint::black_box(&req)).is_some())
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route lookup");
    for n in [10usize, 1000] {
        let t = table(n);
        let last_host: &'static str =
            Box::leak(format!("svc{}.example.com:8080", n - 1).into_boxed_str());
        let cases = [
            (
                "first",
                Req {
                    host: "svc0.example.com",
                    path: "/api/users",
                },
            ),
            (
                "last",
                Req {
                    host: last_host,
                    path: "/api/users",
                },
            ),
            (
                "miss",
                Req {
                    host: "unknown.example.com",
                    path: "/api/users",
                },
            ),
        ];
        for (name, req) in cases {
            g.bench_with_input(BenchmarkId::new(name, n), &req, |b, req| {
                b.iter(|| t.lookup(std::hint::black_box(req)).is_some())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench, bench_regex);
criterion_main!(benches);
