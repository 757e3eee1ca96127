//! The documentation pages that restate the code are checked against it.

use ioregionfd_model::invariants::CATALOGUE;

#[test]
fn invariants_page_lists_every_invariant_with_its_statement() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/invariants.md"))
        .expect("docs/invariants.md");
    for inv in CATALOGUE {
        let row = format!("| `{}` | {} |", inv.id, inv.statement);
        assert!(
            page.contains(&row),
            "docs/invariants.md lacks or misstates `{}`: expected a row starting {row}",
            inv.id
        );
    }
    let rows = page.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(rows, CATALOGUE.len(), "docs/invariants.md has rows for invariants the code does not have");
}

/// The scenario a reviewer is told to copy from the README: the first code block after
/// "#### Writing a scenario".
pub fn readme_scenario() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let section =
        readme.split("#### Writing a scenario").nth(1).expect("the README has a `Writing a scenario` section");
    let block = section.split("```").nth(1).expect("a code block in it");
    block.trim_start_matches('\n').to_string()
}

#[test]
fn readme_scenario_parses_and_runs_under_every_design() {
    let text = readme_scenario();
    let s = ioregionfd_model::scenario::Scenario::parse(&text, "README.md").unwrap_or_else(|e| panic!("{e}"));
    let designs: Vec<&str> = s.rows.iter().map(|r| r.design.name()).collect();
    assert_eq!(designs, ["seed", "rfc-v3", "proposed"]);
    // `cargo model` explores it (CI runs the block); here, proposed's row once on real threads.
    let rows = s.rows().expect("rows");
    ioregionfd_model::scenario::check::run_once(&rows[2]).expect("proposed holds in one execution");
}
