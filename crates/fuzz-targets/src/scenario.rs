//! `scenario`: arbitrary bytes through the scenario parser (`src/scenario/parse.rs`).
//!
//! The input, at most [`MAX_TEXT`] bytes of it, is read as lossy UTF-8 text. The properties
//! checked:
//!
//! - [`Scenario::parse`] never panics;
//! - an error names a line of the text (from 1 to its number of lines; 0 only for what concerns
//!   the file as a whole: no name, no row, too many threads) and says what is wrong, and its
//!   `Display` starts with `SOURCE:LINE: `;
//! - a scenario that parses has a name, at least one row, at most four threads besides `main`,
//!   and every line it keeps has a number within the text; building its rows (knob overrides
//!   applied) never panics, and gives one row per `row` line, each labelled.
//!
//! The runner is not driven here: a scenario may block its threads by design (that is what
//! `cargo model` explores), and on real threads that would hang the fuzzer.

use ioregionfd_model::scenario::{MAX_THREADS, Role, Scenario};

/// The most bytes of text one input parses.
pub const MAX_TEXT: usize = 8192;

/// Runs one input; panics when the parser breaks a property of the module doc.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(&data[..data.len().min(MAX_TEXT)]);
    let lines = text.lines().count();
    match Scenario::parse(&text, "input") {
        Err(e) => {
            assert!(e.line <= lines, "error on line {} of a {lines}-line text: {e}", e.line);
            assert!(!e.message.is_empty(), "an error without a message at line {}", e.line);
            let shown = e.to_string();
            let prefix = if e.line == 0 { "input: ".to_string() } else { format!("input:{}: ", e.line) };
            assert!(shown.starts_with(&prefix), "{shown:?} does not start with {prefix:?}");
        }
        Ok(s) => {
            assert!(!s.name.is_empty() && !s.rows.is_empty(), "{s:?}");
            let spawned = s.threads.iter().filter(|t| t.role != Role::Main).count();
            assert!(spawned <= MAX_THREADS, "{spawned} threads");
            for l in s.setup.iter().chain(s.threads.iter().flat_map(|t| &t.lines)) {
                assert!((1..=lines).contains(&l.number), "line number {} of {lines}", l.number);
            }
            let rows = s.rows().expect("overrides were checked when the rows were parsed");
            assert_eq!(rows.len(), s.rows.len());
            assert!(rows.iter().all(|r| !r.label.is_empty() && r.name == s.name));
        }
    }
}

/// The scenario files of the catalogue (`models/scenarios/`), plus a few broken ones.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = super::repo_root().join("models/scenarios");
    let mut seeds: Vec<(String, Vec<u8>)> =
        super::read_dir_sorted(&dir, "scenario").into_iter().map(|(n, t)| (n, t.into_bytes())).collect();
    for (name, text) in [
        ("broken-unknown-verb", "scenario x\nrow proposed expect holds\nsetup\nvm\nfrobnicate\n"),
        (
            "broken-five-threads",
            "scenario x\nrow proposed expect holds\nthread a\nthread b\nthread c\nthread d\nthread e\n",
        ),
        ("broken-bad-knob", "scenario x\nrow proposed send_lock=sideways expect holds\n"),
        ("broken-line-after-park", "scenario x\nrow seed expect holds\nsetup\nvm\nthread v vcpu 0 0\npark\nresume\n"),
    ] {
        seeds.push((name.to_string(), text.as_bytes().to_vec()));
    }
    seeds
}
