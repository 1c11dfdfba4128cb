//! `--plot FILE`: throughput vs message size per system (left) and the ping-pong
//! latency CDF (right), in one `.svg` or `.png` file. Text uses the DejaVu Sans font
//! embedded in the binary (plotters' `ab_glyph` backend), so no fontconfig is needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::measure::format_size;
use crate::row::Row;

/// Size of the whole image in pixels.
const SIZE: (u32, u32) = (1600, 700);

/// Draws the charts for `rows` into `path` (format from the extension).
pub fn write(path: &Path, rows: &[Row]) -> Result<()> {
    register_font()?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => draw(SVGBackend::new(path, SIZE).into_drawing_area(), rows),
        Some("png") => draw(BitMapBackend::new(path, SIZE).into_drawing_area(), rows),
        _ => bail!(
            "--plot {}: unsupported extension, use .svg or .png",
            path.display()
        ),
    }
    .map_err(|e| e.context(format!("drawing {}", path.display())))
}

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .map_err(|_| anyhow!("registering the embedded DejaVu Sans font"));
    });
    result
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("{e:?}")
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, rows: &[Row]) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    throughput_chart(&left, rows)?;
    latency_chart(&right, rows)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Colour of `system`: the same in both charts, by first appearance in `rows`.
fn color(rows: &[Row], system: &str) -> RGBColor {
    let mut seen: Vec<&str> = Vec::new();
    for r in rows {
        if !seen.contains(&r.system.as_str()) {
            seen.push(&r.system);
        }
    }
    let index = seen.iter().position(|s| *s == system).unwrap_or(seen.len());
    let c = Palette99::pick(index).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

fn empty<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str) -> Result<()> {
    area.draw(&Text::new(
        format!("{title}: no measured rows"),
        (40, 40),
        ("sans-serif", 20).into_font(),
    ))
    .map_err(err)
}

fn throughput_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, rows: &[Row]) -> Result<()> {
    let title = "Stream throughput vs message size";
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for row in rows.iter().filter(|r| r.workload == "stream") {
        let Some(g) = row.gbit_per_sec.filter(|g| *g > 0.0) else {
            continue;
        };
        let point = (row.size_bytes as f64, g);
        match series.iter_mut().find(|(name, _)| *name == row.system) {
            Some((_, points)) => points.push(point),
            None => series.push((row.system.clone(), vec![point])),
        }
    }
    if series.is_empty() {
        return empty(area, title);
    }
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.1));
    let (x_min, x_max) = bounds(xs);
    let (y_min, y_max) = bounds(ys);
    let mut sizes: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_min / 1.5..x_max * 1.5)
                .log_scale()
                .with_key_points(sizes),
            (y_min / 2.0..y_max * 2.0).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("message size")
        .y_desc("Gbit/s (payload)")
        .x_label_formatter(&|v| format_size(v.round() as u64))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (name, mut points) in series {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = color(rows, &name);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    Ok(())
}

fn latency_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, rows: &[Row]) -> Result<()> {
    let title = "Ping-pong latency CDF (full round trip)";
    // (system, size) -> points
    let mut series: BTreeMap<(String, u64), Vec<(f64, f64)>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.workload == "pingpong") {
        let points: Vec<(f64, f64)> = row
            .cdf
            .iter()
            .copied()
            .filter(|(us, _)| *us > 0.0)
            .collect();
        if points.is_empty() {
            continue;
        }
        series.insert((row.system.clone(), row.size_bytes), points);
    }
    if series.is_empty() {
        return empty(area, title);
    }
    let (x_min, x_max) = bounds(series.values().flat_map(|p| p.iter().map(|p| p.0)));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((decade_below(x_min)..x_max * 1.2).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("round-trip latency (us)")
        .y_desc("fraction of round trips")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let smallest = series.keys().map(|k| k.1).min().unwrap_or(0);
    for ((system, size), mut points) in series {
        points.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)));
        let c = color(rows, &system);
        let label = format!("{system} {}", format_size(size));
        // The smallest size is drawn solid, larger ones dashed.
        let annotation = if size == smallest {
            chart.draw_series(LineSeries::new(points, c.stroke_width(2)))
        } else {
            chart.draw_series(DashedLineSeries::new(points, 8, 5, c.stroke_width(2)))
        }
        .map_err(err)?;
        let dashed = size != smallest;
        annotation.label(label).legend(move |(x, y)| {
            let end = if dashed { x + 8 } else { x + 20 };
            PathElement::new(vec![(x, y), (end, y)], c.stroke_width(2))
        });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The power of ten at or below `v`, so the log axis starts on a labelled decade.
fn decade_below(v: f64) -> f64 {
    10f64.powf(v.log10().floor())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() && hi > lo {
        (lo, hi)
    } else if lo.is_finite() {
        (lo / 2.0, lo * 2.0)
    } else {
        (1.0, 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        let mut out = Vec::new();
        for (i, size) in [64u64, 4096, 1 << 20].into_iter().enumerate() {
            let mut r = Row::new("std-blocking", "stream", size as usize, 1);
            r.gbit_per_sec = Some(0.5 * (i + 1) as f64);
            out.push(r);
        }
        let mut p = Row::new("std-blocking", "pingpong", 64, 1);
        p.cdf = vec![(10.0, 0.0), (20.0, 0.5), (50.0, 0.99), (90.0, 1.0)];
        out.push(p);
        out
    }

    #[test]
    fn writes_svg_and_png() {
        let dir = std::env::temp_dir().join(format!("dp-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["t.svg", "t.png"] {
            let path = dir.join(name);
            write(&path, &rows()).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() > 1000);
        }
        assert!(write(&dir.join("t.gif"), &rows()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
