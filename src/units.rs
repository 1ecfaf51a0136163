//! Durations as the config writes them (`"250ms"`, `"5s"`): parsed and
//! printed the same way by the config compiler, route faults read from a
//! request header, and the control thread's messages. Base floor: imports
//! nothing of the crate.

use std::time::Duration;

/// A duration as a config would write it: `"5s"`, `"250ms"`, `"1.5s"`.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us % 1_000_000 == 0 {
        format!("\"{}s\"", us / 1_000_000)
    } else if us % 1000 == 0 {
        format!("\"{}ms\"", us / 1000)
    } else {
        format!("\"{us}us\"")
    }
}

/// Parses `"250ms"`, `"5s"`, `"1.5s"`, `"10us"`, `"2m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || {
        format!(
            "invalid duration \"{s}\": expected a number and a unit (us, ms, s, m, h), like \"250ms\" or \"5s\""
        )
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 365.0 * 24.0 * 3600.0 {
        return Err(format!(
            "duration \"{s}\" is too large (the limit is one year)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}
