//! One function per admin endpoint.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::{Request, Response};
use crate::control::shared::{Event, Shared};

/// Dispatch by path, then method. `shared` is `None` while the workers
/// start: only `/healthz` answers 200 then.
pub(super) fn route(
    req: &Request,
    shared: Option<&Shared>,
    inbox: &flume::Sender<Event>,
) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    if let Some(refused) = browser_guard(req) {
        return refused;
    }
    let Some(shared) = shared else {
        return match path {
            "/healthz" => Response::text(200, "ok\n"),
            _ => Response::text(503, "starting\n"),
        };
    };
    let get = |f: &dyn Fn() -> Response| match req.method.as_str() {
        "GET" | "HEAD" => f(),
        _ => method_not_allowed("GET, HEAD"),
    };
    let post = |f: &dyn Fn() -> Response| match req.method.as_str() {
        "POST" => f(),
        _ => method_not_allowed("POST"),
    };
    match path {
        "/healthz" => get(&|| Response::text(200, "ok\n")),
        "/ready" => get(&|| ready(shared)),
        "/metrics" | "/stats/prometheus" => get(&|| metrics(shared)),
        "/stats" => get(&|| Response::json(200, &shared.export(crate::metrics::stats_json))),
        "/config" => get(&|| Response::json(200, &config(shared))),
        "/clusters" => get(&|| Response::json(200, &clusters(shared))),
        "/certs" => get(&|| Response::json(200, &certs(shared))),
        "/reload" => post(&|| reload(inbox)),
        "/drain" => post(&|| {
            let when_idle =
                req.path.contains("exit_when_idle=1") || req.path.contains("exit_when_idle=true");
            let _ = inbox.send(if when_idle {
                Event::DrainWhenIdle
            } else {
                Event::Drain("POST /drain")
            });
            Response::json(
                202,
                &json!({ "draining": true, "exit_when_idle": when_idle }),
            )
        }),
        "/" => get(&|| Response::text(200, INDEX)),
        _ => Response::text(404, "not found; GET / lists the endpoints\n"),
    }
}

/// The `[metrics]` listener: the read-only endpoints a scraper or a
/// kubelet probe needs, and nothing that changes or reveals the config.
pub(super) fn scrape(req: &Request, shared: Option<&Shared>) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return method_not_allowed("GET, HEAD");
    }
    match (path, shared) {
        ("/healthz", _) => Response::text(200, "ok\n"),
        (_, None) => Response::text(503, "starting\n"),
        ("/ready", Some(shared)) => ready(shared),
        ("/metrics" | "/stats/prometheus", Some(shared)) => metrics(shared),
        _ => Response::text(
            404,
            "not found: this listener serves /metrics, /stats/prometheus, /healthz and /ready\n",
        ),
    }
}

/// What keeps a browser from driving the admin API (docs/security.md,
/// "The admin API"): a Host that is not `localhost` or an IP literal is
/// refused (a DNS-rebinding page names its own domain), and a POST that a
/// page on another origin could send without a preflight (an `Origin`
/// field, or a form's content type) is refused.
fn browser_guard(req: &Request) -> Option<Response> {
    if let Some(host) = &req.host {
        if !admin_host(host) {
            return Some(Response::text(
                403,
                "host not allowed: use localhost or an IP address\n",
            ));
        }
    }
    if req.method == "POST" {
        if req.origin {
            return Some(Response::text(403, "cross-origin requests are refused\n"));
        }
        let form = req.content_type.as_deref().is_some_and(|t| {
            let t = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(
                t.as_str(),
                "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
            )
        });
        if form {
            return Some(Response::text(
                415,
                "send no body (or no form content type)\n",
            ));
        }
    }
    None
}

/// `localhost` or an IP literal, with or without a port.
fn admin_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split(']')
            .next()
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Key names whose values `/config` never shows, whatever table they are
/// in: credentials in headers a route sets, and exporter headers.
const REDACTED: [&str; 10] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "otlp_headers",
    "x-api-key",
    "password",
    "secret",
    "token",
    "api_key",
];

/// Replace the values of sensitive keys (`REDACTED` and `admin.redact`)
/// with `"[redacted]"`, at any depth.
fn redact(v: &mut Value, extra: &[String]) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let key = k.to_ascii_lowercase();
                if REDACTED.contains(&key.as_str()) || extra.contains(&key) {
                    *child = Value::String("[redacted]".into());
                } else {
                    redact(child, extra);
                }
            }
        }
        Value::Array(list) => list.iter_mut().for_each(|c| redact(c, extra)),
        _ => {}
    }
}

const INDEX: &str = "outrigger admin API\n\
GET  /healthz   200 while the process is alive\n\
GET  /ready     200 when serving, 503 while draining\n\
GET  /metrics   Prometheus text format (also /stats/prometheus)\n\
GET  /stats     counters and latency percentiles (JSON)\n\
GET  /config    the running config, generation, last reload error (JSON)\n\
GET  /clusters  endpoints and their per-worker state (JSON)\n\
GET  /certs     certificates in use: owner, subject, SPIFFE ID, serial, expiry (JSON)\n\
POST /reload    reload the config file now\n\
POST /drain     stop accepting and exit when connections end\n";

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = Response::text(405, "method not allowed\n");
    r.allow = Some(allow);
    r
}

fn ready(shared: &Shared) -> Response {
    if shared.draining.load(Ordering::Relaxed) {
        Response::text(503, "draining\n")
    } else {
        Response::text(200, "ready\n")
    }
}

fn metrics(shared: &Shared) -> Response {
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: shared.export(crate::metrics::prometheus).into_bytes(),
        allow: None,
    }
}

fn time(t: SystemTime) -> String {
    let mut out = Vec::new();
    crate::access_log::write_time(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

fn config(shared: &Shared) -> Value {
    let s = shared.snapshot.load();
    // The text compiled once already; parsing it again cannot fail, but a
    // failure would only leave "config" null.
    let mut parsed = toml::from_str::<toml::Value>(&s.text)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(Value::Null);
    redact(&mut parsed, &s.admin.redact);
    let last_error = shared
        .last_reload_error
        .load_full()
        .map(|e| json!({ "at": time(e.at), "message": e.message }));
    json!({
        "generation": s.generation,
        "source": s.source.display().to_string(),
        "loaded_at": time(s.loaded_at),
        "content_hash": format!("{:016x}", s.content_hash),
        "last_reload_error": last_error,
        "reloads": {
            "succeeded": shared.reloads.succeeded.get(),
            "failed": shared.reloads.failed.get(),
        },
        "config": parsed,
        "xds": xds(&s, &shared.xds),
    })
}

/// The xDS client's state: connection, and per type the version ACKed,
/// the counts and the last NACK's detail.
fn xds(s: &crate::snapshot::Snapshot, st: &crate::xds::XdsStatus) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(settings) = &s.xds else {
        return Value::Null;
    };
    let types: serde_json::Map<String, Value> = crate::xds::Kind::ALL
        .iter()
        .map(|k| {
            let t = &st.types[k.index()];
            (
                k.name().to_string(),
                json!({
                    "version": t.version.load_full().map(|v| v.to_string()),
                    "resources": t.resources.load(Relaxed),
                    "acks": t.acks.load(Relaxed),
                    "nacks": t.nacks.load(Relaxed),
                    "last_update": t.last_update.load(Relaxed),
                    "last_error": t.last_error.load_full().map(|e| e.to_string()),
                }),
            )
        })
        .collect();
    json!({
        "address": settings.address,
        "node_id": settings.node_id,
        "connected": st.connected.load(Relaxed),
        "streams": st.connects.load(Relaxed),
        "stream_failures": st.failures.load(Relaxed),
        "last_error": st.last_error.load_full().map(|e| e.to_string()),
        "types": types,
    })
}

/// Every certificate the running config presents.
fn certs(shared: &Shared) -> Value {
    let s = shared.snapshot.load();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let list: Vec<Value> = s
        .certificates()
        .into_iter()
        .map(|c| {
            json!({
                "owner": c.owner,
                "subject": c.subject,
                "spiffe_id": c.spiffe_id,
                "serial": c.serial,
                "not_after": c.not_after,
                "expires_in_seconds": c.not_after - now,
            })
        })
        .collect();
    json!({ "generation": s.generation, "certificates": list })
}

fn clusters(shared: &Shared) -> Value {
    let s = shared.snapshot.load();
    let now = crate::resilience::now_ms();
    let mut out = serde_json::Map::new();
    for (name, c) in &s.clusters {
        let endpoints: Vec<Value> = c
            .endpoints
            .iter()
            .map(|e| {
                let workers: Vec<Value> = e
                    .stats
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        let last = w
                            .last_error
                            .load_full()
                            .map(|l| json!({ "at": time(l.at), "message": l.message }));
                        json!({
                            "worker": i,
                            "in_flight": w.in_flight.get(),
                            "pooled": w.pooled.get(),
                            "requests": w.requests.get(),
                            "errors": w.errors.get(),
                            "last_error": last,
                        })
                    })
                    .collect();
                let h = &e.health;
                let health = match (c.health_check.is_some(), h.healthy()) {
                    (false, _) => "unchecked",
                    (true, true) => "healthy",
                    (true, false) => "unhealthy",
                };
                json!({
                    "address": e.address.to_string(),
                    "configured_as": e.written,
                    "weight": e.weight,
                    "zone": e.locality.zone,
                    "region": e.locality.region,
                    "priority": e.priority,
                    "health": health,
                    "ejected": h.ejected(now),
                    "ejection_left_ms": h.ejection_left_ms(now),
                    "ejections": h.ejections.load(std::sync::atomic::Ordering::Relaxed),
                    "usable": h.usable(now),
                    "in_flight": e.stats.sum(|w| w.in_flight.get()),
                    "pooled": e.stats.sum(|w| w.pooled.get()),
                    "requests": e.stats.sum(|w| w.requests.get()),
                    "errors": e.stats.sum(|w| w.errors.get()),
                    "workers": workers,
                })
            })
            .collect();
        out.insert(
            name.clone(),
            json!({
                "balance": c.balance.to_string(),
                "hash_on": c.balance.hashes().then(|| c.hash_on.to_string()),
                "connect_timeout_ms": c.connect_timeout.as_millis() as u64,
                "discovery": json!({
                    "source": match &c.source {
                        crate::discovery::Source::Static if c.original_destination => "original_destination",
                        crate::discovery::Source::Static => "static",
                        crate::discovery::Source::Dns(_) => "dns",
                        crate::discovery::Source::File(_) => "file",
                        crate::discovery::Source::Xds { .. } => "xds",
                    },
                    "updates": c.status.updates.load(std::sync::atomic::Ordering::Relaxed),
                    "failures": c.status.failures.load(std::sync::atomic::Ordering::Relaxed),
                    "last_update": c.status.last_update.load(std::sync::atomic::Ordering::Relaxed),
                    "last_error": c.status.last_error.load_full().map(|e| e.to_string()),
                }),
                "locality": c.locality.to_string(),
                "node": json!({ "region": s.node.region, "zone": s.node.zone }),
                "levels": c.levels.iter().map(|l| json!({
                    "level": l.label(),
                    "endpoints": l.end - l.start,
                })).collect::<Vec<_>>(),
                "split": c.shares(now).iter().map(|sh| json!({
                    "region": sh.locality.region,
                    "zone": sh.locality.zone,
                    "priority": sh.priority,
                    "level": sh.level,
                    "endpoints": sh.endpoints,
                    "usable": sh.usable,
                    "traffic_percent": sh.traffic as f64 / 100.0,
                })).collect::<Vec<_>>(),
                "outlier_detection": c.outlier.is_some(),
                "health_check": c.health_check.as_ref().map(|h| json!({
                    "protocol": match h.protocol {
                        crate::resilience::HealthProtocol::Http => "http",
                        crate::resilience::HealthProtocol::Tcp => "tcp",
                        crate::resilience::HealthProtocol::Grpc => "grpc",
                    },
                    "path": h.path,
                    "service": h.service,
                    "interval_ms": h.interval.as_millis() as u64,
                })),
                "retries": c.stats.sum(|w| w.retries.get()),
                "retries_budget_refused": c.stats.sum(|w| w.retries_budget_refused.get()),
                "overflow": crate::resilience::Overflow::ALL
                    .iter()
                    .map(|o| (o.key().to_string(), json!(c.stats.sum(|w| w.overflow[o.index()].get()))))
                    .collect::<serde_json::Map<_, _>>(),
                "endpoints": endpoints,
            }),
        );
    }
    json!({ "generation": s.generation, "clusters": out })
}

fn reload(inbox: &flume::Sender<Event>) -> Response {
    let (tx, rx) = flume::bounded(1);
    if inbox.send(Event::Reload(Some(tx))).is_err() {
        return Response::json(503, &json!({ "error": "the control thread has exited" }));
    }
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(done)) => Response::json(
            200,
            &json!({
                "generation": done.generation,
                // Microsecond precision, as the access log writes it.
                "duration_ms": (done.duration.as_secs_f64() * 1e6).round() / 1e3,
            }),
        ),
        Ok(Err(message)) => Response::json(400, &json!({ "error": message })),
        Err(_) => Response::json(
            503,
            &json!({ "error": "no answer from the control thread" }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            host: Some("127.0.0.1:9901".into()),
            content_type: None,
            origin: false,
        }
    }

    #[test]
    fn admin_hosts() {
        for ok in [
            "localhost",
            "localhost:9901",
            "127.0.0.1:9901",
            "10.1.2.3",
            "[::1]:9901",
            "[fe80::1]",
        ] {
            assert!(admin_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9901",
            "127.0.0.1.nip.io",
            "[evil]:1",
            "localhost.evil",
        ] {
            assert!(!admin_host(bad), "{bad}");
        }
    }

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut v = json!({
            "tracing": { "otlp_headers": { "authorization": "x" } },
            "routes": { "r": [{ "request_headers": { "set": { "Authorization": "y", "x-env": "prod", "mine": "z" } } }] },
        });
        redact(&mut v, &["mine".to_string()]);
        let text = v.to_string();
        assert!(
            !text.contains("\"x\"") && !text.contains("\"y\"") && !text.contains("\"z\""),
            "{text}"
        );
        assert!(text.contains("prod"));
    }

    #[test]
    fn while_starting_only_healthz_is_ok() {
        let (tx, rx) = flume::unbounded();
        assert_eq!(route(&req("GET", "/healthz"), None, &tx).status, 200);
        for path in [
            "/ready",
            "/metrics",
            "/stats",
            "/config",
            "/clusters",
            "/reload",
        ] {
            let r = route(&req("GET", path), None, &tx);
            assert_eq!(
                (path, r.status, r.body.as_slice()),
                (path, 503, &b"starting\n"[..])
            );
        }
        // Nothing reached the control thread.
        assert!(rx.try_recv().is_err());
    }
}
