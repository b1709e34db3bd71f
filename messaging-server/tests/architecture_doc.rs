//! docs/architecture.md names every source file of the messaging server in
//! its file table, so the map a newcomer reads cannot drift silently.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn every_source_file_has_a_row_in_the_architecture_table() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("../docs/architecture.md"))
        .expect("docs/architecture.md is readable");
    let table: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `")).collect();
    let mut files = Vec::new();
    sources(&root.join("src"), &root.join("src"), &mut files);
    assert!(files.len() > 20, "read only {files:?}");
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !f.ends_with("tests.rs"))
        .filter(|f| !table.iter().any(|row| row.starts_with(&format!("| `{f}`"))))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md has no row for {missing:?}"
    );
}
