//! Small, dependency-free SVG charts for the run report: line charts (throughput and latency
//! over time) and bar charts (batch sizes). Viewable in any browser.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

/// One line of a line chart.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points, x ascending.
    pub points: Vec<(f64, f64)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A "nice" upper bound and tick step for values up to `max`.
fn nice(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.2);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn label(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Axis ranges and tick steps of a chart.
#[derive(Clone, Copy)]
struct Axes {
    x_max: f64,
    y_max: f64,
    x_step: f64,
    y_step: f64,
}

fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str, axes: &Axes) {
    let Axes { x_max, y_max, x_step, y_step } = *axes;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>
"##,
        W / 2.0,
        escape(title),
        LEFT + pw / 2.0,
        H - 10.0,
        escape(x_label),
        TOP + ph / 2.0,
        escape(y_label)
    );
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let py = TOP + ph - y / y_max * ph;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            py + 4.0,
            label(y)
        );
        y += y_step;
    }
    let mut x = 0.0;
    while x_step > 0.0 && x <= x_max + x_step / 2.0 {
        let px = LEFT + x / x_max * pw;
        let _ =
            writeln!(out, r##"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##, TOP + ph + 18.0, label(x));
        x += x_step;
    }
    let _ = writeln!(out, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##);
}

/// A line chart of `series`.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = all.fold((0.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let (x_max, x_step) = nice(x_max);
    let (y_max, y_step) = nice(y_max);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label, &Axes { x_max, y_max, x_step, y_step });
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", LEFT + x / x_max * pw, TOP + ph - y / y_max * ph))
            .collect();
        let _ =
            writeln!(out, r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##, pts.join(" "));
        let ly = TOP + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"##,
            LEFT + pw - 150.0,
            LEFT + pw - 130.0,
            LEFT + pw - 125.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A bar chart: one bar per (label, value).
pub fn bar_chart(title: &str, x_label: &str, y_label: &str, bars: &[(String, f64)]) -> String {
    let y_max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max);
    let (y_max, y_step) = nice(y_max);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label, &Axes { x_max: 1.0, y_max, x_step: 0.0, y_step });
    let n = bars.len().max(1) as f64;
    let slot = pw / n;
    let every = (bars.len() / 16).max(1);
    for (i, (name, v)) in bars.iter().enumerate() {
        let h = v / y_max * ph;
        let x = LEFT + i as f64 * slot;
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {v}</title></rect>"##,
            x + slot * 0.1,
            TOP + ph - h,
            slot * 0.8,
            COLORS[0],
            escape(name)
        );
        if i % every == 0 {
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                x + slot / 2.0,
                TOP + ph + 18.0,
                escape(name)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg_with_every_series() {
        let s = line_chart(
            "T <1>",
            "s",
            "samples/s",
            &[
                Series { name: "a".into(), points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)] },
                Series { name: "b&c".into(), points: vec![(0.5, 0.5)] },
            ],
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("T &lt;1&gt;") && s.contains("b&amp;c"));
        let b = bar_chart("B", "batch", "count", &[("1".into(), 5.0), ("16".into(), 50.0)]);
        assert_eq!(b.matches("<rect x=").count(), 2 + 1, "two bars and the plot frame");
        // Degenerate input still gives a valid chart.
        assert!(line_chart("empty", "x", "y", &[]).contains("</svg>"));
    }

    #[test]
    fn nice_bounds() {
        assert_eq!(nice(9.3), (10.0, 2.0));
        assert_eq!(nice(4200.0), (5000.0, 1000.0));
        assert_eq!(nice(0.0), (1.0, 0.2));
    }
}
