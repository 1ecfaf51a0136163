//! gRPC over HTTP/2 as the proxy sees it: which requests are gRPC, the
//! service and method of a call, `grpc-timeout`, the status codes, and
//! the mapping of the proxy's own failures to them.

use std::time::Duration;

/// A gRPC status code (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code with this number; `Unknown` for a number out of range.
    pub fn from_u8(v: u8) -> Code {
        use Code::*;
        [
            Ok,
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
            Unauthenticated,
        ]
        .get(usize::from(v))
        .copied()
        .unwrap_or(Unknown)
    }
}

/// The gRPC-Web kind of a `content-type`: `Some(false)` binary,
/// `Some(true)` text, `None` not gRPC-Web.
pub fn web_kind(content_type: &[u8]) -> Option<bool> {
    let rest = content_type.strip_prefix(b"application/grpc-web")?;
    let (text, rest) = match rest.strip_prefix(b"-text") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    (rest.is_empty() || rest[0] == b'+' || rest[0] == b';').then_some(text)
}

/// Whether a `content-type` value names gRPC (`application/grpc`,
/// `application/grpc+proto`, ...; not gRPC-Web).
pub fn is_grpc(content_type: &[u8]) -> bool {
    let Some(rest) = content_type.strip_prefix(b"application/grpc") else {
        return false;
    };
    rest.is_empty() || rest[0] == b'+' || rest[0] == b';'
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
pub fn service_and_method(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-status` value; `None` when it is not a number from 0 to 16.
pub fn parse_status(v: &[u8]) -> Option<u8> {
    let n: u8 = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
    (n <= 16).then_some(n)
}

/// Statuses that count as a failure of the upstream for outlier detection
/// and the `failure` outcome in metrics (as a 5xx does): the server or
/// the path to it failed, not the caller's request.
pub fn is_server_failure(status: u8) -> bool {
    matches!(status, 2 | 4 | 13 | 14 | 15)
}

/// The HTTP status that stands for a gRPC failure in outlier detection and
/// retries (UNAVAILABLE as 503, DEADLINE_EXCEEDED as 504, others 500).
pub fn http_equivalent(status: u8) -> u16 {
    match status {
        0 => 200,
        4 => 504,
        14 => 503,
        8 => 429,
        _ => 500,
    }
}

/// The status of a `grpc-status` line in an HTTP/1.1 trailer section.
pub fn status_in_section(section: &[u8]) -> Option<u8> {
    section.split(|&b| b == b'\n').find_map(|line| {
        let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
        name.eq_ignore_ascii_case(b"grpc-status")
            .then(|| parse_status(value[1..].trim_ascii()))?
    })
}

/// The lower-case name of a status (metrics labels, `retry.on`).
pub fn name(status: u8) -> &'static str {
    match status {
        0 => "ok",
        1 => "cancelled",
        2 => "unknown",
        3 => "invalid-argument",
        4 => "deadline-exceeded",
        5 => "not-found",
        6 => "already-exists",
        7 => "permission-denied",
        8 => "resource-exhausted",
        9 => "failed-precondition",
        10 => "aborted",
        11 => "out-of-range",
        12 => "unimplemented",
        13 => "internal",
        14 => "unavailable",
        15 => "data-loss",
        16 => "unauthenticated",
        _ => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_paths_and_types() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse_timeout(b"123456789S"), None);
        assert_eq!(parse_timeout(b"S"), None);
        assert_eq!(parse_timeout(b"10x"), None);
        assert_eq!(parse_timeout(b"-1S"), None);
        assert_eq!(
            service_and_method("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter", "SayHello"))
        );
        assert_eq!(service_and_method("/a/b/c"), None);
        assert_eq!(service_and_method("/onlyservice"), None);
        assert!(is_grpc(b"application/grpc"));
        assert!(is_grpc(b"application/grpc+proto"));
        assert!(!is_grpc(b"application/grpc-web"));
        assert!(!is_grpc(b"text/plain"));
        assert_eq!(parse_status(b"14"), Some(14));
        assert_eq!(parse_status(b"17"), None);
        assert!(is_server_failure(Code::Unavailable as u8));
        assert!(!is_server_failure(Code::NotFound as u8));
        assert_eq!(name(4), "deadline-exceeded");
    }
}
