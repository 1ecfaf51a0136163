//! Mesh identity: X.509-SVIDs (SPIFFE). This instance's identity (its SVID,
//! key and trust bundle), the verifiers that check a peer's SVID on both
//! sides of a connection, identity patterns for authorization, and the
//! `x-forwarded-client-cert` value naming a verified peer.
//!
//! A peer SVID is accepted when its chain verifies to the trust bundle
//! (webpki: signatures, validity dates, key usage), the leaf is not a CA,
//! and it carries exactly one URI SAN, `spiffe://TRUST_DOMAIN/...`, in this
//! instance's trust domain.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// `[identity]`, compiled.
#[derive(Debug)]
pub struct Identity {
    pub cert: Arc<rustls::sign::CertifiedKey>,
    pub roots: Arc<RootCertStore>,
    pub trust_domain: String,
    /// This instance's SPIFFE ID (from its own SVID).
    pub id: String,
}

/// An identity pattern: an exact SPIFFE ID, or a prefix ending in `/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPattern {
    Exact(String),
    Prefix(String),
}

impl IdPattern {
    pub fn parse(s: &str) -> Result<IdPattern, String> {
        if !s.starts_with("spiffe://") {
            return Err(format!(
                "\"{s}\" is not a SPIFFE ID (spiffe://TRUST_DOMAIN/PATH)"
            ));
        }
        // The ID part must be a valid SPIFFE ID itself (peers' IDs are
        // checked the same way, so a pattern that is not could never match
        // as its author meant).
        let id_part = s.strip_suffix("/*").unwrap_or(s);
        validate_id(id_part)?;
        Ok(match s.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') => IdPattern::Prefix(prefix.to_string()),
            Some(_) => {
                return Err(format!(
                    "\"{s}\": a wildcard must be a whole last segment (/*)"
                ))
            }
            None => IdPattern::Exact(s.to_string()),
        })
    }

    pub fn matches(&self, id: &str) -> bool {
        match self {
            IdPattern::Exact(e) => e == id,
            IdPattern::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

impl std::fmt::Display for IdPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdPattern::Exact(e) => f.write_str(e),
            IdPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// The URI SANs of a certificate.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name {
                out.push((*u).to_string());
            }
        }
    }
    Ok(out)
}

/// Check a SPIFFE ID against the SPIFFE ID specification: `spiffe://`, a
/// trust domain of `[a-z0-9.-_]` (lower case), then an optional path of
/// `/`-separated segments of `[A-Za-z0-9.-_]`, none empty, `.` or `..`; no
/// port, user info, query or fragment. Returns the trust domain. Checked
/// on every peer certificate, so that `SPIFFE://EXAMPLE.ORG/...` or
/// `.../sa/../../evil/...` can never match an allow or deny pattern
/// written for another ID.
pub fn validate_id(id: &str) -> Result<&str, String> {
    let bad = |why: &str| format!("\"{id}\" is not a valid SPIFFE ID: {why}");
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| bad("it must start with spiffe:// (lower case)"))?;
    let (domain, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if domain.is_empty() {
        return Err(bad("empty trust domain"));
    }
    let domain_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b);
    if !domain.bytes().all(domain_ok) {
        return Err(bad(
            "the trust domain may hold only a-z, 0-9, '.', '-' and '_'",
        ));
    }
    if path.is_empty() {
        return Ok(domain);
    }
    let segment_ok = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(bad("empty path segment")),
            "." | ".." => return Err(bad("'.' or '..' path segment")),
            s if !s.bytes().all(segment_ok) => {
                return Err(bad(
                    "path segments may hold only A-Z, a-z, 0-9, '.', '-' and '_'",
                ))
            }
            _ => {}
        }
    }
    Ok(domain)
}

/// The SPIFFE ID of an X.509-SVID leaf in `trust_domain`.
pub fn svid_id(der: &[u8], trust_domain: &str) -> Result<String, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
    if cert.is_ca() {
        return Err("an SVID leaf must not be a CA certificate".into());
    }
    let uris = uri_sans(der)?;
    let [id] = uris.as_slice() else {
        return Err(format!(
            "an SVID has exactly one URI SAN, this one has {}",
            uris.len()
        ));
    };
    let domain = validate_id(id)?;
    if !domain.eq_ignore_ascii_case(trust_domain) {
        return Err(format!(
            "SPIFFE ID \"{id}\" is not in trust domain \"{trust_domain}\""
        ));
    }
    Ok(id.clone())
}

/// A certificate refused by one of the proxy's own checks (SVID rules,
/// SAN matchers), with the reason as its text.
pub(crate) fn reject(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(CertRefused(msg)),
    )))
}

#[derive(Debug)]
struct CertRefused(String);

impl std::fmt::Display for CertRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertRefused {}

/// An upstream presented a valid SVID whose ID the cluster's `identities`
/// do not accept (the ID is the field).
#[derive(Debug)]
pub struct IdentityRefused(pub String);

impl std::fmt::Display for IdentityRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server identity {} is not in tls.identities", self.0)
    }
}

impl std::error::Error for IdentityRefused {}

/// The upstream identity a failed connect refused, if that is why it
/// failed.
pub fn refused_identity(e: &std::io::Error) -> Option<&str> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = tls else {
        return None;
    };
    let inner: &(dyn std::error::Error + 'static) = &*other.0;
    inner
        .downcast_ref::<IdentityRefused>()
        .map(|r| r.0.as_str())
}

/// A warn line when an upstream's identity is refused, at most one a
/// second per worker (a misconfigured cluster would otherwise log every
/// request); the rest are counted in the endpoint's last error.
pub fn warn_refused_identity(cluster: &str, endpoint: std::net::SocketAddr, identity: &str) {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    let due = LAST.with(|l| {
        let due = l.get().map_or(true, |t| {
            now.duration_since(t) >= std::time::Duration::from_secs(1)
        });
        if due {
            l.set(Some(now));
        }
        due
    });
    if due {
        tracing::warn!(%cluster, %endpoint, %identity, "upstream identity not in the cluster's tls.identities; connection refused");
    }
}

/// Listeners in mesh mode: require the client's SVID.
#[derive(Debug)]
pub struct SvidClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl SvidClientVerifier {
    pub fn new(identity: &Identity) -> Result<Self, String> {
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            identity.roots.clone(),
            super::provider(),
        )
        .build()
        .map_err(|e| format!("trust bundle: {e}"))?;
        Ok(SvidClientVerifier {
            inner,
            trust_domain: identity.trust_domain.clone(),
        })
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        svid_id(end_entity, &self.trust_domain).map_err(reject)?;
        Ok(ok)
    }

    delegate_signatures!();
}

/// Clusters in mesh mode: the server's SVID must verify to the bundle and
/// name one of `identities` (the DNS name is not checked: SVIDs carry none).
#[derive(Debug)]
pub struct SvidServerVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: String,
    identities: Vec<IdPattern>,
}

impl SvidServerVerifier {
    pub fn new(identity: &Identity, identities: Vec<IdPattern>) -> Self {
        SvidServerVerifier {
            roots: identity.roots.clone(),
            trust_domain: identity.trust_domain.clone(),
            identities,
        }
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            super::provider().signature_verification_algorithms.all,
        )?;
        let id = svid_id(end_entity, &self.trust_domain).map_err(reject)?;
        if !self.identities.iter().any(|p| p.matches(&id)) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(IdentityRefused(id)))),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a listener learned about a verified client certificate.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// The SPIFFE ID (mesh), or the first URI SAN (client_ca), if any.
    pub identity: Option<String>,
    /// SHA-256 of the leaf's DER, lower-case hex.
    pub hash: String,
}

impl PeerCert {
    pub fn of(der: &[u8], trust_domain: Option<&str>) -> PeerCert {
        let identity = match trust_domain {
            Some(td) => svid_id(der, td).ok(),
            // client_ca: the first URI SAN; one that claims to be a SPIFFE
            // ID must be a valid one, or the peer has no identity.
            None => uri_sans(der)
                .ok()
                .and_then(|u| u.into_iter().next())
                .filter(|u| !u.starts_with("spiffe://") || validate_id(u).is_ok()),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let hash = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        PeerCert { identity, hash }
    }

    /// Envoy's `x-forwarded-client-cert` element: `By=` (this proxy's own
    /// identity, when it has one), `Hash=`, `URI=`.
    pub fn xfcc(&self, by: Option<&str>) -> String {
        let mut v = String::new();
        if let Some(by) = by {
            v.push_str("By=");
            push_xfcc_value(&mut v, by);
            v.push(';');
        }
        v.push_str("Hash=");
        v.push_str(&self.hash);
        if let Some(id) = &self.identity {
            v.push_str(";URI=");
            push_xfcc_value(&mut v, id);
        }
        v
    }
}

/// An XFCC value as Envoy writes it: double-quoted (with `"` and `\`
/// escaped) when it holds a character that separates XFCC fields or
/// elements (`,` `;` `=` `"`) or any other than visible ASCII, so a URI
/// SAN can never add a field of its own.
fn push_xfcc_value(out: &mut String, v: &str) {
    let plain = v
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b",;=\"\\".contains(&b));
    if plain {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_are_validated() {
        for ok in [
            "spiffe://example.org",
            "spiffe://example.org/ns/shop/sa/orders",
            "spiffe://a-b_c.d9/X.y-z_1",
        ] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "SPIFFE://example.org/ns/x",
            "spiffe://EXAMPLE.ORG/ns/evil/sa/x",
            "spiffe:///ns/x",
            "spiffe://example.org:443/ns/x",
            "spiffe://user@example.org/ns/x",
            "spiffe://example.org/ns/shop/sa/../../evil/sa/x",
            "spiffe://example.org/ns/./x",
            "spiffe://example.org/ns//x",
            "spiffe://example.org/ns/x/",
            "spiffe://example.org/ns/x?q=1",
            "spiffe://example.org/ns/x#f",
            "spiffe://example.org/ns/x;By=y",
            "spiffe://example.org/ns/x,URI=spiffe://example.org/ns/admin",
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xfcc_values_cannot_add_fields() {
        let p = PeerCert {
            identity: Some("urn:x;By=evil,URI=\"spiffe://example.org/sa/admin\"".into()),
            hash: "ab".into(),
        };
        assert_eq!(
            p.xfcc(Some("spiffe://example.org/sa/me")),
            "By=spiffe://example.org/sa/me;Hash=ab;URI=\"urn:x;By=evil,URI=\\\"spiffe://example.org/sa/admin\\\"\""
        );
    }

    #[test]
    fn patterns() {
        let p = IdPattern::parse("spiffe://example.org/ns/web/*").unwrap();
        assert!(p.matches("spiffe://example.org/ns/web/sa/a"));
        assert!(!p.matches("spiffe://example.org/ns/webby/sa/a"));
        let e = IdPattern::parse("spiffe://example.org/ns/web/sa/a").unwrap();
        assert!(
            e.matches("spiffe://example.org/ns/web/sa/a")
                && !e.matches("spiffe://example.org/ns/web/sa/ab")
        );
        assert!(IdPattern::parse("https://x").is_err());
        assert!(IdPattern::parse("spiffe://example.org/ns*").is_err());
    }
}

/// `allow_identities` / `deny_identities` of a listener or a route.
#[derive(Debug)]
pub struct Authz {
    /// `None`: every identity (and none) is allowed unless denied.
    pub allow: Option<Vec<IdPattern>>,
    pub deny: Vec<IdPattern>,
    /// Denials per worker: one counter per deny rule, then one for
    /// "matched no allow entry".
    pub denied: crate::metrics::cell::PerWorker<Box<[crate::metrics::cell::Counter]>>,
}

impl Authz {
    pub fn new(allow: Option<Vec<IdPattern>>, deny: Vec<IdPattern>, workers: usize) -> Self {
        let rules = deny.len() + 1;
        Authz {
            allow,
            deny,
            denied: crate::metrics::cell::PerWorker::from_fn(workers, || {
                (0..rules)
                    .map(|_| crate::metrics::cell::Counter::default())
                    .collect()
            }),
        }
    }

    /// Whether a peer with this verified identity may pass; a refusal is
    /// counted under its rule.
    pub fn permits(&self, identity: Option<&str>, worker: usize) -> bool {
        let rule = match identity {
            Some(id) => self.deny.iter().position(|p| p.matches(id)),
            None => None,
        };
        let denied = rule.or_else(|| {
            let allowed = match (&self.allow, identity) {
                (None, _) => true,
                (Some(list), Some(id)) => list.iter().any(|p| p.matches(id)),
                (Some(_), None) => false,
            };
            (!allowed).then_some(self.deny.len())
        });
        match denied {
            Some(i) => {
                self.denied.worker(worker)[i].inc();
                false
            }
            None => true,
        }
    }

    /// Metric label of rule `i`.
    pub fn rule_label(&self, i: usize) -> String {
        self.deny
            .get(i)
            .map_or_else(|| "not_allowed".to_string(), |p| format!("deny {p}"))
    }
}
