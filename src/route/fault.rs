//! Fault injection per route (`fault = { abort, delay, header, max_active }`):
//! a share of requests is delayed before it is forwarded, and a share is
//! answered with an error instead of being forwarded, as Envoy's fault
//! filter and Istio's `VirtualService.fault` do. Decided per request from
//! the worker's own random source, with a resolution of 0.0001%.
//!
//! With `header`, faults are injected only into requests that ask for them
//! in that header (and only the kinds the route configures): `abort`,
//! `abort=503`, `delay`, `delay=250ms`, comma-separated; the route's
//! percentages still apply. So a test client can exercise its own error
//! handling in production without touching anyone else's traffic.

use std::time::Duration;

/// Percentages are kept in millionths (100.0% = 1,000,000).
pub const PER_MILLION: u32 = 1_000_000;

/// A route's `fault` table, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub abort: Option<Abort>,
    pub delay: Option<Delay>,
    /// Lower-case request header that must ask for a fault.
    pub header: Option<String>,
    /// Delayed requests held at once, for the whole proxy (shared out
    /// among workers); more are forwarded without the delay, and counted.
    pub max_active: u64,
}

/// `fault.abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    /// The HTTP status answered.
    pub status: u16,
    /// The gRPC status a gRPC call gets instead (trailers-only); `None`:
    /// the one `status` maps to.
    pub grpc_status: Option<u8>,
    pub per_million: u32,
}

/// `fault.delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    pub duration: Duration,
    pub per_million: u32,
}

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

/// What a request asked for in the fault header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Asked {
    /// `abort`, with the status asked for when given.
    pub abort: Option<Option<u16>>,
    /// `delay`, with the duration asked for when given.
    pub delay: Option<Option<Duration>>,
}

impl Asked {
    /// Parse the header's value; unknown or malformed items are ignored
    /// (a fault header never fails a request).
    pub fn parse(value: &[u8]) -> Asked {
        let mut asked = Asked::default();
        let Ok(text) = std::str::from_utf8(value) else {
            return asked;
        };
        for item in text.split(',').map(str::trim) {
            let (kind, arg) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            match (kind, arg) {
                ("abort", None) => asked.abort = Some(None),
                ("abort", Some(v)) => {
                    if let Some(s) = v.parse::<u16>().ok().filter(|s| (400..=599).contains(s)) {
                        asked.abort = Some(Some(s));
                    }
                }
                ("delay", None) => asked.delay = Some(None),
                ("delay", Some(v)) => {
                    if let Ok(d) = crate::units::parse_duration(v) {
                        asked.delay = Some(Some(d));
                    }
                }
                _ => {}
            }
        }
        asked
    }
}

impl Fault {
    /// Decide for one request: `asked` is the header's content when the
    /// route has a `header` (`None` when the request did not send it);
    /// `roll` draws a number below [`PER_MILLION`].
    pub fn decide(&self, asked: Option<Asked>, mut roll: impl FnMut() -> u32) -> Decision {
        let asked = match (&self.header, asked) {
            (None, _) => None,
            (Some(_), None) => return Decision::default(),
            (Some(_), Some(a)) => Some(a),
        };
        let mut d = Decision::default();
        if let Some(delay) = &self.delay {
            let wanted = asked.map_or(Some(None), |a| a.delay);
            if let Some(duration) = wanted {
                if roll() < delay.per_million {
                    // A delay asked for may be shorter, never longer.
                    d.delay = Some(duration.map_or(delay.duration, |x| x.min(delay.duration)));
                }
            }
        }
        if let Some(abort) = &self.abort {
            let wanted = asked.map_or(Some(None), |a| a.abort);
            if let Some(status) = wanted {
                if roll() < abort.per_million {
                    let mut a = *abort;
                    if let Some(s) = status {
                        a.status = s;
                    }
                    d.abort = Some(a);
                }
            }
        }
        d
    }
}

/// A percentage (0.0 to 100.0) in millionths, rounded.
pub fn per_million(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32
}

/// The gRPC status an HTTP status maps to (grpc/doc/http-grpc-status-mapping.md).
pub fn grpc_status_for(http: u16) -> u8 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(header: bool) -> Fault {
        Fault {
            abort: Some(Abort {
                status: 503,
                grpc_status: None,
                per_million: per_million(10.0),
            }),
            delay: Some(Delay {
                duration: Duration::from_millis(200),
                per_million: per_million(50.0),
            }),
            header: header.then(|| "x-outrigger-fault".to_string()),
            max_active: 100,
        }
    }

    #[test]
    fn percentages_decide() {
        assert_eq!(per_million(0.01), 100);
        assert_eq!(per_million(0.0001), 1);
        assert_eq!(per_million(150.0), PER_MILLION);
        let f = fault(false);
        // Rolls below the share hit, at or above it miss.
        let d = f.decide(None, || 0);
        assert_eq!(d.delay, Some(Duration::from_millis(200)));
        assert_eq!(d.abort.map(|a| a.status), Some(503));
        let d = f.decide(None, || PER_MILLION - 1);
        assert_eq!(d, Decision::default());
        let mut rolls = [per_million(50.0) - 1, per_million(10.0)].into_iter();
        let d = f.decide(None, || rolls.next().unwrap_or(0));
        assert!(d.delay.is_some() && d.abort.is_none());
    }

    #[test]
    fn the_header_asks() {
        let f = fault(true);
        // Without the header: nothing, whatever the roll.
        assert_eq!(f.decide(None, || 0), Decision::default());
        let asked = Asked::parse(b"abort=500, delay=50ms");
        let d = f.decide(Some(asked), || 0);
        assert_eq!(d.abort.map(|a| a.status), Some(500));
        assert_eq!(d.delay, Some(Duration::from_millis(50)));
        // Longer than the route allows: the route's.
        let d = f.decide(Some(Asked::parse(b"delay=10s")), || 0);
        assert_eq!(d.delay, Some(Duration::from_millis(200)));
        assert!(d.abort.is_none());
        let d = f.decide(Some(Asked::parse(b"abort")), || 0);
        assert_eq!((d.abort.map(|a| a.status), d.delay), (Some(503), None));
        // Junk asks for nothing.
        assert_eq!(
            f.decide(Some(Asked::parse(b"explode, abort=99, delay=soon")), || 0),
            Decision::default()
        );
        assert_eq!(Asked::parse(&[0xff, 0xfe]), Asked::default());
    }

    #[test]
    fn grpc_mapping() {
        assert_eq!(grpc_status_for(503), 14);
        assert_eq!(grpc_status_for(404), 12);
        assert_eq!(grpc_status_for(418), 2);
    }
}
