//! `outrigger certs demo DIR`: a throwaway trust domain for trying mesh
//! mode in a minute. Not for production: the CA is made on the spot and
//! its key thrown away, so nothing can be re-issued or revoked.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

/// The workloads of the demo: file stem and SPIFFE path.
pub const WORKLOADS: [(&str, &str); 2] = [
    ("frontend", "ns/shop/sa/frontend"),
    ("orders", "ns/shop/sa/orders"),
];

/// Write `bundle.pem` and an SVID and key per workload into `dir`; returns
/// the files written.
pub fn write(dir: &Path, trust_domain: &str) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        !trust_domain.is_empty() && !trust_domain.contains(['/', ':']),
        "\"{trust_domain}\" is not a trust domain name (like example.org)"
    );
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(30);
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{trust_domain} demo CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::minutes(5);
    ca_params.not_after = until;
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut written = Vec::new();
    let mut put = |name: String, text: String| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    put("bundle.pem".into(), ca.pem())?;
    for (stem, path) in WORKLOADS {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let id = format!("spiffe://{trust_domain}/{path}");
        p.subject_alt_names
            .push(SanType::URI(id.as_str().try_into()?));
        p.distinguished_name.push(DnType::CommonName, stem);
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = until;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca, &ca_key)?;
        put(format!("{stem}.pem"), cert.pem())?;
        put(format!("{stem}.key"), key.serialize_pem())?;
    }
    Ok(written)
}
