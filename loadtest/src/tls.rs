//! https:// targets: rustls (ring provider) over monoio's rent-style TCP
//! stream. The handshake happens once per connection, before its first
//! request; it is not part of any request's latency.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};
use rustls_pki_types::pem::PemObject;

/// Build the client config: the system's roots, or only `ca`'s
/// certificates, or no verification at all (`insecure`).
pub fn client_config(insecure: bool, ca: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match ca {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                {
                    let cert = cert.with_context(|| format!("bad PEM in {}", path.display()))?;
                    roots
                        .add(cert)
                        .with_context(|| format!("bad certificate in {}", path.display()))?;
                }
                anyhow::ensure!(!roots.is_empty(), "no certificate in {}", path.display());
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                anyhow::ensure!(
                    !roots.is_empty(),
                    "no system root certificates found; use --ca FILE or --insecure"
                );
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry: a DNS name or an IP.
pub fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .with_context(|| format!("invalid TLS server name {host:?}"))
}

/// `--insecure`: accept any certificate, but still check handshake signatures.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection to the target, plain or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
}

impl Conn {
    /// Send all of `data`.
    pub async fn write_all(&mut self, data: Bytes) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data).await.0.map(|_| ()),
            Conn::Tls(t) => t.write_all(&data).await,
        }
    }

    /// Append what arrives to `buf`; `Ok(0)` at the end of the stream.
    pub async fn read(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => {
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(16 * 1024);
                }
                let owned = std::mem::take(buf);
                let (len, cap) = (owned.len(), owned.capacity());
                let (res, slice) = s.read(monoio::buf::SliceMut::new(owned, len, cap)).await;
                *buf = slice.into_inner();
                res
            }
            Conn::Tls(t) => t.read(buf).await,
        }
    }
}

/// rustls driven over a monoio stream.
pub struct TlsConn {
    tcp: TcpStream,
    tls: ClientConnection,
    raw: Vec<u8>,
    /// Decrypted bytes land here first. On the heap: a buffer on the stack
    /// of an async fn would make every request's future that large, and
    /// moving futures would copy it.
    plain: Box<[u8]>,
}

fn tls_error(e: rustls::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

impl TlsConn {
    /// Complete the handshake on a connected stream.
    pub async fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> std::io::Result<Self> {
        let tls = ClientConnection::new(config, name).map_err(tls_error)?;
        let mut me = TlsConn {
            tcp,
            tls,
            raw: Vec::with_capacity(16 * 1024),
            plain: vec![0u8; 16 * 1024].into_boxed_slice(),
        };
        while me.tls.is_handshaking() {
            me.flush().await?;
            if me.tls.wants_read() && me.fill().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        me.flush().await?;
        Ok(me)
    }

    /// The socket and the session after the handshake (every byte read
    /// was fed to the session), to drive HTTP/2 over them.
    pub fn into_parts(self) -> (TcpStream, ClientConnection) {
        (self.tcp, self.tls)
    }

    /// Send the TLS records rustls has queued.
    async fn flush(&mut self) -> std::io::Result<()> {
        while self.tls.wants_write() {
            let mut out = Vec::with_capacity(16 * 1024 + 64);
            self.tls.write_tls(&mut out)?;
            let (res, _) = self.tcp.write_all(out).await;
            res?;
        }
        Ok(())
    }

    /// Read TLS records from the socket and decrypt them; 0 at EOF.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut raw = std::mem::take(&mut self.raw);
        raw.clear();
        let (res, raw) = self.tcp.read(raw).await;
        self.raw = raw;
        let n = res?;
        let mut pending = &self.raw[..n];
        while !pending.is_empty() {
            self.tls.read_tls(&mut pending)?;
            self.tls.process_new_packets().map_err(tls_error)?;
        }
        Ok(n)
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.tls.writer().write_all(data)?;
        self.flush().await
    }

    async fn read(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        loop {
            match self.tls.reader().read(&mut self.plain) {
                Ok(0) => return Ok(0),
                Ok(n) => {
                    buf.extend_from_slice(&self.plain[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.fill().await? == 0 {
                        return Ok(0);
                    }
                    // Answer what the peer may have asked (key updates).
                    self.flush().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
