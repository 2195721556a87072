//! Weir UDF SDK: write a plain Rust function, get an ABI v1 WebAssembly export.
//!
//! ```ignore
//! #[weir_udf::flat_map]
//! fn split(line: &str) -> impl Iterator<Item = &str> {
//!     line.split(' ').filter(|w| !w.is_empty())
//! }
//!
//! #[weir_udf::map]
//! fn pair(word: &str) -> (&str, i64) {
//!     (word, 1)
//! }
//!
//! #[weir_udf::reduce]
//! fn sum(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//! ```
//!
//! Build with `cargo build --target wasm32-unknown-unknown --release` as a
//! `cdylib`. Each attribute exports the function as `<kind>:<name>` with the
//! batch-at-a-time calling convention of `docs/udf-abi.md`; the SDK decodes the
//! batch in place (a `&str` argument borrows from the input buffer, no copy),
//! calls the function once per record (or group), and encodes the results into
//! one output buffer. A function may return `Result<T, E>` with `E: Display`:
//! an `Err` fails the call with that message, which reaches the user with the
//! module, export and batch named. A panic traps; its message is logged
//! through the `weir.log` import first so the host can attach it to the error.
//!
//! The function kinds and their Rust shapes:
//!
//! | attribute | signature |
//! |---|---|
//! | `map` | `fn(T) -> U` |
//! | `flat_map` | `fn(T) -> impl IntoIterator<Item = U>` |
//! | `filter` | `fn(T) -> bool` (or `fn(&T) -> bool`) |
//! | `key_by` | `fn(T) -> K` |
//! | `map_partitions` | `fn(Records<T>) -> impl IntoIterator<Item = U>` |
//! | `reduce` | `fn(V, V) -> V` |
//! | `update` | `fn(Vec<V>, Option<S>) -> Option<S>` or `fn(K, Vec<V>, Option<S>) -> Option<S>` |
//! | `map_with_state` | `fn(K, Option<V>, &mut State<S>) -> U` |
//! | `map_with_state(optional)` | `fn(K, Option<V>, &mut State<S>) -> Option<U>` (`None` emits nothing) |

extern crate alloc;

mod types;

pub use types::{Bytes, FromValue, Raw, ToValue};
pub use weir_codec as codec;
pub use weir_codec::Value;
pub use weir_udf_macros::{filter, flat_map, key_by, map, map_partitions, map_with_state, params, reduce, update};

/// The ABI version this SDK implements.
pub const ABI_VERSION: i32 = 1;

/// The batch time (ms since the epoch) of the RDD this instance computes:
/// the host hands it to every instance before its first call (ABI §3a), so
/// it is an input like the records and a recomputation sees the same time.
/// `None` outside a job (`weir udf call`). A function gets it as its first
/// argument with the `time` flag: `#[weir_udf::update(time)]`.
pub fn batch_time() -> Option<i64> {
    rt::BATCH_TIME.with(|t| t.get())
}

/// The parameters a job file gives a function (`ops.plus(4)`,
/// `geo.within(lat = 52.5, km = 10)`), as `#[weir_udf::params]` structs
/// read them: the positional values in order, then the named ones.
pub struct ParamValues<'a> {
    pub positional: Vec<&'a [u8]>,
    pub named: Vec<(&'a str, &'a [u8])>,
}

impl<'a> ParamValues<'a> {
    /// Field `index` (`name`): the named value, else the positional one,
    /// else null (so an `Option` field may be left out).
    pub fn field<T: FromValue<'a>>(&self, index: usize, name: &str) -> Result<T, String> {
        let v = match self.named.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => *v,
            None => match self.positional.get(index) {
                Some(v) => *v,
                None => return T::from_value(&[codec::TAG_NULL]).map_err(|_| format!("missing parameter `{name}`")),
            },
        };
        T::from_value(v).map_err(|e| format!("parameter `{name}`: {e}"))
    }

    /// Refuses values no field takes: more positional values than fields,
    /// or a name that is not a field's.
    pub fn check(&self, fields: &[&str]) -> Result<(), String> {
        if self.positional.len() > fields.len() {
            return Err(format!("takes {} parameter(s), got {} positional", fields.len(), self.positional.len()));
        }
        for (i, (n, _)) in self.named.iter().enumerate() {
            match fields.iter().position(|f| f == n) {
                None => return Err(format!("unknown parameter `{n}` (parameters: {})", fields.join(", "))),
                Some(j) if j < self.positional.len() => {
                    return Err(format!("parameter `{n}` is given both by position and by name"))
                }
                Some(_) if self.named[..i].iter().any(|(m, _)| m == n) => {
                    return Err(format!("parameter `{n}` is given twice"))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// A type a function's parameters decode into: derive it with
/// `#[weir_udf::params]` on a struct.
pub trait Params: Sized {
    fn from_params(p: &ParamValues<'_>) -> Result<Self, String>;
}

/// Logs a line through the host (rate-limited by the host; never affects outputs).
pub fn log(msg: &str) {
    rt::host_log(msg)
}

/// The records of a partition, decoded lazily, for `map_partitions`.
pub struct Records<'a, T> {
    inner: codec::Records<'a>,
    error: &'a core::cell::RefCell<Option<String>>,
    _t: core::marker::PhantomData<T>,
}

impl<'a, T: FromValue<'a>> Iterator for Records<'a, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if self.error.borrow().is_some() {
            return None;
        }
        match self.inner.next()? {
            Ok(raw) => match T::from_value(raw) {
                Ok(v) => Some(v),
                Err(e) => {
                    *self.error.borrow_mut() = Some(e);
                    None
                }
            },
            Err(e) => {
                *self.error.borrow_mut() = Some(e.to_string());
                None
            }
        }
    }
}

/// The state of one key in `map_with_state` (Spark's `State[S]`).
pub struct State<S> {
    value: Option<S>,
    timing_out: bool,
}

impl<S> State<S> {
    pub fn exists(&self) -> bool {
        self.value.is_some()
    }
    pub fn get(&self) -> Option<&S> {
        self.value.as_ref()
    }
    pub fn update(&mut self, s: S) {
        self.value = Some(s);
    }
    pub fn remove(&mut self) {
        self.value = None;
    }
    /// True when this call is the key's timeout call (no value).
    pub fn is_timing_out(&self) -> bool {
        self.timing_out
    }
}

/// The glue the attribute macros expand to. Not a stable API.
#[doc(hidden)]
pub mod rt {
    use super::*;
    use core::cell::RefCell;
    use weir_codec::{patch_u32, Records as RawRecords, Writer, TAG_LIST, TAG_NULL, TAG_TUPLE};

    thread_local! {
        /// Set by `weir_batch_time` (ABI §3a).
        pub(crate) static BATCH_TIME: core::cell::Cell<Option<i64>> = const { core::cell::Cell::new(None) };
        /// What `weir_params` got: `(export, [positional], [(name, value)])`.
        static PARAMS: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
        static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        /// The buffer of a chained call's input, kept (empty) to be the next
        /// output: calls over many chunks then reuse two warm buffers.
        static SPARE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    #[cfg(target_family = "wasm")]
    #[link(wasm_import_module = "weir")]
    extern "C" {
        #[link_name = "log"]
        fn weir_log(ptr: *const u8, len: usize);
    }

    pub fn host_log(msg: &str) {
        #[cfg(target_family = "wasm")]
        unsafe {
            weir_log(msg.as_ptr(), msg.len())
        }
        #[cfg(not(target_family = "wasm"))]
        let _ = msg;
    }

    #[no_mangle]
    pub extern "C" fn weir_abi_version() -> i32 {
        ABI_VERSION
    }

    /// Allocates `len` bytes for the host to write a batch into.
    #[no_mangle]
    pub extern "C" fn weir_alloc(len: usize) -> *mut u8 {
        install_panic_hook();
        let mut v: Vec<u8> = Vec::with_capacity(len.max(1));
        let p = v.as_mut_ptr();
        core::mem::forget(v);
        p
    }

    /// The host hands a fresh instance the batch time before any call.
    #[no_mangle]
    pub extern "C" fn weir_batch_time(time_ms: i64) {
        BATCH_TIME.with(|t| t.set(Some(time_ms)));
    }

    /// The host hands a fresh instance the job file's parameters of the
    /// one function it serves (a buffer from `weir_alloc`). Checked for
    /// shape here; each function decodes them into its own type.
    #[no_mangle]
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub extern "C" fn weir_params(ptr: *mut u8, len: usize) -> i64 {
        // SAFETY: the host got `ptr` from `weir_alloc(len)` and wrote `len` bytes.
        let bytes = unsafe { Vec::from_raw_parts(ptr, len, len.max(1)) };
        match split_params(&bytes) {
            Ok(_) => {
                PARAMS.with(|p| *p.borrow_mut() = Some(bytes));
                pack(core::ptr::null(), 0, false)
            }
            Err(e) => OUTPUT.with(|o| {
                let mut out = o.borrow_mut();
                out.clear();
                out.extend_from_slice(e.as_bytes());
                pack(out.as_ptr(), out.len(), true)
            }),
        }
    }

    /// `(export, [positional], [(name, value)])` into its parts.
    fn split_params(b: &[u8]) -> Result<(&str, ParamValues<'_>), String> {
        let parts = weir_codec::elements(b).map_err(|e| format!("malformed parameters: {e}"))?;
        let [export, pos, named] = parts.as_slice() else {
            return Err("malformed parameters: expected (function, [positional], [named])".into());
        };
        let export = <&str>::from_value(export).map_err(|e| format!("malformed parameters: {e}"))?;
        let positional = weir_codec::elements(pos).map_err(|e| format!("malformed parameters: {e}"))?;
        let mut out = Vec::new();
        for p in weir_codec::elements(named).map_err(|e| format!("malformed parameters: {e}"))? {
            let (k, v) = weir_codec::split_pair(p).map_err(|e| format!("malformed parameters: {e}"))?;
            out.push((<&str>::from_value(k).map_err(|e| format!("malformed parameter name: {e}"))?, v));
        }
        Ok((export, ParamValues { positional, named: out }))
    }

    /// The parameters of function `export` (`<kind>:<name>`), decoded; a
    /// function given none decodes from no values.
    pub fn params<P: Params>(export: &str) -> Result<P, String> {
        PARAMS.with(|p| {
            let p = p.borrow();
            let given = match p.as_deref() {
                Some(b) => Some(split_params(b)?),
                None => None,
            };
            match given {
                Some((e, values)) if e == export => P::from_params(&values).map_err(|m| format!("{export}: {m}")),
                _ => P::from_params(&ParamValues { positional: Vec::new(), named: Vec::new() })
                    .map_err(|m| format!("{export}: {m}")),
            }
        })
    }

    /// Refuses parameters for a function declared without any.
    pub fn no_params(export: &str) -> Result<(), String> {
        PARAMS.with(|p| match p.borrow().as_deref().map(split_params) {
            Some(Ok((e, _))) if e == export => Err(format!(
                "{export} takes no parameters (declare them: #[weir_udf::{}(params)])",
                export.split(':').next().unwrap_or("map")
            )),
            _ => Ok(()),
        })
    }

    /// The batch time for a `time` function: 0 outside a job.
    pub fn time() -> i64 {
        BATCH_TIME.with(|t| t.get()).unwrap_or(0)
    }

    fn install_panic_hook() {
        use std::sync::Once;
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| host_log(&format!("panic: {info}"))));
        });
    }

    fn pack(ptr: *const u8, len: usize, error: bool) -> i64 {
        let v = (ptr as usize as u64 & 0xffff_ffff) | ((len as u64 & 0x7fff_ffff) << 32);
        (if error { v | (1 << 63) } else { v }) as i64
    }

    /// Runs one call: takes ownership of the input buffer, lets `body` write
    /// the output, and returns the packed (ptr, len) or error.
    ///
    /// `ptr` and `len` are what the host passed to the export: by the ABI
    /// (`docs/udf-abi.md` §3) a buffer from `weir_alloc(len)` or the previous
    /// call's output. Only the exports the macros generate call this.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn call(ptr: *mut u8, len: usize, body: impl FnOnce(&[u8], &mut Vec<u8>) -> Result<(), String>) -> i64 {
        OUTPUT.with(|o| {
            let mut out = o.borrow_mut();
            // In a chained call (ABI §3) the input is the previous call's
            // output: take that buffer over instead of adopting the pointer.
            let chained = !out.is_empty() && core::ptr::eq(out.as_ptr(), ptr) && out.len() == len;
            let input = if chained {
                core::mem::replace(&mut *out, SPARE.take())
            } else {
                // SAFETY: the host got `ptr` from `weir_alloc(len)` and wrote `len` bytes.
                unsafe { Vec::from_raw_parts(ptr, len, len.max(1)) }
            };
            out.clear();
            let r = body(&input, &mut out);
            if chained {
                let mut spare = input;
                spare.clear();
                SPARE.replace(spare);
            } else {
                drop(input);
            }
            match r {
                Ok(()) => pack(out.as_ptr(), out.len(), false),
                Err(msg) => {
                    out.clear();
                    out.extend_from_slice(msg.as_bytes());
                    pack(out.as_ptr(), out.len(), true)
                }
            }
        })
    }

    /// Calls `f` on each decoded record of a batch, in order.
    #[inline]
    fn each<'a, I: FromValue<'a>>(input: &'a [u8], mut f: impl FnMut(I) -> Result<(), String>) -> Result<u32, String> {
        let n = match input.get(..4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => return Err("malformed input batch: no header".into()),
        };
        let mut p = 4;
        for i in 0..n {
            let (v, end) = I::decode_at(input, p).map_err(|e| format!("record {i}: {e}"))?;
            p = end;
            f(v)?;
        }
        Ok(n)
    }

    fn records(input: &[u8]) -> Result<RawRecords<'_>, String> {
        RawRecords::new(input).map_err(|e| format!("malformed input batch: {e}"))
    }

    pub fn map<'a, I: FromValue<'a>, O: ToValue>(
        input: &'a [u8],
        out: &mut Vec<u8>,
        mut f: impl FnMut(I) -> Result<O, String>,
    ) -> Result<(), String> {
        out.extend_from_slice(&input.get(..4).ok_or("malformed input batch")?[..4]);
        each(input, |v| {
            f(v)?.write(out);
            Ok(())
        })?;
        Ok(())
    }

    /// key_by is map on the wire: one key per record.
    pub use map as key_by;

    pub fn flat_map<'a, I: FromValue<'a>, O: ToValue, It: IntoIterator<Item = O>>(
        input: &'a [u8],
        out: &mut Vec<u8>,
        mut f: impl FnMut(I) -> Result<It, String>,
    ) -> Result<(), String> {
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut n: u32 = 0;
        each(input, |v| {
            for o in f(v)? {
                o.write(out);
                n += 1;
            }
            Ok(())
        })?;
        patch_u32(out, 0, n);
        Ok(())
    }

    pub fn filter<'a, I: FromValue<'a>>(
        input: &'a [u8],
        out: &mut Vec<u8>,
        mut f: impl FnMut(I) -> Result<bool, String>,
    ) -> Result<(), String> {
        out.extend_from_slice(&input.get(..4).ok_or("malformed input batch")?[..4]);
        each(input, |v| {
            Writer::new(out).bool(f(v)?);
            Ok(())
        })?;
        Ok(())
    }

    pub fn map_partitions<'a, I: FromValue<'a>, O: ToValue, It: IntoIterator<Item = O>>(
        input: &'a [u8],
        out: &mut Vec<u8>,
        f: impl FnOnce(Records<'a, I>) -> Result<It, String>,
    ) -> Result<(), String> {
        // The error cell must outlive the iterator handed to `f`; leaking one
        // small cell per call is fine because every task gets a fresh instance.
        let error: &'a RefCell<Option<String>> = Box::leak(Box::new(RefCell::new(None)));
        let recs = Records { inner: records(input)?, error, _t: core::marker::PhantomData };
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut n: u32 = 0;
        for o in f(recs)? {
            if error.borrow().is_some() {
                break;
            }
            o.write(out);
            n += 1;
        }
        if let Some(e) = error.borrow_mut().take() {
            return Err(e);
        }
        patch_u32(out, 0, n);
        Ok(())
    }

    /// Reads a list header at the start of `v`, returning (count, body offset).
    fn container(v: &[u8], tag: u8, what: &str) -> Result<(u32, usize), String> {
        if v.first() != Some(&tag) || v.len() < 5 {
            return Err(format!("expected a {what}"));
        }
        Ok((u32::from_le_bytes([v[1], v[2], v[3], v[4]]), 5))
    }

    /// Folds each input group (a non-empty list) left to right. The groups
    /// are walked once, value by value (no separate pass to find where each
    /// group ends).
    pub fn reduce<'a, V: FromValue<'a> + ToValue>(
        input: &'a [u8],
        out: &mut Vec<u8>,
        mut f: impl FnMut(V, V) -> Result<V, String>,
    ) -> Result<(), String> {
        let groups = records(input)?.remaining();
        out.extend_from_slice(&groups.to_le_bytes());
        let mut p = 4;
        for i in 0..groups {
            let (n, body) = container(input.get(p..).unwrap_or_default(), TAG_LIST, "list of values to reduce")
                .map_err(|e| format!("group {i}: {e}"))?;
            if n == 0 {
                return Err(format!("group {i} is empty"));
            }
            p += body;
            let mut acc: Option<V> = None;
            for _ in 0..n {
                let (v, e) = V::decode_at(input, p).map_err(|e| format!("group {i}: {e}"))?;
                p = e;
                acc = Some(match acc {
                    None => v,
                    Some(a) => f(a, v)?,
                });
            }
            if let Some(a) = acc {
                a.write(out);
            }
        }
        Ok(())
    }

    /// Each group is `(key, [values], state | null)`; writes `state | null`.
    pub fn update<'a, K: FromValue<'a>, V: FromValue<'a>, S: FromValue<'a> + ToValue>(
        input: &'a [u8],
        out: &mut Vec<u8>,
        mut f: impl FnMut(K, Vec<V>, Option<S>) -> Result<Option<S>, String>,
    ) -> Result<(), String> {
        let recs = records(input)?;
        out.extend_from_slice(&recs.remaining().to_le_bytes());
        for (i, r) in recs.enumerate() {
            let g = r.map_err(|e| e.to_string())?;
            let (n, p) = container(g, TAG_TUPLE, "(key, values, state) tuple")?;
            if n != 3 {
                return Err(format!("group {i}: expected (key, values, state)"));
            }
            // Each part decoded where it starts: the values are walked once.
            let (key, p) = K::decode_at(g, p).map_err(|e| format!("group {i} key: {e}"))?;
            let (values, p) = Vec::<V>::decode_at(g, p).map_err(|e| format!("group {i} values: {e}"))?;
            let (state, _) = Option::<S>::decode_at(g, p).map_err(|e| format!("group {i} state: {e}"))?;
            match f(key, values, state)? {
                Some(s) => s.write(out),
                None => out.push(TAG_NULL),
            }
        }
        Ok(())
    }

    /// Each group is `(key, [values], state | null, timing_out)`; writes
    /// `([outputs], state | null)`, calling `f` once per value (once with no
    /// value when timing out).
    pub fn map_with_state<'a, K: FromValue<'a> + Clone, V: FromValue<'a>, S: FromValue<'a> + ToValue, O: ToValue>(
        input: &'a [u8],
        out: &mut Vec<u8>,
        mut f: impl FnMut(K, Option<V>, &mut State<S>) -> Result<O, String>,
    ) -> Result<(), String> {
        map_with_state_opt(input, out, |k, v, s| f(k, v, s).map(Some))
    }

    /// As [`map_with_state`], for `#[map_with_state(optional)]`: a call that
    /// returns `None` emits nothing (the outputs list is shorter).
    pub fn map_with_state_opt<
        'a,
        K: FromValue<'a> + Clone,
        V: FromValue<'a>,
        S: FromValue<'a> + ToValue,
        O: ToValue,
    >(
        input: &'a [u8],
        out: &mut Vec<u8>,
        mut f: impl FnMut(K, Option<V>, &mut State<S>) -> Result<Option<O>, String>,
    ) -> Result<(), String> {
        let recs = records(input)?;
        out.extend_from_slice(&recs.remaining().to_le_bytes());
        for (i, r) in recs.enumerate() {
            let g = r.map_err(|e| e.to_string())?;
            let (n, p) = container(g, TAG_TUPLE, "(key, values, state, timing_out) tuple")?;
            if n != 4 {
                return Err(format!("group {i}: expected (key, values, state, timing_out)"));
            }
            let (key, p) = K::decode_at(g, p).map_err(|e| format!("group {i} key: {e}"))?;
            let (values, p) = Vec::<V>::decode_at(g, p).map_err(|e| format!("group {i} values: {e}"))?;
            let (value, p) = Option::<S>::decode_at(g, p).map_err(|e| format!("group {i} state: {e}"))?;
            let (timing_out, _) = bool::decode_at(g, p).map_err(|e| format!("group {i} timing_out: {e}"))?;
            let mut state = State { value, timing_out };
            out.push(TAG_TUPLE);
            out.extend_from_slice(&2u32.to_le_bytes());
            out.push(TAG_LIST);
            let at = out.len();
            out.extend_from_slice(&0u32.to_le_bytes());
            let mut k = 0u32;
            if timing_out {
                if let Some(o) = f(key.clone(), None, &mut state)? {
                    o.write(out);
                    k += 1;
                }
            } else {
                for v in values {
                    if let Some(o) = f(key.clone(), Some(v), &mut state)? {
                        o.write(out);
                        k += 1;
                    }
                }
            }
            patch_u32(out, at, k);
            match &state.value {
                Some(s) => s.write(out),
                None => out.push(TAG_NULL),
            }
        }
        Ok(())
    }
}
