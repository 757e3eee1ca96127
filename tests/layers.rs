//! The module layers of `src/` run one way: a module imports only from layers below its own.
//!
//! The table below is the diagram docs/design.md draws; this test reads every file of `src/`,
//! finds each `crate::MODULE` path outside comments and string literals (in `use` lines, `use
//! crate::{...}` groups, and paths written inline), and fails with the file and line of every
//! import that reaches up or sideways. Adding a module means adding it to the table.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom up. Modules on one line are beside each other and may not import from each other.
const LAYERS: &[&[&str]] = &[
    &["errno", "sync", "uapi"], // kernel error numbers, the concurrency facade, uAPI structures
    &["wire"],                  // the ioregionfd command and response formats
    &["design"],                // presets and knobs
    &["invariants"],            // the catalogue: ids and statements
    &["trace"],                 // events, violations, ghost message tags, object lifetimes
    &["fd"],                    // files, channels, eventfds, the fd table
    &["bus", "device"],         // kvm_io_bus, ioeventfd, coalesced MMIO, SRCU; the device side
    &["region"],                // what ioregion.c holds: registration, contexts, the transaction
    &["vcpu"],                  // struct kvm_vcpu as dispatch sees it
    &["vm"],                    // struct kvm: its buses, regions, KVM_RUN
    &["kvm"],                   // the system: VMs, files, devices
    &["script", "structure"],   // the line-oriented interface; the structural checks, incremental
    &["scenario"],              // the scenario language, its runner and checks
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for the crate root and the CLI).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// The text with comments and string/char literals blanked out (newlines kept, so line numbers
/// stay right).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let keep_newlines = |s: &[u8], out: &mut String| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p);
            keep_newlines(&b[i..end], &mut out);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
            keep_newlines(&b[i..end], &mut out);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            keep_newlines(&b[i..end], &mut out);
            i = end;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n'); a lifetime has no closing quote.
            let end = b[i + 1..].iter().position(|&c| c == b'\'').map_or(b.len(), |p| i + 1 + p + 1);
            let end = if b[i + 1] == b'\\' { end.max(i + 4) } else { end };
            keep_newlines(&b[i..end.min(b.len())], &mut out);
            i = end.min(b.len());
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Every module a piece of code names through `crate::`, with the line it is on.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && code.as_bytes()[at - 1].is_ascii_alphanumeric() {
            continue; // `$crate::`, `some_crate::`
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first identifier of every top-level item.
            let (mut depth, mut item_start) = (0, true);
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[k..]);
                        let item_line = line + group[..k].matches('\n').count();
                        found.push((item_line, name));
                    }
                    _ => {}
                }
            }
        } else {
            found.push((line, ident(rest)));
        }
    }
    found
}

#[test]
fn imports_run_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let Some(own) = layer_of(&module) else {
            wrong.push(format!("{}: module `{module}` is not in the LAYERS table", file.display()));
            continue;
        };
        seen.insert(module.clone());
        let text = std::fs::read_to_string(file).expect("a source file");
        let code = code_only(&text);
        // (`super::` in a top-level file would also reach the crate root; src/ writes `crate::`.)
        for (line, name) in crate_paths(&code) {
            if name == module || name == "self" {
                continue;
            }
            let rel = file.strip_prefix(root).unwrap_or(file).display().to_string();
            match layer_of(&name) {
                Some(l) if l < own => {}
                Some(l) => wrong.push(format!(
                    "{rel}:{line}: `{module}` (layer {own}) imports `crate::{name}` (layer {l}): {}",
                    if l == own { "beside it" } else { "above it" }
                )),
                None if name.chars().next().is_some_and(|c| c.is_uppercase()) => {} // a root re-export
                None => wrong.push(format!("{rel}:{line}: `crate::{name}` is not a module in the LAYERS table")),
            }
        }
    }
    assert!(wrong.is_empty(), "imports that do not run one way:\n{}", wrong.join("\n"));
    let listed: BTreeSet<String> = LAYERS.iter().flat_map(|l| l.iter().map(|m| m.to_string())).collect();
    let stale: Vec<_> = listed.difference(&seen).collect();
    assert!(stale.is_empty(), "LAYERS lists modules src/ does not have: {stale:?}");
}

#[test]
fn the_checker_sees_an_import_that_reaches_up() {
    // The scanner itself: an upward path in code is found, in a comment or a string it is not.
    let code = code_only(
        "use crate::{errno::Errno, vm::{Vm, Vcpu}};\n// crate::kvm\nlet s = \"crate::script\";\nlet x = crate::bus::X;\n",
    );
    let names: Vec<_> = crate_paths(&code);
    assert_eq!(names, vec![(1, "errno".to_string()), (1, "vm".to_string()), (4, "bus".to_string())]);
}
