//! Compiling a listener's `http2` key: `http2 = false` turns HTTP/2 off,
//! `http2 = { ... }` (or `http2.KEY = ...`) sets its limits.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_spanned::Spanned;

use super::ctx::Ctx;
use super::value::ConfigDuration;

/// The `http2` key as written: a switch, or a table of limits.
#[derive(Debug)]
pub enum FileHttp2 {
    Enabled(bool),
    Limits(Box<FileHttp2Limits>),
}

/// `http2.*` of a listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp2Limits {
    /// `false` turns HTTP/2 off (the same as `http2 = false`).
    pub enabled: Option<bool>,
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub initial_stream_window: Option<Spanned<i64>>,
    pub initial_connection_window: Option<Spanned<i64>>,
    pub max_header_list_bytes: Option<Spanned<i64>>,
    pub max_frame_size: Option<Spanned<i64>>,
    /// Streams a client may reset before the proxy answered them, per
    /// connection, before it is sent GOAWAY (Rapid Reset).
    pub max_pending_resets: Option<Spanned<i64>>,
    /// Streams the proxy may reset for a client's errors, per connection,
    /// before it is sent GOAWAY (MadeYouReset).
    pub max_error_resets: Option<Spanned<i64>>,
    /// Streams a client may reset while the proxy is serving them, per
    /// connection, before it is sent GOAWAY ENHANCE_YOUR_CALM, once they
    /// are also more than half of its streams (Rapid Reset after accept).
    pub max_client_resets: Option<Spanned<i64>>,
}

impl<'de> Deserialize<'de> for FileHttp2 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FileHttp2;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a table of HTTP/2 limits")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FileHttp2, E> {
                Ok(FileHttp2::Enabled(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FileHttp2, A::Error> {
                FileHttp2Limits::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|l| FileHttp2::Limits(Box::new(l)))
            }
        }
        d.deserialize_any(V)
    }
}

pub use crate::snapshot::Http2Settings;

/// Largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
const MAX_WINDOW: i64 = (1 << 31) - 1;

/// The listener's HTTP/2 settings; `None` when it is turned off (or a
/// value is invalid: the error is recorded).
pub(super) fn compile(
    cx: &mut Ctx<'_>,
    key: &str,
    f: Option<&Spanned<FileHttp2>>,
    max_connection_age: Option<ConfigDuration>,
) -> Option<Http2Settings> {
    let default = FileHttp2Limits::default();
    let limits = match f.map(Spanned::get_ref) {
        Some(FileHttp2::Enabled(false)) => return None,
        Some(FileHttp2::Limits(l)) if l.enabled == Some(false) => return None,
        Some(FileHttp2::Limits(l)) => l,
        Some(FileHttp2::Enabled(true)) | None => &default,
    };
    let mut ok = true;
    let mut get = |name: &str, v: &Option<Spanned<i64>>, default: i64, min: i64, max: i64| {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if n < min || n > max {
            cx.error(
                v.span(),
                format!("listeners.{key}.http2.{name}"),
                format!("must be between {min} and {max}, not {n}"),
            );
            ok = false;
        }
        n
    };
    let settings = Http2Settings {
        max_concurrent_streams: get(
            "max_concurrent_streams",
            &limits.max_concurrent_streams,
            100,
            1,
            u32::MAX.into(),
        ) as u32,
        initial_stream_window: get(
            "initial_stream_window",
            &limits.initial_stream_window,
            64 * 1024,
            1024,
            MAX_WINDOW,
        ) as u32,
        initial_connection_window: get(
            "initial_connection_window",
            &limits.initial_connection_window,
            1024 * 1024,
            65_535,
            MAX_WINDOW,
        ) as u32,
        max_header_list_bytes: get(
            "max_header_list_bytes",
            &limits.max_header_list_bytes,
            64 * 1024,
            1024,
            16 * 1024 * 1024,
        ) as u32,
        max_frame_size: get(
            "max_frame_size",
            &limits.max_frame_size,
            16_384,
            16_384,
            16_777_215,
        ) as u32,
        max_pending_resets: get(
            "max_pending_resets",
            &limits.max_pending_resets,
            20,
            1,
            100_000,
        ) as usize,
        max_error_resets: get(
            "max_error_resets",
            &limits.max_error_resets,
            1024,
            1,
            1_000_000,
        ) as usize,
        max_client_resets: get(
            "max_client_resets",
            &limits.max_client_resets,
            100,
            1,
            1_000_000,
        ) as u64,
        max_connection_age: max_connection_age.map(|d| d.0),
    };
    ok.then_some(settings)
}
