// SPDX-License-Identifier: MIT OR Apache-2.0
//! The README's copies of `ioregionfd-model --help` and of every subcommand's `--help` are the
//! real output (each is a code block whose first line is `$ ioregionfd-model ... --help`).
//! After a change of the command line: `UPDATE_README=1 cargo test --test readme_help`, then
//! read the diff.

use std::path::Path;
use std::process::Command;

const COMMANDS: [&[&str]; 6] = [&[], &["script"], &["invariants"], &["knobs"], &["conform"], &["bench"]];

/// The help text as the README holds it: trailing spaces dropped (clap indents blank lines).
fn help(words: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_ioregionfd-model"))
        .args(words)
        .arg("--help")
        .output()
        .expect("run ioregionfd-model");
    assert!(o.status.success(), "{words:?} --help failed");
    String::from_utf8(o.stdout).expect("UTF-8").lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

#[test]
fn readme_shows_the_real_help_of_every_subcommand() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let mut readme = std::fs::read_to_string(&path).expect("README.md");
    let update = std::env::var_os("UPDATE_README").is_some();
    let mut failures = Vec::new();
    for words in COMMANDS {
        let prompt = format!(
            "```\n$ {}\n",
            ["ioregionfd-model"].iter().chain(words).chain(&["--help"]).copied().collect::<Vec<_>>().join(" ")
        );
        let want = help(words);
        let Some(start) = readme.find(&prompt).map(|i| i + prompt.len()) else {
            failures.push(format!("README.md has no block starting {prompt:?}"));
            continue;
        };
        let end = start + readme[start..].find("```\n").expect("the block ends");
        if readme[start..end] != want {
            if update {
                readme.replace_range(start..end, &want);
            } else {
                failures.push(format!("{prompt:?}: README has\n{}--- the binary prints\n{want}", &readme[start..end]));
            }
        }
    }
    if update {
        std::fs::write(&path, &readme).expect("write README.md");
    }
    assert!(
        failures.is_empty(),
        "{}\n(UPDATE_README=1 cargo test --test readme_help rewrites them)",
        failures.join("\n")
    );
}
