//! The `ioregionfd-model` command line: a thin layer over the library.
//!
//! ```text
//! ioregionfd-model script [--design seed|rfc-v3|proposed] [--knob NAME=VALUE]... [FILE|-]
//! ioregionfd-model invariants
//! ioregionfd-model knobs
//! ioregionfd-model conform [--format seed|v3|all] [--transport stream|seqpacket|pipe|fifo|all] -- COMMAND ARGS...
//! ioregionfd-model bench [--quick] [--only transports|kvm|bus] [--markdown] [--svg FILE]
//! ```

use ioregionfd_model::design::{Design, KNOBS, parse_override};
use ioregionfd_model::invariants::CATALOGUE;
use ioregionfd_model::script::{Runner, run_script_with};
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

const SCRIPT_USAGE: &str =
    "usage: ioregionfd-model script [--design seed|rfc-v3|proposed] [--knob NAME=VALUE]... [FILE|-]
  run one operation per line (from FILE, or standard input) and print one result line each;
  exit 1 if an invariant was violated, 2 on a line that does not parse or a bad option
    --design D          the preset (default proposed; a `design` line in the script also sets it)
    --knob NAME=VALUE   override one knob of the preset (repeatable; `ioregionfd-model knobs` lists them)";

const USAGE: &str = "usage:
  ioregionfd-model script [--design seed|rfc-v3|proposed] [--knob NAME=VALUE]... [FILE|-]
      run one operation per line (from FILE, or standard input) and print one result line each;
      exit 1 if an invariant was violated, 2 on a line that does not parse
  ioregionfd-model invariants
      print the invariant catalogue (id and statement)
  ioregionfd-model knobs
      print every knob: what it decides, its values, and its value in each preset
  ioregionfd-model conform [OPTIONS] -- COMMAND [ARGS...]
      start COMMAND as an ioregionfd device with its fds in IOREGIONFD_CMD_FD and IOREGIONFD_RESP_FD
      (format in IOREGIONFD_FORMAT, transport in IOREGIONFD_TRANSPORT), play the kernel side and run
      the protocol suite; one line per check, then a summary; exit 1 if a check failed
        --format seed|v3|all        wire format(s), comma-separated (default v3)
        --transport KIND|all        stream, seqpacket, pipe, fifo, comma-separated (default all)
        --timeout-ms N              wait for a response or an exit (default 1000)
        --quiet-ms N                listen for a reply that must not come (default 50)
        --protocol-only             do not check values (for devices without memory semantics)
        --only TEXT                 run only the checks whose name contains TEXT
  ioregionfd-model bench [OPTIONS]
      quick benchmark tables: transport round trips (pinned to one CPU and across two), real-KVM
      access paths (skipped without /dev/kvm), bus lookup; criterion versions: cargo bench
        --quick                     fewer rounds (a few seconds)
        --only transports|kvm|bus   one table only (repeatable)
        --markdown                  print the tables as markdown
        --svg FILE                  also draw the round-trip and KVM tables as an SVG chart
  ioregionfd-model help";

fn script(args: &[String]) -> Result<ExitCode, String> {
    let mut design = Design::default();
    let mut file: Option<&str> = None;
    let mut overrides = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--design" => {
                let name = it.next().ok_or("--design needs a name: seed, rfc-v3 or proposed")?;
                design = Design::from_name(name)
                    .ok_or_else(|| format!("unknown design `{name}`: seed, rfc-v3 or proposed"))?;
            }
            "--knob" => overrides.push(parse_override(it.next().ok_or("--knob needs NAME=VALUE")?)?),
            k if k.starts_with("--knob=") => overrides.push(parse_override(&k["--knob=".len()..])?),
            "-h" | "--help" => {
                say!("{SCRIPT_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            f if file.is_none() && (f == "-" || !f.starts_with('-')) => file = Some(f),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut err = std::io::stderr();
    let runner = Runner::with_overrides(design, &overrides)?;
    let code = match file {
        None | Some("-") => run_script_with(std::io::stdin().lock(), &mut out, &mut err, runner),
        Some(path) => {
            let f = std::fs::File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
            run_script_with(BufReader::new(f), &mut out, &mut err, runner)
        }
    };
    Ok(ExitCode::from(code as u8))
}

/// A comma-separated list of names, or `all`.
fn list<T: Copy>(value: &str, all: &[T], parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<Vec<T>, String> {
    if value == "all" {
        return Ok(all.to_vec());
    }
    value.split(',').map(|n| parse(n.trim()).ok_or_else(|| format!("unknown {what} `{n}`"))).collect()
}

fn millis(flag: &str, value: Option<&String>) -> Result<std::time::Duration, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a number of milliseconds"))?;
    v.parse::<u64>()
        .ok()
        .filter(|&n| n <= 3_600_000)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("{flag} needs a number of milliseconds up to 3600000, not `{v}`"))
}

#[cfg(target_os = "linux")]
fn conform(args: &[String]) -> Result<ExitCode, String> {
    use ioregionfd_model::device::TransportKind;
    use ioregionfd_model::device::conform::{Launch, Options, Summary, run};
    use ioregionfd_model::wire::WireFormat;

    let split =
        args.iter().position(|a| a == "--").ok_or("conform needs `-- COMMAND [ARGS...]` (the device to test)")?;
    let (flags, command) = (&args[..split], &args[split + 1..]);
    if command.is_empty() {
        return Err("conform needs a device command after `--`".into());
    }
    let mut formats = vec![WireFormat::V3];
    let mut transports = TransportKind::ALL.to_vec();
    let mut template = Options::new(WireFormat::V3, TransportKind::Stream);
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--format" => {
                let v = it.next().ok_or("--format needs seed, v3 or all")?;
                formats =
                    list(v, &[WireFormat::Seed, WireFormat::V3], WireFormat::from_name, "format (seed, v3, all)")?;
            }
            "--transport" => {
                let v = it.next().ok_or("--transport needs stream, seqpacket, pipe, fifo or all")?;
                transports = list(
                    v,
                    &TransportKind::ALL,
                    TransportKind::from_name,
                    "transport (stream, seqpacket, pipe, fifo, all)",
                )?;
            }
            "--timeout-ms" => template.timeout = millis(flag, it.next())?,
            "--quiet-ms" => template.quiet = millis(flag, it.next())?,
            "--protocol-only" => template.memory = false,
            "--only" => template.only = Some(it.next().ok_or("--only needs a part of a check name")?.clone()),
            other => return Err(format!("unexpected argument `{other}` (the device command goes after `--`)")),
        }
    }
    let launch = Launch::Command(command.iter().map(Into::into).collect());
    let mut total = Summary::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for &format in &formats {
        for &transport in &transports {
            let options = Options { format, transport, ..template.clone() };
            let _ =
                writeln!(out, "== format {format}, transport {transport} ({}), device: {launch}", transport.describe());
            match run(&options, &launch, &mut out) {
                Ok(s) => {
                    let _ = writeln!(out, "-- format {format}, transport {transport}: {s}");
                    total.passed += s.passed;
                    total.failed += s.failed;
                }
                Err(e) => {
                    let _ = out.flush();
                    eprintln!("ioregionfd-model conform: {e}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
    }
    let _ = writeln!(out, "conform: {total}");
    Ok(if total.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(not(target_os = "linux"))]
fn conform(_args: &[String]) -> Result<ExitCode, String> {
    Err("conform needs Linux (socketpair, pipe2, mkfifo)".into())
}

#[cfg(target_os = "linux")]
fn bench(args: &[String]) -> Result<ExitCode, String> {
    use std::time::{Duration, Instant};
    use support::bus::{CrateBus, CrateVm, LinearScan, SIZES, SortedArray, layout};
    use support::kvm::{NO_KVM, Path};
    use support::report::{Bar, Stats, Table, spread, stats, svg, time};
    use support::rt::{Kind, measure};
    use support::{Pinning, allowed_cpus, pin_current_thread};

    let (mut quick, mut markdown, mut svg_path, mut only) = (false, false, None::<String>, Vec::<String>::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--markdown" => markdown = true,
            "--svg" => svg_path = Some(it.next().ok_or("--svg needs a file name")?.clone()),
            "--only" => {
                let v = it.next().ok_or("--only needs transports, kvm or bus")?;
                if !["transports", "kvm", "bus"].contains(&v.as_str()) {
                    return Err(format!("--only needs transports, kvm or bus, not `{v}`"));
                }
                only.push(v.clone());
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let wants = |what: &str| only.is_empty() || only.iter().any(|o| o == what);
    let show = |t: &Table| {
        if markdown {
            say!("{}", t.markdown());
        } else {
            say!("{}", t.text());
        }
    };
    let started = Instant::now();
    let cpus = allowed_cpus();
    say!("{}", machine_description(&cpus));
    let rounds = if quick { 7 } else { 15 };
    let mut bars: Vec<Bar> = Vec::new();
    let mut floors: Vec<(Pinning, Kind, Stats)> = Vec::new();

    if wants("transports") {
        for pinning in Pinning::ALL {
            if pinning == Pinning::TwoCpus && cpus.len() < 2 {
                say!("skip: round trips across two CPUs: only {} CPU allowed\n", cpus.len());
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
            show(&t);
        }
    }

    if wants("kvm") {
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
                say!("skip: /dev/kvm not available: {}\n", &e[NO_KVM.len()..]);
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
                show(&t);
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
                    show(&e);
                }
            }
        }
    }

    if wants("bus") {
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
        show(&t);
    }

    if let Some(path) = svg_path {
        let subtitle =
            format!("ioregionfd-model bench{}: {}", if quick { " --quick" } else { "" }, machine_line(&cpus));
        std::fs::write(&path, svg("ioregionfd transports and paths", &subtitle, &bars))
            .map_err(|e| format!("cannot write {path}: {e}"))?;
        say!("chart written to {path}");
    }
    say!("bench finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(target_os = "linux"))]
fn bench(_args: &[String]) -> Result<ExitCode, String> {
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

#[cfg(target_os = "linux")]
fn machine_description(cpus: &[usize]) -> String {
    format!("machine: {}\n", machine_line(cpus))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("script") => script(&args[1..]),
        Some("conform") => conform(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("invariants") => {
            let mut out = std::io::stdout().lock();
            for inv in CATALOGUE {
                let _ = writeln!(out, "{:<10} {}", inv.id, inv.statement);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("knobs") => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{:<28} {:<24} {:<24} {:<24} values", "knob", "seed", "rfc-v3", "proposed");
            for k in KNOBS {
                let [seed, v3, proposed] = Design::ALL.map(|d| (k.get)(&d.knobs()));
                let _ = writeln!(out, "{:<28} {seed:<24} {v3:<24} {proposed:<24} {}", k.name, (k.values)().join(", "));
                let _ = writeln!(out, "    {}", k.doc);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("help" | "--help" | "-h") => {
            say!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    result.unwrap_or_else(|e| {
        eprintln!("ioregionfd-model: {e}");
        ExitCode::from(2)
    })
}
