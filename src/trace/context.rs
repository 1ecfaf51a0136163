//! Trace context propagation: W3C `traceparent`/`tracestate` and B3 (the
//! single `b3` header and the `x-b3-*` headers). Malformed input is treated
//! as absent, never forwarded, never an error.

use std::fmt::Write as _;

/// A trace context as received or sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `Some`: the sender decided; `None`: no decision (B3 without one).
    pub sampled: Option<bool>,
    /// W3C `tracestate`, passed on unchanged.
    pub tracestate: Option<String>,
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parse a W3C `traceparent` (version 00, or a later version's first four
/// fields); `None` for anything the spec says to ignore.
pub fn parse_traceparent(v: &str, tracestate: Option<&str>) -> Option<Context> {
    let v = v.trim();
    let parts: Vec<&str> = v.split('-').collect();
    if parts.len() < 4 {
        return None;
    }
    let version = hex::<1>(parts[0])?[0];
    if version == 0xff || (version == 0 && (parts.len() != 4 || v.len() != 55)) {
        return None;
    }
    let trace_id = hex::<16>(parts[1])?;
    let span_id = hex::<8>(parts[2])?;
    let flags = hex::<1>(parts[3])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Context {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        tracestate: tracestate
            .map(str::trim)
            .filter(|t| {
                !t.is_empty() && t.len() <= 512 && t.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(str::to_string),
    })
}

/// A B3 trace id: 16 or 32 hex digits (a 64-bit id is left-padded).
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => hex::<16>(s),
        16 => {
            let low = hex::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
    .filter(|id| *id != [0; 16])
}

fn b3_sampled(s: &str) -> Option<Option<bool>> {
    match s {
        "1" | "true" | "d" => Some(Some(true)),
        "0" | "false" => Some(Some(false)),
        _ => None,
    }
}

/// Parse the single `b3` header (`trace-span[-sampled[-parent]]`; a lone
/// `0`/`1`/`d` carries only the decision and no context).
pub fn parse_b3_single(v: &str) -> Option<Context> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    if parts.len() < 2 || parts.len() > 4 {
        return None;
    }
    let trace_id = b3_trace_id(parts[0])?;
    let span_id = hex::<8>(parts[1]).filter(|s| *s != [0; 8])?;
    let sampled = match parts.get(2) {
        Some(s) => b3_sampled(s)?,
        None => None,
    };
    if let Some(p) = parts.get(3) {
        hex::<8>(p)?;
    }
    Some(Context {
        trace_id,
        span_id,
        sampled,
        tracestate: None,
    })
}

/// Parse the multi-header B3 form from its header values.
pub fn parse_b3_multi(
    trace_id: &str,
    span_id: &str,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Option<Context> {
    let trace_id = b3_trace_id(trace_id.trim())?;
    let span_id = hex::<8>(span_id.trim()).filter(|s| *s != [0; 8])?;
    let mut decision = match sampled {
        Some(s) => b3_sampled(s.trim())?,
        None => None,
    };
    if flags.map(str::trim) == Some("1") {
        decision = Some(true);
    }
    Some(Context {
        trace_id,
        span_id,
        sampled: decision,
        tracestate: None,
    })
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

/// The headers that carry a context to the upstream, in the configured
/// formats, appended as `name: value\r\n` lines (no allocation beyond
/// `out`'s).
pub fn inject(ctx: &Context, w3c: bool, b3: bool, out: &mut Vec<u8>) {
    let sampled = ctx.sampled.unwrap_or(false);
    if w3c {
        out.extend_from_slice(b"traceparent: 00-");
        push_hex(out, &ctx.trace_id);
        out.push(b'-');
        push_hex(out, &ctx.span_id);
        out.extend_from_slice(if sampled { b"-01\r\n" } else { b"-00\r\n" });
        if let Some(ts) = &ctx.tracestate {
            out.extend_from_slice(b"tracestate: ");
            out.extend_from_slice(ts.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if b3 {
        let flag: &[u8] = if sampled { b"1" } else { b"0" };
        out.extend_from_slice(b"b3: ");
        push_hex(out, &ctx.trace_id);
        out.push(b'-');
        push_hex(out, &ctx.span_id);
        out.push(b'-');
        out.extend_from_slice(flag);
        out.extend_from_slice(b"\r\nx-b3-traceid: ");
        push_hex(out, &ctx.trace_id);
        out.extend_from_slice(b"\r\nx-b3-spanid: ");
        push_hex(out, &ctx.span_id);
        out.extend_from_slice(b"\r\nx-b3-sampled: ");
        out.extend_from_slice(flag);
        out.extend_from_slice(b"\r\n");
    }
}

/// The header names this module owns: dropped from forwarded requests
/// (replaced by `inject`).
pub fn is_trace_header(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 8] = [
        b"traceparent",
        b"tracestate",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-b3-flags",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn w3c() {
        let c = parse_traceparent(TP, Some("rojo=00f067aa0ba902b7")).unwrap();
        assert_eq!(to_hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.sampled, Some(true));
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad}");
        }
        // A later version: its first four fields.
        assert!(parse_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-zz",
            None
        )
        .is_some());
    }

    #[test]
    fn b3() {
        let c =
            parse_b3_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
                .unwrap();
        assert_eq!(c.sampled, Some(true));
        let short = parse_b3_single("64fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
        assert_eq!(to_hex(&short.trace_id), "000000000000000064fe8b2a57d3eff7");
        assert_eq!(short.sampled, None);
        assert!(parse_b3_single("1").is_none() && parse_b3_single("x-y").is_none());
        let m = parse_b3_multi(
            "80f198ee56343ba864fe8b2a57d3eff7",
            "e457b5a2e4d86bd1",
            Some("0"),
            Some("1"),
        )
        .unwrap();
        assert_eq!(m.sampled, Some(true));
        assert!(parse_b3_multi(
            "80f198ee56343ba864fe8b2a57d3eff7",
            "e457b5a2e4d86bd1",
            Some("maybe"),
            None
        )
        .is_none());
    }

    #[test]
    fn injected() {
        let c = parse_traceparent(TP, Some("a=b")).unwrap();
        let mut out = Vec::new();
        inject(&c, true, true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(&format!("traceparent: {TP}\r\n")));
        assert!(text.contains("tracestate: a=b\r\n"));
        assert!(text.contains("b3: 4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1\r\n"));
        assert!(is_trace_header(b"X-B3-TraceId") && !is_trace_header(b"x-request-id"));
    }
}
