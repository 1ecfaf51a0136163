//! The settings types a [`Snapshot`](super::Snapshot) holds: plain values
//! (with the serde forms the config file writes them in), read by every
//! layer above; `config` is the only code that builds them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// `workers = "auto"` or a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    /// One worker per core this process may run on.
    #[default]
    Auto,
    /// Exactly this many workers.
    Count(usize),
}

/// As written in the config: `"auto"` or the number.
impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::Auto => f.write_str("\"auto\""),
            Workers::Count(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\" or an integer >= 1")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "auto" {
                    Ok(Workers::Auto)
                } else {
                    Err(E::custom(format!(
                        "workers must be \"auto\" or an integer >= 1, not \"{v}\""
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                if (1..=4096).contains(&v) {
                    Ok(Workers::Count(v as usize))
                } else {
                    Err(E::custom(format!(
                        "workers must be between 1 and 4096, not {v}"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `pin_workers = true`, `false` or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PinWorkers {
    /// Pin only when this process's CPUs are its own (worker::cpus).
    #[default]
    Auto,
    /// Pin worker n to the n-th allowed CPU.
    Always,
    /// Never pin.
    Never,
}

/// As written in the config.
impl fmt::Display for PinWorkers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PinWorkers::Auto => "\"auto\"",
            PinWorkers::Always => "true",
            PinWorkers::Never => "false",
        })
    }
}

impl<'de> Deserialize<'de> for PinWorkers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PinWorkers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(if v {
                    PinWorkers::Always
                } else {
                    PinWorkers::Never
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "auto" {
                    Ok(PinWorkers::Auto)
                } else {
                    Err(E::custom(format!(
                        "pin_workers must be true, false or \"auto\", not \"{v}\""
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Which I/O driver the workers run on.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    /// io_uring where the kernel permits it, else epoll (with a warning).
    #[default]
    Auto,
    /// io_uring or refuse to start.
    IoUring,
    /// The readiness-based (epoll) driver.
    Epoll,
}

/// As written in the config.
impl std::fmt::Display for IoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoMode::Auto => "\"auto\"",
            IoMode::IoUring => "\"io_uring\"",
            IoMode::Epoll => "\"epoll\"",
        })
    }
}

/// When a tcp listener relays with splice(2) instead of a user-space buffer.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SpliceMode {
    /// Buffer first; switch a direction to splice once it moves bulk data.
    #[default]
    Auto,
    /// Splice from the first byte.
    Always,
    /// Never splice.
    Never,
}

/// Default `splice_pipe_size`: the bytes one splice(2) moves at most.
pub const DEFAULT_SPLICE_PIPE_SIZE: usize = 256 * 1024;

/// How access log lines are written.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Space-separated fields in a fixed order, `-` for an empty one.
    Text,
}

pub use crate::http::normalize::{EscapedSlashes, PathPolicy};

/// `[xds]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsSettings {
    /// `host:port` of the management server.
    pub address: String,
    pub node_id: String,
    pub node_cluster: String,
    pub connect_timeout: Duration,
    pub tls: Option<XdsTls>,
}

/// `[xds.tls]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTls {
    /// PEM roots; default the system's.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (mutual TLS to the management server).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name verified; default the address's host.
    pub server_name: Option<String>,
}

/// HTTP/2 on an http listener (downstream side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Settings {
    pub max_concurrent_streams: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_header_list_bytes: u32,
    pub max_frame_size: u32,
    pub max_pending_resets: usize,
    pub max_error_resets: usize,
    pub max_client_resets: u64,
    /// `max_connection_age` of the listener: GOAWAY after this long.
    pub max_connection_age: Option<Duration>,
}
