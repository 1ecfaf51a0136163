//! A minimal blocking HTTP/1.1 client for the end-to-end tests: raw bytes
//! out, parsed responses in (Content-Length, chunked or close-delimited).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Read exactly `n` raw bytes (after a 101, say), starting with any
    /// already buffered.
    pub fn read_raw(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "closed before {n} bytes");
        }
        self.buf.drain(..n).collect()
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// GET with keep-alive.
    pub fn get(&mut self, path: &str, host: &str, extra: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").as_bytes());
        self.read_response(false).expect("a response")
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return false,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Read one response; `None` if the connection closed first.
    pub fn read_response(&mut self, head_request: bool) -> Option<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&self.buf) {
                let status = r.code.unwrap();
                let hs: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).to_string(),
                        )
                    })
                    .collect();
                self.buf.drain(..n);
                let mut resp = Response {
                    status,
                    headers: hs,
                    body: Vec::new(),
                };
                if (100..200).contains(&status) {
                    return Some(resp);
                }
                if head_request || status == 204 || status == 304 {
                    return Some(resp);
                }
                if let Some(cl) = resp.header("content-length") {
                    let cl: usize = cl.parse().unwrap();
                    while self.buf.len() < cl {
                        assert!(self.fill(), "closed mid-body");
                    }
                    resp.body = self.buf.drain(..cl).collect();
                } else if resp
                    .header("transfer-encoding")
                    .is_some_and(|t| t.contains("chunked"))
                {
                    resp.body = self.read_chunked();
                } else {
                    while self.fill() {}
                    resp.body = std::mem::take(&mut self.buf);
                }
                return Some(resp);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(self.fill());
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            self.buf.drain(..line_end + 2);
            if size == 0 {
                loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        self.buf.drain(..i + 2);
                        if i == 0 {
                            return body;
                        }
                    } else {
                        assert!(self.fill());
                    }
                }
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill());
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }
}

/// Send raw bytes on a fresh connection; return the first response, if any.
pub fn one_shot(addr: SocketAddr, raw: &[u8]) -> Option<Response> {
    let mut c = Client::connect(addr);
    c.send(raw);
    c.read_response(false)
}
