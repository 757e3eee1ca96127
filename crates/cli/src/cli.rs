// SPDX-License-Identifier: MIT OR Apache-2.0
//! The command line's grammar (clap, derive): the subcommands, their options and the parsers of
//! the option values. Parsing errors exit with 2, `--help` and `--version` with 0.

use clap::{Args, Parser, Subcommand, ValueEnum};
use ioregionfd_model::design::{Design, parse_override};
use std::ffi::OsString;
use std::path::PathBuf;

/// The model of ioregionfd and of KVM's in-kernel I/O bus, on the command line
///
/// Exit status: 0 when all is well, 1 when an invariant was violated or a check failed,
/// 2 on a bad command line (or a script line that does not parse, or a device that
/// cannot be started).
#[derive(Debug, Parser)]
#[command(name = "ioregionfd-model", version, arg_required_else_help = true, verbatim_doc_comment)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. The first paragraph of each is its line in `--help`; its own `--help` shows
/// all of it, line breaks as written (clap does not wrap without its `wrap_help` feature).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a script: one operation per line, one result line each
    ///
    /// Reads FILE, or standard input when FILE is `-` or absent; the language is in the
    /// README ("The script CLI"). Exit status: 1 if an invariant was violated, 2 on a line
    /// that does not parse (its line number on standard error; nothing after it runs) or
    /// a bad option.
    #[command(verbatim_doc_comment)]
    Script(ScriptArgs),
    /// Print the invariant catalogue (id and statement).
    Invariants(ListArgs),
    /// Print every knob: what it decides, its values, and its value in each preset.
    Knobs(ListArgs),
    /// Play KVM's side against a device program and check it keeps the ioregionfd protocol
    ///
    /// Starts COMMAND as the device, once per session (again after a failed check), with
    /// its fds in IOREGIONFD_CMD_FD and IOREGIONFD_RESP_FD (wire format in IOREGIONFD_FORMAT,
    /// transport in IOREGIONFD_TRANSPORT), and prints one line per check, then a summary.
    /// Exit status: 1 if a check failed, 2 on a bad command line or a device that cannot be
    /// started.
    #[command(verbatim_doc_comment)]
    Conform(ConformArgs),
    /// Quick benchmark tables: transport round trips, real-KVM access paths, bus lookup
    ///
    /// Round trips of a 32-byte command and response over each transport (pinned to one
    /// CPU, then across two), the guest access paths on /dev/kvm (skipped without it) and
    /// bus lookup. The criterion versions: cargo bench.
    #[command(verbatim_doc_comment)]
    Bench(BenchArgs),
}

/// How a report is printed: for people (lines and tables) or as one JSON document.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// `script`.
#[derive(Debug, Args)]
pub struct ScriptArgs {
    /// The preset (seed, rfc-v3 or proposed); a `design` line in the script also sets it
    #[arg(long, value_name = "DESIGN", default_value_t = Design::default(), value_parser = design)]
    pub design: Design,
    /// Override one knob of the preset (repeatable; `ioregionfd-model knobs` lists them)
    #[arg(long = "knob", value_name = "NAME=VALUE", value_parser = knob)]
    pub knobs: Vec<(String, String)>,
    /// Print each operation (`> LINE`) before its result
    #[arg(long)]
    pub echo: bool,
    /// Print the trace events each operation recorded (`  | EVENT`) before its result
    #[arg(long)]
    pub trace: bool,
    /// The script (`-`: standard input)
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// `invariants` and `knobs`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output: text, or json (an array of records)
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `conform`.
#[derive(Debug, Args)]
pub struct ConformArgs {
    /// Wire formats to speak: seed, v3, comma-separated, or all
    #[arg(long, value_name = "FORMATS", default_value = "v3", value_parser = wires)]
    pub wire: Wires,
    /// Transports: stream, seqpacket, pipe, fifo, comma-separated, or all
    #[arg(long, value_name = "KINDS", default_value = "all", value_parser = transports)]
    pub transport: Transports,
    /// How long to wait for a response or an exit, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = millis)]
    pub timeout_ms: u64,
    /// How long to listen for a reply that must not come, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 50, value_parser = millis)]
    pub quiet_ms: u64,
    /// Check the framing only, not values (for devices without memory semantics)
    #[arg(long)]
    pub protocol_only: bool,
    /// Run only the checks whose name contains TEXT
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,
    /// Output: text (as the checks run), or json (one document at the end)
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// The device program and its arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Fewer rounds (a few seconds)
    #[arg(long)]
    pub quick: bool,
    /// Only this table (repeatable)
    #[arg(long, value_enum, value_name = "TABLE")]
    pub only: Vec<BenchTable>,
    /// Print the tables as markdown
    #[arg(long, conflicts_with = "format")]
    pub markdown: bool,
    /// Also draw the round-trip and KVM tables as an SVG chart
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Output: text, or json (the tables and every measurement, in nanoseconds)
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// A table of `bench`: transport round trips, the access paths on /dev/kvm, bus lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchTable {
    Transports,
    Kvm,
    Bus,
}

/// Wire formats, in the order given.
#[derive(Clone, Debug)]
pub struct Wires(pub Vec<ioregionfd_model::wire::WireFormat>);

/// Transports, in the order given.
#[derive(Clone, Debug)]
pub struct Transports(pub Vec<String>);

fn design(name: &str) -> Result<Design, String> {
    Design::from_name(name).ok_or_else(|| format!("unknown design `{name}`: seed, rfc-v3 or proposed"))
}

fn knob(text: &str) -> Result<(String, String), String> {
    parse_override(text)
}

/// A comma-separated list of names, or `all`.
fn list<T: Copy>(value: &str, all: &[T], parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<Vec<T>, String> {
    if value == "all" {
        return Ok(all.to_vec());
    }
    value.split(',').map(|n| parse(n.trim()).ok_or_else(|| format!("unknown {what} `{n}`"))).collect()
}

fn wires(value: &str) -> Result<Wires, String> {
    use ioregionfd_model::wire::WireFormat;
    list(value, &[WireFormat::Seed, WireFormat::V3], WireFormat::from_name, "wire format (seed, v3, all)").map(Wires)
}

/// The transports are checked by name here (the device library's kinds exist on Linux only).
fn transports(value: &str) -> Result<Transports, String> {
    const ALL: [&str; 4] = ["stream", "seqpacket", "pipe", "fifo"];
    let known = |n: &str| ALL.iter().copied().find(|&k| k == n);
    list(value, &ALL, known, "transport (stream, seqpacket, pipe, fifo, all)")
        .map(|v| Transports(v.into_iter().map(String::from).collect()))
}

fn millis(value: &str) -> Result<u64, String> {
    value
        .parse::<u64>()
        .ok()
        .filter(|&n| n <= 3_600_000)
        .ok_or_else(|| "not a number of milliseconds up to 3600000".into())
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The defaults `conform --help` shows are the library's.
    #[cfg(target_os = "linux")]
    #[test]
    fn conform_defaults_are_the_librarys() {
        use ioregionfd_model::device::TransportKind;
        use ioregionfd_model::device::conform::Options;
        use ioregionfd_model::wire::WireFormat;
        let o = Options::new(WireFormat::V3, TransportKind::Stream);
        let cmd = Cli::command();
        let conform = cmd.find_subcommand("conform").expect("conform");
        let default = |id: &str| {
            let arg = conform.get_arguments().find(|a| a.get_id() == id).expect(id);
            arg.get_default_values()[0].to_string_lossy().into_owned()
        };
        assert_eq!(default("timeout_ms"), o.timeout.as_millis().to_string());
        assert_eq!(default("quiet_ms"), o.quiet.as_millis().to_string());
        let names: Vec<&str> = TransportKind::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(super::transports("all").expect("all").0, names);
    }
}
