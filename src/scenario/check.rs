//! Rows, verdicts and the checkers that explore a row: loom (`--cfg loom`: every interleaving up
//! to a preemption bound), shuttle (`--features shuttle`: PCT and random schedules from fixed
//! seeds), or one run on real threads (a smoke run, neither).
//!
//! A search that was cut short (a time or execution limit, loom's branch limit) is reported as
//! [`Completeness::Incomplete`] and never as a verdict of `holds`.

use crate::design::{Design, Knobs};
use crate::kvm::Kvm;
use crate::trace::{Event, Recorder};
use std::sync::Arc;
use std::time::Duration;

/// What a row should conclude.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Every invariant holds in every explored execution.
    Holds,
    /// Some execution violates one of these invariants (`a|b` in a file: where one scenario shows
    /// two defects of a design, the checker may meet either first).
    Violates(Vec<String>),
}

impl Expected {
    /// As a row writes it: `holds`, or the ids joined by `|`.
    pub fn text(&self) -> String {
        match self {
            Expected::Holds => "holds".into(),
            Expected::Violates(ids) => ids.join("|"),
        }
    }

    /// Whether a verdict (`holds`, or the comma-separated ids of the first failing execution)
    /// is what this expects.
    pub fn matches(&self, verdict: &str) -> bool {
        match self {
            Expected::Holds => verdict == "holds",
            Expected::Violates(ids) => ids.iter().any(|id| verdict.split(',').any(|v| v == id)),
        }
    }
}

/// A failing execution: the violated invariants, what was seen first, and the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The ids of the invariants the execution violated, comma-separated in order of first
    /// violation (`liveness` for a deadlock, `panic` for a crash of the model itself,
    /// `assertion` for an outcome the scenario rules out, `setup` for a setup that failed).
    pub invariant: String,
    /// What was seen.
    pub text: String,
    /// The events of the execution (its trace: [`Failure::trace`]).
    pub events: Vec<Event>,
    /// The `seq` of the event that shows the violation the verdict names first (a `VIOLATION`
    /// event), when there is one; a deadlock or an end-of-run check has none.
    pub violating_event: Option<usize>,
    /// Deadlock: what each blocked thread waited for, by thread name.
    pub blocked: Vec<(String, String)>,
}

impl Failure {
    /// A failure with no trace (a crash of the model, a smoke run that never finished).
    pub fn bare(invariant: impl Into<String>, text: impl Into<String>) -> Self {
        Failure {
            invariant: invariant.into(),
            text: text.into(),
            events: Vec::new(),
            violating_event: None,
            blocked: Vec::new(),
        }
    }

    /// A failure with `rec`'s events.
    pub fn traced(invariant: impl Into<String>, text: impl Into<String>, rec: &Recorder) -> Self {
        Failure { events: rec.events(), ..Failure::bare(invariant, text) }
    }

    /// The trace: one numbered line per event, then (deadlock) one line per blocked thread.
    pub fn trace(&self) -> String {
        let mut t: String = self.events.iter().map(|e| format!("{e}\n")).collect();
        for (thread, what) in &self.blocked {
            t.push_str(&format!("deadlock: {thread} waits for {what}\n"));
        }
        t
    }
}

/// How a row is run.
#[derive(Clone)]
pub enum RowRun {
    /// A scenario file under these knobs.
    File {
        /// The scenario.
        scenario: Arc<super::Scenario>,
        /// The knobs of the row.
        knobs: Knobs,
    },
    /// A scenario written in Rust (kept for checks a file cannot state).
    Rust(fn() -> Result<(), Failure>),
}

/// One row of the catalogue: a scenario under one design or variant.
#[derive(Clone)]
pub struct Row {
    /// The scenario's name.
    pub name: String,
    /// What happens in it.
    pub summary: String,
    /// The design or variant label (`proposed`, `defect:...`, `mainline`).
    pub label: String,
    /// The preset the row's knobs start from.
    pub design: Design,
    /// The expected verdict.
    pub expected: Expected,
    /// How to run one execution.
    pub run: RowRun,
}

impl Row {
    /// A row written in Rust.
    pub fn rust(name: &str, summary: &str, label: &str, expected: Expected, run: fn() -> Result<(), Failure>) -> Row {
        Row {
            name: name.into(),
            summary: summary.into(),
            label: label.into(),
            design: Design::Proposed,
            expected,
            run: RowRun::Rust(run),
        }
    }

    /// Runs one execution of the row on the current backend.
    pub fn execute(&self) -> Result<(), Failure> {
        match &self.run {
            RowRun::File { scenario, knobs } => super::run::execute(scenario, *knobs),
            RowRun::Rust(f) => f(),
        }
    }

    /// Whether `filter` selects this row: a part of its name, or its label or design exactly.
    pub fn selected_by(&self, filter: &str) -> bool {
        self.name.contains(filter) || self.label == filter || self.design.name() == filter
    }
}

thread_local! {
    /// The end state the last execution on this OS thread noted ([`note_end_state`]); loom and
    /// shuttle run an execution's threads on the OS thread that checks it.
    static LAST_END_STATE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Called by a scenario execution as it finishes: its end state (see [`Explored::end_states`]).
pub fn note_end_state(state: String) {
    LAST_END_STATE.with(|s| *s.borrow_mut() = Some(state));
}

/// The end state the last execution noted, if any (taken).
fn take_end_state() -> Option<String> {
    LAST_END_STATE.with(|s| s.borrow_mut().take())
}

/// Counts end states: `(state, verdict)` of each execution, distinct ones with their counts.
#[derive(Debug, Default)]
pub struct EndStates(std::collections::BTreeMap<String, usize>);

impl EndStates {
    /// Adds the end state the last execution noted, with its verdict (`holds` or the failure's
    /// invariants).
    pub fn add_last(&mut self, verdict: &str) {
        if let Some(state) = take_end_state() {
            *self.0.entry(format!("{state} => {verdict}")).or_default() += 1;
        }
    }

    /// Adds one end state with its verdict.
    pub fn add(&mut self, state: &str, verdict: &str) {
        *self.0.entry(format!("{state} => {verdict}")).or_default() += 1;
    }

    /// The distinct end states, most frequent first.
    pub fn into_sorted(self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self.0.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

thread_local! {
    /// The recorder of the execution under way and its mark, so that a deadlock (which loom
    /// reports by panicking) can still be judged by the violations recorded before it.
    static WATCHED: std::cell::RefCell<Option<(Recorder, usize)>> = const { std::cell::RefCell::new(None) };
}

/// Makes the checker judge a panic of this execution by `kvm`'s violations after `mark`.
pub fn watch(kvm: &Kvm, mark: usize) {
    WATCHED.with(|w| *w.borrow_mut() = Some((kvm.recorder().clone(), mark)));
}

/// The violations `rec` recorded after `mark`, plus `extra` (an invariant found by another
/// check), as one failure: every invariant id in order, the first text, the trace.
pub fn failure_from(rec: &Recorder, mark: usize, extra: Option<(String, String)>) -> Option<Failure> {
    let violations = rec.violations_since(mark);
    let violating_event = violations.first().map(|v| v.after_event);
    let mut found: Vec<(String, String)> = violations.into_iter().map(|v| (v.invariant.to_string(), v.text)).collect();
    found.extend(extra);
    let text = found.first()?.1.clone();
    let mut ids: Vec<String> = Vec::new();
    for (id, _) in found {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Some(Failure { violating_event, ..Failure::traced(ids.join(","), text, rec) })
}

/// After a panic of the watched execution: every violation it recorded, plus what the panic says.
pub fn watched_failure(extra: Option<(String, String)>) -> Option<Failure> {
    WATCHED.with(|w| {
        let (rec, mark) = w.borrow_mut().take()?;
        failure_from(&rec, mark, extra)
    })
}

/// The verdict of one execution: the violations recorded after `mark`, then the structural
/// checks; `Ok` when everything holds.
pub fn verdict_after(kvm: &Kvm, mark: usize) -> Result<(), Failure> {
    let structural = kvm.check_structure().into_iter().next().map(|(i, t)| (i.id.to_string(), t));
    match failure_from(kvm.recorder(), mark, structural) {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

/// [`verdict_after`] counting every violation.
pub fn verdict(kvm: &Kvm) -> Result<(), Failure> {
    verdict_after(kvm, 0)
}

/// The first of `wrong` (an end-of-run check's findings) as a failure with the violations after
/// `mark`.
pub fn fail_with(kvm: &Kvm, mark: usize, wrong: Vec<(&crate::invariants::Invariant, String)>) -> Result<(), Failure> {
    match wrong.into_iter().next() {
        Some((inv, text)) => Err(failure_from(kvm.recorder(), mark, Some((inv.id.to_string(), text)))
            .unwrap_or_else(|| Failure::bare(inv.id, String::new()))),
        None => Ok(()),
    }
}

/// A scenario's own assertion (an outcome no design may produce), as a failure with the trace.
pub fn assertion(kvm: &Kvm, ok: bool, text: impl Into<String>) -> Result<(), Failure> {
    if ok {
        return Ok(());
    }
    Err(Failure::traced("assertion", text, kvm.recorder()))
}

/// Whether a search covered everything it set out to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completeness {
    /// loom explored every interleaving up to the bound (or found a failure, which is complete
    /// for what it claims).
    Complete,
    /// shuttle ran its schedules: a sample, never a proof.
    Sampled,
    /// One execution on real threads.
    Smoke,
    /// The search stopped early, for the reason given: no verdict of `holds` can be drawn.
    Incomplete(String),
}

/// What exploring a row found.
#[derive(Clone, Debug)]
pub struct Explored {
    /// The first failing execution, if any.
    pub failure: Option<Failure>,
    /// Executions run.
    pub executions: usize,
    /// Whether the search was complete.
    pub completeness: Completeness,
    /// The distinct end states of the executions run (what every vCPU's KVM_RUN calls returned,
    /// and the execution's verdict), each with how many executions ended in it, most frequent
    /// first. Empty for rows written in Rust.
    pub end_states: Vec<(String, usize)>,
}

impl Explored {
    /// The verdict: the failure's invariants, `holds`, or `incomplete` for a cut-short search
    /// that found nothing.
    pub fn verdict(&self) -> String {
        match (&self.failure, &self.completeness) {
            (Some(f), _) => f.invariant.clone(),
            (None, Completeness::Incomplete(_)) => "incomplete".into(),
            (None, _) => "holds".into(),
        }
    }
}

/// Limits of a search, from the command line and loom's environment variables.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Preemption bound (`None`: exhaustive).
    pub bound: Option<usize>,
    /// Stop after this long (`LOOM_MAX_DURATION`, whole seconds): the search is then incomplete.
    pub max_duration: Option<Duration>,
    /// Stop after this many executions (`LOOM_MAX_PERMUTATIONS`): the search is then incomplete.
    pub max_executions: Option<usize>,
    /// loom's branch limit per execution (`LOOM_MAX_BRANCHES`, default 100,000).
    pub max_branches: Option<usize>,
    /// shuttle: schedules per scheduler.
    pub iterations: usize,
}

impl Limits {
    /// The limits loom's environment variables ask for (`LOOM_MAX_PREEMPTIONS`,
    /// `LOOM_MAX_DURATION`, `LOOM_MAX_PERMUTATIONS`, `LOOM_MAX_BRANCHES`), bound 2 by default.
    pub fn from_env() -> Result<Limits, String> {
        fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
            match std::env::var(name) {
                Ok(v) => v.parse().map(Some).map_err(|_| format!("{name}={v} is not a number")),
                Err(_) => Ok(None),
            }
        }
        let bound = match std::env::var("LOOM_MAX_PREEMPTIONS").as_deref() {
            Ok("none") => None,
            Ok(_) => var("LOOM_MAX_PREEMPTIONS")?,
            Err(_) => Some(2),
        };
        Ok(Limits {
            bound,
            // Whole seconds, as loom's own Builder reads it.
            max_duration: var::<u64>("LOOM_MAX_DURATION")?.map(Duration::from_secs),
            max_executions: var("LOOM_MAX_PERMUTATIONS")?,
            max_branches: var("LOOM_MAX_BRANCHES")?,
            iterations: var("SHUTTLE_ITERATIONS")?.unwrap_or(1000),
        })
    }
}

/// One execution of `row` on real threads, outside any checker.
pub fn run_once(row: &Row) -> Result<(), Failure> {
    row.execute()
}

/// What loom and shuttle share: running a checker over a row, stopping at the first failing
/// execution or at a limit, and turning what stopped it (a failed check, a deadlock, a panic, a
/// limit) into a result.
#[cfg(any(loom, feature = "shuttle"))]
mod capture {
    use super::{Failure, Limits, Row};
    use std::cell::{Cell, RefCell};
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::time::Instant;

    /// What one check on this OS thread has seen so far. loom and shuttle run every thread of an
    /// execution on the OS thread that runs the check, so per-OS-thread state lets several rows be
    /// checked at once on different OS threads (the test harness's `--test-threads`).
    #[derive(Default)]
    struct Seen {
        executions: usize,
        failure: Option<Failure>,
        panic: Option<String>,
        cut: Option<String>,
        /// What every blocked thread waited for when loom reported a deadlock.
        deadlock: Option<Vec<(String, String)>>,
        end_states: super::EndStates,
    }

    thread_local! {
        static SEEN: RefCell<Seen> = RefCell::new(Seen::default());
        /// Whether this OS thread is running a check (its panics are the checker's to judge).
        static CHECKING: Cell<bool> = const { Cell::new(false) };
    }

    const STOP: &str = "ioregionfd-model: invariant violated, stop exploring";
    const LIMIT: &str = "ioregionfd-model: search limit reached, stop exploring";

    /// Installs, once per process, a panic hook that records the panics of OS threads running a
    /// check and passes every other panic to the hook that was there before.
    fn install_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !CHECKING.with(Cell::get) {
                    return previous(info);
                }
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                // A thread loom drops after a deadlock unwinds through its coroutine with an empty
                // panic from the `generator` crate; that says nothing, and may come before loom's
                // own "deadlock" panic, so it is not recorded.
                let unwinding_coroutine =
                    msg.is_empty() && info.location().is_some_and(|l| l.file().contains("generator"));
                SEEN.with(|s| {
                    let mut s = s.borrow_mut();
                    if msg.contains("deadlock") && s.deadlock.is_none() {
                        s.deadlock = Some(crate::trace::blocked_threads());
                    }
                    if msg != STOP && msg != LIMIT && !unwinding_coroutine && s.panic.is_none() {
                        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                        s.panic = Some(format!("{msg}{at}"));
                    }
                });
            }));
        });
    }

    /// One execution of `row` as the checker runs it: counted, limits enforced before it starts
    /// (so a stop means an execution was left unexplored), and a failure stops the checker.
    pub fn body(row: &Row, limits: &Limits, start: Instant, record: Record) -> impl Fn() + Send + Sync + 'static {
        let row = row.clone();
        let (max_executions, max_duration) = (limits.max_executions, limits.max_duration);
        move || {
            let n = SEEN.with(|s| {
                let mut s = s.borrow_mut();
                s.executions += 1;
                s.executions - 1
            });
            crate::trace::record_events(match record {
                Record::Every => true,
                Record::None => false,
                Record::Only(k) => n == k,
            });
            if let Record::Only(k) = record
                && n > k
            {
                SEEN.with(|s| {
                    let mut s = s.borrow_mut();
                    s.executions -= 1;
                    s.cut.get_or_insert(format!("execution {} did not fail again", k + 1));
                });
                std::panic::panic_any(LIMIT);
            }
            let cut = match (max_executions, max_duration) {
                (Some(m), _) if n >= m => Some(format!("stopped after {m} executions (LOOM_MAX_PERMUTATIONS)")),
                (_, Some(d)) if start.elapsed() >= d => {
                    Some(format!("stopped after {:.1} s (LOOM_MAX_DURATION)", d.as_secs_f64()))
                }
                _ => None,
            };
            if let Some(why) = cut {
                SEEN.with(|s| {
                    let mut s = s.borrow_mut();
                    s.executions -= 1;
                    s.cut.get_or_insert(why);
                });
                std::panic::panic_any(LIMIT);
            }
            let _ = super::watched_failure(None);
            crate::trace::clear_blocked();
            let result = row.execute();
            let verdict = result.as_ref().err().map_or("holds", |f| f.invariant.as_str());
            SEEN.with(|s| s.borrow_mut().end_states.add_last(verdict));
            if let Err(f) = result {
                SEEN.with(|s| {
                    s.borrow_mut().failure.get_or_insert(f);
                });
                std::panic::panic_any(STOP);
            }
        }
    }

    /// Which executions of a search record their events (`trace::record_events`).
    #[derive(Clone, Copy, Debug)]
    // Only loom's explorer runs a search twice; shuttle's records every execution.
    #[cfg_attr(not(loom), allow(dead_code))]
    pub enum Record {
        /// All of them.
        Every,
        /// None (a first pass: only the failing execution's trace is wanted, and which one
        /// fails is not known yet).
        None,
        /// Only the execution with this index (from 0); the search stops after it.
        Only(usize),
    }

    /// A deadlock as a `liveness` failure: the violations recorded before it, then one line per
    /// blocked thread saying what it waits for (and, for a context, who holds it).
    fn deadlock_failure(blocked: &[(String, String)]) -> Failure {
        let who: Vec<String> = blocked.iter().map(|(t, what)| format!("{t} waits for {what}")).collect();
        let text = if who.is_empty() {
            "deadlock: no thread can go on".to_string()
        } else {
            format!("deadlock: no thread can go on: {}", who.join("; "))
        };
        let mut f = super::watched_failure(Some(("liveness".to_string(), text.clone())))
            .unwrap_or_else(|| Failure::bare("liveness", text));
        f.blocked = blocked.to_vec();
        f
    }

    /// What a check found: the first failure, the executions run, why the search was cut
    /// short (if it was), and the distinct end states.
    pub struct Checked {
        pub failure: Option<Failure>,
        pub executions: usize,
        pub cut: Option<String>,
        /// The end states of the executions that did not deadlock.
        pub end_states: super::EndStates,
    }

    /// Runs `check` (which runs the checker over [`body`]) on this OS thread and reports what it
    /// found.
    pub fn run_checked(check: impl FnOnce()) -> Checked {
        install_hook();
        SEEN.with(|s| *s.borrow_mut() = Seen::default());
        CHECKING.with(|c| c.set(true));
        let result = catch_unwind(AssertUnwindSafe(check));
        CHECKING.with(|c| c.set(false));
        crate::trace::record_events(true);
        let seen = SEEN.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let mut cut = seen.cut;
        let failure = match result {
            Ok(()) => None,
            Err(_) if cut.is_some() => None,
            Err(_) => seen.failure.or_else(|| {
                let msg = seen.panic.unwrap_or_else(|| "unknown panic".into());
                if msg.contains("maximum number of branches") {
                    cut = Some(format!("an execution exceeded loom's branch limit (LOOM_MAX_BRANCHES): {msg}"));
                    return None;
                }
                if let Some(blocked) = &seen.deadlock {
                    return Some(deadlock_failure(blocked));
                }
                super::watched_failure(Some(("panic".to_string(), msg.clone())))
                    .or_else(|| Some(Failure::bare("panic", msg)))
            }),
        };
        Checked { failure, executions: seen.executions, cut, end_states: seen.end_states }
    }

    impl Checked {
        /// What the search explored, its distinct end states counting a deadlock of the failing
        /// execution (known once the failure is final: a first pass records no blocked threads).
        pub fn into_explored(self, completeness: super::Completeness) -> super::Explored {
            let mut end_states = self.end_states;
            if let Some(f) = self.failure.as_ref().filter(|f| f.invariant == "liveness" && !f.blocked.is_empty()) {
                end_states.add("(no end: every thread is blocked)", &f.invariant);
            }
            super::Explored {
                failure: self.failure,
                executions: self.executions,
                completeness,
                end_states: end_states.into_sorted(),
            }
        }
    }
}

/// A file name any file system and artifact uploader takes: letters, digits, `.`, `-`, `_`, and
/// `_` for anything else (a row's trace, picture and checkpoint files).
pub fn safe_file_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect()
}

/// Explores every interleaving of `row` up to the preemption bound (loom), stopping at the first
/// failing execution or at a limit.
#[cfg(loom)]
pub fn explore(row: &Row, limits: &Limits) -> Explored {
    let new_builder = || {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = limits.bound;
        b.max_branches = limits.max_branches.unwrap_or(100_000);
        // The limits are enforced by the body, which knows when a search was cut short; loom's
        // own stop would look like a complete search.
        b.max_duration = None;
        b.max_permutations = None;
        b
    };
    let mut builder = new_builder();
    // LOOM_CHECKPOINT_FILE=PATH: each row its own file, PATH.SCENARIO.DESIGN.json.
    builder.checkpoint_file = std::env::var_os("LOOM_CHECKPOINT_FILE").map(|p| {
        let row_part = safe_file_name(&format!("{}.{}", row.name, row.label));
        std::path::PathBuf::from(format!("{}.{row_part}.json", p.to_string_lossy()))
    });
    let resumed = builder.checkpoint_file.as_ref().filter(|p| p.exists()).map(|p| p.display().to_string());
    let start = std::time::Instant::now();
    // Two passes: the search with no events recorded, and, if an execution failed, the same
    // search again (loom's order is deterministic) recording only that execution, whose trace is
    // the counterexample. With a checkpoint file the executions of an earlier run are not
    // counted, so there the events of every execution are recorded, in one pass.
    let two_pass = builder.checkpoint_file.is_none();
    let first = if two_pass { capture::Record::None } else { capture::Record::Every };
    let mut checked = capture::run_checked(|| builder.check(capture::body(row, limits, start, first)));
    if two_pass && let Some(failed) = checked.failure.as_ref() {
        let failing = checked.executions - 1;
        let again = new_builder();
        let unlimited = Limits { max_duration: None, max_executions: None, ..limits.clone() };
        let replay =
            capture::run_checked(|| again.check(capture::body(row, &unlimited, start, capture::Record::Only(failing))));
        checked.failure = Some(match replay.failure {
            Some(f) if f.invariant == failed.invariant && replay.executions == checked.executions => f,
            _ => {
                let mut f = failed.clone();
                f.text.push_str(&format!(
                    " (no trace: a second search, meant to record execution {} again, did not fail the same way there)",
                    failing + 1
                ));
                f
            }
        });
    }
    let completeness = match (checked.cut.take(), resumed) {
        (Some(why), _) => Completeness::Incomplete(why),
        (None, Some(file)) if checked.failure.is_none() => Completeness::Incomplete(format!(
            "resumed from the checkpoint {file}: the executions before it were explored by an earlier run"
        )),
        (None, _) => Completeness::Complete,
    };
    checked.into_explored(completeness)
}

/// The shuttle explorer: PCT schedules (depth = the preemption bound + 1), then random ones, each
/// from a fixed seed, `limits.iterations` of each. A failing schedule is printed by shuttle as a
/// string `shuttle::replay` accepts.
#[cfg(all(feature = "shuttle", not(loom)))]
pub fn explore(row: &Row, limits: &Limits) -> Explored {
    use shuttle::scheduler::{PctScheduler, RandomScheduler};
    use shuttle::{Config, Runner};
    const SEED: u64 = 0x10_5e61_0f0d;
    let depth = limits.bound.unwrap_or(2) + 1;
    let config = || {
        let mut c = Config::default();
        // Shuttle treats every atomic as SeqCst; weak-memory effects are loom's job.
        c.silence_warnings = true;
        c
    };
    let start = std::time::Instant::now();
    let mut checked = capture::run_checked(|| {
        Runner::new(PctScheduler::new_from_seed(SEED, depth, limits.iterations), config()).run(capture::body(
            row,
            limits,
            start,
            capture::Record::Every,
        ));
        Runner::new(RandomScheduler::new_from_seed(SEED, limits.iterations), config()).run(capture::body(
            row,
            limits,
            start,
            capture::Record::Every,
        ));
    });
    let completeness = match checked.cut.take() {
        Some(why) => Completeness::Incomplete(why),
        None => Completeness::Sampled,
    };
    checked.into_explored(completeness)
}

/// Without a checker: one execution on real threads, reported as `liveness` when it does not
/// finish within 20 s (its threads are left behind; the process ends with the run).
#[cfg(not(any(loom, feature = "shuttle")))]
pub fn explore(row: &Row, _limits: &Limits) -> Explored {
    const LIMIT: Duration = Duration::from_secs(20);
    let (tx, rx) = std::sync::mpsc::channel();
    let row = row.clone();
    std::thread::spawn(move || {
        let failure = row.execute().err();
        let mut ends = EndStates::default();
        ends.add_last(failure.as_ref().map_or("holds", |f| f.invariant.as_str()));
        let _ = tx.send((failure, ends.into_sorted()));
    });
    let (failure, end_states) = match rx.recv_timeout(LIMIT) {
        Ok(got) => got,
        Err(_) => {
            let text = format!("the scenario did not finish within {} s on real threads (stuck)", LIMIT.as_secs());
            (Some(Failure::bare("liveness", text)), Vec::new())
        }
    };
    Explored { failure, executions: 1, completeness: Completeness::Smoke, end_states }
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;

    fn explored(failure: Option<&str>, completeness: Completeness) -> Explored {
        let failure = failure.map(|i| Failure::bare(i, "seen"));
        Explored { failure, executions: 7, completeness, end_states: Vec::new() }
    }

    #[test]
    fn a_cut_short_search_never_holds() {
        let cut = explored(None, Completeness::Incomplete("stopped after 1 s".into()));
        assert_eq!(cut.verdict(), "incomplete");
        assert!(!Expected::Holds.matches(&cut.verdict()));
        assert!(!Expected::Violates(vec!["liveness".into()]).matches(&cut.verdict()));
        // A failure found before the cut is what it is.
        let found = explored(Some("exclusive,liveness"), Completeness::Incomplete("cut".into()));
        assert_eq!(found.verdict(), "exclusive,liveness");
        assert_eq!(explored(None, Completeness::Complete).verdict(), "holds");
    }

    #[test]
    fn expected_verdicts_match_any_named_invariant() {
        let e = Expected::Violates(vec!["exactly-once".into(), "liveness".into()]);
        assert!(e.matches("lifetime,liveness"));
        assert!(!e.matches("lifetime"));
        assert!(!e.matches("holds"));
        assert_eq!(e.text(), "exactly-once|liveness");
        assert!(Expected::Holds.matches("holds") && !Expected::Holds.matches("panic"));
    }
}
