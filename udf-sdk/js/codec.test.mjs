// Node tests of codec.js and index.js's runners: `node --test udf-sdk/js/`
// (udfs/build.sh runs them before building the JavaScript guests). The
// encoding is checked byte for byte against the examples of
// docs/udf-abi.md section 2 and against a plain reference encoder below.

import { test } from "node:test";
import assert from "node:assert/strict";
import vm from "node:vm";
import {
  decodeBatch,
  decodeValue,
  encodeBatch,
  encodeFlat,
  encodeMapped,
  EncodingError,
  float,
  MAX_DEPTH,
  Tuple,
  tuple,
  writer,
} from "./codec.js";
import * as weir from "./index.js";

const hex = (b) => Buffer.from(b).toString("hex");
const unhex = (s) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ""), "hex"));

// A reference encoder, written the obvious way (Buffer, BigInt), for the
// values the tests make.
function refValue(v) {
  if (v === null || v === undefined) return Buffer.from([0]);
  if (v === false) return Buffer.from([1]);
  if (v === true) return Buffer.from([2]);
  if (typeof v === "bigint" || (typeof v === "number" && Number.isInteger(v))) {
    const b = Buffer.alloc(9);
    b[0] = 3;
    b.writeBigInt64LE(BigInt(v), 1);
    return b;
  }
  if (typeof v === "number" || v instanceof weir.Float) {
    const b = Buffer.alloc(9);
    b[0] = 4;
    b.writeDoubleLE(Number(v), 1);
    return b;
  }
  if (typeof v === "string" || v instanceof Uint8Array) {
    const body = typeof v === "string" ? Buffer.from(v, "utf8") : Buffer.from(v);
    const h = Buffer.alloc(5);
    h[0] = typeof v === "string" ? 5 : 6;
    h.writeUInt32LE(body.length, 1);
    return Buffer.concat([h, body]);
  }
  const h = Buffer.alloc(5);
  h[0] = v instanceof Tuple ? 7 : 8;
  h.writeUInt32LE(v.length, 1);
  return Buffer.concat([h, ...v.map(refValue)]);
}
function refBatch(values) {
  const h = Buffer.alloc(4);
  h.writeUInt32LE(values.length, 0);
  return Buffer.concat([h, ...values.map(refValue)]);
}

// Strings of every short length, ASCII and not (2-, 3- and 4-byte UTF-8).
const STRINGS = ["", "a", "to", "the", "be a", "river", "stream", "records", "weirweir", "nine char", "x".repeat(100)];
for (const s of ["é", "日", "😀", "aé", "é1", "ab日", "日本語", "😀x", "naïve", "straße!", "ascii then é", "é".repeat(50)]) STRINGS.push(s);

test("the examples of docs/udf-abi.md section 2", () => {
  assert.equal(hex(encodeBatch(["to be"])), "01000000" + "0505000000746f206265");
  assert.equal(hex(encodeBatch([tuple("be", 2)])), "01000000" + "0702000000" + "05020000006265" + "030200000000000000");
});

test("every tag round-trips, byte for byte as the reference", () => {
  const values = [
    null,
    false,
    true,
    0,
    -1,
    42,
    1.5,
    -0.25,
    float(2),
    "s",
    new Uint8Array([0, 1, 255]),
    new Uint8Array(0),
    tuple("k", 1),
    tuple(),
    [1, "two", null],
    [],
  ];
  const enc = encodeBatch(values);
  assert.equal(hex(enc), hex(refBatch(values)));
  const back = decodeBatch(enc);
  assert.equal(back.length, values.length);
  assert.deepEqual(back.slice(0, 8), [null, false, true, 0, -1, 42, 1.5, -0.25]);
  assert.equal(back[8], 2); // float(2) decodes as the Number 2 (an f64)
  assert.equal(enc[4 + 1 + 1 + 1 + 9 * 5], 0x04);
  assert.equal(back[9], "s");
  assert.deepEqual(back[10], new Uint8Array([0, 1, 255]));
  assert.ok(back[10] instanceof Uint8Array);
  assert.deepEqual(back[11], new Uint8Array(0));
  assert.ok(back[12] instanceof Tuple);
  assert.deepEqual([...back[12]], ["k", 1]);
  assert.ok(back[13] instanceof Tuple && back[13].length === 0);
  assert.ok(!(back[14] instanceof Tuple) && Array.isArray(back[14]));
  assert.deepEqual(back[14], [1, "two", null]);
  assert.deepEqual(back[15], []);
  // undefined encodes as null; -0 and NaN as their f64 / i64 forms.
  assert.equal(hex(encodeBatch([undefined])), "0100000000");
  assert.equal(hex(encodeBatch([-0])), hex(refBatch([0])));
  assert.equal(hex(encodeBatch([NaN])), "0100000004000000000000f87f");
  assert.ok(Number.isNaN(decodeBatch(encodeBatch([NaN]))[0]));
  assert.ok(Object.is(decodeBatch(encodeBatch([float(-0)]))[0], -0));
});

test("strings: ASCII and not, every short length, round trip", () => {
  const enc = encodeBatch(STRINGS);
  assert.equal(hex(enc), hex(refBatch(STRINGS)));
  assert.deepEqual(decodeBatch(enc), STRINGS);
  // A lone surrogate has no UTF-8: TextEncoder's U+FFFD, at any length.
  for (const s of ["\ud800", "a\udc00", "ab\ud800c", "long string \ud800 here"]) {
    const want = s.replace(/[\ud800-\udfff]/g, "\ufffd");
    assert.equal(hex(encodeBatch([s])), hex(refBatch([want])));
  }
});

test("invalid UTF-8 is refused, at every length", () => {
  const bad = ["80", "ff", "c0 80", "c3", "e6 97", "ed a0 80", "f8 88 80 80 80", "61 62 63 80", "61 62 63 64 65 66 67 c3", "61 62 63 64 65 66 67 68 80", "61".repeat(20) + "ff"];
  for (const b of bad) {
    const body = unhex(b);
    const h = Buffer.alloc(9);
    h.writeUInt32LE(1, 0);
    h[4] = 5;
    h.writeUInt32LE(body.length, 5);
    const batch = new Uint8Array(Buffer.concat([h, body]));
    assert.throws(() => decodeBatch(batch), EncodingError, `bytes ${b}`);
  }
  // A valid batch after a refused one decodes (no state left behind).
  assert.deepEqual(decodeBatch(encodeBatch(["ok"])), ["ok"]);
});

test("i64: Number and BigInt bounds, both ways", () => {
  const ok = [
    2 ** 31 - 1,
    -(2 ** 31),
    2 ** 31,
    -(2 ** 31) - 1,
    2 ** 32,
    -(2 ** 32),
    2 ** 32 + 7,
    -(2 ** 32) - 7,
    2 ** 40 + 5,
    -(2 ** 40) - 5,
    2 ** 53 - 1,
    -(2 ** 53 - 1),
  ];
  for (const x of ok) {
    assert.equal(hex(encodeBatch([x])), hex(refBatch([BigInt(x)])), `${x}`);
    assert.equal(hex(encodeBatch([x])), hex(encodeBatch([BigInt(x)])), `${x}`);
    assert.equal(decodeBatch(encodeBatch([x]))[0], x);
  }
  // Beyond the safe integers: a Number is refused, a BigInt is not, and
  // decoding gives a BigInt.
  for (const x of [2 ** 53, -(2 ** 53), 2 ** 60, 1e300]) {
    assert.throws(() => encodeBatch([x]), EncodingError, `${x}`);
  }
  const big = [2n ** 53n, -(2n ** 53n), 2n ** 53n + 1n, -(2n ** 63n), 2n ** 63n - 1n, -(2n ** 32n) * 2n ** 21n];
  for (const x of big) {
    const back = decodeBatch(encodeBatch([x]))[0];
    assert.equal(typeof back, "bigint", `${x}`);
    assert.equal(back, x);
  }
  assert.equal(decodeBatch(encodeBatch([-(2n ** 53n) + 1n]))[0], -(2 ** 53) + 1);
  assert.equal(decodeBatch(encodeBatch([2n ** 53n - 1n]))[0], 2 ** 53 - 1);
  assert.equal(decodeBatch(encodeBatch([5n]))[0], 5);
  for (const x of [2n ** 63n, -(2n ** 63n) - 1n, 2n ** 64n]) {
    assert.throws(() => encodeBatch([x]), EncodingError, `${x}`);
  }
  // Pseudo-random i64s: the same bytes as the reference, and back.
  let s = 0x9e3779b97f4a7c15n;
  const xs = [];
  for (let i = 0; i < 2000; i++) {
    s ^= (s << 13n) & 0xffffffffffffffffn;
    s ^= s >> 7n;
    s ^= (s << 17n) & 0xffffffffffffffffn;
    const v = BigInt.asIntN(64, s) >> BigInt(i % 64);
    xs.push(v >= -(2n ** 53n) + 1n && v <= 2n ** 53n - 1n ? Number(v) : v);
  }
  const enc = encodeBatch(xs);
  assert.equal(hex(enc), hex(refBatch(xs)));
  assert.deepEqual(decodeBatch(enc), xs);
});

test("nesting: 64 levels and no more", () => {
  let v = 1;
  for (let i = 0; i < MAX_DEPTH; i++) v = i % 2 ? [v] : tuple(v);
  const enc = encodeBatch([v]);
  assert.equal(hex(enc), hex(refBatch([v])));
  assert.deepEqual(decodeBatch(enc), [v]);
  assert.throws(() => encodeBatch([[v]]), /nesting deeper than 64 levels/);
  // The bytes of 65 levels are refused when decoding too.
  const deep = Buffer.concat([Buffer.from([1, 0, 0, 0]), Buffer.from("0801000000".repeat(65), "hex"), Buffer.from([0])]);
  assert.throws(() => decodeBatch(new Uint8Array(deep)), /nesting deeper than 64 levels/);
});

test("a Uint8Array of another realm (componentize-js's list<u8>) decodes in place", () => {
  const other = vm.runInNewContext("new Uint8Array([9, 9, 1, 0, 0, 0, 5, 2, 0, 0, 0, 104, 105, 9]).subarray(2, 13)");
  assert.ok(!(other instanceof Uint8Array));
  // Not copied through the iterator protocol (Uint8Array.from: ~18 000
  // units of fuel a byte in the component).
  other[Symbol.iterator] = () => {
    throw new Error("iterated");
  };
  assert.deepEqual(decodeBatch(other), ["hi"]);
  assert.equal(decodeValue(other.subarray(4)), "hi");
  assert.throws(() => decodeBatch(vm.runInNewContext("new Uint8Array([1, 0, 0, 0, 0, 0])")), /trailing/);
  // Plain arrays of byte values still decode (a copy).
  assert.deepEqual(decodeBatch([1, 0, 0, 0, 2]), [true]);
});

test("malformed batches: trailing, truncated, unknown tag, counts", () => {
  assert.throws(() => decodeBatch(unhex("01000000 00 00")), /1 trailing bytes after 1 values/);
  assert.throws(() => decodeValue(unhex("00 00")), /1 trailing bytes after a value/);
  assert.throws(() => decodeBatch(unhex("010000")), EncodingError);
  assert.throws(() => decodeBatch(unhex("01000000")), /batch ends at offset 4/);
  assert.throws(() => decodeBatch(unhex("01000000 03 0000")), /8 more bytes wanted/);
  assert.throws(() => decodeBatch(unhex("01000000 04 00")), /8 more bytes wanted/);
  assert.throws(() => decodeBatch(unhex("01000000 05 03000000 6162")), /3 more bytes wanted/);
  assert.throws(() => decodeBatch(unhex("01000000 06 03000000 6162")), /3 more bytes wanted/);
  assert.throws(() => decodeBatch(unhex("01000000 09")), /unknown tag 0x09 at offset 4/);
  assert.throws(() => decodeBatch(unhex("01000000 08 ffffffff 00")), EncodingError);
  assert.throws(() => decodeBatch(unhex("ffffffff 00")), EncodingError);
  assert.deepEqual(decodeBatch(unhex("00000000")), []);
  assert.deepEqual(decodeValue(unhex("05 02000000 6869")), "hi");
  // A decoded Uint8Array is a copy, not a view of the batch.
  const batch = encodeBatch([new Uint8Array([7])]);
  const [b] = decodeBatch(batch);
  batch[batch.length - 1] = 9;
  assert.equal(b[0], 7);
});

test("values with no encoding are refused, and the next batch is whole", () => {
  for (const v of [{}, () => 1, Symbol("s"), new Map(), { a: 1 }, 1n === 1n ? new Date(0) : null]) {
    assert.throws(() => encodeBatch(["before", v]), EncodingError);
  }
  assert.deepEqual(decodeBatch(encodeBatch(["after"])), ["after"]);
});

test("a large batch grows the buffer and stays byte for byte", () => {
  const values = [];
  for (let i = 0; i < 30000; i++) {
    const s = STRINGS[i % STRINGS.length];
    values.push(i % 3 === 0 ? tuple(s, i) : i % 3 === 1 ? [s, -i * 65537, float(i / 7)] : s);
  }
  values.push(new Uint8Array(100000).fill(3)); // one value larger than a doubling
  const enc = encodeBatch(values);
  assert.ok(enc.length > 256 * 1024); // many doublings of the 4 KiB start
  assert.equal(Buffer.compare(Buffer.from(enc), refBatch(values)), 0);
  const back = decodeBatch(enc);
  assert.equal(back.length, values.length);
  assert.deepEqual(back[3], values[3]);
  assert.deepEqual(back[29999], values[29999]);
  assert.deepEqual(back.at(-1), values.at(-1));
  // A first value many times the starting 4 KiB, and a long string.
  const lone = [new Uint8Array(100000).fill(5), "é".repeat(40000)];
  assert.equal(Buffer.compare(Buffer.from(encodeBatch(lone)), refBatch(lone)), 0);
  // The same through an iterator and a writer.
  assert.equal(Buffer.compare(Buffer.from(encodeBatch(values.values())), Buffer.from(enc)), 0);
  const w = writer();
  for (const v of values) w.value(v, 0);
  assert.equal(Buffer.compare(Buffer.from(w.finish(values.length)), Buffer.from(enc)), 0);
});

test("encodeMapped and encodeFlat; a nested encode leaves the outer one whole", () => {
  const inner = [];
  const out = encodeMapped((x) => {
    inner.push(encodeBatch(["inner", x]));
    return tuple(x, "x".repeat(x));
  }, [1, 2, 3000]);
  assert.equal(hex(out), hex(refBatch([tuple(1, "x"), tuple(2, "xx"), tuple(3000, "x".repeat(3000))])));
  assert.equal(hex(inner[2]), hex(refBatch(["inner", 3000])));
  const flat = encodeFlat(
    (x) =>
      x === 2
        ? (function* () {
            yield "g";
            encodeBatch(["nested"]);
            yield x;
          })()
        : [x, "y"],
    [1, 2, 3],
  );
  assert.equal(hex(flat), hex(refBatch([1, "y", "g", 2, 3, "y"])));
  assert.throws(() => encodeMapped((x) => ({ x }), [1]), EncodingError);
  assert.throws(() => encodeMapped(() => {
    throw new RangeError("user");
  }, [1]), RangeError);
  assert.equal(hex(encodeBatch([1])), hex(refBatch([1])));
});

// The runners of index.js, through the component's export.
const run = (name, kind, values) => decodeBatch(weir.udf.call(name, kind, encodeBatch(values)));
weir.map(function t_double(x) {
  return x * 2;
});
weir.flatMap(function t_split(line) {
  return line.split(" ");
});
weir.flatMap(function* t_gen(x) {
  yield x;
  yield x;
});
weir.filter(function t_even(x) {
  return x % 2 === 0 ? 1 : 0;
});
weir.keyBy(function t_len(s) {
  return s.length;
});
weir.mapPartitions(function t_count(xs) {
  return [xs.length];
});
weir.reduce(function t_sub(a, b) {
  return a - b;
});
weir.update(function t_total(values, state) {
  return (state ?? 0) + values.reduce((a, b) => a + b, 0);
});
weir.update(function t_keyed(key, values, state) {
  return `${key}:${values.length}:${state}`;
});
weir.mapWithState(function t_mws(key, value, state) {
  const n = (state.exists() ? state.get() : 0) + (value ?? 100);
  if (state.isTimingOut()) return `${key} out`;
  state.update(n);
  return n;
});
weir.map("t_plus", (x, { n }) => x + n, { params: ["n"] });

test("index.js runs every kind", () => {
  assert.deepEqual(run("t_double", "map", [1, 2.5]), [2, 5]);
  assert.deepEqual(run("t_split", "flat-map", ["a bé c", "d"]), ["a", "bé", "c", "d"]);
  assert.deepEqual(run("t_gen", "flat-map", [1, "x"]), [1, 1, "x", "x"]);
  assert.deepEqual(run("t_even", "filter", [1, 2]), [false, true]);
  assert.deepEqual(run("t_len", "key-by", ["abc", ""]), [3, 0]);
  assert.deepEqual(run("t_count", "map-partitions", [1, 2, 3]), [3]);
  assert.deepEqual(run("t_sub", "reduce", [[10, 1, 2], [5]]), [7, 5]);
  assert.throws(() => run("t_sub", "reduce", [[]]), /an empty group/);
  assert.deepEqual(run("t_total", "update", [tuple("k", [1, 2], 10), tuple("j", [3], null)]), [13, 3]);
  assert.deepEqual(run("t_keyed", "update", [tuple("k", [1, 2], 10)]), ["k:2:10"]);
  const mws = run("t_mws", "map-with-state", [tuple("a", [1, 2], 5, false), tuple("b", [], 7, true), tuple("c", [3], null, false)]);
  assert.deepEqual(
    mws.map((t) => [...t]),
    [
      [[6, 8], 8],
      [["b out"], 7],
      [[3], 3],
    ],
  );
  assert.throws(() => run("t_plus", "map", [1]), /needs parameters/);
  weir.params.setParams(encodeBatch([tuple("map:t_plus", [4], [])]).subarray(4));
  assert.deepEqual(run("t_plus", "map", [1, 2]), [5, 6]);
  assert.throws(() => run("nope", "map", [1]), /no map function named "nope"/);
});
