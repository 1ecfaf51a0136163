//! `outrigger-load xds-plane`: a management server with a generated
//! config for the discovery benchmark (loadtest/bench/xds_bench.py):
//! CLUSTERS EDS clusters of ENDPOINTS endpoints each, one route
//! configuration of ROUTES routes, one HTTP listener. Optionally it
//! changes one cluster's endpoint weights every CHURN, and pushes a
//! route change once, UPDATE_AFTER the proxy's first request. It prints
//! the wall-clock instants (Unix ms) a script measures from.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use envoy_types::pb::google::protobuf::Any;

use crate::xds_plane::*;

#[derive(clap::Args, Debug)]
pub struct XdsPlaneArgs {
    /// Address to serve ADS on.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub addr: SocketAddr,
    /// The proxy listener's address (in the LDS resource).
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub listen: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub clusters: usize,
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    #[arg(long, default_value_t = 1000)]
    pub routes: usize,
    /// Endpoint j of every cluster is 127.0.0.1:(BACKEND_PORT + j).
    #[arg(long, default_value_t = 18300)]
    pub backend_port: u16,
    /// Change one cluster's endpoint weights this often ("100ms").
    #[arg(long, value_parser = crate::parse_duration)]
    pub churn: Option<Duration>,
    /// Push a route change (`/probe` answers "v2") this long after the
    /// proxy's first request.
    #[arg(long, value_parser = crate::parse_duration)]
    pub update_after: Option<Duration>,
}

fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn cla(args: &XdsPlaneArgs, i: usize, heavy: Option<usize>) -> Any {
    let eps: Vec<(SocketAddr, u32)> = (0..args.endpoints)
        .map(|j| {
            let port = args.backend_port + j as u16;
            let w = if heavy == Some(j) { 5 } else { 1 };
            (SocketAddr::from(([127, 0, 0, 1], port)), w)
        })
        .collect();
    assignment(&format!("c{i}"), &eps)
}

fn route_table(args: &XdsPlaneArgs, probe: &str) -> Any {
    let mut list = vec![direct("/probe", 200, probe)];
    list.extend(
        (0..args.routes)
            .map(|r| to_cluster(&format!("/c{r}/"), &format!("c{}", r % args.clusters))),
    );
    list.push(to_cluster("/", "c0"));
    routes("bench", list)
}

pub fn run(args: XdsPlaneArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clusters > 0 && args.endpoints > 0,
        "--clusters and --endpoints must be positive"
    );
    let plane = Plane::new();
    plane.set(
        CDS,
        (0..args.clusters)
            .map(|i| eds_cluster(&format!("c{i}")))
            .collect(),
    );
    plane.set(
        EDS,
        (0..args.clusters).map(|i| cla(&args, i, None)).collect(),
    );
    plane.set(LDS, vec![http_listener_at("bench", args.listen, "bench")]);
    plane.set(RDS, vec![route_table(&args, "v1")]);
    let listener = std::net::TcpListener::bind(args.addr)?;
    let _server = serve(&plane, listener);
    println!(
        "xds-plane: serving {} clusters x {} endpoints, {} routes on {}",
        args.clusters, args.endpoints, args.routes, args.addr
    );
    let first = loop {
        if let Some(s) = plane.seen().first() {
            break s.at;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    println!("first-request-ms {}", unix_ms(first));
    let mut pushed_update = false;
    let mut tick = 0usize;
    loop {
        let wait = args.churn.unwrap_or(Duration::from_millis(50));
        std::thread::sleep(wait);
        if let (Some(after), false) = (args.update_after, pushed_update) {
            if first.elapsed().unwrap_or_default() >= after {
                plane.set(RDS, vec![route_table(&args, "v2")]);
                println!("update-pushed-ms {}", unix_ms(SystemTime::now()));
                pushed_update = true;
            }
        }
        if args.churn.is_some() {
            tick += 1;
            let target = tick % args.clusters;
            plane.set(
                EDS,
                (0..args.clusters)
                    .map(|i| cla(&args, i, (i == target).then_some(tick % args.endpoints)))
                    .collect(),
            );
        }
    }
}
