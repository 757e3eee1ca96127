//! What `cargo model` leaves in `target/model-report/`: `report.json` (versioned, written with
//! serde), `index.html` (self-contained: every row, and each counterexample's picture, trace and
//! end states), and per counterexample `traces/NAME.LABEL.txt` and `traces/NAME.LABEL.svg`.
//!
//! The picture is a sequence diagram: one lane per thread (vCPUs, devices, the VMM and `main`),
//! time running down, one row per event; an arrow for each message on a channel (a command from
//! the vCPU's `SEND_CMD` to the device that reads it, a response from the device to the vCPU's
//! `GET_REPLY`); the violating event in red; at a deadlock, what every blocked thread waits for.

use ioregionfd_model::scenario::check::{Completeness, Explored, safe_file_name};
use ioregionfd_model::trace::Event;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The report's format; bump the version when a field changes meaning or goes away.
pub const SCHEMA: &str = "ioregionfd-model/model-report";
/// See [`SCHEMA`].
pub const SCHEMA_VERSION: u32 = 1;

/// One row as the harness ran it.
pub struct RowResult {
    pub name: String,
    pub label: String,
    pub summary: String,
    pub expected: String,
    pub expected_ids: Vec<String>,
    pub explored: Explored,
    pub seconds: f64,
    pub passed: bool,
    pub replay: String,
}

/// `report.json`.
#[derive(Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub version: u32,
    pub run: RunInfo,
    pub rows: Vec<RowReport>,
}

/// Where and how the report was made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RunInfo {
    pub crate_version: String,
    /// `git rev-parse HEAD` of the repository, with `-dirty` when its work tree has changes;
    /// `null` outside a git work tree (an unpacked crate).
    pub git_revision: Option<String>,
    /// loom's version as Cargo.lock has it (`null` when the lock file cannot be read).
    pub loom_version: Option<String>,
    /// `loom`, `shuttle` or `std` (the smoke run writes no report).
    pub backend: String,
    /// The preemption bound (`none`: unbounded).
    pub bound: String,
    /// The filters and scenario files the run was given (empty: the whole catalogue).
    pub filters: Vec<String>,
    /// Knob overrides applied to every row.
    pub knobs: Vec<String>,
    /// When the run finished, UTC, RFC 3339.
    pub date: String,
    /// `I/N` when this run was shard I of N (`--shard`); `null` for a whole run or a merge.
    pub shard: Option<String>,
    /// A merge (`--merge`): how many shard reports it joined.
    pub merged_shards: Option<usize>,
}

/// One row of `report.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RowReport {
    /// The row's place among the rows the filters chose, before any sharding (a merge orders by it).
    pub index: usize,
    scenario: String,
    design: String,
    summary: String,
    expected: String,
    verdict: String,
    passed: bool,
    /// Whether the search covered everything it claims (`false`: cut short, sampled, smoke).
    complete: bool,
    /// `complete`, `sampled` (shuttle), `smoke`, or `incomplete`.
    search: String,
    incomplete_reason: Option<String>,
    interleavings: usize,
    pub seconds: f64,
    /// `interleavings / seconds` on the one core that checked the row (null under 10 ms).
    pub interleavings_per_second: Option<f64>,
    /// The invariants the row's verdict and expectation name, with their statements.
    invariants: Vec<InvariantRef>,
    counterexample: Option<Counterexample>,
    end_states: Vec<EndState>,
    replay: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct InvariantRef {
    id: String,
    statement: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Counterexample {
    invariant: String,
    text: String,
    /// `seq` of the event showing the first violation of the verdict (null: a deadlock or an
    /// end-of-run check, shown after the last event).
    violating_event: Option<usize>,
    events: Vec<EventRecord>,
    /// Deadlock: what each blocked thread waited for.
    blocked: Vec<Blocked>,
    trace_file: String,
    picture_file: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct EventRecord {
    seq: usize,
    thread: String,
    vm: Option<usize>,
    what: String,
    /// `event`, `violation`, or `setup-finding` (a violation during setup, not in the verdict).
    kind: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Blocked {
    thread: String,
    waits_for: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct EndState {
    state: String,
    verdict: String,
    executions: usize,
}

fn search_of(c: &Completeness) -> (&'static str, bool, Option<String>) {
    match c {
        Completeness::Complete => ("complete", true, None),
        Completeness::Sampled => ("sampled", false, None),
        Completeness::Smoke => ("smoke", false, None),
        Completeness::Incomplete(why) => ("incomplete", false, Some(why.clone())),
    }
}

fn event_record(e: &Event) -> EventRecord {
    let kind = if e.what.starts_with("VIOLATION ") {
        "violation"
    } else if e.what.starts_with("setup finding") {
        "setup-finding"
    } else {
        "event"
    };
    EventRecord { seq: e.seq, thread: e.thread.clone(), vm: e.vm, what: e.what.clone(), kind: kind.to_string() }
}

fn invariants_of(r: &RowResult) -> Vec<InvariantRef> {
    let verdict = r.explored.verdict();
    let mut ids: Vec<String> = verdict.split(',').map(str::to_string).collect();
    ids.extend(r.expected_ids.iter().cloned());
    let mut out: Vec<InvariantRef> = Vec::new();
    for id in ids {
        if out.iter().any(|i| i.id == id) {
            continue;
        }
        if let Some(inv) = ioregionfd_model::invariants::by_id(&id) {
            out.push(InvariantRef { id, statement: inv.statement.to_string() });
        }
    }
    out
}

fn file_stem(r: &RowResult) -> String {
    safe_file_name(&format!("{}.{}", r.name, r.label))
}

/// A row as `report.json` has it; `index` is its place among the chosen rows.
pub fn row_report(r: &RowResult, index: usize) -> RowReport {
    let (search, complete, incomplete_reason) = search_of(&r.explored.completeness);
    let counterexample = r.explored.failure.as_ref().map(|f| Counterexample {
        invariant: f.invariant.clone(),
        text: f.text.clone(),
        violating_event: f.violating_event,
        events: f.events.iter().map(event_record).collect(),
        blocked: f.blocked.iter().map(|(t, w)| Blocked { thread: t.clone(), waits_for: w.clone() }).collect(),
        trace_file: format!("traces/{}.txt", file_stem(r)),
        picture_file: format!("traces/{}.svg", file_stem(r)),
    });
    let end_states = r
        .explored
        .end_states
        .iter()
        .map(|(s, n)| {
            let (state, verdict) = s.rsplit_once(" => ").unwrap_or((s.as_str(), ""));
            EndState { state: state.to_string(), verdict: verdict.to_string(), executions: *n }
        })
        .collect();
    RowReport {
        index,
        scenario: r.name.clone(),
        design: r.label.clone(),
        summary: r.summary.clone(),
        expected: r.expected.clone(),
        verdict: r.explored.verdict(),
        passed: r.passed,
        complete,
        search: search.to_string(),
        incomplete_reason,
        interleavings: r.explored.executions,
        seconds: (r.seconds * 1000.0).round() / 1000.0,
        interleavings_per_second: (r.seconds >= 0.01).then(|| (r.explored.executions as f64 / r.seconds).round()),
        invariants: invariants_of(r),
        counterexample,
        end_states,
        replay: r.replay.clone(),
    }
}

/// Writes the whole report into `dir` (its `traces/` emptied first, so no file of an earlier run
/// is left looking current).
pub fn write(dir: &Path, run: &RunInfo, rows: Vec<RowReport>) -> std::io::Result<()> {
    let traces = dir.join("traces");
    if traces.exists() {
        std::fs::remove_dir_all(&traces)?;
    }
    std::fs::create_dir_all(&traces)?;
    for r in &rows {
        let Some(cx) = &r.counterexample else { continue };
        let body = format!("{} under {}: violated {}: {}\n{}", r.scenario, r.design, cx.invariant, cx.text, cx.trace());
        std::fs::write(dir.join(&cx.trace_file), body)?;
        std::fs::write(dir.join(&cx.picture_file), cx.sequence_svg())?;
    }
    let html = index_html(run, &rows);
    let report = Report { schema: SCHEMA.to_string(), version: SCHEMA_VERSION, run: run.clone(), rows };
    let json = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json + "\n")?;
    std::fs::write(dir.join("index.html"), html)?;
    Ok(())
}

/// Reads the `report.json` of `dir`.
pub fn read(dir: &Path) -> Result<Report, String> {
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let report: Report =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a model report: {e}", path.display()))?;
    if report.schema != SCHEMA || report.version != SCHEMA_VERSION {
        return Err(format!(
            "{}: schema {} version {}, this harness writes {SCHEMA} version {SCHEMA_VERSION}",
            path.display(),
            report.schema,
            report.version
        ));
    }
    Ok(report)
}

/// Joins the reports of the shards of one run (`--shard I/N` for every I of one N, the same
/// bound, backend, filters, knobs, crate version and revision) into the report of the whole run,
/// rows in their unsharded order.
pub fn merge(reports: Vec<Report>) -> Result<(RunInfo, Vec<RowReport>), String> {
    let first = reports.first().ok_or("--merge needs the report directories of the shards")?;
    let first =
        Report { schema: first.schema.clone(), version: first.version, run: first.run.clone(), rows: Vec::new() };
    let first = &first;
    let count = |r: &Report| -> Result<(usize, usize), String> {
        let shard = r.run.shard.as_deref().ok_or("a report that is not a shard (no `shard` in its run)")?;
        let (i, n) = shard.split_once('/').ok_or(format!("shard `{shard}` is not I/N"))?;
        Ok((i.parse().map_err(|_| format!("shard `{shard}`"))?, n.parse().map_err(|_| format!("shard `{shard}`"))?))
    };
    let n = count(first)?.1;
    let same = |r: &Report| {
        let (a, b) = (&r.run, &first.run);
        (&a.crate_version, &a.git_revision, &a.loom_version, &a.backend, &a.bound, &a.filters, &a.knobs)
            == (&b.crate_version, &b.git_revision, &b.loom_version, &b.backend, &b.bound, &b.filters, &b.knobs)
    };
    let mut seen = vec![false; n];
    for r in &reports {
        let (i, m) = count(r)?;
        if m != n || i == 0 || i > n {
            return Err(format!("shard {i}/{m} does not belong to a run of {n} shards"));
        }
        if std::mem::replace(&mut seen[i - 1], true) {
            return Err(format!("shard {i}/{n} is given twice"));
        }
        if !same(r) {
            return Err(format!(
                "shard {i}/{n} comes from another run (bound, backend, filters, knobs or revision differ)"
            ));
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(format!("shard {}/{n} is missing: a merge of some shards is not the whole run", missing + 1));
    }
    let mut rows: Vec<RowReport> = reports.into_iter().flat_map(|r| r.rows).collect();
    rows.sort_by_key(|r| r.index);
    if rows.windows(2).any(|w| w[0].index == w[1].index) {
        return Err("two shards report the same row".into());
    }
    let run = RunInfo { shard: None, merged_shards: Some(n), date: utc_now(), ..first.run.clone() };
    Ok((run, rows))
}

impl RowReport {
    /// Whether the verdict is the expected one.
    pub fn passed(&self) -> bool {
        self.passed
    }

    /// `name (label) verdict interleavings` for a merge's summary line.
    pub fn line(&self) -> String {
        format!("{} ({}) ... {} ({} interleavings)", self.scenario, self.design, self.verdict, self.interleavings)
    }
}

impl Counterexample {
    /// The trace text: one numbered line per event, then one line per blocked thread.
    fn trace(&self) -> String {
        let mut t = String::new();
        for e in &self.events {
            let vm = e.vm.map_or_else(String::new, |v| format!(" vm{v}"));
            let _ = writeln!(t, "{} {}{vm}: {}", e.seq, e.thread, e.what);
        }
        for b in &self.blocked {
            let _ = writeln!(t, "deadlock: {} waits for {}", b.thread, b.waits_for);
        }
        t
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The message arrows of a trace, `(from event, to event)` by index: each `SEND_CMD <command>`
/// to the next device event that reads that command, and each `device responds <value>` to the
/// next `GET_REPLY data <value>`. Drawn from the event texts, which name the command and the value.
fn message_arrows(events: &[EventRecord]) -> Vec<(usize, usize)> {
    let mut arrows = Vec::new();
    let mut sent: Vec<(usize, String)> = Vec::new();
    let mut responded: Vec<(usize, String)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(rest) = e.what.split_once(" SEND_CMD ").map(|(_, r)| r) {
            let cmd = rest.split(" to ").next().unwrap_or(rest).to_string();
            sent.push((i, cmd));
        } else if let Some(cmd) = e.what.strip_prefix("device reads ") {
            if let Some(k) = sent.iter().position(|(_, c)| c == cmd) {
                arrows.push((sent.remove(k).0, i));
            }
        } else if let Some(v) = e.what.strip_prefix("device responds ") {
            let v = v.split(':').next().unwrap_or(v).trim().to_string();
            responded.push((i, v));
        } else if let Some(v) = e.what.split_once(" GET_REPLY data ").map(|(_, v)| v.trim().to_string())
            && let Some(k) = responded.iter().position(|(_, r)| *r == v)
        {
            arrows.push((responded.remove(k).0, i));
        }
    }
    arrows
}

impl Counterexample {
    /// The counterexample as an SVG sequence diagram.
    fn sequence_svg(&self) -> String {
        let f = self;
        let events = &f.events;
        let mut lanes: Vec<String> = Vec::new();
        for name in events.iter().map(|e| &e.thread).chain(f.blocked.iter().map(|b| &b.thread)) {
            if !lanes.contains(name) {
                lanes.push(name.clone());
            }
        }
        let lane_w = 130.0;
        let row_h = 18.0;
        let top = 50.0;
        let lane_x =
            |name: &str| 20.0 + lane_w / 2.0 + lane_w * lanes.iter().position(|l| l == name).unwrap_or(0) as f64;
        let text_x = 20.0 + lane_w * lanes.len() as f64 + 10.0;
        let rows = events.len() + f.blocked.len();
        let height = top + row_h * (rows as f64 + 1.0) + 10.0;
        let longest =
            events.iter().map(|e| e.what.len() + 12).chain(f.blocked.iter().map(|b| b.waits_for.len() + 30)).max();
        let width = text_x + 6.6 * longest.unwrap_or(40) as f64 + 20.0;
        let y_of = |i: usize| top + row_h * (i as f64 + 1.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="sequence" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="monospace" font-size="11">"#
        );
        let _ = writeln!(
            s,
            r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#2458a6"/></marker></defs>"##
        );
        let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
        for name in &lanes {
            let x = lane_x(name);
            let _ = writeln!(
                s,
                r##"<rect x="{:.0}" y="10" width="{:.0}" height="24" rx="4" fill="#eef2f7" stroke="#7a8ca5"/><text x="{x:.0}" y="26" text-anchor="middle" font-weight="bold">{}</text>"##,
                x - lane_w / 2.0 + 6.0,
                lane_w - 12.0,
                esc(name)
            );
            let _ = writeln!(
                s,
                r##"<line x1="{x:.0}" y1="34" x2="{x:.0}" y2="{:.0}" stroke="#b8c2d0" stroke-dasharray="4 3"/>"##,
                height - 8.0
            );
        }
        for (i, e) in events.iter().enumerate() {
            let y = y_of(i);
            let bad = Some(e.seq) == f.violating_event || e.kind == "violation";
            let decisive = Some(e.seq) == f.violating_event;
            if decisive {
                let _ = writeln!(
                    s,
                    r##"<rect class="violating" x="4" y="{:.1}" width="{:.0}" height="{row_h:.0}" fill="#fde2e2"/>"##,
                    y - row_h + 5.0,
                    width - 8.0
                );
            }
            let x = lane_x(&e.thread);
            let colour = if bad { "#c62828" } else { "#37474f" };
            let _ = writeln!(s, r##"<circle cx="{x:.0}" cy="{:.1}" r="4" fill="{colour}"/>"##, y - 4.0);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.0}" y1="{y0:.1}" x2="{text_x:.0}" y2="{y0:.1}" stroke="#eceff1"/>"##,
                y0 = y - 4.0
            );
            let weight = if bad { r#" font-weight="bold""# } else { "" };
            let vm = e.vm.map_or_else(String::new, |v| format!(" vm{v}"));
            let _ = writeln!(
                s,
                r#"<text x="{text_x:.0}" y="{y:.1}" fill="{colour}"{weight}>{} {}{}: {}</text>"#,
                e.seq,
                esc(&e.thread),
                vm,
                esc(&e.what)
            );
        }
        for (from, to) in message_arrows(events) {
            let (a, b) = (&events[from], &events[to]);
            let (x1, x2) = (lane_x(&a.thread), lane_x(&b.thread));
            if (x1 - x2).abs() < 1.0 {
                continue;
            }
            let _ = writeln!(
                s,
                r##"<line class="message" x1="{x1:.0}" y1="{:.1}" x2="{x2:.0}" y2="{:.1}" stroke="#2458a6" stroke-width="1.5" marker-end="url(#arrow)"/>"##,
                y_of(from) - 4.0,
                y_of(to) - 4.0
            );
        }
        for (k, Blocked { thread, waits_for: what }) in f.blocked.iter().enumerate() {
            let y = y_of(events.len() + k);
            let x = lane_x(thread);
            let _ = writeln!(
                s,
                r##"<rect x="{:.0}" y="{:.1}" width="10" height="10" fill="#c62828"/><text x="{text_x:.0}" y="{y:.1}" fill="#c62828" font-weight="bold">deadlock: {} waits for {}</text>"##,
                x - 5.0,
                y - 9.0,
                esc(thread),
                esc(what)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn index_html(run: &RunInfo, rows: &[RowReport]) -> String {
    let mut h = String::new();
    let failed = rows.iter().filter(|r| !r.passed).count();
    let interleavings: usize = rows.iter().map(|r| r.interleavings).sum();
    let seconds: f64 = rows.iter().map(|r| r.seconds).sum();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ioregionfd-model: model report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table.rows {{ border-collapse: collapse; font-size: 13px; }}
table.rows td, table.rows th {{ border: 1px solid #ccd; padding: 3px 6px; text-align: left; }}
tr.mismatch td {{ background: #fde2e2; }}
td.num {{ text-align: right; font-family: monospace; }}
.verdict-holds {{ color: #1b5e20; }} .verdict-violated {{ color: #b71c1c; font-weight: bold; }}
section.row {{ border-top: 2px solid #ccd; margin-top: 2em; padding-top: .5em; }}
pre {{ background: #f6f8fa; padding: .6em; overflow-x: auto; font-size: 12px; }}
.picture {{ overflow-x: auto; border: 1px solid #dde; }}
</style></head><body>
<h1>ioregionfd-model: model report</h1>
<p id="run">ioregionfd-model {} · revision {} · loom {} · backend {} · preemption bound {} · filters {} · knobs {} · {}</p>
<p id="summary">{} rows, {} passed, {} failed; {} interleavings in {:.1} s of checking, {:.0} per second per core. A row passes when its verdict is the expected one; an incomplete search is never reported as <code>holds</code>.</p>
<table class="rows"><thead><tr><th>scenario</th><th>design</th><th>expected</th><th>verdict</th><th>search</th><th>bound</th><th class="num">interleavings</th><th class="num">seconds</th><th class="num">per second</th><th>summary</th></tr></thead><tbody>
"#,
        esc(&run.crate_version),
        esc(run.git_revision.as_deref().unwrap_or("(not a git work tree)")),
        esc(run.loom_version.as_deref().unwrap_or("?")),
        esc(&run.backend),
        esc(&run.bound),
        esc(&if run.filters.is_empty() { "(whole catalogue)".to_string() } else { run.filters.join(" ") }),
        esc(&if run.knobs.is_empty() { "(none)".to_string() } else { run.knobs.join(" ") }),
        esc(&run.date),
        rows.len(),
        rows.len() - failed,
        failed,
        interleavings,
        seconds,
        if seconds > 0.0 { interleavings as f64 / seconds } else { 0.0 }
    );
    for (i, r) in rows.iter().enumerate() {
        let class = if r.passed { "row" } else { "row mismatch" };
        let vclass = if r.verdict == "holds" { "verdict-holds" } else { "verdict-violated" };
        let search = match &r.incomplete_reason {
            Some(why) => format!("incomplete: {why}"),
            None => r.search.to_string(),
        };
        let _ = writeln!(
            h,
            r##"<tr class="{class}"><td><a href="#row-{i}">{}</a></td><td>{}</td><td>{}</td><td class="{vclass}">{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{:.2}</td><td class="num">{}</td><td>{}</td></tr>"##,
            esc(&r.scenario),
            esc(&r.design),
            esc(&r.expected),
            esc(&r.verdict),
            esc(&search),
            esc(&run.bound),
            r.interleavings,
            r.seconds,
            r.interleavings_per_second.map_or_else(|| "-".to_string(), |v| format!("{v:.0}")),
            esc(&r.summary)
        );
    }
    h.push_str("</tbody></table>\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            h,
            r#"<section class="row" id="row-{i}"><h2>{} under {}: {}</h2><p>{}</p><p>expected <b>{}</b>, verdict <b>{}</b> ({} interleavings, {:.2} s, search {}). Replay: <code>{}</code></p>"#,
            esc(&r.scenario),
            esc(&r.design),
            if r.passed { "as expected" } else { "MISMATCH" },
            esc(&r.summary),
            esc(&r.expected),
            esc(&r.verdict),
            r.interleavings,
            r.seconds,
            esc(&r.search),
            esc(&r.replay)
        );
        if !r.invariants.is_empty() {
            h.push_str("<ul class=\"invariants\">");
            for inv in &r.invariants {
                let _ = write!(h, "<li><b>{}</b>: {}</li>", esc(&inv.id), esc(&inv.statement));
            }
            h.push_str("</ul>\n");
        }
        if let Some(cx) = &r.counterexample {
            let _ = writeln!(
                h,
                r#"<h3>Counterexample: {} violated</h3><p>{}</p><div class="picture">{}</div><details><summary>trace ({} events)</summary><pre>{}</pre></details>"#,
                esc(&cx.invariant),
                esc(&cx.text),
                cx.sequence_svg(),
                cx.events.len(),
                esc(&cx.trace())
            );
        }
        if !r.end_states.is_empty() {
            let _ = writeln!(
                h,
                "<h3>End states ({} distinct over {} executions)</h3><table class=\"rows end-states\"><tr><th class=\"num\">executions</th><th>verdict</th><th>what every vCPU's KVM_RUN calls returned</th></tr>",
                r.end_states.len(),
                r.interleavings
            );
            for e in &r.end_states {
                let _ = writeln!(
                    h,
                    "<tr><td class=\"num\">{}</td><td>{}</td><td><code>{}</code></td></tr>",
                    e.executions,
                    esc(&e.verdict),
                    esc(&e.state)
                );
            }
            h.push_str("</table>\n");
        }
        h.push_str("</section>\n");
    }
    // Once laid out, the page says how many rows and pictures it shows with a size: what the
    // headless-browser test (tests/report_renders.rs) reads back from the DOM.
    h.push_str(
        "<script>window.addEventListener('load', () => {\n\
         const shown = el => { const b = el.getBoundingClientRect(); return b.width > 0 && b.height > 0; };\n\
         document.body.dataset.renderedRows = [...document.querySelectorAll('table.rows > tbody > tr.row')].filter(shown).length;\n\
         document.body.dataset.renderedPictures = [...document.querySelectorAll('svg.sequence')].filter(shown).length;\n\
         });</script>\n",
    );
    h.push_str("</body></html>\n");
    h
}

/// `YYYY-MM-DDTHH:MM:SSZ` for now (UTC), from the days-since-epoch civil calendar.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `git rev-parse HEAD` in `dir`, `-dirty` added when the work tree has changes.
pub fn git_revision(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

/// loom's version from `Cargo.lock` in `dir` (or a parent: the workspace root).
pub fn loom_version(dir: &Path) -> Option<String> {
    let lock = dir.ancestors().map(|d| d.join("Cargo.lock")).find(|p| p.is_file())?;
    let text = std::fs::read_to_string(lock).ok()?;
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"loom\"" {
            return lines.next()?.trim().strip_prefix("version = \"")?.strip_suffix('"').map(str::to_string);
        }
    }
    None
}

/// The report's directory: `$CARGO_TARGET_DIR/model-report`, else `target/model-report` under the
/// package root (cargo's working directory for tests).
pub fn dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from).join("model-report")
}
