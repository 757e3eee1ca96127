//! Scenarios as data: a text format a reviewer writes, its parser, the runner that plays one
//! execution of it, and the checkers that explore it (loom, shuttle, or one smoke run).
//!
//! A scenario file has a header (its name, a summary, the rows to run: a design, knob
//! overrides, a label and the expected verdict of each), a sequential `setup` (the script
//! language, plus a few verbs that make it design-neutral), then up to four `thread`s, each a
//! list of lines. `docs/scenarios.md` describes every verb; this is a complete example:
//!
//! ```text
//! scenario two-vms-one-fd
//! summary two VMs map a region each onto one fd; a vCPU of each reads while the device answers
//! row seed expect holds
//! row rfc-v3 expect isolation
//! row proposed expect holds
//!
//! setup
//! vm
//! vm
//! channel t                      # this design's transport: seed's ioregionfd, else a seqpacket socketpair
//! region 0 mmio 0x1000 0x10 t user_data=1
//! region 1 mmio 0x1000 0x10 t user_data=2
//!
//! thread device device t
//! serve 2
//!
//! thread vcpu0 vcpu 0 0
//! read mmio 0x1000 4
//! expect ioregion 0x1 read 0x0 4 0x100
//!
//! thread vm1-vcpu0 vcpu 1 0
//! read mmio 0x1000 4
//! expect ioregion 0x2 read 0x0 4 0x200
//! ```
//!
//! ```
//! use ioregionfd_model::scenario::{Scenario, check};
//! let text = "scenario one-read\nrow proposed expect holds\nsetup\nvm\nchannel t\n\
//!             region 0 mmio 0x1000 0x10 t user_data=1\nthread device device t\nserve 1\n\
//!             thread vcpu0 vcpu 0 0\nread mmio 0x1000 4\nexpect ioregion 0x1 read 0x0 4 0x100\n";
//! let s = Scenario::parse(text, "one-read.scenario").unwrap();
//! let rows = s.rows().unwrap();
//! assert_eq!(rows.len(), 1);
//! // One execution on real threads (no checker in this build).
//! assert!(check::run_once(&rows[0]).is_ok());
//! ```

pub mod check;
pub mod generate;
mod parse;
mod run;

pub use check::{Expected, Failure, Row};
pub use parse::ParseError;

use crate::bus::BusKind;
use crate::design::Design;
use crate::script::{Op, TransportKind};
use std::sync::Arc;

/// Scenario files may run at most this many spawned threads (loom's limit; `main` does not count).
pub const MAX_THREADS: usize = 4;

/// A parsed scenario file.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The scenario's name (`scenario NAME`).
    pub name: String,
    /// What happens in it (`summary TEXT`).
    pub summary: String,
    /// Where it was read from (a path, or a name given to [`Scenario::parse`]).
    pub source: String,
    /// The rows to run.
    pub rows: Vec<RowSpec>,
    /// `option no-leak`: after the end-of-run checks, tear everything down and check `no-leak`.
    pub no_leak: bool,
    /// `option undrained`: the devices may not read everything sent to them, so a posted write
    /// nobody read is not called lost.
    pub undrained: bool,
    /// The sequential setup.
    pub setup: Vec<Line>,
    /// The threads, in file order (`main`, if any, runs on the checker's main thread).
    pub threads: Vec<ThreadSpec>,
    /// The user_data of every region the scenario registers (the devices answer these only).
    pub user_data: Vec<u64>,
}

/// One row of a scenario: a design with knob overrides, its label and its expected verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowSpec {
    /// The preset.
    pub design: Design,
    /// `NAME=VALUE` overrides, in order.
    pub overrides: Vec<(String, String)>,
    /// The row's label in tables and reports (`as LABEL`; default: the design, then the
    /// overrides).
    pub label: String,
    /// The expected verdict.
    pub expected: Expected,
    /// The line it was written on.
    pub line: usize,
}

/// One thread of a scenario.
#[derive(Clone, Debug)]
pub struct ThreadSpec {
    /// Its name (traces show it; `signal NAME` names a vCPU thread by it).
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Its lines, in order.
    pub lines: Vec<Line>,
    /// The header's line number.
    pub line: usize,
}

/// What a thread is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The thread of vCPU `id` of VM `vm`: its accesses go through KVM_RUN.
    Vcpu {
        /// The VM.
        vm: usize,
        /// The vCPU number.
        id: usize,
        /// `sigpipe=handled`: the thread does not ignore `SIGPIPE` (the default ignores it).
        sigpipe_handled: bool,
    },
    /// A device task on its own references to the device end of a transport.
    Device {
        /// Where it reads commands.
        cmd: FdRef,
        /// Where it writes responses.
        resp: FdRef,
    },
    /// Another thread of the VMM.
    Vmm,
    /// The checker's main thread, after it started the others (it may `join` them).
    Main,
}

/// A file descriptor as a scenario names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdRef {
    /// A number (as the script gives them out: the lowest free, from 3).
    Num(i32),
    /// `NAME.kernel`: the fd(s) KVM is given for channel `NAME`.
    Kernel(String),
    /// `NAME.device`: the fd(s) of the device's end of channel `NAME`.
    Device(String),
}

/// One line of a scenario, with where it was written and which designs it runs under.
#[derive(Clone, Debug)]
pub struct Line {
    /// Line number in the file, from 1.
    pub number: usize,
    /// The text (without a guard or comment).
    pub text: String,
    /// `@DESIGN[,DESIGN...]`: the line runs only under those presets.
    pub only: Option<Vec<Design>>,
    /// What it does.
    pub step: Step,
}

/// What one line does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A line of the script language (setup; VMM operations in threads).
    Script(Op),
    /// `channel NAME [seqpacket|stream|pipe|fifo] [buf=N]`: this design's transport (seed: an
    /// ioregionfd; else the kind given, seqpacket by default; `pipe` and `fifo` make a pair).
    Channel {
        /// The name later lines use.
        name: String,
        /// The kind (not seed).
        kind: TransportKind,
        /// Buffer bytes per direction.
        buf: Option<usize>,
    },
    /// `region VM BUS ADDR SIZE CHANNEL [user_data=N] [posted]`: KVM_SET_IOREGION in this
    /// design's form, on the channel's kernel end(s).
    Region {
        /// VM number.
        vm: usize,
        /// `mmio` or `pio`.
        bus: BusKind,
        /// Guest address or port.
        addr: u64,
        /// Size.
        size: u64,
        /// The channel.
        channel: String,
        /// user_data.
        user_data: u64,
        /// Posted writes.
        posted: bool,
    },
    /// `deassign VM BUS ADDR SIZE`: removes the region, in this design's form.
    Deassign {
        /// VM number.
        vm: usize,
        /// `mmio` or `pio`.
        bus: BusKind,
        /// Guest address or port.
        addr: u64,
        /// Size.
        size: u64,
    },
    /// `give NAME`: the device end goes to the device, which takes its own references; the VMM
    /// closes its copy (none under seed, where the device end is the kernel's fd).
    Give(String),
    /// `close FD|NAME.kernel|NAME.device`.
    Close(FdRef),
    /// A guest access through KVM_RUN (`read BUS ADDR LEN`, `write BUS ADDR LEN VALUE`), at most
    /// `runs` KVM_RUN calls; in setup, `read VM ...`/`write VM ...` by a sequential vCPU.
    Access {
        /// The VM (setup only).
        vm: Option<usize>,
        /// The access.
        access: crate::vm::GuestAccess,
        /// At most this many KVM_RUN calls.
        runs: usize,
    },
    /// `resume [runs=N]`: KVM_RUN again while the last one returned -EINTR.
    Resume(usize),
    /// `settle`: KVM_RUN again while -EINTR, twice at most; a third -EINTR is an endless loop.
    Settle,
    /// `park`: the thread stops calling KVM_RUN for good while its VM lives.
    Park,
    /// `expect OUTCOME [| OUTCOME...]`: how the previous line ended (`...` at the end: a prefix).
    Expect(Vec<String>),
    /// `signal THREAD`: a signal to that vCPU thread.
    Signal(String),
    /// `run-page THREAD exit_reason=N|intr|mmio|io`: the VMM writes the vCPU's `run->exit_reason`.
    RunPage(String, u32),
    /// `destroy-vm VM`: once every vCPU thread of the VM is out of KVM_RUN for good, the VM is
    /// destroyed (its buses, devices and regions, then its vCPUs).
    DestroyVm(usize),
    /// `exit`: process exit, once every other vCPU thread is out of KVM_RUN for good: every VM
    /// destroyed, every fd closed.
    Exit,
    /// `join THREAD` (main only): waits for that thread to finish.
    Join(String),
    /// `serve N` (device): answers up to N commands.
    Serve(usize),
    /// `receive` (device): reads one command.
    Receive,
    /// `answer` (device): answers the command received.
    Answer,
    /// `close` or `die` (device): the device puts its references (closes its end, or its
    /// process dies).
    DeviceClose {
        /// `die` rather than `close` (only the trace differs).
        dies: bool,
    },
}

impl Scenario {
    /// Parses a scenario; `source` names it in errors. Errors name their line; nothing panics.
    pub fn parse(text: &str, source: &str) -> Result<Scenario, ParseError> {
        parse::parse(text, source)
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &std::path::Path) -> Result<Scenario, ParseError> {
        let text = std::fs::read_to_string(path).map_err(|e| ParseError {
            source: path.display().to_string(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The scenario's rows, ready to run (each with its knobs).
    pub fn rows(&self) -> Result<Vec<Row>, ParseError> {
        self.rows_with(&[])
    }

    /// The rows with `extra` knob overrides applied after each row's own; a row with extra
    /// overrides is labelled with them.
    pub fn rows_with(&self, extra: &[(String, String)]) -> Result<Vec<Row>, ParseError> {
        let me = Arc::new(self.clone());
        self.rows
            .iter()
            .map(|r| {
                let knobs = r
                    .design
                    .knobs()
                    .with_overrides(&r.overrides)
                    .and_then(|k| k.with_overrides(extra))
                    .map_err(|m| ParseError { source: self.source.clone(), line: r.line, message: m })?;
                let mut label = r.label.clone();
                for (n, v) in extra {
                    label.push_str(&format!("+{n}={v}"));
                }
                Ok(Row {
                    name: self.name.clone(),
                    summary: self.summary.clone(),
                    label,
                    design: r.design,
                    expected: r.expected.clone(),
                    run: check::RowRun::File { scenario: me.clone(), knobs },
                })
            })
            .collect()
    }
}
