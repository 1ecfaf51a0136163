//! Subject-alternative-name matchers (`tls.match_sans` of listeners and
//! clusters, and xDS `match_typed_subject_alt_names` /
//! `match_subject_alt_names`): after the chain verifies, the peer's
//! certificate must carry a SAN of the matcher's type that matches one of
//! them (Envoy's semantics). Enforced inside the rustls verifiers, so a
//! peer that fails them fails the handshake.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DistinguishedName;

use super::spiffe::reject;

/// Which SANs a matcher looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    Uri,
    Dns,
    /// URI and DNS names (xDS's untyped `match_subject_alt_names`).
    Any,
}

/// How a SAN's text is compared.
#[derive(Debug, Clone)]
pub enum SanText {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Anchored: the whole SAN must match (Envoy's `safe_regex`).
    Regex(regex::Regex),
}

/// One matcher.
#[derive(Debug, Clone)]
pub struct SanMatcher {
    pub kind: SanKind,
    pub text: SanText,
    pub ignore_case: bool,
}

impl SanMatcher {
    /// A matcher; a regex is compiled anchored (`^(?:...)$`).
    pub fn new(kind: SanKind, how: &str, value: &str, ignore_case: bool) -> Result<Self, String> {
        let v = if ignore_case {
            value.to_ascii_lowercase()
        } else {
            value.to_string()
        };
        let text = match how {
            "exact" => SanText::Exact(v),
            "prefix" => SanText::Prefix(v),
            "suffix" => SanText::Suffix(v),
            "contains" => SanText::Contains(v),
            "regex" => {
                let pattern = format!("^(?:{value})$");
                let re = regex::RegexBuilder::new(&pattern)
                    .case_insensitive(ignore_case)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("regex \"{value}\": {e}"))?;
                SanText::Regex(re)
            }
            other => return Err(format!("unknown SAN match \"{other}\"")),
        };
        Ok(SanMatcher {
            kind,
            text,
            ignore_case,
        })
    }

    fn matches(&self, kind: SanKind, san: &str) -> bool {
        if self.kind != SanKind::Any && self.kind != kind {
            return false;
        }
        let lowered;
        let san = if self.ignore_case && !matches!(self.text, SanText::Regex(_)) {
            lowered = san.to_ascii_lowercase();
            lowered.as_str()
        } else {
            san
        };
        match &self.text {
            SanText::Exact(v) => san == v,
            SanText::Prefix(v) => san.starts_with(v.as_str()),
            SanText::Suffix(v) => san.ends_with(v.as_str()),
            SanText::Contains(v) => san.contains(v.as_str()),
            SanText::Regex(re) => re.is_match(san),
        }
    }
}

/// A set of matchers: a certificate passes when one of its URI or DNS SANs
/// matches one of them.
#[derive(Debug, Clone)]
pub struct SanPolicy(pub Vec<SanMatcher>);

impl SanPolicy {
    pub fn check(&self, der: &[u8]) -> Result<(), String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
        let mut seen = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::URI(u) => seen.push((SanKind::Uri, *u)),
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        seen.push((SanKind::Dns, *d))
                    }
                    _ => {}
                }
            }
        }
        let ok = self
            .0
            .iter()
            .any(|m| seen.iter().any(|(k, s)| m.matches(*k, s)));
        if ok {
            Ok(())
        } else {
            Err("no subject alternative name matches tls.match_sans".into())
        }
    }

    /// A stable text of the matchers (for the pool transport digest).
    pub fn describe(&self) -> String {
        format!("{:?}", self.0)
    }
}

/// A client verifier, then the SAN matchers.
#[derive(Debug)]
pub struct SanClientVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub sans: SanPolicy,
}

impl ClientCertVerifier for SanClientVerifier {
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
        self.sans.check(end_entity).map_err(reject)?;
        Ok(ok)
    }

    delegate_signatures!();
}

/// A server verifier, then the SAN matchers.
#[derive(Debug)]
pub struct SanServerVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub sans: SanPolicy,
}

impl ServerCertVerifier for SanServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        self.sans.check(end_entity).map_err(reject)?;
        Ok(ok)
    }

    delegate_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: SanKind, how: &str, v: &str) -> SanMatcher {
        SanMatcher::new(kind, how, v, false).unwrap()
    }

    #[test]
    fn matchers() {
        let id = "spiffe://example.org/ns/ops/sa/admin";
        assert!(m(SanKind::Uri, "exact", id).matches(SanKind::Uri, id));
        assert!(!m(SanKind::Dns, "exact", id).matches(SanKind::Uri, id));
        assert!(m(SanKind::Any, "exact", id).matches(SanKind::Uri, id));
        assert!(m(SanKind::Uri, "prefix", "spiffe://example.org/ns/ops/").matches(SanKind::Uri, id));
        assert!(m(SanKind::Uri, "suffix", "/sa/admin").matches(SanKind::Uri, id));
        assert!(m(SanKind::Uri, "contains", "/ns/ops/").matches(SanKind::Uri, id));
        let re = m(
            SanKind::Uri,
            "regex",
            "spiffe://example\\.org/ns/[a-z]+/sa/admin",
        );
        assert!(re.matches(SanKind::Uri, id));
        // Anchored: a regex for a part does not match the whole.
        assert!(!m(SanKind::Uri, "regex", "ns/ops").matches(SanKind::Uri, id));
        let ci = SanMatcher::new(SanKind::Dns, "exact", "API.example.com", true).unwrap();
        assert!(ci.matches(SanKind::Dns, "api.EXAMPLE.com"));
        assert!(SanMatcher::new(SanKind::Uri, "regex", "(", false).is_err());
    }
}
