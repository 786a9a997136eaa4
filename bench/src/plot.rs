//! Minimal SVG line charts: one or more panels, each with axes, ticks and labelled series.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const W: f64 = 720.0;
const H: f64 = 360.0;
const M: f64 = 64.0;
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn nice(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn panel(out: &mut String, p: &Panel, top: f64) {
    let pts: Vec<(f64, f64)> = p.series.iter().flat_map(|s| s.points.iter().copied()).collect();
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let y1 = pts.iter().fold(0f64, |a, p| a.max(p.1)) * 1.1;
    let y1 = if y1 > 0.0 { y1 } else { 1.0 };
    if pts.is_empty() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let sx = |x: f64| M + (x - x0) / (x1 - x0) * (W - 2.0 * M);
    let sy = |y: f64| top + H - M + -(y / y1) * (H - 2.0 * M);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        top + 24.0,
        esc(&p.title)
    );
    let _ = writeln!(
        out,
        r##"<path d="M{m} {a} L{m} {b} L{r} {b}" stroke="#333" fill="none"/>"##,
        m = M,
        a = top + M,
        b = top + H - M,
        r = W - M
    );
    for i in 0..=4 {
        let fx = x0 + (x1 - x0) * i as f64 / 4.0;
        let fy = y1 * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            sx(fx),
            top + H - M + 16.0,
            nice(fx)
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"#,
            M - 6.0,
            sy(fy) + 4.0,
            nice(fy)
        );
        let _ = writeln!(
            out,
            r##"<line x1="{m}" x2="{r}" y1="{y}" y2="{y}" stroke="#ddd"/>"##,
            m = M,
            r = W - M,
            y = sy(fy)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        W / 2.0,
        top + H - M + 34.0,
        esc(&p.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{y}" font-size="12" text-anchor="middle" transform="rotate(-90 16 {y})">{}</text>"#,
        esc(&p.y_label),
        y = top + H / 2.0
    );
    for (i, s) in p.series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let mut pts = s.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                sx(*x),
                sy(*y)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="12" fill="{c}">{}</text>"#,
            W - M + 4.0 - 150.0,
            top + M + 14.0 * i as f64,
            esc(&s.name)
        );
    }
}

/// Renders the panels one above the other.
pub fn render(panels: &[Panel]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" font-family="sans-serif">"#,
        H * panels.len() as f64
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, p) in panels.iter().enumerate() {
        panel(&mut out, p, H * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_and_escapes_labels() {
        let svg = render(&[Panel {
            title: "a < b".into(),
            x_label: "ops/s".into(),
            y_label: "p99 us".into(),
            series: vec![
                Series {
                    name: "p50".into(),
                    points: vec![(1.0, 2.0), (3.0, 4.0)],
                },
                Series {
                    name: "p99".into(),
                    points: vec![(1.0, 5.0)],
                },
            ],
        }]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("a &lt; b"));
    }
}
