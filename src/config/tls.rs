//! Compiling a listener's `tls` table: files read and checked now, so a
//! missing file, a bad PEM or a key that does not match its certificate
//! fails `check`, start-up and reloads with the key's position.

use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;

use super::ctx::Ctx;
use super::file::{FileClusterTls, FileIdentity, FileListenerTls};
use crate::tls::spiffe::{Authz, IdPattern, Identity};
use crate::tls::{
    client_config, server_config, ClientSettings, ClusterTls, ListenerTls, ServerSettings,
};

/// Default `tls.handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn listener_tls(
    cx: &mut Ctx<'_>,
    key: &str,
    t: &Spanned<FileListenerTls>,
    alpn_default: &[&str],
) -> Option<Arc<ListenerTls>> {
    let f = t.get_ref();
    let key = format!("{key}.tls");
    let mut ok = true;
    let tls13_only = match f
        .min_version
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v.span()))
    {
        None | Some(("1.2", _)) => false,
        Some(("1.3", _)) => true,
        Some((other, span)) => {
            cx.error(
                span,
                format!("{key}.min_version"),
                format!("must be \"1.2\" or \"1.3\", not \"{other}\""),
            );
            ok = false;
            false
        }
    };
    let mesh = match f.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("terminate", _)) => None,
        Some(("mesh", span)) => match &cx.identity {
            Some(id) => Some(id.clone()),
            None => {
                // A written [identity] that failed has said why already.
                if !cx.identity_written {
                    cx.error(
                        span,
                        format!("{key}.mode"),
                        "mode = \"mesh\" needs an [identity] table (cert, key, trust_bundle, trust_domain)",
                    );
                }
                return None;
            }
        },
        Some((other, span)) => {
            cx.error(
                span,
                format!("{key}.mode"),
                format!("must be \"terminate\" or \"mesh\", not \"{other}\""),
            );
            return None;
        }
    };
    if let (Some(_), Some(c)) = (&mesh, &f.client_ca) {
        cx.error(
            c.span(),
            format!("{key}.client_ca"),
            "mesh mode verifies clients with [identity].trust_bundle; drop client_ca",
        );
        return None;
    }
    let cert_key = match (&f.cert, &f.key) {
        (Some(c), Some(k)) => Some((cx.material(c.get_ref()), cx.material(k.get_ref()), c.span())),
        (None, None) => None,
        (Some(c), None) | (None, Some(c)) => {
            cx.error(c.span(), format!("{key}.cert"), "cert and key go together");
            ok = false;
            None
        }
    };
    let sni: Vec<_> = f
        .certificates
        .iter()
        .flatten()
        .map(|e| {
            let e_ref = e.get_ref();
            let names: Vec<String> = e_ref
                .server_names
                .iter()
                .map(|n| n.get_ref().clone())
                .collect();
            (
                names,
                cx.material(e_ref.cert.get_ref()),
                cx.material(e_ref.key.get_ref()),
                e.span(),
            )
        })
        .collect();
    if cert_key.is_none() && sni.is_empty() && mesh.is_none() && ok {
        cx.error(
            t.span(),
            key.clone(),
            "needs cert and key, or certificates = [{ server_names, cert, key }]",
        );
        ok = false;
    }
    for (names, _, _, span) in &sni {
        if names.is_empty() {
            cx.error(
                span.clone(),
                format!("{key}.certificates"),
                "server_names must name at least one host",
            );
            ok = false;
        }
    }
    let client_ca = f
        .client_ca
        .as_ref()
        .map(|c| (cx.material(c.get_ref()), c.span()));
    let alpn: Vec<Vec<u8>> = match &f.alpn {
        Some(list) => list
            .iter()
            .map(|a| a.get_ref().as_bytes().to_vec())
            .collect(),
        None => alpn_default.iter().map(|a| a.as_bytes().to_vec()).collect(),
    };
    let plaintext_permitted = match f
        .plaintext
        .as_ref()
        .map(|p| (p.get_ref().as_str(), p.span()))
    {
        None | Some(("refuse", _)) => false,
        Some(("permit", _)) => true,
        Some((other, span)) => {
            cx.error(
                span,
                format!("{key}.plaintext"),
                format!("must be \"refuse\" or \"permit\", not \"{other}\""),
            );
            return None;
        }
    };
    if !ok {
        return None;
    }
    // Each file is read once here; the first one at fault is reported at
    // its key.
    let settings = ServerSettings {
        cert_key: cert_key
            .as_ref()
            .map(|(c, k, _)| (c.as_path(), k.as_path())),
        certificates: sni
            .iter()
            .map(|(n, c, k, _)| (n.clone(), c.as_path(), k.as_path()))
            .collect(),
        client_ca: client_ca.as_ref().map(|(c, _)| c.as_path()),
        tls13_only,
        alpn,
        handshake_timeout: f
            .handshake_timeout
            .map_or(DEFAULT_HANDSHAKE_TIMEOUT, |d| d.0),
        own_id: cx.identity.as_ref().map(|i| i.id.clone()),
        mesh,
        sans: san_policy(cx, &key, &f.match_sans)?,
    };
    match server_config(&settings) {
        Ok(mut tls) => {
            tls.plaintext_permitted = plaintext_permitted;
            Some(Arc::new(tls))
        }
        Err(msg) => {
            let span = cert_key
                .as_ref()
                .map(|(_, _, s)| s.clone())
                .unwrap_or_else(|| t.span());
            cx.error(span, key, msg);
            None
        }
    }
}

fn min_version(cx: &mut Ctx<'_>, key: &str, v: &Option<Spanned<String>>) -> Option<bool> {
    match v.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("1.2", _)) => Some(false),
        Some(("1.3", _)) => Some(true),
        Some((other, span)) => {
            cx.error(
                span,
                format!("{key}.min_version"),
                format!("must be \"1.2\" or \"1.3\", not \"{other}\""),
            );
            None
        }
    }
}

/// A cluster's `tls` table: roots, client certificate and names read now.
pub(super) fn cluster_tls(
    cx: &mut Ctx<'_>,
    key: &str,
    t: &Spanned<FileClusterTls>,
    alpn_default: &[&str],
) -> Option<Arc<ClusterTls>> {
    let f = t.get_ref();
    let key = format!("{key}.tls");
    let tls13_only = min_version(cx, &key, &f.min_version)?;
    let cert_key = match (&f.cert, &f.key) {
        (Some(c), Some(k)) => Some((cx.material(c.get_ref()), cx.material(k.get_ref()))),
        (None, None) => None,
        (Some(c), None) | (None, Some(c)) => {
            cx.error(c.span(), format!("{key}.cert"), "cert and key go together");
            return None;
        }
    };
    if let Some(n) = &f.server_name {
        if rustls::pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
            cx.error(
                n.span(),
                format!("{key}.server_name"),
                format!("\"{}\" is not a DNS name or an IP address", n.get_ref()),
            );
            return None;
        }
    }
    let mesh = match f.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("tls", _)) => None,
        Some(("mesh", span)) => {
            let Some(id) = cx.identity.clone() else {
                if !cx.identity_written {
                    cx.error(
                        span,
                        format!("{key}.mode"),
                        "mode = \"mesh\" needs an [identity] table (cert, key, trust_bundle, trust_domain)",
                    );
                }
                return None;
            };
            let patterns = patterns(cx, &format!("{key}.identities"), &f.identities)?;
            let Some(patterns) = patterns.filter(|p| !p.is_empty()) else {
                cx.error(
                    span,
                    format!("{key}.identities"),
                    "mode = \"mesh\" needs identities: the SPIFFE IDs the upstream may have",
                );
                return None;
            };
            Some((id, patterns))
        }
        Some((other, span)) => {
            cx.error(
                span,
                format!("{key}.mode"),
                format!("must be \"tls\" or \"mesh\", not \"{other}\""),
            );
            return None;
        }
    };
    if mesh.is_some() && (f.ca.is_some() || f.cert.is_some()) {
        cx.error(
            t.span(),
            key.clone(),
            "mesh mode uses [identity]'s SVID and bundle; drop ca, cert and key",
        );
        return None;
    }
    let ca = f.ca.as_ref().map(|c| cx.material(c.get_ref()));
    let settings = ClientSettings {
        mesh,
        ca: ca.as_deref(),
        cert_key: cert_key.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        alpn: match &f.alpn {
            Some(list) => list
                .iter()
                .map(|a| a.get_ref().as_bytes().to_vec())
                .collect(),
            None => alpn_default.iter().map(|a| a.as_bytes().to_vec()).collect(),
        },
        tls13_only,
        server_name: f.server_name.as_ref().map(|n| n.get_ref().clone()),
        sans: san_policy(cx, &key, &f.match_sans)?,
    };
    match client_config(&settings) {
        Ok(c) => Some(Arc::new(c)),
        Err(msg) => {
            cx.error(t.span(), key, msg);
            None
        }
    }
}

/// `[identity]`: read and checked now (the SVID's SPIFFE ID must be in
/// `trust_domain`).
pub(super) fn identity(cx: &mut Ctx<'_>, i: &Spanned<FileIdentity>) -> Option<Arc<Identity>> {
    let f = i.get_ref();
    let td = f.trust_domain.get_ref();
    if td.is_empty() || td.contains('/') || td.contains(':') {
        cx.error(
            f.trust_domain.span(),
            "identity.trust_domain",
            format!("\"{td}\" is not a trust domain name (like \"example.org\")"),
        );
        return None;
    }
    let (cert, key, bundle) = (
        cx.material(f.cert.get_ref()),
        cx.material(f.key.get_ref()),
        cx.material(f.trust_bundle.get_ref()),
    );
    match crate::tls::load_identity(&cert, &key, &bundle, td) {
        Ok(id) => Some(Arc::new(id)),
        Err(msg) => {
            cx.error(f.cert.span(), "identity", msg);
            None
        }
    }
}

/// `tls.match_sans`: `Some(None)` when absent; `None` after an error.
fn san_policy(
    cx: &mut Ctx<'_>,
    key: &str,
    list: &Option<Vec<Spanned<super::file::FileSanMatch>>>,
) -> Option<Option<crate::tls::san::SanPolicy>> {
    use crate::tls::san::{SanKind, SanMatcher, SanPolicy};
    let Some(list) = list else { return Some(None) };
    let key = format!("{key}.match_sans");
    if list.is_empty() {
        return Some(None);
    }
    let mut out = Vec::new();
    for m in list {
        let f = m.get_ref();
        let kind = match f.kind.as_str() {
            "uri" => SanKind::Uri,
            "dns" => SanKind::Dns,
            "any" => SanKind::Any,
            other => {
                cx.error(
                    m.span(),
                    key.clone(),
                    format!("type must be \"uri\", \"dns\" or \"any\", not \"{other}\""),
                );
                return None;
            }
        };
        let ways = [
            ("exact", &f.exact),
            ("prefix", &f.prefix),
            ("suffix", &f.suffix),
            ("contains", &f.contains),
            ("regex", &f.regex),
        ];
        let set: Vec<_> = ways
            .iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| (*n, v)))
            .collect();
        let [(how, value)] = set.as_slice() else {
            cx.error(
                m.span(),
                key.clone(),
                "needs exactly one of exact, prefix, suffix, contains, regex",
            );
            return None;
        };
        match SanMatcher::new(kind, how, value, f.ignore_case) {
            Ok(matcher) => out.push(matcher),
            Err(msg) => {
                cx.error(m.span(), key.clone(), msg);
                return None;
            }
        }
    }
    Some(Some(SanPolicy(out)))
}

fn patterns(
    cx: &mut Ctx<'_>,
    key: &str,
    list: &Option<Vec<Spanned<String>>>,
) -> Option<Option<Vec<IdPattern>>> {
    let Some(list) = list else { return Some(None) };
    let mut out = Vec::new();
    let mut ok = true;
    for p in list {
        match IdPattern::parse(p.get_ref()) {
            Ok(v) => out.push(v),
            Err(msg) => {
                cx.error(p.span(), key.to_string(), msg);
                ok = false;
            }
        }
    }
    ok.then_some(Some(out))
}

/// `allow_identities` / `deny_identities` of a listener or route; `Some(None)`
/// when neither is set.
pub(super) fn authz(
    cx: &mut Ctx<'_>,
    key: &str,
    allow: &Option<Vec<Spanned<String>>>,
    deny: &Option<Vec<Spanned<String>>>,
) -> Option<Option<Arc<Authz>>> {
    let allow = patterns(cx, &format!("{key}.allow_identities"), allow);
    let deny = patterns(cx, &format!("{key}.deny_identities"), deny);
    let (allow, deny) = (allow?, deny?);
    if allow.is_none() && deny.is_none() {
        return Some(None);
    }
    Some(Some(Arc::new(Authz::new(
        allow,
        deny.unwrap_or_default(),
        cx.workers,
    ))))
}
