//! Interoperability with programs nobody here wrote: curl as the client and
//! nginx as the upstream, through the real proxy, on both I/O drivers.
//! `.ci/run` installs both; elsewhere the test is skipped (loudly) when they
//! are missing, unless OUTRIGGER_REQUIRE_INTEROP=1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use outrigger::worker::Driver;

both_drivers!(curl_through_outrigger_to_nginx);

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {cmd} || test -x /usr/sbin/{cmd}"),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_nginx(tag: &str) -> (Nginx, SocketAddr) {
    let port = closed_port().port();
    let dir = std::env::temp_dir().join(format!("outrigger-nginx-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  client_max_body_size 0;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      add_header x-upstream nginx;
      return 200 "nginx saw uri=$request_uri xff=$http_x_forwarded_for via=$http_via len=$content_length te=$http_transfer_encoding\n";
    }}
  }}
}}
"#,
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let bin = if have("nginx") && std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let child = Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        eventually(|| std::net::TcpStream::connect(addr).is_ok()),
        "nginx did not start"
    );
    (Nginx { child, dir }, addr)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn curl_through_outrigger_to_nginx(driver: Driver) {
    if !(have("nginx") && have("curl")) {
        assert!(
            std::env::var_os("OUTRIGGER_REQUIRE_INTEROP").is_none(),
            "nginx and curl are required (OUTRIGGER_REQUIRE_INTEROP is set)"
        );
        eprintln!("SKIPPED: nginx or curl not installed");
        return;
    }
    let (_nginx, up) = start_nginx(io_name(driver));
    let cfg = format!(
        "[runtime]\nworkers = 1\nio = \"{}\"\n[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"main\"\n[[routes.main]]\nmatch.path_prefix = \"/app/\"\nrewrite.path_prefix = \"/\"\ncluster = \"nginx\"\nresponse_headers = {{ set = {{ \"x-proxy\" = \"outrigger\" }} }}\n[clusters.nginx]\nendpoints = [\"{up}\"]\n",
        io_name(driver)
    );
    let server = start(&cfg);
    let base = format!("http://{}", server.local_addr("web").unwrap());

    let out = curl(&["-i", &format!("{base}/app/hello?x=1")]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-upstream: nginx"), "{out}");
    assert!(out.contains("x-proxy: outrigger"), "{out}");
    assert!(
        out.contains("nginx saw uri=/hello?x=1 xff=127.0.0.1 via=1.1 outrigger"),
        "{out}"
    );

    // A chunked upload from curl arrives at nginx as chunked.
    let body = "b".repeat(100_000);
    let out = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &body,
        &format!("{base}/app/upload"),
    ]);
    assert!(out.contains("te=chunked"), "{out}");
    // A Content-Length upload keeps its length.
    let out = curl(&["--data-binary", "hello", &format!("{base}/app/upload")]);
    assert!(out.contains("len=5"), "{out}");

    // Several requests on one curl connection (keep-alive both sides).
    let urls: Vec<String> = (0..5).map(|i| format!("{base}/app/{i}")).collect();
    let mut args: Vec<&str> = vec!["-i"];
    args.extend(urls.iter().map(String::as_str));
    let out = curl(&args);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 5, "{out}");
    // ...and they were one connection: curl connected once, then reused it.
    let mut args: Vec<&str> = vec!["-w", "%{num_connects}:%{http_code} "];
    for u in &urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    let out = curl(&args);
    assert_eq!(out, "1:200 0:200 0:200 0:200 0:200 ", "{out}");
    // No route → 404 from the proxy, seen by curl.
    let out = curl(&["-i", &format!("{base}/other")]);
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(server.shutdown(Duration::from_secs(5)));
}
