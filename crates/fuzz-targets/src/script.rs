//! `script`: arbitrary bytes through the script CLI's parser and runner (`src/script.rs`).
//!
//! The first input byte picks the design (`byte % 3`: seed, rfc-v3, proposed); the rest, at most
//! [`MAX_TEXT`] bytes and [`MAX_LINES`] lines of it (longer inputs are truncated, to keep every
//! run in the millisecond range), is read as lossy UTF-8 text. The properties checked:
//!
//! - [`parse_line`] never panics on any line, and an operation it returns prints (`Display`) as one
//!   line that parses back to the same operation;
//! - [`run_script`] never panics; it stops at the first line that does not parse, or that is the
//!   `ioregion` form of the other design (seed's one-FD form under rfc-v3 or proposed, the RFD WFD
//!   form under seed; the design in force is the one picked, or the last `design` line before the
//!   first `vm`). Then the exit code is 2 and standard error is exactly one line, `line N: ...`,
//!   naming that line: for a line that does not parse, with [`parse_line`]'s own message and the
//!   trimmed line. Otherwise standard error is empty and the exit code is 1 exactly when a
//!   `violation` line was printed, else 0;
//! - every operation run prints exactly one result line (plus any `violation` lines), so the
//!   result lines count the operations before the line where the runner stopped.

use ioregionfd_model::design::Design;
use ioregionfd_model::script::{Op, parse_line, run_script};

/// The most bytes of script text one input runs (the rest is ignored).
pub const MAX_TEXT: usize = 4096;

/// The most lines of script text one input runs (the rest is ignored). After every operation the
/// runner checks the structure of every VM, so a script of `vm` lines is quadratic: 1,200 of them
/// take about 300 ms, 128 a few milliseconds. The longest golden script has 47 lines.
pub const MAX_LINES: usize = 128;

/// The lines as the runner's `BufRead::lines` gives them: split at `\n`, a `\r` before it removed.
fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n')
        .map(|l| match l.strip_suffix('\n') {
            Some(l) => l.strip_suffix('\r').unwrap_or(l),
            None => l,
        })
        .collect()
}

/// Why the runner must stop at a line.
enum Stop {
    /// It does not parse.
    Parse(String),
    /// It is the `ioregion` form of the other design.
    Form,
}

/// Runs one input; panics when the parser or the runner breaks a property of the module doc.
pub fn run(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let mut design = super::design_of(first);
    let text = String::from_utf8_lossy(&rest[..rest.len().min(MAX_TEXT)]);
    let text = match text.match_indices('\n').nth(MAX_LINES - 1) {
        Some((end, _)) => &text[..=end],
        None => &text[..],
    };

    // The expected run, from the parser alone.
    let mut ops = 0usize;
    let mut vm_created = false;
    let mut stop = None;
    for (n, line) in lines(text).into_iter().enumerate() {
        let op = match parse_line(line) {
            Ok(Some(op)) => op,
            Ok(None) => continue,
            Err(e) => {
                stop = Some((n + 1, line, Stop::Parse(e.to_string())));
                break;
            }
        };
        let printed = op.to_string();
        assert!(!printed.contains(['\n', '#']), "{op:?} prints as more than one line: {printed:?}");
        assert_eq!(
            parse_line(&printed),
            Ok(Some(op.clone())),
            "line {:?} parses to {op:?}, which prints as {printed:?}, which does not parse back to it",
            line
        );
        let wrong_form = match op {
            Op::Design(d) if !vm_created => {
                design = d;
                false
            }
            Op::Vm { .. } => {
                vm_created = true;
                false
            }
            Op::IoregionSeed { .. } => design != Design::Seed,
            Op::IoregionV3 { .. } => design == Design::Seed,
            _ => false,
        };
        if wrong_form {
            stop = Some((n + 1, line, Stop::Form));
            break;
        }
        ops += 1;
    }

    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = run_script(text.as_bytes(), &mut out, &mut err, super::design_of(first));
    let out = String::from_utf8(out).expect("the runner's standard output is UTF-8");
    let err = String::from_utf8(err).expect("the runner's standard error is UTF-8");
    let results = out.lines().filter(|l| !l.starts_with("violation ")).count();
    let violated = out.lines().any(|l| l.starts_with("violation "));
    assert_eq!(results, ops, "{ops} operations ran but {results} result lines were printed:\n{out}");
    match stop {
        Some((n, line, why)) => {
            assert_eq!(code, 2, "line {n} ({line:?}) must stop the script with exit code 2; stderr: {err}");
            match why {
                Stop::Parse(msg) => {
                    let expected = format!("line {n}: {msg}: {}\n", line.trim());
                    assert_eq!(err, expected, "standard error for the line that does not parse");
                }
                Stop::Form => {
                    let prefix = format!("line {n}: ");
                    assert!(
                        err.starts_with(&prefix)
                            && err.ends_with(&format!(": {}\n", line.trim()))
                            && err.contains("form of `ioregion`")
                            && err.lines().count() == 1,
                        "standard error for line {n} ({line:?}), the ioregion form of the other design: {err:?}"
                    );
                }
            }
        }
        None => {
            assert!(err.is_empty(), "every line parses, but standard error says {err:?}");
            assert_eq!(code, i32::from(violated), "exit code {code}, violation printed: {violated}\n{out}");
        }
    }
}

fn seed(design: Design, text: &str) -> Vec<u8> {
    let byte = Design::ALL.iter().position(|&d| d == design).expect("a design") as u8;
    let mut data = vec![byte];
    data.extend_from_slice(text.as_bytes());
    data
}

/// Named seed inputs: every golden script under `proposed` (the CLI's default, which the goldens
/// are run with; `golden-NAME`), the `src/script.rs` doc example under each design, and short
/// scripts for the other exits: each design given the other's `ioregion` form, a late `design`
/// line, an unknown operation, a sign after `0x` (once a panic) and invalid UTF-8.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = super::GOLDEN_SCRIPTS
        .iter()
        .map(|(name, text)| (format!("golden-{name}"), seed(Design::Proposed, text)))
        .collect();
    let doc = "vm\neventfd\nioeventfd 0 mmio 0x1000 4 3\nwrite 0 mmio 0x1000 4 7\nread 0 mmio 0x1000 4\n";
    for design in Design::ALL {
        seeds.push((format!("doc-{design}"), seed(design, doc)));
    }
    let v3_form = "vm\nsocketpair\nioregion 0 mmio 0x1000 8 3 3\nserve 4\nread 0 mmio 0x1000 8\n";
    let seed_form = "vm\nioregionfd\nioregion 0 mmio 0x1000 8 3 user_data=1\nread 0 mmio 0x1000 8\n";
    seeds.push(("seed-v3-form".into(), seed(Design::Seed, v3_form)));
    seeds.push(("proposed-seed-form".into(), seed(Design::Proposed, seed_form)));
    seeds.push(("late-design".into(), seed(Design::Seed, "vm\ndesign rfc-v3\nioregion 0 pio 0x60 1 -1\n")));
    seeds.push((
        "pipe-buf".into(),
        seed(Design::RfcV3, "vm\npipe nonblock buf=1\nioregion 0 pio 0x60 4 3 4\nread 0 pio 0x60 4\n"),
    ));
    seeds.push(("unknown-op".into(), seed(Design::Proposed, "vm\r\n\r\nfrobnicate 1\nvm\n")));
    seeds.push(("fffd-number".into(), seed(Design::Proposed, "vm\nwrite 0 mmio 0x10 1 0x\u{fffd}\n")));
    let hex_sign = "close 0x-1\nclose -0x-80000000000000000000000000000000\n";
    seeds.push(("hex-sign".into(), seed(Design::Proposed, hex_sign)));
    let mut raw = seed(Design::Proposed, "eventfd\nclose ");
    raw.extend_from_slice(&[0xff, 0xfe, b'\n']);
    seeds.push(("raw-bytes".into(), raw));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1,365 `vm` lines would take seconds in a debug build; cut to [`MAX_LINES`] they do not.
    #[test]
    fn long_inputs_are_cut() {
        let long = seed(Design::Proposed, &"vm\n".repeat(MAX_TEXT));
        let started = std::time::Instant::now();
        run(&long);
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    }

    /// Line templates of the random scripts; each upper-case letter is replaced by a random word.
    const TEMPLATES: [&str; 22] = [
        "vm",
        "vm backend=vmx-ept nr_iobus_devs=N",
        "eventfd",
        "close F",
        "ioeventfd 0 B A L F",
        "ioeventfd 0 B A L F datamatch=V deassign",
        "coalesced 0 B A S",
        "coalesced 0 B A S unregister",
        "write 0 B A M V",
        "read 0 B A M",
        "socketpair",
        "socketpair seqpacket nonblock buf=N",
        "pipe buf=N",
        "fifo nonblock",
        "ioregionfd",
        "ioregion 0 B A S F F",
        "ioregion 0 B A S F F posted user_data=V",
        "ioregion 0 B A S F",
        "serve F",
        "serve F F",
        "design D",
        "fail-next-alloc 0 B",
    ];

    fn word(letter: char, r: u64) -> &'static str {
        let pick = |words: &'static [&'static str]| words[(r % words.len() as u64) as usize];
        match letter {
            'B' => pick(&["mmio", "pio"]),
            'A' => pick(&["0x60", "0x1000", "0x1008", "0x2000", "0x10", "0xffc"]),
            'L' => pick(&["1", "2", "4", "8", "0"]),
            'M' => pick(&["1", "2", "4"]),
            'F' => pick(&["3", "4", "5", "6", "7", "-1"]),
            'S' => pick(&["0", "8", "0x100", "4"]),
            'V' => pick(&["0", "1", "0x7f", "7"]),
            'N' => pick(&["1", "32", "0", "64"]),
            'D' => pick(&["seed", "rfc-v3", "proposed"]),
            _ => unreachable!("template letter {letter}"),
        }
    }

    #[test]
    fn pseudo_random_scripts_pass() {
        let mut next = super::super::xorshift(0x6a09_e667_f3bc_c909u64);
        let mut exits = [0usize; 3];
        for _ in 0..400 {
            let mut data = vec![next() as u8];
            for _ in 0..next() % 24 {
                for c in TEMPLATES[(next() % TEMPLATES.len() as u64) as usize].chars() {
                    if c.is_ascii_uppercase() {
                        data.extend_from_slice(word(c, next()).as_bytes());
                    } else {
                        data.push(c as u8);
                    }
                }
                if next().is_multiple_of(64) {
                    data.push(next() as u8);
                }
                data.push(b'\n');
            }
            let mut sink = (Vec::new(), Vec::new());
            let design = super::super::design_of(data[0]);
            exits[run_script(&data[1..], &mut sink.0, &mut sink.1, design) as usize] += 1;
            run(&data);
        }
        assert!(exits.iter().all(|&n| n > 0), "exit codes 0, 1, 2: {exits:?}");
    }
}
