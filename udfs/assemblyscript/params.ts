// Parameters from the job file and the batch time in AssemblyScript (the
// SDK's param() and batchTime(); docs/udf-abi.md, section 3a): the same
// functions, with the same outputs, as udfs/testops's (Rust SDK), so
// tests/udf_params.rs runs one job over both and compares.
//
//   plus       map     x -> x + n  (`a.plus(4)` or `a.plus(n = 4)`)
//   level_is   filter  lines whose first word is the level (`a.level_is("ERROR")`)
//   scaled_at  map     x -> (x * factor, batch time)  (`a.scaled_at(factor = 10)`)
//   lookup     map     key -> (key, name or null), from a dataset of [key,
//                      name] pairs (`a.lookup(users)`)
//   double     map     x -> 2x; takes no parameters (the SDK refuses them)
//
// takesParams declares each function's parameters: the SDK refuses an
// unknown, repeated or missing one, and any for `double`, when the job loads.
// params.exports declares the kinds (the weir:exports section).
import {
  Reader,
  Writer,
  batchTime,
  param,
  runFilter,
  runMap,
  takesParams,
} from "../../udf-sdk/assemblyscript/assembly/index";
export {
  weir_abi_version,
  weir_alloc,
  weir_batch_time,
  weir_params,
} from "../../udf-sdk/assemblyscript/assembly/index";

takesParams("map:plus", ["n"]);
takesParams("filter:level_is", ["level"]);
takesParams("map:scaled_at", ["factor"]);
takesParams("map:lookup", ["table"]);

/// An i64 parameter named `name` or at positional `index`; a missing or
/// mistyped one fails the record's reader (the call's error).
function paramI64(r: Reader, name: string, index: u32): i64 {
  const p = param(name, index);
  if (p === null) {
    r.fail("no parameter " + name);
    return 0;
  }
  const v = p.i64();
  const e = p.err;
  if (e !== null) r.fail("parameter " + name + ": " + e);
  return v;
}

function plusOne(r: Reader, w: Writer): void {
  const n = paramI64(r, "n", 0);
  w.i64(r.i64() + n);
}

// Rust's char::is_whitespace on ASCII: space, \t, \n, \x0b, \x0c, \r.
function isWs(b: u8): bool {
  return b == 0x20 || (b >= 0x09 && b <= 0x0d);
}

function levelIs(r: Reader): bool {
  const p = param("level", 0);
  if (p === null) {
    r.fail("no parameter level");
    return false;
  }
  const want = p.str();
  const wantLen = p.strLen;
  const e = p.err;
  if (e !== null) {
    r.fail("parameter level: " + e);
    return false;
  }
  let s = r.str();
  const end = s + <usize>r.strLen;
  while (s < end && isWs(load<u8>(s))) s++;
  const start = s;
  while (s < end && !isWs(load<u8>(s))) s++;
  const n = <u32>(s - start);
  return n > 0 && n == wantLen && memory.compare(start, want, <usize>n) == 0;
}

function scaledAt(r: Reader, w: Writer): void {
  const factor = paramI64(r, "factor", 0);
  const x = r.i64();
  w.tuple(2);
  w.i64(x * factor);
  w.i64(batchTime());
}

function lookupKey(r: Reader, w: Writer): void {
  const table = param(null, 0);
  if (table === null) {
    r.fail("lookup: no table (give it a dataset: a.lookup(users))");
    return;
  }
  const key = r.str();
  const keyLen = r.strLen;
  w.tuple(2);
  w.strBytes(key, keyLen);
  const n = table.list();
  for (let i: u32 = 0; i < n && table.err === null; i++) {
    if (table.tuple() != 2) table.fail("lookup: the table holds [key, name] pairs");
    const k = table.str();
    const kLen = table.strLen;
    const v = table.str();
    const vLen = table.strLen;
    if (table.err !== null) break;
    if (kLen == keyLen && memory.compare(k, key, <usize>kLen) == 0) {
      w.strBytes(v, vLen);
      return;
    }
  }
  const e = table.err;
  if (e !== null) {
    r.fail(e);
    return;
  }
  w.null();
}

function twice(r: Reader, w: Writer): void {
  w.i64(r.i64() * 2);
}

export function plus(ptr: usize, len: u32): i64 {
  return runMap(ptr, len, plusOne);
}

export function level_is(ptr: usize, len: u32): i64 {
  return runFilter(ptr, len, levelIs);
}

export function scaled_at(ptr: usize, len: u32): i64 {
  return runMap(ptr, len, scaledAt);
}

export function lookup(ptr: usize, len: u32): i64 {
  return runMap(ptr, len, lookupKey);
}

export function double(ptr: usize, len: u32): i64 {
  return runMap(ptr, len, twice);
}
