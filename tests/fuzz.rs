//! Fuzzing on stable Rust, as ordinary tests: a small mutation engine
//! (byte flips, inserts, deletes, truncations, splices between corpus
//! entries, repeats of interesting tokens) drives every parser that takes
//! bytes from a peer or a file. Each target first replays every input that
//! ever failed it (`tests/fuzz-corpus/TARGET/*.hex`) and its seed corpus,
//! then mutated inputs from a seed that is fresh on every run (printed
//! before the first iteration; `FUZZ_SEED=0x...` repeats a run): a fixed
//! number of iterations in CI, or `FUZZ_SECONDS=N` seconds each, which is
//! what `loadtest/bench/fuzz.sh` does. A failure prints the seed, the
//! iteration and the input in hex.
//!
//! Why not cargo-fuzz: it needs nightly. Why not proptest or bolero: the
//! targets are byte parsers where mutation of real inputs finds more than
//! generated structure, and this needs no dependency. Properties checked
//! besides "no panic": parsers never accept more bytes than they were
//! given; what the proxy would send upstream re-parses to the same
//! request; a config that compiles survives a `toml` round-trip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::BytesMut;

/// Deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b"0",
    b"\x00",
    b"\xff",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Host: a\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b";ext=1",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"-",
    b"spiffe://",
    b"%",
    b"\"",
    b"[",
    b"]",
    b"=",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = corpus[rng.below(corpus.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, rng.next() as u8),
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i + 1).min(16);
                v.drain(i..i + n);
            }
            3 => v.truncate(at),
            4 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                let tail: Vec<u8> = other[from..].to_vec();
                v.truncate(at);
                v.extend_from_slice(&tail);
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())];
                for _ in 0..=rng.below(3) {
                    v.splice(at..at, t.iter().copied());
                }
            }
        }
    }
    v
}

/// Run `target` on its regression corpus, its seed corpus, then mutated
/// inputs: `ci_runs` of them by default, or for `FUZZ_SECONDS` seconds.
/// The seed is `FUZZ_SEED` (hex, `0x` optional) or a fresh one, printed
/// before the first iteration; a failure names the seed, the iteration and
/// the input (hex), which then belongs in `tests/fuzz-corpus/TARGET/`.
fn fuzz(name: &str, corpus: &[&[u8]], target: impl FnMut(&[u8])) {
    fuzz_n(name, corpus, 20_000, target)
}

/// The seed from `FUZZ_SEED`, or a fresh one.
fn seed() -> u64 {
    if let Ok(s) = std::env::var("FUZZ_SEED") {
        let hex = s.trim().trim_start_matches("0x");
        return u64::from_str_radix(hex, 16)
            .unwrap_or_else(|e| panic!("FUZZ_SEED={s:?} is not a hex number: {e}"))
            | 1;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    // Distinct per target even when they start in the same nanosecond.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (t.as_nanos() as u64 ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

fn hex(input: &[u8]) -> String {
    input.iter().map(|b| format!("{b:02x}")).collect()
}

/// The inputs that once failed `name`, one hex line per file
/// (`tests/fuzz-corpus/NAME/*.hex`); replayed before anything else.
fn regressions(name: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "hex"))
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let text: String = text.split_whitespace().collect();
            (0..text.len() / 2)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

/// `fuzz` with `ci_runs` iterations by default (for targets that cost a
/// connection).
fn fuzz_n(name: &str, corpus: &[&[u8]], ci_runs: u64, mut target: impl FnMut(&[u8])) {
    let seconds: Option<u64> = ["FUZZ_SECONDS", "OUTRIGGER_FUZZ_SECONDS"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .and_then(|s| s.parse().ok());
    let seed = seed();
    eprintln!("fuzz {name}: seed {seed:#x} (repeat with FUZZ_SEED={seed:#x})");
    let mut run = |input: &[u8], what: &str| {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(input)));
        if let Err(e) = outcome {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "fuzz {name}: {what} failed (seed {seed:#x}; FUZZ_SEED={seed:#x} repeats it): {msg}\ninput ({} bytes, hex; add it as tests/fuzz-corpus/{name}/NAME.hex): {}",
                input.len(),
                hex(input)
            );
        }
    };
    for (i, r) in regressions(name).iter().enumerate() {
        run(r, &format!("regression input {i}"));
    }
    let corpus: Vec<Vec<u8>> = corpus.iter().map(|c| c.to_vec()).collect();
    for (i, c) in corpus.iter().enumerate() {
        run(c, &format!("seed corpus entry {i}"));
    }
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut runs: u64 = 0;
    loop {
        let input = mutate(&mut rng, &corpus);
        run(&input, &format!("iteration {runs}"));
        runs += 1;
        match seconds {
            Some(s) if started.elapsed() >= Duration::from_secs(s) => break,
            None if runs >= ci_runs => break,
            _ => {}
        }
    }
    eprintln!(
        "fuzz {name}: {runs} executions in {:?}, seed {seed:#x}",
        started.elapsed()
    );
}

fn limits() -> outrigger::http::codec::HeadLimits {
    outrigger::http::codec::HeadLimits {
        max_head_bytes: 8192,
        max_headers: 64,
    }
}

#[test]
fn request_parser() {
    let corpus: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET http://a/b HTTP/1.0\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ];
    fuzz("request_parser", corpus, |input| {
        let mut buf = BytesMut::from(input);
        if let Ok(Some(head)) = outrigger::http::codec::parse_request(&mut buf, limits()) {
            // The head taken is the input up to and including its blank
            // line (CRLF, or a bare LF as RFC 9112 §2.2 allows); the rest
            // (a body, a pipelined request) stays.
            let consumed = input.len() - buf.len();
            let taken = &input[..consumed];
            assert!(
                taken.ends_with(b"\n\n") || taken.ends_with(b"\n\r\n"),
                "took {consumed} bytes not ending at a blank line"
            );
            assert_eq!(&buf[..], &input[consumed..]);
            // Whatever is accepted has a method and a path.
            assert!(!head.method.is_empty());
            let _ = head.path();
        }
    });
}

#[test]
fn response_parser() {
    let corpus: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.0 301 Moved\r\nLocation: /x\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ];
    fuzz("response_parser", corpus, |input| {
        let mut buf = BytesMut::from(input);
        if let Ok(Some(resp)) = outrigger::http::codec::parse_response(&mut buf, limits()) {
            assert!((100..=999).contains(&resp.status));
            let _ = resp.framing(false);
        }
    });
}

#[test]
fn chunked_decoder() {
    let corpus: &[&[u8]] = &[
        b"5\r\nhello\r\n0\r\n\r\n",
        b"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
        b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n",
    ];
    fuzz("chunked_decoder", corpus, |input| {
        let mut d = outrigger::http::chunked::ChunkedDecoder::default();
        let mut buf = BytesMut::from(input);
        let mut total = 0usize;
        for _ in 0..10_000 {
            match d.decode(&mut buf) {
                Ok(Some(outrigger::http::chunked::Chunk::Data(data))) => {
                    total += data.len();
                    assert!(total <= input.len(), "more payload than input");
                }
                Ok(Some(outrigger::http::chunked::Chunk::End(_))) | Ok(None) | Err(_) => break,
            }
        }
    });
}

/// What the proxy sends upstream re-parses to the same request line and
/// headers (minus the ones it owns).
#[test]
fn forwarded_request_reparses() {
    let corpus: &[&[u8]] = &[
        b"GET /a/b?c=d HTTP/1.1\r\nHost: svc\r\nX-One: 1\r\nX-Two: two\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nX-Forwarded-For: 10.0.0.1\r\n\r\nabc",
        b"GET / HTTP/1.0\r\nUser-Agent: z\r\n\r\n",
    ];
    let snapshot = outrigger::config::compile(
        std::path::Path::new("<fuzz>"),
        "[listeners.l]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n[[routes.r]]\nmatch.path_prefix = \"/\"\ncluster = \"c\"\n[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let route = &snapshot.route_tables["r"].routes[0];
    fuzz("forwarded_request_reparses", corpus, |input| {
        let mut buf = BytesMut::from(input);
        let Ok(Some(head)) = outrigger::http::codec::parse_request(&mut buf, limits()) else {
            return;
        };
        let out = outrigger::http::upstream_request(&head, route);
        let mut again = BytesMut::from(&out[..]);
        let big = outrigger::http::codec::HeadLimits {
            max_head_bytes: 64 * 1024,
            max_headers: 256,
        };
        let re = match outrigger::http::codec::parse_request(&mut again, big) {
            Ok(Some(r)) => r,
            other => panic!(
                "the proxy's own request must parse: {other:?}\nin:  {:?}\nout: {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(re.method, head.method);
        assert_eq!(re.path(), head.path());
        // Names the client listed in Connection are hop-by-hop too
        // (RFC 9110 §7.6.1): dropped on purpose.
        let listed = outrigger::http::codec::connection_listed(&head.headers);
        for h in &head.headers {
            let name = String::from_utf8_lossy(&h.name).to_ascii_lowercase();
            if outrigger::http::codec::is_hop_by_hop(h, &listed) {
                continue;
            }
            if [
                "host",
                "x-forwarded-for",
                "via",
                "x-forwarded-proto",
                "x-request-id",
                "content-length",
                "transfer-encoding",
                "connection",
                "keep-alive",
                "te",
                "trailer",
                "upgrade",
                "expect",
                "proxy-connection",
                "x-outrigger-attempts",
                "x-forwarded-client-cert",
            ]
            .contains(&name.as_str())
            {
                continue;
            }
            assert!(
                re.headers
                    .iter()
                    .any(|r| r.name.eq_ignore_ascii_case(&h.name) && r.value == h.value),
                "{name} lost\nin:  {:?}\nout: {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&out)
            );
        }
    });
}

#[test]
fn config_compiler() {
    let corpus: &[&[u8]] = &[
        include_bytes!("../configs/sidecar.toml"),
        include_bytes!("../configs/demo.toml"),
        include_bytes!("../configs/tcp-proxy.toml"),
        include_bytes!("../configs/transparent.toml"),
    ];
    // The shipped configs themselves compile.
    for c in corpus {
        let text = std::str::from_utf8(c).unwrap();
        outrigger::config::compile(std::path::Path::new("<shipped>"), text)
            .unwrap_or_else(|e| panic!("a shipped config does not compile: {e}"));
    }
    fuzz("config_compiler", corpus, |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        if let Ok(s) = outrigger::config::compile(std::path::Path::new("<fuzz>"), text) {
            // A config that compiles survives a TOML round-trip: the same
            // listeners, clusters, endpoints and routes, setting for setting.
            let value: toml::Value = toml::from_str(text).unwrap();
            let again = toml::to_string(&value).unwrap();
            let s2 = outrigger::config::compile(std::path::Path::new("<fuzz>"), &again)
                .unwrap_or_else(|e| panic!("round-trip broke a valid config:\n{e}\n{again}"));
            assert_eq!(canonical(&s), canonical(&s2), "{text}\n---\n{again}");
        }
    });
}

/// What a compiled snapshot does, as text: every listener's address,
/// protocol, limits and TLS presence; every cluster's endpoints, weights,
/// balancer and timeouts; every route table's routes in order.
fn canonical(s: &outrigger::config::Snapshot) -> String {
    let mut out = format!("{:?}\n", s.runtime);
    for l in &s.listeners {
        out += &format!(
            "listener {} {} {:?} {:?} {:?} {} {:?} tls={}\n",
            l.name,
            l.address,
            l.protocol,
            l.http,
            l.idle_timeout,
            l.max_connections,
            l.splice,
            l.tls.is_some()
        );
    }
    let mut clusters: Vec<_> = s.clusters.iter().collect();
    clusters.sort_by(|a, b| a.0.cmp(b.0));
    for (name, c) in clusters {
        let eps: Vec<_> = c.endpoints.iter().map(|e| (e.address, e.weight)).collect();
        out += &format!(
            "cluster {name} {eps:?} {:?} {:?} {:?} {:?} tls={}\n",
            c.balance,
            c.hash_on,
            c.connect_timeout,
            c.protocol,
            c.tls.is_some()
        );
    }
    let mut tables: Vec<_> = s.route_tables.iter().collect();
    tables.sort_by(|a, b| a.0.cmp(b.0));
    for (name, t) in tables {
        for r in &t.routes {
            out += &format!(
                "route {name} {} {:?} {:?} {:?}\n",
                r.name, r.host, r.path, r.methods
            );
        }
    }
    out
}

#[test]
fn small_parsers() {
    let corpus: &[&[u8]] = &[
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        b"spiffe://example.org/ns/a/*",
        b"GET / HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
    ];
    fuzz("small_parsers", corpus, |input| {
        let s = String::from_utf8_lossy(input);
        use outrigger::trace::context::{inject, parse_b3_single, parse_traceparent};
        // An accepted context, written out as the proxy sends it upstream,
        // reads back as the same trace, span and decision (both formats).
        let contexts = [parse_traceparent(&s, None), parse_b3_single(&s)];
        for ctx in contexts.into_iter().flatten() {
            let mut out = Vec::new();
            inject(&ctx, true, true, &mut out);
            let text = String::from_utf8(out).unwrap();
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_else(|| panic!("{name} missing in {text:?}"))
            };
            for back in [
                parse_traceparent(value("traceparent: "), None),
                parse_b3_single(value("b3: ")),
            ] {
                let back = back.unwrap_or_else(|| panic!("{text:?} does not parse back"));
                assert_eq!((back.trace_id, back.span_id), (ctx.trace_id, ctx.span_id));
                assert_eq!(back.sampled.unwrap_or(false), ctx.sampled.unwrap_or(false));
            }
        }
        // An accepted identity pattern prints as text that parses to it.
        if let Ok(p) = outrigger::tls::spiffe::IdPattern::parse(&s) {
            assert_eq!(
                outrigger::tls::spiffe::IdPattern::parse(&p.to_string()),
                Ok(p)
            );
        }
        let _ = outrigger::tls::sni::parse_hello(input);
        let _ = outrigger::sidecar::detect::classify(input);
        let _ = outrigger::discovery::dns::parse(
            input,
            u16::from_be_bytes([
                input.first().copied().unwrap_or(0),
                input.get(1).copied().unwrap_or(0),
            ]),
            "a.example",
            outrigger::discovery::dns::RecordType::A,
        );
        let _ = outrigger::discovery::dns::parse_srv(
            input,
            u16::from_be_bytes([
                input.first().copied().unwrap_or(0),
                input.get(1).copied().unwrap_or(0),
            ]),
            "_http._tcp.a.example",
        );
        let _ = outrigger::tls::spiffe::uri_sans(input);
        let _ = outrigger::upstream::HashOn::parse(&s);
        let _ = outrigger::grpc::parse_timeout(input);
        let _ = outrigger::grpc::parse_status(input);
        let _ = outrigger::grpc::service_and_method(&s);
        let _ = outrigger::grpc::status_in_section(input);
        let _ = outrigger::http::grpc_web::web_kind(input);
        let _ = outrigger::http::h2::trailers(input);
        // gRPC-Web text: what is encoded in pieces decodes to the input.
        if let Ok(decoded) = outrigger::http::grpc_web::decode_text(input) {
            assert!(decoded.len() <= input.len());
        }
        let call = outrigger::http::grpc_web::WebCall {
            text: true,
            origin: None,
        };
        let mut w = outrigger::http::grpc_web::WebBody::new(&call);
        let mut encoded = Vec::new();
        for piece in input.chunks(7) {
            encoded.extend_from_slice(&w.data(bytes::Bytes::copy_from_slice(piece)));
        }
        encoded.extend_from_slice(&w.end(b""));
        let back = outrigger::http::grpc_web::decode_text(&encoded).unwrap();
        assert_eq!(&back[..], input);
    });
}

/// The HTTP/2 server path of a running proxy (the `h2` crate and the
/// adapter: request conversion, streams, resets) fed mutated frame
/// sequences after the preface, each on its own connection; the proxy must
/// answer a normal request afterwards.
#[test]
fn http2_frames() {
    http2_frames_on("io_uring");
    http2_frames_on("epoll");
}

fn http2_frames_on(io: &str) {
    use std::io::{Read, Write};
    let cfg = &format!("[runtime]\nworkers = 1\nio = \"{io}\"\n[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n[[routes.r]]\nmatch.path_prefix = \"/\"\ndirect_response = {{ status = 200, body = \"ok\" }}\n");
    let snapshot = outrigger::config::compile(std::path::Path::new("<fuzz>"), cfg).unwrap();
    let server = outrigger::start(snapshot).unwrap();
    let addr = server.local_addr("web").unwrap();
    // HPACK literals (no Huffman) of a GET, then frames around it.
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "x"),
        (":path", "/"),
    ] {
        block.push(0u8);
        block.push(n.len() as u8);
        block.extend_from_slice(n.as_bytes());
        block.push(v.len() as u8);
        block.extend_from_slice(v.as_bytes());
    }
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let settings = frame(4, 0, 0, &[0, 4, 0, 1, 0, 0]);
    let get = frame(1, 5, 1, &block);
    let post = [frame(1, 4, 3, &block), frame(0, 1, 3, b"body")].concat();
    let split = [frame(1, 0, 5, &block[..10]), frame(9, 4, 5, &block[10..])].concat();
    let control = [
        frame(6, 0, 0, &[1; 8]),
        frame(8, 0, 0, &1000u32.to_be_bytes()),
        frame(3, 0, 1, &8u32.to_be_bytes()),
        frame(2, 0, 1, &[0, 0, 0, 3, 16]),
        frame(7, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]),
    ]
    .concat();
    let seeds: Vec<Vec<u8>> = vec![
        [settings.clone(), get.clone()].concat(),
        [settings.clone(), post].concat(),
        [settings.clone(), split].concat(),
        [settings.clone(), get.clone(), control].concat(),
        settings.clone(),
    ];
    let corpus: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    fuzz_n("http2_frames", &corpus, 1_500, |input| {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let _ = s.write_all(input);
        let _ = s.shutdown(std::net::Shutdown::Write);
        // The proxy ends the connection once the client's side is closed
        // (EOF or a reset, never the 5 s read timeout)...
        let mut sink = Vec::new();
        let ended = s.read_to_end(&mut sink);
        if let Err(e) = &ended {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "the proxy left the connection open: {e}"
            );
            return;
        }
        // ...and what it sent before a clean close is whole frames,
        // starting with its SETTINGS on stream 0.
        let mut at = 0;
        while sink.len() - at >= 9 {
            let len = (usize::from(sink[at]) << 16)
                | (usize::from(sink[at + 1]) << 8)
                | usize::from(sink[at + 2]);
            if at == 0 {
                assert_eq!(
                    (sink[3], &sink[5..9]),
                    (4, &[0u8, 0, 0, 0][..]),
                    "first frame is not SETTINGS"
                );
            }
            at += 9 + len;
        }
        assert_eq!(
            at,
            sink.len(),
            "a truncated frame before a clean close ({} bytes)",
            sink.len()
        );
    });
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        server.shutdown(Duration::from_secs(5)),
        "connections left open"
    );
}

/// Path normalisation (docs/security.md, "One path"): on any target the
/// parser accepts, the normalised target is normal (idempotent), holds no
/// dot segment (nor `//` when merging), and an upstream parsing the
/// forwarded request line reads exactly the target routing decided on.
#[test]
fn path_normalizer() {
    use outrigger::http::normalize::{normalized, EscapedSlashes, PathPolicy};
    let corpus: &[&[u8]] = &[
        b"GET /%61dmin/secret.txt HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x/../admin/./y HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET //admin//y?q=/../%61 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a/..%2Fb%5c%00%zz HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a.example/%2e%2e/x HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    let policies = [
        PathPolicy {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        },
        PathPolicy {
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Keep,
        },
    ];
    fuzz("path_normalizer", corpus, |input| {
        let mut buf = BytesMut::from(input);
        let Ok(Some(head)) = outrigger::http::codec::parse_request(&mut buf, limits()) else {
            return;
        };
        for policy in policies {
            let Ok(out) = normalized(&head.target, policy) else {
                continue;
            };
            let target = out.unwrap_or_else(|| head.target.clone());
            assert_eq!(
                normalized(&target, policy),
                Ok(None),
                "not idempotent: {target:?}"
            );
            let text = String::from_utf8_lossy(&target).to_string();
            let path = text.split('?').next().unwrap_or("");
            let path = path.find("://").map_or(path, |i| {
                path[i + 3..].find('/').map_or("/", |j| &path[i + 3 + j..])
            });
            if path.starts_with('/') {
                assert!(!path.contains("/./") && !path.contains("/../"), "{text:?}");
                assert!(!path.ends_with("/.") && !path.ends_with("/.."), "{text:?}");
                if policy.merge_slashes {
                    assert!(!path.contains("//"), "{text:?}");
                }
            }
            let mut line = BytesMut::new();
            line.extend_from_slice(b"GET ");
            line.extend_from_slice(&target);
            line.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
            let again = outrigger::http::codec::parse_request(&mut line, limits());
            let Ok(Some(again)) = again else {
                panic!("the forwarded target does not parse: {text:?}");
            };
            assert_eq!(again.target, target);
        }
    });
}

/// The route table's host index never changes the answer: `lookup` finds
/// exactly the first route whose `matches` holds, for any request.
#[test]
fn route_matcher() {
    let cfg = r#"
[listeners.l]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
[[routes.r]]
match.host = "api.example.com"
match.path = "/exact"
cluster = "c"
[[routes.r]]
match.host = "*.example.com"
match.path_prefix = "/wild"
match.method = ["GET", "HEAD"]
cluster = "c"
[[routes.r]]
match.path_regex = "^/r/[0-9]+$"
match.headers = { "x-canary" = "1" }
cluster = "c"
[[routes.r]]
match.host = "API.example.com"
match.grpc_service = "pkg.Svc"
cluster = "c"
[[routes.r]]
match.path_prefix = "/"
match.headers = { "x-any" = "yes" }
cluster = "c"
[[routes.r]]
match.host = "other.test"
cluster = "c"
[clusters.c]
endpoints = ["127.0.0.1:1"]
"#;
    let snapshot = outrigger::config::compile(std::path::Path::new("<fuzz>"), cfg).unwrap();
    let table = &snapshot.route_tables["r"];
    let corpus: &[&[u8]] = &[
        b"GET /exact HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        b"GET /exact HTTP/1.1\r\nHost: API.Example.com:8080\r\n\r\n",
        b"HEAD /wild/x HTTP/1.1\r\nHost: a.b.example.com\r\n\r\n",
        b"GET /r/123 HTTP/1.1\r\nHost: x\r\nX-Canary: 1\r\n\r\n",
        b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: api.example.com\r\ncontent-type: application/grpc\r\n\r\n",
        b"GET /anything HTTP/1.1\r\nHost: other.test\r\nx-any: yes\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ];
    fuzz("route_matcher", corpus, |input| {
        let mut buf = BytesMut::from(input);
        let Ok(Some(head)) = outrigger::http::codec::parse_request(&mut buf, limits()) else {
            return;
        };
        let found = table.lookup(&head).map(|r| r.name.clone());
        let scan = table
            .routes
            .iter()
            .find(|r| r.matches(&head))
            .map(|r| r.name.clone());
        assert_eq!(
            found,
            scan,
            "the index disagrees with a scan for {:?}",
            String::from_utf8_lossy(input)
        );
    });
}

/// xDS resources from a management server: any bytes decode, translate and
/// compile without a panic (an error is the right answer to garbage).
#[test]
fn xds_resources() {
    use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address, Address, SocketAddress,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };
    use envoy_types::pb::envoy::config::route::v3::{
        route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
        VirtualHost,
    };
    use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
    use outrigger::xds::{FileNames, Kind, State};
    use prost::Message;
    let sock = |port: u32| Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    };
    let cla = ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(sock(8080)),
                    ..Default::default()
                })),
                load_balancing_weight: Some(UInt32Value { value: 3 }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let c = Cluster {
        name: "c".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(cla.clone()),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 5,
        }),
        ..Default::default()
    };
    let rc = RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![VirtualHost {
            name: "v".into(),
            domains: vec!["*.example.com".into(), "*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("c".into())),
                    timeout: Some(PbDuration {
                        seconds: 3,
                        nanos: 0,
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    // First byte: the kind; the rest: the message.
    let seeds: Vec<Vec<u8>> = vec![
        [vec![0], c.encode_to_vec()].concat(),
        [vec![1], cla.encode_to_vec()].concat(),
        [vec![3], rc.encode_to_vec()].concat(),
    ];
    let corpus: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let file = FileNames::default();
    fuzz_n("xds_resources", &corpus, 5_000, |input| {
        let Some((&k, rest)) = input.split_first() else {
            return;
        };
        let kind = Kind::ALL[usize::from(k) % 4];
        let mut state = State::default();
        if kind == Kind::Route || kind == Kind::Endpoint {
            // Something to route to.
            let _ = state.take(
                Kind::Cluster,
                &[Any {
                    type_url: Kind::Cluster.type_url().into(),
                    value: c.encode_to_vec(),
                }],
                &file,
            );
        }
        let refused = state.take(
            kind,
            &[Any {
                type_url: kind.type_url().into(),
                value: rest.to_vec(),
            }],
            &file,
        );
        let overlay = state.overlay(&file);
        // An accepted resource, re-encoded canonically, translates to the
        // same config (unknown fields and encoding quirks change nothing).
        if refused.is_empty() {
            let canonical = match kind {
                Kind::Cluster => Cluster::decode(rest).map(|m| m.encode_to_vec()),
                Kind::Endpoint => ClusterLoadAssignment::decode(rest).map(|m| m.encode_to_vec()),
                Kind::Listener => {
                    envoy_types::pb::envoy::config::listener::v3::Listener::decode(rest)
                        .map(|m| m.encode_to_vec())
                }
                Kind::Route => RouteConfiguration::decode(rest).map(|m| m.encode_to_vec()),
            };
            if let Ok(bytes) = canonical {
                let mut again = State::default();
                if kind == Kind::Route || kind == Kind::Endpoint {
                    let _ = again.take(
                        Kind::Cluster,
                        &[Any {
                            type_url: Kind::Cluster.type_url().into(),
                            value: c.encode_to_vec(),
                        }],
                        &file,
                    );
                }
                let refused = again.take(
                    kind,
                    &[Any {
                        type_url: kind.type_url().into(),
                        value: bytes,
                    }],
                    &file,
                );
                assert!(
                    refused.is_empty(),
                    "re-encoded resource refused: {refused:?}"
                );
                assert_eq!(
                    again.overlay(&file),
                    overlay,
                    "re-encoding changed the translation"
                );
            }
        }
        let _ = outrigger::config::compile_with(std::path::Path::new("<fuzz>"), "", &overlay);
        // Route tables only enter the overlay with a listener: compile a
        // translated one directly, with every cluster it names.
        if let Some(x) = state.routes.values().next() {
            let mut text = String::from(
                "[listeners.l]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"t\"\n",
            );
            for c in &x.clusters {
                text.push_str(&format!(
                    "[clusters.{}]\nendpoints = [\"127.0.0.1:1\"]\n",
                    toml::Value::String(c.clone())
                ));
            }
            let routes = toml::Table::from_iter([(
                "routes".to_string(),
                toml::Value::Table(toml::Table::from_iter([(
                    "t".to_string(),
                    toml::Value::Array(x.routes.clone()),
                )])),
            )]);
            text.push_str(&toml::to_string(&routes).unwrap_or_default());
            let _ = outrigger::config::compile(std::path::Path::new("<fuzz>"), &text);
        }
    });
}
