//! A route's `fault` table: injected aborts and delays (docs/resilience.md,
//! "Fault injection").

use serde::Deserialize;
use serde_spanned::Spanned;

use super::ctx::Ctx;
use super::value::{positive, positive_duration, ConfigDuration};
use crate::route::fault::{per_million, Abort, Delay, Fault};

/// Delayed requests held at once by default, for the whole proxy.
pub const DEFAULT_MAX_ACTIVE: u64 = 10_000;

/// `fault = { abort, delay, header, max_active }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFault {
    pub abort: Option<Spanned<FileAbort>>,
    pub delay: Option<Spanned<FileDelay>>,
    pub header: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "positive")]
    pub max_active: Option<u64>,
}

/// `fault.abort`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAbort {
    pub status: Option<Spanned<i64>>,
    pub grpc_status: Option<Spanned<i64>>,
    pub percent: Option<Spanned<f64>>,
}

/// `fault.delay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDelay {
    #[serde(default, deserialize_with = "positive_duration")]
    pub duration: Option<ConfigDuration>,
    pub percent: Option<Spanned<f64>>,
}

/// A `percent` key (0.0 to 100.0, default 100) in millionths; `None`
/// after recording the error.
pub(super) fn percent_of(cx: &mut Ctx<'_>, key: &str, p: &Option<Spanned<f64>>) -> Option<u32> {
    match p {
        None => Some(per_million(100.0)),
        Some(v) if (0.0..=100.0).contains(v.get_ref()) => Some(per_million(*v.get_ref())),
        Some(v) => {
            cx.error(
                v.span(),
                key.to_string(),
                format!("must be from 0.0 to 100.0, not {}", v.get_ref()),
            );
            None
        }
    }
}

/// Compile a route's `fault`; `None` (with the errors recorded) when invalid.
pub(super) fn fault(cx: &mut Ctx<'_>, key: &str, f: &Spanned<FileFault>) -> Option<Fault> {
    let key = format!("{key}.fault");
    let f_ref = f.get_ref();
    let mut ok = true;
    // A bad percent is recorded here; `None` makes its table fail below.
    let percent = |cx: &mut Ctx<'_>, sub: &str, p: &Option<Spanned<f64>>| {
        percent_of(cx, &format!("{key}.{sub}.percent"), p)
    };
    let abort = match &f_ref.abort {
        None => None,
        Some(a) => {
            let a_ref = a.get_ref();
            let pm = percent(cx, "abort", &a_ref.percent);
            let status = match &a_ref.status {
                Some(s) if (400..=599).contains(s.get_ref()) => Some(*s.get_ref() as u16),
                Some(s) => {
                    cx.error(
                        s.span(),
                        format!("{key}.abort.status"),
                        format!(
                            "must be an error status from 400 to 599, not {}",
                            s.get_ref()
                        ),
                    );
                    None
                }
                None => None,
            };
            let grpc_status = match &a_ref.grpc_status {
                Some(g) if (0..=16).contains(g.get_ref()) => Some(Some(*g.get_ref() as u8)),
                Some(g) => {
                    cx.error(
                        g.span(),
                        format!("{key}.abort.grpc_status"),
                        format!("must be a gRPC status from 0 to 16, not {}", g.get_ref()),
                    );
                    None
                }
                None => Some(None),
            };
            if a_ref.status.is_none() && a_ref.grpc_status.is_none() {
                cx.error(
                    a.span(),
                    format!("{key}.abort"),
                    "needs a status (and, for gRPC calls, may add grpc_status)",
                );
            }
            let valid_status = a_ref.status.is_none() || status.is_some();
            let has_any = a_ref.status.is_some() || a_ref.grpc_status.is_some();
            match (pm, grpc_status) {
                (Some(per_million), Some(grpc_status)) if valid_status && has_any => {
                    // A gRPC-only abort answers other requests with 503.
                    Some(Abort {
                        status: status.unwrap_or(503),
                        grpc_status,
                        per_million,
                    })
                }
                _ => {
                    ok = false;
                    None
                }
            }
        }
    };
    let delay = match &f_ref.delay {
        None => None,
        Some(d) => {
            let pm = percent(cx, "delay", &d.get_ref().percent);
            match (d.get_ref().duration, pm) {
                (Some(duration), Some(per_million)) => Some(Delay {
                    duration: duration.0,
                    per_million,
                }),
                (None, _) => {
                    cx.error(d.span(), format!("{key}.delay"), "needs a duration");
                    ok = false;
                    None
                }
                _ => {
                    ok = false;
                    None
                }
            }
        }
    };
    if f_ref.abort.is_none() && f_ref.delay.is_none() {
        cx.error(f.span(), key.clone(), "needs an abort or a delay table");
        ok = false;
    }
    let header = match &f_ref.header {
        Some(h)
            if !h.get_ref().is_empty() && h.get_ref().bytes().all(crate::http::codec::is_tchar) =>
        {
            Some(h.get_ref().to_ascii_lowercase())
        }
        Some(h) => {
            cx.error(h.span(), format!("{key}.header"), "must be a header name");
            ok = false;
            None
        }
        None => None,
    };
    ok.then(|| Fault {
        abort,
        delay,
        header,
        max_active: f_ref.max_active.unwrap_or(DEFAULT_MAX_ACTIVE),
    })
}
