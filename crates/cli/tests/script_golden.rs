//! Golden tests of the script CLI: each `tests/golden/NAME.script` runs through the real binary
//! and its standard output must equal `NAME.out`. A `# exit: N` line in the script gives the
//! expected exit code (default 0); a `# stderr: TEXT` line a text standard error must contain.
//!
//! Regenerate the `.out` files after an intended change with
//! `UPDATE_GOLDEN=1 cargo test --test script_golden`, then read the diff.

use std::path::Path;
use std::process::Command;

fn header(script: &str, key: &str) -> Option<String> {
    script.lines().find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string))
}

#[test]
fn golden_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/golden")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "script"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 5, "golden scripts missing: {scripts:?}");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for script in &scripts {
        let text = std::fs::read_to_string(script).expect("read script");
        let run = Command::new(env!("CARGO_BIN_EXE_ioregionfd-model")).arg("script").arg(script).output().expect("run");
        let stdout = String::from_utf8(run.stdout).expect("utf-8");
        let stderr = String::from_utf8(run.stderr).expect("utf-8");
        let golden = script.with_extension("out");
        if update {
            std::fs::write(&golden, &stdout).expect("write golden");
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        let name = script.file_name().unwrap().to_string_lossy();
        if stdout != expected {
            failures.push(format!("{name}: output differs\n--- expected\n{expected}--- got\n{stdout}"));
        }
        let code: i32 = header(&text, "exit").map_or(0, |c| c.parse().expect("exit code"));
        if run.status.code() != Some(code) {
            failures.push(format!("{name}: exit {:?}, expected {code}; stderr: {stderr}", run.status.code()));
        }
        if let Some(want) = header(&text, "stderr")
            && !stderr.contains(&want)
        {
            failures.push(format!("{name}: stderr {stderr:?} lacks {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn reads_standard_input_and_rejects_bad_arguments() {
    use std::io::Write;
    let bin = env!("CARGO_BIN_EXE_ioregionfd-model");
    let mut child = Command::new(bin)
        .args(["script", "--design", "rfc-v3", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().unwrap().write_all(b"vm\n\n# c\neventfd\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "vm 0\neventfd 3\n");
    assert!(out.status.success());

    let bad = Command::new(bin).args(["script", "--design", "v4"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8(bad.stderr).unwrap().contains("unknown design `v4`"));
    let missing = Command::new(bin).args(["script", "/nonexistent/x.script"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8(missing.stderr).unwrap().contains("cannot open /nonexistent/x.script"));
}
