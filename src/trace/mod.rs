//! Distributed tracing: context propagation (W3C, B3), sampling, server
//! and client spans, and OTLP/HTTP export on a thread of its own.
//! docs/observability.md.

pub mod context;
pub mod otlp;

use std::time::{Duration, Instant, SystemTime};

use context::Context;
use otlp::{SpanData, Value};

/// `[tracing]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    pub w3c: bool,
    pub b3: bool,
    /// Ratio of the traces the proxy starts that are sampled.
    pub sampling: f64,
    /// OTLP/HTTP endpoint, split; `host` empty: no export.
    pub host: String,
    pub port: u16,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// `service.name` and `tracing.resource`.
    pub resource: Vec<(String, String)>,
    pub max_queue_spans: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    /// Who may force sampling with `x-outrigger-trace: force`: clients of
    /// these listeners, and peers with these verified identities.
    pub force_from_listeners: Vec<String>,
    pub force_from_identities: Vec<crate::tls::spiffe::IdPattern>,
}

impl TracingSettings {
    /// Whether `x-outrigger-trace: force` is honoured from this client
    /// (any other client could otherwise make every request expensive).
    pub fn force_allowed(&self, listener: &str, identity: Option<&str>) -> bool {
        self.force_from_listeners.iter().any(|l| l == listener)
            || identity.is_some_and(|id| self.force_from_identities.iter().any(|p| p.matches(id)))
    }
}

/// The tracing state of one request.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    pub trace_id: [u8; 16],
    /// The proxy's server span.
    pub span_id: [u8; 8],
    /// The caller's span, when the request carried a context.
    pub parent: Option<[u8; 8]>,
    pub tracestate: Option<String>,
    pub sampled: bool,
    pub w3c: bool,
    pub b3: bool,
    /// Wall clock and monotonic clock at the request's start.
    pub anchor: (Instant, SystemTime),
}

fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        for chunk in id.chunks_mut(8) {
            let r = fastrand::u64(..).to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        if id != [0u8; N] {
            return id;
        }
    }
}

/// A new span id.
pub fn new_span_id() -> [u8; 8] {
    random_id()
}

impl RequestTrace {
    /// Start the request's trace: continue the incoming context (the
    /// configured formats, W3C first), or start one; decide sampling
    /// (parent first, then `force`, then the route's or the global ratio).
    pub fn start(
        t: &TracingSettings,
        header: impl Fn(&str) -> Option<String>,
        route_sampling: Option<f64>,
        force_allowed: bool,
        anchor: (Instant, SystemTime),
    ) -> RequestTrace {
        let mut incoming: Option<Context> = None;
        if t.w3c {
            incoming = header("traceparent")
                .and_then(|tp| context::parse_traceparent(&tp, header("tracestate").as_deref()));
        }
        if incoming.is_none() && t.b3 {
            incoming = header("b3")
                .and_then(|v| context::parse_b3_single(&v))
                .or_else(|| {
                    context::parse_b3_multi(
                        &header("x-b3-traceid")?,
                        &header("x-b3-spanid")?,
                        header("x-b3-sampled").as_deref(),
                        header("x-b3-flags").as_deref(),
                    )
                });
        }
        let forced = force_allowed
            && header("x-outrigger-trace").is_some_and(|v| v.trim().eq_ignore_ascii_case("force"));
        let ratio = route_sampling.unwrap_or(t.sampling);
        let parent_decision = incoming.as_ref().and_then(|c| c.sampled);
        let sampled = forced
            || parent_decision
                .unwrap_or_else(|| ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio));
        RequestTrace {
            trace_id: incoming.as_ref().map_or_else(random_id, |c| c.trace_id),
            span_id: random_id(),
            parent: incoming.as_ref().map(|c| c.span_id),
            tracestate: incoming.and_then(|c| c.tracestate),
            sampled,
            w3c: t.w3c,
            b3: t.b3,
            anchor,
        }
    }

    /// The headers for one upstream try, whose span is `span_id`.
    pub fn headers_for(&self, span_id: [u8; 8]) -> Vec<u8> {
        let ctx = Context {
            trace_id: self.trace_id,
            span_id,
            sampled: Some(self.sampled),
            tracestate: self.tracestate.clone(),
        };
        let mut out = Vec::with_capacity(160);
        context::inject(&ctx, self.w3c, self.b3, &mut out);
        out
    }

    /// Unix nanoseconds of a monotonic instant of this request.
    pub fn unix_nanos(&self, at: Instant) -> u64 {
        let (i0, w0) = self.anchor;
        let wall = if at >= i0 {
            w0 + (at - i0)
        } else {
            w0 - (i0 - at)
        };
        wall.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// A span of this trace.
    #[allow(clippy::too_many_arguments)]
    pub fn span(
        &self,
        span_id: [u8; 8],
        parent: Option<[u8; 8]>,
        name: String,
        kind: u64,
        start: Instant,
        end: Instant,
        attributes: Vec<(&'static str, Value)>,
        events: Vec<(Instant, &'static str)>,
        error: Option<String>,
    ) -> SpanData {
        SpanData {
            trace_id: self.trace_id,
            span_id,
            parent_span_id: parent,
            tracestate: self.tracestate.clone(),
            name,
            kind,
            start_unix_nano: self.unix_nanos(start),
            end_unix_nano: self.unix_nanos(end),
            attributes,
            events: events
                .into_iter()
                .map(|(t, n)| (self.unix_nanos(t), n))
                .collect(),
            error,
        }
    }
}

/// Split `http://host:port/path`.
pub fn parse_endpoint(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("\"{url}\": only http:// OTLP endpoints are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/v1/traces".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>()
                .map_err(|_| format!("\"{url}\": bad port"))?,
        ),
        _ => (authority.to_string(), 4318),
    };
    if host.is_empty() {
        return Err(format!("\"{url}\": no host"));
    }
    Ok((host, port, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TracingSettings {
        TracingSettings {
            w3c: true,
            b3: true,
            sampling: 0.0,
            host: String::new(),
            port: 0,
            path: String::new(),
            headers: vec![],
            resource: vec![],
            max_queue_spans: 10,
            batch_size: 10,
            flush_interval: Duration::from_secs(1),
            force_from_listeners: vec!["trusted".into()],
            force_from_identities: vec![],
        }
    }

    #[test]
    fn force_only_from_trusted_clients() {
        let mut t = settings();
        assert!(t.force_allowed("trusted", None));
        assert!(!t.force_allowed("public", None));
        assert!(!t.force_allowed("public", Some("spiffe://example.org/ns/ops/sa/x")));
        t.force_from_identities =
            vec![crate::tls::spiffe::IdPattern::parse("spiffe://example.org/ns/ops/*").unwrap()];
        assert!(t.force_allowed("public", Some("spiffe://example.org/ns/ops/sa/x")));
        assert!(!t.force_allowed("public", Some("spiffe://example.org/ns/shop/sa/x")));
    }

    #[test]
    fn parent_decides_then_ratio() {
        let t = settings();
        let now = (Instant::now(), SystemTime::now());
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let r = RequestTrace::start(
            &t,
            |h| (h == "traceparent").then(|| tp.to_string()),
            None,
            false,
            now,
        );
        assert!(r.sampled);
        assert_eq!(
            context::to_hex(&r.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            r.parent.map(|p| context::to_hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let none = RequestTrace::start(&t, |_| None, None, false, now);
        assert!(!none.sampled && none.parent.is_none());
        let forced = RequestTrace::start(
            &t,
            |h| (h == "x-outrigger-trace").then(|| "force".into()),
            None,
            true,
            now,
        );
        assert!(forced.sampled);
        // From a client not trusted to force it: ignored.
        let untrusted = RequestTrace::start(
            &t,
            |h| (h == "x-outrigger-trace").then(|| "force".into()),
            None,
            false,
            now,
        );
        assert!(!untrusted.sampled);
        let route = RequestTrace::start(&t, |_| None, Some(1.0), false, now);
        assert!(route.sampled);
        // B3 in.
        let b3 = RequestTrace::start(
            &t,
            |h| (h == "b3").then(|| "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".into()),
            None,
            false,
            now,
        );
        assert!(b3.sampled && context::to_hex(&b3.trace_id) == "80f198ee56343ba864fe8b2a57d3eff7");
    }

    #[test]
    fn ratio_is_statistical() {
        let mut t = settings();
        t.sampling = 0.1;
        let now = (Instant::now(), SystemTime::now());
        let n = (0..10_000)
            .filter(|_| RequestTrace::start(&t, |_| None, None, false, now).sampled)
            .count();
        // 10,000 draws at p = 0.1: sd 30; 5 sd either way.
        assert!((850..=1150).contains(&n), "{n}");
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:4318/v1/traces").unwrap(),
            ("127.0.0.1".into(), 4318, "/v1/traces".into())
        );
        assert_eq!(
            parse_endpoint("http://collector").unwrap(),
            ("collector".into(), 4318, "/v1/traces".into())
        );
        assert!(parse_endpoint("https://x").is_err());
    }
}
