//! Value types that parse themselves while the TOML is read, so a bad value
//! is reported at its own line and column.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as a string: `"250ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

pub use crate::units::{format_duration, parse_duration};

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string like \"250ms\" or \"5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "durations are strings with a unit: write \"{v}s\" or \"{v}ms\", not {v}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

pub use crate::snapshot::{PinWorkers, Workers};

/// A positive integer limit (`max_connections = 10000`).
pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = i64::deserialize(d)?;
    if v < 1 {
        return Err(de::Error::custom(format!(
            "must be an integer >= 1, not {v}"
        )));
    }
    Ok(Some(v as u64))
}

/// A timeout that must be more than zero (a zero timeout would fail every
/// operation at once).
pub fn positive_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<ConfigDuration>, D::Error> {
    let v = ConfigDuration::deserialize(d)?;
    if v.0.is_zero() {
        return Err(de::Error::custom("must be more than 0 (it is a timeout)"));
    }
    Ok(Some(v))
}

/// A count that may be zero (`retry.attempts = 0`).
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = i64::deserialize(d)?;
    if v < 0 {
        return Err(de::Error::custom(format!(
            "must be an integer >= 0, not {v}"
        )));
    }
    Ok(Some(v as u64))
}

/// A percentage from 0 to 100.
pub fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = i64::deserialize(d)?;
    if !(0..=100).contains(&v) {
        return Err(de::Error::custom(format!(
            "must be a percentage from 0 to 100, not {v}"
        )));
    }
    Ok(Some(v as u64))
}

/// A ratio from 0 to 1 (an integer 0 or 1 is accepted too).
pub fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number from 0 to 1")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(E::custom(format!("must be a number from 0 to 1, not {v}")))
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            self.visit_f64(v as f64)
        }
    }
    d.deserialize_any(V).map(Some)
}

/// A duration that may be zero (`retry.backoff = "0s"`: no wait).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ConfigDuration>, D::Error> {
    ConfigDuration::deserialize(d).map(Some)
}

/// `buffer_size`: 4 KiB to 16 MiB.
pub fn buffer_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = i64::deserialize(d)?;
    if !(4096..=16 * 1024 * 1024).contains(&v) {
        return Err(de::Error::custom(format!(
            "must be between 4096 and 16777216 bytes, not {v}"
        )));
    }
    Ok(Some(v as u64))
}

/// `splice_pipe_size`: 4 KiB to 1 MiB (the kernel's default
/// `fs.pipe-max-size`, past which an unprivileged process is refused).
pub fn pipe_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = i64::deserialize(d)?;
    if !(4096..=1024 * 1024).contains(&v) {
        return Err(de::Error::custom(format!(
            "must be between 4096 and 1048576 bytes, not {v}"
        )));
    }
    Ok(Some(v as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("250ms", 250_000),
            ("5s", 5_000_000),
            ("1.5s", 1_500_000),
            ("2m", 120_000_000),
            ("1h", 3_600_000_000),
            ("10us", 10),
            ("0s", 0),
        ];
        for (s, micros) in ok {
            assert_eq!(parse_duration(s).unwrap().as_micros(), micros, "{s}");
        }
        for s in [
            "",
            "5",
            "s",
            "5x",
            "-1s",
            "1.s",
            ".5s",
            "5 sec",
            "99999999h",
        ] {
            assert!(parse_duration(s).is_err(), "{s} should be rejected");
        }
    }
}
