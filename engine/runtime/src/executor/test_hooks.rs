//! Fault injection for tests (feature `test-hooks`): make a task panic when a
//! narrow operation is about to process a chosen record, to check that a
//! panic fails its task (and batch) instead of hanging the job. A process
//! under test (the `weir` binary) takes its record from the environment
//! variable `WEIR_TEST_PANIC_ON_RECORD` (a string record): a panic is an
//! engine fault, so this is how end-to-end tests force transient task
//! failures and their retries.

use std::sync::{Mutex, OnceLock};

use weir_codec as codec;

/// Encoded records that make a narrow operation panic (process-global, so
/// each test should pick a record no other test uses).
static PANIC_ON: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Until the guard is dropped, every narrow operation panics when its input
/// holds `record`, with a message naming the record.
pub fn panic_on_record(record: &codec::Value) -> PanicOnRecord {
    let encoded = record.encode();
    PANIC_ON.lock().unwrap_or_else(|p| p.into_inner()).push(encoded.clone());
    PanicOnRecord { encoded }
}

/// Removes its record from the panic list when dropped.
#[must_use = "the hook is removed when the guard is dropped"]
pub struct PanicOnRecord {
    encoded: Vec<u8>,
}

impl Drop for PanicOnRecord {
    fn drop(&mut self) {
        let mut list = PANIC_ON.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = list.iter().position(|r| *r == self.encoded) {
            list.remove(i);
        }
    }
}

/// Panics if `batch` holds a record registered with [`panic_on_record`].
pub(crate) fn check_batch(batch: &[u8]) {
    static FROM_ENV: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    let from_env =
        FROM_ENV.get_or_init(|| std::env::var("WEIR_TEST_PANIC_ON_RECORD").ok().map(|r| codec::Value::Str(r).encode()));
    let mut list = PANIC_ON.lock().unwrap_or_else(|p| p.into_inner()).clone();
    list.extend(from_env.iter().cloned());
    if list.is_empty() {
        return;
    }
    let Ok(records) = codec::Records::new(batch) else { return };
    for r in records.map_while(Result::ok) {
        if list.iter().any(|x| x.as_slice() == r) {
            panic!("test hook: a narrow operation saw the record {}", codec::display::render(r));
        }
    }
}
