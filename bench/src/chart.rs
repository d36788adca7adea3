//! SVG charts of a report: one-way latency CDF per technique, throughput by message size, fan-out latency by
//! number of receivers. Drawn with `plotters`' SVG backend; every series gets its own colour and marker shape,
//! so the lines can be told apart without colour too.

use crate::report::{Report, Row};
use anyhow::Context;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (960, 600);
/// Longest CDF polyline: enough for a smooth curve, small enough for a light file.
const CDF_POINTS: usize = 400;

/// Writes every chart the report has data for into `dir`; returns the files written.
pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let size = cdf_size(report);
    if let Some(size) = size {
        let path = dir.join("latency-cdf.svg");
        latency_cdf(report, size, &path)?;
        written.push(path);
    }
    let path = dir.join("throughput.svg");
    if throughput(report, &path)? {
        written.push(path);
    }
    let path = dir.join("fanout-latency.svg");
    if fanout(report, &path)? {
        written.push(path);
    }
    Ok(written)
}

/// The CDF shows one message size: 1 KiB if measured, else the smallest.
fn cdf_size(report: &Report) -> Option<usize> {
    let sizes: Vec<usize> = report.pairs().filter(|r| !r.paced_samples().is_empty()).map(|r| r.size).collect();
    if sizes.contains(&1024) { Some(1024) } else { sizes.into_iter().min() }
}

fn style(i: usize) -> RGBColor {
    // Colour-blind-safe (Okabe–Ito), then plotters' palette.
    const OKABE_ITO: [RGBColor; 8] = [
        RGBColor(0, 0, 0),
        RGBColor(230, 159, 0),
        RGBColor(86, 180, 233),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(120, 120, 120),
    ];
    OKABE_ITO.get(i).copied().unwrap_or_else(|| {
        let c = Palette99::pick(i).to_rgba();
        RGBColor(c.0, c.1, c.2)
    })
}

/// Draws marker `i % 3` (circle, triangle, cross) at `at`.
fn marker<DB: DrawingBackend>(i: usize, at: (f64, f64), color: RGBColor) -> DynElement<'static, DB, (f64, f64)> {
    match i % 3 {
        0 => Circle::new(at, 4, color.filled()).into_dyn(),
        1 => TriangleMarker::new(at, 5, color.filled()).into_dyn(),
        _ => Cross::new(at, 5, color.stroke_width(2)).into_dyn(),
    }
}

fn techniques(rows: &[&Row]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        if !names.contains(&r.technique) {
            names.push(r.technique.clone());
        }
    }
    names
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    (lo.is_finite() && hi > 0.0).then(|| (lo / 1.5, (hi * 1.5).max(lo * 2.0)))
}

fn latency_cdf(report: &Report, size: usize, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<&Row> = report.pairs().filter(|r| r.size == size).collect();
    let series: Vec<(String, Vec<f64>)> = rows
        .iter()
        .map(|r| {
            let mut v = r.paced_samples();
            v.retain(|x| x.is_finite() && *x > 0.0);
            v.sort_by(f64::total_cmp);
            (r.technique.clone(), v)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let (lo, hi) = bounds(series.iter().flat_map(|(_, v)| v.iter().copied())).context("no latency samples")?;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("One-way latency CDF, {size} B messages at {} msg/s, 1 → 1", crate::report::num(report.params.paced_rate)),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("one-way latency, µs (log scale)")
        .y_desc("fraction of messages delivered within")
        .x_label_formatter(&|v| crate::report::num(*v))
        .draw()?;
    for (i, (name, v)) in series.iter().enumerate() {
        let color = style(i);
        let n = v.len();
        let step = (n / CDF_POINTS).max(1);
        let pts: Vec<(f64, f64)> =
            (0..n).step_by(step).chain(std::iter::once(n - 1)).map(|k| (v[k], (k + 1) as f64 / n as f64)).collect();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(format!("{name} (n = {n})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        // Markers at the median and p99, shaped per series.
        let at = |q: f64| pts.iter().copied().find(|p| p.1 >= q);
        for q in [0.5, 0.99] {
            if let Some(p) = at(q) {
                chart.draw_series(std::iter::once(marker(i, p, color)))?;
            }
        }
    }
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// A line per technique over x, y from `points`; log-log. Returns false when there is nothing to draw.
fn lines(
    path: &Path,
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    series: Vec<(String, Vec<(f64, f64)>)>,
) -> anyhow::Result<bool> {
    let series: Vec<_> = series.into_iter().filter(|(_, p)| !p.is_empty()).collect();
    let Some((xlo, xhi)) = bounds(series.iter().flat_map(|(_, p)| p.iter().map(|p| p.0))) else { return Ok(false) };
    let Some((ylo, yhi)) = bounds(series.iter().flat_map(|(_, p)| p.iter().map(|p| p.1))) else { return Ok(false) };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d((xlo..xhi).log_scale(), (ylo..yhi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| crate::report::num(*v))
        .y_label_formatter(&|v| crate::report::num(*v))
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = style(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| marker(i, p, color)))?;
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(true)
}

/// One series per technique (in row order), a point per row that `point` gives one for.
fn series_by_technique(rows: &[&Row], point: impl Fn(&Row) -> Option<(f64, f64)>) -> Vec<(String, Vec<(f64, f64)>)> {
    techniques(rows)
        .into_iter()
        .map(|name| {
            let pts = rows.iter().filter(|r| r.technique == name).filter_map(|r| point(r)).collect();
            (name, pts)
        })
        .collect()
}

fn throughput(report: &Report, path: &Path) -> anyhow::Result<bool> {
    let rows: Vec<&Row> = report.pairs().collect();
    let series = series_by_technique(&rows, |r| Some((r.size as f64, r.mb_per_s()?)).filter(|p| p.1 > 0.0));
    lines(path, "Unpaced throughput by message size, 1 → 1 (median across passes)", "message size, bytes (log)", "MB/s received (log)", series)
}

/// One-way p50 by receivers at the fan-out size (1 → 1 included as N = 1).
fn fanout(report: &Report, path: &Path) -> anyhow::Result<bool> {
    let rows: Vec<&Row> = report.rows.iter().filter(|r| r.size == report.params.fanout_size).collect();
    if !rows.iter().any(|r| r.receivers > 1) {
        return Ok(false);
    }
    let series = series_by_technique(&rows, |r| Some((r.receivers as f64, r.one_way_p50()?)));
    let caption = format!(
        "Fan-out: one-way latency p50 by receivers, {} B at {} msg/s",
        report.params.fanout_size,
        crate::report::num(report.params.paced_rate)
    );
    lines(path, &caption, "receivers N (log)", "one-way p50, µs (log)", series)
}
