//! WordCount as users run it: `weir run` on a job file, a `directory` source
//! of corpus files and `save_as_text_files`, `local[2]`, against a strong
//! native loop over the same files, in the same command.
//!
//!     cargo bench -p weir-cli --bench run_wordcount
//!
//! The corpus is `../shared/bench/gen_corpus.py` output (WEIR_BENCH_LINES
//! lines, default 2 000 000, ~20 M words), cut into 100 000-line files (a
//! 1 s batch at Spark's reference rate) and 10 000-line files (100 ms). Every
//! repetition (WEIR_BENCH_REPS, default 3) runs the native loop on 1 and 2
//! threads and then each `weir run` case back to back, so drift of a shared
//! machine hits all of them alike; medians are printed, and every run's
//! counts are checked against the native loop's.
//!
//! The native loop is the limit, not a strawman: one pass over the file's
//! bytes, words borrowed from the buffer (no allocation per word), FxHash;
//! two threads count half the files each and merge. With running totals it
//! keeps them in a hash map across batches, as the stateful job does.
//!
//! `weir run` is timed two ways: the whole process (start-up, module
//! compilation and exit included) and the steady state (from the first
//! batch's completion to the last's, over the words of the batches after the
//! first), which is what a long-running job sees. WEIR_BENCH_CASES picks
//! cases by name (comma-separated substrings).
//!
//! `weir run` is started by a launcher process (this bench again, with
//! WEIR_BENCH_LAUNCHER set) that is spawned before the corpus is read: Linux
//! carries a parent's peak RSS into a child it forks, across `exec`, so a
//! `weir` spawned by the bench itself, which holds the corpus, reported the
//! bench's peak instead of its own.

#[path = "../../runtime/benches/shared/native.rs"]
mod native;

use native::{cpu_steal, Fast};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Counts the words of `buf` (ASCII whitespace separates them, as the
/// WordCount UDF's `split_ascii_whitespace`) into `m`, one pass.
#[inline(never)]
fn count_into<'a>(buf: &'a [u8], m: &mut HashMap<&'a [u8], u64, Fast>) -> u64 {
    let (mut words, mut start, mut in_word) = (0u64, 0usize, false);
    for (i, &b) in buf.iter().enumerate() {
        if b.is_ascii_whitespace() {
            if in_word {
                *m.entry(&buf[start..i]).or_insert(0) += 1;
                words += 1;
                in_word = false;
            }
        } else if !in_word {
            start = i;
            in_word = true;
        }
    }
    if in_word {
        *m.entry(&buf[start..]).or_insert(0) += 1;
        words += 1;
    }
    words
}

/// What a native run found: total words and distinct words.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counted {
    words: u64,
    distinct: u64,
}

/// The native loop over `files` on `threads` threads (file i goes to thread
/// i mod threads), reading included. With `totals`, each batch (file) is
/// counted and then added to running totals with owned keys, as a stateful
/// job keeps them.
fn native(files: &[PathBuf], threads: usize, totals: bool) -> Counted {
    let per_thread = |t: usize| -> (u64, HashMap<Vec<u8>, u64, Fast>) {
        let mut words = 0;
        let mut all: HashMap<Vec<u8>, u64, Fast> = HashMap::default();
        let mut batch: HashMap<&[u8], u64, Fast> = HashMap::default();
        let bufs: Vec<Vec<u8>> = files.iter().skip(t).step_by(threads).map(|f| std::fs::read(f).unwrap()).collect();
        if !totals {
            // Per batch (file) counts, as WordCount gives: a small map per
            // batch stays in cache, which beats one large map (the stronger
            // reference). Distinct words are checked by the totals run.
            for b in &bufs {
                batch.clear();
                words += count_into(b, &mut batch);
            }
            return (words, all);
        }
        for b in &bufs {
            let mut m: HashMap<&[u8], u64, Fast> = HashMap::default();
            words += count_into(b, &mut m);
            for (k, v) in m {
                match all.get_mut(k) {
                    Some(t) => *t += v,
                    None => {
                        all.insert(k.to_vec(), v);
                    }
                }
            }
        }
        (words, all)
    };
    let parts: Vec<(u64, HashMap<Vec<u8>, u64, Fast>)> = if threads == 1 {
        vec![per_thread(0)]
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|t| s.spawn(move || per_thread(t))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let mut it = parts.into_iter();
    let (mut words, mut merged) = it.next().unwrap();
    for (w, m) in it {
        words += w;
        for (k, v) in m {
            *merged.entry(k).or_insert(0) += v;
        }
    }
    Counted { words, distinct: if totals { merged.len() as u64 } else { 0 } }
}

/// Resources of a finished child (wait4).
struct Usage {
    wall: Duration,
    cpu: Duration,
    max_rss_kb: u64,
}

fn wait_usage(child: &mut std::process::Child, started: Instant) -> Usage {
    let mut status = 0;
    // SAFETY: rusage is plain old data, written by wait4 for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pid of our child, valid pointers for its status and rusage.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let wall = started.elapsed();
    assert_eq!(pid, child.id() as i32, "wait4");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "weir run failed: status {status}");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage { wall, cpu: tv(ru.ru_utime) + tv(ru.ru_stime), max_rss_kb: ru.ru_maxrss as u64 }
}

/// Separates a command's arguments on the launcher's input.
const SEP: char = '\u{1f}';
/// Starts the launcher's line that ends a command's output.
const DONE: &str = "\u{1}done ";

/// The process that starts `weir` for the bench (see the module doc).
struct Launcher {
    _child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Launcher {
    fn start() -> Launcher {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("WEIR_BENCH_LAUNCHER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the launcher");
        let (to, from) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
        Launcher { _child: child, to, from }
    }

    /// Runs `program` with `args` to its end, handing each line of its
    /// stderr to `line`; wall time counts from this call.
    fn run(&mut self, program: &Path, args: &[String], mut line: impl FnMut(&str)) -> Usage {
        let started = Instant::now();
        let mut req = program.display().to_string();
        for a in args {
            req.push(SEP);
            req.push_str(a);
        }
        writeln!(self.to, "{req}").and_then(|()| self.to.flush()).expect("the launcher's input");
        let mut l = String::new();
        loop {
            l.clear();
            assert!(self.from.read_line(&mut l).expect("the launcher's output") > 0, "the launcher ended");
            let l = l.trim_end_matches('\n');
            if let Some(rest) = l.strip_prefix(DONE) {
                let n: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                return Usage { wall: started.elapsed(), cpu: Duration::from_micros(n[0]), max_rss_kb: n[1] };
            }
            line(l);
        }
    }
}

/// The launcher: runs each command read from stdin, passes its stderr
/// through to stdout, then its CPU time and peak RSS (from `wait4`).
fn launcher() {
    let mut out = std::io::stdout().lock();
    for req in std::io::stdin().lock().lines() {
        let req = req.unwrap();
        let parts: Vec<&str> = req.split(SEP).collect();
        let mut child = Command::new(parts[0])
            .args(&parts[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting weir");
        let started = Instant::now();
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            writeln!(out, "{}", line.unwrap()).unwrap();
            out.flush().unwrap();
        }
        let u = wait_usage(&mut child, started);
        writeln!(out, "{DONE}{} {}", u.cpu.as_micros(), u.max_rss_kb).unwrap();
        out.flush().unwrap();
    }
}

/// One `weir run` case.
struct Case {
    name: &'static str,
    files: usize, // index into the file sets
    interval: &'static str,
    stateful: bool,
    output: &'static str,
    /// The status page and metrics on (`--ui 127.0.0.1:0`), as by default.
    ui: bool,
}

/// A `weir run` result.
struct Run {
    usage: Usage,
    /// Seconds from the first batch's completion to the last's.
    steady: f64,
    /// Words in the batches after the first.
    steady_words: u64,
}

fn run_weir(
    launcher: &mut Launcher,
    weir: &Path,
    module: &Path,
    dir: &Path,
    case: &Case,
    batches: usize,
    tmp: &Path,
) -> Run {
    let _ = std::fs::remove_dir_all(tmp);
    std::fs::create_dir_all(tmp).unwrap();
    let stream = if case.stateful {
        "totals = \"pairs.update_state_by_key(wordcount.running_total)\""
    } else {
        "totals = \"pairs.reduce_by_key(wordcount.sum)\""
    };
    let output = match case.output {
        "print" => "type = \"print\"".to_string(),
        _ => "type = \"save_as_text_files\"\nprefix = \"out/counts\"".to_string(),
    };
    let job = format!(
        "batch_interval = \"{}\"\n[modules]\nwordcount = \"{}\"\n[sources.lines]\ntype = \"directory\"\npath = \"{}\"\n\
         max_files_per_batch = 1\n[streams]\nwords = \"lines.flat_map(wordcount.split)\"\n\
         pairs = \"words.map(wordcount.pair)\"\n{stream}\n[[outputs]]\nstream = \"totals\"\n{output}\n",
        case.interval,
        module.display(),
        dir.display()
    );
    std::fs::write(tmp.join("job.toml"), job).unwrap();
    let mut args: Vec<String> = vec!["run".into(), tmp.join("job.toml").display().to_string()];
    args.extend(["--master", "local[2]", "--clock", "logical"].map(String::from));
    args.extend(["--ui".to_string(), if case.ui { "127.0.0.1:0" } else { "off" }.to_string()]);
    args.extend(["--progress".to_string(), "json".into(), "--batches".into(), batches.to_string()]);
    if case.stateful {
        args.extend(["--checkpoint".to_string(), tmp.join("ckpt").display().to_string()]);
    }
    let started = Instant::now();
    let mut stamps = Vec::new();
    let usage = launcher.run(weir, &args, |line| {
        if let Some(rest) = line.strip_prefix("{\"time\":") {
            let records: u64 = rest
                .split("\"records_in\":")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|r| r.parse().ok())
                .unwrap();
            assert!(line.contains("\"errors\":[]"), "a batch failed: {line}");
            stamps.push((started.elapsed(), records));
        } else if !line.trim().is_empty() {
            eprintln!("weir: {line}");
        }
    });
    assert_eq!(stamps.len(), batches, "batches completed");
    let steady = (stamps[batches - 1].0 - stamps[0].0).as_secs_f64();
    // Lines, here; turned into words by the caller (files hold equal lines).
    let steady_lines: u64 = stamps[1..].iter().map(|s| s.1).sum();
    Run { usage, steady, steady_words: steady_lines }
}

/// Sums the counts of `(word,n)` lines under `out/`: every batch directory
/// for a stateless job, the last one for running totals. Returns (words,
/// distinct words of the last batch).
fn check_output(tmp: &Path, stateful: bool) -> (u64, u64) {
    let mut dirs: Vec<(i64, PathBuf)> = std::fs::read_dir(tmp.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let t = p.file_name()?.to_str()?.strip_prefix("counts-")?.parse().ok()?;
            Some((t, p))
        })
        .collect();
    dirs.sort();
    let take = if stateful { dirs.len() - 1 } else { 0 };
    let (mut words, mut distinct) = (0u64, 0u64);
    for (_, d) in &dirs[take..] {
        assert!(d.join("_SUCCESS").exists(), "{}: no _SUCCESS", d.display());
        distinct = 0;
        for part in std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()) {
            if !part.file_name().unwrap().to_str().unwrap().starts_with("part-") {
                continue;
            }
            for line in std::fs::read_to_string(&part).unwrap().lines() {
                let n: u64 = line.trim_end_matches(')').rsplit(',').next().unwrap().parse().unwrap();
                words += n;
                distinct += 1;
            }
        }
    }
    (words, distinct)
}

/// Splits `corpus.txt` into files of `per` lines under `dir` (once).
fn split_corpus(corpus: &Path, dir: &Path, per: usize) -> Vec<PathBuf> {
    if !dir.join(".done").exists() {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let text = std::fs::read_to_string(corpus).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, chunk) in lines.chunks(per).enumerate() {
            let mut s = chunk.join("\n");
            s.push('\n');
            std::fs::write(dir.join(format!("batch_{i:05}.txt")), s).unwrap();
        }
        std::fs::write(dir.join(".done"), "").unwrap();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::var_os("WEIR_BENCH_LAUNCHER").is_some() {
        return launcher();
    }
    // Before anything big is in memory (see the module doc).
    let mut launcher = Launcher::start();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let weir = PathBuf::from(std::env::var("WEIR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weir").into()));
    let module = root.join("udfs/wordcount.wasm").canonicalize().expect("run udfs/build.sh first");
    let lines: usize = std::env::var("WEIR_BENCH_LINES").ok().and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let reps: usize = std::env::var("WEIR_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let only: Vec<String> =
        std::env::var("WEIR_BENCH_CASES").map(|s| s.split(',').map(str::to_string).collect()).unwrap_or_default();
    let script = root.join("../shared/bench/gen_corpus.py");
    let base = root.join(format!("target/bench-run-corpus-{lines}"));
    if !base.join("corpus.txt").exists() {
        assert!(script.exists(), "{} is needed for this benchmark", script.display());
        let st = Command::new("python3")
            .arg(&script)
            .args(["--lines", &lines.to_string(), "--batches", "1", "--out"])
            .arg(&base)
            .status()
            .expect("python3");
        assert!(st.success(), "gen_corpus.py failed");
    }
    let sets = [
        split_corpus(&base.join("corpus.txt"), &base.join("files-100000"), 100_000),
        split_corpus(&base.join("corpus.txt"), &base.join("files-10000"), 10_000),
    ];
    let dirs = [base.join("files-100000"), base.join("files-10000")];
    let cases = [
        Case { name: "save_as_text_files, 1 s", files: 0, interval: "1s", stateful: false, output: "text", ui: false },
        Case {
            name: "save_as_text_files, 100 ms",
            files: 1,
            interval: "100ms",
            stateful: false,
            output: "text",
            ui: false,
        },
        Case { name: "print, 1 s", files: 0, interval: "1s", stateful: false, output: "print", ui: false },
        Case {
            name: "update_state_by_key + checkpoint, 1 s",
            files: 0,
            interval: "1s",
            stateful: true,
            output: "text",
            ui: false,
        },
        Case {
            name: "save_as_text_files, 1 s, status page on",
            files: 0,
            interval: "1s",
            stateful: false,
            output: "text",
            ui: true,
        },
    ];
    let cases: Vec<&Case> =
        cases.iter().filter(|c| only.is_empty() || only.iter().any(|o| c.name.contains(o.as_str()))).collect();
    let tmp = root.join("target/bench-run-tmp");
    let want = native(&sets[0], 1, true);
    println!("corpus: {} ({lines} lines, {} words, {} distinct)", base.display(), want.words, want.distinct);
    println!("weir: {}", weir.display());
    let steal0 = cpu_steal();
    let (mut n1, mut n2, mut n1s, mut n2s) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rows: Vec<Vec<(Run, f64)>> = cases.iter().map(|_| Vec::new()).collect();
    let words_per_line = want.words as f64 / lines as f64;
    for rep in 0..reps {
        for (threads, totals, out) in
            [(1, false, &mut n1), (2, false, &mut n2), (1, true, &mut n1s), (2, true, &mut n2s)]
        {
            let t = Instant::now();
            let got = native(&sets[0], threads, totals);
            out.push(want.words as f64 / t.elapsed().as_secs_f64());
            assert_eq!(got.words, want.words, "native loop, {threads} thread(s)");
            if totals {
                assert_eq!(got, want, "native loop with totals, {threads} thread(s)");
            }
        }
        for (i, case) in cases.iter().enumerate() {
            let files = &sets[case.files];
            let run = run_weir(&mut launcher, &weir, &module, &dirs[case.files], case, files.len(), &tmp);
            if case.output == "text" {
                let (words, distinct) = check_output(&tmp, case.stateful);
                assert_eq!(words, want.words, "{}: words counted", case.name);
                if case.stateful {
                    assert_eq!(distinct, want.distinct, "{}: distinct words in the last totals", case.name);
                }
            }
            let steady_words = run.steady_words as f64 * words_per_line;
            rows[i].push((run, steady_words));
        }
        eprintln!("repetition {} of {reps} done", rep + 1);
    }
    let (m1, m2, m1s, m2s) = (median(&mut n1), median(&mut n2), median(&mut n1s), median(&mut n2s));
    println!();
    println!(
        "| what (medians of {reps} interleaved runs) | words/s | share of 2-thread native | steady words/s | steady share | words per CPU-s | per CPU-s vs 1-thread native | cores busy | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!("| native loop, 1 thread | {:.1} M | - | - | - | {:.1} M | - | 1.00 | - |", m1 / 1e6, m1 / 1e6);
    println!("| native loop, 2 threads | {:.1} M | 100% | - | - | - | - | - | - |", m2 / 1e6);
    println!(
        "| native loop with running totals, 1 thread | {:.1} M | - | - | - | {:.1} M | - | 1.00 | - |",
        m1s / 1e6,
        m1s / 1e6
    );
    println!("| native loop with running totals, 2 threads | {:.1} M | 100% | - | - | - | - | - | - |", m2s / 1e6);
    for (case, runs) in cases.iter().zip(&mut rows) {
        let (native2, native1) = if case.stateful { (m2s, m1s) } else { (m2, m1) };
        let mut wps: Vec<f64> = runs.iter().map(|(r, _)| want.words as f64 / r.usage.wall.as_secs_f64()).collect();
        let mut steady: Vec<f64> = runs.iter().map(|(r, w)| w / r.steady).collect();
        let mut cpu: Vec<f64> = runs.iter().map(|(r, _)| want.words as f64 / r.usage.cpu.as_secs_f64()).collect();
        let mut busy: Vec<f64> =
            runs.iter().map(|(r, _)| r.usage.cpu.as_secs_f64() / r.usage.wall.as_secs_f64()).collect();
        let mut rss: Vec<f64> = runs.iter().map(|(r, _)| r.usage.max_rss_kb as f64 / 1024.0).collect();
        let (w, s, c) = (median(&mut wps), median(&mut steady), median(&mut cpu));
        println!(
            "| `weir run` local[2], {} | {:.1} M | {:.0}% | {:.1} M | {:.0}% | {:.1} M | {:.0}% | {:.2} | {:.0} MB |",
            case.name,
            w / 1e6,
            w / native2 * 100.0,
            s / 1e6,
            s / native2 * 100.0,
            c / 1e6,
            c / native1 * 100.0,
            median(&mut busy),
            median(&mut rss)
        );
    }
    // The status page's cost: per repetition, the run with it on against the
    // same case with it off, run back to back.
    let off = cases.iter().position(|c| c.name == "save_as_text_files, 1 s");
    let on = cases.iter().position(|c| c.ui);
    if let (Some(off), Some(on)) = (off, on) {
        let mut ratios: Vec<f64> = rows[on]
            .iter()
            .zip(&rows[off])
            .map(|((a, _), (b, _))| b.usage.wall.as_secs_f64() / a.usage.wall.as_secs_f64())
            .collect();
        println!(
            "\nstatus page on vs --ui off (save_as_text_files, 1 s): {:.1}% of the throughput (median of {} back-to-back pairs)",
            median(&mut ratios) * 100.0,
            ratios.len()
        );
    }
    if let (Some(a), Some(b)) = (steal0, cpu_steal()) {
        let total = (b.1 - a.1).max(1) as f64;
        println!(
            "\nCPU steal during the run: {:.1}% (runs with much steal are not comparable)",
            (b.0 - a.0) as f64 / total * 100.0
        );
    }
}
