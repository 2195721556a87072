// The Weir UDF ABI v1 for AssemblyScript (docs/udf-abi.md, docs/udfs.md).
//
// A module built with this SDK re-exports the two functions every module
// needs, reads each record with a Reader and writes its values with a
// Writer; the run* helpers walk the input batch and finish the output batch:
//
//   import { Reader, Writer, runMap } from "weir-udf-assemblyscript/assembly";
//   export { weir_abi_version, weir_alloc } from "weir-udf-assemblyscript/assembly";
//
//   function pairWord(r: Reader, w: Writer): void {
//     const s = r.str();
//     w.tuple(2); w.strBytes(s, r.strLen); w.i64(1);
//   }
//   export function pair(ptr: usize, len: u32): i64 { return runMap(ptr, len, pairWord); }
//
// The batch time and the job file's parameters (docs/udf-abi.md, section
// 3a): a module that wants them also re-exports `weir_batch_time` and
// `weir_params`; then `batchTime()` returns the time and `param("n", 0)` a
// Reader at the parameter named "n", else at positional value 0 (null when
// neither was given). A module declares which functions take which
// parameters at its top level, `takesParams("map:plus", ["n"]);`, and the
// SDK then refuses, when the job loads, parameters for a function that
// declares none (`map:double takes no parameters`), an unknown, repeated
// or missing name and surplus positional values.
//
// AssemblyScript cannot name an export "map:pair", so a module declares its
// UDFs in a `weir:exports` custom section, appended after the build by
// `node declare.cjs MODULE.wasm DECLARATIONS` (one `export = kind` per line).
//
// Build with `asc ... --runtime stub --use abort=`: no garbage collector,
// and no `env.abort` import (the host provides none; an assertion traps).
//
// Memory: every task gets a fresh instance, so all allocation goes through
// the stub runtime's bump allocator and nothing is freed (ABI §3). Input
// bytes are never trusted: every read is bounds-checked, and the first
// problem is kept in Reader.err and returned to the host as the call's error.

export const NULL: u8 = 0x00;
export const FALSE: u8 = 0x01;
export const TRUE: u8 = 0x02;
export const I64: u8 = 0x03;
export const F64: u8 = 0x04;
export const STR: u8 = 0x05;
export const BYTES: u8 = 0x06;
export const TUPLE: u8 = 0x07;
export const LIST: u8 = 0x08;

export function weir_abi_version(): i32 {
  return 1;
}

export function weir_alloc(len: i32): usize {
  return heap.alloc(<usize>len);
}

// ------------------------------------------------------------ batch time and parameters

let batchTimeMs: i64 = 0;
// The encoded positional and named lists of the parameters (0: none given).
let paramsPos: usize = 0;
let paramsPosLen: u32 = 0;
let paramsNamed: usize = 0;
let paramsNamedLen: u32 = 0;
let paramsFn: string | null = null;
// What takesParams declared: functions (`<kind>:<name>`) and their names.
let declaredFns: Array<string> | null = null;
let declaredNames: Array<Array<string>> = [];

/// Declares that function `fn` (`<kind>:<name>`, as "map:plus") takes the
/// parameters `names` from the job file; positional values take the names
/// in order. Call it at the module's top level (it runs when the instance
/// starts, before `weir_params`). Once a module declares one function,
/// `weir_params` refuses, for every function, what the declarations do not
/// allow: parameters for an undeclared function (`map:double takes no
/// parameters`), a name not declared (``unknown parameter `m` (parameters:
/// n)``), a name given twice, a missing one (``missing parameter `n```),
/// more positional values than names. A module that declares nothing checks
/// nothing (as before this existed).
export function takesParams(fn: string, names: Array<string>): void {
  let fns = declaredFns;
  if (fns === null) {
    fns = [];
    declaredFns = fns;
  }
  fns.push(fn);
  declaredNames.push(names);
}

/// Why the declarations refuse parameters `(pos, named)` for `f`, or null.
function refusal(f: string, pos: usize, posLen: u32, named: usize, namedLen: u32): string | null {
  const fns = declaredFns;
  if (fns === null) return null;
  const at = fns.indexOf(f);
  if (at < 0) return f + " takes no parameters";
  const names = declaredNames[at];
  const list = names.join(", ");
  const given = new Array<bool>(names.length);
  const p = new Reader(pos, posLen);
  const m = p.list();
  if (p.err !== null) return "malformed parameters";
  if (<i32>m > names.length) {
    return f + " takes " + names.length.toString() + " parameter(s) (" + list + "), given " + m.toString() + " by position";
  }
  for (let j: i32 = 0; j < <i32>m; j++) given[j] = true;
  const r = new Reader(named, namedLen);
  const n = r.list();
  for (let k: u32 = 0; k < n && r.err === null; k++) {
    r.tuple();
    const key = r.string();
    r.skip();
    if (r.err !== null) break;
    const i = names.indexOf(key);
    if (i < 0) return "unknown parameter `" + key + "` (parameters: " + list + ")";
    if (given[i]) return "parameter `" + key + "` is given twice";
    given[i] = true;
  }
  if (r.err !== null) return "malformed parameters";
  for (let j: i32 = 0; j < names.length; j++) {
    if (!given[j]) return "missing parameter `" + names[j] + "`";
  }
  return null;
}

/// The host calls it on every fresh instance in a job, before any call.
export function weir_batch_time(timeMs: i64): void {
  batchTimeMs = timeMs;
}

/// The host calls it once on an instance that serves a function given
/// parameters, before any call: `(function, [positional], [(name, value)])`.
/// The buffer is from `weir_alloc` and the stub runtime never frees, so it
/// stays valid for the instance's life.
export function weir_params(ptr: usize, len: u32): i64 {
  const r = new Reader(ptr, len);
  const malformed = "malformed parameters: expected (function, [positional], [named])";
  if (r.tuple() != 3) return fail(malformed);
  const f = r.string();
  const pos = r.p;
  const posIsList = r.peek() == LIST;
  r.skip();
  const named = r.p;
  const namedIsList = r.peek() == LIST;
  r.skip();
  if (r.err !== null || r.avail != 0 || !posIsList || !namedIsList) return fail(malformed);
  const refused = refusal(f, pos, <u32>(named - pos), named, <u32>(r.p - named));
  if (refused !== null) return fail(refused);
  paramsFn = f;
  paramsPos = pos;
  paramsPosLen = <u32>(named - pos);
  paramsNamed = named;
  paramsNamedLen = <u32>(r.p - named);
  return 0;
}

/// The batch time (ms since the epoch) of the RDD this instance computes;
/// 0 outside a job (`weir udf call`).
export function batchTime(): i64 {
  return batchTimeMs;
}

/// Whether the job file gave this instance's function parameters.
export function hasParams(): bool {
  return paramsPos != 0;
}

/// `<kind>:<name>` of the function the parameters are for, or null.
export function paramsFunction(): string | null {
  return paramsFn;
}

/// How many positional values the parameters have.
export function paramCount(): u32 {
  if (paramsPos == 0) return 0;
  return new Reader(paramsPos, paramsPosLen).list();
}

/// A Reader at the parameter named `name` (null: by position only), else
/// at positional value `index`; null when neither was given. Read the value
/// with the Reader's methods and check its `err`.
export function param(name: string | null, index: u32): Reader | null {
  if (paramsPos == 0) return null;
  if (name !== null) {
    const want = String.UTF8.encode(name);
    const wp = changetype<usize>(want);
    const wn = <u32>want.byteLength;
    const r = new Reader(paramsNamed, paramsNamedLen);
    const n = r.list();
    for (let i: u32 = 0; i < n && r.err === null; i++) {
      r.tuple();
      const k = r.str();
      if (r.err === null && r.strLen == wn && memory.compare(k, wp, <usize>wn) == 0) return r;
      r.skip();
    }
  }
  const p = new Reader(paramsPos, paramsPosLen);
  const m = p.list();
  if (index >= m) return null;
  for (let j: u32 = 0; j < index; j++) p.skip();
  return p.err === null ? p : null;
}

/// The packed result: bits 0..31 pointer, 32..62 length, 63 error flag.
export function pack(ptr: usize, len: u32, error: bool): i64 {
  let v = <u64>ptr | ((<u64>(len & 0x7fffffff)) << 32);
  if (error) v |= (<u64>1) << 63;
  return <i64>v;
}

/// A guest error: the host reports `msg` as the call's failure.
export function fail(msg: string): i64 {
  const b = String.UTF8.encode(msg);
  return pack(changetype<usize>(b), <u32>b.byteLength, true);
}

/// A bounds-checked reader over encoded values.
@unmanaged
export class Reader {
  p: usize;
  end: usize;
  /// The first error, or null; afterwards every read returns zeros.
  err: string | null = null;
  /// The byte length of the last string or bytes value read.
  strLen: u32 = 0;

  constructor(ptr: usize, len: u32) {
    this.p = ptr;
    this.end = ptr + <usize>len;
  }

  fail(msg: string): void {
    if (this.err === null) this.err = msg;
    this.p = this.end;
  }

  get avail(): usize {
    return this.end - this.p;
  }

  u32(): u32 {
    if (this.avail < 4) {
      this.fail("truncated input");
      return 0;
    }
    const v = load<u32>(this.p);
    this.p += 4;
    return v;
  }

  /// The next value's tag, without consuming it (0xff at the end).
  peek(): u8 {
    return this.avail > 0 ? load<u8>(this.p) : 0xff;
  }

  tag(t: u8, what: string): bool {
    if (this.avail < 1 || load<u8>(this.p) != t) {
      this.fail(what);
      return false;
    }
    this.p += 1;
    return true;
  }

  /// A batch header: the record count (each record is at least `min` bytes).
  batch(min: u32): u32 {
    const n = this.u32();
    if (min > 0 && <usize>n > this.avail / <usize>min) {
      this.fail("malformed input batch: count too large");
      return 0;
    }
    return n;
  }

  /// A string value: returns a pointer to its UTF-8 bytes (in place) and
  /// sets strLen.
  str(): usize {
    this.strLen = 0;
    if (!this.tag(STR, "expected a string")) return this.p;
    return this.lengthPrefixed("string runs past the end of the input");
  }

  /// A string value as an AssemblyScript string (decoded: allocates).
  string(): string {
    const p = this.str();
    return String.UTF8.decodeUnsafe(p, this.strLen);
  }

  bytes(): usize {
    this.strLen = 0;
    if (!this.tag(BYTES, "expected bytes")) return this.p;
    return this.lengthPrefixed("bytes run past the end of the input");
  }

  private lengthPrefixed(what: string): usize {
    const n = this.u32();
    if (<usize>n > this.avail) {
      this.fail(what);
      return this.p;
    }
    const s = this.p;
    this.p += <usize>n;
    this.strLen = n;
    return s;
  }

  i64(): i64 {
    if (!this.tag(I64, "expected an i64") || this.avail < 8) {
      this.fail("expected an i64");
      return 0;
    }
    const v = load<i64>(this.p);
    this.p += 8;
    return v;
  }

  f64(): f64 {
    if (!this.tag(F64, "expected an f64") || this.avail < 8) {
      this.fail("expected an f64");
      return 0;
    }
    const v = load<f64>(this.p);
    this.p += 8;
    return v;
  }

  bool(): bool {
    const t = this.peek();
    if (t != TRUE && t != FALSE) {
      this.fail("expected a bool");
      return false;
    }
    this.p += 1;
    return t == TRUE;
  }

  /// A tuple header: its element count.
  tuple(): u32 {
    return this.tag(TUPLE, "expected a tuple") ? this.u32() : 0;
  }

  /// A list header: its element count.
  list(): u32 {
    return this.tag(LIST, "expected a list") ? this.u32() : 0;
  }

  /// Skips one value of any type (at most 64 levels deep).
  skip(depth: i32 = 0): void {
    if (depth > 64) {
      this.fail("values nested too deeply");
      return;
    }
    const t = this.peek();
    if (t == 0xff) {
      this.fail("truncated input");
      return;
    }
    this.p += 1;
    if (t == NULL || t == FALSE || t == TRUE) return;
    if (t == I64 || t == F64) {
      if (this.avail < 8) this.fail("truncated input");
      else this.p += 8;
      return;
    }
    if (t == STR || t == BYTES) {
      this.lengthPrefixed("value runs past the end of the input");
      return;
    }
    if (t == TUPLE || t == LIST) {
      const n = this.u32();
      for (let i: u32 = 0; i < n && this.err === null; i++) this.skip(depth + 1);
      return;
    }
    this.fail("unknown value tag");
  }
}

/// A growable output batch; the first 4 bytes hold the record count.
@unmanaged
export class Writer {
  buf: usize;
  len: u32 = 4;
  cap: u32;

  constructor(hint: u32) {
    this.cap = hint < 16 ? 16 : hint;
    this.buf = heap.alloc(<usize>this.cap);
  }

  reserve(n: u32): void {
    if (this.cap - this.len >= n) return;
    let cap = <u64>this.cap * 2;
    const want = <u64>this.len + <u64>n;
    if (cap < want) cap = want;
    if (cap > 0x7fffffff) unreachable();
    const b = heap.alloc(<usize>cap);
    memory.copy(b, this.buf, <usize>this.len);
    this.buf = b;
    this.cap = <u32>cap;
  }

  u8(b: u8): void {
    this.reserve(1);
    store<u8>(this.buf + <usize>this.len, b);
    this.len += 1;
  }

  u32(v: u32): void {
    this.reserve(4);
    store<u32>(this.buf + <usize>this.len, v);
    this.len += 4;
  }

  null(): void {
    this.u8(NULL);
  }

  bool(b: bool): void {
    this.u8(b ? TRUE : FALSE);
  }

  i64(v: i64): void {
    this.reserve(9);
    store<u8>(this.buf + <usize>this.len, I64);
    store<i64>(this.buf + <usize>this.len + 1, v);
    this.len += 9;
  }

  /// Any NaN is written as the canonical one.
  f64(v: f64): void {
    this.reserve(9);
    store<u8>(this.buf + <usize>this.len, F64);
    store<u64>(this.buf + <usize>this.len + 1, isNaN(v) ? 0x7ff8000000000000 : reinterpret<u64>(v));
    this.len += 9;
  }

  /// A string value from `n` UTF-8 bytes at `p`.
  strBytes(p: usize, n: u32): void {
    this.lengthPrefixed(STR, p, n);
  }

  /// A string value from an AssemblyScript string (encoded: allocates).
  string(s: string): void {
    const b = String.UTF8.encode(s);
    this.lengthPrefixed(STR, changetype<usize>(b), <u32>b.byteLength);
  }

  bytes(p: usize, n: u32): void {
    this.lengthPrefixed(BYTES, p, n);
  }

  private lengthPrefixed(tag: u8, p: usize, n: u32): void {
    this.reserve(5 + n);
    store<u8>(this.buf + <usize>this.len, tag);
    store<u32>(this.buf + <usize>this.len + 1, n);
    memory.copy(this.buf + <usize>this.len + 5, p, <usize>n);
    this.len += 5 + n;
  }

  tuple(n: u32): void {
    this.u8(TUPLE);
    this.u32(n);
  }

  list(n: u32): void {
    this.u8(LIST);
    this.u32(n);
  }

  /// Writes the record count and returns the packed result.
  finish(count: u32): i64 {
    store<u32>(this.buf, count);
    return pack(this.buf, this.len, false);
  }
}

/// map (and key_by): `f` reads one record and writes exactly one value.
export function runMap(ptr: usize, len: u32, f: (r: Reader, w: Writer) => void): i64 {
  const r = new Reader(ptr, len);
  const n = r.batch(1);
  const w = new Writer(len * 2 + 64);
  for (let i: u32 = 0; i < n && r.err === null; i++) f(r, w);
  const e = r.err;
  if (e !== null) return fail(e);
  return w.finish(n);
}

/// flat_map: `f` reads one record, writes any number of values and returns
/// how many.
export function runFlatMap(ptr: usize, len: u32, f: (r: Reader, w: Writer) => u32): i64 {
  const r = new Reader(ptr, len);
  const n = r.batch(1);
  const w = new Writer(len * 2 + 64);
  let count: u32 = 0;
  for (let i: u32 = 0; i < n && r.err === null; i++) count += f(r, w);
  const e = r.err;
  if (e !== null) return fail(e);
  return w.finish(count);
}

/// filter: `f` reads one record and says whether to keep it.
export function runFilter(ptr: usize, len: u32, f: (r: Reader) => bool): i64 {
  const r = new Reader(ptr, len);
  const n = r.batch(1);
  const w = new Writer(n + 4);
  for (let i: u32 = 0; i < n && r.err === null; i++) w.bool(f(r));
  const e = r.err;
  if (e !== null) return fail(e);
  return w.finish(n);
}

/// reduce over i64 values: the left fold f(f(v1, v2), v3)... per group.
export function runReduceI64(ptr: usize, len: u32, f: (a: i64, b: i64) => i64): i64 {
  const r = new Reader(ptr, len);
  const n = r.batch(5 + 9);
  const w = new Writer(4 + 9 * n);
  for (let i: u32 = 0; i < n && r.err === null; i++) {
    const k = r.list();
    if (r.err !== null) break;
    if (k == 0) return fail("a group to reduce is empty");
    let acc = r.i64();
    for (let j: u32 = 1; j < k && r.err === null; j++) acc = f(acc, r.i64());
    w.i64(acc);
  }
  const e = r.err;
  if (e !== null) return fail(e);
  return w.finish(n);
}
