//! `[xds]`: the management server the xDS client talks to.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::ctx::Ctx;
use super::value::{positive_duration, ConfigDuration};
use crate::snapshot::{XdsSettings, XdsTls};

/// `[xds]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileXds {
    /// `host:port` of the management server (ADS over gRPC).
    pub address: Spanned<String>,
    /// Default `outrigger`.
    pub node_id: Option<String>,
    /// Default `outrigger`.
    pub node_cluster: Option<String>,
    /// Default 5s.
    #[serde(default, deserialize_with = "positive_duration")]
    pub connect_timeout: Option<ConfigDuration>,
    pub tls: Option<FileXdsTls>,
}

/// `[xds.tls]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileXdsTls {
    pub ca: Option<Spanned<String>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub server_name: Option<String>,
}

pub(super) fn compile(cx: &mut Ctx<'_>, x: &Spanned<FileXds>) -> Option<Arc<XdsSettings>> {
    let f = x.get_ref();
    let address = f.address.get_ref();
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        cx.error(
            f.address.span(),
            "xds.address",
            format!("\"{address}\" is not host:port"),
        );
        return None;
    }
    let tls = match &f.tls {
        None => None,
        Some(t) => {
            if t.cert.is_some() != t.key.is_some() {
                cx.error(
                    x.span(),
                    "xds.tls",
                    "cert and key go together (mutual TLS to the management server)",
                );
                return None;
            }
            Some(XdsTls {
                ca: t.ca.as_ref().map(|p| cx.material(p.get_ref())),
                cert: t.cert.as_ref().map(|p| cx.material(p.get_ref())),
                key: t.key.as_ref().map(|p| cx.material(p.get_ref())),
                server_name: t.server_name.clone(),
            })
        }
    };
    Some(Arc::new(XdsSettings {
        address: address.clone(),
        node_id: f.node_id.clone().unwrap_or_else(|| "outrigger".into()),
        node_cluster: f.node_cluster.clone().unwrap_or_else(|| "outrigger".into()),
        connect_timeout: f.connect_timeout.map_or(Duration::from_secs(5), |d| d.0),
        tls,
    }))
}
