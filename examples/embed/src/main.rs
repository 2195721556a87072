//! Weir as a library, the way a program uses tokio or DataFusion: a custom
//! source, a custom sink, a listener, and a job started in the background
//! and awaited.
//!
//! The source is *replayable*: batch `n` is a pure function of `n` (here,
//! lines of a tiny made-up sensor log), so after a driver crash the batch
//! can be read again, byte for byte, from the position recorded in the
//! checkpoint. The sink writes one file per batch time, replacing it whole
//! (write to a temporary name, rename), so a re-run batch leaves one copy.
//!
//! ```sh
//! cargo run -p weir-embed-example -- udfs/wordcount.wasm OUT_DIR [BATCHES]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir::codec::{display::render, BatchBuilder, Records};
use weir::dstream::StreamingContext;
use weir::listener::{BatchReport, StreamingListener};
use weir::plan::source::{InputDescriptor, SourceCursor};
use weir::scheduler::RunOptions;
use weir::sink::{Sink, SinkError};
use weir::source::{Source, SourceError};

/// Batch `n` holds `n` lines naming sensors; finite (`batches` of them).
struct SensorLog {
    next: u64,
    batches: u64,
}

impl SensorLog {
    fn batch(n: u64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for i in 0..n {
            let line = format!("sensor{} ok sensor{} warm", i % 3, (i + n) % 2);
            b.push_with(|w| w.str(&line));
        }
        b.finish()
    }
}

impl Source for SensorLog {
    fn poll(&mut self, _time: i64, _wall: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        self.next += 1;
        // The descriptor is the batch number: enough to read it again.
        Ok((Self::batch(self.next), InputDescriptor::Custom(self.next.to_le_bytes().to_vec())))
    }
    fn replay(&self, _time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        match d {
            InputDescriptor::Custom(b) if b.len() == 8 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                Ok(Self::batch(u64::from_le_bytes(n)))
            }
            other => Err(SourceError::Custom(format!("sensor log cannot replay {other:?}"))),
        }
    }
    fn cursor(&self) -> SourceCursor {
        SourceCursor::Next(self.next)
    }
    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError> {
        match c {
            SourceCursor::Next(n) => {
                self.next = *n;
                Ok(())
            }
            other => Err(SourceError::Custom(format!("sensor log cannot resume at {other:?}"))),
        }
    }
    fn exhausted(&self) -> bool {
        self.next >= self.batches
    }
}

/// One file per batch: `OUT/counts-<time>.txt`, one record per line,
/// replaced whole when a batch is written again.
struct FilePerBatch {
    dir: PathBuf,
}

impl Sink for FilePerBatch {
    fn write(&self, time: i64, partitions: &[Vec<u8>]) -> Result<(), SinkError> {
        let mut text = String::new();
        for p in partitions {
            for r in Records::new(p).map_err(|e| SinkError::Malformed(e.to_string()))? {
                text.push_str(&render(r.map_err(|e| SinkError::Malformed(e.to_string()))?));
                text.push('\n');
            }
        }
        let target = self.dir.join(format!("counts-{time}.txt"));
        let tmp = self.dir.join(format!(".counts-{time}.txt.tmp"));
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| SinkError::Io { path, source }
        };
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io(&target))
    }
}

/// Counts completed batches and records.
#[derive(Default)]
struct Tally {
    batches: AtomicU64,
    records: AtomicU64,
}

impl StreamingListener for Tally {
    fn on_batch_completed(&self, b: &BatchReport) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(b.records_in, Ordering::Relaxed);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: weir-embed WORDCOUNT.wasm OUT_DIR [BATCHES]";
    let module = args.next().ok_or(usage)?;
    let out = PathBuf::from(args.next().ok_or(usage)?);
    let batches: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    std::fs::create_dir_all(&out)?;

    let ssc = StreamingContext::new(Duration::from_secs(1))?;
    let wc = ssc.module(&module)?;
    let lines = ssc.custom_stream("sensor-log", Box::new(SensorLog { next: 0, batches }));
    let counts = lines.flat_map(&wc.udf("split"))?.map(&wc.udf("pair"))?.reduce_by_key(&wc.udf("sum"))?;
    counts.write_to(Arc::new(FilePerBatch { dir: out }))?;

    let tally = Arc::new(Tally::default());
    let mut opts = RunOptions::default();
    opts.listeners.push(tally.clone());
    let handle = ssc.start(opts)?;
    let report = handle.await_termination()?;
    if report.batches_failed > 0 {
        return Err(format!("{} batch(es) failed", report.batches_failed).into());
    }
    println!("{} batches, {} records in", tally.batches.load(Ordering::Relaxed), tally.records.load(Ordering::Relaxed));
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-embed: {e}");
            ExitCode::FAILURE
        }
    }
}
