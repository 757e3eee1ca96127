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
//! Each row is one libtest trial named `SCENARIO::DESIGN` (libtest-mimic), so the usual test
//! runner flags work: `--list` (with `--format terse`, what cargo-nextest asks), `--exact NAME`,
//! `--test-threads N` (rows checked at once, each on its own OS thread; default here: the number
//! of cores, see `options`), `--skip`, `--ignored`.
//! A FILTER without `--exact` keeps this harness's meaning (below). After the trials the harness
//! prints the table, the counterexamples and, for a few rows, their end states, and writes the
//! report (`report.rs`).
//!
//! `cargo model` passes `--require-loom`: a build without `--cfg loom` (RUSTFLAGS set in the
//! environment replaces the alias's flags) then stops with a message instead of a smoke run.
//! Without it (plain `cargo test`) each row expected to hold runs once on real threads: a smoke
//! run that shows the scenarios build and terminate, not a proof; the rows expected to find a
//! defect are not trials there at all (a defect can hang real threads), and nothing else is
//! printed.
//!
//! loom's own environment is honoured: `LOOM_MAX_PREEMPTIONS`, `LOOM_MAX_DURATION`,
//! `LOOM_MAX_PERMUTATIONS`, `LOOM_MAX_BRANCHES`, `LOOM_LOCATION`, `LOOM_LOG` (the subscriber
//! `loom::model` installs, around each row) and `LOOM_CHECKPOINT_FILE` (one file per row:
//! `PATH.SCENARIO.DESIGN.json`; a row resumed from its file is reported incomplete, as the
//! executions before the checkpoint were explored by an earlier run).
//!
//! Speed (docs/performance.md): loom's coroutine stacks are kept from one execution to the next
//! (`stack_pool.rs`; `IOREGIONFD_STACK_POOL=0` turns that off), a search records no events until
//! an execution fails and is then run again to record that one (`scenario::check::explore`), and
//! rows are checked one per core at a time.

mod bus;
mod report;
#[cfg(all(loom, target_os = "linux"))]
mod stack_pool;

use ioregionfd_model::scenario::check::{Completeness, Explored, Limits, explore};
use ioregionfd_model::scenario::{Expected, Row, Scenario};
use libtest_mimic::{Arguments, Failed, Trial};
use report::RowResult;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const USAGE: &str =
    "usage: cargo model [-- [--bound N|none] [--knob NAME=VALUE]... [FILTER|FILE.scenario]... [libtest flags]]
  FILTER     a row whose name contains it, or whose design or label is it (rfc-v3, defect:...);
             several: rows that match a name filter (if any) and a design filter (if any)
  FILE       a scenario file (path from the package root, or absolute): run its rows instead of the catalogue
  --bound    the preemption bound (default 2, or LOOM_MAX_PREEMPTIONS; `none` is exhaustive)
  --knob     override a knob in every row (`cargo run -- knobs` lists them); labels show it
  --generated      the generated scenarios (proposed, expected to hold) instead of the catalogue
  --sample N       with --generated: N of them, evenly spaced (a fixed sample)
  --iterations N   shuttle: schedules per scheduler (default 1000, or SHUTTLE_ITERATIONS)
  --jobs N         rows checked at once, one OS thread each (default: the number of cores)
  --shard I/N      only every Nth of the chosen rows, starting with the Ith (a cluster runs the N shards)
  --report-dir D   write the report to D (default $CARGO_TARGET_DIR/model-report)
  --merge D        join the reports of all N shards (repeat per directory) into one, in the rows' order
libtest flags (rows are trials named SCENARIO::DESIGN): --list [--format terse], --exact NAME,
  --test-threads N, --skip TEXT, --ignored, --include-ignored, --nocapture, --quiet, --color WHEN
limits: LOOM_MAX_DURATION (s), LOOM_MAX_PERMUTATIONS, LOOM_MAX_BRANCHES: a search they cut short is `incomplete`;
  LOOM_LOG=trace: loom's log; LOOM_CHECKPOINT_FILE=PATH: a checkpoint file per row (PATH.SCENARIO.DESIGN.json)";

struct Options {
    limits: Limits,
    filters: Vec<String>,
    files: Vec<PathBuf>,
    knobs: Vec<(String, String)>,
    require_loom: bool,
    generated: bool,
    sample: Option<usize>,
    /// The flags for libtest-mimic (the trial runner), program name first.
    libtest: Vec<String>,
    exact: bool,
    /// `--shard I/N`: only the rows whose place among the chosen rows is I-1 modulo N.
    shard: Option<(usize, usize)>,
    /// `--merge DIR`: join the shard reports in these directories instead of running rows.
    merge: Vec<PathBuf>,
    /// `--report-dir DIR`: where the report goes (default `$CARGO_TARGET_DIR/model-report`).
    report_dir: Option<PathBuf>,
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

/// libtest's flags that take a value, and those that do not.
const LIBTEST_VALUED: &[&str] = &["--test-threads", "--color", "--format", "--logfile", "--skip", "-Z"];
const LIBTEST_FLAGS: &[&str] = &[
    "--list",
    "--exact",
    "--nocapture",
    "--show-output",
    "--quiet",
    "-q",
    "--ignored",
    "--include-ignored",
    "--test",
    "--bench",
];

fn options() -> Result<Options, String> {
    let mut o = Options {
        limits: Limits::from_env()?,
        filters: Vec::new(),
        files: Vec::new(),
        knobs: Vec::new(),
        require_loom: false,
        generated: false,
        sample: None,
        libtest: vec!["models".to_string()],
        exact: false,
        shard: None,
        merge: Vec::new(),
        report_dir: None,
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
            "--" => {}
            "--require-loom" => o.require_loom = true,
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
            "--shard" => {
                let v = value("I/N")?;
                let bad = || format!("--shard {v}: I/N with 1 <= I <= N");
                let (i, n) = v.split_once('/').ok_or_else(bad)?;
                let (i, n): (usize, usize) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
                if i == 0 || i > n {
                    return Err(bad());
                }
                o.shard = Some((i, n));
            }
            "--merge" => o.merge.push(resolve(&value("a report directory")?)),
            "--report-dir" => o.report_dir = Some(resolve(&value("a directory")?)),
            // --jobs N: rows checked at once (libtest's --test-threads).
            "--jobs" | "-j" => {
                let v = value("a number")?;
                o.libtest.extend(["--test-threads".to_string(), v]);
            }
            "-h" | "--help" => return Err(String::new()),
            f if LIBTEST_VALUED.contains(&f) => {
                let v = value("a value")?;
                o.libtest.extend([f.to_string(), v]);
            }
            f if LIBTEST_FLAGS.contains(&f) => {
                o.exact |= f == "--exact";
                o.libtest.push(f.to_string());
            }
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            f if f.ends_with(".scenario") || resolve(f).is_file() => o.files.push(resolve(f)),
            f => o.filters.push(f.to_string()),
        }
    }
    if o.exact {
        // `--exact NAME`: libtest's own matching on the trial name (what cargo-nextest runs).
        o.libtest.append(&mut o.filters);
    }
    // A checker uses every core unless asked: one row per core at a time, each on its own OS
    // thread, the next row going to the first thread that is free. (Threads scale since loom's
    // coroutine stacks are kept, `stack_pool.rs`: before, every unmap made the other cores flush
    // their TLBs and two threads were slower than one; docs/performance.md.)
    if cfg!(any(loom, feature = "shuttle")) && !o.libtest.iter().any(|a| a == "--test-threads") {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        o.libtest.extend(["--test-threads".to_string(), cores.to_string()]);
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

/// Each trial's result, by its place among the trials, with the row's place among the chosen rows.
type Slots = Mutex<Vec<Option<(usize, RowResult)>>>;

/// The trial name of a row.
fn trial_name(row: &Row) -> String {
    format!("{}::{}", row.name, row.label)
}

fn bound_text(bound: Option<usize>) -> String {
    bound.map_or_else(|| "none".to_string(), |b| b.to_string())
}

/// The rows the harness's own filters choose (a name filter and a design filter combine), or
/// a usage error when filters were given and none matches.
fn choose(all: Vec<Row>, filters: &[String]) -> Result<Vec<Row>, String> {
    // A filter that is some row's design or label selects by design or label, any other by a
    // part of the name; the two kinds combine (`two-vms rfc-v3`: that scenario under rfc-v3).
    let (labels, names): (Vec<&String>, Vec<&String>) =
        filters.iter().partition(|f| all.iter().any(|r| r.label == **f || r.design.name() == f.as_str()));
    let chosen: Vec<Row> = all
        .into_iter()
        .filter(|r| names.is_empty() || names.iter().any(|f| r.name.contains(f.as_str())))
        .filter(|r| labels.is_empty() || labels.iter().any(|f| r.selected_by(f)))
        .collect();
    if chosen.is_empty() {
        return Err(format!(
            "no row matches {filters:?} (a filter is part of a scenario name, or a design or label: `cargo model -- --list` lists the rows); the report is left as it was"
        ));
    }
    Ok(chosen)
}

/// Explores one row, with loom's log when `LOOM_LOG` asks for it (the subscriber `loom::model`
/// installs; `Builder::check`, which the harness calls, installs none).
fn explore_row(row: &Row, limits: &Limits) -> Explored {
    #[cfg(loom)]
    if std::env::var_os("LOOM_LOG").is_some() {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("LOOM_LOG"))
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .without_time()
            .finish();
        return tracing::subscriber::with_default(subscriber, || explore(row, limits));
    }
    explore(row, limits)
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
    if !o.merge.is_empty() {
        std::process::exit(merge(&o));
    }
    let args = Arguments::from_iter(o.libtest.clone());
    let chosen = match rows(&o).and_then(|all| choose(all, if o.exact { &[] } else { &o.filters })) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("models: {e}");
            std::process::exit(2);
        }
    };
    // Without a checker only the rows expected to hold are trials (a defect can hang real
    // threads); the others are `cargo model`'s. Each row keeps its place among the chosen rows
    // (what `--shard` counts and a merge orders by).
    let chosen: Vec<(usize, Row)> = chosen
        .into_iter()
        .filter(|r| exhaustive || r.expected == Expected::Holds)
        .enumerate()
        .filter(|(i, _)| o.shard.is_none_or(|(k, n)| i % n == k - 1))
        .collect();
    let listing = args.list;
    if exhaustive && !listing {
        eprintln!(
            "models: {} rows under {}, preemption bound {}",
            chosen.len(),
            ioregionfd_model::sync::BACKEND,
            bound_text(o.limits.bound)
        );
        if cfg!(feature = "shuttle") {
            eprintln!(
                "models: shuttle runs {0} PCT and {0} random schedules per row: a sample, not a proof (it treats every atomic as SeqCst; weak memory is loom's job)",
                o.limits.iterations
            );
        }
    }
    let slots: Arc<Slots> = Arc::new(Mutex::new((0..chosen.len()).map(|_| None).collect()));
    let done = Arc::new(AtomicUsize::new(0));
    let total = chosen.len();
    let trials: Vec<Trial> = chosen
        .into_iter()
        .enumerate()
        .map(|(i, (index, row))| {
            let (slots, done, limits) = (slots.clone(), done.clone(), o.limits.clone());
            let kind = if exhaustive { ioregionfd_model::sync::BACKEND } else { "smoke" };
            Trial::test(trial_name(&row), move || {
                let start = Instant::now();
                let explored = explore_row(&row, &limits);
                let seconds = start.elapsed().as_secs_f64();
                let verdict = explored.verdict();
                let passed = row.expected.matches(&verdict);
                if exhaustive {
                    let cut = match &explored.completeness {
                        Completeness::Incomplete(why) => format!(": {why}"),
                        _ => String::new(),
                    };
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    eprintln!(
                        "[{n}/{total}] {} ({}) ... {verdict} ({} interleavings, {seconds:.2} s){cut}",
                        row.name, row.label, explored.executions
                    );
                }
                let message = format!("expected {}, verdict {verdict}", row.expected.text());
                let expected_ids = match &row.expected {
                    Expected::Holds => Vec::new(),
                    Expected::Violates(ids) => ids.clone(),
                };
                let result = RowResult {
                    name: row.name.clone(),
                    label: row.label.clone(),
                    summary: row.summary.clone(),
                    expected: row.expected.text(),
                    expected_ids,
                    replay: format!("cargo model -- {}", replay_filter(&row)),
                    explored,
                    seconds,
                    passed,
                };
                let failure = (!passed).then(|| {
                    let f = result.explored.failure.as_ref();
                    format!("{message}{}", f.map_or_else(String::new, |f| format!(": {}", f.text)))
                });
                slots.lock().unwrap()[i] = Some((index, result));
                match failure {
                    None => Ok(()),
                    Some(m) => Err(Failed::from(m)),
                }
            })
            .with_kind(kind)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if listing {
        return;
    }
    let results: Vec<(usize, RowResult)> = std::mem::take(&mut *slots.lock().unwrap()).into_iter().flatten().collect();
    if exhaustive && !results.is_empty() {
        if std::env::var_os("NEXTEST_RUN_ID").is_some() {
            // cargo-nextest runs each row in a process of its own: no one process sees the run.
            eprintln!("models: under cargo-nextest: no table or report (`cargo model` writes them)");
        } else {
            summarize(&o, &results);
        }
    }
    conclusion.exit();
}

/// The table, the counterexamples, the incomplete rows, the end states of a few rows, and the
/// report, as `cargo model` has always printed them.
fn summarize(o: &Options, results: &[(usize, RowResult)]) {
    let rows: Vec<&RowResult> = results.iter().map(|(_, r)| r).collect();
    print_table(&rows);
    for r in &rows {
        let Some(f) = r.explored.failure.as_ref() else { continue };
        println!("\n== counterexample: {} under {}: {} violated: {}", r.name, r.label, f.invariant, f.text);
        print!("{}", f.trace());
        println!("replay: {}   (add LOOM_LOG=trace LOOM_LOCATION=1 for loom's own step log)", r.replay);
    }
    for r in &rows {
        if let Completeness::Incomplete(why) = &r.explored.completeness {
            println!("\n== incomplete: {} under {}: {why}; no verdict of `holds` is drawn", r.name, r.label);
        }
    }
    // Few rows chosen: their distinct end states too (all of them are in the report).
    if rows.len() <= 8 {
        for r in rows.iter().filter(|r| !r.explored.end_states.is_empty()) {
            print_end_states(r);
        }
    }
    let dir = o.report_dir.clone().unwrap_or_else(report::dir);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = report::RunInfo {
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
        git_revision: report::git_revision(root),
        loom_version: report::loom_version(root),
        backend: ioregionfd_model::sync::BACKEND.to_string(),
        bound: bound_text(o.limits.bound),
        filters: o.filters.iter().cloned().chain(o.files.iter().map(|f| f.display().to_string())).collect(),
        knobs: o.knobs.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        date: report::utc_now(),
        shard: o.shard.map(|(i, n)| format!("{i}/{n}")),
        merged_shards: None,
    };
    let reports = results.iter().map(|(index, r)| report::row_report(r, *index)).collect();
    match report::write(&dir, &run, reports) {
        Ok(()) => {
            println!("\nreport: {0}/report.json, {0}/index.html (traces and pictures in {0}/traces/)", dir.display())
        }
        Err(e) => eprintln!("models: cannot write the report: {e}"),
    }
    #[cfg(all(loom, target_os = "linux"))]
    {
        let (reused, mapped) = stack_pool::counts();
        if mapped > 0 {
            println!("loom coroutine stacks: {mapped} mapped, {reused} reused (models/stack_pool.rs)");
        }
    }
    let failed = rows.iter().filter(|r| !r.passed).count();
    println!("{} passed, {} failed", rows.len() - failed, failed);
}

/// `--merge`: the shard reports joined into the report of the whole run; exit 0 when every row
/// passed, 1 when one did not, 2 when the reports are not the shards of one run.
fn merge(o: &Options) -> i32 {
    let reports: Result<Vec<report::Report>, String> = o.merge.iter().map(|d| report::read(d)).collect();
    let (run, rows) = match reports.and_then(report::merge) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("models: --merge: {e}");
            return 2;
        }
    };
    for r in &rows {
        println!("{}", r.line());
    }
    let failed = rows.iter().filter(|r| !r.passed()).count();
    let total = rows.len();
    let dir = o.report_dir.clone().unwrap_or_else(report::dir);
    if let Err(e) = report::write(&dir, &run, rows) {
        eprintln!("models: cannot write the merged report: {e}");
        return 2;
    }
    println!("\nreport: {0}/report.json, {0}/index.html (merged from {1} shards)", dir.display(), o.merge.len());
    println!("{} passed, {} failed", total - failed, failed);
    i32::from(failed > 0)
}

fn print_end_states(r: &RowResult) {
    let e = &r.explored;
    println!(
        "\n== end states: {} under {}: {} distinct over {} executions",
        r.name,
        r.label,
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

fn print_table(results: &[&RowResult]) {
    println!(
        "\n{:<36} {:<40} {:<22} {:<26} {:>13} {:>8}",
        "scenario", "design", "expected", "verdict", "interleavings", "seconds"
    );
    for r in results {
        let mark = if r.passed { "" } else { "  <- MISMATCH" };
        println!(
            "{:<36} {:<40} {:<22} {:<26} {:>13} {:>8.2}{mark}",
            r.name,
            r.label,
            r.expected,
            r.explored.verdict(),
            r.explored.executions,
            r.seconds
        );
    }
    // Seconds of checking, summed over the rows: with rows checked at once this is more than the
    // wall time, and the rate is per core.
    let interleavings: usize = results.iter().map(|r| r.explored.executions).sum();
    let seconds: f64 = results.iter().map(|r| r.seconds).sum();
    if seconds > 0.0 {
        println!(
            "{interleavings} interleavings in {seconds:.1} s of checking: {:.0} per second per core",
            interleavings as f64 / seconds
        );
    }
}
