//! An ioregionfd device served from non-blocking fds in an event loop (mio), as a VMM whose
//! device tasks share one loop would write it.
//!
//! The loop polls three things: the command fd (readable), the response fd (writable: a
//! response that found no room is kept and written when there is), and an exit event (a
//! `StopEvent`, the eventfd a VMM's control thread signals to stop its device tasks). On every
//! device event it calls `NonBlockingServer::process`, which serves until the fds would block
//! and keeps a command that arrived in pieces for the next event. mio is edge-triggered, and
//! that is all such a loop needs.
//!
//! Two ways to run it:
//!
//! ```text
//! cargo run --example event_loop_device          # a demo in one process (below)
//! cargo build --example event_loop_device        # or as a device process under the harness:
//! cargo run -- conform --transport all -- target/debug/examples/event_loop_device
//! ```
//!
//! Without `IOREGIONFD_CMD_FD` in the environment it plays both sides: a "vCPU" thread sends
//! commands over a stream socket in pieces of 1, 7 and 24 bytes, reads the responses, then
//! signals the exit event, and the loop stops. With the variable (a launcher passed the fds) it
//! serves them until the kernel side closes, with the exit status `serve_from_env` gives: 0 at
//! end of file between commands, 1 on any other end, 2 without usable fds.

use ioregionfd_model::device::{
    IoregionDevice, NonBlockingServer, Progress, ScratchMemory, StopEvent, Transport, TransportKind, connect,
};
use ioregionfd_model::wire::{Command, Direction, WireFormat};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::error::Error;
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::time::Duration;

const COMMANDS: Token = Token(0);
const RESPONSES: Token = Token(1);
const EXIT: Token = Token(2);

/// Why the loop ended.
#[derive(Debug)]
enum Ended {
    /// The kernel side closed its end between commands.
    Closed,
    /// The exit event fired.
    Stopped,
}

/// The device task: serves `device` on `server` until the kernel side closes or `exit` fires.
fn run_loop(
    server: &mut NonBlockingServer,
    device: &mut dyn IoregionDevice,
    exit: &StopEvent,
    verbose: bool,
) -> Result<Ended, Box<dyn Error>> {
    let mut poll = Poll::new()?;
    let (cmd, resp) = (server.cmd_fd().as_raw_fd(), server.resp_fd().as_raw_fd());
    if cmd == resp {
        // A socket: one fd for both directions, registered once.
        poll.registry().register(&mut SourceFd(&cmd), COMMANDS, Interest::READABLE | Interest::WRITABLE)?;
    } else {
        poll.registry().register(&mut SourceFd(&cmd), COMMANDS, Interest::READABLE)?;
        poll.registry().register(&mut SourceFd(&resp), RESPONSES, Interest::WRITABLE)?;
    }
    poll.registry().register(&mut SourceFd(&exit.as_fd().as_raw_fd()), EXIT, Interest::READABLE)?;
    let mut events = Events::with_capacity(16);
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r?,
        }
        if events.iter().any(|e| e.token() == EXIT) {
            return Ok(Ended::Stopped);
        }
        // Any other event: readable commands or room for a response. Serve until the fds
        // would block (edge-triggered: the next event comes when something changes).
        let progress = server.process(device)?;
        if verbose {
            let s = server.summary();
            eprintln!(
                "device: {progress:?}; {} commands, {} responses, {} bytes of a command kept",
                s.commands,
                s.responses,
                server.partial_len()
            );
        }
        if progress == Progress::Closed {
            return Ok(Ended::Closed);
        }
    }
}

/// A device process started by a launcher: the fds come from the environment.
fn serve_env() -> ExitCode {
    let transport = match Transport::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("event_loop_device: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = NonBlockingServer::new(transport).map_err(Box::<dyn Error>::from).and_then(|mut server| {
        let exit = StopEvent::new()?; // nobody signals it here: the loop ends at end of file
        run_loop(&mut server, &mut ScratchMemory::default(), &exit, false)
    });
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("event_loop_device: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Both sides in one process: a vCPU thread sends commands in pieces, then signals the exit
/// event.
fn demo() -> Result<(), Box<dyn Error>> {
    let (kernel, transport) = connect(TransportKind::Stream, WireFormat::V3)?;
    let mut server = NonBlockingServer::new(transport)?;
    let exit = StopEvent::new()?;
    let control = exit.try_clone()?;
    let vcpu = std::thread::spawn(move || -> Result<(), String> {
        let write = Command {
            direction: Direction::Write,
            size_exponent: 2,
            resp: true,
            user_data: 1,
            offset: 8,
            data: 0xfeed,
        };
        let read = Command { direction: Direction::Read, data: 0, ..write };
        for cmd in [write, read] {
            let image = cmd.encode(WireFormat::V3);
            let mut at = 0;
            for piece in [1, 7, 24] {
                println!("vcpu: sends bytes {at}..{} of `{cmd}`", at + piece);
                kernel.send_bytes(&image[at..at + piece]).map_err(|e| e.to_string())?;
                at += piece;
                std::thread::sleep(Duration::from_millis(20)); // the loop turns meanwhile
            }
            let response = kernel.recv_response(Duration::from_secs(5)).map_err(|e| e.to_string())?;
            println!("vcpu: response {:#x}", response.data);
        }
        println!("vcpu: signals the exit event");
        control.stop().map_err(|e| e.to_string())
    });
    let ended = run_loop(&mut server, &mut ScratchMemory::default(), &exit, true)?;
    vcpu.join().map_err(|_| "the vcpu thread panicked")??;
    println!("device loop ended: {ended:?} after {}", server.summary());
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var_os(ioregionfd_model::device::ENV_CMD_FD).is_some() {
        return serve_env();
    }
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("event_loop_device: {e}");
            ExitCode::FAILURE
        }
    }
}
