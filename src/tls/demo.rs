//! `outrigger certs demo DIR`: a throwaway trust domain for trying mesh
//! mode in a minute, and `outrigger certs issue` to re-issue one SVID from
//! it (for practising rotation). Not for production: the CA lives in a
//! file next to its certificates, with no revocation.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// The workloads of the demo: file stem and SPIFFE path.
pub const WORKLOADS: [(&str, &str); 2] = [
    ("frontend", "ns/shop/sa/frontend"),
    ("orders", "ns/shop/sa/orders"),
];

/// Write `bundle.pem` (the CA), `ca.key` (its key, mode 0600) and an SVID
/// and key (0600) per workload into `dir`; returns the files written.
pub fn write(dir: &Path, trust_domain: &str) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        !trust_domain.is_empty() && !trust_domain.contains(['/', ':']),
        "\"{trust_domain}\" is not a trust domain name (like example.org)"
    );
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{trust_domain} demo CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::minutes(5);
    ca_params.not_after = now + time::Duration::days(365);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut written = vec![
        put(&dir.join("bundle.pem"), &ca.pem(), 0o644)?,
        put(&dir.join("ca.key"), &ca_key.serialize_pem(), 0o600)?,
    ];
    for (stem, path) in WORKLOADS {
        let id = format!("spiffe://{trust_domain}/{path}");
        written.extend(svid(&ca, &ca_key, &id, &[], 30, &dir.join(stem))?);
    }
    Ok(written)
}

/// `outrigger certs issue`: a new SVID for `id`, signed by the CA in
/// `ca_cert` (PEM) with `ca_key`, valid for `days`, written to `out.pem`
/// and `out.key` (0600).
pub fn issue(
    ca_cert: &Path,
    ca_key: &Path,
    id: &str,
    days: u32,
    out: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    issue_naming(ca_cert, ca_key, id, &[], days, out)
}

/// `issue`, with `names` (DNS names, or IP addresses) as further subject
/// alternative names, for peers that check a host name too (nginx's and
/// HAProxy's upstream verification; `outrigger-load compare --topology
/// mesh`).
pub fn issue_naming(
    ca_cert: &Path,
    ca_key: &Path,
    id: &str,
    names: &[&str],
    days: u32,
    out: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    crate::tls::spiffe::validate_id(id).map_err(|why| anyhow::anyhow!("--id {id}: {why}"))?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let key = KeyPair::from_pem(&read(ca_key)?)
        .with_context(|| format!("{}: not a PEM private key", ca_key.display()))?;
    let params = CertificateParams::from_ca_cert_pem(&read(ca_cert)?)
        .with_context(|| format!("{}: not a PEM CA certificate", ca_cert.display()))?;
    // The issuer as rcgen needs it: the CA's own name and key (the
    // signature and the issuer name are what a verifier checks).
    let ca = params.self_signed(&key)?;
    svid(&ca, &key, id, names, days, out)
}

/// One X.509-SVID: `id` as its URI SAN (and `names` beside it), written
/// as `out.pem` and `out.key`.
fn svid(
    ca: &Certificate,
    ca_key: &KeyPair,
    id: &str,
    names: &[&str],
    days: u32,
    out: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let now = time::OffsetDateTime::now_utc();
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.subject_alt_names.push(SanType::URI(id.try_into()?));
    for name in names {
        p.subject_alt_names
            .push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into()?),
            });
    }
    let name = out
        .file_name()
        .map_or("svid".to_string(), |n| n.to_string_lossy().to_string());
    p.distinguished_name.push(DnType::CommonName, name);
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(i64::from(days.max(1)));
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, ca, ca_key)?;
    let with = |ext: &str| {
        let mut s = out.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    Ok(vec![
        put(&with(".pem"), &cert.pem(), 0o644)?,
        put(&with(".key"), &key.serialize_pem(), 0o600)?,
    ])
}

/// Write `text` to `path` with `mode` (a private key is never readable by
/// others, not even for a moment): a new file renamed over the old one.
fn put(path: &Path, text: &str, mode: u32) -> anyhow::Result<PathBuf> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp~");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.to_path_buf())
}
