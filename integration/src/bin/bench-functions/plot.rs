//! Memory over time during a workload, one line per mode, as SVG (plotters): on top, the
//! workload's node memory (MiB: used memory above the baseline plus the mode's templates);
//! in the middle, the platform's memory (the instances' and their shims' Pss plus the
//! templates); below, the live instances. Text is set in DejaVu Sans, read at run time
//! (Debian's fonts-dejavu-core, or the file named by TRENV_PLOT_FONT), as `trenv meter plot`
//! does (shim/cli/src/plot.rs).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

const SIZE: (u32, u32) = (1200, 1000);
const FONT: &str = "sans-serif";
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
const COLOURS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
];

/// One mode's lines: its label and its points (s, value) of node memory (MiB), platform
/// memory (MiB) and live instances.
pub struct Line {
    pub label: String,
    pub node: Vec<(f64, f64)>,
    pub platform: Vec<(f64, f64)>,
    pub live: Vec<(f64, f64)>,
}

/// Registers DejaVu Sans with plotters once per process.
fn ensure_font() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let candidates: Vec<PathBuf> = match std::env::var_os("TRENV_PLOT_FONT") {
                Some(p) => vec![PathBuf::from(p)],
                None => FONT_PATHS.iter().map(PathBuf::from).collect(),
            };
            let (path, bytes) = candidates
                .iter()
                .find_map(|p| std::fs::read(p).ok().map(|b| (p.clone(), b)))
                .ok_or_else(|| {
                    "no font for the chart's labels: install fonts-dejavu-core, or set \
                     TRENV_PLOT_FONT to a .ttf file"
                        .to_string()
                })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{}: not a TrueType/OpenType font", path.display()))
        })
        .clone()
}

/// Which points of a line a panel draws.
type Series = fn(&Line) -> &[(f64, f64)];

/// Draws `lines` into `out` (SVG).
pub fn memory_over_time(out: &Path, title: &str, lines: &[Line]) -> Result<(), String> {
    ensure_font()?;
    let root = SVGBackend::new(out, SIZE).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e}", out.display());
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FONT, 24)).map_err(err)?;
    let panels = root.split_evenly((3, 1));
    let x_end = lines
        .iter()
        .flat_map(|l| l.node.iter().chain(&l.platform).chain(&l.live))
        .map(|p| p.0)
        .fold(1.0, f64::max)
        * 1.02;
    let kinds: [(&str, Series, bool); 3] = [
        ("node memory (MiB)", |l| &l.node, true),
        ("platform memory (MiB)", |l| &l.platform, false),
        ("live instances", |l| &l.live, false),
    ];
    for (area, (desc, series, legend)) in panels.iter().zip(kinds) {
        panel(area, desc, x_end, lines, series, legend)
            .map_err(|e| format!("drawing {}: {e}", out.display()))?;
    }
    root.present().map_err(err)
}

/// One panel: `series` of every line over time, the legend if `legend`.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    desc: &str,
    x_end: f64,
    lines: &[Line],
    series: Series,
    legend: bool,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let y_top = lines
        .iter()
        .flat_map(|l| series(l).iter())
        .map(|p| p.1)
        .fold(1.0, f64::max)
        * if legend { 1.35 } else { 1.1 };
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_end, 0.0..y_top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time since the workload's start (s)")
        .y_desc(desc)
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for (i, l) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                series(l).iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(l.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(2)));
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_a_line_per_mode() {
        if ensure_font().is_err() {
            return; // no font on this machine: nothing to draw with
        }
        let out = std::env::temp_dir().join(format!("bench-fn-plot-{}.svg", std::process::id()));
        let lines: Vec<Line> = ["(c)", "(e)"]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let v = |k: f64| {
                    (0..50)
                        .map(|t| (t as f64 * 0.1, k * (i + 1) as f64))
                        .collect()
                };
                Line {
                    label: l.to_string(),
                    node: v(100.0),
                    platform: v(80.0),
                    live: v(2.0),
                }
            })
            .collect();
        memory_over_time(&out, "test", &lines).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        assert!(svg.contains("(c)") && svg.contains("(e)"), "{svg}");
        // Each mode's colour draws its memory line and its live-instances line.
        for colour in ["#D62728", "#FF7F0E"] {
            assert!(
                svg.matches(&format!(
                    "<polyline fill=\"none\" opacity=\"1\" stroke=\"{colour}\""
                ))
                .count()
                    >= 2,
                "{svg}"
            );
        }
    }
}
