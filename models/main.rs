//! The scenario catalogue and its report harness: `cargo model`.
//!
//! The catalogue is the scenario files of `models/scenarios/` (one row per design or variant
//! each; `ioregionfd_model::scenario` parses and runs them) plus the bus scenarios of
//! `models/bus.rs`, written in Rust because they check the bus array from inside a vCPU's SRCU read
//! section. Under `--cfg loom` every row's interleavings are explored up to the preemption bound,
//! stopping at the first failing execution, whose trace is printed. Every row has an expected
//! verdict; a row that should find a defect and no longer does is a regression of the checker,
//! and fails like any other mismatch. A search cut short by a limit is `incomplete`, never
//! `holds`.
//!
//! `cargo model` passes `--require-loom`: a build without `--cfg loom` (RUSTFLAGS set in the
//! environment replaces the alias's flags) then stops with a message instead of a smoke run.
//! Without it (plain `cargo test`) each row expected to hold runs once on real threads: a smoke
//! run that shows the scenarios build and terminate, not a proof.

mod bus;

use ioregionfd_model::scenario::check::{Completeness, Explored, Limits, explore};
use ioregionfd_model::scenario::{Expected, Row, Scenario};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

const USAGE: &str = "usage: cargo model [-- [--bound N|none] [--knob NAME=VALUE]... [--list] [FILTER|FILE.scenario]...]
  FILTER     a row whose name contains it, or whose design or label is it (rfc-v3, defect:...)
  FILE       a scenario file (path from the package root, or absolute): run its rows instead of the catalogue
  --bound    the preemption bound (default 2, or LOOM_MAX_PREEMPTIONS; `none` is exhaustive)
  --knob     override a knob in every row (`cargo run -- knobs` lists them); labels show it
  --list     list the rows that would run, and exit
  --generated      the generated scenarios (proposed, expected to hold) instead of the catalogue
  --sample N       with --generated: N of them, evenly spaced (a fixed sample)
  --iterations N   shuttle: schedules per scheduler (default 1000, or SHUTTLE_ITERATIONS)
limits: LOOM_MAX_DURATION (s), LOOM_MAX_PERMUTATIONS, LOOM_MAX_BRANCHES: a search they cut short is `incomplete`";

struct Options {
    limits: Limits,
    filters: Vec<String>,
    files: Vec<PathBuf>,
    knobs: Vec<(String, String)>,
    list: bool,
    require_loom: bool,
    generated: bool,
    sample: Option<usize>,
}

/// A path as the user wrote it: relative to the package root (cargo's working directory for
/// tests), else to the directory the command was typed in.
fn resolve(arg: &str) -> PathBuf {
    let p = PathBuf::from(arg);
    if p.is_absolute() || p.exists() {
        return p;
    }
    match std::env::var_os("PWD") {
        Some(pwd) if Path::new(&pwd).join(&p).exists() => Path::new(&pwd).join(p),
        _ => p,
    }
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        limits: Limits::from_env()?,
        filters: Vec::new(),
        files: Vec::new(),
        knobs: Vec::new(),
        list: false,
        require_loom: false,
        generated: false,
        sample: None,
    };
    let parse_bound = |v: &str| match v {
        "none" => Ok(None),
        n => n.parse().map(Some).map_err(|_| format!("preemption bound `{v}` is not a number or `none`")),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |what: &str| inline.clone().or_else(|| args.next()).ok_or(format!("{flag} needs {what}"));
        match flag.as_str() {
            "--" | "--nocapture" | "--quiet" | "-q" | "--show-output" => {}
            "--test-threads" | "--color" => {
                let _ = value("a value")?;
            }
            "--require-loom" => o.require_loom = true,
            "--list" => o.list = true,
            "--generated" => o.generated = true,
            "--sample" => {
                let v = value("a number")?;
                o.sample =
                    Some(v.parse().ok().filter(|n| *n > 0).ok_or(format!("--sample {v} is not a positive number"))?);
            }
            "--bound" => o.limits.bound = parse_bound(&value("a number or `none`")?)?,
            "--iterations" => {
                let v = value("a number")?;
                o.limits.iterations = v.parse().map_err(|_| format!("--iterations {v} is not a number"))?;
            }
            "--knob" => o.knobs.push(ioregionfd_model::design::parse_override(&value("NAME=VALUE")?)?),
            "-h" | "--help" => return Err(String::new()),
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            f if f.ends_with(".scenario") || resolve(f).is_file() => o.files.push(resolve(f)),
            f => o.filters.push(f.to_string()),
        }
    }
    Ok(o)
}

fn catalogue_files() -> Result<Vec<PathBuf>, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "scenario"))
        .collect();
    files.sort();
    Ok(files)
}

fn rows(o: &Options) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    if o.generated {
        let all = ioregionfd_model::scenario::generate::all();
        let step = o.sample.map_or(1, |n| all.len().div_ceil(n).max(1));
        eprintln!(
            "models: {} generated scenarios{}",
            all.len(),
            o.sample.map_or_else(String::new, |_| format!(", every {step}th of them")),
        );
        for g in all.iter().step_by(step) {
            let s = Scenario::parse(&g.text, &g.name).map_err(|e| e.to_string())?;
            rows.extend(s.rows_with(&o.knobs).map_err(|e| e.to_string())?);
        }
        return Ok(rows);
    }
    if o.sample.is_some() {
        return Err("--sample goes with --generated".into());
    }
    let files = if o.files.is_empty() {
        if o.knobs.is_empty() {
            rows.extend(bus::rows());
        } else {
            eprintln!("models: --knob does not apply to the bus rows written in Rust (mainline); they are left out");
        }
        catalogue_files()?
    } else {
        o.files.clone()
    };
    for f in files {
        let s = Scenario::load(&f).map_err(|e| e.to_string())?;
        rows.extend(s.rows_with(&o.knobs).map_err(|e| e.to_string())?);
    }
    Ok(rows)
}

struct Result_ {
    row: Row,
    explored: Explored,
    seconds: f64,
    passed: bool,
}

fn bound_text(bound: Option<usize>) -> String {
    bound.map_or_else(|| "none".to_string(), |b| b.to_string())
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("models: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    let exhaustive = cfg!(any(loom, feature = "shuttle"));
    if o.require_loom && !exhaustive {
        eprintln!(
            "models: this build has no --cfg loom, so it cannot explore interleavings.\n\
             RUSTFLAGS in the environment replaces the `cargo model` alias's `--cfg loom`; add it there:\n\
             \x20   RUSTFLAGS=\"$RUSTFLAGS --cfg loom\" cargo model\n\
             (a plain `cargo test` runs the smoke run of the rows expected to hold)"
        );
        std::process::exit(2);
    }
    let all = match rows(&o) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("models: {e}");
            std::process::exit(2);
        }
    };
    // A filter that is some row's design or label selects by design or label, any other by a
    // part of the name; the two kinds combine (`two-vms rfc-v3`: that scenario under rfc-v3).
    let (labels, names): (Vec<&String>, Vec<&String>) =
        o.filters.iter().partition(|f| all.iter().any(|r| r.label == **f || r.design.name() == f.as_str()));
    let chosen: Vec<Row> = all
        .into_iter()
        .filter(|r| names.is_empty() || names.iter().any(|f| r.name.contains(f.as_str())))
        .filter(|r| labels.is_empty() || labels.iter().any(|f| r.selected_by(f)))
        .collect();
    if chosen.is_empty() {
        eprintln!(
            "models: no row matches {:?} (a filter is part of a scenario name, or a design or label: `cargo model -- --list` lists the rows); the report is left as it was",
            o.filters
        );
        std::process::exit(2);
    }
    if o.list {
        for r in &chosen {
            println!("{:<36} {:<36} {}", r.name, r.label, r.expected.text());
        }
        return;
    }
    let limits = &o.limits;
    let chosen: Vec<Row> = if exhaustive {
        eprintln!(
            "models: {} rows under {}, preemption bound {}",
            chosen.len(),
            ioregionfd_model::sync::BACKEND,
            bound_text(limits.bound)
        );
        if cfg!(feature = "shuttle") {
            eprintln!(
                "models: shuttle runs {0} PCT and {0} random schedules per row: a sample, not a proof (it treats every atomic as SeqCst; weak memory is loom's job)",
                limits.iterations
            );
        }
        chosen
    } else {
        let (run, skipped): (Vec<Row>, Vec<Row>) = chosen.into_iter().partition(|r| r.expected == Expected::Holds);
        eprintln!(
            "models: built without --cfg loom: each of {} rows expected to hold runs once on real threads (a smoke run; {} rows expected to find a defect are left to `cargo model`, as a defect can hang real threads)",
            run.len(),
            skipped.len()
        );
        run
    };
    let mut results = Vec::new();
    let total = chosen.len();
    for (i, row) in chosen.into_iter().enumerate() {
        if exhaustive {
            eprint!("[{}/{total}] {} ({}) ... ", i + 1, row.name, row.label);
            let _ = std::io::stderr().flush();
        }
        let start = Instant::now();
        let explored = explore(&row, limits);
        let seconds = start.elapsed().as_secs_f64();
        let verdict = explored.verdict();
        let passed = row.expected.matches(&verdict);
        if exhaustive {
            let cut = match &explored.completeness {
                Completeness::Incomplete(why) => format!(": {why}"),
                _ => String::new(),
            };
            eprintln!("{verdict} ({} interleavings, {seconds:.2} s){cut}", explored.executions);
        }
        results.push(Result_ { row, explored, seconds, passed });
    }
    print_table(&results);
    for r in results.iter().filter(|r| r.explored.failure.is_some()) {
        let f = r.explored.failure.as_ref().expect("failure");
        println!("\n== counterexample: {} under {}: {} violated: {}", r.row.name, r.row.label, f.invariant, f.text);
        print!("{}", f.trace);
        println!(
            "replay: cargo model -- {}   (add LOOM_LOG=trace LOOM_LOCATION=1 for loom's own step log)",
            replay_filter(&r.row)
        );
    }
    // Few rows chosen: their distinct end states too (all of them are in the report).
    if results.len() <= 8 {
        for r in results.iter().filter(|r| !r.explored.end_states.is_empty()) {
            print_end_states(r);
        }
    }
    for r in results.iter().filter(|r| matches!(r.explored.completeness, Completeness::Incomplete(_))) {
        if let Completeness::Incomplete(why) = &r.explored.completeness {
            println!("\n== incomplete: {} under {}: {why}; no verdict of `holds` is drawn", r.row.name, r.row.label);
        }
    }
    if exhaustive {
        match write_report(&results, limits.bound) {
            Ok(dir) => println!("\nreport: {}/report.json (traces in {}/traces/)", dir.display(), dir.display()),
            Err(e) => eprintln!("models: cannot write the report: {e}"),
        }
    } else {
        println!("\n(smoke run: no report written; `cargo model` writes target/model-report/)");
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    println!("{} passed, {} failed", results.len() - failed, failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

fn print_end_states(r: &Result_) {
    let e = &r.explored;
    println!(
        "\n== end states: {} under {}: {} distinct over {} executions",
        r.row.name,
        r.row.label,
        e.end_states.len(),
        e.executions
    );
    for (state, n) in &e.end_states {
        println!("{n:>8}  {state}");
    }
}

fn replay_filter(row: &Row) -> String {
    match &row.run {
        ioregionfd_model::scenario::check::RowRun::File { scenario, .. }
            if !scenario.source.contains("models/scenarios/") =>
        {
            format!("{} {}", scenario.source, row.label)
        }
        _ => format!("{} {}", row.name, row.label),
    }
}

fn print_table(results: &[Result_]) {
    println!(
        "\n{:<36} {:<40} {:<22} {:<26} {:>13} {:>8}",
        "scenario", "design", "expected", "verdict", "interleavings", "seconds"
    );
    for r in results {
        let mark = if r.passed { "" } else { "  <- MISMATCH" };
        println!(
            "{:<36} {:<40} {:<22} {:<26} {:>13} {:>8.2}{mark}",
            r.row.name,
            r.row.label,
            r.row.expected.text(),
            r.explored.verdict(),
            r.explored.executions,
            r.seconds
        );
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The report's directory: `$CARGO_TARGET_DIR/model-report`, else `target/model-report` under
/// the package root (cargo's working directory for tests), decided at run time.
fn report_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from).join("model-report")
}

fn write_report(results: &[Result_], bound: Option<usize>) -> std::io::Result<PathBuf> {
    let dir = report_dir();
    std::fs::create_dir_all(dir.join("traces"))?;
    let mut json = String::from("[\n");
    for (i, r) in results.iter().enumerate() {
        let f = r.explored.failure.as_ref();
        let completeness = match &r.explored.completeness {
            Completeness::Complete => "complete".to_string(),
            Completeness::Sampled => "sampled".to_string(),
            Completeness::Smoke => "smoke".to_string(),
            Completeness::Incomplete(why) => format!("incomplete: {why}"),
        };
        json.push_str(&format!(
            "  {{\"scenario\": {}, \"summary\": {}, \"design\": {}, \"expected\": {}, \"verdict\": {}, \"text\": {}, \"interleavings\": {}, \"seconds\": {:.3}, \"bound\": {}, \"search\": {}, \"backend\": {}, \"passed\": {}, \"trace\": {}, \"end_states\": [{}]}}{}\n",
            json_str(&r.row.name),
            json_str(&r.row.summary),
            json_str(&r.row.label),
            json_str(&r.row.expected.text()),
            json_str(&r.explored.verdict()),
            json_str(f.map(|f| f.text.as_str()).unwrap_or("")),
            r.explored.executions,
            r.seconds,
            json_str(&bound_text(bound)),
            json_str(&completeness),
            json_str(ioregionfd_model::sync::BACKEND),
            r.passed,
            json_str(f.map(|f| f.trace.as_str()).unwrap_or("")),
            r.explored
                .end_states
                .iter()
                .map(|(s, n)| format!("{{\"state\": {}, \"executions\": {n}}}", json_str(s)))
                .collect::<Vec<_>>()
                .join(", "),
            if i + 1 < results.len() { "," } else { "" }
        ));
        if let Some(f) = f {
            let body =
                format!("{} under {}: violated {}: {}\n{}", r.row.name, r.row.label, f.invariant, f.text, f.trace);
            let file = format!("{}.{}.txt", r.row.name, r.row.label).replace([':', '/', '=', '+'], "_");
            std::fs::write(dir.join("traces").join(file), body)?;
        }
    }
    json.push_str("]\n");
    std::fs::write(dir.join("report.json"), json)?;
    Ok(dir)
}
