//! The latency distribution as a PNG: latency against percentile on a
//! "nines" axis (90%, 99%, 99.9%, …), the usual HDR histogram picture.

use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Points (nines, latency ms) from p0 to the maximum.
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut nines = 0.0;
    while nines <= 5.0 {
        let q = 1.0 - 10f64.powf(-nines);
        points.push((nines, h.value_at_quantile(q) as f64 / 1000.0));
        nines += 0.05;
    }
    points
}

fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_PATHS
            .iter()
            .find(|p| Path::new(p).is_file())
            .ok_or("DejaVuSans.ttf not found (apt-get install fonts-dejavu-core)")?;
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        // plotters keeps the font for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

pub fn latency_png(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    register_font()?;
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series.iter().map(|(n, h)| (*n, curve(h))).collect();
    let top = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    let draw =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("failed to draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5f64, (0.1f64..top * 1.5).log_scale())
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("send → deliver latency (ms)")
        .x_labels(6)
        .x_label_formatter(&|n| {
            let p = 100.0 * (1.0 - 10f64.powf(-n));
            let s = format!("{p:.3}");
            format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
        })
        .draw()
        .map_err(|e| draw(&e))?;
    let colors = [BLUE, RED, GREEN];
    for (i, (name, points)) in curves.into_iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present()
        .with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_rises_to_the_maximum() {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for v in 1..=10_000u64 {
            h.record(v * 10).expect("record");
        }
        let c = curve(&h);
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!((c[0].1 - 0.01).abs() < 0.001);
        assert!((c.last().expect("points").1 - 100.0).abs() < 0.2);
    }

    #[test]
    fn draws_a_png() {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for v in [1_000u64, 2_000, 50_000, 900_000] {
            h.record(v).expect("record");
        }
        let dir = std::env::temp_dir().join(format!("sb-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("latency.png");
        latency_png(&path, "test", &[("live", &h)]).expect("plot");
        let bytes = std::fs::read(&path).expect("png");
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 5_000);
    }
}
