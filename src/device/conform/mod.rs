//! The conformance suite behind `ioregionfd-model conform`: plays the kernel side over real fds
//! against a device (a child process or a thread) and checks the protocol.
//!
//! Every check prints one line (`ok   NAME: detail` or `FAIL NAME: what went wrong`). The suite
//! covers every access size in both directions, posted and non-posted writes, several regions
//! (`user_data` values that differ only in their high bits) and offsets, in-order delivery of
//! bursts and of pipelined reads, that posted writes get no reply, that every response is
//! exactly 32 bytes with zero padding, a long random sequence against a reference, and what the
//! device does when the kernel side closes (idle, after posted writes, in the middle of a
//! command). Value checks assume memory semantics: a read returns the low `size` bytes of the
//! last value written at the same region and offset (0 if none); turn them off with
//! [`conform::Options::memory`](crate::device::conform::Options::memory) for devices that are not memory-like.
//!
//! A device that fails a check is restarted for the next one (a broken reply can leave the
//! stream out of step), so each failure is reported on its own.
//!
//! ```
//! use ioregionfd_model::device::conform::{run, Launch, Options};
//! use ioregionfd_model::device::{MemoryDevice, TransportKind};
//! use ioregionfd_model::wire::WireFormat;
//! use std::time::Duration;
//! let options = Options { quiet: Duration::from_millis(5), ..Options::new(WireFormat::V3, TransportKind::Seqpacket) };
//! let mut out = Vec::new();
//! let summary = run(&options, &Launch::Thread(|| Box::new(MemoryDevice::default())), &mut out).unwrap();
//! assert_eq!(summary.failed, 0, "{}", String::from_utf8_lossy(&out));
//! assert!(summary.passed > 20);
//! ```

mod checks;

use super::real::inherit_on_exec;
use super::{
    ENV_CMD_FD, ENV_FORMAT, ENV_RESP_FD, ENV_TRANSPORT, IoregionDevice, KernelSide, ServeError, ServeSummary,
    TransportKind, connect, serve,
};
use crate::wire::WireFormat;
use checks::{CLOSE, Ctx, run_close, session_checks};
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to check, and how patiently.
///
/// ```
/// use ioregionfd_model::device::conform::Options;
/// use ioregionfd_model::device::TransportKind;
/// use ioregionfd_model::wire::WireFormat;
/// let o = Options::new(WireFormat::Seed, TransportKind::Pipe);
/// assert!(o.memory);
/// assert_eq!(o.timeout.as_millis(), 1000);
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    /// The wire format to speak.
    pub format: WireFormat,
    /// The transport to connect the device with.
    pub transport: TransportKind,
    /// How long to wait for a response (and for the device to exit once the kernel side
    /// closed).
    pub timeout: Duration,
    /// How long to listen for a reply that must not come (after a posted write).
    pub quiet: Duration,
    /// Check values with memory semantics (see the module documentation).
    pub memory: bool,
    /// Run only the checks whose name contains this.
    pub only: Option<String>,
}

impl Options {
    /// The defaults for `format` over `transport`: 1 s timeout, 50 ms quiet window, memory
    /// checks on, every check.
    ///
    /// ```
    /// use ioregionfd_model::device::conform::Options;
    /// use ioregionfd_model::device::TransportKind;
    /// use ioregionfd_model::wire::WireFormat;
    /// assert_eq!(Options::new(WireFormat::V3, TransportKind::Fifo).quiet.as_millis(), 50);
    /// ```
    pub fn new(format: WireFormat, transport: TransportKind) -> Options {
        Options {
            format,
            transport,
            timeout: Duration::from_secs(1),
            quiet: Duration::from_millis(50),
            memory: true,
            only: None,
        }
    }
}

/// How to start the device under test.
///
/// ```
/// use ioregionfd_model::device::conform::Launch;
/// use ioregionfd_model::device::MemoryDevice;
/// let thread = Launch::Thread(|| Box::new(MemoryDevice::default()));
/// let process = Launch::Command(vec!["./my-device".into(), "--verbose".into()]);
/// assert_eq!(process.to_string(), "./my-device --verbose");
/// assert_eq!(thread.to_string(), "an in-process device thread");
/// ```
pub enum Launch {
    /// A program and its arguments, started once per device session with the fds inherited
    /// and named in the environment: `IOREGIONFD_CMD_FD`, `IOREGIONFD_RESP_FD`,
    /// `IOREGIONFD_FORMAT`, `IOREGIONFD_TRANSPORT`. Its standard output goes to the
    /// harness's standard error; its standard input is empty.
    Command(Vec<OsString>),
    /// A device served with [`serve`] on a thread of this process.
    Thread(fn() -> Box<dyn IoregionDevice>),
}

impl fmt::Display for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Launch::Command(argv) => {
                let words: Vec<_> = argv.iter().map(|a| a.to_string_lossy()).collect();
                f.write_str(&words.join(" "))
            }
            Launch::Thread(_) => f.write_str("an in-process device thread"),
        }
    }
}

/// Counts of one [`run`].
///
/// ```
/// use ioregionfd_model::device::conform::Summary;
/// let s = Summary { passed: 3, failed: 1 };
/// assert!(!s.ok());
/// assert_eq!(s.to_string(), "3 passed, 1 failed");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Checks that passed.
    pub passed: usize,
    /// Checks that failed.
    pub failed: usize,
}

impl Summary {
    /// No check failed.
    ///
    /// ```
    /// assert!(ioregionfd_model::device::conform::Summary { passed: 1, failed: 0 }.ok());
    /// ```
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

enum Device {
    Child(Child),
    Thread(JoinHandle<Result<ServeSummary, ServeError>>),
}

/// How a device ended.
enum Ended {
    Status(std::process::ExitStatus),
    Served(Result<ServeSummary, ServeError>),
    Panicked,
    /// A device thread that finished (its result is read when it is joined).
    ThreadDone,
    StillRunning,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Status(s) => match (s.code(), s.signal()) {
                (Some(c), _) => write!(f, "exited with status {c}"),
                (None, Some(sig)) => write!(f, "was killed by signal {sig}"),
                _ => write!(f, "ended ({s})"),
            },
            Ended::Served(Ok(s)) => write!(f, "serve returned Ok after {s}"),
            Ended::Served(Err(e)) => write!(f, "serve returned an error: {e}"),
            Ended::Panicked => f.write_str("thread panicked"),
            Ended::ThreadDone => f.write_str("thread has ended"),
            Ended::StillRunning => f.write_str("is still running"),
        }
    }
}

impl Ended {
    /// A clean stop: exit status 0, or serve returning `Ok`.
    fn clean(&self) -> bool {
        match self {
            Ended::Status(s) => s.success(),
            Ended::Served(r) => r.is_ok(),
            _ => false,
        }
    }

    /// Stopped on its own, by an exit or a return (not a signal, not a panic, not a hang).
    fn stopped(&self) -> bool {
        match self {
            Ended::Status(s) => s.code().is_some(),
            Ended::Served(_) => true,
            _ => false,
        }
    }
}

impl Device {
    /// How it ended, if it has.
    fn poll(&mut self) -> Option<Ended> {
        match self {
            Device::Child(c) => match c.try_wait() {
                Ok(Some(s)) => Some(Ended::Status(s)),
                _ => None,
            },
            Device::Thread(h) => h.is_finished().then_some(Ended::ThreadDone),
        }
    }

    /// Waits up to `timeout` for it to end; kills a child that does not.
    fn finish(self, timeout: Duration) -> Ended {
        let deadline = Instant::now() + timeout;
        match self {
            Device::Child(mut c) => loop {
                if let Ok(Some(s)) = c.try_wait() {
                    return Ended::Status(s);
                }
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Ended::StillRunning;
                }
                std::thread::sleep(Duration::from_millis(1));
            },
            Device::Thread(h) => loop {
                if h.is_finished() {
                    return match h.join() {
                        Ok(r) => Ended::Served(r),
                        Err(_) => Ended::Panicked,
                    };
                }
                if Instant::now() >= deadline {
                    // A thread cannot be killed: leave it; it ends when its fds do.
                    return Ended::StillRunning;
                }
                std::thread::sleep(Duration::from_millis(1));
            },
        }
    }
}

struct Session {
    kernel: KernelSide,
    device: Device,
}

fn start(options: &Options, launch: &Launch) -> io::Result<Session> {
    let (kernel, transport) = connect(options.transport, options.format)?;
    let device = match launch {
        Launch::Thread(make) => {
            let mut dev = make();
            Device::Thread(std::thread::spawn(move || serve(&transport, dev.as_mut())))
        }
        Launch::Command(argv) => {
            let Some((program, args)) = argv.split_first() else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "no device command given"));
            };
            let cmd_fd: RawFd = transport.cmd_fd().as_raw_fd();
            let resp_fd: RawFd = transport.resp_fd().as_raw_fd();
            let stdout = io::stderr().lock();
            let out: Stdio = match std::os::fd::AsFd::as_fd(&stdout).try_clone_to_owned() {
                Ok(fd) => fd.into(),
                Err(_) => Stdio::null(),
            };
            drop(stdout);
            let mut command = std::process::Command::new(program);
            command
                .args(args)
                .env(ENV_CMD_FD, cmd_fd.to_string())
                .env(ENV_RESP_FD, resp_fd.to_string())
                .env(ENV_FORMAT, options.format.name())
                .env(ENV_TRANSPORT, options.transport.name())
                .stdin(Stdio::null())
                .stdout(out);
            // The closure owns the device's end, so the parent's copies of its fds close when
            // `command` is dropped below, and the device is the only holder of its end (end of
            // file then reaches each side).
            let inherit = move || -> io::Result<()> {
                inherit_on_exec(transport.cmd_fd())?;
                inherit_on_exec(transport.resp_fd())
            };
            // SAFETY: the closure runs in the child between fork and exec; it makes two
            // fcntl(2) system calls per fd through rustix (async-signal-safe: no allocation, no
            // lock) and touches nothing else. (pre_exec itself is std's, hence the unsafe block.)
            unsafe {
                command.pre_exec(inherit);
            }
            let child = command
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("cannot start `{}`: {e}", program.to_string_lossy())))?;
            drop(command);
            Device::Child(child)
        }
    };
    Ok(Session { kernel, device })
}

/// Runs the suite once (one format, one transport) against devices started by `launch`,
/// writing one line per check to `out`. `Err` only when the device cannot be started at all
/// or `out` fails.
///
/// ```
/// use ioregionfd_model::device::conform::{run, Launch, Options};
/// use ioregionfd_model::device::{IoregionDevice, TransportKind};
/// use ioregionfd_model::wire::WireFormat;
/// // A device that ignores writes: memory checks fail, the protocol checks pass.
/// struct Zero;
/// impl IoregionDevice for Zero {
///     fn read(&mut self, _: u64, _: u64, _: usize) -> u64 { 0 }
///     fn write(&mut self, _: u64, _: u64, _: usize, _: u64) {}
/// }
/// let mut options = Options::new(WireFormat::Seed, TransportKind::Pipe);
/// options.quiet = std::time::Duration::from_millis(5);
/// let mut out = Vec::new();
/// let s = run(&options, &Launch::Thread(|| Box::new(Zero)), &mut out).unwrap();
/// assert!(s.failed > 0);
/// options.memory = false;
/// let s = run(&options, &Launch::Thread(|| Box::new(Zero)), &mut out).unwrap();
/// assert_eq!(s.failed, 0);
/// ```
pub fn run(options: &Options, launch: &Launch, out: &mut dyn Write) -> io::Result<Summary> {
    let mut summary = Summary::default();
    let selected = |name: &str| options.only.as_deref().is_none_or(|o| name.contains(o));
    let mut session: Option<Session> = None;
    let mut report = |out: &mut dyn Write, name: &str, r: Result<String, String>| -> io::Result<()> {
        match r {
            Ok(detail) => {
                summary.passed += 1;
                writeln!(out, "ok   {name}: {detail}")
            }
            Err(msg) => {
                summary.failed += 1;
                writeln!(out, "FAIL {name}: {msg}")
            }
        }
    };
    for (name, check, size) in session_checks() {
        if !selected(&name) {
            continue;
        }
        if session.is_none() {
            session = Some(start(options, launch)?);
        }
        let s = session.as_mut().expect("started above");
        let mut ctx = Ctx { kernel: &s.kernel, device: &mut s.device, options, round_trips: 0 };
        let r = (check.run)(&mut ctx, size);
        if r.is_err() {
            // The stream may be out of step now: the next check gets a fresh device.
            if let Some(Session { kernel, device }) = session.take() {
                drop(kernel);
                device.finish(options.timeout);
            }
        }
        report(out, &name, r)?;
    }
    if let Some(Session { kernel, device }) = session.take() {
        drop(kernel);
        device.finish(options.timeout);
    }
    for (name, case) in &CLOSE {
        if selected(name) {
            let r = run_close(options, launch, case);
            report(out, name, r)?;
        }
    }
    Ok(summary)
}
