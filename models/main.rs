//! The loom scenario catalogue and its report harness: `cargo model`.
//!
//! Each scenario builds a small system, runs its threads (at most 4 spawned, loom's limit), and
//! returns the verdict of the invariant checks. Under `--cfg loom` the harness explores every
//! interleaving up to the preemption bound and stops a scenario at the first failing execution,
//! whose trace it prints. Every scenario has an expected verdict; a scenario that should find a
//! defect and no longer does is a regression of the checker, and fails like any other mismatch.
//!
//! Without `--cfg loom` (plain `cargo test`) each scenario expected to hold runs once on real
//! threads: a smoke run that shows the scenarios build and terminate, not a proof. Scenarios
//! expected to find a defect are skipped there (the defect can hang real threads).

mod bus;
mod ioregion;
mod vmm;

use ioregionfd_model::kvm::Kvm;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What a scenario should conclude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Every invariant holds in every explored interleaving.
    Holds,
    /// Some interleaving violates this invariant. Where one scenario shows two defects of a
    /// design, `a|b` names both: the checker passes when the first failing execution it finds
    /// breaks either (loom's search order and shuttle's schedules can meet a different one first).
    Violates(&'static str),
}

/// One entry of the catalogue.
pub struct Scenario {
    /// Stable name (`cargo model -- NAME` selects by substring).
    pub name: &'static str,
    /// What happens in it.
    pub summary: &'static str,
    /// The design or variant it runs under (`mainline`, or a named defect).
    pub design: &'static str,
    /// The expected verdict.
    pub expected: Expected,
    /// One execution: `Err` with the failure when an invariant is violated.
    pub run: fn() -> Result<(), Failure>,
}

/// A failing execution: the violated invariants, what was seen first, and the trace.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The ids of the invariants the execution violated, comma-separated in order of first
    /// violation (`liveness` for a deadlock, `panic` for a crash of the model itself).
    pub invariant: String,
    /// What was seen.
    pub text: String,
    /// The numbered event list of the execution.
    pub trace: String,
}

thread_local! {
    /// The recorder of the execution under way and its mark, so that a deadlock (which loom
    /// reports by panicking) can still be judged by the violations recorded before it.
    static WATCHED: std::cell::RefCell<Option<(ioregionfd_model::trace::Recorder, usize)>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes the harness judge a panic of this execution by `kvm`'s violations after `mark`.
pub fn watch(kvm: &Kvm, mark: usize) {
    WATCHED.with(|w| *w.borrow_mut() = Some((kvm.recorder().clone(), mark)));
}

/// The violations `rec` recorded after `mark`, plus `extra` (an invariant found by another
/// check), as one failure: every invariant id in order, the first text, the trace.
fn failure_from(
    rec: &ioregionfd_model::trace::Recorder,
    mark: usize,
    extra: Option<(String, String)>,
) -> Option<Failure> {
    let mut found: Vec<(String, String)> =
        rec.violations_since(mark).into_iter().map(|v| (v.invariant.to_string(), v.text)).collect();
    found.extend(extra);
    let text = found.first()?.1.clone();
    let mut ids: Vec<String> = Vec::new();
    for (id, _) in found {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Some(Failure { invariant: ids.join(","), text, trace: rec.format_trace() })
}

/// After a panic of the watched execution: every violation it recorded, plus what the panic says
/// (`extra`).
pub fn watched_failure(extra: Option<(String, String)>) -> Option<Failure> {
    WATCHED.with(|w| {
        let (rec, mark) = w.borrow_mut().take()?;
        failure_from(&rec, mark, extra)
    })
}

/// The verdict of one execution of a system: the first recorded violation, then the structural
/// checks; `Ok` when everything holds.
pub fn verdict(kvm: &Kvm) -> Result<(), Failure> {
    verdict_after(kvm, 0)
}

/// As [`verdict`], counting only violations recorded after the first `mark` (those of the
/// scenario's threads, not of its setup: setup findings are the sequential checks' business).
pub fn verdict_after(kvm: &Kvm, mark: usize) -> Result<(), Failure> {
    let structural = kvm.check_structure().into_iter().next().map(|(i, t)| (i.id.to_string(), t));
    match failure_from(kvm.recorder(), mark, structural) {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

fn fail_with(
    kvm: &Kvm,
    mark: usize,
    wrong: Vec<(&ioregionfd_model::invariants::Invariant, String)>,
) -> Result<(), Failure> {
    match wrong.into_iter().next() {
        Some((inv, text)) => Err(failure_from(kvm.recorder(), mark, Some((inv.id.to_string(), text))).expect("one")),
        None => Ok(()),
    }
}

/// The end of a scenario whose threads are all done: the violations after `mark`, the structural
/// checks and the end-of-run checks (`exactly-once`, `liveness`). (Teardown and `no-leak` are the
/// business of the teardown scenarios: see [`finish_with_teardown`].)
pub fn finish(kvm: &Kvm, mark: usize, devices_drained: bool) -> Result<(), Failure> {
    verdict_after(kvm, mark)?;
    fail_with(kvm, mark, kvm.check_end(devices_drained))
}

/// [`finish`], then teardown (every VM destroyed, every fd closed) and `no-leak`.
pub fn finish_with_teardown(kvm: &Kvm, mark: usize, devices_drained: bool) -> Result<(), Failure> {
    finish(kvm, mark, devices_drained)?;
    kvm.teardown();
    verdict_after(kvm, mark)?;
    fail_with(kvm, mark, kvm.check_no_leak())
}

/// A scenario's own assertion (an outcome no design may produce), as a failure with the trace.
pub fn assertion(kvm: &Kvm, ok: bool, text: impl Into<String>) -> Result<(), Failure> {
    if ok {
        return Ok(());
    }
    Err(Failure { invariant: "assertion".into(), text: text.into(), trace: kvm.recorder().format_trace() })
}

fn catalogue() -> Vec<Scenario> {
    let mut all = bus::scenarios();
    all.extend(ioregion::scenarios());
    all.extend(vmm::scenarios());
    all
}

struct Row {
    name: &'static str,
    design: &'static str,
    expected: Expected,
    verdict: String,
    failure: Option<Failure>,
    interleavings: usize,
    seconds: f64,
    passed: bool,
}

fn expected_text(e: Expected) -> String {
    match e {
        Expected::Holds => "holds".into(),
        Expected::Violates(id) => id.into(),
    }
}

/// What loom and shuttle share: running a checker over a scenario, stopping at the first failing
/// execution, and turning what stopped it (a failed check, a deadlock, a panic) into a failure.
#[cfg(any(loom, feature = "shuttle"))]
mod capture {
    use super::{Failure, Scenario};
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static EXECUTIONS: AtomicUsize = AtomicUsize::new(0);
    static FAILURE: Mutex<Option<Failure>> = Mutex::new(None);
    static PANIC: Mutex<Option<String>> = Mutex::new(None);
    const STOP: &str = "ioregionfd-model: invariant violated, stop exploring";

    /// One execution of `s` as the checker runs it: counted, and a failure stops the checker.
    pub fn body(s: &Scenario) -> impl Fn() + Send + Sync + 'static {
        let run = s.run;
        move || {
            EXECUTIONS.fetch_add(1, Ordering::SeqCst);
            let _ = super::watched_failure(None);
            if let Err(f) = run() {
                FAILURE.lock().unwrap().get_or_insert(f);
                std::panic::panic_any(STOP);
            }
        }
    }

    /// Runs `check` (which runs the checker over [`body`]) and reports the first failure and the
    /// number of executions.
    pub fn run_checked(check: impl FnOnce()) -> (Option<Failure>, usize) {
        EXECUTIONS.store(0, Ordering::SeqCst);
        *FAILURE.lock().unwrap() = None;
        *PANIC.lock().unwrap() = None;
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            // A thread loom drops after a deadlock unwinds through its coroutine with an empty
            // panic from the `generator` crate; that says nothing, and may come before loom's
            // own "deadlock" panic, so it is not recorded.
            let unwinding_coroutine = msg.is_empty() && info.location().is_some_and(|l| l.file().contains("generator"));
            if msg != STOP && !unwinding_coroutine {
                let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                PANIC.lock().unwrap().get_or_insert(format!("{msg}{at}"));
            }
        }));
        let result = catch_unwind(AssertUnwindSafe(check));
        std::panic::set_hook(previous_hook);
        let executions = EXECUTIONS.load(Ordering::SeqCst);
        let failure = match result {
            Ok(()) => None,
            Err(_) => FAILURE.lock().unwrap().take().or_else(|| {
                let msg = PANIC.lock().unwrap().take().unwrap_or_else(|| "unknown panic".into());
                let invariant = if msg.contains("deadlock") { "liveness" } else { "panic" };
                super::watched_failure(Some((invariant.to_string(), msg.clone())))
                    .or_else(|| Some(Failure { invariant: invariant.into(), text: msg, trace: String::new() }))
            }),
        };
        (failure, executions)
    }
}

#[cfg(loom)]
mod explore {
    use super::{Failure, Scenario, capture};

    /// Explores every interleaving of `s` up to `bound` preemptions.
    pub fn run(s: &Scenario, bound: Option<usize>) -> (Option<Failure>, usize) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = bound;
        builder.max_branches = 100_000;
        capture::run_checked(|| builder.check(capture::body(s)))
    }
}

/// Schedules per shuttle scheduler (`--iterations N`, or `SHUTTLE_ITERATIONS`; default 1,000).
static ITERATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1000);

/// The shuttle explorer: PCT schedules (depth = the preemption bound + 1), then random ones, each
/// from a fixed seed, [`ITERATIONS`] of each. A failing schedule
/// is printed by shuttle as a string `shuttle::replay` accepts.
#[cfg(all(feature = "shuttle", not(loom)))]
mod explore {
    use super::{Failure, Scenario, capture};
    use shuttle::scheduler::{PctScheduler, RandomScheduler};
    use shuttle::{Config, Runner};

    const SEED: u64 = 0x10_5e61_0f0d;

    pub fn run(s: &Scenario, bound: Option<usize>) -> (Option<Failure>, usize) {
        let iterations = super::ITERATIONS.load(std::sync::atomic::Ordering::Relaxed);
        let depth = bound.unwrap_or(2) + 1;
        let config = || {
            let mut c = Config::default();
            // Shuttle treats every atomic as SeqCst; weak-memory effects are loom's job (said once
            // in the run's header instead of once per scenario).
            c.silence_warnings = true;
            c
        };
        capture::run_checked(|| {
            Runner::new(PctScheduler::new_from_seed(SEED, depth, iterations), config()).run(capture::body(s));
            Runner::new(RandomScheduler::new_from_seed(SEED, iterations), config()).run(capture::body(s));
        })
    }
}

#[cfg(not(any(loom, feature = "shuttle")))]
mod explore {
    use super::{Failure, Scenario};
    use std::time::Duration;

    /// How long a smoke run of one scenario may take before it counts as stuck.
    const LIMIT: Duration = Duration::from_secs(20);

    /// One execution on real threads. An execution that does not finish in time is reported as
    /// `liveness` (its threads are left behind; the process ends with the run).
    pub fn run(s: &Scenario, _bound: Option<usize>) -> (Option<Failure>, usize) {
        let (tx, rx) = std::sync::mpsc::channel();
        let body = s.run;
        std::thread::spawn(move || {
            let _ = tx.send(body().err());
        });
        match rx.recv_timeout(LIMIT) {
            Ok(failure) => (failure, 1),
            Err(_) => {
                let text = format!("the scenario did not finish within {} s on real threads (stuck)", LIMIT.as_secs());
                (Some(Failure { invariant: "liveness".into(), text, trace: String::new() }), 1)
            }
        }
    }
}

/// A preemption bound: a number, or `none` for an exhaustive search.
fn parse_bound(v: &str) -> Result<Option<usize>, String> {
    match v {
        "none" => Ok(None),
        n => n.parse().map(Some).map_err(|_| format!("preemption bound `{v}` is not a number or `none`")),
    }
}

fn options() -> Result<(Option<usize>, Vec<String>), String> {
    let mut bound = match std::env::var("LOOM_MAX_PREEMPTIONS") {
        Ok(v) => parse_bound(&v)?,
        Err(_) => Some(2),
    };
    if let Ok(v) = std::env::var("SHUTTLE_ITERATIONS") {
        ITERATIONS.store(v.parse().map_err(|_| format!("SHUTTLE_ITERATIONS={v} is not a number"))?, Ordering::Relaxed);
    }
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--" => {}
            "--iterations" => {
                let v = args.next().ok_or("--iterations needs a number")?;
                ITERATIONS
                    .store(v.parse().map_err(|_| format!("--iterations {v} is not a number"))?, Ordering::Relaxed);
            }
            "--bound" => {
                let v = args.next().ok_or("--bound needs a number or `none`")?;
                bound = parse_bound(&v)?;
            }
            // Flags cargo's test runner passes to every test target; nothing to do here.
            "--nocapture" | "--quiet" | "-q" | "--color" | "--test-threads" => {}
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            f => filters.push(f.to_string()),
        }
    }
    Ok((bound, filters))
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

fn bound_text(bound: Option<usize>) -> String {
    bound.map_or_else(|| "none".to_string(), |b| b.to_string())
}

fn write_report(rows: &[Row], bound: Option<usize>) -> std::io::Result<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/model-report");
    std::fs::create_dir_all(dir.join("traces"))?;
    let mut json = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let trace = r.failure.as_ref().map(|f| f.trace.as_str()).unwrap_or("");
        json.push_str(&format!(
            "  {{\"scenario\": {}, \"design\": {}, \"expected\": {}, \"verdict\": {}, \"text\": {}, \"interleavings\": {}, \"seconds\": {:.3}, \"bound\": {}, \"backend\": {}, \"passed\": {}, \"trace\": {}}}{}\n",
            json_str(r.name),
            json_str(r.design),
            json_str(&expected_text(r.expected)),
            json_str(&r.verdict),
            json_str(r.failure.as_ref().map(|f| f.text.as_str()).unwrap_or("")),
            r.interleavings,
            r.seconds,
            json_str(&bound_text(bound)),
            json_str(ioregionfd_model::sync::BACKEND),
            r.passed,
            json_str(trace),
            if i + 1 < rows.len() { "," } else { "" }
        ));
        if let Some(f) = &r.failure {
            let body = format!("{} under {}: violated {}: {}\n{}", r.name, r.design, f.invariant, f.text, f.trace);
            std::fs::write(dir.join("traces").join(format!("{}.{}.txt", r.name, r.design)), body)?;
        }
    }
    json.push_str("]\n");
    std::fs::write(dir.join("report.json"), json)?;
    Ok(dir)
}

fn main() {
    let (bound, filters) = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("models: {e}\nusage: cargo model [-- [--bound N|none] [--iterations N] [NAME...]]");
            std::process::exit(2);
        }
    };
    let exhaustive = cfg!(any(loom, feature = "shuttle"));
    let all = catalogue();
    let chosen: Vec<&Scenario> =
        all.iter().filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str()))).collect();
    if exhaustive {
        eprintln!(
            "models: {} scenarios under {}, preemption bound {}",
            chosen.len(),
            ioregionfd_model::sync::BACKEND,
            bound_text(bound)
        );
        if cfg!(feature = "shuttle") {
            eprintln!(
                "models: shuttle runs {} PCT and {} random schedules per scenario; it treats every atomic as SeqCst (weak memory is loom's job)",
                ITERATIONS.load(Ordering::Relaxed),
                ITERATIONS.load(Ordering::Relaxed)
            );
        }
    } else {
        eprintln!(
            "models: built without --cfg loom: each of {} scenarios runs once on real threads (a smoke run); `cargo model` explores every interleaving",
            chosen.len()
        );
    }
    let mut rows = Vec::new();
    let chosen: Vec<&Scenario> = if exhaustive {
        chosen
    } else {
        let (run, skipped): (Vec<&Scenario>, Vec<&Scenario>) =
            chosen.into_iter().partition(|s| s.expected == Expected::Holds);
        for s in &skipped {
            eprintln!(
                "skip {} ({}): expected to find a defect, which can hang real threads; cargo model explores it",
                s.name, s.design
            );
        }
        run
    };
    for (i, s) in chosen.iter().enumerate() {
        eprint!("[{}/{}] {} ({}) ... ", i + 1, chosen.len(), s.name, s.design);
        let _ = std::io::stderr().flush();
        let start = Instant::now();
        let (failure, interleavings) = explore::run(s, bound);
        let seconds = start.elapsed().as_secs_f64();
        let verdict = failure.as_ref().map_or_else(|| "holds".to_string(), |f| f.invariant.clone());
        let matches = match s.expected {
            Expected::Holds => verdict == "holds",
            Expected::Violates(ids) => ids.split('|').any(|id| verdict.split(',').any(|v| v == id)),
        };
        let passed = matches;
        eprintln!("{verdict} ({interleavings} interleavings, {seconds:.2} s)");
        rows.push(Row {
            name: s.name,
            design: s.design,
            expected: s.expected,
            verdict,
            failure,
            interleavings,
            seconds,
            passed,
        });
    }
    println!(
        "\n{:<34} {:<20} {:<12} {:<26} {:>13} {:>8}",
        "scenario", "design", "expected", "verdict", "interleavings", "seconds"
    );
    for r in &rows {
        let mark = if r.passed { "" } else { "  <- MISMATCH" };
        println!(
            "{:<34} {:<20} {:<12} {:<26} {:>13} {:>8.2}{mark}",
            r.name,
            r.design,
            expected_text(r.expected),
            r.verdict,
            r.interleavings,
            r.seconds
        );
    }
    for r in rows.iter().filter(|r| r.failure.is_some()) {
        let f = r.failure.as_ref().expect("failure");
        println!("\n== counterexample: {} under {}: {} violated: {}", r.name, r.design, f.invariant, f.text);
        print!("{}", f.trace);
        println!("replay: cargo model -- {}   (add LOOM_LOG=trace LOOM_LOCATION=1 for loom's own step log)", r.name);
    }
    if !exhaustive {
        println!("\n(smoke run: no report written; `cargo model` writes target/model-report/)");
    } else {
        report(&rows, bound);
    }
    let failed = rows.iter().filter(|r| !r.passed).count();
    println!("{} passed, {} failed", rows.len() - failed, failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

fn report(rows: &[Row], bound: Option<usize>) {
    match write_report(rows, bound) {
        Ok(dir) => println!("\nreport: {}/report.json (traces in {}/traces/)", dir.display(), dir.display()),
        Err(e) => eprintln!("models: cannot write the report: {e}"),
    }
}
