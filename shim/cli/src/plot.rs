//! Charts of one invocation's memory over time: the sampled series, the exact peak, the
//! memory limit and, optionally, a function's max and upscaling hulls, as SVG or PNG.
//!
//! Text is set in DejaVu Sans, read at run time from Debian's `fonts-dejavu-core` (or the
//! TrueType file named by `TRENV_PLOT_FONT`); both formats need it to lay out the labels.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use trenv_meter::hull::Hull;

/// Size of the chart in pixels (SVG: user units).
const SIZE: (u32, u32) = (1200, 700);

/// Where Debian (fonts-dejavu-core), Fedora and Arch put DejaVu Sans.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const FONT: &str = "sans-serif";

const SAMPLED: RGBColor = RGBColor(31, 119, 180);
const PEAK: RGBColor = RGBColor(0, 0, 0);
const LIMIT: RGBColor = RGBColor(214, 39, 40);
const MAX_HULL: RGBColor = RGBColor(44, 160, 44);
const UPSCALING_HULL: RGBColor = RGBColor(255, 127, 14);

#[derive(Clone, Copy)]
enum Format {
    Svg,
    Png,
}

/// Draws memory (MiB) over time (ms) into `out`, an `.svg` or `.png` file: the sampled
/// `series` (`(t_us, bytes)`), the exact peak (dashed, when > 0), the limit (when > 0) and,
/// with a hull, its max and upscaling hulls as steps `bin_ms` wide.
pub fn plot(
    out: &Path,
    title: &str,
    series: &[(u64, u64)],
    limit_bytes: u64,
    peak_bytes: u64,
    hull: Option<&Hull>,
) -> anyhow::Result<()> {
    let format = match out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("svg") => Format::Svg,
        Some("png") => Format::Png,
        _ => bail!(
            "{}: cannot tell the image format; name the file *.svg or *.png",
            out.display()
        ),
    };
    ensure_font()?;
    let chart = Chart {
        title,
        series,
        limit_bytes,
        peak_bytes,
        hull,
    };
    let drawn = match format {
        Format::Svg => chart.draw(SVGBackend::new(out, SIZE).into_drawing_area()),
        Format::Png => chart.draw(BitMapBackend::new(out, SIZE).into_drawing_area()),
    };
    drawn.with_context(|| format!("drawing the chart {}", out.display()))
}

/// Registers DejaVu Sans with plotters once per process.
fn ensure_font() -> anyhow::Result<()> {
    static FONT_LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    FONT_LOADED
        .get_or_init(|| {
            let candidates: Vec<PathBuf> = match std::env::var_os("TRENV_PLOT_FONT") {
                Some(p) => vec![PathBuf::from(p)],
                None => FONT_PATHS.iter().map(PathBuf::from).collect(),
            };
            let (path, bytes) = read_font(&candidates).map_err(|e| e.to_string())?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{}: not a TrueType/OpenType font", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The first of `candidates` that can be read.
fn read_font(candidates: &[PathBuf]) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    for p in candidates {
        if let Ok(bytes) = std::fs::read(p) {
            return Ok((p.clone(), bytes));
        }
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "no font for the chart's labels (tried {}): install the package fonts-dejavu-core \
         (apt-get install fonts-dejavu-core), or set TRENV_PLOT_FONT to a .ttf file",
        tried.join(", ")
    )
}

/// An axis label: no trailing zeros (`70`, `2.5`).
fn tick(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

struct Chart<'a> {
    title: &'a str,
    series: &'a [(u64, u64)],
    limit_bytes: u64,
    peak_bytes: u64,
    hull: Option<&'a Hull>,
}

impl Chart<'_> {
    /// Hull steps: `(ms, MiB)` corners, each bin a flat step `bin_ms` wide.
    fn steps(bin_ms: u64, values: &[u64]) -> Vec<(f64, f64)> {
        values
            .iter()
            .enumerate()
            .flat_map(|(i, &v)| {
                let x0 = (i as u64 * bin_ms) as f64;
                [(x0, mib(v)), (x0 + bin_ms as f64, mib(v))]
            })
            .collect()
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
        let sampled: Vec<(f64, f64)> = self
            .series
            .iter()
            .map(|&(t, v)| (t as f64 / 1000.0, mib(v)))
            .collect();
        let hulls = self.hull.map(|h| {
            (
                Self::steps(h.bin_ms, &h.max_hull_bytes),
                Self::steps(h.bin_ms, &h.upscaling_hull_bytes),
            )
        });

        let all_points = sampled
            .iter()
            .chain(hulls.iter().flat_map(|(a, b)| a.iter().chain(b)));
        let x_end = all_points.clone().map(|p| p.0).fold(0.0, f64::max);
        let y_top = all_points
            .map(|p| p.1)
            .chain([mib(self.peak_bytes), mib(self.limit_bytes)])
            .fold(0.0, f64::max);
        let x_end = if x_end > 0.0 { x_end * 1.02 } else { 1.0 };
        // Headroom above the highest line for the legend.
        let y_top = if y_top > 0.0 { y_top * 1.3 } else { 1.0 };

        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, (FONT, 26))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_end, 0.0..y_top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("time since start (ms)")
            .y_desc("memory (MiB)")
            .axis_desc_style((FONT, 18))
            .label_style((FONT, 16))
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(205, 205, 205))
            .draw()
            .map_err(err)?;

        if let Some((max_hull, upscaling_hull)) = &hulls {
            let bin_ms = self.hull.map_or(0, |h| h.bin_ms);
            // Wide and translucent under the max hull: where the two coincide, both show.
            chart
                .draw_series(LineSeries::new(
                    upscaling_hull.iter().copied(),
                    UPSCALING_HULL.mix(0.55).stroke_width(6),
                ))
                .map_err(err)?
                .label(format!("upscaling hull ({bin_ms} ms bins)"))
                .legend(|(x, y)| {
                    PathElement::new(
                        [(x, y), (x + 24, y)],
                        UPSCALING_HULL.mix(0.55).stroke_width(6),
                    )
                });
            chart
                .draw_series(LineSeries::new(
                    max_hull.iter().copied(),
                    MAX_HULL.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("max hull ({bin_ms} ms bins)"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], MAX_HULL.stroke_width(2)));
        }

        chart
            .draw_series(LineSeries::new(
                sampled.iter().copied(),
                SAMPLED.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("sampled ({} samples)", self.series.len()))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], SAMPLED.stroke_width(2)));

        if self.peak_bytes > 0 {
            let y = mib(self.peak_bytes);
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, y), (x_end, y)],
                    8,
                    5,
                    PEAK.stroke_width(1),
                ))
                .map_err(err)?
                .label(format!("exact peak ({y:.1} MiB)"))
                .legend(|(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new([(0, 0), (8, 0)], PEAK.stroke_width(1))
                        + PathElement::new([(13, 0), (21, 0)], PEAK.stroke_width(1))
                });
        }

        if self.limit_bytes > 0 {
            let y = mib(self.limit_bytes);
            chart
                .draw_series(LineSeries::new(
                    [(0.0, y), (x_end, y)],
                    LIMIT.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("limit ({y:.1} MiB)"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], LIMIT.stroke_width(2)));
        }

        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Two phases, like tests/meter.rs's program: 50 MiB for 300 ms, then 120 MiB.
    fn series() -> Vec<(u64, u64)> {
        (0..60u64)
            .map(|i| {
                let t = i * 10_000;
                let v = if t < 300_000 { 50 * MIB } else { 120 * MIB };
                (t, v + (i % 7) * MIB / 4)
            })
            .collect()
    }

    fn hull() -> Hull {
        Hull::build(&[series()], &[122 * MIB], 100, 2).unwrap()
    }

    #[test]
    fn svg_has_every_line_in_the_legend() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.svg");
        plot(
            &out,
            "fn-a: memory",
            &series(),
            160 * MIB,
            122 * MIB,
            Some(&hull()),
        )
        .unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.len() > 5_000, "only {} bytes", svg.len());
        for text in [
            "fn-a: memory",
            "sampled (60 samples)",
            "exact peak (122.0 MiB)",
            "limit (160.0 MiB)",
            "max hull (100 ms bins)",
            "upscaling hull (100 ms bins)",
            "time since start (ms)",
            "memory (MiB)",
        ] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
    }

    #[test]
    fn svg_leaves_out_an_unset_limit_and_a_missing_hull() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.SVG");
        plot(&out, "fn-b", &series(), 0, 122 * MIB, None).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.contains("exact peak"));
        assert!(!svg.contains("limit ("));
        assert!(!svg.contains("hull"));
    }

    #[test]
    fn png_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.png");
        plot(
            &out,
            "fn-a: memory",
            &series(),
            160 * MIB,
            122 * MIB,
            Some(&hull()),
        )
        .unwrap();
        let png = std::fs::read(&out).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(png.len() > 10_000, "only {} bytes", png.len());
    }

    #[test]
    fn an_empty_series_still_draws() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("empty.png");
        plot(&out, "no samples", &[], 0, 0, None).unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() > 1_000);
    }

    #[test]
    fn other_extensions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["m.jpg", "m"] {
            let e = plot(&dir.path().join(name), "t", &series(), 0, 0, None).unwrap_err();
            assert!(e.to_string().contains("*.svg or *.png"), "{e}");
        }
    }

    #[test]
    fn a_missing_font_names_the_package() {
        let e = read_font(&[PathBuf::from("/nonexistent/DejaVuSans.ttf")]).unwrap_err();
        assert!(e.to_string().contains("fonts-dejavu-core"), "{e}");
        assert!(e.to_string().contains("/nonexistent/DejaVuSans.ttf"), "{e}");
    }

    #[test]
    fn ticks_drop_trailing_zeros() {
        assert_eq!(tick(70.0), "70");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(0.0), "0");
    }

    #[test]
    fn hull_steps_are_bin_wide() {
        assert_eq!(
            Chart::steps(100, &[MIB, 2 * MIB]),
            vec![(0.0, 1.0), (100.0, 1.0), (100.0, 2.0), (200.0, 2.0)]
        );
    }
}
