//! Request mirroring per route (`mirror = { cluster, percent, max_active }`,
//! or a list): a share of requests is copied to another cluster, its
//! answer read and dropped (http::mirror sends them). Decided per request
//! from the worker's own random source.

/// Mirrors held at once by default, for the whole proxy (shared per worker).
pub const DEFAULT_MAX_ACTIVE: u64 = 1024;
/// Largest body mirrored by default (`mirror_body_limit`).
pub const DEFAULT_BODY_LIMIT: u64 = 64 * 1024;

/// One `mirror` entry of a route, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub cluster: String,
    /// The share of requests copied, in millionths.
    pub per_million: u32,
    /// Mirrored requests in flight at once for the whole proxy; above it a
    /// copy is dropped (and counted), never queued.
    pub max_active: u64,
}

/// The `:authority` / Host a mirrored request carries: `-shadow` appended
/// to the host (Envoy's convention), the port kept.
pub fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        // A port after a name or a bracketed IPv6 literal (a bare IPv6
        // literal's last group is no port).
        Some((h, port))
            if !h.is_empty()
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (h.ends_with(']') || !h.contains(':')) =>
        {
            format!("{h}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::shadow_host;

    #[test]
    fn shadow_hosts() {
        assert_eq!(shadow_host("orders"), "orders-shadow");
        assert_eq!(shadow_host("orders.svc:8080"), "orders.svc-shadow:8080");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("::1"), "::1-shadow");
    }
}
