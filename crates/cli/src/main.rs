// SPDX-License-Identifier: MIT OR Apache-2.0
//! The `ioregionfd-model` command line: a thin layer over the library. `ioregionfd-model --help`
//! and `ioregionfd-model SUBCOMMAND --help` describe it (the README shows both).

mod cli;

use clap::Parser;
use cli::{BenchArgs, BenchTable, Cli, Command, ConformArgs, Format, ListArgs, ScriptArgs};
use ioregionfd_model::design::{Design, KNOBS};
use ioregionfd_model::invariants::CATALOGUE;
use ioregionfd_model::script::{Runner, ScriptOptions, run_script_with_options};
use serde_json::json;
use std::io::{BufReader, Write};
use std::process::ExitCode;

/// `println!` that ignores a closed standard output (`| head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

// The measurement code is shared with the criterion benches (`cargo bench`).
#[cfg(target_os = "linux")]
use ioregionfd_model_cli::bench as support;

/// Prints a JSON document on standard output.
fn print_json(value: &serde_json::Value) {
    let text = serde_json::to_string_pretty(value).expect("a JSON value always serializes");
    say!("{text}");
}

fn script(args: &ScriptArgs) -> Result<ExitCode, String> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut err = std::io::stderr();
    let runner = Runner::with_overrides(args.design, &args.knobs)?;
    let opts = ScriptOptions { echo: args.echo, trace: args.trace };
    let code = match args.file.as_deref() {
        Some(path) if path.as_os_str() != "-" => {
            let f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            run_script_with_options(BufReader::new(f), &mut out, &mut err, runner, opts)
        }
        _ => run_script_with_options(std::io::stdin().lock(), &mut out, &mut err, runner, opts),
    };
    Ok(ExitCode::from(code as u8))
}

fn invariants(args: &ListArgs) -> Result<ExitCode, String> {
    match args.format {
        Format::Text => {
            let mut out = std::io::stdout().lock();
            for inv in CATALOGUE {
                let _ = writeln!(out, "{:<10} {}", inv.id, inv.statement);
            }
        }
        Format::Json => {
            print_json(&CATALOGUE.iter().map(|inv| json!({"id": inv.id, "statement": inv.statement})).collect());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn knobs(args: &ListArgs) -> Result<ExitCode, String> {
    match args.format {
        Format::Text => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{:<28} {:<24} {:<24} {:<24} values", "knob", "seed", "rfc-v3", "proposed");
            for k in KNOBS {
                let [seed, v3, proposed] = Design::ALL.map(|d| (k.get)(&d.knobs()));
                let _ = writeln!(out, "{:<28} {seed:<24} {v3:<24} {proposed:<24} {}", k.name, (k.values)().join(", "));
                let _ = writeln!(out, "    {}", k.doc);
            }
        }
        Format::Json => {
            let knobs = KNOBS.iter().map(|k| {
                let presets: serde_json::Map<String, serde_json::Value> =
                    Design::ALL.iter().map(|d| (d.name().to_string(), json!((k.get)(&d.knobs())))).collect();
                json!({"name": k.name, "doc": k.doc, "values": (k.values)(), "presets": presets})
            });
            print_json(&knobs.collect());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(target_os = "linux")]
fn conform(args: &ConformArgs) -> Result<ExitCode, String> {
    use ioregionfd_model::device::TransportKind;
    use ioregionfd_model::device::conform::{Launch, Options, Summary, run};
    use std::time::Duration;

    let transports: Vec<TransportKind> = args
        .transport
        .0
        .iter()
        .map(|n| TransportKind::from_name(n).ok_or_else(|| format!("unknown transport `{n}`")))
        .collect::<Result<_, _>>()?;
    let launch = Launch::Command(args.command.clone());
    let mut total = Summary::default();
    let mut runs = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for &format in &args.wire.0 {
        for &transport in &transports {
            let mut options = Options::new(format, transport);
            options.timeout = Duration::from_millis(args.timeout_ms);
            options.quiet = Duration::from_millis(args.quiet_ms);
            options.memory = !args.protocol_only;
            options.only = args.only.clone();
            // Text: the lines as the checks run. JSON: the lines of the run, made into records.
            let mut lines = Vec::new();
            let result = match args.format {
                Format::Text => {
                    let _ = writeln!(
                        out,
                        "== format {format}, transport {transport} ({}), device: {launch}",
                        transport.describe()
                    );
                    run(&options, &launch, &mut out)
                }
                Format::Json => run(&options, &launch, &mut lines),
            };
            let s = match result {
                Ok(s) => s,
                Err(e) => {
                    let _ = out.flush();
                    eprintln!("ioregionfd-model conform: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            match args.format {
                Format::Text => {
                    let _ = writeln!(out, "-- format {format}, transport {transport}: {s}");
                }
                Format::Json => runs.push(json!({
                    "wire": format.name(),
                    "transport": transport.name(),
                    "checks": check_records(&String::from_utf8_lossy(&lines)),
                    "passed": s.passed,
                    "failed": s.failed,
                })),
            }
            total.passed += s.passed;
            total.failed += s.failed;
        }
    }
    match args.format {
        Format::Text => {
            let _ = writeln!(out, "conform: {total}");
        }
        Format::Json => {
            drop(out);
            print_json(&json!({
                "device": launch.to_string(),
                "runs": runs,
                "passed": total.passed,
                "failed": total.failed,
                "ok": total.ok(),
            }));
        }
    }
    Ok(if total.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The check lines `conform::run` writes (`ok   NAME: DETAIL`, `FAIL NAME: MESSAGE`) as
/// `{"name", "ok", "detail"}` records.
#[cfg(target_os = "linux")]
fn check_records(lines: &str) -> Vec<serde_json::Value> {
    lines
        .lines()
        .filter_map(|line| {
            let (ok, rest) = match line.strip_prefix("ok   ") {
                Some(rest) => (true, rest),
                None => (false, line.strip_prefix("FAIL ")?),
            };
            let (name, detail) = rest.split_once(": ").unwrap_or((rest, ""));
            Some(json!({"name": name, "ok": ok, "detail": detail}))
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn conform(_args: &ConformArgs) -> Result<ExitCode, String> {
    Err("conform needs Linux (socketpair, pipe2, mkfifo)".into())
}

/// How `bench` prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BenchStyle {
    Text,
    Markdown,
    Json,
}

impl From<Format> for BenchStyle {
    fn from(f: Format) -> BenchStyle {
        match f {
            Format::Text => BenchStyle::Text,
            Format::Json => BenchStyle::Json,
        }
    }
}

/// Where `bench`'s results go: printed as they are made (text, markdown), or gathered into one
/// JSON document printed at the end.
#[cfg(target_os = "linux")]
struct BenchOut {
    style: BenchStyle,
    doc: serde_json::Map<String, serde_json::Value>,
    tables: Vec<serde_json::Value>,
    skipped: Vec<String>,
}

#[cfg(target_os = "linux")]
impl BenchOut {
    fn new(style: BenchStyle) -> BenchOut {
        BenchOut { style, doc: serde_json::Map::new(), tables: Vec::new(), skipped: Vec::new() }
    }

    fn machine(&mut self, cpus: &[usize]) {
        match self.style {
            BenchStyle::Json => {
                self.doc.insert("machine".into(), json!(machine_line(cpus)));
                self.doc.insert("cpus".into(), json!(cpus));
            }
            _ => say!("machine: {}\n", machine_line(cpus)),
        }
    }

    fn table(&mut self, t: &support::report::Table) {
        match self.style {
            BenchStyle::Text => say!("{}", t.text()),
            BenchStyle::Markdown => say!("{}", t.markdown()),
            BenchStyle::Json => self.tables.push(json!({
                "title": t.title,
                "headers": t.headers,
                "rows": t.rows,
                "notes": t.notes,
            })),
        }
    }

    fn skip(&mut self, reason: String) {
        match self.style {
            BenchStyle::Json => self.skipped.push(reason),
            _ => say!("skip: {reason}\n"),
        }
    }

    fn chart(&mut self, path: &std::path::Path) {
        match self.style {
            BenchStyle::Json => {
                self.doc.insert("chart".into(), json!(path.display().to_string()));
            }
            _ => say!("chart written to {}", path.display()),
        }
    }

    /// Ends the output: the time taken, and for JSON the whole document with every measurement.
    fn finish(mut self, bars: &[support::report::Bar], seconds: f64) {
        if self.style != BenchStyle::Json {
            say!("bench finished in {seconds:.1} s");
            return;
        }
        let measurements: Vec<_> = bars
            .iter()
            .map(|b| {
                json!({
                    "group": b.group,
                    "label": b.label,
                    "median_ns": b.stats.median,
                    "p25_ns": b.stats.p25,
                    "p75_ns": b.stats.p75,
                    "min_ns": b.stats.min,
                    "max_ns": b.stats.max,
                    "samples": b.stats.samples,
                })
            })
            .collect();
        self.doc.insert("tables".into(), json!(self.tables));
        self.doc.insert("measurements".into(), json!(measurements));
        self.doc.insert("skipped".into(), json!(self.skipped));
        self.doc.insert("seconds".into(), json!(seconds));
        print_json(&serde_json::Value::Object(self.doc));
    }
}

#[cfg(target_os = "linux")]
fn bench(args: &BenchArgs) -> Result<ExitCode, String> {
    use std::time::{Duration, Instant};
    use support::bus::{CrateBus, CrateVm, LinearScan, SIZES, SortedArray, layout};
    use support::kvm::{NO_KVM, Path};
    use support::report::{Bar, Stats, Table, spread, stats, svg, time};
    use support::rt::{Kind, measure};
    use support::{Pinning, allowed_cpus, pin_current_thread};

    let quick = args.quick;
    let mut out = BenchOut::new(if args.markdown { BenchStyle::Markdown } else { BenchStyle::from(args.format) });
    let wants = |what: BenchTable| args.only.is_empty() || args.only.contains(&what);
    let started = Instant::now();
    let cpus = allowed_cpus();
    out.machine(&cpus);
    let rounds = if quick { 7 } else { 15 };
    let mut bars: Vec<Bar> = Vec::new();
    let mut floors: Vec<(Pinning, Kind, Stats)> = Vec::new();

    if wants(BenchTable::Transports) {
        for pinning in Pinning::ALL {
            if pinning == Pinning::TwoCpus && cpus.len() < 2 {
                out.skip(format!("round trips across two CPUs: only {} CPU allowed", cpus.len()));
                continue;
            }
            let per_round = match (pinning, quick) {
                (Pinning::OneCpu, false) => 2000,
                (Pinning::OneCpu, true) => 500,
                (Pinning::TwoCpus, false) => 300,
                (Pinning::TwoCpus, true) => 100,
            };
            let results: Vec<(Kind, Stats)> = measure(&Kind::ALL, pinning, &cpus, per_round / 4, rounds, per_round)
                .map_err(|e| format!("round trips ({}): {e}", pinning.name()))?
                .into_iter()
                .map(|(k, samples)| (k, stats(&samples)))
                .collect();
            let floor = results.iter().find(|(k, _)| *k == Kind::Futex).map(|(_, s)| s.median).unwrap_or(f64::NAN);
            let (cpu_v, cpu_d) = pinning.cpus();
            let mut t = Table::new(
                format!(
                    "Round trip, 32-byte command + 32-byte response, {} (vCPU thread on CPU {}, device thread on CPU {})",
                    pinning.name(),
                    cpus[cpu_v % cpus.len()],
                    cpus[cpu_d % cpus.len()]
                ),
                &["transport", "median", "p25–p75 (min–max)", "× floor"],
            );
            for (kind, s) in &results {
                t.row(vec![kind.name().into(), time(s.median), spread(s), format!("{:.2}", s.median / floor)]);
                bars.push(Bar {
                    group: format!("round trip, {}", pinning.name()),
                    label: kind.name().into(),
                    stats: *s,
                });
                floors.push((pinning, *kind, *s));
            }
            t.notes
                .push(format!("{rounds} batches of {per_round} round trips; floor = futex ping-pong of the same run"));
            out.table(&t);
        }
    }

    if wants(BenchTable::Kvm) {
        let per_round = |p: Path| -> u32 {
            match p {
                Path::Ioeventfd => 20_000,
                Path::Inline(_) => 1000,
                Path::Forwarded(_, Pinning::OneCpu) => 500,
                Path::Forwarded(_, Pinning::TwoCpus) => 150,
            }
        };
        let divisor = if quick { 4 } else { 1 };
        let kvm_rounds = if quick { 5 } else { 9 };
        let cpus2 = cpus.clone();
        let measured = std::thread::scope(|s| {
            s.spawn(|| {
                let _ = pin_current_thread(&cpus2, Some(0));
                let n = |p: Path| (per_round(p) / divisor).max(10);
                support::kvm::measure(&Path::all(), &cpus2, kvm_rounds, n)
                    .map(|v| v.into_iter().map(|(p, samples)| (p, stats(&samples))).collect::<Vec<_>>())
            })
            .join()
            .unwrap_or_else(|_| Err("the vCPU thread panicked".into()))
        });
        match measured {
            Err(e) if e.starts_with(NO_KVM) => {
                out.skip(format!("/dev/kvm not available: {}", &e[NO_KVM.len()..]));
            }
            Err(e) => return Err(format!("KVM benchmark: {e}")),
            Ok(results) => {
                let inline = results
                    .iter()
                    .find(|(p, _)| *p == Path::Inline(support::kvm::Access::Read))
                    .map(|(_, s)| s.median)
                    .unwrap_or(f64::NAN);
                let mut t = Table::new(
                    "Guest MMIO access paths on /dev/kvm (real-mode guest loop; vCPU thread on the first CPU)",
                    &["path", "median per access", "p25–p75 (min–max)", "× exit answered inline"],
                );
                for (path, s) in &results {
                    t.row(vec![path.name(), time(s.median), spread(s), format!("{:.2}", s.median / inline)]);
                    let group = match path {
                        Path::Forwarded(_, p) => format!("KVM exit forwarded to a device thread, {}", p.name()),
                        _ => "KVM paths".to_string(),
                    };
                    let label = match path {
                        Path::Forwarded(k, _) => k.name().to_string(),
                        other => other.name(),
                    };
                    bars.push(Bar { group, label, stats: *s });
                }
                t.notes.push(format!(
                    "{kvm_rounds} batches per path; every forwarded access is one exit and one round trip"
                ));
                out.table(&t);
                if let Some((_, ioevent)) = results.iter().find(|(p, _)| *p == Path::Ioeventfd) {
                    let mut e = Table::new(
                        "ioregionfd estimate: the in-kernel dispatch (the ioeventfd row: emulation + bus, no exit) plus one round trip",
                        &["transport", "one CPU", "two CPUs", "vs exit forwarded (one CPU)"],
                    );
                    for kind in Kind::ALL {
                        let rt = |p: Pinning| {
                            floors.iter().find(|(pp, k, _)| *pp == p && *k == kind).map(|(_, _, s)| s.median)
                        };
                        let fwd = results
                            .iter()
                            .find(|(p, _)| *p == Path::Forwarded(kind, Pinning::OneCpu))
                            .map(|(_, s)| s.median);
                        let est = |p| rt(p).map(|r| ioevent.median + r);
                        e.row(vec![
                            kind.name().into(),
                            est(Pinning::OneCpu).map_or("-".into(), time),
                            est(Pinning::TwoCpus).map_or("-".into(), time),
                            match (est(Pinning::OneCpu), fwd) {
                                (Some(a), Some(b)) => format!("{:.2}", a / b),
                                _ => "-".into(),
                            },
                        ]);
                    }
                    e.notes.push("an estimate, not a measurement: ioregionfd was never merged (needs the transports table in the same run)".into());
                    out.table(&e);
                }
            }
        }
    }

    if wants(BenchTable::Bus) {
        let mut t = Table::new(
            "Bus lookup, per access (4,096 pseudo-random 4-byte accesses, all inside a device)",
            &[
                "devices",
                "crate: BusArray::get_first_dev",
                "bare binary search",
                "Firecracker-style scan",
                "crate: Vm::access",
                "crate vs scan",
                "crate / binary search",
            ],
        );
        let time_batches = |f: &mut dyn FnMut() -> usize| -> Stats {
            let t0 = Instant::now();
            std::hint::black_box(f());
            let one = t0.elapsed().max(Duration::from_nanos(1));
            let passes = (Duration::from_millis(if quick { 1 } else { 3 }).as_nanos() / one.as_nanos()).clamp(1, 10_000)
                as usize;
            let samples: Vec<f64> = (0..rounds)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..passes {
                        std::hint::black_box(f());
                    }
                    t.elapsed().as_nanos() as f64 / (passes * 4096) as f64
                })
                .collect();
            stats(&samples)
        };
        for n in SIZES {
            let l = layout(n);
            let (crate_bus, sorted, scan, vm) =
                (CrateBus::new(&l), SortedArray::new(&l), LinearScan::new(&l), CrateVm::new(&l));
            if crate_bus.lookup_all(&l.accesses) != sorted.lookup_all(&l.accesses) {
                return Err("the crate's bus and the sorted array disagree on the lookups".into());
            }
            let c = time_batches(&mut || crate_bus.lookup_all(&l.accesses));
            let b = time_batches(&mut || sorted.lookup_all(&l.accesses));
            let f = time_batches(&mut || scan.lookup_all(&l.accesses));
            let v = time_batches(&mut || vm.access_all(&l.accesses));
            t.row(vec![
                n.to_string(),
                time(c.median),
                time(b.median),
                time(f.median),
                time(v.median),
                format!("{:.1}× faster", f.median / c.median),
                format!("{:.2}", c.median / b.median),
            ]);
            for (label, s) in [
                ("crate get_first_dev", c),
                ("bare binary search", b),
                ("Firecracker-style scan", f),
                ("crate Vm::access", v),
            ] {
                bars.push(Bar { group: format!("bus lookup, {n} devices"), label: label.into(), stats: s });
            }
        }
        t.notes.push("rust-vmm vm-device is compared in `cargo bench --bench bus_lookup` (a dev-dependency)".into());
        out.table(&t);
    }

    if let Some(path) = &args.svg {
        let subtitle =
            format!("ioregionfd-model bench{}: {}", if quick { " --quick" } else { "" }, machine_line(&cpus));
        std::fs::write(path, svg("ioregionfd transports and paths", &subtitle, &bars))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        out.chart(path);
    }
    out.finish(&bars, started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(target_os = "linux"))]
fn bench(_args: &BenchArgs) -> Result<ExitCode, String> {
    Err("bench needs Linux (eventfd, futex, sched_setaffinity, /dev/kvm)".into())
}

/// CPU model, allowed CPUs, kernel, KVM modules: one line.
#[cfg(target_os = "linux")]
fn machine_line(cpus: &[usize]) -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    // /sys/module lists built-in modules too (kvm_pvm, kvm_amd, kvm_intel).
    let mut kvm: Vec<String> = std::fs::read_dir("/sys/module")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|m| m.starts_with("kvm")).collect())
        .unwrap_or_default();
    kvm.sort();
    format!(
        "{model}, {} CPU(s) allowed {:?}, Linux {kernel}, KVM modules: {}",
        cpus.len(),
        cpus,
        if kvm.is_empty() { "none listed".to_string() } else { kvm.join(" ") }
    )
}

fn main() -> ExitCode {
    // Usage errors exit with 2, `--help` and `--version` with 0 (clap's codes).
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Script(args) => script(args),
        Command::Invariants(args) => invariants(args),
        Command::Knobs(args) => knobs(args),
        Command::Conform(args) => conform(args),
        Command::Bench(args) => bench(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("ioregionfd-model: {e}");
        ExitCode::from(2)
    })
}
