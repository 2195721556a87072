//! Checkpoint overhead on object storage against local disk, as users run
//! it: `weir run` of the stateful WordCount (running totals with
//! `update_state_by_key(...).checkpoint(every batch)` and a windowed count
//! with an inverse function, both to `save_as_text_files` on local disk)
//! over a seeded generator, in the same command (a stateful job cannot run
//! without a checkpoint location, so local disk is the reference):
//!
//! * `local disk`: `--checkpoint <tmp dir>` (fsync and rename per file);
//! * `S3 (moto)`: `--checkpoint s3://bench/<rep>` on moto's S3 server
//!   (installed by `scripts/test-servers.sh` under `target/test-servers`,
//!   started on a free loopback port): lease object, data checkpoint
//!   objects, a metadata object per batch written last, garbage collection.
//!
//!     cargo bench -p weir-cli --bench s3_checkpoint
//!
//! WEIR_BENCH_BATCHES (default 30) batches of WEIR_BENCH_LINES (default
//! 10 000) lines of 10 words, WEIR_BENCH_REPS (default 3) repetitions, each
//! running both back to back (alternating which goes first), every one from
//! a fresh location. Prints each run's seconds, the medians, their ratio and
//! what object storage costs more per batch. Every run's outputs are
//! compared byte for byte with the first run's, so a fast run that wrote
//! something else cannot pass for a result.
//!
//! moto is a Python server on the same two cores: its figures are an upper
//! bound on the protocol's cost (round trips, objects per batch), not what
//! a real object store would cost.

// Only cpu_steal is used here.
#[allow(dead_code)]
#[path = "../../runtime/benches/shared/native.rs"]
mod native;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// An HTTP/1.1 request without a body; its status code.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    String::from_utf8_lossy(&head[9..12]).parse().map_err(std::io::Error::other)
}

/// moto's S3 server on a free loopback port with bucket `bench`.
fn start_moto(root: &Path) -> Moto {
    let status = Command::new("bash").arg(root.join("scripts/test-servers.sh")).status().expect("bash");
    assert!(status.success(), "scripts/test-servers.sh failed");
    let py = std::env::var_os("WEIR_TEST_SERVERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/test-servers"))
        .join("py");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .env("PYTHONPATH", &py)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(port, "GET", "/").is_err() {
        assert!(Instant::now() < deadline, "moto did not answer within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http(port, "PUT", "/bench").unwrap(), 200, "creating bucket bench");
    moto
}

fn job(dir: &Path, module: &Path, lines: usize, batches: usize) -> PathBuf {
    let p = dir.join("job.toml");
    std::fs::write(
        &p,
        format!(
            "batch_interval = \"1s\"\n[modules]\nwordcount = \"{}\"\n\
             [sources.lines]\ntype = \"generator\"\nlines_per_batch = {lines}\nwords_per_line = 10\n\
             vocabulary = 10000\nseed = 7\nbatches = {batches}\n\
             [streams]\nwords = \"lines.flat_map(wordcount.split)\"\npairs = \"words.map(wordcount.pair)\"\n\
             totals = \"pairs.update_state_by_key(wordcount.running_total).checkpoint(1s)\"\n\
             windowed = \"pairs.reduce_by_key_and_window(wordcount.sum, wordcount.subtract, 6s, 2s)\"\n\
             [[outputs]]\nstream = \"totals\"\ntype = \"save_as_text_files\"\nprefix = \"out/totals\"\n\
             [[outputs]]\nstream = \"windowed\"\ntype = \"save_as_text_files\"\nprefix = \"out/windowed\"\n",
            module.display()
        ),
    )
    .unwrap();
    p
}

/// Every file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(p.strip_prefix(base).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Runs the job in a fresh directory with its checkpoint in `checkpoint`
/// (a local directory there when empty); its seconds and its output tree.
fn run(
    weir: &Path,
    module: &Path,
    lines: usize,
    moto: &Moto,
    batches: usize,
    checkpoint: &str,
) -> (f64, BTreeMap<PathBuf, Vec<u8>>) {
    // Outputs are under the job file's folder: one of its own per run.
    let cwd = tempfile::tempdir().unwrap();
    let job = job(cwd.path(), module, lines, batches);
    let mut c = Command::new(weir);
    c.current_dir(cwd.path())
        .arg("run")
        .arg(&job)
        .args(["--batches", &batches.to_string(), "--clock", "logical", "--master", "local[2]"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", moto.port))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let ck = if checkpoint.is_empty() { cwd.path().join("ckpt").display().to_string() } else { checkpoint.to_string() };
    c.args(["--checkpoint", &ck]);
    let t = Instant::now();
    let out = c.output().expect("weir");
    let s = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "weir run failed ({checkpoint:?}):\n{}", String::from_utf8_lossy(&out.stderr));
    (s, tree(&cwd.path().join("out")))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let weir = PathBuf::from(std::env::var("WEIR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weir").into()));
    let module = root.join("udfs/wordcount.wasm").canonicalize().expect("run udfs/build.sh first");
    let batches = env_or("WEIR_BENCH_BATCHES", 30).max(2);
    let lines = env_or("WEIR_BENCH_LINES", 10_000).max(1);
    let reps = env_or("WEIR_BENCH_REPS", 3).max(1);
    let moto = start_moto(&root);
    let steal = native::cpu_steal();

    let names = ["local disk", "S3 (moto)"];
    let mut times: [Vec<f64>; 2] = [vec![], vec![]];
    let mut reference = None;
    for rep in 0..reps {
        let mut line = format!("rep {rep}:");
        // Alternating order, so neither side always runs on a warmer machine.
        for k in 0..2 {
            let which = (rep + k) % 2;
            let s3 = format!("s3://bench/rep-{rep}");
            let (s, out) = run(&weir, &module, lines, &moto, batches, ["", s3.as_str()][which]);
            assert!(!out.is_empty(), "the job wrote outputs");
            match &reference {
                None => reference = Some(out),
                Some(r) => assert!(r == &out, "{}: outputs differ from the first run's", names[which]),
            }
            times[which].push(s);
            line += &format!(" {} {s:.2} s;", names[which]);
        }
        println!("{line}");
    }
    let m: Vec<f64> = times.iter_mut().map(|v| median(v)).collect();
    println!("\nmedians of {reps} ({batches} batches x {lines} lines, a state and a metadata checkpoint every batch):");
    for (i, name) in names.iter().enumerate() {
        println!("  {name:<11} {:>7.2} s  ({:.1} ms a batch)", m[i], m[i] * 1000.0 / batches as f64);
    }
    println!(
        "  S3 (moto) against local disk: {:.2}x the run time, {:.1} ms a batch more",
        m[1] / m[0],
        (m[1] - m[0]) * 1000.0 / batches as f64
    );
    if let (Some(before), Some(after)) = (steal, native::cpu_steal()) {
        println!(
            "  hypervisor steal during the run: {:.1}%",
            100.0 * (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64
        );
    }
}
