//! The scenario parser: one pass over the lines, every error naming its line, no panics.

use super::{FdRef, Line, MAX_THREADS, Role, RowSpec, Scenario, Step, ThreadSpec};
use crate::design::{Design, parse_override};
use crate::invariants::by_id;
use crate::scenario::Expected;
use crate::script::{Op, TransportKind, guest_bus, number, parse_line};
use crate::vm::GuestAccess;
use std::fmt;

/// A scenario that does not parse: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The file (or name) it came from.
    pub source: String,
    /// The line, from 1 (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}:{}: {}", self.source, self.line, self.message)
        }
    }
}

impl std::error::Error for ParseError {}

/// Where the parser is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Header,
    Setup,
    Thread,
}

struct Parser<'a> {
    source: &'a str,
    line: usize,
}

impl Parser<'_> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { source: self.source.to_string(), line: self.line, message: message.into() })
    }

    fn lift<T>(&self, r: Result<T, crate::script::ParseError>) -> Result<T, ParseError> {
        r.or_else(|e| self.err(e.0))
    }
}

pub(super) fn parse(text: &str, source: &str) -> Result<Scenario, ParseError> {
    let mut p = Parser { source, line: 0 };
    let mut s = Scenario {
        name: String::new(),
        summary: String::new(),
        source: source.to_string(),
        rows: Vec::new(),
        no_leak: false,
        undrained: false,
        setup: Vec::new(),
        threads: Vec::new(),
        user_data: Vec::new(),
    };
    let mut section = Section::Header;
    let mut setup_seen = false;
    for (i, raw) in text.lines().enumerate() {
        p.line = i + 1;
        let code = raw.split('#').next().unwrap_or("").trim();
        if code.is_empty() {
            continue;
        }
        let (verb, rest) = split_verb(code);
        match (section, verb) {
            (Section::Header, "scenario") => {
                if !s.name.is_empty() {
                    return p.err("a second `scenario` line (one scenario per file)");
                }
                if rest.is_empty() || rest.contains(char::is_whitespace) {
                    return p.err("`scenario` takes one name without spaces");
                }
                s.name = rest.to_string();
            }
            (Section::Header, "summary") => s.summary = rest.to_string(),
            (Section::Header, "row") => {
                let row = parse_row(&p, rest)?;
                if s.rows.iter().any(|r| r.label == row.label) {
                    return p.err(format!("a second row labelled `{}` (add `as LABEL`)", row.label));
                }
                s.rows.push(row);
            }
            (Section::Header, "option") => match rest {
                "no-leak" => s.no_leak = true,
                "undrained" => s.undrained = true,
                other => return p.err(format!("unknown option `{other}` (known: no-leak, undrained)")),
            },
            (_, "setup") => {
                if section != Section::Header || setup_seen {
                    return p.err("`setup` comes once, after the header and before the threads");
                }
                if !rest.is_empty() {
                    return p.err("`setup` takes nothing after it");
                }
                setup_seen = true;
                section = Section::Setup;
            }
            (_, "thread") => {
                if s.name.is_empty() {
                    return p.err("a thread before the `scenario NAME` line");
                }
                let t = parse_thread_header(&p, rest)?;
                if s.threads.iter().any(|o| o.name == t.name) {
                    return p.err(format!("a second thread named `{}`", t.name));
                }
                s.threads.push(t);
                section = Section::Thread;
            }
            (Section::Header, other) => {
                return p.err(format!(
                    "`{other}` in the header (known: scenario, summary, row, option; then `setup` and `thread`)"
                ));
            }
            (Section::Setup, _) => {
                let line = parse_line_of(&p, code, None)?;
                s.setup.push(line);
            }
            (Section::Thread, _) => {
                let t = s.threads.last_mut().expect("a thread section has its header");
                let line = parse_line_of(&p, code, Some(&t.role))?;
                if t.lines.last().is_some_and(|l| l.step == Step::Park && l.only.is_none()) {
                    return p.err("a line after `park`: the thread never runs again");
                }
                t.lines.push(line);
            }
        }
    }
    p.line = 0;
    if s.name.is_empty() {
        return p.err("no `scenario NAME` line");
    }
    if s.rows.is_empty() {
        return p.err("no `row` line: say which designs to run and what each should conclude");
    }
    let spawned = s.threads.iter().filter(|t| t.role != Role::Main).count();
    if spawned > MAX_THREADS {
        return p.err(format!("{spawned} threads besides `main`: loom explores at most {MAX_THREADS}"));
    }
    validate(&mut p, &mut s)?;
    Ok(s)
}

fn split_verb(code: &str) -> (&str, &str) {
    match code.split_once(char::is_whitespace) {
        Some((v, r)) => (v, r.trim()),
        None => (code, ""),
    }
}

/// `row DESIGN [KNOB=VALUE ...] [as LABEL] expect VERDICT[|VERDICT...]`.
fn parse_row(p: &Parser<'_>, rest: &str) -> Result<RowSpec, ParseError> {
    let toks: Vec<&str> = rest.split_whitespace().collect();
    let Some((&design_name, mut toks)) = toks.split_first() else {
        return p.err("`row` takes DESIGN [KNOB=VALUE ...] [as LABEL] expect VERDICT");
    };
    let Some(design) = Design::from_name(design_name) else {
        return p.err(format!("`{design_name}` is not a design (seed, rfc-v3, proposed)"));
    };
    let mut overrides = Vec::new();
    let mut label = None;
    let mut expected = None;
    while let Some((&t, rest)) = toks.split_first() {
        toks = rest;
        match t {
            "as" | "expect" => {
                let Some((&v, rest)) = toks.split_first() else { return p.err(format!("`{t}` needs a value")) };
                toks = rest;
                if t == "as" {
                    label = Some(v.to_string());
                } else {
                    expected = Some(parse_expected(p, v)?);
                }
            }
            kv if kv.contains('=') => overrides.push(parse_override(kv).or_else(|e| p.err(e))?),
            other => return p.err(format!("`{other}` in a row: expected KNOB=VALUE, `as LABEL` or `expect VERDICT`")),
        }
    }
    let Some(expected) = expected else { return p.err("a row needs `expect holds` or `expect INVARIANT`") };
    let label = label.unwrap_or_else(|| {
        let mut l = design.name().to_string();
        for (n, v) in &overrides {
            l.push_str(&format!("+{n}={v}"));
        }
        l
    });
    Ok(RowSpec { design, overrides, label, expected, line: p.line })
}

fn parse_expected(p: &Parser<'_>, text: &str) -> Result<Expected, ParseError> {
    if text == "holds" {
        return Ok(Expected::Holds);
    }
    let mut ids = Vec::new();
    for id in text.split('|') {
        if by_id(id).is_none() && !["assertion", "panic"].contains(&id) {
            return p.err(format!("`{id}` is not an invariant id (`ioregionfd-model invariants` lists them)"));
        }
        ids.push(id.to_string());
    }
    Ok(Expected::Violates(ids))
}

/// `thread NAME vcpu VM ID [sigpipe=handled]`, `thread NAME device CHANNEL`,
/// `thread NAME device cmd=FD resp=FD`, `thread NAME` (a VMM thread), `thread main`.
fn parse_thread_header(p: &Parser<'_>, rest: &str) -> Result<ThreadSpec, ParseError> {
    let toks: Vec<&str> = rest.split_whitespace().collect();
    let Some(&name) = toks.first() else { return p.err("`thread` takes a name") };
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return p.err(format!("thread name `{name}`: letters, digits, - and _ only"));
    }
    let role = match &toks[1..] {
        [] if name == "main" => Role::Main,
        [] => Role::Vmm,
        _ if name == "main" => return p.err("`thread main` takes nothing more: it is the checker's main thread"),
        ["vcpu", vm, id, opts @ ..] => {
            let mut sigpipe_handled = false;
            for o in opts {
                match *o {
                    "sigpipe=handled" => sigpipe_handled = true,
                    "sigpipe=ignored" => sigpipe_handled = false,
                    other => return p.err(format!("`{other}`: a vCPU thread takes sigpipe=handled|ignored")),
                }
            }
            Role::Vcpu { vm: p.lift(number(vm, "VM"))?, id: p.lift(number(id, "ID"))?, sigpipe_handled }
        }
        ["device", channel] if !channel.contains('=') => {
            Role::Device { cmd: FdRef::Device(channel.to_string()), resp: FdRef::Device(channel.to_string()) }
        }
        ["device", cmd, resp] => {
            let (Some(c), Some(r)) = (cmd.strip_prefix("cmd="), resp.strip_prefix("resp=")) else {
                return p.err("`thread NAME device` takes CHANNEL, or cmd=FD resp=FD");
            };
            Role::Device { cmd: parse_fd(p, c)?, resp: parse_fd(p, r)? }
        }
        _ => {
            return p.err(
                "`thread NAME` takes: `vcpu VM ID [sigpipe=handled]`, `device CHANNEL`, `device cmd=FD resp=FD`, or nothing (a VMM thread)",
            );
        }
    };
    Ok(ThreadSpec { name: name.to_string(), role, lines: Vec::new(), line: p.line })
}

fn parse_fd(p: &Parser<'_>, tok: &str) -> Result<FdRef, ParseError> {
    if let Some(name) = tok.strip_suffix(".kernel") {
        return Ok(FdRef::Kernel(name.to_string()));
    }
    if let Some(name) = tok.strip_suffix(".device") {
        return Ok(FdRef::Device(name.to_string()));
    }
    Ok(FdRef::Num(p.lift(number(tok, "FD"))?))
}

/// Takes `runs=N` out of an access line; the rest is the access.
fn take_runs<'a>(p: &Parser<'_>, toks: &[&'a str]) -> Result<(Vec<&'a str>, usize), ParseError> {
    let mut runs = 1;
    let mut rest = Vec::new();
    for t in toks {
        match t.strip_prefix("runs=") {
            Some(n) => {
                runs = p.lift(number(n, "runs"))?;
                if runs == 0 {
                    return p.err("runs must be at least 1");
                }
            }
            None => rest.push(*t),
        }
    }
    Ok((rest, runs))
}

/// One setup or thread line. `role` is `None` in setup.
fn parse_line_of(p: &Parser<'_>, code: &str, role: Option<&Role>) -> Result<Line, ParseError> {
    let (only, code) = match code.strip_prefix('@') {
        Some(guarded) => {
            let (designs, rest) = split_verb(guarded);
            let mut only = Vec::new();
            for d in designs.split(',') {
                only.push(Design::from_name(d).ok_or_else(|| ParseError {
                    source: p.source.to_string(),
                    line: p.line,
                    message: format!("`@{d}`: not a design (seed, rfc-v3, proposed)"),
                })?);
            }
            if rest.is_empty() {
                return p.err("a guard `@DESIGN` needs a line after it");
            }
            (Some(only), rest)
        }
        None => (None, code),
    };
    let step = parse_step(p, code, role)?;
    Ok(Line { number: p.line, text: code.to_string(), only, step })
}

fn parse_step(p: &Parser<'_>, code: &str, role: Option<&Role>) -> Result<Step, ParseError> {
    let toks: Vec<&str> = code.split_whitespace().collect();
    let (verb, args) = (toks[0], &toks[1..]);
    let in_setup = role.is_none();
    let vcpu = matches!(role, Some(Role::Vcpu { .. }));
    let device = matches!(role, Some(Role::Device { .. }));
    let only_in = |ok: bool, where_: &str| if ok { Ok(()) } else { p.err(format!("`{verb}` belongs {where_}")) };
    let step = match verb {
        "channel" => {
            only_in(in_setup, "in setup")?;
            let Some((&name, opts)) = args.split_first() else {
                return p.err("`channel` takes NAME [seqpacket|stream|pipe|fifo] [buf=N]");
            };
            if name.contains('.') || name.contains('=') {
                return p.err(format!("channel name `{name}`: no `.` or `=`"));
            }
            let mut kind = TransportKind::Seqpacket;
            let mut buf = None;
            for o in opts {
                match *o {
                    "seqpacket" => kind = TransportKind::Seqpacket,
                    "stream" => kind = TransportKind::Stream,
                    "pipe" => kind = TransportKind::Pipe,
                    "fifo" => kind = TransportKind::Fifo,
                    o if o.starts_with("buf=") => {
                        let n: usize = p.lift(number(&o[4..], "buf"))?;
                        if n == 0 {
                            return p.err("buf must be at least 1");
                        }
                        buf = Some(n);
                    }
                    other => return p.err(format!("`{other}`: `channel` takes seqpacket, stream, pipe, fifo, buf=N")),
                }
            }
            Step::Channel { name: name.to_string(), kind, buf }
        }
        "region" => {
            let (pos, opts): (Vec<&str>, Vec<&str>) = args.iter().partition(|t| !t.contains('=') && **t != "posted");
            let [vm, bus, addr, size, channel] = pos.as_slice() else {
                return p.err("`region` takes VM BUS ADDR SIZE CHANNEL [user_data=N] [posted]");
            };
            let mut user_data = 0;
            let mut posted = false;
            for o in opts {
                match o.split_once('=') {
                    Some(("user_data", v)) => user_data = p.lift(number(v, "user_data"))?,
                    None if o == "posted" => posted = true,
                    _ => return p.err(format!("`{o}`: `region` takes user_data=N and posted")),
                }
            }
            Step::Region {
                vm: p.lift(number(vm, "VM"))?,
                bus: p.lift(guest_bus(bus))?,
                addr: p.lift(number(addr, "ADDR"))?,
                size: p.lift(number(size, "SIZE"))?,
                channel: channel.to_string(),
                user_data,
                posted,
            }
        }
        "deassign" => {
            let [vm, bus, addr, size] = args else { return p.err("`deassign` takes VM BUS ADDR SIZE") };
            Step::Deassign {
                vm: p.lift(number(vm, "VM"))?,
                bus: p.lift(guest_bus(bus))?,
                addr: p.lift(number(addr, "ADDR"))?,
                size: p.lift(number(size, "SIZE"))?,
            }
        }
        "give" => {
            only_in(in_setup, "in setup")?;
            let [name] = args else { return p.err("`give` takes a channel name") };
            Step::Give(name.to_string())
        }
        "close" if !device || !args.is_empty() => {
            let [fd] = args else { return p.err("`close` takes FD, NAME.kernel or NAME.device") };
            Step::Close(parse_fd(p, fd)?)
        }
        "read" | "write" if !in_setup => {
            only_in(vcpu, "to a vCPU thread (`thread NAME vcpu VM ID`)")?;
            let (rest, runs) = take_runs(p, args)?;
            let op = p.lift(parse_line(&format!("{verb} 0 {}", rest.join(" "))))?;
            let access = match op {
                Some(Op::Read { bus, addr, len, .. }) => GuestAccess { bus, addr, len, value: None },
                Some(Op::Write { bus, addr, len, value, .. }) => GuestAccess { bus, addr, len, value: Some(value) },
                _ => {
                    return p.err(format!(
                        "`{verb}` takes BUS ADDR LEN{} [runs=N]",
                        if verb == "write" { " VALUE" } else { "" }
                    ));
                }
            };
            Step::Access { vm: None, access, runs }
        }
        "read" | "write" => {
            let op = p.lift(parse_line(code))?;
            let (vm, access) = match op {
                Some(Op::Read { vm, bus, addr, len }) => (vm, GuestAccess { bus, addr, len, value: None }),
                Some(Op::Write { vm, bus, addr, len, value }) => {
                    (vm, GuestAccess { bus, addr, len, value: Some(value) })
                }
                _ => return p.err(format!("`{verb}` in setup takes VM BUS ADDR LEN")),
            };
            Step::Access { vm: Some(vm), access, runs: 1 }
        }
        "resume" => {
            only_in(vcpu, "to a vCPU thread")?;
            let (rest, runs) = take_runs(p, args)?;
            if !rest.is_empty() {
                return p.err("`resume` takes only runs=N");
            }
            Step::Resume(runs)
        }
        "settle" | "park" => {
            only_in(vcpu, "to a vCPU thread")?;
            if !args.is_empty() {
                return p.err(format!("`{verb}` takes nothing"));
            }
            if verb == "park" { Step::Park } else { Step::Settle }
        }
        "expect" => {
            let text = code["expect".len()..].trim();
            let alternatives: Vec<String> = text.split('|').map(|a| a.trim().to_string()).collect();
            if alternatives.iter().any(String::is_empty) {
                return p.err("`expect` takes OUTCOME [| OUTCOME...]");
            }
            Step::Expect(alternatives)
        }
        "signal" => {
            let [t] = args else { return p.err("`signal` takes a vCPU thread's name") };
            Step::Signal(t.to_string())
        }
        "run-page" => {
            let [t, reason] = args else { return p.err("`run-page` takes THREAD exit_reason=N|intr|mmio|io") };
            let value = match reason.strip_prefix("exit_reason=") {
                Some("intr") => crate::vcpu::KVM_EXIT_INTR,
                Some("mmio") => crate::vcpu::KVM_EXIT_MMIO,
                Some("io") => crate::vcpu::KVM_EXIT_IO,
                Some(n) => p.lift(number(n, "exit_reason"))?,
                None => return p.err("`run-page` takes THREAD exit_reason=N|intr|mmio|io"),
            };
            Step::RunPage(t.to_string(), value)
        }
        "destroy-vm" => {
            let [vm] = args else { return p.err("`destroy-vm` takes VM") };
            Step::DestroyVm(p.lift(number(vm, "VM"))?)
        }
        "exit" => {
            only_in(!in_setup, "to a thread")?;
            if !args.is_empty() {
                return p.err("`exit` takes nothing");
            }
            Step::Exit
        }
        "join" => {
            only_in(role == Some(&Role::Main), "to `thread main`")?;
            let [t] = args else { return p.err("`join` takes a thread name") };
            Step::Join(t.to_string())
        }
        "serve" if device => {
            let [n] = args else { return p.err("`serve` takes N, the most commands to answer") };
            Step::Serve(p.lift(number(n, "N"))?)
        }
        "receive" | "answer" | "close" | "die" if device => {
            if !args.is_empty() {
                return p.err(format!("`{verb}` takes nothing"));
            }
            match verb {
                "receive" => Step::Receive,
                "answer" => Step::Answer,
                v => Step::DeviceClose { dies: v == "die" },
            }
        }
        "serve" | "receive" | "answer" | "die" if !in_setup => {
            return p.err(format!("`{verb}` belongs to a device thread (`thread NAME device CHANNEL`)"));
        }
        "design" => return p.err("the design comes from the rows, not from a `design` line"),
        _ => {
            let op = p.lift(parse_line(code))?;
            match op {
                Some(op @ (Op::Vm { .. } | Op::Transport { .. } | Op::Ioregionfd | Op::Serve { .. })) => {
                    only_in(in_setup, "in setup")?;
                    Step::Script(op)
                }
                Some(op) => Step::Script(op),
                None => return p.err("an empty line"),
            }
        }
    };
    Ok(step)
}

/// Checks what needs the whole file: names refer to channels and threads that exist, an
/// `expect` follows something that has an outcome, and collects the regions' user_data.
fn validate(p: &mut Parser<'_>, s: &mut Scenario) -> Result<(), ParseError> {
    let mut channels: Vec<String> = Vec::new();
    let mut user_data = Vec::new();
    let vcpu_threads: Vec<String> =
        s.threads.iter().filter(|t| matches!(t.role, Role::Vcpu { .. })).map(|t| t.name.clone()).collect();
    let all_threads: Vec<String> = s.threads.iter().map(|t| t.name.clone()).collect();
    let check_fd = |p: &Parser<'_>, fd: &FdRef, channels: &[String]| match fd {
        FdRef::Kernel(n) | FdRef::Device(n) if !channels.contains(n) => {
            p.err(format!("no channel named `{n}` (make it in setup: `channel {n}`)"))
        }
        _ => Ok(()),
    };
    let mut vcpu_ids: Vec<(usize, usize)> = Vec::new();
    for t in &s.threads {
        if let Role::Vcpu { vm, id, .. } = t.role {
            if vcpu_ids.contains(&(vm, id)) {
                p.line = t.line;
                return p.err(format!("a second thread for vCPU {id} of VM {vm}"));
            }
            vcpu_ids.push((vm, id));
        }
    }
    let sections = std::iter::once((None, &s.setup)).chain(s.threads.iter().map(|t| (Some(t), &t.lines)));
    for (thread, lines) in sections {
        let mut has_outcome = false;
        for l in lines {
            p.line = l.number;
            match &l.step {
                Step::Channel { name, .. } => {
                    if channels.contains(name) {
                        return p.err(format!("a second channel named `{name}`"));
                    }
                    channels.push(name.clone());
                }
                Step::Region { channel, user_data: u, .. } => {
                    if !channels.contains(channel) {
                        return p.err(format!("no channel named `{channel}`"));
                    }
                    user_data.push(*u);
                }
                Step::Give(n) if !channels.contains(n) => return p.err(format!("no channel named `{n}`")),
                Step::Close(fd) => check_fd(p, fd, &channels)?,
                Step::Script(Op::IoregionV3 { args, .. }) => user_data.push(args.user_data),
                Step::Script(Op::IoregionSeed { args, .. }) => user_data.push(args.user_data),
                Step::Signal(n) | Step::RunPage(n, _) if !vcpu_threads.contains(n) => {
                    return p.err(format!("no vCPU thread named `{n}`"));
                }
                Step::Join(n) if !all_threads.contains(n) || n == "main" => {
                    return p.err(format!("no thread named `{n}` to join"));
                }
                Step::Expect(_) if !has_outcome => {
                    return p
                        .err("`expect` follows a line with an outcome (an access, resume, settle, or a setup line)");
                }
                _ => {}
            }
            has_outcome = match &l.step {
                Step::Access { .. } | Step::Resume(_) | Step::Settle => true,
                Step::Expect(_) => has_outcome,
                _ => thread.is_none(),
            };
        }
        if let Some(t) = thread
            && let Role::Device { cmd, resp } = &t.role
        {
            p.line = t.line;
            check_fd(p, cmd, &channels)?;
            check_fd(p, resp, &channels)?;
        }
    }
    user_data.sort_unstable();
    user_data.dedup();
    s.user_data = user_data;
    Ok(())
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;

    fn error(text: &str) -> ParseError {
        parse(text, "t.scenario").expect_err("must not parse")
    }

    #[test]
    fn errors_name_their_line() {
        let e = error("scenario x\nrow proposed expect holds\nsetup\nvm\nbogus 1 2\n");
        assert_eq!(e.line, 5, "{e}");
        assert!(e.to_string().starts_with("t.scenario:5: "), "{e}");
        let e = error("scenario x\nrow proposed expect nothing\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("not an invariant"), "{e}");
        let e = error("scenario x\nrow proposed no_such_knob=1 expect holds\n");
        assert!(e.message.contains("unknown knob"), "{e}");
        let e =
            error("scenario x\nrow proposed expect holds\nsetup\nvm\nthread v vcpu 0 0\npark\nread mmio 0x1000 4\n");
        assert_eq!(e.line, 7);
        let e = error("scenario x\nrow proposed expect holds\nthread d device nope\nserve 1\n");
        assert!(e.message.contains("no channel named `nope`"), "{e}");
        let e = error("scenario x\nrow proposed expect holds\nthread v vcpu 0 0\nexpect exit mmio 0x1 4\n");
        assert!(e.message.contains("follows a line with an outcome"), "{e}");
        let five = "thread a\nthread b\nthread c\nthread d\nthread e\n";
        assert!(error(&format!("scenario x\nrow proposed expect holds\n{five}")).message.contains("at most 4"));
        assert_eq!(error("").message, "no `scenario NAME` line");
    }

    #[test]
    fn rows_carry_overrides_and_labels() {
        let s = parse(
            "scenario x\nrow proposed send_lock=response-side as defect:send expect liveness|exclusive\nrow seed expect holds\n",
            "t",
        )
        .unwrap();
        assert_eq!(s.rows[0].label, "defect:send");
        assert_eq!(s.rows[0].overrides, vec![("send_lock".to_string(), "response-side".to_string())]);
        assert_eq!(s.rows[0].expected, Expected::Violates(vec!["liveness".into(), "exclusive".into()]));
        assert_eq!(s.rows[1].label, "seed");
        let rows = s.rows_with(&[("failure_exit".into(), "false".into())]).unwrap();
        assert_eq!(rows[1].label, "seed+failure_exit=false");
    }

    #[test]
    fn lines_parse_to_steps() {
        let s = parse(
            "scenario x\nrow proposed expect holds\nsetup\nvm\nchannel t stream buf=40\ngive t\n\
             region 0 pio 0x60 4 t user_data=7 posted\nwrite 0 pio 0x60 4 5\nexpect ioregion 0x7 write 0x0 4 0x5\n\
             thread v vcpu 0 1 sigpipe=handled\nwrite mmio 0x1000 4 7 runs=2\nexpect exit... | ioregion 0x1 write...\n\
             settle\n@seed close t.kernel\n\
             thread d device cmd=4 resp=t.device\nreceive\nanswer\ndie\nthread main\njoin d\nsignal v\n",
            "t",
        )
        .unwrap();
        assert_eq!(s.user_data, vec![7]);
        assert_eq!(s.threads[0].role, Role::Vcpu { vm: 0, id: 1, sigpipe_handled: true });
        assert_eq!(
            s.threads[0].lines[1].step,
            Step::Expect(vec!["exit...".to_string(), "ioregion 0x1 write...".to_string()])
        );
        assert_eq!(s.threads[0].lines[3].only, Some(vec![Design::Seed]));
        assert_eq!(s.threads[1].role, Role::Device { cmd: FdRef::Num(4), resp: FdRef::Device("t".into()) });
        assert_eq!(s.threads[2].role, Role::Main);
        assert!(matches!(s.setup[1].step, Step::Channel { kind: TransportKind::Stream, buf: Some(40), .. }));
    }
}
