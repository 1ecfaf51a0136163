//! The JSON form of the metrics (`/stats`), from the same per-worker
//! cells as the Prometheus text (`export`).

use serde_json::{json, Map, Value};

use super::export::ExportSource;
use super::histogram::Merged;
use super::{ByClass, Histogram, STATUS_CLASSES};

/// `/stats`: counters and latency percentiles per listener, route, cluster
/// and worker, each in total and per worker.
pub fn stats_json(src: &ExportSource<'_>) -> Value {
    let s = src.snapshot;
    let mut listeners = Map::new();
    for l in &s.listeners {
        let per: Vec<Value> = l.stats.iter().map(listener_json).collect();
        let all: Vec<&Histogram> = l.stats.iter().map(|c| &c.duration).collect();
        let mut total = sum_json(&per);
        total["latency_us"] = latency(&all);
        listeners.insert(l.name.clone(), json!({ "total": total, "workers": per }));
    }
    let mut routes = Vec::new();
    for (table, t) in &s.route_tables {
        for r in &t.routes {
            let per: Vec<Value> = r
                .stats
                .iter()
                .map(|c| json!({ "requests": classes(&c.requests), "latency_us": latency(&[&c.duration]) }))
                .collect();
            let all: Vec<&Histogram> = r.stats.iter().map(|c| &c.duration).collect();
            routes.push(json!({
                "table": table,
                "route": r.name,
                "total": { "requests": sum_json(&per.iter().map(|v| v["requests"].clone()).collect::<Vec<_>>()), "latency_us": latency(&all) },
                "workers": per,
            }));
        }
    }
    let mut clusters = Map::new();
    for (name, c) in &s.clusters {
        let per: Vec<Value> = c
            .stats
            .iter()
            .map(|c| {
                json!({
                    "requests": c.requests.get(),
                    "responses": classes(&c.responses),
                    "connect_failures": c.connect_failures.get(),
                    "connections_opened": c.connections_opened.get(),
                    "timeouts": c.timeouts.get(),
                    "active": c.active.get(),
                    "latency_us": latency(&[&c.duration]),
                })
            })
            .collect();
        let all: Vec<&Histogram> = c.stats.iter().map(|c| &c.duration).collect();
        let mut total = sum_json(&per);
        total["latency_us"] = latency(&all);
        clusters.insert(name.clone(), json!({ "total": total, "workers": per }));
    }
    let workers: Vec<Value> = src
        .workers
        .iter()
        .zip(src.worker_stats)
        .map(|(w, c)| {
            json!({
                "index": w.index,
                "core": w.core,
                "driver": w.driver.to_string(),
                "active_connections": c.active.get(),
                "relay_buffers_rented": c.buffers_rented.get(),
                "parked_connections": c.parked.get(),
                "event_loop_lag_us": latency(&[&c.lag]),
                "access_log_lines": c.access_log_lines.get(),
                "access_log_dropped": c.access_log_dropped.get(),
            })
        })
        .collect();
    json!({
        "generation": s.generation,
        "uptime_seconds": src.started_at.elapsed().unwrap_or_default().as_secs_f64(),
        "reloads": {
            "succeeded": src.reloads.succeeded.get(),
            "failed": src.reloads.failed.get(),
            "duration_us": latency(&[&src.reloads.duration]),
        },
        "listeners": listeners,
        "routes": routes,
        "clusters": clusters,
        "workers": workers,
    })
}

fn listener_json(c: &super::ListenerCells) -> Value {
    json!({
        "connections": c.accepted.get(),
        "active": c.active.get(),
        "rejected": c.rejected.get(),
        "accept_errors": c.accept_errors.get(),
        "idle_timeouts": c.idle_timeouts.get(),
        "upstream_connect_failures": c.upstream_connect_failures.get(),
        "no_upstream": c.no_upstream.get(),
        "bytes_in": c.bytes_in.get(),
        "bytes_out": c.bytes_out.get(),
        "requests": classes(&c.requests),
        "no_route": c.no_route.get(),
        "http2_connections": c.http2_connections.get(),
        "http2_streams": c.http2_streams.get(),
        "latency_us": latency(&[&c.duration]),
    })
}

fn classes(b: &ByClass) -> Value {
    let mut m = Map::new();
    for (i, class) in STATUS_CLASSES.iter().enumerate() {
        m.insert((*class).to_string(), json!(b.0[i].get()));
    }
    m.insert("total".into(), json!(b.total()));
    Value::Object(m)
}

/// Percentiles in microseconds from the merged HdrHistogram.
fn latency(hs: &[&Histogram]) -> Value {
    let mut m = Merged::default();
    for h in hs {
        h.merge_into(&mut m);
    }
    json!({
        "count": m.count,
        "p50": m.quantile_us(0.5),
        "p90": m.quantile_us(0.9),
        "p99": m.quantile_us(0.99),
        "p999": m.quantile_us(0.999),
        "max": m.max_us,
        "mean": if m.count == 0 { 0.0 } else { m.sum_us as f64 / m.count as f64 },
    })
}

/// Field-wise sum of JSON objects of numbers (nested objects summed too).
fn sum_json(items: &[Value]) -> Value {
    let mut out = Map::new();
    for item in items {
        let Value::Object(o) = item else { continue };
        for (k, v) in o {
            match v {
                Value::Number(n) => {
                    let acc = out.get(k).and_then(Value::as_u64).unwrap_or(0);
                    out.insert(k.clone(), json!(acc + n.as_u64().unwrap_or(0)));
                }
                Value::Object(_) => {
                    let prev = out.remove(k).unwrap_or(Value::Null);
                    let merged = sum_json(&[prev, v.clone()]);
                    out.insert(k.clone(), merged);
                }
                _ => {}
            }
        }
    }
    Value::Object(out)
}
