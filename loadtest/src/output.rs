//! Files a run can write besides the summary: JSON (`--json`), an
//! HdrHistogram interval log (`--hdr-log`) and an SVG plot (`--plot`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::report::Report;

/// Write whichever outputs were asked for.
pub fn write_all(
    report: &Report,
    json: Option<&Path>,
    hdr_log: Option<&Path>,
    plot: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = hdr_log {
        write_hdr_log(report, path)?;
    }
    if let Some(path) = plot {
        std::fs::write(path, plot_svg(report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The standard interval log: one V2-deflate histogram per second of the
/// measured window, values in microseconds (readable by HdrHistogram's
/// HistogramLogProcessor and plotters).
fn write_hdr_log(report: &Report, path: &Path) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let start = SystemTime::now() - Duration::from_secs_f64(report.measured_seconds);
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment(&format!("outrigger-load {} {}", report.mode, report.target))
        .add_comment("values in microseconds")
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(&mut out, &mut serializer)?;
    for (i, h) in report.histograms.intervals.iter().enumerate() {
        log.write_histogram(
            h,
            Duration::from_secs(i as u64),
            Duration::from_secs(1),
            None,
        )
        .map_err(|e| anyhow::anyhow!("cannot write the interval log: {e}"))?;
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

const W: f64 = 760.0;
const H: f64 = 300.0;
const PAD: f64 = 60.0;

/// Latency by percentile (x: log scale of 1/(1-p), as HdrHistogram's
/// plotter draws it) above the per-second throughput.
pub fn plot_svg(report: &Report) -> String {
    let mut s = String::new();
    let total_h = 2.0 * H + 40.0;
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{PAD}" y="20" font-size="14">{} {} — latency by percentile</text>"#,
        esc(&report.mode),
        esc(&report.target)
    );
    latency_panel(&mut s, report, 30.0);
    throughput_panel(&mut s, report, H + 50.0);
    s.push_str("</svg>\n");
    s
}

fn latency_panel(s: &mut String, report: &Report, top: f64) {
    let Some(h) = &report.histograms.latency else {
        return;
    };
    if h.is_empty() {
        return;
    }
    // x = log10(1 / (1 - p)), from p = 0 to p = 0.99999.
    let max_x = 5.0;
    let max_ms = (h.max() as f64 / 1000.0).max(0.001);
    let x = |p: f64| PAD + (W - 2.0 * PAD) * ((1.0 / (1.0 - p.min(0.99999))).log10() / max_x);
    let y = |ms: f64| top + H - PAD / 2.0 - (H - PAD) * (ms / max_ms);
    let mut points = Vec::new();
    for step in 0..=500 {
        let p = 1.0 - 10f64.powf(-max_x * step as f64 / 500.0);
        let v = h.value_at_quantile(p) as f64 / 1000.0;
        points.push(format!("{:.1},{:.1}", x(p), y(v)));
    }
    let _ = write!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        points.join(" ")
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let p = 1.0 - 10f64.powi(-(i as i32));
        let px = x(p);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            top + PAD / 2.0,
            y(0.0),
            y(0.0) + 16.0
        );
    }
    axis_y(s, top, y, max_ms, "ms");
}

fn throughput_panel(s: &mut String, report: &Report, top: f64) {
    let t = &report.timeline_ops_per_second;
    if t.is_empty() {
        return;
    }
    let _ = write!(
        s,
        r#"<text x="{PAD}" y="{}" font-size="14">operations per second</text>"#,
        top - 5.0
    );
    let max = (*t.iter().max().unwrap_or(&1)).max(1) as f64;
    let bw = (W - 2.0 * PAD) / t.len() as f64;
    let y = |v: f64| top + H - PAD / 2.0 - (H - PAD) * (v / max);
    for (i, v) in t.iter().enumerate() {
        let (x0, y0) = (PAD + bw * i as f64, y(*v as f64));
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="#ff7f0e"/>"##,
            (bw - 1.0).max(1.0),
            y(0.0) - y0
        );
    }
    axis_y(s, top, y, max, "/s");
}

fn axis_y(s: &mut String, _top: f64, y: impl Fn(f64) -> f64, max: f64, unit: &str) {
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{PAD}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{} {unit}</text>"##,
            y(v),
            W - PAD,
            y(v),
            PAD - 4.0,
            y(v) + 4.0,
            fmt_num(v)
        );
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
