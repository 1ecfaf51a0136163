//! Files a run can write besides the summary: JSON (`--json`), an
//! HdrHistogram interval log (`--hdr-log`) and an SVG plot (`--plot`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::plot::{self, Chart, Series};
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

/// Latency by percentile (log-log, as HdrHistogram's plotter draws it;
/// open loop adds the uncorrected service time, dashed) above the
/// per-second throughput.
pub fn plot_svg(report: &Report) -> String {
    let mut series = Vec::new();
    if let Some(h) = &report.histograms.latency {
        let name = if report.target_rate.is_some() {
            "latency from the intended send (corrected)"
        } else {
            "latency"
        };
        series.push(Series {
            name: name.into(),
            latency: h,
            dashed: false,
        });
    }
    if let (Some(_), Some(h)) = (report.target_rate, &report.histograms.uncorrected) {
        series.push(Series {
            name: "service time from the actual send (uncorrected)".into(),
            latency: h,
            dashed: true,
        });
    }
    let chart = Chart {
        title: format!("{} {}", report.mode, report.target),
        subtitle: workload(report),
        series,
        timeline: Some(&report.timeline_ops_per_second),
    };
    plot::svg(&chart)
}

/// One line describing a run's workload, for chart subtitles.
pub fn workload(report: &Report) -> String {
    let load = match report.target_rate {
        Some(r) => format!("open loop at {r:.0}/s"),
        None => "closed loop".into(),
    };
    format!(
        "{} connections, {} thread(s), {load}, {} B, {:.1} s measured, {} operations ({:.0}/s)",
        report.connections,
        report.threads,
        report.size_bytes,
        report.measured_seconds,
        report.operations,
        report.operations_per_second
    )
}
