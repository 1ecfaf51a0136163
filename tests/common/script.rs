//! Scripted upstreams on raw sockets: each connection runs a script on
//! its own thread, for tests that need an upstream to misbehave on command.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a scripted upstream saw.
#[derive(Default)]
pub struct Seen {
    /// Request lines, in arrival order.
    pub lines: Mutex<Vec<String>>,
    /// Connections accepted.
    pub connections: AtomicUsize,
    /// Connections the script closed on purpose.
    pub closed: AtomicUsize,
}

impl Seen {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// One request read off a raw connection: its line, headers, and body.
pub struct RawRequest {
    pub line: String,
    pub head: String,
    pub body: Vec<u8>,
}

/// Read one request (Content-Length bodies only); `None` on EOF.
pub fn read_request(s: &mut impl Read, buf: &mut Vec<u8>) -> Option<RawRequest> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    let line = head.lines().next().unwrap_or("").to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < len {
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf.drain(..len).collect();
    Some(RawRequest { line, head, body })
}

/// A scripted upstream: each connection runs `script` on its own thread.
pub fn scripted<F>(script: F) -> (SocketAddr, Arc<Seen>)
where
    F: Fn(TcpStream, &Seen) + Send + Sync + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let script = Arc::new(script);
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            seen2.connections.fetch_add(1, Ordering::SeqCst);
            let (seen, script) = (seen2.clone(), script.clone());
            std::thread::spawn(move || script(s, &seen));
        }
    });
    (addr, seen)
}

/// Close with RST (SO_LINGER 0), as a crashed or restarted upstream does.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

pub fn ok(s: &mut TcpStream, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// An HTTP/1.1 upstream on `ip:port` (port 0: any) answering every request
/// with its `name` as the body, keep-alive.
pub fn named(ip: &str, port: u16, name: &'static str) -> SocketAddr {
    let l = TcpListener::bind((ip, port)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while read_request(&mut s, &mut buf).is_some() {
                    let r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                        name.len()
                    );
                    if s.write_all(r.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
