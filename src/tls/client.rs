//! TLS origination toward clusters: a cluster's compiled `tls` table
//! (roots or mesh identities, client certificate, SAN matchers, ALPN), the
//! digest of those settings that keys the upstream pools, and the client
//! handshake. docs/security.md, "TLS origination".

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;

use super::{load_certified_key, load_chain, load_roots, provider, san, spiffe, stream};
use super::{ClientStream, TlsStream};

/// A cluster's compiled `tls` table.
#[derive(Debug)]
pub struct ClusterTls {
    pub config: Arc<rustls::ClientConfig>,
    /// `server_name`; `None`: each endpoint's host as written.
    pub server_name: Option<String>,
    /// The client certificate presented, if any (for `/certs`).
    pub client_cert: Option<Arc<CertifiedKey>>,
    /// A digest of everything that decides whom a connection may talk to
    /// and as whom (roots, server name, accepted identities, client
    /// certificate, versions, ALPN): upstream pools are keyed by it, so
    /// no connection made under one set of settings serves another.
    pub digest: u64,
}

impl ClusterTls {
    /// The name to send and verify for an endpoint written as `written`
    /// (`host:port`).
    pub fn name_for(&self, written: &str) -> Option<rustls::pki_types::ServerName<'static>> {
        let host = match &self.server_name {
            Some(n) => n.as_str(),
            None => written
                .rsplit_once(':')
                .map_or(written, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']'),
        };
        rustls::pki_types::ServerName::try_from(host.to_string()).ok()
    }
}

/// What a cluster's `tls` table says, with paths resolved.
#[derive(Debug, Default)]
pub struct ClientSettings<'a> {
    pub ca: Option<&'a Path>,
    pub cert_key: Option<(&'a Path, &'a Path)>,
    pub alpn: Vec<Vec<u8>>,
    pub tls13_only: bool,
    pub server_name: Option<String>,
    /// Mesh mode: present this identity's SVID; the server's must name one
    /// of the patterns.
    pub mesh: Option<(Arc<spiffe::Identity>, Vec<spiffe::IdPattern>)>,
    /// `match_sans`: the server's certificate must carry a matching SAN.
    pub sans: Option<san::SanPolicy>,
}

/// Build a cluster's client config: the given roots or the system's, an
/// optional client certificate; sessions are resumed (rustls's in-memory
/// cache, shared by the cluster's connections on every worker).
pub fn client_config(s: &ClientSettings<'_>) -> Result<ClusterTls, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = if s.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    if let Some((id, identities)) = &s.mesh {
        let verifier = with_sans(
            Arc::new(spiffe::SvidServerVerifier::new(id, identities.clone())),
            &s.sans,
        );
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config =
            builder.with_client_cert_resolver(Arc::new(FixedClientCert(id.cert.clone())));
        config.alpn_protocols = s.alpn.clone();
        let mut d = transport_digest(s, &id.roots);
        d.update(id.trust_domain.as_bytes());
        for p in identities {
            d.update(format!("{p:?}").as_bytes());
        }
        return Ok(ClusterTls {
            config: Arc::new(config),
            server_name: s.server_name.clone(),
            client_cert: Some(id.cert.clone()),
            digest: finish_digest(d, Some(&id.cert)),
        });
    }
    let roots = match s.ca {
        Some(ca) => load_roots(ca)?,
        None => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system root certificates found; set tls.ca".into());
            }
            roots
        }
    };
    let digest = transport_digest(s, &roots);
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("TLS roots: {e}"))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(with_sans(webpki, &s.sans));
    let mut client_cert = None;
    let mut config = match s.cert_key {
        Some((c, k)) => {
            // Checked as a pair first, for the same message as listeners.
            client_cert = Some(load_certified_key(c, k)?);
            let chain = load_chain(c)?;
            let der = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| format!("cannot read a private key from {}: {e}", k.display()))?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|e| format!("client certificate {}: {e}", c.display()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = s.alpn.clone();
    let digest = finish_digest(digest, client_cert.as_ref());
    Ok(ClusterTls {
        config: Arc::new(config),
        server_name: s.server_name.clone(),
        client_cert,
        digest,
    })
}

/// A server verifier with the cluster's `match_sans` after it, if any.
fn with_sans(
    inner: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    sans: &Option<san::SanPolicy>,
) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    match sans {
        Some(sans) => Arc::new(san::SanServerVerifier {
            inner,
            sans: sans.clone(),
        }),
        None => inner,
    }
}

/// The start of a cluster's transport digest: mode, versions, ALPN, server
/// name and the roots it verifies with.
fn transport_digest(s: &ClientSettings<'_>, roots: &RootCertStore) -> ring::digest::Context {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    let field = |d: &mut ring::digest::Context, b: &[u8]| {
        d.update(&(b.len() as u64).to_be_bytes());
        d.update(b);
    };
    field(&mut d, if s.mesh.is_some() { b"mesh" } else { b"tls" });
    field(&mut d, &[u8::from(s.tls13_only)]);
    for a in &s.alpn {
        field(&mut d, a);
    }
    field(&mut d, s.server_name.as_deref().unwrap_or("").as_bytes());
    field(
        &mut d,
        s.sans
            .as_ref()
            .map(san::SanPolicy::describe)
            .unwrap_or_default()
            .as_bytes(),
    );
    for anchor in &roots.roots {
        field(&mut d, anchor.subject.as_ref());
        field(&mut d, anchor.subject_public_key_info.as_ref());
    }
    d
}

/// The digest with the client certificate chain, as a non-zero u64 (zero
/// stands for plaintext in pool keys).
fn finish_digest(mut d: ring::digest::Context, cert: Option<&Arc<CertifiedKey>>) -> u64 {
    for c in cert.map(|c| c.cert.as_slice()).unwrap_or_default() {
        d.update(&(c.len() as u64).to_be_bytes());
        d.update(c.as_ref());
    }
    let out = d.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_ref()[..8]);
    u64::from_be_bytes(first).max(1)
}

/// Always presents one certificate (this instance's SVID).
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Connect TLS over a connected stream (the caller bounds it in time).
pub async fn connect(
    tcp: monoio::net::TcpStream,
    tls: &ClusterTls,
    name: rustls::pki_types::ServerName<'static>,
) -> std::io::Result<ClientStream> {
    let conn =
        rustls::ClientConnection::new(tls.config.clone(), name).map_err(stream::tls_error)?;
    let mut s = TlsStream::new(tcp, conn);
    s.handshake().await?;
    Ok(s)
}
