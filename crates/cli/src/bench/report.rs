// SPDX-License-Identifier: MIT OR Apache-2.0
//! Statistics over batch samples, text and markdown tables, and a small SVG bar chart (log
//! scale, one bar per row with its min-max whisker) written without a plotting library.

use std::fmt::Write as _;

/// Summary of per-operation times (ns), one sample per batch.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p25: f64,
    pub p75: f64,
    pub samples: usize,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

pub fn stats(samples: &[f64]) -> Stats {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Stats {
        median: quantile(&s, 0.5),
        min: s.first().copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
        p25: quantile(&s, 0.25),
        p75: quantile(&s, 0.75),
        samples: s.len(),
    }
}

/// `12.3 ns`, `4.21 µs`, `1.05 ms`.
pub fn time(ns: f64) -> String {
    if !ns.is_finite() {
        "-".into()
    } else if ns < 1_000.0 {
        format!("{ns:.1} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{:.2} ms", ns / 1_000_000.0)
    }
}

/// `p25–p75 (min–max)` of a [`Stats`].
pub fn spread(s: &Stats) -> String {
    format!("{}–{} ({}–{})", time(s.p25), time(s.p75), time(s.min), time(s.max))
}

/// A table: a title, headers, rows of cells; the first column is left-aligned, the others right.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Table {
        Table { title: title.into(), headers: headers.iter().map(|h| h.to_string()).collect(), ..Table::default() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn text(&self) -> String {
        let cols = self.headers.len();
        let width = |i: usize| {
            let cells = self.rows.iter().filter_map(|r| r.get(i)).chain(std::iter::once(&self.headers[i]));
            cells.map(|c| c.chars().count()).max().unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(c.chars().count());
                if i == 0 {
                    let _ = write!(s, "{c}{}", " ".repeat(pad));
                } else {
                    let _ = write!(s, "  {}{c}", " ".repeat(pad));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = format!("{}\n", self.title);
        out += &line(&self.headers);
        out.push('\n');
        out += &"-".repeat(widths.iter().sum::<usize>() + 2 * (cols - 1));
        out.push('\n');
        for r in &self.rows {
            out += &line(r);
            out.push('\n');
        }
        for n in &self.notes {
            out += &format!("{n}\n");
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("**{}**\n\n| {} |\n|", self.title, self.headers.join(" | "));
        for i in 0..self.headers.len() {
            out += if i == 0 { "---|" } else { "---:|" };
        }
        out.push('\n');
        for r in &self.rows {
            out += &format!("| {} |\n", r.join(" | "));
        }
        for n in &self.notes {
            out += &format!("\n{n}\n");
        }
        out
    }
}

/// One bar of the chart.
#[derive(Clone, Debug)]
pub struct Bar {
    pub group: String,
    pub label: String,
    pub stats: Stats,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A horizontal bar chart of medians on a log scale, with min-max whiskers, grouped.
pub fn svg(title: &str, subtitle: &str, bars: &[Bar]) -> String {
    let (label_w, plot_w, row_h, top) = (400.0, 520.0, 20.0, 70.0);
    let finite: Vec<f64> =
        bars.iter().flat_map(|b| [b.stats.min, b.stats.max]).filter(|v| v.is_finite() && *v > 0.0).collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min).max(1.0);
    let hi = finite.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (d0, d1) = (lo.log10().floor(), hi.log10().ceil());
    let x = |ns: f64| label_w + (ns.max(10f64.powf(d0)).log10() - d0) / (d1 - d0) * plot_w;
    let mut groups: Vec<&str> = Vec::new();
    for b in bars {
        if !groups.contains(&b.group.as_str()) {
            groups.push(&b.group);
        }
    }
    let rows = bars.len() as f64 + groups.len() as f64;
    let height = top + rows * row_h + 50.0;
    let width = label_w + plot_w + 110.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(s, r##"<text x="10" y="22" font-size="16" font-weight="bold">{}</text>"##, esc(title));
    let _ = writeln!(s, r##"<text x="10" y="42" fill="#555">{}</text>"##, esc(subtitle));
    let bottom = top + rows * row_h;
    let mut d = d0;
    while d <= d1 + 1e-9 {
        let xv = x(10f64.powf(d));
        let _ = writeln!(s, r##"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{bottom}" stroke="#ddd"/>"##);
        let _ = writeln!(
            s,
            r##"<text x="{xv:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            bottom + 16.0,
            esc(&time(10f64.powf(d)).replace(".0 ", " ").replace(".00 ", " "))
        );
        d += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">median time per operation (log scale); whiskers: min–max of the batches</text>"##,
        label_w + plot_w / 2.0,
        bottom + 36.0
    );
    let palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"];
    let mut y = top;
    for (gi, g) in groups.iter().enumerate() {
        let _ = writeln!(s, r##"<text x="10" y="{:.1}" font-weight="bold">{}</text>"##, y + 14.0, esc(g));
        y += row_h;
        for b in bars.iter().filter(|b| b.group == *g) {
            let color = palette[gi % palette.len()];
            let (x0, xm) = (label_w, x(b.stats.median));
            let _ = writeln!(s, r##"<text x="24" y="{:.1}">{}</text>"##, y + 14.0, esc(&b.label));
            if b.stats.median.is_finite() {
                let _ = writeln!(
                    s,
                    r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"##,
                    y + 4.0,
                    (xm - x0).max(1.0),
                    row_h - 8.0
                );
                let (xa, xb) = (x(b.stats.min), x(b.stats.max));
                let ym = y + row_h / 2.0;
                let _ = writeln!(s, r##"<line x1="{xa:.1}" y1="{ym:.1}" x2="{xb:.1}" y2="{ym:.1}" stroke="black"/>"##);
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" fill="#222">{}</text>"##,
                    xb.max(xm) + 6.0,
                    y + 14.0,
                    esc(&time(b.stats.median))
                );
            }
            y += row_h;
        }
    }
    s.push_str("</svg>\n");
    s
}

/// The median (ns per iteration) criterion estimated for `group`/`function` in this run, read
/// from `target/criterion/GROUP/FUNCTION/new/estimates.json` (`CRITERION_HOME` or
/// `CARGO_TARGET_DIR` move it). `None` when the benchmark did not run (filtered, `--list`).
pub fn criterion_median(group: &str, function: &str) -> Option<f64> {
    let base = std::env::var_os("CRITERION_HOME").map(std::path::PathBuf::from).unwrap_or_else(|| {
        // This crate is crates/cli of the workspace; the workspace's target directory (where
        // `cargo bench` has criterion write) is at its root.
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        target.join("criterion")
    });
    let file = base.join(group).join(function).join("new").join("estimates.json");
    let modified = std::fs::metadata(&file).ok()?.modified().ok()?;
    // Only estimates written by this run (a stale file from an earlier run would mislead).
    if modified.elapsed().map_or(true, |age| age > std::time::Duration::from_secs(3600)) {
        return None;
    }
    let json = std::fs::read_to_string(&file).ok()?;
    let median = &json[json.find("\"median\"")?..];
    let at = median.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let rest = median[at..].trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || ".eE+-".contains(c)))?;
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    /// [`criterion_median`] reads the workspace's target directory as `../../target` from this
    /// crate: it must be `crates/cli` of the workspace.
    #[test]
    fn this_crate_is_crates_cli_of_the_workspace() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let manifest = std::fs::read_to_string(&root).expect("the workspace's Cargo.toml");
        assert!(manifest.contains("[workspace]") && manifest.contains("\"crates/cli\""), "{}", root.display());
    }
}
