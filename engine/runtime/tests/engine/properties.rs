//! Property tests (proptest, a bounded number of cases in every `cargo
//! test`) of two parsers of untrusted input: the cluster protocol's frame
//! decoder (any bytes, as any message type, under any limit: an error or a
//! message, never a panic, and never more than the limit read) and the
//! job-file parser (a plausible job around any stream expression, and any
//! text at all: a job or a `job.toml:LINE` error, never a panic). The
//! hand-written hostile cases are in the unit tests beside each parser.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use weir::cluster::protocol::{
    self, Admission, BlockReply, BlockRequest, Challenge, FromExecutor, Hello, ToExecutor, MIN_FRAME_LIMIT,
};
use weir::udf::UdfRuntime;
use weir::EngineError;

const WORDCOUNT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../udfs/wordcount.wasm");

fn runtime() -> Arc<UdfRuntime> {
    static RT: OnceLock<Arc<UdfRuntime>> = OnceLock::new();
    RT.get_or_init(|| UdfRuntime::shared().unwrap()).clone()
}

/// Reads one frame of every message type from `bytes`; counts the bytes
/// each read consumed, which must never pass 4 + the limit.
fn read_all_ways(bytes: &[u8], limit: usize) {
    fn one<T: serde::de::DeserializeOwned>(bytes: &[u8], limit: usize) {
        let mut r = bytes;
        let _ = protocol::read_frame_limited::<T>(&mut r, limit);
        let read = bytes.len() - r.len();
        assert!(read <= 4 + limit, "read {read} bytes under a limit of {limit}");
    }
    one::<ToExecutor>(bytes, limit);
    one::<FromExecutor>(bytes, limit);
    one::<Hello>(bytes, limit);
    one::<Challenge>(bytes, limit);
    one::<Admission>(bytes, limit);
    one::<BlockRequest>(bytes, limit);
    one::<BlockReply>(bytes, limit);
}

/// Loads `body` as `dir/job.toml`, failing the test on a panic.
fn load(dir: &Path, body: &str) -> Result<(), EngineError> {
    let path = dir.join("job.toml");
    std::fs::write(&path, body).unwrap();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| weir::job::load(&path, runtime()))) {
        Ok(r) => r.map(drop),
        Err(_) => panic!("loading panicked on:\n{body}"),
    }
}

fn job_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("in.jsonl"), "[\"a b\", \"c\"]\n").unwrap();
        d
    })
    .path()
}

/// A job file error names the job file (and so can be acted on).
fn assert_names_the_file(r: Result<(), EngineError>, body: &str) {
    match r {
        Ok(()) => {}
        Err(EngineError::JobFile(e)) => assert!(e.file.ends_with("job.toml"), "{e}"),
        Err(other) => panic!("not a job file error: {other}\non:\n{body}"),
    }
}

/// Stream expressions: the operations, names, numbers and punctuation they
/// are made of, in any order.
fn expression() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("lines".to_string()),
        Just("wc.split".to_string()),
        Just("wc.pair".to_string()),
        Just("wc.sum".to_string()),
        Just(".".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just(",".to_string()),
        Just(" ".to_string()),
        Just("=".to_string()),
        Just("\\\"".to_string()),
        prop::sample::select(weir::plan::ops::OPERATIONS.iter().map(|o| o.name.to_string()).collect::<Vec<_>>()),
        "[0-9]{1,20}(ms|s|m|h)?".prop_map(|s| s),
        "-?[0-9]{1,3}\\.[0-9]{0,3}".prop_map(|s| s),
        "[a-z_]{1,8}".prop_map(|s| s),
    ];
    proptest::collection::vec(token, 0..24).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_frame_bytes_decode_or_fail_within_the_limit(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        limit in prop_oneof![Just(0usize), Just(16), Just(64), Just(300)],
    ) {
        read_all_ways(&bytes, limit);
    }

    #[test]
    fn a_frame_header_with_any_length_is_bounded_by_the_limit(
        len in any::<u32>(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        limit in prop_oneof![Just(16usize), Just(128), Just(MIN_FRAME_LIMIT)],
    ) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        read_all_ways(&bytes, limit);
        // A length over the limit is refused as such, before its body.
        let r = protocol::read_frame_limited::<ToExecutor>(&mut bytes.as_slice(), limit);
        if len as usize > limit {
            prop_assert!(r.as_ref().is_err_and(protocol::is_too_big), "{:?}", r.err());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_job_around_any_stream_expression_loads_or_names_the_file(expr in expression()) {
        let body = format!(
            "batch_interval = \"1s\"\n[modules]\nwc = \"{WORDCOUNT}\"\n[sources.lines]\ntype = \"batches\"\n\
             path = \"in.jsonl\"\n[streams]\nout = \"{expr}\"\n[[outputs]]\nstream = \"out\"\ntype = \"print\"\n"
        );
        assert_names_the_file(load(job_dir(), &body), &body);
    }

    #[test]
    fn any_text_as_a_job_file_loads_or_names_the_file(body in "(.|\n){0,200}") {
        assert_names_the_file(load(job_dir(), &body), &body);
    }
}
