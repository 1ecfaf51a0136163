//! Request path normalisation: the one reading of a path that routing,
//! authorization and the upstream all share. Without it `/%61dmin`,
//! `/x/../admin`, `//admin` and `/./admin` each name the upstream's
//! `/admin` while matching none of the routes written for it.
//!
//! Applied to every request (HTTP/1.1 target, HTTP/2 `:path`) before the
//! route lookup, and the normalised target is what goes upstream:
//!
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`,
//!    RFC 3986 §2.3) are decoded; every other escape is kept, its hex
//!    digits upper-cased (§6.2.2.1); a malformed escape is a 400;
//! 2. `%2F`, `%5C` and `%00` (escaped slash, backslash, NUL) are rejected
//!    with 400 or kept undecoded, per `path_escaped_slashes`;
//! 3. runs of `/` become one when `merge_slashes` is on;
//! 4. dot segments are removed (RFC 3986 §5.2.4).
//!
//! Case is kept as sent: paths are case-sensitive. The query is not
//! touched. Normalising is idempotent (a property test holds it to that).

use bytes::Bytes;

/// What to do with `%2F`, `%5C` and `%00` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Kept encoded, as sent: routes see `%2F`, and so does the upstream.
    Keep,
    /// 400: the path's meaning depends on who decodes it.
    Reject,
}

/// A listener's path policy (docs/security.md, "One path").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy {
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Keep,
        }
    }
}

/// Why a path was refused (the 400's cause).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    #[error("escaped slash, backslash or NUL in the path")]
    EscapedSlash,
}

impl PathError {
    pub fn text(self) -> &'static str {
        match self {
            PathError::BadEscape => "malformed percent-encoding in the path",
            PathError::EscapedSlash => "escaped slash, backslash or NUL in the path",
        }
    }
}

/// The normalised form of an origin-form `target` (path and query), or
/// `None` when it is already normal (the common case allocates nothing).
/// Targets that do not start with `/` (`*`) are left alone.
pub fn normalize_target(target: &str, policy: PathPolicy) -> Result<Option<String>, PathError> {
    if !target.starts_with('/') {
        return Ok(None);
    }
    let (path, query) = match target.find('?') {
        Some(i) => target.split_at(i),
        None => (target, ""),
    };
    if is_normal(path, policy) {
        return Ok(None);
    }
    let mut out = normalize_path(path, policy)?;
    if out == path {
        return Ok(None);
    }
    out.push_str(query);
    Ok(Some(out))
}

/// A quick scan: nothing to decode, no dot segment, no slash to merge.
fn is_normal(path: &str, policy: PathPolicy) -> bool {
    let b = path.as_bytes();
    if b.contains(&b'%') {
        return false;
    }
    for (i, w) in b.windows(2).enumerate() {
        if w[0] != b'/' {
            continue;
        }
        if w[1] == b'/' && policy.merge_slashes {
            return false;
        }
        if w[1] == b'.' {
            let rest = &b[i + 2..];
            let dot_segment = rest.is_empty()
                || rest[0] == b'/'
                || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'));
            if dot_segment {
                return false;
            }
        }
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalise a path (no query): steps 1-4 of the module's list.
pub fn normalize_path(path: &str, policy: PathPolicy) -> Result<String, PathError> {
    let decoded = decode_unreserved(path, policy)?;
    let merged = if policy.merge_slashes {
        merge_slashes(&decoded)
    } else {
        decoded
    };
    Ok(remove_dot_segments(&merged))
}

fn decode_unreserved(path: &str, policy: PathPolicy) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            // Not an escape: copy up to the next one (keeps UTF-8 whole).
            let next = b[i..]
                .iter()
                .position(|&c| c == b'%')
                .map_or(b.len(), |p| i + p);
            out.push_str(&path[i..next]);
            i = next;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let v = hi << 4 | lo;
        if matches!(v, b'/' | b'\\' | 0) && policy.escaped_slashes == EscapedSlashes::Reject {
            return Err(PathError::EscapedSlash);
        }
        if unreserved(v) {
            out.push(char::from(v));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
        }
        i += 3;
    }
    Ok(out)
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut last_slash = false;
    for c in path.chars() {
        if c == '/' && last_slash {
            continue;
        }
        last_slash = c == '/';
        out.push(c);
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path: the result starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    // Segments after the leading '/'; a trailing "." or ".." leaves a
    // trailing slash ("/a/b/.." is "/a/").
    let mut out: Vec<&str> = Vec::new();
    let body = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    s.push('/');
    s.push_str(&out.join("/"));
    s
}

/// A request head's target after normalising (origin-form, or
/// absolute-form with its scheme and authority kept), `None` when it is
/// already normal.
pub fn normalized(target: &Bytes, policy: PathPolicy) -> Result<Option<Bytes>, PathError> {
    let Ok(t) = std::str::from_utf8(target) else {
        return Ok(None);
    };
    if t.starts_with('/') {
        return Ok(normalize_target(t, policy)?.map(Bytes::from));
    }
    // absolute-form: the path after the authority (as `origin_target`
    // reads it); an authority with no path stands for "/".
    let Some(i) = t.find("://") else {
        return Ok(None);
    };
    let Some(j) = t[i + 3..].find(['/', '?']).map(|j| i + 3 + j) else {
        return Ok(None);
    };
    if t.as_bytes()[j] == b'?' {
        return Ok(None);
    }
    Ok(normalize_target(&t[j..], policy)?.map(|origin| {
        let mut out = String::with_capacity(j + origin.len());
        out.push_str(&t[..j]);
        out.push_str(&origin);
        Bytes::from(out)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: PathPolicy = PathPolicy {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Reject,
    };
    const PLAIN: PathPolicy = PathPolicy {
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::Keep,
    };

    fn n(t: &str, p: PathPolicy) -> Result<String, PathError> {
        normalize_target(t, p).map(|o| o.unwrap_or_else(|| t.to_string()))
    }

    #[test]
    fn table() {
        let cases: &[(&str, PathPolicy, Result<&str, PathError>)] = &[
            ("/admin/x", MESH, Ok("/admin/x")),
            ("/%61dmin/secret.txt", MESH, Ok("/admin/secret.txt")),
            ("/%61%64%6D%69%6E", MESH, Ok("/admin")),
            ("/x/../admin/a", MESH, Ok("/admin/a")),
            ("//admin/a", MESH, Ok("/admin/a")),
            ("//admin/a", PLAIN, Ok("//admin/a")),
            ("/./admin/a", MESH, Ok("/admin/a")),
            ("/a/b/..", MESH, Ok("/a/")),
            ("/a/b/.", MESH, Ok("/a/b/")),
            ("/..", MESH, Ok("/")),
            ("/../../etc/passwd", MESH, Ok("/etc/passwd")),
            ("/%2e%2e/admin", MESH, Ok("/admin")),
            ("/a/%2E/b", MESH, Ok("/a/b")),
            ("/a/..%2Fadmin", MESH, Err(PathError::EscapedSlash)),
            ("/a/..%2fadmin", PLAIN, Ok("/a/..%2Fadmin")),
            ("/a%5cb", MESH, Err(PathError::EscapedSlash)),
            ("/a%00b", MESH, Err(PathError::EscapedSlash)),
            ("/a%00b", PLAIN, Ok("/a%00b")),
            ("/a%zz", MESH, Err(PathError::BadEscape)),
            ("/a%4", MESH, Err(PathError::BadEscape)),
            ("/a%20b%e2%82%ac", MESH, Ok("/a%20b%E2%82%AC")),
            ("/Admin", MESH, Ok("/Admin")),
            ("/a/../b?x=/../y&z=%61", MESH, Ok("/b?x=/../y&z=%61")),
            ("/..a/.b/c..", MESH, Ok("/..a/.b/c..")),
            ("*", MESH, Ok("*")),
            ("/", MESH, Ok("/")),
        ];
        for (input, policy, want) in cases {
            let got = n(input, *policy);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "input {input}");
        }
    }

    #[test]
    fn absolute_form_keeps_its_authority() {
        let t = Bytes::from_static(b"http://a.example/x/../%61dmin?q=1");
        let got = normalized(&t, MESH).unwrap();
        assert_eq!(got.as_deref(), Some(&b"http://a.example/admin?q=1"[..]));
        let t = Bytes::from_static(b"http://a.example/ok");
        assert_eq!(normalized(&t, MESH), Ok(None));
        let t = Bytes::from_static(b"http://a.example/%2f");
        assert_eq!(normalized(&t, MESH), Err(PathError::EscapedSlash));
    }

    #[test]
    fn normal_paths_are_not_copied() {
        assert_eq!(normalize_target("/api/v1/users?id=7", MESH), Ok(None));
        assert_eq!(normalize_target("/a//b", PLAIN), Ok(None));
    }

    /// Random paths from an alphabet rich in the characters that matter:
    /// normalising is idempotent, and a merged result has no `//`, `/./`
    /// or `/../` and never ends in `/.` or `/..`.
    #[test]
    fn property_idempotent_and_clean() {
        let alphabet: &[&str] = &[
            "/", "/", ".", "..", "a", "B", "%2e", "%2E", "%2f", "%61", "%5c", "%00", "%7e", "%",
            "%g1", "%20", "~", "-", "é", "?", "=",
        ];
        let mut rng = fastrand::Rng::with_seed(0x05ee_d9a7);
        for _ in 0..20_000 {
            let len = rng.usize(0..14);
            let mut t = String::from("/");
            for _ in 0..len {
                t.push_str(alphabet[rng.usize(..alphabet.len())]);
            }
            for policy in [MESH, PLAIN] {
                let Ok(once) = n(&t, policy) else { continue };
                let twice = n(&once, policy).expect("a normalised path normalises");
                assert_eq!(once, twice, "not idempotent: {t:?}");
                let path = once.split('?').next().unwrap_or("");
                assert!(path.starts_with('/'), "{t:?} -> {once:?}");
                for bad in ["/./", "/../"] {
                    assert!(!path.contains(bad), "{t:?} -> {once:?}");
                }
                assert!(
                    !path.ends_with("/.") && !path.ends_with("/.."),
                    "{t:?} -> {once:?}"
                );
                if policy.merge_slashes {
                    assert!(!path.contains("//"), "{t:?} -> {once:?}");
                }
                // Nothing unreserved stays encoded: what routes see is
                // what the upstream decodes.
                let lower = path.to_ascii_lowercase();
                for enc in ["%2e", "%61", "%7e"] {
                    assert!(!lower.contains(enc), "{t:?} -> {once:?}");
                }
            }
        }
    }
}
