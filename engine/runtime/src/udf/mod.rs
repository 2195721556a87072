//! The WebAssembly host: loads UDF modules, checks them against ABI v1 (core
//! modules) or v2 (components, `component`), and runs batch-at-a-time calls
//! in a deterministic sandbox.
//!
//! One [`UdfRuntime`] (one wasmtime `Engine`) per process, configured for
//! determinism: NaN canonicalisation, deterministic relaxed SIMD, no threads,
//! no memory64, fuel metering, epoch interruption as a wall-clock watchdog.
//! Each job owns a [`ModuleRegistry`] with its own limits; modules are keyed
//! by the SHA-256 of their bytes, compiled once and pre-linked
//! (`InstancePre`). Every task gets a fresh [`UdfInstance`] (a fresh `Store`),
//! so no memory survives from one task to the next and a recomputation never
//! depends on an old instance's state. Instances live in a pool of reused
//! slots whose memory is zeroed between uses (mapping a fresh memory per
//! task cost more than the guest's work on small batches). Components go through the same
//! [`UdfModule`] and [`UdfInstance`], so a job may mix both and executors in
//! other processes need nothing special.

pub use weir_plan::udf::{abi, error, exports, limits, ModuleHash};

pub mod cache;
pub mod component;
pub mod inspect;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{
    Caller, Config, Engine, ExternType, InstancePre, Linker, Memory, Module, ResourceLimiter, Store, Trap, TypedFunc,
    WasmBacktrace,
};

pub use abi::UdfKind;
pub use error::{UdfError, UdfErrorKind, UdfSite};
pub use limits::{UdfLimits, UdfLimitsOverrides};

/// How often the epoch ticks: the resolution of the wall-clock watchdog.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Instance slots in the process's pool (concurrent instances, core and
/// component ones together; a task holds one per module it calls).
const POOL_SLOTS: u32 = 1000;

/// Bytes of a pooled linear memory kept mapped and zeroed by `memset` when
/// its instance ends (the rest is returned with `madvise`).
const POOL_KEEP_RESIDENT: usize = 32 << 20;

/// Elements a table may grow to (the store's limiter and the pool's slots).
const TABLE_ELEMENTS: usize = 100_000;

/// Fuel for the ABI's own calls (version probe, allocation).
const HOUSEKEEPING_FUEL: u64 = 10_000_000;

/// The process-wide WebAssembly engine and its watchdog ticker.
pub struct UdfRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    component_linker: wasmtime::component::Linker<component::ComponentState>,
    stop: Arc<AtomicBool>,
    /// Compiled code by module hash, kept for the process (`udf/cache.rs`).
    modules: cache::Memo<Module>,
    components: cache::Memo<wasmtime::component::Component>,
}

impl UdfRuntime {
    /// The process's runtime, made on first use. One engine per process
    /// (as wasmtime intends): its instance pool reserves address space for
    /// `POOL_SLOTS` linear memories once, not once per job or context.
    pub fn shared() -> Result<Arc<Self>, UdfError> {
        static SHARED: Mutex<Option<Arc<UdfRuntime>>> = Mutex::new(None);
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = shared.as_ref() {
            return Ok(rt.clone());
        }
        let rt = Self::new()?;
        *shared = Some(rt.clone());
        Ok(rt)
    }

    /// A runtime of its own (its own engine, pool and watchdog thread);
    /// [`UdfRuntime::shared`] is what a process normally wants.
    pub fn new() -> Result<Arc<Self>, UdfError> {
        let mut c = Config::new();
        // Threads and shared memory are compiled out (no `threads` feature).
        c.cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            .wasm_memory64(false)
            .wasm_multi_memory(false)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20);
        c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling()));
        // `WEIR_WASM_PERFMAP=1` writes /tmp/perf-<pid>.map so that `perf
        // report` names the guest's functions (docs/benchmarks.md).
        if std::env::var_os("WEIR_WASM_PERFMAP").is_some_and(|v| v == "1") {
            c.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&c).map_err(|e| {
            UdfError::new(UdfSite::default(), UdfErrorKind::Instantiate(format!("engine configuration: {e}")))
        })?;
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap(abi::IMPORT_MODULE, abi::IMPORT_LOG, guest_log)
            .map_err(|e| UdfError::new(UdfSite::default(), UdfErrorKind::Instantiate(e.to_string())))?;
        let component_linker = component::linker(&engine).map_err(|e| {
            UdfError::new(UdfSite::default(), UdfErrorKind::Instantiate(format!("WASI stand-ins: {e:#}")))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("weir-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| UdfError::new(UdfSite::default(), UdfErrorKind::Instantiate(e.to_string())))?;
        }
        Ok(Arc::new(UdfRuntime {
            engine,
            linker,
            component_linker,
            stop,
            modules: cache::Memo::new(),
            components: cache::Memo::new(),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Instances come from a pool of pre-reserved slots instead of a fresh
/// `mmap` per task: every task instantiates its modules anew (a fresh
/// `Store`, for isolation), and with the default allocator each one mapped,
/// faulted in and unmapped its linear memory, which cost more CPU than the
/// guest's own work on small batches. A slot's memory is zeroed on reuse
/// (up to `POOL_KEEP_RESIDENT` by `memset`, the rest by `madvise`), so no
/// state survives from one task to the next.
fn pooling() -> wasmtime::PoolingAllocationConfig {
    let mut p = wasmtime::PoolingAllocationConfig::new();
    p.total_core_instances(POOL_SLOTS)
        .total_memories(POOL_SLOTS)
        .total_tables(POOL_SLOTS)
        .total_component_instances(POOL_SLOTS)
        // Multi-memory is off (one memory per core module); tables as the
        // store's limiter allows them (several per module with reference
        // types; component toolchains emit large function tables).
        .max_memories_per_module(1)
        .max_tables_per_module(8)
        .table_elements(TABLE_ELEMENTS)
        .max_core_instance_size(16 << 20)
        .linear_memory_keep_resident(POOL_KEEP_RESIDENT)
        .table_keep_resident(1 << 16)
        .max_unused_warm_slots(64);
    p
}

impl Drop for UdfRuntime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Per-store host state: memory accounting and the guest's log.
pub struct HostState {
    memory_limit: usize,
    table_limit: usize,
    memory_limit_hit: bool,
    log_budget: u32,
    log_lines_per_call: u32,
    last_log: Option<String>,
    module: Arc<str>,
    /// Fuel granted for the running call, and fuel burned by earlier ones
    /// (see [`grant_fuel`]): what the module cost, for metrics.
    fuel_granted: u64,
    fuel_burned: u64,
    /// Linear memory this store's instance holds now (bytes), counted in
    /// [`UDF_MEMORY_IN_USE`] until the store is dropped.
    memory_bytes: usize,
}

/// Linear memory held by the UDF instances alive in this process (bytes):
/// what the Executors page shows as UDF memory in use. Grown by
/// [`ResourceLimiter::memory_growing`] (which wasmtime also calls for a
/// memory's initial size), given back when an instance's store is dropped.
static UDF_MEMORY_IN_USE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The most [`UDF_MEMORY_IN_USE`] has been since the process started.
static UDF_MEMORY_PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Linear memory of the UDF instances alive in this process now, and the
/// most there has been at once (bytes).
pub fn udf_memory() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (UDF_MEMORY_IN_USE.load(Relaxed), UDF_MEMORY_PEAK.load(Relaxed))
}

impl Drop for HostState {
    fn drop(&mut self) {
        UDF_MEMORY_IN_USE.fetch_sub(self.memory_bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A store whose data holds the [`HostState`] (core modules and components).
trait HasHost {
    fn host(&self) -> &HostState;
    fn host_mut(&mut self) -> &mut HostState;
}

impl HasHost for HostState {
    fn host(&self) -> &HostState {
        self
    }
    fn host_mut(&mut self) -> &mut HostState {
        self
    }
}

impl HasHost for component::ComponentState {
    fn host(&self) -> &HostState {
        &self.host
    }
    fn host_mut(&mut self) -> &mut HostState {
        &mut self.host
    }
}

/// Gives a store `fuel` for its next call, first counting what the guest
/// burned of the previous grant.
fn grant_fuel<T: HasHost>(store: &mut Store<T>, fuel: u64) {
    let left = store.get_fuel().unwrap_or(0);
    let h = store.data_mut().host_mut();
    h.fuel_burned = h.fuel_burned.saturating_add(h.fuel_granted.saturating_sub(left));
    h.fuel_granted = fuel;
    let _ = store.set_fuel(fuel);
}

/// All the fuel a store's guest burned so far.
fn fuel_burned<T: HasHost>(store: &Store<T>) -> u64 {
    let h = store.data().host();
    h.fuel_burned.saturating_add(h.fuel_granted.saturating_sub(store.get_fuel().unwrap_or(0)))
}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_limit_hit = true;
            // An error (not `false`) traps at the `memory.grow` itself, so a
            // memory bomb stops at the cap instead of spinning on failures.
            return Err(wasmtime::Error::msg("linear memory limit reached"));
        }
        // Counted as granted: a failed growth after this is not retried.
        use std::sync::atomic::Ordering::Relaxed;
        let more = desired.saturating_sub(self.memory_bytes);
        self.memory_bytes = self.memory_bytes.max(desired);
        let now = UDF_MEMORY_IN_USE.fetch_add(more as u64, Relaxed).saturating_add(more as u64);
        UDF_MEMORY_PEAK.fetch_max(now, Relaxed);
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_limit)
    }
}

const MAX_LOG_LINE: usize = 4096;

fn guest_log(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) {
    let Some(mem) = caller.get_export(abi::EXPORT_MEMORY).and_then(|e| e.into_memory()) else {
        return;
    };
    let len = (len as u32 as usize).min(MAX_LOG_LINE);
    let mut buf = vec![0u8; len];
    if mem.read(&caller, ptr as u32 as usize, &mut buf).is_err() {
        return;
    }
    let line = String::from_utf8_lossy(&buf).into_owned();
    let st = caller.data_mut();
    if st.log_budget > 0 {
        st.log_budget -= 1;
        tracing::info!(target: "weir::udf::guest", module = %st.module, "{line}");
        if st.log_budget == 0 {
            tracing::warn!(target: "weir::udf::guest", module = %st.module,
                "log limit of {} lines per call reached; further lines dropped", st.log_lines_per_call);
        }
    }
    st.last_log = Some(line);
}

/// A loaded, validated, compiled module.
pub struct UdfModule {
    runtime: Arc<UdfRuntime>,
    name: Arc<str>,
    path: PathBuf,
    hash: ModuleHash,
    /// The functions, sorted by name and kind: from the `<kind>:<name>`
    /// exports and the `weir:exports` declarations.
    functions: Vec<UdfFunction>,
    code: Code,
    limits: UdfLimits,
    size: usize,
    /// The module's binary, to ship to executor processes.
    bytes: Arc<Vec<u8>>,
}

/// A module's compiled, pre-linked code.
enum Code {
    /// ABI v1: a core module, with which optional exports it has.
    Core {
        pre: InstancePre<HostState>,
        has_initialize: bool,
        has_batch_time: bool,
        has_params: bool,
        from: cache::CompiledFrom,
    },
    /// ABI v2: a component, with its `set-params` function when it exports
    /// the optional `weir:udf/params` interface.
    Component {
        pre: component::GuestPre<component::ComponentState>,
        set_params: Option<wasmtime::component::ComponentExportIndex>,
        from: component::CompiledFrom,
    },
}

impl fmt::Debug for UdfModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdfModule").field("name", &self.name).field("hash", &self.hash).finish()
    }
}

impl UdfModule {
    /// Loads a module from a `.wasm` (binary) or `.wat` (text) file.
    pub fn load(runtime: &Arc<UdfRuntime>, path: &Path, limits: UdfLimits) -> Result<Arc<Self>, UdfError> {
        let name: Arc<str> = path.file_name().map(|n| n.to_string_lossy().into()).unwrap_or_else(|| "?".into());
        let bytes = read_module_file(path, &limits)?;
        Self::from_bytes(runtime, name, path.to_path_buf(), &bytes, limits)
    }

    /// Loads a module from bytes (binary or WAT text).
    pub fn from_bytes(
        runtime: &Arc<UdfRuntime>,
        name: Arc<str>,
        path: PathBuf,
        bytes: &[u8],
        limits: UdfLimits,
    ) -> Result<Arc<Self>, UdfError> {
        let mut site = UdfSite { module: name.to_string(), ..Default::default() };
        let fail = |site: &UdfSite, kind| Err(UdfError::new(site.clone(), kind));
        if bytes.len() > limits.module_bytes {
            return fail(&site, UdfErrorKind::ModuleTooLarge { size: bytes.len(), limit: limits.module_bytes });
        }
        let binary = to_binary(bytes).map_err(|kind| UdfError::new(site.clone(), kind))?;
        let hash = ModuleHash::of(&binary);
        site.hash = hash.short();
        if inspect::is_component(&binary) {
            return Self::from_component(runtime, name, path, binary.into_owned(), hash, limits, site);
        }
        let declared = inspect::declared_exports(&binary).map_err(|kind| UdfError::new(site.clone(), kind))?;
        let (module, from) = match cache::compiled(&runtime.engine, &runtime.modules, &binary, &hash) {
            Ok(m) => m,
            Err(kind) => return fail(&site, kind),
        };
        for imp in module.imports() {
            let ok = imp.module() == abi::IMPORT_MODULE
                && imp.name() == abi::IMPORT_LOG
                && matches!(imp.ty(), ExternType::Func(f)
                    if f.params().map(|p| p.to_string()).collect::<Vec<_>>() == ["i32", "i32"] && f.results().len() == 0);
            if !ok {
                let kind = UdfErrorKind::ForbiddenImport { module: imp.module().into(), name: imp.name().into() };
                return fail(&site, kind);
            }
        }
        let mut functions = Vec::new();
        let mut found: Vec<&str> = Vec::new();
        let (mut has_memory, mut has_alloc, mut has_version, mut has_initialize) = (false, false, false, false);
        let (mut has_batch_time, mut has_params) = (false, false);
        for exp in module.exports() {
            let n = exp.name();
            let ty = exp.ty();
            let is_func = |params: &[&str], results: &[&str]| {
                matches!(&ty, ExternType::Func(f)
                    if f.params().map(|p| p.to_string()).collect::<Vec<_>>() == params
                    && f.results().map(|p| p.to_string()).collect::<Vec<_>>() == results)
            };
            let mistyped = |expected| UdfErrorKind::MistypedExport { name: n.into(), expected };
            match n {
                abi::EXPORT_MEMORY => {
                    if !matches!(ty, ExternType::Memory(_)) {
                        return fail(&site, mistyped("a linear memory"));
                    }
                    has_memory = true;
                }
                abi::EXPORT_ALLOC => {
                    if !is_func(&["i32"], &["i32"]) {
                        return fail(&site, mistyped("func (i32) -> i32"));
                    }
                    has_alloc = true;
                }
                abi::EXPORT_VERSION => {
                    if !is_func(&[], &["i32"]) {
                        return fail(&site, mistyped("func () -> i32"));
                    }
                    has_version = true;
                }
                abi::EXPORT_INITIALIZE => has_initialize = is_func(&[], &[]),
                abi::EXPORT_BATCH_TIME => {
                    if !is_func(&["i64"], &[]) {
                        return fail(&site, mistyped("func (i64 time_ms)"));
                    }
                    has_batch_time = true;
                }
                abi::EXPORT_PARAMS => {
                    if !is_func(&["i32", "i32"], &["i64"]) {
                        return fail(&site, mistyped("func (i32 ptr, i32 len) -> i64"));
                    }
                    has_params = true;
                }
                _ => {
                    // A declaration in `weir:exports` wins over the name's
                    // own shape: the toolchain chose the name, the author the
                    // declaration.
                    let (kind, fname) = if let Some(d) = declared.iter().find(|d| d.export == n) {
                        found.push(&d.export);
                        (d.kind, d.name.as_str())
                    } else {
                        let Some((kind, fname)) = n.split_once(':') else {
                            continue;
                        };
                        let Ok(kind) = kind.parse::<UdfKind>() else {
                            return fail(&site, UdfErrorKind::UnknownKind { name: n.into(), kind: kind.into() });
                        };
                        (kind, fname)
                    };
                    if !is_func(&["i32", "i32"], &["i64"]) {
                        return fail(&site, mistyped("func (i32 ptr, i32 len) -> i64"));
                    }
                    functions.push(UdfFunction { name: fname.to_string(), kind, export: n.to_string() });
                }
            }
        }
        if let Some(d) = declared.iter().find(|d| !found.contains(&d.export.as_str())) {
            let m = format!(
                "declares export {:?} as {} function {:?}, but the module has no such export",
                d.export, d.kind, d.name
            );
            return fail(&site, UdfErrorKind::ExportsSection(m));
        }
        functions.sort();
        // `map:f` next to a declaration `g = map:f`: two exports, one function.
        if let Some(w) = functions.windows(2).find(|w| w[0].name == w[1].name && w[0].kind == w[1].kind) {
            let m = format!(
                "{} function {:?} is both export {:?} and export {:?}",
                w[0].kind, w[0].name, w[0].export, w[1].export
            );
            return fail(&site, UdfErrorKind::ExportsSection(m));
        }
        for (present, name) in
            [(has_memory, abi::EXPORT_MEMORY), (has_alloc, abi::EXPORT_ALLOC), (has_version, abi::EXPORT_VERSION)]
        {
            if !present {
                return fail(&site, UdfErrorKind::MissingExport { name: name.into() });
            }
        }
        let pre = match runtime.linker.instantiate_pre(&module) {
            Ok(p) => p,
            Err(e) => return fail(&site, UdfErrorKind::Instantiate(format!("{e:#}"))),
        };
        let m = Arc::new(UdfModule {
            runtime: runtime.clone(),
            name,
            path,
            hash,
            functions,
            code: Code::Core { pre, has_initialize, has_batch_time, has_params, from },
            limits,
            size: binary.len(),
            bytes: Arc::new(binary.into_owned()),
        });
        // Probe the version in a throwaway instance: it runs guest code, so it
        // runs under the same limits as any call.
        let version = match m.instantiate(None, None)?.inner {
            Inner::Core(mut inst) => inst.abi_version()?,
            Inner::Component(_) => component::ABI_VERSION,
        };
        if version != abi::ABI_VERSION {
            return fail(&site, UdfErrorKind::UnsupportedAbiVersion { found: version });
        }
        Ok(m)
    }

    /// Loads a component (ABI v2): compiled (or read from the disk cache),
    /// pre-linked against the WASI stand-ins, and asked for its functions in
    /// a throwaway instance, under the same limits as any call.
    fn from_component(
        runtime: &Arc<UdfRuntime>,
        name: Arc<str>,
        path: PathBuf,
        binary: Vec<u8>,
        hash: ModuleHash,
        limits: UdfLimits,
        site: UdfSite,
    ) -> Result<Arc<Self>, UdfError> {
        let fail = |kind| Err(UdfError::new(site.clone(), kind));
        let (compiled, from) = match cache::compiled(&runtime.engine, &runtime.components, &binary, &hash) {
            Ok(c) => c,
            Err(kind) => return fail(kind),
        };
        let set_params = component::set_params_export(&compiled);
        let pre = match runtime.component_linker.instantiate_pre(&compiled) {
            Ok(p) => p,
            Err(e) => return fail(UdfErrorKind::Instantiate(format!("{e:#}"))),
        };
        let pre = match component::GuestPre::new(pre) {
            Ok(p) => p,
            Err(_) => return fail(UdfErrorKind::MissingExport { name: component::EXPORT_INTERFACE.into() }),
        };
        let mut m = Arc::new(UdfModule {
            runtime: runtime.clone(),
            name,
            path,
            hash,
            functions: Vec::new(),
            code: Code::Component { pre, set_params, from },
            limits,
            size: binary.len(),
            bytes: Arc::new(binary),
        });
        // The probe instance holds a reference to `m`: dropped at the end of
        // this block, so `m` is ours alone again below.
        let list = {
            let mut inst = m.instantiate(None, None)?;
            match &mut inst.inner {
                Inner::Component(c) => c.functions()?,
                Inner::Core(_) => {
                    return fail(UdfErrorKind::Instantiate("a component instantiated as a core module".into()))
                }
            }
        };
        let mut functions: Vec<UdfFunction> = list
            .into_iter()
            .map(|f| {
                let kind = component::kind_from_wit(f.kind);
                UdfFunction { export: kind.export_name(&f.name), name: f.name, kind }
            })
            .collect();
        functions.sort();
        if let Some(w) = functions.windows(2).find(|w| w[0] == w[1]) {
            let m = format!("functions() lists {} function {:?} twice", w[0].kind, w[0].name);
            return fail(UdfErrorKind::MalformedOutput(m));
        }
        match Arc::get_mut(&mut m) {
            Some(mm) => mm.functions = functions,
            None => return fail(UdfErrorKind::Instantiate("the probe instance outlived its call".into())),
        }
        Ok(m)
    }

    /// The ABI version: 1 for a core module, 2 for a component.
    pub fn abi_version(&self) -> i64 {
        match self.code {
            Code::Core { .. } => abi::ABI_VERSION,
            Code::Component { .. } => component::ABI_VERSION,
        }
    }

    /// Whether the module takes parameters from the job file (a core
    /// module exporting `weir_params`, a component exporting
    /// `weir:udf/params`).
    pub fn takes_params(&self) -> bool {
        matches!(self.code, Code::Core { has_params: true, .. } | Code::Component { set_params: Some(_), .. })
    }

    /// Whether the module asks for the batch time (a core module exporting
    /// `weir_batch_time`; a component reads it from its WASI clocks).
    pub fn takes_batch_time(&self) -> bool {
        matches!(self.code, Code::Core { has_batch_time: true, .. })
    }

    /// Checks that function `name` of `kind` may be given parameters: the
    /// module must take them (`weir_params`).
    pub fn check_params(&self, name: &str, kind: UdfKind) -> Result<(), UdfError> {
        if self.takes_params() {
            return Ok(());
        }
        let why = match self.code {
            Code::Component { .. } => {
                "the component takes no parameters (it does not export the interface weir:udf/params@2.0.0; \
                 build it for the world guest-with-params)"
            }
            Code::Core { .. } => "the module takes no parameters (it does not export weir_params)",
        };
        let mut site = self.site();
        site.export = Some(self.export_of(name, kind));
        site.kind = Some(kind);
        Err(UdfError::new(site, UdfErrorKind::Params(format!("{} is given parameters, but {why}", name))))
    }

    /// Checks, when a job is loaded, that function `name` of `kind` takes
    /// `params`: the module must take parameters, and an instance given
    /// them must accept a call on an empty batch (the Rust SDK decodes the
    /// parameters there, so a missing or unknown one is found before the
    /// job runs, not in its first batch).
    pub fn probe_params(
        self: &Arc<Self>,
        name: &str,
        kind: UdfKind,
        params: &weir_plan::rdd::UdfParams,
    ) -> Result<(), UdfError> {
        self.check_params(name, kind)?;
        let mut inst = self.instantiate_with(None, None, Some((name, kind, params)))?;
        inst.call(name, kind, &0u32.to_le_bytes()).map(|_| ())
    }

    /// Whether its code was compiled now, read from the disk cache or
    /// already compiled by this process (`udf/cache.rs`).
    pub fn compiled_from(&self) -> cache::CompiledFrom {
        match self.code {
            Code::Core { from, .. } | Code::Component { from, .. } => from,
        }
    }

    /// Whether it is a component (ABI v2) rather than a core module.
    pub fn is_component(&self) -> bool {
        matches!(self.code, Code::Component { .. })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }
    /// The module's binary (the bytes its hash is of).
    pub fn bytes(&self) -> &Arc<Vec<u8>> {
        &self.bytes
    }
    pub fn size(&self) -> usize {
        self.size
    }
    pub fn limits(&self) -> &UdfLimits {
        &self.limits
    }
    /// The functions this module offers, sorted by name and kind. One name
    /// may have several kinds (`map:f` and `filter:f`).
    pub fn functions(&self) -> &[UdfFunction] {
        &self.functions
    }

    /// The function `name` of `kind`, if the module has it.
    pub fn function(&self, name: &str, kind: UdfKind) -> Option<&UdfFunction> {
        self.functions.iter().find(|f| f.name == name && f.kind == kind)
    }

    /// The kinds of the functions called `name`.
    pub fn kinds_of(&self, name: &str) -> Vec<UdfKind> {
        self.functions.iter().filter(|f| f.name == name).map(|f| f.kind).collect()
    }

    /// The export that implements function `name` of `kind` (`kind:name`
    /// unless `weir:exports` maps it to another export).
    fn export_of(&self, name: &str, kind: UdfKind) -> String {
        self.function(name, kind).map(|f| f.export.clone()).unwrap_or_else(|| kind.export_name(name))
    }

    fn site(&self) -> UdfSite {
        UdfSite { module: self.name.to_string(), hash: self.hash.short(), ..Default::default() }
    }

    /// Checks that the module offers `name` as a function of `kind`.
    pub fn check_function(&self, name: &str, kind: UdfKind) -> Result<(), UdfError> {
        match self.function(name, kind) {
            Some(_) => Ok(()),
            None => {
                let available = if self.functions.is_empty() {
                    "no functions".to_string()
                } else {
                    self.functions.iter().map(|f| format!("{} ({})", f.name, f.kind)).collect::<Vec<_>>().join(", ")
                };
                let mut site = self.site();
                site.export = Some(kind.export_name(name));
                Err(UdfError::new(site, UdfErrorKind::NoSuchFunction { name: name.into(), kind, available }))
            }
        }
    }

    /// A fresh instance in a fresh store, for one task.
    pub fn instantiate(
        self: &Arc<Self>,
        batch_time_ms: Option<i64>,
        partition: Option<u32>,
    ) -> Result<UdfInstance, UdfError> {
        self.instantiate_with(batch_time_ms, partition, None)
    }

    /// [`instantiate`](Self::instantiate), handing the instance its batch
    /// time (when the module exports `weir_batch_time`) and, for `params`
    /// `Some((name, kind, parameters))`, the job file's parameters of that
    /// function (`weir_params`), before any call (ABI §3a).
    pub fn instantiate_with(
        self: &Arc<Self>,
        batch_time_ms: Option<i64>,
        partition: Option<u32>,
        params: Option<(&str, UdfKind, &weir_plan::rdd::UdfParams)>,
    ) -> Result<UdfInstance, UdfError> {
        let mut site = self.site();
        site.batch_time_ms = batch_time_ms;
        site.partition = partition;
        let state = HostState {
            memory_limit: self.limits.memory_bytes,
            table_limit: TABLE_ELEMENTS,
            memory_limit_hit: false,
            log_budget: self.limits.log_lines_per_call,
            log_lines_per_call: self.limits.log_lines_per_call,
            last_log: None,
            module: self.name.clone(),
            fuel_granted: 0,
            fuel_burned: 0,
            memory_bytes: 0,
        };
        let (pre, has_initialize, has_batch_time) = match &self.code {
            Code::Core { pre, has_initialize, has_batch_time, .. } => (pre, *has_initialize, *has_batch_time),
            Code::Component { pre, set_params, .. } => {
                if let Some((name, kind, _)) = params {
                    self.check_params(name, kind)?;
                }
                let mut inst = ComponentInstance::new(self, pre, state, batch_time_ms, partition, site)?;
                if let (Some((name, kind, p)), Some(f)) = (params, set_params) {
                    inst.set_params(f, name, kind, p)?;
                }
                return Ok(UdfInstance { inner: Inner::Component(Box::new(inst)) });
            }
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        grant_fuel(&mut store, HOUSEKEEPING_FUEL);
        store.set_epoch_deadline(deadline_ticks(self.limits.deadline_ms));
        let instance = match pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => {
                let kind = classify(e, &store, &self.limits);
                return Err(UdfError::new(site, kind));
            }
        };
        let Some(memory) = instance.get_memory(&mut store, abi::EXPORT_MEMORY) else {
            return Err(UdfError::new(site, UdfErrorKind::MissingExport { name: abi::EXPORT_MEMORY.into() }));
        };
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, abi::EXPORT_ALLOC)
            .map_err(|_| UdfError::new(site.clone(), UdfErrorKind::MissingExport { name: abi::EXPORT_ALLOC.into() }))?;
        let mut inst =
            CoreInstance { module: self.clone(), store, instance, memory, alloc, funcs: HashMap::new(), site };
        if has_initialize {
            let init = inst.instance.get_typed_func::<(), ()>(&mut inst.store, abi::EXPORT_INITIALIZE);
            if let Ok(init) = init {
                if let Err(e) = init.call(&mut inst.store, ()) {
                    let kind = classify(e, &inst.store, &self.limits);
                    return Err(inst.error(None, kind));
                }
            }
        }
        if let (true, Some(t)) = (has_batch_time, batch_time_ms) {
            inst.set_batch_time(t)?;
        }
        if let Some((name, kind, p)) = params {
            self.check_params(name, kind)?;
            inst.set_params(name, kind, p)?;
        }
        Ok(UdfInstance { inner: Inner::Core(Box::new(inst)) })
    }
}

/// Reads a module file: regular files only, at most `module_bytes` (a device
/// or a FIFO named as a module would be read for ever).
pub fn read_module_file(path: &Path, limits: &UdfLimits) -> Result<Vec<u8>, UdfError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "?".into());
    let site = UdfSite { module: name, ..Default::default() };
    let bytes = crate::files::read_limited(path, limits.module_bytes as u64).map_err(|e| {
        let kind = match e {
            crate::files::ReadError::Io(e) => UdfErrorKind::Io(e),
            crate::files::ReadError::TooLarge { size, limit } => {
                UdfErrorKind::ModuleTooLarge { size: size as usize, limit: limit as usize }
            }
            not_regular => {
                UdfErrorKind::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, not_regular.to_string()))
            }
        };
        UdfError::new(site.clone(), kind)
    })?;
    Ok(bytes)
}

/// A function a module offers: its name and kind, and the export that
/// implements it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UdfFunction {
    pub name: String,
    pub kind: UdfKind,
    pub export: String,
}

/// The module's binary: `bytes` themselves when they start with the WASM
/// magic, assembled when they are WAT text.
pub fn to_binary(bytes: &[u8]) -> Result<Cow<'_, [u8]>, UdfErrorKind> {
    if bytes.starts_with(b"\0asm") {
        Ok(bytes.into())
    } else if looks_like_wat(bytes) {
        match wat::parse_bytes(bytes) {
            Ok(b) => Ok(b.into_owned().into()),
            Err(e) => Err(UdfErrorKind::Malformed(format!("WAT: {e}"))),
        }
    } else {
        Err(UdfErrorKind::NotWasm)
    }
}

fn deadline_ticks(ms: u64) -> u64 {
    (ms / EPOCH_TICK.as_millis() as u64).max(1)
}

fn looks_like_wat(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(4096)];
    // The cut at 4096 bytes may fall inside a multi-byte character: keep
    // the valid prefix in that case (only a real encoding error refuses).
    let s = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default(),
        Err(_) => return false,
    };
    s.trim_start().starts_with('(') || s.trim_start().starts_with(";;")
}

/// Turns a wasmtime error into a typed one.
fn classify(e: wasmtime::Error, store: &Store<HostState>, limits: &UdfLimits) -> UdfErrorKind {
    classify_state(e, store.data(), limits)
}

/// [`classify`] given the store's host state (a core module's or a
/// component's).
fn classify_state(e: wasmtime::Error, state: &HostState, limits: &UdfLimits) -> UdfErrorKind {
    let backtrace = e.downcast_ref::<WasmBacktrace>().map(|b| b.to_string()).filter(|s| !s.is_empty());
    if state.memory_limit_hit {
        return UdfErrorKind::MemoryLimit { limit: limits.memory_bytes };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => UdfErrorKind::OutOfFuel { fuel: limits.fuel_per_call },
        Some(Trap::Interrupt) => UdfErrorKind::Deadline { ms: limits.deadline_ms },
        Some(Trap::StackOverflow) => UdfErrorKind::StackOverflow,
        Some(t) => UdfErrorKind::Trap { message: t.to_string(), guest_message: state.last_log.clone(), backtrace },
        None => UdfErrorKind::Trap { message: format!("{e:#}"), guest_message: state.last_log.clone(), backtrace },
    }
}

/// One instance of a core module (ABI v1) in its own store.
struct CoreInstance {
    module: Arc<UdfModule>,
    store: Store<HostState>,
    instance: wasmtime::Instance,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    /// Looked-up exports by function name, one per kind called (a name may
    /// have several kinds).
    funcs: HashMap<String, Vec<(UdfKind, TypedFunc<(i32, i32), i64>)>>,
    site: UdfSite,
}

/// Upper bound on a guest error message we read back.
const MAX_ERROR_MESSAGE: u32 = 64 * 1024;

impl CoreInstance {
    fn error(&self, export: Option<(&str, UdfKind)>, kind: UdfErrorKind) -> UdfError {
        let mut site = self.site.clone();
        if let Some((name, k)) = export {
            site.export = Some(self.module.export_of(name, k));
            site.kind = Some(k);
        }
        UdfError::new(site, kind)
    }

    /// The message of a guest's error return (bounded; invalid UTF-8
    /// replaced), or a malformed-output error when it lies outside memory.
    fn guest_message(&self, at: Option<(&str, UdfKind)>, packed: abi::Packed) -> Result<String, UdfError> {
        let mut msg = vec![0u8; packed.len.min(MAX_ERROR_MESSAGE) as usize];
        if self.memory.read(&self.store, packed.ptr as usize, &mut msg).is_err() {
            let m = "error message lies outside linear memory".to_string();
            return Err(self.error(at, UdfErrorKind::MalformedOutput(m)));
        }
        Ok(String::from_utf8_lossy(&msg).into_owned())
    }

    fn abi_version(&mut self) -> Result<i64, UdfError> {
        let f = self
            .instance
            .get_typed_func::<(), i32>(&mut self.store, abi::EXPORT_VERSION)
            .map_err(|_| self.error(None, UdfErrorKind::MissingExport { name: abi::EXPORT_VERSION.into() }))?;
        grant_fuel(&mut self.store, HOUSEKEEPING_FUEL);
        match f.call(&mut self.store, ()) {
            Ok(v) => Ok(v as i64),
            Err(e) => {
                let kind = classify(e, &self.store, &self.module.limits);
                Err(self.error(None, kind))
            }
        }
    }

    /// Hands the instance its batch time (`weir_batch_time`), under the
    /// housekeeping fuel.
    fn set_batch_time(&mut self, time_ms: i64) -> Result<(), UdfError> {
        let f = self
            .instance
            .get_typed_func::<i64, ()>(&mut self.store, abi::EXPORT_BATCH_TIME)
            .map_err(|_| self.error(None, UdfErrorKind::MissingExport { name: abi::EXPORT_BATCH_TIME.into() }))?;
        grant_fuel(&mut self.store, HOUSEKEEPING_FUEL);
        f.call(&mut self.store, time_ms).map_err(|e| {
            let kind = classify(e, &self.store, &self.module.limits);
            self.error(None, kind)
        })
    }

    /// Hands the instance the parameters of function `name` of `kind`
    /// (`weir_params`): written into a buffer from `weir_alloc` as for a
    /// call, under a call's fuel (a guest may parse them eagerly); an error
    /// result is the guest refusing them.
    fn set_params(&mut self, name: &str, kind: UdfKind, params: &weir_plan::rdd::UdfParams) -> Result<(), UdfError> {
        let at = Some((name, kind));
        let limits = self.module.limits;
        let input = params.handoff(&kind.export_name(name));
        let f = self
            .instance
            .get_typed_func::<(i32, i32), i64>(&mut self.store, abi::EXPORT_PARAMS)
            .map_err(|_| self.error(at, UdfErrorKind::MissingExport { name: abi::EXPORT_PARAMS.into() }))?;
        let len = i32::try_from(input.len())
            .map_err(|_| self.error(at, UdfErrorKind::Params("parameters over 2 GiB".into())))?;
        grant_fuel(&mut self.store, limits.fuel_per_call);
        self.store.set_epoch_deadline(deadline_ticks(limits.deadline_ms));
        let ptr = match self.alloc.call(&mut self.store, len) {
            Ok(p) => p as u32 as usize,
            Err(e) => {
                let kind = classify(e, &self.store, &limits);
                return Err(self.error(at, kind));
            }
        };
        if self.memory.write(&mut self.store, ptr, &input).is_err() {
            let msg = format!("weir_alloc({len}) returned {ptr:#x}, outside linear memory");
            return Err(self.error(at, UdfErrorKind::MalformedOutput(msg)));
        }
        let packed = match f.call(&mut self.store, (ptr as i32, len)) {
            Ok(r) => abi::unpack(r),
            Err(e) => {
                let kind = classify(e, &self.store, &limits);
                return Err(self.error(at, kind));
            }
        };
        if packed.error {
            let msg = self.guest_message(at, packed)?;
            let m = format!("weir_params refused {}: {msg}", params.text());
            return Err(self.error(at, UdfErrorKind::Params(m)));
        }
        Ok(())
    }

    fn func(&mut self, name: &str, kind: UdfKind) -> Result<TypedFunc<(i32, i32), i64>, UdfError> {
        let at = Some((name, kind));
        // Only functions the module has of this very kind are cached, so a
        // wrong-kind call never reaches the guest.
        let cached = self.funcs.get(name).and_then(|fs| fs.iter().find(|(k, _)| *k == kind));
        match cached {
            Some((_, f)) => Ok(f.clone()),
            None => {
                self.module.check_function(name, kind).map_err(|e| self.error(at, e.kind))?;
                let export = self.module.export_of(name, kind);
                let f = self
                    .instance
                    .get_typed_func::<(i32, i32), i64>(&mut self.store, &export)
                    .map_err(|_| self.error(at, UdfErrorKind::MissingExport { name: export.clone() }))?;
                self.funcs.entry(name.to_string()).or_default().push((kind, f.clone()));
                Ok(f)
            }
        }
    }

    /// [`UdfInstance::call_chain`] without the copy out: the input batch
    /// is the concatenation of `parts` (holding `in_count` records), and the
    /// last output, validated in place in guest memory, is handed to
    /// `consume` — which reads what it needs from it before the guest runs
    /// again.
    fn call_chain_with<R>(
        &mut self,
        steps: &[(&str, UdfKind)],
        in_count: u32,
        parts: &[&[u8]],
        consume: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, UdfError> {
        let Some(&(last_name, last_kind)) = steps.last() else {
            return Err(self.error(None, UdfErrorKind::MalformedOutput("empty chain".into())));
        };
        let limits = self.module.limits;
        let first = Some(steps[0]);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = i32::try_from(total)
            .map_err(|_| self.error(first, UdfErrorKind::MalformedOutput("input batch over 2 GiB".into())))?;
        grant_fuel(&mut self.store, limits.fuel_per_call);
        self.store.set_epoch_deadline(deadline_ticks(limits.deadline_ms));
        let ptr = match self.alloc.call(&mut self.store, len) {
            Ok(p) => p as u32 as usize,
            Err(e) => {
                let kind = classify(e, &self.store, &limits);
                return Err(self.error(first, kind));
            }
        };
        let mut at = ptr;
        for part in parts {
            if self.memory.write(&mut self.store, at, part).is_err() {
                let msg = format!("weir_alloc({len}) returned {ptr:#x}, outside linear memory");
                return Err(self.error(first, UdfErrorKind::MalformedOutput(msg)));
            }
            at += part.len();
        }
        let (mut in_ptr, mut in_len) = (ptr, total);
        let mut in_count = in_count;
        for (i, &(name, kind)) in steps.iter().enumerate() {
            let at = Some((name, kind));
            if i + 1 < steps.len() && kind.one_to_one() && kind != UdfKind::Map {
                let m = format!("{kind} cannot feed another function in a chained call");
                return Err(self.error(at, UdfErrorKind::MalformedOutput(m)));
            }
            let func = self.func(name, kind)?;
            self.store.data_mut().log_budget = limits.log_lines_per_call;
            self.store.data_mut().last_log = None;
            grant_fuel(&mut self.store, limits.fuel_per_call);
            self.store.set_epoch_deadline(deadline_ticks(limits.deadline_ms));
            let packed = match func.call(&mut self.store, (in_ptr as i32, in_len as i32)) {
                Ok(r) => abi::unpack(r),
                Err(e) => {
                    let kind = classify(e, &self.store, &limits);
                    return Err(self.error(at, kind));
                }
            };
            if packed.error {
                let msg = self.guest_message(at, packed)?;
                return Err(self.error(at, UdfErrorKind::Guest(msg)));
            }
            if packed.len as usize > limits.output_bytes {
                let k = UdfErrorKind::OutputTooLarge { size: packed.len as usize, limit: limits.output_bytes };
                return Err(self.error(at, k));
            }
            // Bounds-checked before the host reads anything (a bogus length
            // must not cost host memory).
            let (p, n) = (packed.ptr as usize, packed.len as usize);
            let outside = || {
                let m = format!("output ({} bytes at {:#x}) lies outside linear memory", packed.len, packed.ptr);
                UdfErrorKind::MalformedOutput(m)
            };
            if i + 1 < steps.len() {
                let Some(src) = self.memory.data(&self.store).get(p..p + n) else {
                    return Err(self.error(at, outside()));
                };
                // An intermediate batch stays in the guest; the next function
                // reads it with its own checks. Only its count is needed.
                if n < 4 {
                    return Err(
                        self.error(at, UdfErrorKind::MalformedOutput("output shorter than a batch header".into()))
                    );
                }
                if kind == UdfKind::Map && abi::batch_count(src) != in_count {
                    let m =
                        format!("map must return one value per input ({in_count}), returned {}", abi::batch_count(src));
                    return Err(self.error(at, UdfErrorKind::MalformedOutput(m)));
                }
                in_count = abi::batch_count(src);
                (in_ptr, in_len) = (p, n);
                continue;
            }
            // Validated in place (NaNs canonicalised there), then read by
            // `consume` straight from guest memory: no copy of the batch.
            let Some(out) = self.memory.data_mut(&mut self.store).get_mut(p..p + n) else {
                return Err(self.error(at, outside()));
            };
            match abi::validate_output(kind, in_count, out) {
                Ok(_) => return Ok(consume(out)),
                Err(m) => return Err(self.error(at, UdfErrorKind::MalformedOutput(m))),
            }
        }
        Err(self.error(Some((last_name, last_kind)), UdfErrorKind::MalformedOutput("empty chain".into())))
    }

    /// Fuel consumed by the last call.
    fn fuel_used(&self) -> u64 {
        self.module.limits.fuel_per_call.saturating_sub(self.store.get_fuel().unwrap_or(0))
    }
}

/// One instance of a module (or component) in its own store: what a task
/// calls into.
pub struct UdfInstance {
    inner: Inner,
}

enum Inner {
    Core(Box<CoreInstance>),
    Component(Box<ComponentInstance>),
}

impl UdfInstance {
    pub fn module(&self) -> &Arc<UdfModule> {
        match &self.inner {
            Inner::Core(i) => &i.module,
            Inner::Component(i) => &i.module,
        }
    }

    /// Calls function `name` of `kind` on one input batch and returns the
    /// validated output batch. After an error the instance must be dropped
    /// (its memory may be in any state); the next task gets a fresh one.
    pub fn call(&mut self, name: &str, kind: UdfKind, input: &[u8]) -> Result<Vec<u8>, UdfError> {
        self.call_chain(&[(name, kind)], input)
    }

    /// Calls a pipeline of functions of this module: the input goes in once,
    /// each function's output region is handed to the next as its input
    /// without leaving guest memory (ABI §3, chained calls), and only the
    /// last output is copied out and validated. Each step gets the full fuel
    /// and deadline of one call. Only `map`, `flat_map` and `map_partitions`
    /// steps may precede another step (their output is a plain batch).
    pub fn call_chain(&mut self, steps: &[(&str, UdfKind)], input: &[u8]) -> Result<Vec<u8>, UdfError> {
        if steps.is_empty() {
            return Ok(input.to_vec());
        }
        self.call_chain_with(steps, abi::batch_count(input), &[input], |out| out.to_vec())
    }

    /// [`call_chain`](Self::call_chain) without the copy out: the input batch
    /// is the concatenation of `parts` (holding `in_count` records), and the
    /// last output, validated in place, is handed to `consume` — which reads
    /// what it needs from it before the guest runs again.
    pub fn call_chain_with<R>(
        &mut self,
        steps: &[(&str, UdfKind)],
        in_count: u32,
        parts: &[&[u8]],
        consume: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, UdfError> {
        match &mut self.inner {
            Inner::Core(i) => i.call_chain_with(steps, in_count, parts, consume),
            Inner::Component(i) => i.call_chain_with(steps, in_count, parts, consume),
        }
    }

    /// Fuel consumed by the last call.
    pub fn fuel_used(&self) -> u64 {
        match &self.inner {
            Inner::Core(i) => i.fuel_used(),
            Inner::Component(i) => i.fuel_used(),
        }
    }

    /// Fuel the instance burned since it was made (its calls, start-up and
    /// the ABI's allocations).
    pub fn fuel_burned(&self) -> u64 {
        match &self.inner {
            Inner::Core(i) => fuel_burned(&i.store),
            Inner::Component(i) => fuel_burned(&i.store),
        }
    }
}

/// One instance of a component (ABI v2) in its own store.
struct ComponentInstance {
    module: Arc<UdfModule>,
    store: Store<component::ComponentState>,
    instance: wasmtime::component::Instance,
    guest: component::Guest,
    site: UdfSite,
}

/// Most lines of a call's stdout/stderr kept to attach to its failure.
const FAILURE_LOG_LINES: usize = 20;

impl ComponentInstance {
    fn new(
        module: &Arc<UdfModule>,
        pre: &component::GuestPre<component::ComponentState>,
        host: HostState,
        batch_time_ms: Option<i64>,
        partition: Option<u32>,
        site: UdfSite,
    ) -> Result<Self, UdfError> {
        let state = component::ComponentState::new(host, &module.hash, batch_time_ms, partition);
        let mut store = Store::new(&module.runtime.engine, state);
        store.limiter(|s| &mut s.host as &mut dyn ResourceLimiter);
        // A component's start-up runs its language's runtime (an
        // interpreter's initialisation): a call's fuel, not housekeeping's.
        grant_fuel(&mut store, module.limits.fuel_per_call);
        store.set_epoch_deadline(deadline_ticks(module.limits.deadline_ms));
        // Instantiated by hand, not through the bindings' `instantiate`, to
        // keep the instance: the optional `set-params` export is looked up
        // on it.
        let made = pre
            .instance_pre()
            .instantiate(&mut store)
            .and_then(|instance| component::Guest::new(&mut store, &instance).map(|g| (instance, g)));
        let (instance, guest) = match made {
            Ok(made) => made,
            Err(e) => {
                let kind = classify_state(e, &store.data().host, &module.limits);
                return Err(UdfError::new(site, kind));
            }
        };
        Ok(ComponentInstance { module: module.clone(), store, instance, guest, site })
    }

    /// Hands the instance the parameters of function `name` of `kind`
    /// through `weir:udf/params#set-params` (`f`): the value ABI v1's
    /// `weir_params` gets, under a call's fuel and deadline; an error is
    /// the guest refusing them.
    fn set_params(
        &mut self,
        f: &wasmtime::component::ComponentExportIndex,
        name: &str,
        kind: UdfKind,
        params: &weir_plan::rdd::UdfParams,
    ) -> Result<(), UdfError> {
        let at = Some((name, kind));
        let func = self
            .instance
            .get_typed_func::<(&[u8],), (Result<(), String>,)>(&mut self.store, f)
            .map_err(|e| self.error(at, UdfErrorKind::Params(format!("weir:udf/params#set-params: {e:#}"))))?;
        let input = params.handoff(&kind.export_name(name));
        self.arm();
        let r = func.call(&mut self.store, (&input,));
        self.drain_output();
        match r {
            Ok((Ok(()),)) => Ok(()),
            Ok((Err(mut msg),)) => {
                if msg.len() > MAX_ERROR_MESSAGE as usize {
                    let mut cut = MAX_ERROR_MESSAGE as usize;
                    while !msg.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    msg.truncate(cut);
                }
                let m = format!("set-params refused {}: {msg}", params.text());
                Err(self.error(at, UdfErrorKind::Params(m)))
            }
            Err(e) => {
                let kind = classify_state(e, &self.store.data().host, &self.module.limits);
                Err(self.error(at, kind))
            }
        }
    }

    fn error(&self, export: Option<(&str, UdfKind)>, kind: UdfErrorKind) -> UdfError {
        let mut site = self.site.clone();
        if let Some((name, k)) = export {
            site.export = Some(k.export_name(name));
            site.kind = Some(k);
        }
        UdfError::new(site, kind)
    }

    fn arm(&mut self) {
        let limits = self.module.limits;
        let st = self.store.data_mut();
        st.host.log_budget = limits.log_lines_per_call;
        st.host.last_log = None;
        grant_fuel(&mut self.store, limits.fuel_per_call);
        self.store.set_epoch_deadline(deadline_ticks(limits.deadline_ms));
    }

    /// Turns what the guest wrote to stdout and stderr since the last call
    /// into log lines (within the call's budget), and keeps the last lines
    /// to attach to a failure.
    fn drain_output(&mut self) {
        let (bytes, dropped) = self.store.data().output.drain();
        if bytes.is_empty() && dropped == 0 {
            return;
        }
        let text = String::from_utf8_lossy(&bytes);
        let st = &mut self.store.data_mut().host;
        let (batch, partition) = (self.site.batch_time_ms, self.site.partition);
        for line in text.lines() {
            if st.log_budget > 0 {
                st.log_budget -= 1;
                tracing::info!(target: "weir::udf::guest", module = %st.module, ?batch, ?partition, "{line}");
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        let mut tail = lines[lines.len().saturating_sub(FAILURE_LOG_LINES)..].join("\n");
        if dropped > 0 {
            tail.push_str(&format!("\n[{dropped} bytes of output dropped over the 64 KiB per call]"));
        }
        st.last_log = Some(tail);
    }

    fn functions(&mut self) -> Result<Vec<component::FunctionInfo>, UdfError> {
        self.arm();
        let r = self.guest.weir_udf_udf().call_functions(&mut self.store);
        self.drain_output();
        match r {
            Ok(list) => {
                component::check_functions(&list).map_err(|k| self.error(None, k))?;
                Ok(list)
            }
            Err(e) => {
                let kind = classify_state(e, &self.store.data().host, &self.module.limits);
                Err(self.error(None, kind))
            }
        }
    }

    fn call_chain_with<R>(
        &mut self,
        steps: &[(&str, UdfKind)],
        in_count: u32,
        parts: &[&[u8]],
        consume: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, UdfError> {
        let limits = self.module.limits;
        // The bindings take the list as a `Vec`: one copy of the input per
        // call, small next to what an interpreter spends on it.
        let mut input: Vec<u8> = parts.concat();
        let mut in_count = in_count;
        for (i, &(name, kind)) in steps.iter().enumerate() {
            let at = Some((name, kind));
            if i + 1 < steps.len() && kind.one_to_one() && kind != UdfKind::Map {
                let m = format!("{kind} cannot feed another function in a chained call");
                return Err(self.error(at, UdfErrorKind::MalformedOutput(m)));
            }
            self.module.check_function(name, kind).map_err(|e| self.error(at, e.kind))?;
            self.arm();
            let r = self.guest.weir_udf_udf().call_call(&mut self.store, name, component::kind_to_wit(kind), &input);
            self.drain_output();
            let mut out = match r {
                Ok(Ok(out)) => out,
                Ok(Err(msg)) => {
                    let mut msg = msg;
                    if msg.len() > MAX_ERROR_MESSAGE as usize {
                        let mut cut = MAX_ERROR_MESSAGE as usize;
                        while !msg.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        msg.truncate(cut);
                    }
                    // What the guest printed before failing belongs with
                    // the failure (Python prints before it raises).
                    if let Some(out) = &self.store.data().host.last_log {
                        msg.push_str("\nguest output (last lines):\n");
                        msg.push_str(out);
                    }
                    return Err(self.error(at, UdfErrorKind::Guest(msg)));
                }
                Err(e) => {
                    let kind = classify_state(e, &self.store.data().host, &limits);
                    return Err(self.error(at, kind));
                }
            };
            if out.len() > limits.output_bytes {
                let k = UdfErrorKind::OutputTooLarge { size: out.len(), limit: limits.output_bytes };
                return Err(self.error(at, k));
            }
            if i + 1 < steps.len() {
                if out.len() < 4 {
                    return Err(
                        self.error(at, UdfErrorKind::MalformedOutput("output shorter than a batch header".into()))
                    );
                }
                if kind == UdfKind::Map && abi::batch_count(&out) != in_count {
                    let m = format!(
                        "map must return one value per input ({in_count}), returned {}",
                        abi::batch_count(&out)
                    );
                    return Err(self.error(at, UdfErrorKind::MalformedOutput(m)));
                }
                in_count = abi::batch_count(&out);
                input = out;
                continue;
            }
            return match abi::validate_output(kind, in_count, &mut out) {
                Ok(_) => Ok(consume(&out)),
                Err(m) => Err(self.error(at, UdfErrorKind::MalformedOutput(m))),
            };
        }
        Err(self.error(None, UdfErrorKind::MalformedOutput("empty chain".into())))
    }

    fn fuel_used(&self) -> u64 {
        self.module.limits.fuel_per_call.saturating_sub(self.store.get_fuel().unwrap_or(0))
    }
}

/// A job's modules, by hash and by path. Owned by the job: its limits and its
/// modules are nobody else's.
pub struct ModuleRegistry {
    runtime: Arc<UdfRuntime>,
    limits: UdfLimits,
    by_hash: Mutex<HashMap<ModuleHash, Arc<UdfModule>>>,
}

impl ModuleRegistry {
    pub fn new(runtime: Arc<UdfRuntime>, limits: UdfLimits) -> Self {
        ModuleRegistry { runtime, limits, by_hash: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> &UdfLimits {
        &self.limits
    }

    /// Loads (or finds, by content hash) the module at `path`.
    pub fn load(&self, path: &Path) -> Result<Arc<UdfModule>, UdfError> {
        let m = UdfModule::load(&self.runtime, path, self.limits)?;
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.entry(m.hash()).or_insert(m).clone())
    }

    /// Registers a module from bytes (e.g. fetched from a driver).
    pub fn insert_bytes(&self, name: &str, bytes: &[u8]) -> Result<Arc<UdfModule>, UdfError> {
        let m = UdfModule::from_bytes(&self.runtime, name.into(), PathBuf::from(name), bytes, self.limits)?;
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.entry(m.hash()).or_insert(m).clone())
    }

    /// Every loaded module's file name and size in bytes.
    pub fn module_sizes(&self) -> Vec<(String, usize)> {
        let map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|m| (m.name().to_string(), m.bytes().len())).collect()
    }

    /// Every loaded module: file name -> SHA-256 (hex).
    pub fn modules(&self) -> std::collections::BTreeMap<String, String> {
        let map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|m| (m.name().to_string(), m.hash().hex())).collect()
    }

    pub fn get(&self, hash: &ModuleHash) -> Option<Arc<UdfModule>> {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner()).get(hash).cloned()
    }
}
