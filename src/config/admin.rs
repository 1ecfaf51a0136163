//! `[admin]` and `[metrics]`: the admin API and the read-only scrape
//! listener. Both are bound once, at start; a reload that changes their
//! addresses is refused.

use std::net::SocketAddr;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::ctx::{parse_listen_address, Ctx};
use super::{AdminSettings, MetricsSettings};

/// `[admin]`: the admin API.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    /// `ip:port` of the admin API. Default `127.0.0.1:9901`.
    pub address: Option<Spanned<String>>,
    /// More key names whose values `GET /config` never shows (beside the
    /// built-in ones: authorization, cookie, otlp_headers, ...).
    #[serde(default)]
    pub redact: Vec<String>,
}

/// `[metrics]`: a listener that serves `/metrics` and `/stats/prometheus`
/// (and `/healthz`, `/ready`) read-only, for Prometheus to scrape a pod on
/// its own address while the admin API stays on loopback.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    /// `ip:port`, e.g. `0.0.0.0:15090`.
    pub address: Spanned<String>,
}

pub(super) fn compile_admin(cx: &mut Ctx<'_>, admin: &FileAdmin) -> AdminSettings {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 9901));
    let address = match &admin.address {
        None => fallback,
        Some(a) => match parse_listen_address(a.get_ref()) {
            Ok(addr) => addr,
            Err(msg) => {
                cx.error(a.span(), "admin.address", msg);
                fallback
            }
        },
    };
    AdminSettings {
        address,
        redact: admin
            .redact
            .iter()
            .map(|k| k.to_ascii_lowercase())
            .collect(),
    }
}

pub(super) fn compile_metrics(
    cx: &mut Ctx<'_>,
    metrics: Option<&Spanned<FileMetrics>>,
) -> Option<MetricsSettings> {
    let m = metrics?.get_ref();
    match parse_listen_address(m.address.get_ref()) {
        Ok(address) => Some(MetricsSettings { address }),
        Err(msg) => {
            cx.error(m.address.span(), "metrics.address", msg);
            None
        }
    }
}
