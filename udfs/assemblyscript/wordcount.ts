// WordCount in AssemblyScript: the same functions, with the same outputs byte
// for byte, as the Rust udfs/wordcount, the C udfs/c/wordcount.c and the WAT
// udfs/wat/wordcount.wat:
//
//   split      flat_map   line -> its words (split on ASCII whitespace, no empty words)
//   pair       map        word -> (word, 1)
//   sum        reduce     left fold of a + b over each group (wrapping)
//   subtract   reduce     left fold of a - b over each group
//
// AssemblyScript cannot name an export "flat_map:split": wordcount.exports
// declares the kinds, and udfs/build.sh appends it as the module's
// `weir:exports` section (udf-sdk/assemblyscript/declare.cjs).
import { Reader, Writer, runFlatMap, runMap, runReduceI64 } from "../../udf-sdk/assemblyscript/assembly/index";
export { weir_abi_version, weir_alloc } from "../../udf-sdk/assemblyscript/assembly/index";

// Rust's u8::is_ascii_whitespace: space, \t, \n, \x0c, \r (not \x0b).
function isWs(b: u8): bool {
  return b == 0x20 || b == 0x09 || b == 0x0a || b == 0x0c || b == 0x0d;
}

function splitLine(r: Reader, w: Writer): u32 {
  let s = r.str();
  const e = s + <usize>r.strLen;
  let words: u32 = 0;
  while (r.err === null) {
    while (s < e && isWs(load<u8>(s))) s++;
    if (s == e) break;
    const start = s;
    while (s < e && !isWs(load<u8>(s))) s++;
    w.strBytes(start, <u32>(s - start));
    words++;
  }
  return words;
}

function pairWord(r: Reader, w: Writer): void {
  const word = r.str();
  w.tuple(2);
  w.strBytes(word, r.strLen);
  w.i64(1);
}

export function split(ptr: usize, len: u32): i64 {
  return runFlatMap(ptr, len, splitLine);
}

export function pair(ptr: usize, len: u32): i64 {
  return runMap(ptr, len, pairWord);
}

export function sum(ptr: usize, len: u32): i64 {
  return runReduceI64(ptr, len, (a: i64, b: i64): i64 => a + b);
}

export function subtract(ptr: usize, len: u32): i64 {
  return runReduceI64(ptr, len, (a: i64, b: i64): i64 => a - b);
}
