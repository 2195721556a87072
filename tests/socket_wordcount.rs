//! The socket WordCount example end to end: a real TCP server feeds lines to
//! `weir run` (wall clock); the server drops the connection half way and the
//! receiver reconnects; every line sent is counted.

use crate::common::*;
use std::io::Write;
use std::net::TcpListener;

#[test]
fn socket_wordcount_counts_every_line_across_a_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let job = format!(
        r#"batch_interval = "200ms"
[modules]
wordcount = "{}"
[sources.lines]
type = "socket"
host = "127.0.0.1"
port = {port}
[streams]
words  = "lines.flat_map(wordcount.split)"
pairs  = "words.map(wordcount.pair)"
counts = "pairs.reduce_by_key(wordcount.sum)"
[[outputs]]
stream = "counts"
type = "save_as_text_files"
prefix = "out/counts"
"#,
        module("wordcount.wasm").display()
    );
    let job_path = tmp.path().join("job.toml");
    std::fs::write(&job_path, job).unwrap();

    let lines: Vec<String> = (0..2000).map(|i| format!("w{} w{} common w{}", i % 7, i % 13, i % 101)).collect();
    let (first, second) = lines.split_at(1000);
    let (first, second) = (first.to_vec(), second.to_vec());
    // The server: two connections, half of the lines on each.
    let server = std::thread::spawn(move || {
        for half in [first, second] {
            let (mut conn, _) = listener.accept().unwrap();
            for l in half {
                writeln!(conn, "{l}").unwrap();
            }
            conn.flush().unwrap();
            // Dropping the connection makes the receiver reconnect.
        }
    });
    let out = run(weir().args(["run", job_path.to_str().unwrap(), "--clock", "wall", "--batches", "20"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(server.is_finished(), "the receiver never made its second connection: {}", text(&out.stderr));
    server.join().unwrap();
    let outputs = read_outputs(&tmp.path().join("out"), "counts");
    assert_eq!(outputs.len(), 20, "one output directory per batch");
    let times: Vec<i64> = outputs.keys().copied().collect();
    for w in times.windows(2) {
        assert_eq!(w[1] - w[0], 200, "batch times are consecutive multiples of the interval");
    }
    assert_eq!(times[0] % 200, 0);
    let total = sum_counts(outputs.values().flatten());
    assert_eq!(total, native_counts(lines.iter().map(|s| s.as_str())));
}
