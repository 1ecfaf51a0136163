//! TLS on listeners: the server settings compiled from a listener's `tls`
//! table (certificates chosen by SNI, client certificates, versions, ALPN),
//! the handshake with its timeout and failure reasons, and the stream that
//! drives rustls over monoio ([`stream`]). docs/security.md.

/// The signature checks a wrapping verifier leaves to the one it wraps
/// (the same three methods in rustls's client and server verifier traits).
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

mod client;
pub mod demo;
pub mod relay;
pub mod san;
pub mod sni;
pub mod spiffe;
pub mod stream;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;

pub use client::{client_config, connect, ClientSettings, ClusterTls};
pub use stream::TlsStream;

/// A server-side TLS connection.
pub type ServerStream = TlsStream<ServerConnection>;
/// A client-side TLS connection (toward a cluster).
pub type ClientStream = TlsStream<rustls::ClientConnection>;

impl ServerStream {
    /// The client's verified certificate, on a listener that requires one.
    pub fn peer_cert(&self, tls: &ListenerTls) -> Option<spiffe::PeerCert> {
        if !tls.verifies_clients {
            return None;
        }
        let leaf = self.conn.peer_certificates()?.first()?;
        Some(spiffe::PeerCert::of(leaf, tls.trust_domain.as_deref()))
    }
}

/// An accepted client connection: plain, or with TLS terminated here.
#[derive(Debug)]
pub enum Accepted {
    Plain(monoio::net::TcpStream),
    Tls(Box<ServerStream>),
}

impl Accepted {
    /// The client's verified certificate, on a listener that requires one.
    pub fn peer_cert(&self, tls: &ListenerTls) -> Option<spiffe::PeerCert> {
        match self {
            Accepted::Plain(_) => None,
            Accepted::Tls(t) => t.peer_cert(tls),
        }
    }
}

/// A listener's compiled `tls` table.
#[derive(Debug)]
pub struct ListenerTls {
    pub config: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
    /// Client certificates are required and verified (`client_ca`, or
    /// mesh mode).
    pub verifies_clients: bool,
    /// Mesh mode: the trust domain peers' SPIFFE IDs must be in.
    pub trust_domain: Option<String>,
    /// This proxy's own SPIFFE ID (`By=` of x-forwarded-client-cert).
    pub own_id: Option<String>,
    /// The certificates it serves (for `/certs` and expiry metrics):
    /// `default`, or the SNI names.
    pub certs: Vec<(String, Arc<CertifiedKey>)>,
    /// `tls.plaintext = "permit"` (auto listeners): connections that do not
    /// start a TLS handshake are served in plaintext, without identity.
    pub plaintext_permitted: bool,
}

/// The crypto provider (ring), shared by every config.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Read a PEM certificate chain (leaf first).
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let chain: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(chain)
}

/// Read a certificate chain and its key, and check that they match.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = load_chain(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, der, &provider())
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable pair: {e}",
                cert.display(),
                key.display()
            )
        })
}

/// Read PEM roots (a CA bundle).
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Certificates by SNI: exact names, then `*.suffix` names, then the
/// default (the table's own `cert`/`key`) for clients that send no name or
/// one no entry covers.
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `.example.com` for `*.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn new(default: Option<Arc<CertifiedKey>>) -> Self {
        SniResolver {
            default,
            ..SniResolver::default()
        }
    }

    /// Serve `key` for `name` (`a.example.com` or `*.example.com`).
    pub fn add(&mut self, name: &str, key: Arc<CertifiedKey>) {
        let name = name.to_ascii_lowercase();
        match name.strip_prefix('*') {
            Some(suffix) => self.wildcard.push((suffix.to_string(), key)),
            None => {
                self.exact.insert(name, key);
            }
        }
    }

    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            // `*.example.com` covers exactly one more label.
            if let Some((_, rest)) = name.split_once('.') {
                let suffix = format!(".{rest}");
                if let Some((_, k)) = self.wildcard.iter().find(|(s, _)| *s == suffix) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// What a listener's `tls` table says, with paths resolved.
#[derive(Debug, Default)]
pub struct ServerSettings<'a> {
    pub cert_key: Option<(&'a Path, &'a Path)>,
    pub certificates: Vec<(Vec<String>, &'a Path, &'a Path)>,
    pub client_ca: Option<&'a Path>,
    pub tls13_only: bool,
    pub alpn: Vec<Vec<u8>>,
    pub handshake_timeout: Duration,
    /// Mesh mode: present this identity's SVID and require the peer's.
    pub mesh: Option<Arc<spiffe::Identity>>,
    /// The instance's identity, when there is one (for `By=`).
    pub own_id: Option<String>,
    /// `match_sans`: the client certificate must carry a matching SAN.
    pub sans: Option<san::SanPolicy>,
}

/// Build a listener's server config; errors name the file at fault.
pub fn server_config(s: &ServerSettings<'_>) -> Result<ListenerTls, String> {
    let default = match (s.cert_key, &s.mesh) {
        (Some((c, k)), _) => Some(load_certified_key(c, k)?),
        (None, Some(id)) => Some(id.cert.clone()),
        (None, None) => None,
    };
    let mut certs = Vec::new();
    if let Some(d) = &default {
        certs.push(("default".to_string(), d.clone()));
    }
    let mut resolver = SniResolver::new(default);
    for (names, c, k) in &s.certificates {
        let key = load_certified_key(c, k)?;
        for n in names {
            resolver.add(n, key.clone());
        }
        certs.push((names.join(","), key));
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if s.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> =
        match (s.client_ca, &s.mesh) {
            (_, Some(id)) => Some(Arc::new(spiffe::SvidClientVerifier::new(id)?)),
            (Some(ca), None) => {
                let roots = Arc::new(load_roots(ca)?);
                Some(
                    WebPkiClientVerifier::builder_with_provider(roots, provider())
                        .build()
                        .map_err(|e| format!("client_ca {}: {e}", ca.display()))?,
                )
            }
            (None, None) => None,
        };
    let verifier = match (verifier, &s.sans) {
        (Some(inner), Some(sans)) => Some(Arc::new(san::SanClientVerifier {
            inner,
            sans: sans.clone(),
        })
            as Arc<dyn rustls::server::danger::ClientCertVerifier>),
        (v, None) => v,
        (None, Some(_)) => {
            return Err("match_sans needs client certificates: client_ca or mode = \"mesh\"".into())
        }
    };
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = s.alpn.clone();
    Ok(ListenerTls {
        config: Arc::new(config),
        handshake_timeout: s.handshake_timeout,
        verifies_clients: s.client_ca.is_some() || s.mesh.is_some(),
        trust_domain: s.mesh.as_ref().map(|id| id.trust_domain.clone()),
        own_id: s.own_id.clone(),
        certs,
        plaintext_permitted: false,
    })
}

/// Load `[identity]`: the SVID and key (checked as a pair), the bundle,
/// and the SVID's own SPIFFE ID in `trust_domain`.
pub fn load_identity(
    cert: &Path,
    key: &Path,
    bundle: &Path,
    trust_domain: &str,
) -> Result<spiffe::Identity, String> {
    let certified = load_certified_key(cert, key)?;
    let roots = load_roots(bundle)?;
    let leaf = certified
        .cert
        .first()
        .ok_or_else(|| format!("no certificate in {}", cert.display()))?;
    let id = spiffe::svid_id(leaf, trust_domain).map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(spiffe::Identity {
        cert: certified,
        roots: Arc::new(roots),
        trust_domain: trust_domain.to_string(),
        id,
    })
}

/// What `/certs` and the expiry metric say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Where it is used: `identity`, `listener NAME (default)`, `cluster NAME`.
    pub owner: String,
    pub subject: String,
    pub spiffe_id: Option<String>,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Not-after, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// Describe the leaf of `key`.
    pub fn of(owner: String, key: &CertifiedKey) -> Option<CertInfo> {
        let leaf = key.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        Some(CertInfo {
            owner,
            subject: cert.subject().to_string(),
            spiffe_id: spiffe::uri_sans(leaf)
                .ok()
                .and_then(|u| u.into_iter().find(|u| u.starts_with("spiffe://"))),
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// Why a handshake failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    Timeout,
    /// The client closed or reset the connection.
    Closed,
    /// Not TLS, or a malformed message.
    Protocol,
    /// No common version, cipher suite or ALPN protocol.
    Incompatible,
    /// A client certificate was required and not sent.
    NoClientCertificate,
    /// The client's certificate did not verify.
    BadClientCertificate,
    /// The client sent an alert (it rejected our certificate, say).
    AlertReceived,
    /// No certificate for the name the client asked for.
    NoCertificate,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
        HandshakeFailure::Protocol,
        HandshakeFailure::Incompatible,
        HandshakeFailure::NoClientCertificate,
        HandshakeFailure::BadClientCertificate,
        HandshakeFailure::AlertReceived,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::NoClientCertificate => "no_client_certificate",
            HandshakeFailure::BadClientCertificate => "bad_client_certificate",
            HandshakeFailure::AlertReceived => "alert_received",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Classify a failed handshake's error.
    pub fn of(e: &std::io::Error) -> Self {
        use rustls::Error as E;
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return HandshakeFailure::Closed;
        };
        match tls {
            E::NoCertificatesPresented => HandshakeFailure::NoClientCertificate,
            E::InvalidCertificate(_) => HandshakeFailure::BadClientCertificate,
            E::AlertReceived(_) => HandshakeFailure::AlertReceived,
            E::PeerIncompatible(_) | E::NoApplicationProtocol => HandshakeFailure::Incompatible,
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(_) => HandshakeFailure::Protocol,
            E::General(m) if m.contains("no server certificate") => HandshakeFailure::NoCertificate,
            _ => HandshakeFailure::Other,
        }
    }
}

/// Accept a TLS connection: the handshake within `handshake_timeout`.
pub async fn accept(
    tcp: monoio::net::TcpStream,
    tls: &ListenerTls,
    deadlines: &crate::deadline::Deadlines,
    early: Option<bytes::BytesMut>,
) -> Result<ServerStream, HandshakeFailure> {
    let conn = ServerConnection::new(tls.config.clone()).map_err(|_| HandshakeFailure::Other)?;
    let mut s = TlsStream::new(tcp, conn);
    if let Some(b) = early {
        s.push_ciphertext(&b);
    }
    let at = std::time::Instant::now() + tls.handshake_timeout;
    match deadlines.within(at, s.handshake()).await {
        Ok(Ok(())) => Ok(s),
        Ok(Err(e)) => Err(HandshakeFailure::of(&e)),
        Err(_) => Err(HandshakeFailure::Timeout),
    }
}
