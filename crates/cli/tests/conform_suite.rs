// SPDX-License-Identifier: MIT OR Apache-2.0
//! `ioregionfd-model conform` against real device processes: the example's device (the library's
//! `ScratchMemory` served by `serve_from_env`, what `examples/memory_device.rs` runs) and the
//! same memory served by a `NonBlockingServer` in a poll loop pass every check over every
//! transport in both formats; devices broken on purpose (a reply to a posted write, a short response, a
//! wrong user_data, an unclean exit) fail with clear messages; bad command lines exit with 2.
//!
//! The devices are this test binary run again: `conform` starts it with
//! `device_process --exact` and `IOREGIONFD_TEST_DEVICE` naming the device to be.

#![cfg(target_os = "linux")]

use ioregionfd_model::device::{
    IoregionDevice, MemoryDevice, NonBlockingServer, Progress, ScratchMemory, Transport, serve, serve_from_env,
};
use ioregionfd_model::wire::Response;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::process::{Command, ExitCode, Output};

const DEVICE_VAR: &str = "IOREGIONFD_TEST_DEVICE";

/// Not a test of its own: the entry point of the device processes (a no-op otherwise).
#[test]
fn device_process() {
    let Some(which) = std::env::var_os(DEVICE_VAR) else { return };
    let code = match which.to_str().unwrap_or("") {
        "example" => serve_from_env("memory_device", &mut ScratchMemory::default()),
        "nonblocking" => nonblocking_device(),
        other => broken_device(other),
    };
    let _ = std::io::stdout().flush();
    // (ExitCode cannot be turned into a number on stable; these are the codes the devices use.)
    let status = [0u8, 2, 3].into_iter().find(|&c| code == ExitCode::from(c)).map_or(1, i32::from);
    std::process::exit(status);
}

/// The library's NonBlockingServer in a poll(2) loop: the command fd always, the response fd
/// while a response waits for room. Exit status as `serve_from_env`'s.
fn nonblocking_device() -> ExitCode {
    use rustix::event::{PollFd, PollFlags, poll};
    let t = Transport::from_env().expect("the fds from the environment");
    let mut server = NonBlockingServer::new(t).expect("O_NONBLOCK");
    let mut memory = ScratchMemory::default();
    loop {
        match server.process(&mut memory) {
            Ok(Progress::Closed) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) => {
                eprintln!("nonblocking device: {e}");
                return ExitCode::FAILURE;
            }
        }
        let (cmd, resp) = (server.cmd_fd(), server.resp_fd());
        let mut fds = [PollFd::from_borrowed_fd(cmd, PollFlags::IN), PollFd::from_borrowed_fd(resp, PollFlags::OUT)];
        let n = if server.wants_write() { 2 } else { 1 };
        match poll(&mut fds[..n], None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("poll: {e}"),
        }
    }
}

fn write_raw(fd: BorrowedFd<'_>, bytes: &[u8]) {
    // SAFETY: writes `bytes.len()` bytes from a live buffer to an fd the transport owns.
    unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
}

/// A device with one defect, named by `which`.
fn broken_device(which: &str) -> ExitCode {
    let t = Transport::from_env().expect("the fds from the environment");
    let mut memory = MemoryDevice::default();
    if which == "unclean-exit" {
        return match serve(&t, &mut memory) {
            Ok(_) => ExitCode::from(3),
            Err(_) => ExitCode::FAILURE,
        };
    }
    while let Ok(Some(cmd)) = t.recv_command() {
        let user_data = if which == "wrong-user-data" { cmd.user_data & 0xffff_ffff } else { cmd.user_data };
        let value = match cmd.direction {
            ioregionfd_model::wire::Direction::Read => memory.read(user_data, cmd.offset, cmd.size()),
            ioregionfd_model::wire::Direction::Write => {
                memory.write(user_data, cmd.offset, cmd.size(), cmd.data);
                0
            }
        };
        let answer = cmd.wants_response() || which == "posted-reply";
        if !answer {
            continue;
        }
        let image = Response { data: value }.encode();
        if which == "short-response" {
            write_raw(t.resp_fd(), &image[..16]);
        } else if t.send_response(&Response { data: value }).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn conform(device: &str, flags: &[&str]) -> Output {
    let me = std::env::current_exe().expect("the test binary's path");
    Command::new(env!("CARGO_BIN_EXE_ioregionfd-model"))
        .arg("conform")
        .args(flags)
        .arg("--")
        .arg(me)
        .args(["device_process", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(DEVICE_VAR, device)
        .output()
        .expect("run ioregionfd-model conform")
}

fn text(o: &Output) -> String {
    format!("{}\n--- stderr ---\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn fail_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("FAIL")).map(str::to_string).collect()
}

#[test]
fn example_device_passes_every_check_everywhere() {
    let o = conform("example", &["--wire", "all", "--transport", "all", "--quiet-ms", "20"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(fail_lines(&o).is_empty(), "{out}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    // 8 combinations of format and transport, each with the whole suite.
    assert_eq!(stdout.matches("\n== format ").count() + usize::from(stdout.starts_with("== format ")), 8, "{out}");
    let last = stdout.lines().last().unwrap_or("");
    assert!(last.starts_with("conform: ") && last.ends_with(" passed, 0 failed"), "{out}");
    for check in [
        "posted-write/size-8",
        "user-data",
        "in-order/pipelined-reads",
        "response-size",
        "close/idle",
        "close/mid-command",
    ] {
        assert!(stdout.contains(&format!("ok   {check}: ")), "{check} missing:\n{out}");
    }
}

#[test]
fn the_nonblocking_server_passes_every_check_everywhere() {
    let o = conform("nonblocking", &["--wire", "all", "--transport", "all", "--quiet-ms", "20"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(fail_lines(&o).is_empty(), "{out}");
    let last = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("conform: ") && last.ends_with(" passed, 0 failed"), "{out}");
}

#[test]
fn a_reply_to_a_posted_write_fails_clearly() {
    let o = conform("posted-reply", &["--transport", "stream,seqpacket", "--quiet-ms", "30"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let fails = fail_lines(&o);
    assert!(
        fails.iter().any(|l| l.starts_with("FAIL posted-write/size-1: 32 unexpected bytes arrived")
            && l.contains("the device answered a posted write")),
        "{out}"
    );
    // Reads and non-posted writes are fine.
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok   write/size-4: "), "{out}");
    assert!(String::from_utf8_lossy(&o.stdout).ends_with("failed\n"), "{out}");
}

#[test]
fn a_short_response_fails_clearly() {
    let o =
        conform("short-response", &["--transport", "stream,seqpacket", "--timeout-ms", "150", "--only", "read/size-4"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let fails = fail_lines(&o);
    assert_eq!(fails.len(), 2, "{out}");
    assert!(fails[0].contains("short response: 16 of 32 bytes, then nothing for 150 ms"), "{out}");
    assert!(fails[1].contains("a response message of 16 bytes; a response is exactly 32"), "{out}");
    assert!(fails.iter().all(|l| l.contains("KVM reads a response with one 32-byte read")), "{out}");
}

#[test]
fn a_wrong_user_data_fails_clearly() {
    let o = conform("wrong-user-data", &["--transport", "pipe", "--only", "user-data"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let fails = fail_lines(&o);
    assert_eq!(fails.len(), 1, "{out}");
    assert!(fails[0].starts_with("FAIL user-data: a read of user_data 0x7 offset 0x18 returned"), "{out}");
    assert!(fails[0].contains("the device mixes up these regions"), "{out}");
}

#[test]
fn an_unclean_stop_fails_the_close_checks() {
    let o = conform("unclean-exit", &["--transport", "fifo", "--only", "close/"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let fails = fail_lines(&o);
    assert!(fails.iter().any(|l| l.starts_with("FAIL close/idle: ") && l.contains("exited with status 3")), "{out}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok   close/mid-command: "), "{out}");
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ioregionfd-model")).args(args).output().expect("run ioregionfd-model")
}

#[test]
fn bad_command_lines_exit_with_2_and_say_why() {
    let cases: &[(&[&str], &str)] = &[
        (&["conform"], "the following required arguments were not provided:\n  <COMMAND>..."),
        (&["conform", "--"], "the following required arguments were not provided:\n  <COMMAND>..."),
        (
            &["conform", "--transport", "tcp", "--", "true"],
            "unknown transport (stream, seqpacket, pipe, fifo, all) `tcp`",
        ),
        (&["conform", "--wire", "v4", "--", "true"], "unknown wire format (seed, v3, all) `v4`"),
        (&["conform", "--timeout-ms", "soon", "--", "true"], "invalid value 'soon' for '--timeout-ms <MS>'"),
        (&["conform", "--bogus", "--", "true"], "unexpected argument '--bogus'"),
        (&["conform", "--", "/nonexistent/device"], "cannot start `/nonexistent/device`"),
        (&["bench", "--only", "gpu"], "invalid value 'gpu' for '--only <TABLE>'"),
        (&["bench", "--svg"], "a value is required for '--svg <FILE>'"),
    ];
    for (args, message) in cases {
        let o = cli(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn a_device_that_exits_at_once_fails_every_check_with_its_status() {
    let o = conform("example", &["--transport", "seqpacket", "--only", "read/size-1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // `false` exits 1 at once, without reading anything.
    let o = Command::new(env!("CARGO_BIN_EXE_ioregionfd-model"))
        .args(["conform", "--transport", "stream", "--only", "read/size-1", "--", "false"])
        .output()
        .unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let fails = fail_lines(&o);
    assert!(fails[0].contains("exited with status 1"), "{out}");
}
