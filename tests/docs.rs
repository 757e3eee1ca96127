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
