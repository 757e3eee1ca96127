//! The model report renders in a real browser: headless Chromium loads
//! `target/model-report/index.html` (written by `cargo model`), lays it out, and the page reports
//! how many rows and counterexample pictures it shows with a non-zero size; they must be every
//! row and every counterexample of `report.json`. A screenshot is kept as
//! `target/model-report/screenshot.png`.
//!
//! Without a report (no `cargo model` run yet) or without Chromium the test prints why it skips;
//! CI sets `REQUIRE_REPORT_RENDER=1`, which turns either into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"), PathBuf::from);
    target.join("model-report")
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
    })
}

fn skip(why: &str) {
    assert!(std::env::var_os("REQUIRE_REPORT_RENDER").is_none(), "REQUIRE_REPORT_RENDER is set, but {why}");
    println!("SKIP report_renders: {why}");
}

/// The value of `data-NAME="..."` on the dumped `<body>`.
fn body_data(dom: &str, name: &str) -> Option<usize> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let key = format!("data-{name}=\"");
    let at = body.find(&key)? + key.len();
    body[at..].split('"').next()?.parse().ok()
}

#[test]
fn index_html_renders_every_row_and_picture() {
    let dir = report_dir();
    let index = dir.join("index.html");
    let Ok(json) = std::fs::read_to_string(dir.join("report.json")) else {
        return skip(&format!("no report in {} (run `cargo model` first)", dir.display()));
    };
    if !index.is_file() {
        return skip(&format!("{} is missing", index.display()));
    }
    let Some(browser) = chromium() else { return skip("no chromium on PATH (Debian: apt-get install chromium)") };
    let report: serde_json::Value = serde_json::from_str(&json).expect("report.json is JSON");
    assert_eq!(report["schema"], "ioregionfd-model/model-report");
    let rows = report["rows"].as_array().expect("rows");
    let pictures = rows.iter().filter(|r| !r["counterexample"].is_null()).count();
    let url = format!("file://{}", index.canonicalize().expect("index.html").display());
    let headless = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"];
    let out = Command::new(&browser).args(headless).arg("--dump-dom").arg(&url).output().expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chromium --dump-dom failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(body_data(&dom, "rendered-rows"), Some(rows.len()), "rows laid out with a size");
    assert_eq!(body_data(&dom, "rendered-pictures"), Some(pictures), "counterexample pictures laid out with a size");
    for r in rows {
        let name = r["scenario"].as_str().expect("scenario");
        assert!(dom.contains(name), "{name} is on the page");
    }
    let shot = dir.join("screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new(&browser)
        .args(headless)
        .arg("--window-size=1400,2400")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium --screenshot failed: {}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    println!("report_renders: {} rows and {pictures} pictures rendered; screenshot {}", rows.len(), shot.display());
}
