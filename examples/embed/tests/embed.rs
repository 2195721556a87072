//! Builds and runs the embedding example: its custom source feeds WordCount,
//! its custom sink writes one file per batch, its listener counts batches.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn counts(text: &str) -> BTreeMap<String, i64> {
    text.lines()
        .map(|l| {
            let (w, n) = l.trim_start_matches('(').trim_end_matches(')').split_once(',').expect("a (word,n) pair");
            (w.to_string(), n.parse().expect("a count"))
        })
        .collect()
}

#[test]
fn custom_source_and_sink_run_wordcount() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_weir-embed"))
        .arg(root.join("udfs/wordcount.wasm"))
        .arg(out.path())
        .arg("4")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    // Batches 1..=4 hold 1+2+3+4 lines: the listener saw all of them.
    assert_eq!(stdout.trim(), "4 batches, 10 records in");
    for n in 1..=4u64 {
        let text = std::fs::read_to_string(out.path().join(format!("counts-{}.txt", n * 1000))).unwrap();
        // Batch n: n lines "sensor{i%3} ok sensor{(i+n)%2} warm".
        let mut want: BTreeMap<String, i64> = BTreeMap::new();
        for i in 0..n {
            for w in [format!("sensor{}", i % 3), "ok".into(), format!("sensor{}", (i + n) % 2), "warm".into()] {
                *want.entry(w).or_default() += 1;
            }
        }
        assert_eq!(counts(&text), want, "batch {n}");
    }
    assert!(!out.path().join("counts-5000.txt").exists(), "the source is finite: 4 batches");
}
