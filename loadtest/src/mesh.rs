//! `compare --topology mesh`: the path mesh users compare. The generator
//! calls sidecar A (plain HTTP/1.1, or h2c with `--h2`); A carries the call
//! over mutual TLS to sidecar B, which hands it to the app over plain
//! HTTP/1.1 on loopback:
//!
//! ```text
//! generator -> A (client's sidecar) ==mTLS==> B (server's sidecar) -> app
//! ```
//!
//! Each pair is built from one proxy: Outrigger (HTTP/2 between the
//! sidecars, SPIFFE mesh mode), HAProxy (HTTP/2 over TLS with client
//! certificates) and nginx (HTTP/1.1 over TLS with keep-alive and client
//! certificates: nginx has no HTTP/2 upstream). Both sidecars of a pair
//! run pinned to the proxy cores; the pair's CPU per request is the sum of
//! both. Certificates come from the demo CA (`tls::demo`, ECDSA P-256):
//! each leaf names its SPIFFE ID (URI SAN), `localhost` and 127.0.0.1, so
//! every proxy verifies the other side in the way it knows.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::proxies::{find, free_port, nginx_command, outrigger_binary, spawn, Layout, Proxy};

/// The trust domain of the benchmark's certificates.
const TRUST_DOMAIN: &str = "bench.local";

/// The files of one sidecar's identity.
pub(crate) struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key in one file (HAProxy's `crt`).
    pub combined: PathBuf,
    pub spiffe_id: String,
}

/// A CA and one identity per sidecar.
pub(crate) struct Certs {
    pub bundle: PathBuf,
    pub a: Leaf,
    pub b: Leaf,
}

/// Make the CA and both leaves in `dir` (the CA of `outrigger certs demo`,
/// each leaf issued by it as `outrigger certs issue` does, with `localhost`
/// and 127.0.0.1 beside its SPIFFE ID).
pub(crate) fn certs(dir: &Path) -> anyhow::Result<Certs> {
    use outrigger::tls::demo;
    demo::write(dir, TRUST_DOMAIN)?;
    let (bundle, ca_key) = (dir.join("bundle.pem"), dir.join("ca.key"));
    let leaf = |name: &str| -> anyhow::Result<Leaf> {
        let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/ns/mesh/sa/{name}");
        let out = dir.join(name);
        demo::issue_naming(
            &bundle,
            &ca_key,
            &spiffe_id,
            &["localhost", "127.0.0.1"],
            1,
            &out,
        )?;
        let leaf = Leaf {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            combined: dir.join(format!("{name}.both.pem")),
            spiffe_id,
        };
        let both = std::fs::read_to_string(&leaf.cert)? + &std::fs::read_to_string(&leaf.key)?;
        std::fs::write(&leaf.combined, both)?;
        Ok(leaf)
    };
    Ok(Certs {
        a: leaf("a")?,
        b: leaf("b")?,
        bundle,
    })
}

/// Start the pair built from `kind` in front of `app`: the address the
/// generator calls (A's) and both processes.
pub(crate) fn start_pair(
    kind: &str,
    layout: &Layout<'_>,
    dir: &Path,
    app: SocketAddr,
    certs: &Certs,
) -> anyhow::Result<(SocketAddr, Vec<Proxy>)> {
    let dir = dir.join(format!("mesh-{kind}"));
    std::fs::create_dir_all(&dir)?;
    let (a, b) = (free_port()?, free_port()?);
    let pair = Pair {
        layout,
        dir: &dir,
        a,
        b,
        app,
        certs,
    };
    let (ca, cb) = match kind {
        "outrigger" => outrigger_pair(&pair)?,
        "haproxy" => haproxy_pair(&pair)?,
        "nginx" => nginx_pair(&pair)?,
        other => anyhow::bail!("no mesh pair for {other:?}"),
    };
    // B first: A's first call needs it.
    let pb = spawn(&format!("{kind} (sidecar B)"), cb, layout.proxy_cpus, b)?;
    let pa = spawn(&format!("{kind} (sidecar A)"), ca, layout.proxy_cpus, a)?;
    Ok((a, vec![pa, pb]))
}

/// What a pair's configs are made of: where A and B listen, the app
/// behind B, the certificates, the cores and the directory for files.
struct Pair<'a> {
    layout: &'a Layout<'a>,
    dir: &'a Path,
    a: SocketAddr,
    b: SocketAddr,
    app: SocketAddr,
    certs: &'a Certs,
}

/// Outrigger: A's cluster speaks HTTP/2 over mesh TLS (its SVID shown, B's
/// required); B's listener verifies A's and allows only it.
fn outrigger_pair(p: &Pair<'_>) -> anyhow::Result<(Command, Command)> {
    let (layout, dir, certs) = (p.layout, p.dir, p.certs);
    let (a, b, app) = (p.a, p.b, p.app);
    let bin = outrigger_binary(layout)?;
    let workers = layout.proxy_cpus.len().max(1);
    let identity = |leaf: &Leaf| {
        format!(
            "[identity]\ncert = \"{}\"\nkey = \"{}\"\ntrust_bundle = \"{}\"\ntrust_domain = \"{TRUST_DOMAIN}\"\n",
            leaf.cert.display(),
            leaf.key.display(),
            certs.bundle.display()
        )
    };
    let head = format!(
        "[runtime]\nworkers = {workers}\npin_workers = true\n[admin]\naddress = \"127.0.0.1:0\"\n"
    );
    let config_a = format!(
        "{head}{}[listeners.out]\naddress = \"{a}\"\nprotocol = \"http\"\nroutes = \"out\"\n[[routes.out]]\nmatch.path_prefix = \"/\"\ncluster = \"b\"\n[clusters.b]\nendpoints = [\"{b}\"]\nprotocol = \"http2\"\ntls = {{ mode = \"mesh\", identities = [\"{}\"] }}\n",
        identity(&certs.a),
        certs.b.spiffe_id
    );
    let config_b = format!(
        "{head}{}[listeners.in]\naddress = \"{b}\"\nprotocol = \"http\"\nroutes = \"in\"\ntls = {{ mode = \"mesh\" }}\nallow_identities = [\"{}\"]\n[[routes.in]]\nmatch.path_prefix = \"/\"\ncluster = \"app\"\n[clusters.app]\nendpoints = [\"{app}\"]\nmax_idle_connections = 1024\n",
        identity(&certs.b),
        certs.a.spiffe_id
    );
    let args = ["run", "--no-watch", "--log-level", "warn", "--config"];
    Ok((
        configured(&bin, &args, &dir.join("a.toml"), config_a)?,
        configured(&bin, &args, &dir.join("b.toml"), config_b)?,
    ))
}

/// `bin ARGS... PATH`, with `config` written to `path`.
fn configured(bin: &Path, args: &[&str], path: &Path, config: String) -> anyhow::Result<Command> {
    std::fs::write(path, config)?;
    let mut cmd = Command::new(bin);
    cmd.args(args).arg(path);
    Ok(cmd)
}

/// HAProxy: A's server line speaks HTTP/2 over TLS (ALPN h2) with A's
/// certificate, verifying B's against the CA; B's bind requires a client
/// certificate from the CA.
fn haproxy_pair(p: &Pair<'_>) -> anyhow::Result<(Command, Command)> {
    let (layout, dir, certs) = (p.layout, p.dir, p.certs);
    let (a, b, app) = (p.a, p.b, p.app);
    let bin = find("haproxy", &["/usr/sbin/haproxy"]).context("haproxy is not installed")?;
    let head = format!(
        "global\n  nbthread {n}\n  maxconn 8192\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n",
        n = layout.proxy_cpus.len().max(1)
    );
    let config_a = format!(
        "{head}frontend out\n  bind {a}{h2}\n  default_backend b\nbackend b\n  server b {b} ssl verify required ca-file {ca} crt {crt} alpn h2 sni str(localhost)\n",
        h2 = if layout.h2 { " proto h2" } else { "" },
        ca = certs.bundle.display(),
        crt = certs.a.combined.display(),
    );
    let config_b = format!(
        "{head}frontend in\n  bind {b} ssl crt {crt} ca-file {ca} verify required alpn h2,http/1.1\n  default_backend app\nbackend app\n  server app {app}\n",
        ca = certs.bundle.display(),
        crt = certs.b.combined.display(),
    );
    let args = ["-db", "-f"];
    Ok((
        configured(&bin, &args, &dir.join("a.cfg"), config_a)?,
        configured(&bin, &args, &dir.join("b.cfg"), config_b)?,
    ))
}

/// nginx: A proxies over HTTP/1.1 and TLS with keep-alive to B, showing
/// A's certificate and verifying B's (name `localhost`, CA); B requires a
/// client certificate from the CA.
fn nginx_pair(p: &Pair<'_>) -> anyhow::Result<(Command, Command)> {
    let (layout, dir, certs) = (p.layout, p.dir, p.certs);
    let (a, b, app) = (p.a, p.b, p.app);
    let n = layout.proxy_cpus.len().max(1);
    let common = "proxy_http_version 1.1; proxy_set_header Connection \"\";";
    let server_a = format!(
        "server {{ listen {a} reuseport{h2}; location / {{ proxy_pass https://up; {common} proxy_ssl_certificate {cert}; proxy_ssl_certificate_key {key}; proxy_ssl_trusted_certificate {ca}; proxy_ssl_verify on; proxy_ssl_name localhost; proxy_ssl_server_name on; proxy_ssl_session_reuse on; }} }}",
        h2 = if layout.h2 { " http2" } else { "" },
        cert = certs.a.cert.display(),
        key = certs.a.key.display(),
        ca = certs.bundle.display(),
    );
    let server_b = format!(
        "server {{ listen {b} ssl reuseport; ssl_certificate {cert}; ssl_certificate_key {key}; ssl_client_certificate {ca}; ssl_verify_client on; location / {{ proxy_pass http://up; {common} }} }}",
        cert = certs.b.cert.display(),
        key = certs.b.key.display(),
        ca = certs.bundle.display(),
    );
    Ok((
        nginx_command(&dir.join("a"), n, b, &server_a)?,
        nginx_command(&dir.join("b"), n, app, &server_b)?,
    ))
}
