//! Plots (SVG and PNG) with `plotters`: size vs KLD with the Pareto front, size vs tokens/s,
//! and ms/token per variant. PNG text uses a bundled DejaVu Sans Mono font through
//! `ab_glyph`, so no system fonts or fontconfig are needed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Report, Row};
use crate::batch::{JobKind, JobStatus};
use crate::error::{Error, Result};

static FONT: &[u8] = include_bytes!("../../testdata/fonts/DejaVuSansMono.ttf");
static REGISTER: Once = Once::new();

/// Register the bundled font as plotters' `sans-serif` family (once per process).
fn register_font() {
    REGISTER.call_once(|| {
        // A bundled, known-good TTF: failure here would be a build defect; the plots then
        // fail with a clear error from plotters when drawing text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const W: u32 = 960;
const H: u32 = 600;

fn palette(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

/// The file a plot is drawn into before it is renamed into place: same folder, hidden, same
/// extension (the bitmap backend picks the format from it). A plot that fails half-way (a full
/// disk) leaves no partial file under the real name.
fn tmp_path(p: &Path) -> PathBuf {
    let part = |s: Option<&std::ffi::OsStr>| s.map(|s| s.to_string_lossy().into_owned());
    p.with_file_name(format!(
        ".{}.tmp-{}.{}",
        part(p.file_stem()).unwrap_or_default(),
        std::process::id(),
        part(p.extension()).unwrap_or_default()
    ))
}

fn plot_failed(p: &Path, tmp: &Path, e: impl std::fmt::Display) -> Error {
    let _ = std::fs::remove_file(tmp);
    // A plot that cannot be written is an output failure (full disk, file size limit): an I/O
    // error naming the file, so the CLI exits 3 as for any other output that cannot be written.
    Error::io(p, std::io::Error::other(format!("plot failed: {e}")))
}

fn commit(tmp: &Path, p: &Path) -> Result<()> {
    std::fs::rename(tmp, p).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Error::io(p, e)
    })
}
/// Draw one plot twice, as `STEM.svg` and `STEM.png` in `dir`, each into a temporary file that
/// is renamed into place, and push both paths onto `out`. `|area| body` draws on the root area
/// of either backend (a macro because the drawing functions are generic over the backend).
macro_rules! draw_both {
    ($dir:expr, $stem:expr, $size:expr, $out:expr, |$area:ident| $body:expr) => {
        for svg in [true, false] {
            let p = $dir.join(format!("{}.{}", $stem, if svg { "svg" } else { "png" }));
            crate::batch::paths::refuse_symlink(&p)?;
            let tmp = tmp_path(&p);
            let drawn = if svg {
                let $area = SVGBackend::new(&tmp, $size).into_drawing_area();
                $body
            } else {
                let $area = BitMapBackend::new(&tmp, $size).into_drawing_area();
                $body
            };
            drawn.map_err(|e| plot_failed(&p, &tmp, e))?;
            commit(&tmp, &p)?;
            $out.push(p);
        }
    };
}

/// Write the plots that have data into `dir`; returns the files written.
pub fn write_plots(r: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    let mut out = Vec::new();
    let ok: Vec<&Row> = r
        .rows
        .iter()
        .filter(|x| x.status == JobStatus::Ok)
        .collect();
    let models: Vec<String> = {
        let mut m: Vec<String> = ok.iter().map(|x| x.model.clone()).collect();
        m.dedup();
        m
    };
    let kld_pts: Vec<&Row> = ok
        .iter()
        .copied()
        .filter(|x| x.kind == JobKind::Variant && x.kld.is_some() && x.size_bytes.is_some())
        .collect();
    if !kld_pts.is_empty() {
        draw_both!(dir, "size_vs_kld", (W, H), out, |area| size_vs_kld(
            area, &kld_pts, &models
        ));
    }
    let tps_pts: Vec<&Row> = ok
        .iter()
        .copied()
        .filter(|x| x.tps_gen.is_some() && x.size_bytes.is_some())
        .collect();
    if !tps_pts.is_empty() {
        draw_both!(dir, "size_vs_tps", (W, H), out, |area| size_vs_tps(
            area, &tps_pts, &models
        ));
        let h = (120 + 28 * tps_pts.len() as u32).max(300);
        draw_both!(dir, "ms_per_token", (W, h), out, |area| ms_per_token(
            area, &tps_pts
        ));
    }
    Ok(out)
}

type DrawResult = std::result::Result<(), String>;

fn e2s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn mb(r: &Row) -> f64 {
    r.size_bytes.unwrap_or(0) as f64 / 1e6
}

fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let span = (hi - lo).abs().max(hi.abs() * 0.1).max(1e-9);
    ((lo - span * 0.1).max(0.0), hi + span * 0.15)
}

fn size_vs_kld<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    pts: &[&Row],
    models: &[String],
) -> DrawResult {
    root.fill(&WHITE).map_err(e2s)?;
    let sizes: Vec<f64> = pts.iter().map(|r| mb(r)).collect();
    let klds: Vec<f64> = pts.iter().map(|r| r.kld.unwrap_or(0.0).max(1e-6)).collect();
    let (x0, x1) = padded(
        sizes.iter().copied().fold(f64::MAX, f64::min),
        sizes.iter().copied().fold(0.0, f64::max),
    );
    let y0 = klds.iter().copied().fold(f64::MAX, f64::min) / 2.0;
    let y1 = klds.iter().copied().fold(0.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Size vs KL-divergence (line: Pareto front)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
        .map_err(e2s)?;
    chart
        .configure_mesh()
        .x_desc("file size (MB)")
        .y_desc("mean KLD vs source (log)")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(e2s)?;
    for (mi, m) in models.iter().enumerate() {
        let color = palette(mi);
        let mine: Vec<(f64, f64, &str, bool)> = pts
            .iter()
            .filter(|r| &r.model == m)
            .map(|r| {
                (
                    mb(r),
                    r.kld.unwrap_or(0.0).max(1e-6),
                    r.variant.as_str(),
                    r.pareto,
                )
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        chart
            .draw_series(
                mine.iter()
                    .map(|(x, y, _, _)| Circle::new((*x, *y), 5, color.filled())),
            )
            .map_err(e2s)?
            .label(m.as_str())
            .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()));
        let mut front: Vec<(f64, f64)> = mine.iter().filter(|p| p.3).map(|p| (p.0, p.1)).collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(front.clone(), color.stroke_width(2)))
            .map_err(e2s)?;
        chart
            .draw_series(
                front
                    .iter()
                    .map(|(x, y)| Circle::new((*x, *y), 9, color.stroke_width(2))),
            )
            .map_err(e2s)?;
        chart
            .draw_series(mine.iter().map(|(x, y, l, _)| {
                EmptyElement::at((*x, *y))
                    + Text::new(l.to_string(), (8, -16), ("sans-serif", 14).into_font())
            }))
            .map_err(e2s)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e2s)?;
    root.present().map_err(e2s)
}

fn size_vs_tps<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    pts: &[&Row],
    models: &[String],
) -> DrawResult {
    root.fill(&WHITE).map_err(e2s)?;
    let sizes: Vec<f64> = pts.iter().map(|r| mb(r)).collect();
    let tps: Vec<f64> = pts.iter().map(|r| r.tps_gen.unwrap_or(0.0)).collect();
    let (x0, x1) = padded(
        sizes.iter().copied().fold(f64::MAX, f64::min),
        sizes.iter().copied().fold(0.0, f64::max),
    );
    let (y0, y1) = padded(0.0, tps.iter().copied().fold(0.0, f64::max));
    let from = if pts.iter().all(|r| r.tps_from.as_deref() == Some("bench")) {
        "generation tokens/s (bench)"
    } else {
        "tokens/s (bench, or ppl evaluation speed)"
    };
    let mut chart = ChartBuilder::on(&root)
        .caption("Size vs speed", ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e2s)?;
    chart
        .configure_mesh()
        .x_desc("file size (MB)")
        .y_desc(from)
        .draw()
        .map_err(e2s)?;
    for (mi, m) in models.iter().enumerate() {
        let color = palette(mi);
        let mine: Vec<(f64, f64, &str)> = pts
            .iter()
            .filter(|r| &r.model == m)
            .map(|r| (mb(r), r.tps_gen.unwrap_or(0.0), r.variant.as_str()))
            .collect();
        if mine.is_empty() {
            continue;
        }
        chart
            .draw_series(
                mine.iter()
                    .map(|(x, y, _)| Circle::new((*x, *y), 5, color.filled())),
            )
            .map_err(e2s)?
            .label(m.as_str())
            .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()));
        chart
            .draw_series(mine.iter().map(|(x, y, l)| {
                EmptyElement::at((*x, *y))
                    + Text::new(l.to_string(), (8, -16), ("sans-serif", 14).into_font())
            }))
            .map_err(e2s)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e2s)?;
    root.present().map_err(e2s)
}

fn ms_per_token<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, pts: &[&Row]) -> DrawResult {
    root.fill(&WHITE).map_err(e2s)?;
    // Reversed so the first job is drawn at the top.
    let vals: Vec<(String, f64)> = pts
        .iter()
        .rev()
        .map(|r| {
            (
                r.job_id.clone(),
                r.tps_gen
                    .filter(|t| *t > 0.0)
                    .map(|t| 1000.0 / t)
                    .unwrap_or(0.0),
            )
        })
        .collect();
    let n = vals.len() as i32;
    let max = vals.iter().map(|v| v.1).fold(0.0, f64::max).max(1e-6) * 1.15;
    let names: Vec<String> = vals.iter().map(|v| v.0.clone()).collect();
    let label_w = (names.iter().map(|s| s.len()).max().unwrap_or(8) as u32 * 9 + 20).min(420);
    let mut chart = ChartBuilder::on(&root)
        .caption("Milliseconds per token", ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(label_w)
        .build_cartesian_2d(0.0..max, (0..n).into_segmented())
        .map_err(e2s)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(vals.len().max(1))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| names.get(i))
                .cloned()
                .unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .x_desc("ms / token")
        .draw()
        .map_err(e2s)?;
    chart
        .draw_series(vals.iter().enumerate().map(|(i, (_, v))| {
            let i = i as i32;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (*v, SegmentValue::Exact(i + 1)),
                ],
                palette(0).mix(0.8).filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(e2s)?;
    chart
        .draw_series(vals.iter().enumerate().map(|(i, (_, v))| {
            EmptyElement::at((*v, SegmentValue::CenterOf(i as i32)))
                + Text::new(format!("{v:.2}"), (6, -7), ("sans-serif", 13).into_font())
        }))
        .map_err(e2s)?;
    root.present().map_err(e2s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pngs_have_rendered_text_without_system_fonts() {
        // Same data twice, once with variant names of different lengths: if text were not
        // rendered (missing font) the two PNGs would be identical.
        let d = tempfile::tempdir().unwrap();
        let mut jobs = vec![
            crate::report::tests::job("m", "source", 1000, 10.0, None, Some(10.0)),
            crate::report::tests::job("m", "q8", 530, 10.05, Some(0.002), Some(18.0)),
            crate::report::tests::job("m", "q4", 300, 10.4, Some(0.03), Some(30.0)),
        ];
        let r = crate::report::build(jobs.clone(), None);
        let a = d.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let files = write_plots(&r, &a).unwrap();
        assert_eq!(files.len(), 6);
        jobs[1].variant = "a-much-longer-name".into();
        let r = crate::report::build(jobs, None);
        let b = d.path().join("b");
        std::fs::create_dir(&b).unwrap();
        write_plots(&r, &b).unwrap();
        let png_a = std::fs::read(a.join("size_vs_kld.png")).unwrap();
        let png_b = std::fs::read(b.join("size_vs_kld.png")).unwrap();
        assert_eq!(&png_a[..8], b"\x89PNG\r\n\x1a\n");
        assert_ne!(
            png_a, png_b,
            "labels did not change the PNG: text not rendered"
        );
        let svg = std::fs::read_to_string(a.join("size_vs_kld.svg")).unwrap();
        assert!(svg.contains("q8") && svg.contains("Pareto"));
        let svg = std::fs::read_to_string(a.join("ms_per_token.svg")).unwrap();
        assert!(svg.contains("m__q4"));
    }
}
