//! SVG charts of latency by percentile, drawn the way HdrHistogram's
//! plotter and Gil Tene's percentile charts are: the x axis is
//! log10(1 / (1 - p)), so 90%, 99%, 99.9% … sit at equal steps, and the
//! latency axis is logarithmic too, so a p50 of 100 µs and a p99.9 of 5 ms
//! are both readable on one chart. One or more series (a run's corrected
//! and uncorrected latency, or every target of a comparison), a legend, the
//! p50 / p99 / p99.9 of each series marked, and, for a single run, the
//! operations per second of each second of the measured window below.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// One latency curve.
#[derive(Debug)]
pub struct Series<'a> {
    pub name: String,
    /// Values in microseconds.
    pub latency: &'a Histogram<u64>,
    /// Drawn dashed (a secondary curve, such as uncorrected service time).
    pub dashed: bool,
}

/// What one chart shows.
#[derive(Debug)]
pub struct Chart<'a> {
    pub title: String,
    /// A second line under the title: the workload.
    pub subtitle: String,
    pub series: Vec<Series<'a>>,
    /// Operations completed in each second, for the throughput panel.
    pub timeline: Option<&'a [u64]>,
}

const W: f64 = 860.0;
const PANEL_H: f64 = 360.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// The chart as a standalone SVG document.
pub fn svg(chart: &Chart<'_>) -> String {
    let throughput_h = if chart.timeline.is_some() { 220.0 } else { 0.0 };
    let total_h = 70.0 + PANEL_H + throughput_h + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" font-family="sans-serif" font-size="12">"##
    );
    s.push_str(r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{}</text><text x="{LEFT}" y="42" fill="#555">{}</text>"##,
        esc(&chart.title),
        esc(&chart.subtitle)
    );
    latency_panel(&mut s, chart, 60.0);
    if let Some(t) = chart.timeline {
        throughput_panel(&mut s, t, 60.0 + PANEL_H + 30.0);
    }
    s.push_str("</svg>\n");
    s
}

/// Latency (log) by percentile (log of 1/(1-p)).
fn latency_panel(s: &mut String, chart: &Chart<'_>, top: f64) {
    let series: Vec<&Series<'_>> = chart
        .series
        .iter()
        .filter(|c| !c.latency.is_empty())
        .collect();
    if series.is_empty() {
        let _ = write!(
            s,
            r##"<text x="{LEFT}" y="{}">no completed operations</text>"##,
            top + 40.0
        );
        return;
    }
    let (x0, x1) = (LEFT, W - RIGHT);
    let (y_top, y_bottom) = (top + 10.0, top + PANEL_H - 40.0);
    // x: as far as the data reaches (the largest count's nines), 2 to 6 nines.
    let count = series.iter().map(|c| c.latency.len()).max().unwrap_or(1);
    let max_nines = ((count as f64).log10().ceil()).clamp(2.0, 6.0);
    let p_max = 1.0 - 10f64.powf(-max_nines);
    let nines = |p: f64| (1.0 / (1.0 - p.min(p_max))).log10();
    let x = |p: f64| x0 + (x1 - x0) * nines(p) / max_nines;
    // y: whole decades around the data, in microseconds.
    let lo = series
        .iter()
        .map(|c| c.latency.min().max(1))
        .min()
        .unwrap_or(1) as f64;
    let hi = series
        .iter()
        .map(|c| c.latency.max().max(1))
        .max()
        .unwrap_or(1) as f64;
    let (d_lo, d_hi) = (
        lo.log10().floor(),
        (hi.log10().ceil()).max(lo.log10().floor() + 1.0),
    );
    let y =
        |us: f64| y_bottom - (y_bottom - y_top) * ((us.max(1.0).log10() - d_lo) / (d_hi - d_lo));
    // Grid and latency ticks at 1, 2, 5 of each decade.
    let mut d = d_lo;
    while d <= d_hi {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(d);
            if v.log10() > d_hi + 1e-9 {
                break;
            }
            let py = y(v);
            let (stroke, label) = if m == 1.0 {
                ("#ccc", true)
            } else {
                ("#eee", m == 5.0 && d_hi - d_lo <= 3.0)
            };
            let _ = write!(
                s,
                r##"<line x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}" stroke="{stroke}"/>"##
            );
            if label || m == 1.0 {
                let _ = write!(
                    s,
                    r##"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                    x0 - 6.0,
                    py + 4.0,
                    fmt_us(v)
                );
            }
        }
        d += 1.0;
    }
    // Percentile ticks.
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    for (i, label) in labels.iter().enumerate().take(max_nines as usize + 1) {
        let px = x(1.0 - 10f64.powi(-(i as i32)));
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{y_top}" x2="{px:.1}" y2="{y_bottom}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            y_bottom + 16.0
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">percentile</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle" fill="#555">latency (log scale)</text>"##,
        (x0 + x1) / 2.0,
        y_bottom + 34.0,
        (y_top + y_bottom) / 2.0,
        (y_top + y_bottom) / 2.0
    );
    // The curves, then their p50 / p99 / p99.9 marks.
    for (k, c) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let mut points = Vec::with_capacity(401);
        for step in 0..=400 {
            let p = 1.0 - 10f64.powf(-max_nines * step as f64 / 400.0);
            let v = c.latency.value_at_quantile(p) as f64;
            points.push(format!("{:.1},{:.1}", x(p), y(v)));
        }
        let dash = if c.dashed {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"##,
            points.join(" ")
        );
        if c.dashed {
            continue;
        }
        for (p, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
            if p > p_max {
                continue;
            }
            let v = c.latency.value_at_quantile(p) as f64;
            let (px, py) = (x(p), y(v));
            let _ = write!(
                s,
                r##"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{color}"/><text x="{:.1}" y="{:.1}" fill="{color}" stroke="white" stroke-width="3" paint-order="stroke">{name} {}</text>"##,
                px + 6.0,
                py - 6.0 - 14.0 * k as f64,
                fmt_us(v)
            );
        }
    }
    // Legend, top left inside the panel.
    let lh = 18.0;
    let _ = write!(
        s,
        r##"<rect x="{}" y="{}" width="300" height="{:.1}" fill="white" stroke="#ccc"/>"##,
        x0 + 10.0,
        y_top + 6.0,
        lh * series.len() as f64 + 8.0
    );
    for (k, c) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let ly = y_top + 10.0 + lh * k as f64 + 9.0;
        let dash = if c.dashed {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let _ = write!(
            s,
            r##"<line x1="{}" y1="{ly:.1}" x2="{}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{:.1}">{}</text>"##,
            x0 + 18.0,
            x0 + 42.0,
            x0 + 50.0,
            ly + 4.0,
            esc(&c.name)
        );
    }
}

/// Operations completed in each second of the measured window.
fn throughput_panel(s: &mut String, t: &[u64], top: f64) {
    let (x0, x1) = (LEFT, W - RIGHT);
    let (y_top, y_bottom) = (top + 20.0, top + 170.0);
    let _ = write!(
        s,
        r##"<text x="{x0}" y="{}" font-size="14">operations per second</text>"##,
        top + 8.0
    );
    if t.is_empty() {
        return;
    }
    let max = nice_ceiling((*t.iter().max().unwrap_or(&1)).max(1) as f64);
    let y = |v: f64| y_bottom - (y_bottom - y_top) * (v / max);
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{x0}" y1="{:.1}" x2="{x1}" y2="{:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            y(v),
            y(v),
            x0 - 6.0,
            y(v) + 4.0,
            fmt_count(v)
        );
    }
    let bw = (x1 - x0) / t.len() as f64;
    let every = (t.len() / 12).max(1);
    for (i, v) in t.iter().enumerate() {
        let bx = x0 + bw * i as f64;
        let by = y(*v as f64);
        let _ = write!(
            s,
            r##"<rect x="{bx:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="#ff7f0e"/>"##,
            (bw - 2.0).max(1.0),
            y_bottom - by
        );
        if i % every == 0 {
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{}" text-anchor="middle">{i}-{}s</text>"##,
                bx + bw / 2.0,
                y_bottom + 16.0,
                i + 1
            );
        }
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">second of the measured window</text>"##,
        (x0 + x1) / 2.0,
        y_bottom + 34.0
    );
}

/// A latency in microseconds as people write it: "850 µs", "1.2 ms", "3 s".
pub fn fmt_us(us: f64) -> String {
    let trim = |v: f64| {
        if v >= 100.0 || (v - v.round()).abs() < 0.05 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}").trim_end_matches(".0").to_string()
        } else {
            format!("{v:.2}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        }
    };
    if us >= 1e6 {
        format!("{} s", trim(us / 1e6))
    } else if us >= 1e3 {
        format!("{} ms", trim(us / 1e3))
    } else {
        format!("{} µs", trim(us))
    }
}

fn fmt_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim_num(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim_num(v / 1e3))
    } else {
        format!("{v:.0}")
    }
}

fn trim_num(v: f64) -> String {
    format!("{v:.1}").trim_end_matches(".0").to_string()
}

/// The next 1, 2, 2.5 or 5 times a power of ten at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_labels_read_like_units() {
        assert_eq!(fmt_us(850.0), "850 µs");
        assert_eq!(fmt_us(1.0), "1 µs");
        assert_eq!(fmt_us(1200.0), "1.2 ms");
        assert_eq!(fmt_us(1000.0), "1 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.5 s");
        assert_eq!(fmt_us(15_300.0), "15.3 ms");
        assert_eq!(fmt_count(25_000.0), "25k");
        assert_eq!(nice_ceiling(27_002.0), 50_000.0);
        assert_eq!(nice_ceiling(19_000.0), 20_000.0);
    }
}
