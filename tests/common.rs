//! Helpers shared by the end-to-end tests: paths, running the `weir` binary,
//! reading `save_as_text_files` outputs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// A built UDF module; fails loudly if `udfs/build.sh` has not run.
pub fn module(name: &str) -> PathBuf {
    let p = repo().join("udfs").join(name);
    assert!(p.exists(), "{} is missing: run udfs/build.sh first", p.display());
    p.canonicalize().unwrap()
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("cannot start weir");
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `prefix-<time>` directories under `dir`, by batch time, each with the
/// concatenated lines of its part files (in part order).
pub fn read_outputs(dir: &Path, prefix: &str) -> BTreeMap<i64, Vec<String>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(t) = name.strip_prefix(&format!("{prefix}-")) else { continue };
        let Ok(t) = t.parse::<i64>() else { continue };
        let mut parts: Vec<PathBuf> = std::fs::read_dir(e.path())
            .unwrap()
            .map(|p| p.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("part-"))
            .collect();
        parts.sort();
        let mut lines = Vec::new();
        for p in parts {
            lines.extend(std::fs::read_to_string(p).unwrap().lines().map(String::from));
        }
        out.insert(t, lines);
    }
    out
}

/// Parses `(word,3)` lines into a map, summing duplicates across batches.
pub fn sum_counts<'a>(lines: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for l in lines {
        let inner = l.strip_prefix('(').and_then(|s| s.strip_suffix(')')).unwrap_or_else(|| panic!("not a pair: {l}"));
        let (w, c) = inner.rsplit_once(',').unwrap();
        *m.entry(w.to_string()).or_insert(0) += c.parse::<i64>().unwrap();
    }
    m
}

/// WordCount done natively: the reference.
pub fn native_counts<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for l in lines {
        for w in l.split_ascii_whitespace() {
            *m.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    m
}
