//! UDF ABI v2: user functions as WebAssembly components (the WIT world
//! `weir:udf/guest@2.0.0` of `udf-sdk/wit/`), as `componentize-py` builds
//! them from Python.
//!
//! The calling convention is v1's: one call per batch, the batch in the
//! canonical encoding, the output validated like a module's. What a
//! component adds is WASI 0.2, which its toolchain's libc imports; every
//! interface is served by a deterministic stand-in so that a recomputed
//! partition is byte-identical: no preopened directories, no network (every
//! socket address is refused, no name lookup), no environment variables or
//! arguments, an empty stdin, wall and monotonic clocks that read the batch
//! time (and never advance: a sleep returns at once), random numbers from
//! ChaCha20 seeded with (module hash, batch time, partition), and stdout and
//! stderr captured into the UDF's log lines (bounded per call; the last lines
//! are attached to a failure, with its batch and partition).
//!
//! Compiled components are cached in the process and on disk (see
//! [`cache_dir`] and `udf/cache.rs`), because an interpreter-sized component
//! takes tens of seconds to compile.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rand_chacha::rand_core::SeedableRng as _;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{Engine, StoreContextMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{HostState, ModuleHash, UdfErrorKind, UdfKind};

wasmtime::component::bindgen!({
    world: "guest",
    path: "../../udf-sdk/wit",
});

pub(super) use exports::weir::udf::udf::{FunctionInfo, Kind};

/// The optional interface of a component that takes parameters.
pub const PARAMS_INTERFACE: &str = "weir:udf/params@2.0.0";

/// The `set-params` function of a component that exports
/// [`PARAMS_INTERFACE`] (the world `guest-with-params`), looked up once when
/// it loads; `None` for a component without it (it takes no parameters).
pub(super) fn set_params_export(c: &Component) -> Option<wasmtime::component::ComponentExportIndex> {
    let (_, iface) = c.get_export(None, PARAMS_INTERFACE)?;
    let (_, f) = c.get_export(Some(&iface), "set-params")?;
    Some(f)
}

/// The ABI version of a component.
pub const ABI_VERSION: i64 = 2;
/// The interface a UDF component exports (its name carries the version).
pub const EXPORT_INTERFACE: &str = "weir:udf/udf@2.0.0";

/// Bytes of stdout and stderr kept per call (the rest is counted, dropped).
const MAX_CAPTURE: usize = 64 * 1024;
/// The most functions a component may declare, and the longest name.
const MAX_FUNCTIONS: usize = 4096;
const MAX_NAME: usize = 1024;

pub(super) fn kind_to_wit(k: UdfKind) -> Kind {
    match k {
        UdfKind::Map => Kind::Map,
        UdfKind::FlatMap => Kind::FlatMap,
        UdfKind::Filter => Kind::Filter,
        UdfKind::KeyBy => Kind::KeyBy,
        UdfKind::MapPartitions => Kind::MapPartitions,
        UdfKind::Reduce => Kind::Reduce,
        UdfKind::Update => Kind::Update,
        UdfKind::MapWithState => Kind::MapWithState,
    }
}

pub(super) fn kind_from_wit(k: Kind) -> UdfKind {
    match k {
        Kind::Map => UdfKind::Map,
        Kind::FlatMap => UdfKind::FlatMap,
        Kind::Filter => UdfKind::Filter,
        Kind::KeyBy => UdfKind::KeyBy,
        Kind::MapPartitions => UdfKind::MapPartitions,
        Kind::Reduce => UdfKind::Reduce,
        Kind::Update => UdfKind::Update,
        Kind::MapWithState => UdfKind::MapWithState,
    }
}

/// Checks the list a component's `functions` export returned.
pub(super) fn check_functions(list: &[FunctionInfo]) -> Result<(), UdfErrorKind> {
    if list.len() > MAX_FUNCTIONS {
        let m = format!("functions() returned {} functions, over the limit of {MAX_FUNCTIONS}", list.len());
        return Err(UdfErrorKind::MalformedOutput(m));
    }
    for f in list {
        if f.name.is_empty() || f.name.len() > MAX_NAME || f.name.chars().any(char::is_whitespace) {
            let m = format!("functions() returned an invalid name {:?} (1 to {MAX_NAME} bytes, no whitespace)", f.name);
            return Err(UdfErrorKind::MalformedOutput(m));
        }
    }
    Ok(())
}

/// A component's store data: the v1 host state (limits, log) and WASI's.
pub struct ComponentState {
    pub(super) host: HostState,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) output: Captured,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl ComponentState {
    /// The deterministic WASI context of one instance.
    pub(super) fn new(host: HostState, hash: &ModuleHash, batch_time_ms: Option<i64>, partition: Option<u32>) -> Self {
        let time_ms = batch_time_ms.unwrap_or(0);
        let clock = BatchClock { ns: u64::try_from(time_ms).unwrap_or(0).saturating_mul(1_000_000) };
        let mut seed = Sha256::new();
        seed.update(b"weir:udf random v1");
        seed.update(hash.0);
        seed.update(time_ms.to_le_bytes());
        seed.update(partition.map(|p| p as i64).unwrap_or(-1).to_le_bytes());
        let seed: [u8; 32] = seed.finalize().into();
        let mut insecure = seed;
        insecure[0] ^= 0x80;
        let output = Captured::default();
        let wasi = WasiCtxBuilder::new()
            .wall_clock(clock)
            .monotonic_clock(clock)
            .secure_random(ChaCha20Rng::from_seed(seed))
            .insecure_random(ChaCha20Rng::from_seed(insecure))
            .insecure_random_seed(u128::from_le_bytes(seed[..16].try_into().unwrap_or_default()))
            .stdout(output.clone())
            .stderr(output.clone())
            // The defaults refuse every socket address already; say so here
            // too, as the sandbox's contract.
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        ComponentState { host, wasi, table: ResourceTable::new(), output }
    }
}

/// Wall and monotonic clock: the batch time, for every read.
#[derive(Clone, Copy)]
struct BatchClock {
    ns: u64,
}

impl HostWallClock for BatchClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.ns)
    }
}

impl HostMonotonicClock for BatchClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.ns
    }
}

/// A pollable that is always ready: waiting on the stand-in clock takes no
/// time (a guest's sleep must neither block an executor thread, where the
/// epoch watchdog cannot reach it, nor see time pass).
struct Ready;

#[async_trait::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// The linker every component is instantiated with: WASI 0.2 (synchronous
/// bindings) with the clocks' subscriptions replaced by [`Ready`].
pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-duration", |store: StoreContextMut<'_, ComponentState>, (_d,): (u64,)| {
        Ok((ready(store)?,))
    })?;
    clock.func_wrap("subscribe-instant", |store: StoreContextMut<'_, ComponentState>, (_t,): (u64,)| {
        Ok((ready(store)?,))
    })?;
    linker.allow_shadowing(false);
    Ok(linker)
}

fn ready(mut store: StoreContextMut<'_, ComponentState>) -> wasmtime::Result<Resource<DynPollable>> {
    let table = &mut store.data_mut().table;
    let r = table.push(Ready)?;
    wasmtime_wasi::p2::subscribe(table, r)
}

/// stdout and stderr of one instance, interleaved as written: at most
/// [`MAX_CAPTURE`] bytes between two drains, the rest counted.
#[derive(Clone, Default)]
pub(super) struct Captured(Arc<Mutex<CaptureBuf>>);

#[derive(Default)]
struct CaptureBuf {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Captured {
    fn push(&self, b: &[u8]) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_CAPTURE.saturating_sub(c.bytes.len());
        let n = b.len().min(room);
        c.bytes.extend_from_slice(&b[..n]);
        c.dropped += (b.len() - n) as u64;
    }

    /// What was written since the last drain, and how many bytes were dropped.
    pub(super) fn drain(&self) -> (Vec<u8>, u64) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut c.bytes), std::mem::take(&mut c.dropped))
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl OutputStream for Captured {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always writable: what does not fit is dropped, never an error the
        // guest could branch on.
        Ok(MAX_CAPTURE)
    }
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Where compiled components are cached: `<cache>/components`, where
/// `<cache>` is [`cache_root`](super::cache::cache_root) (`$WEIR_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/weir`, else `$HOME/.cache/weir`; `WEIR_CACHE_DIR`
/// set to the empty string turns the disk cache off).
pub fn cache_dir() -> Option<PathBuf> {
    super::cache::cache_dir_of::<Component>()
}

pub use super::cache::CompiledFrom;
