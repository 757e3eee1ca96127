// SPDX-License-Identifier: MIT OR Apache-2.0
//! The command line behaves as users expect: `--help` on every subcommand, `--version`,
//! `--flag=value`, exit codes (0 ok, 1 violation or failed check, 2 usage), and `--format json`
//! that parses as JSON.

use std::process::{Command, Output};

const SUBCOMMANDS: [&str; 5] = ["script", "invariants", "knobs", "conform", "bench"];

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ioregionfd-model")).args(args).output().expect("run ioregionfd-model")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_and_version_exit_0() {
    for sub in SUBCOMMANDS {
        for flag in ["--help", "-h"] {
            let o = run(&[sub, flag]);
            assert_eq!(o.status.code(), Some(0), "{sub} {flag}: {}", stderr(&o));
            assert!(stdout(&o).contains(&format!("Usage: ioregionfd-model {sub}")), "{sub} {flag}: {}", stdout(&o));
        }
        let o = run(&["help", sub]);
        assert_eq!(o.status.code(), Some(0), "help {sub}");
    }
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    for sub in SUBCOMMANDS {
        assert!(stdout(&o).contains(&format!("\n  {sub} ")), "{sub} missing from --help:\n{}", stdout(&o));
    }
    let o = run(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), format!("ioregionfd-model {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage: ioregionfd-model <COMMAND>"),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (&["invariants", "--format", "yaml"], "invalid value 'yaml' for '--format <FORMAT>'"),
        (&["knobs", "extra"], "unexpected argument 'extra'"),
        (&["script", "--design"], "a value is required for '--design <DESIGN>'"),
        (&["script", "--knob", "no_such_knob=1"], "unknown knob `no_such_knob`"),
        (&["script", "a.script", "b.script"], "unexpected argument 'b.script'"),
        (&["conform", "--wire", "seed,v4", "--", "true"], "unknown wire format (seed, v3, all) `v4`"),
        (&["conform", "--format", "seed", "--", "true"], "invalid value 'seed' for '--format <FORMAT>'"),
        (&["conform", "--quiet-ms", "3600001", "--", "true"], "not a number of milliseconds up to 3600000"),
        (&["bench", "--markdown", "--format", "json"], "cannot be used with"),
    ];
    for (args, message) in cases {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?} wrote to standard output: {}", stdout(&o));
    }
}

#[test]
fn flag_equals_value_is_the_same_as_two_words() {
    let dir = std::env::temp_dir().join(format!("ioregionfd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let script = dir.join("seed.script");
    // Only seed has the ioregionfd object: the output says which design ran.
    std::fs::write(&script, "ioregionfd\n").expect("write the script");
    let path = script.to_str().expect("a UTF-8 path");
    let default = run(&["script", path]);
    let two_words = run(&["script", "--design", "seed", "--knob", "send_lock=response-side", path]);
    let equals = run(&["script", "--design=seed", "--knob=send_lock=response-side", path]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((default.status.code(), stdout(&default)), (Some(0), "err EINVAL\n".to_string()));
    assert_eq!(two_words.status.code(), Some(0), "{}", stderr(&two_words));
    assert_eq!(stdout(&two_words), "fd 3\n");
    assert_eq!((equals.status.code(), stdout(&equals)), (Some(0), stdout(&two_words)));
}

#[test]
fn json_lists_parse_and_match_the_text() {
    let text = stdout(&run(&["invariants"]));
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["invariants", "--format", "json"]).stdout).expect("JSON");
    let list = json.as_array().expect("an array");
    assert_eq!(list.len(), text.lines().count());
    for (record, line) in list.iter().zip(text.lines()) {
        let (id, statement) = (record["id"].as_str().expect("id"), record["statement"].as_str().expect("statement"));
        assert_eq!(line, format!("{id:<10} {statement}"));
    }
    let json: serde_json::Value = serde_json::from_slice(&run(&["knobs", "--format=json"]).stdout).expect("JSON");
    let knobs = json.as_array().expect("an array");
    assert!(!knobs.is_empty());
    for k in knobs {
        assert!(k["name"].is_string() && k["doc"].is_string() && k["values"].is_array(), "{k}");
        for design in ["seed", "rfc-v3", "proposed"] {
            assert!(k["presets"][design].is_string(), "{k}");
        }
    }
}

/// A device that exits at once fails its checks: exit 1, and the JSON says which and why.
#[cfg(target_os = "linux")]
#[test]
fn conform_json_reports_every_check() {
    let o = run(&["conform", "--format", "json", "--transport", "stream", "--only", "read/size-1", "--", "false"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on standard output");
    assert_eq!(json["ok"], false);
    assert_eq!((json["passed"].as_u64(), json["failed"].as_u64()), (Some(0), Some(1)));
    let run = &json["runs"][0];
    assert_eq!((run["wire"].as_str(), run["transport"].as_str()), (Some("v3"), Some("stream")));
    let check = &run["checks"][0];
    assert_eq!((check["name"].as_str(), check["ok"].as_bool()), (Some("read/size-1"), Some(false)));
    assert!(check["detail"].as_str().expect("detail").contains("exited with status 1"), "{check}");
}

#[cfg(target_os = "linux")]
#[test]
fn bench_json_has_the_tables_and_the_measurements() {
    let o = run(&["bench", "--quick", "--only", "bus", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on standard output");
    assert!(json["machine"].is_string() && json["seconds"].is_number(), "{json}");
    let tables = json["tables"].as_array().expect("tables");
    assert_eq!(tables.len(), 1, "{json}");
    assert!(tables[0]["title"].as_str().expect("title").starts_with("Bus lookup"), "{json}");
    let measurements = json["measurements"].as_array().expect("measurements");
    assert!(!measurements.is_empty());
    assert!(measurements.iter().all(|m| m["median_ns"].as_f64().is_some_and(|ns| ns > 0.0)), "{json}");
}

/// `script --echo --trace`: each operation, then the events it recorded, its result and the
/// violations it caused, in that order; without the flags only results and violations.
#[test]
fn script_echo_and_trace_keep_each_operation_with_its_lines() {
    let dir = std::env::temp_dir().join(format!("ioregionfd-cli-echo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("overlap.script");
    std::fs::write(
        &script,
        "vm\nsocketpair\nioregion 0 mmio 0x1000 8 3 3 user_data=1\nioregion 0 mmio 0x1007 8 3 3 user_data=2\n",
    )
    .unwrap();
    let path = script.to_str().unwrap();
    let plain = stdout(&run(&["script", "--design", "rfc-v3", path]));
    let traced = stdout(&run(&["script", "--design", "rfc-v3", "--echo", "--trace", path]));
    let _ = std::fs::remove_dir_all(&dir);
    let kept: Vec<&str> = traced.lines().filter(|l| !l.starts_with("> ") && !l.starts_with("  | ")).collect();
    assert_eq!(kept, plain.lines().collect::<Vec<_>>(), "the flags add lines, never change the others");
    let second = traced.find("> ioregion 0 mmio 0x1007").expect("the operation is echoed");
    let after = &traced[second..];
    let event = after.find("  | 9 main vm0: register ioregion#2").expect("its events follow it");
    let result = after.find("\nok\n").expect("then its result");
    let violation = after.find("violation overlap").expect("then the violation it caused");
    assert!(event < result && result < violation, "{after}");
}
