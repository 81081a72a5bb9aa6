//! A small, dependency-free SVG line plot (axes, ticks, one polyline or
//! point set per series, a legend), for loss curves in `report.md`.

use std::fmt::Write as _;

/// One series: a name, its points, and whether to draw a line (else markers).
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub line: bool,
}

const W: f64 = 640.0;
const H: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 45.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// The plot as an SVG document; `None` when no series has a finite point.
pub fn line_plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Option<String> {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).copied())
        .collect();
    if all.is_empty() {
        return None;
    }
    let range = |f: fn(&(f64, f64)) -> f64| {
        let lo = all.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = all.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, lo + 0.5)
        }
    };
    let ((x0, x1), (y0, y1)) = (range(|p| p.0), range(|p| p.1));
    let y0 = if y0 >= 0.0 { 0.0 } else { y0 };
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    for i in 0..=4 {
        let t = i as f64 / 4.0;
        let (xv, yv) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        let (px, py) = (sx(xv), sy(yv));
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            tick(yv)
        );
        let _ = write!(
            s,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            H - BOTTOM + 16.0,
            tick(xv)
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="black"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{0:.1}" stroke="black"/>"#,
        H - BOTTOM,
        W - RIGHT
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="14" y="{:.1}" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 8.0,
        escape(x_label),
        H / 2.0,
        H / 2.0,
        escape(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = se
            .points
            .iter()
            .filter(finite)
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if se.line {
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                pts.join(" ")
            );
        } else {
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = write!(s, r#"<circle cx="{x}" cy="{y}" r="3.5" fill="{color}"/>"#);
            }
        }
        let ly = TOP + 8.0 + 16.0 * i as f64;
        let lx = W - RIGHT - 150.0;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="4" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 2.0,
            lx + 18.0,
            ly + 4.0,
            escape(se.name)
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

fn tick(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_has_a_polyline_per_line_series_and_markers_for_points() {
        let svg = line_plot(
            "loss <a&b>",
            "step",
            "loss",
            &[
                Series {
                    name: "train",
                    points: vec![(0.0, 2.0), (10.0, 1.0), (20.0, f64::NAN), (30.0, 0.5)],
                    line: true,
                },
                Series {
                    name: "validation",
                    points: vec![(10.0, 1.2), (30.0, 0.7)],
                    line: false,
                },
            ],
        )
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 2);
        // Three finite training points, the NaN dropped.
        let points = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 3);
        assert!(svg.contains("loss &lt;a&amp;b&gt;"));
        assert!(line_plot("t", "x", "y", &[]).is_none());
    }
}
