//! Table-driven tests of the request and response codecs and the chunked
//! decoder: what parses, and every malformed input with the status it gets.

use bytes::BytesMut;

use super::*;
use crate::http::chunked::{Chunk, ChunkedDecoder};

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 1024,
    max_headers: 8,
};

fn parse(raw: &str) -> Result<Option<RequestHead>, HttpError> {
    let mut buf = BytesMut::from(raw.as_bytes());
    parse_request(&mut buf, LIMITS)
}

#[test]
fn valid_requests() {
    let cases: &[(&str, Framing, bool)] = &[
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::None, true),
        (
            "GET /x?y=1 HTTP/1.1\r\nHost: a:80\r\n\r\n",
            Framing::None,
            true,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Framing::None,
            false,
        ),
        ("GET / HTTP/1.0\r\n\r\n", Framing::None, false),
        (
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            Framing::None,
            true,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            Framing::Length(5),
            true,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            Framing::None,
            true,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            Framing::Chunked,
            true,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
            Framing::Chunked,
            true,
        ),
        ("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::None, true),
        ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Framing::None, true),
        (
            "GET http://a.example/p HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Framing::None,
            true,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n",
            Framing::None,
            true,
        ),
    ];
    for (raw, framing, keep) in cases {
        let head = parse(raw)
            .unwrap_or_else(|e| panic!("{raw:?}: {e}"))
            .expect("complete");
        assert_eq!(head.framing, *framing, "{raw:?}");
        assert_eq!(head.keep_alive, *keep, "{raw:?}");
    }
}

#[test]
fn incomplete_is_a_state() {
    for raw in [
        "",
        "GET",
        "GET / HTTP/1.1\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n",
    ] {
        assert!(parse(raw).unwrap().is_none(), "{raw:?}");
    }
}

#[test]
fn body_and_rest_stay_in_the_buffer() {
    let mut buf =
        BytesMut::from(&b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET"[..]);
    let head = parse_request(&mut buf, LIMITS).unwrap().unwrap();
    assert_eq!(head.framing, Framing::Length(3));
    assert_eq!(&buf[..], b"abcGET");
}

#[test]
fn invalid_requests_and_their_status() {
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(2000)
    );
    let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    let cases: Vec<(&str, u16)> = vec![
        // Content-Length and Transfer-Encoding together (both orders).
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        // Final coding not chunked.
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400),
        // Codings we do not implement.
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
        // TE on HTTP/1.0.
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        // Content-Length not plain digits, overflowing, or disagreeing.
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1.0\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400),
        // Equal values are still a list, or a repeated line (issue 12, point 6).
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42, 42\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", 400),
        // Whitespace between a header name and the colon; obs-fold.
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 0\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400),
        (" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        // CR, LF or NUL inside a value; bare CR.
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", 400),
        ("GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", 400),
        // Invalid characters in names or the method.
        ("GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX\"A: b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400),
        ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GE T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        // Host missing, doubled, or invalid.
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        // Bad request lines and targets.
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
        ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        // Limits.
        (long_header.as_str(), 431),
        (many_headers.as_str(), 431),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (raw, status) in &cases {
        match parse(raw) {
            Err(e) => assert_eq!(e.status(), Some(*status), "{raw:?}: {e}"),
            Ok(Some(_)) => panic!("{raw:?} was accepted"),
            Ok(None) => panic!("{raw:?} was taken as incomplete"),
        }
    }
}

#[test]
fn head_too_large_while_incomplete() {
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "v".repeat(2000));
    assert_eq!(parse(&raw).unwrap_err().status(), Some(431));
}

fn decode_all(raw: &[u8]) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
    let mut dec = ChunkedDecoder::default();
    let mut buf = BytesMut::from(raw);
    let mut body = Vec::new();
    loop {
        match dec.decode(&mut buf)? {
            Some(Chunk::Data(d)) => body.extend_from_slice(&d),
            Some(Chunk::End(t)) => return Ok((body, t.to_vec())),
            None => return Err("incomplete"),
        }
    }
}

#[test]
fn chunked_valid() {
    let (body, trailers) = decode_all(b"5\r\nhello\r\n6;a=b\r\n world\r\n0\r\n\r\n").unwrap();
    assert_eq!(body, b"hello world");
    assert!(trailers.is_empty());
    let (body, trailers) = decode_all(b"A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n").unwrap();
    assert_eq!(body, b"0123456789");
    assert_eq!(trailers, b"X-T: 1\r\n");
    // RFC 9112 §7.1.1 extensions: BWS around ";" and "=", bare names,
    // quoted values with quoted pairs, several of them.
    for line in [
        &b"5 ;a=b"[..],
        b"5;a",
        b"5\t; a = b",
        b"5;a;b=c;d=\"x y\"",
        b"5;a=\"q\\\"x\"",
        b"5;a=\"\"",
    ] {
        let mut raw = line.to_vec();
        raw.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(
            decode_all(&raw).map(|(b, _)| b),
            Ok(b"hello".to_vec()),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

/// Framing, hop-by-hop and proxy-owned fields are dropped from trailers;
/// the others keep their order and bytes.
#[test]
fn trailers_lose_framing_and_proxy_owned_fields() {
    let raw = b"5\r\nhello\r\n0\r\nX-A: 1\r\nContent-Length: 99\r\nx-forwarded-client-cert: URI=spiffe://example.org/ns/x/sa/admin\r\nTransfer-Encoding: chunked\r\nHost: evil\r\ngrpc-status: 0\r\n\r\n";
    let (body, trailers) = decode_all(raw).unwrap();
    assert_eq!(body, b"hello");
    assert_eq!(trailers, b"X-A: 1\r\ngrpc-status: 0\r\n");
    let mut map = http::HeaderMap::new();
    map.insert(
        "x-forwarded-client-cert",
        http::HeaderValue::from_static("URI=x"),
    );
    map.insert("content-length", http::HeaderValue::from_static("5"));
    map.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut out = BytesMut::new();
    crate::http::h2::convert::push_last_chunk(&mut out, Some(&map));
    assert_eq!(&out[..], b"0\r\ngrpc-status: 0\r\n\r\n");
    let section = b"x-forwarded-client-cert: URI=x\r\ncontent-length: 5\r\nx-b: 2\r\n";
    let t = crate::http::h2::convert::trailers(section).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t.get("x-b").unwrap(), "2");
}

/// Decode `raw` fed in pieces: the bytes up to `split`, then the rest.
/// The decoder must give the same result as from one buffer.
fn decode_split(raw: &[u8], split: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
    let mut dec = ChunkedDecoder::default();
    let mut buf = BytesMut::from(&raw[..split]);
    let mut rest = Some(&raw[split..]);
    let mut body = Vec::new();
    loop {
        match dec.decode(&mut buf)? {
            Some(Chunk::Data(d)) => body.extend_from_slice(&d),
            Some(Chunk::End(t)) => return Ok((body, t.to_vec())),
            None => match rest.take() {
                Some(r) => buf.extend_from_slice(r),
                None => return Err("incomplete"),
            },
        }
    }
}

/// Every split point of every table case, valid and invalid: a read
/// boundary anywhere (mid size line, mid CRLF, mid data, mid trailers)
/// changes nothing.
#[test]
fn chunked_split_at_every_point() {
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(5000));
    let cases: Vec<&[u8]> = vec![
        b"5\r\nhello\r\n6;a=b\r\n world\r\n0\r\n\r\n",
        b"A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
        b"1\r\na\r\n1\r\nb\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
        b"zz\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\rhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"0\r\nbad trailer\r\n\r\n",
        long_ext.as_bytes(),
    ];
    for raw in cases {
        let whole = decode_all(raw);
        for split in 0..=raw.len() {
            assert_eq!(
                decode_split(raw, split),
                whole,
                "split at {split} of {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(80)])
            );
        }
    }
}

#[test]
fn chunked_invalid() {
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(5000));
    let cases: Vec<&[u8]> = vec![
        b"zz\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffff\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\rhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5;a\0b\r\nhello\r\n0\r\n\r\n",
        // Issue 12, point 6: an empty extension, an unterminated quoted
        // string, whitespace before the line end.
        b"5;\r\nhello\r\n0\r\n\r\n",
        b"5; \r\nhello\r\n0\r\n\r\n",
        b"5;;a\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"x\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"x\\\"\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5\t\r\nhello\r\n0\r\n\r\n",
        b"5;a=b \r\nhello\r\n0\r\n\r\n",
        b"5;a=\r\nhello\r\n0\r\n\r\n",
        b"5;=b\r\nhello\r\n0\r\n\r\n",
        b"5;a b\r\nhello\r\n0\r\n\r\n",
        b"5;a=b c\r\nhello\r\n0\r\n\r\n",
        b"0 \r\n\r\n",
        b"0\r\nbad trailer\r\n\r\n",
        long_ext.as_bytes(),
    ];
    for raw in cases {
        assert!(
            decode_all(raw).is_err(),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        assert_ne!(
            decode_all(raw),
            Err("incomplete"),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn responses() {
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]);
    let r = parse_response(&mut buf, LIMITS).unwrap().unwrap();
    assert_eq!(r.framing(false).unwrap(), Framing::Length(2));
    assert_eq!(r.framing(true).unwrap(), Framing::None, "HEAD");
    let cases: &[(&[u8], Result<Framing, u16>)] = &[
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            Ok(Framing::None),
        ),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", Ok(Framing::None)),
        (b"HTTP/1.1 100 Continue\r\n\r\n", Ok(Framing::None)),
        (b"HTTP/1.1 200 OK\r\n\r\n", Ok(Framing::UntilClose)),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok(Framing::Chunked),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            Err(502),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            Err(502),
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", Err(502)),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            Err(502),
        ),
    ];
    for (raw, want) in cases {
        let mut buf = BytesMut::from(*raw);
        let r = parse_response(&mut buf, LIMITS).unwrap().unwrap();
        match (r.framing(false), want) {
            (Ok(f), Ok(w)) => assert_eq!(f, *w, "{:?}", String::from_utf8_lossy(raw)),
            (Err(e), Err(s)) => assert_eq!(e.status(), Some(*s)),
            (got, _) => panic!("{:?}: {got:?}", String::from_utf8_lossy(raw)),
        }
    }
    for raw in [
        &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
        b"HTXP/1.1 200 OK\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(raw);
        assert!(
            parse_response(&mut buf, LIMITS).is_err(),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

/// Heads with as many headers as the small table holds and more (the
/// spans then go to the heap): every name and value comes back, in order,
/// trimmed, and the body stays in the buffer.
#[test]
fn heads_beyond_the_small_header_table() {
    let limits = HeadLimits {
        max_head_bytes: 16 * 1024,
        max_headers: 100,
    };
    for n in [
        SMALL_HEADER_TABLE - 1,
        SMALL_HEADER_TABLE,
        SMALL_HEADER_TABLE + 1,
        90,
    ] {
        let fields: String = (0..n).map(|i| format!("x-h{i}:  v{i} \r\n")).collect();
        let mut buf = BytesMut::from(
            format!("GET / HTTP/1.1\r\nhost: a\r\n{fields}content-length: 2\r\n\r\nokNEXT")
                .as_bytes(),
        );
        let req = parse_request(&mut buf, limits).unwrap().unwrap();
        assert_eq!(req.headers.len(), n + 2, "{n} request headers");
        for (i, h) in req.headers[1..=n].iter().enumerate() {
            assert_eq!(&h.name[..], format!("x-h{i}").as_bytes());
            assert_eq!(&h.value[..], format!("v{i}").as_bytes());
        }
        assert_eq!(&buf[..], b"okNEXT");

        let mut buf = BytesMut::from(
            format!("HTTP/1.1 200 Fine\r\n{fields}content-length: 2\r\n\r\nok").as_bytes(),
        );
        let resp = parse_response(&mut buf, limits).unwrap().unwrap();
        assert_eq!(resp.headers.len(), n + 1, "{n} response headers");
        assert_eq!(
            &resp.headers[n - 1].value[..],
            format!("v{}", n - 1).as_bytes()
        );
        assert_eq!(&resp.reason[..], b"Fine");
        assert_eq!(&buf[..], b"ok");
    }
}
