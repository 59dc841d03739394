//! The crate's layers import one way: `base` below everything; the model below the weight
//! file formats (it builds from a `base::WeightMap`); the file formats below the sampler
//! (`src/load.rs` joins them); the command-line program above all. A grep over the sources,
//! failing with every offending file:line.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `file:line: text` for each line of the sources under `dir` (relative to the crate root)
/// that mentions one of `needles` outside a comment.
fn offending(dir: &str, needles: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = sources(&root.join(dir));
    assert!(!files.is_empty(), "no sources under {dir}");
    let mut hits = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if needles.iter().any(|n| code.contains(n)) {
                let rel = file.strip_prefix(root).unwrap_or(&file);
                hits.push(format!("{}:{}: {}", rel.display(), i + 1, line.trim()));
            }
        }
    }
    hits
}

fn assert_none(what: &str, hits: Vec<String>) {
    assert!(hits.is_empty(), "{what}:\n{}", hits.join("\n"));
}

#[test]
fn the_weight_formats_do_not_import_the_sampler() {
    assert_none(
        "src/weights (file formats) imports the sampler; build generators in src/load.rs",
        offending(
            "src/weights",
            &["crate::sampler", "LoadedModel", "Generation"],
        ),
    );
}

#[test]
fn the_model_imports_neither_the_file_formats_nor_what_is_above_it() {
    assert_none(
        "src/model imports a layer above it",
        offending(
            "src/model",
            &[
                "crate::weights",
                "crate::sampler",
                "crate::cli",
                "crate::main",
                "disa::",
                "crate::load",
                "crate::web",
            ],
        ),
    );
}

#[test]
fn the_base_module_imports_only_the_error_type() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("src/base.rs")).expect("src/base.rs");
    let hits: Vec<String> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let code = l.split("//").next().unwrap_or_default();
            code.contains("crate::") && !code.contains("crate::error")
        })
        .map(|(i, l)| format!("src/base.rs:{}: {}", i + 1, l.trim()))
        .collect();
    assert_none("src/base.rs imports another module of the crate", hits);
}

#[test]
fn the_grep_finds_what_it_looks_for() {
    // The check above would pass vacuously if it read nothing: it must see known imports.
    assert!(!offending("src/weights", &["crate::model::MarConfig"]).is_empty());
    assert!(!offending("src/model", &["crate::base"]).is_empty());
}
