//! The layering of the runtime's modules, as `docs/architecture.md` states
//! it: its module table lists the modules from the bottom up, and a module
//! may import only modules listed above it (lower ones). This reads the
//! table and the sources (comments and unit-test modules aside), so the
//! document cannot drift from the code and a new cycle fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// Top-level module names in the order of the docs' table, bottom first
/// (`scheduler::dag` counts as `scheduler`).
fn documented_order() -> Vec<String> {
    let doc = std::fs::read_to_string(Path::new(MANIFEST).join("../../docs/architecture.md")).unwrap();
    let mut lines = doc.lines().skip_while(|l| l.trim() != "| module | concept |").skip(2);
    let mut order: Vec<String> = Vec::new();
    for row in lines.by_ref().take_while(|l| l.starts_with('|')) {
        let name = row.split('`').nth(1).expect("a module row names its module in backquotes");
        let top = name.split("::").next().unwrap().to_string();
        if !order.contains(&top) {
            order.push(top);
        }
    }
    assert!(!order.is_empty(), "no module table in docs/architecture.md");
    order
}

/// The crate's top-level modules: `src/X.rs` and `src/X/`.
fn modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".rs").to_string())
        .filter(|m| m != "lib")
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if dir.is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() || p.extension().is_some_and(|x| x == "rs") {
            rust_files(&p, out);
        }
    }
}

/// The code of a file without its unit tests and comment lines.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The crate-level names a file's code refers to: `crate::x` and the first
/// names of `crate::{x, y::z}`.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut start) = (0usize, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        out.insert(ident(&group[j..]).to_string());
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest).to_string());
        }
    }
    out
}

#[test]
fn modules_import_only_modules_below_them() {
    let src = Path::new(MANIFEST).join("src");
    let order = documented_order();
    let found = modules(&src);
    let listed: BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(listed, found, "docs/architecture.md's module table and src/ list different modules");
    let rank = |m: &str| order.iter().position(|x| x == m);
    let mut wrong = Vec::new();
    for m in &order {
        for f in files_of(&src, m) {
            let text = std::fs::read_to_string(&f).unwrap();
            for r in referenced(&code(&text)) {
                if let Some(r_rank) = rank(&r) {
                    if r != *m && r_rank > rank(m).unwrap() {
                        wrong.push(format!(
                            "{} imports `{r}`, listed above `{m}`",
                            f.strip_prefix(&src).unwrap().display()
                        ));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "a lower module imports a higher one:\n{}", wrong.join("\n"));
}

/// Module `m`'s files: `src/m.rs` and everything under `src/m/`.
fn files_of(src: &Path, m: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in [src.join(format!("{m}.rs")), src.join(m)] {
        if p.exists() {
            rust_files(&p, &mut files);
        }
    }
    files
}

/// The crate's error (`EngineError`, in `lib.rs`) is used by some modules
/// and names types of others: those must all be below every user, or the
/// error hides a cycle (a user -> `EngineError` -> a module above it).
#[test]
fn the_crates_error_names_only_modules_below_its_users() {
    let src = Path::new(MANIFEST).join("src");
    let order = documented_order();
    let rank = |m: &str| order.iter().position(|x| x == m).unwrap();
    let lib = code(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let lib: String = lib
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !(l.starts_with("pub mod") || l.starts_with("mod ") || l.starts_with("pub use") || l.starts_with("#["))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let named: BTreeSet<&String> =
        order.iter().filter(|m| lib.contains(&format!("{m}::")) || lib.contains(&format!("crate::{m}"))).collect();
    assert!(!named.is_empty(), "lib.rs names no module: the scan is broken");
    let users: Vec<&String> = order
        .iter()
        .filter(|m| {
            files_of(&src, m).iter().any(|f| code(&std::fs::read_to_string(f).unwrap()).contains("EngineError"))
        })
        .collect();
    let lowest = users.iter().map(|m| rank(m)).min().expect("EngineError has users");
    let wrong: Vec<&&String> = named.iter().filter(|m| rank(m) >= lowest).collect();
    assert!(wrong.is_empty(), "EngineError (lib.rs) names {wrong:?}, not below `{}`, which uses it", order[lowest]);
}

#[test]
fn the_reference_scanner_sees_both_import_forms() {
    let code = code("use crate::{udf::X, checkpoint::{a, b}, listener};\n// crate::job\nlet x = crate::sink::f();");
    let names: Vec<String> = referenced(&code).into_iter().collect();
    assert_eq!(names, ["checkpoint", "listener", "sink", "udf"]);
}
