// The canonical record encoding of docs/udf-abi.md section 2, in JavaScript.
//
// A batch is a little-endian u32 count followed by that many values; each
// value is a tag byte and its payload. JavaScript values map to it as:
// null and undefined -> null, booleans -> bool, integer Numbers and BigInts
// -> i64 (out of range is an error, never wrapped), other Numbers and
// `float(x)` -> f64, strings -> string, Uint8Array -> bytes, `tuple(...)`
// (a Tuple, an Array subclass) -> tuple, other Arrays -> list. Decoding gives
// back: i64 as a Number when it is a safe integer, else a BigInt; f64 as a
// Number; tuples as Tuple; lists as Array; bytes as Uint8Array.
//
// Written for SpiderMonkey without a JIT (componentize-js runs its bytecode
// interpreter inside WebAssembly), where every bytecode, function call and
// property read costs hundreds to thousands of WebAssembly instructions
// (docs/benchmarks.md, JavaScript): one function per direction does the
// whole value tree with the cursor in module variables (no method calls, no
// per-value objects), lengths are cached, short ASCII strings skip the
// TextEncoder/TextDecoder calls, and the runners of index.js hand their
// function to `encodeMapped`/`encodeFlat` rather than going through
// generators and iterators. Measured per operation there: a typed array
// element costs ~600 units of fuel, a DataView read or write ~1 300 (less
// than the four byte accesses and shifts it replaces), `subarray` ~3 700.

export const TAG_NULL = 0x00;
export const TAG_FALSE = 0x01;
export const TAG_TRUE = 0x02;
export const TAG_I64 = 0x03;
export const TAG_F64 = 0x04;
export const TAG_STR = 0x05;
export const TAG_BYTES = 0x06;
export const TAG_TUPLE = 0x07;
export const TAG_LIST = 0x08;

/** Nesting limit of the encoding (the host's). */
export const MAX_DEPTH = 64;

const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;
const TWO_32 = 4294967296;
// An i64's high word within (-2^21, 2^21) makes a safe integer of any low
// word; -2^21 does too unless the low word is 0 (that is -2^53).
const SAFE_HI = 2097152;

/** A value that has no canonical encoding, or bytes that are no batch. */
export class EncodingError extends Error {
  constructor(message) {
    super(message);
    this.name = "EncodingError";
  }
}

/** A tuple: an Array that encodes with the tuple tag (a pair is a tuple). */
export class Tuple extends Array {}

/** The tuple of the arguments: `tuple(word, 1)`. */
export function tuple(...items) {
  const n = items.length;
  const t = new Tuple(n);
  for (let i = 0; i < n; i++) t[i] = items[i];
  return t;
}

/** A Number that encodes as f64 even when it is an integer (`float(2)`). */
export class Float {
  constructor(value) {
    this.value = Number(value);
  }
  valueOf() {
    return this.value;
  }
}

/** `float(x)`: x encoded as f64. */
export function float(x) {
  return new Float(x);
}

// Strings are decoded strictly: the host sends valid UTF-8 only, and bytes
// that are not are an encoding error rather than silent U+FFFD.
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();

// Strings up to this many UTF-16 units are written unit by unit when ASCII
// (a charCodeAt and a store each), longer ones by TextEncoder.encodeInto
// (one call and a subarray: about three units' worth).
const SHORT_STR = 3;

// ---- Decoding -------------------------------------------------------------

// The reader's cursor: decoding runs no user code, so one decode finishes
// before another starts and module variables serve as its state.
let rb = new Uint8Array(0);
let rdv = new DataView(rb.buffer);
let rp = 0;
let rlen = 0;

// The bytes of `buf` as a Uint8Array of this realm. componentize-js hands a
// WIT list<u8> over as a Uint8Array of another realm: `instanceof` says no,
// and Uint8Array.from would copy it through the iterator protocol, ~18 000
// units of fuel a byte (most of a WordCount call's cost before 2026-12-02).
// A view of its buffer costs nothing per byte.
function bytesOf(buf) {
  if (buf instanceof Uint8Array) return buf;
  if (ArrayBuffer.isView(buf) && Object.prototype.toString.call(buf) === "[object Uint8Array]") {
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  return Uint8Array.from(buf);
}

function startReading(buf) {
  const bytes = bytesOf(buf);
  rb = bytes;
  rdv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  rp = 0;
  rlen = bytes.length;
}

// Drops the reference to the batch (its memory is the caller's to free).
function stopReading() {
  rb = EMPTY;
  rdv = EMPTY_DV;
  rlen = 0;
}
const EMPTY = new Uint8Array(0);
const EMPTY_DV = new DataView(EMPTY.buffer);

function short(n) {
  return new EncodingError(`batch ends at offset ${rlen}, ${n} more bytes wanted at ${rp}`);
}

function readU32() {
  if (rp + 4 > rlen) throw short(4);
  const x = rdv.getUint32(rp, true);
  rp += 4;
  return x;
}

/** Decodes the values of a batch (a Uint8Array), as an Array. */
export function decodeBatch(buf) {
  startReading(buf);
  try {
    const n = readU32();
    // Every value takes at least one byte: a count beyond the rest of the
    // batch is malformed, and never allocated.
    if (rp + n > rlen) throw short(n);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = readValue(0);
    if (rp !== rlen) throw new EncodingError(`${rlen - rp} trailing bytes after ${n} values`);
    return out;
  } finally {
    stopReading();
  }
}

/**
 * Decodes one value that fills `buf` (a Uint8Array): the job file's
 * parameters (docs/udf-abi.md §3a) are one such value, not a batch.
 */
export function decodeValue(buf) {
  startReading(buf);
  try {
    const v = readValue(0);
    if (rp !== rlen) throw new EncodingError(`${rlen - rp} trailing bytes after a value`);
    return v;
  } finally {
    stopReading();
  }
}

function readValue(depth) {
  if (rp >= rlen) throw short(1);
  const tag = rb[rp++];
  switch (tag) {
    case TAG_STR: {
      // readU32 by hand here and below: a call costs more than the read.
      if (rp + 4 > rlen) throw short(4);
      const n = rdv.getUint32(rp, true);
      rp += 4;
      if (rp + n > rlen) throw short(n);
      return readString(n);
    }
    case TAG_I64: {
      if (rp + 8 > rlen) throw short(8);
      const p = rp;
      rp = p + 8;
      const lo = rdv.getUint32(p, true);
      const hi = rdv.getInt32(p + 4, true);
      if ((hi > -SAFE_HI && hi < SAFE_HI) || (hi === -SAFE_HI && lo !== 0)) return hi * TWO_32 + lo;
      return rdv.getBigInt64(p, true);
    }
    case TAG_TUPLE:
    case TAG_LIST: {
      if (depth >= MAX_DEPTH) throw new EncodingError("nesting deeper than 64 levels");
      if (rp + 4 > rlen) throw short(4);
      const n = rdv.getUint32(rp, true);
      rp += 4;
      // Every value takes at least one byte: see decodeBatch.
      if (rp + n > rlen) throw short(n);
      const items = tag === TAG_TUPLE ? new Tuple(n) : new Array(n);
      const d = depth + 1;
      for (let i = 0; i < n; i++) items[i] = readValue(d);
      return items;
    }
    case TAG_F64: {
      if (rp + 8 > rlen) throw short(8);
      const x = rdv.getFloat64(rp, true);
      rp += 8;
      return x;
    }
    case TAG_NULL:
      return null;
    case TAG_FALSE:
      return false;
    case TAG_TRUE:
      return true;
    case TAG_BYTES: {
      const n = readU32();
      if (rp + n > rlen) throw short(n);
      const b = rb.slice(rp, rp + n);
      rp += n;
      return b;
    }
    default:
      throw new EncodingError(`unknown tag 0x${tag.toString(16).padStart(2, "0")} at offset ${rp - 1}`);
  }
}

// A string of n bytes at rp (in bounds). Up to 8 bytes of ASCII are one
// String.fromCharCode of the bytes; anything else, or a byte of 0x80 and
// up, goes to the strict TextDecoder.
function readString(n) {
  const b = rb;
  const p = rp;
  rp = p + n;
  switch (n) {
    case 0:
      return "";
    case 1: {
      const c = b[p];
      if (c < 0x80) return String.fromCharCode(c);
      break;
    }
    case 2: {
      const c0 = b[p], c1 = b[p + 1];
      if ((c0 | c1) < 0x80) return String.fromCharCode(c0, c1);
      break;
    }
    case 3: {
      const c0 = b[p], c1 = b[p + 1], c2 = b[p + 2];
      if ((c0 | c1 | c2) < 0x80) return String.fromCharCode(c0, c1, c2);
      break;
    }
    case 4: {
      const c0 = b[p], c1 = b[p + 1], c2 = b[p + 2], c3 = b[p + 3];
      if ((c0 | c1 | c2 | c3) < 0x80) return String.fromCharCode(c0, c1, c2, c3);
      break;
    }
    case 5: {
      const c0 = b[p], c1 = b[p + 1], c2 = b[p + 2], c3 = b[p + 3], c4 = b[p + 4];
      if ((c0 | c1 | c2 | c3 | c4) < 0x80) return String.fromCharCode(c0, c1, c2, c3, c4);
      break;
    }
    case 6: {
      const c0 = b[p], c1 = b[p + 1], c2 = b[p + 2], c3 = b[p + 3], c4 = b[p + 4], c5 = b[p + 5];
      if ((c0 | c1 | c2 | c3 | c4 | c5) < 0x80) return String.fromCharCode(c0, c1, c2, c3, c4, c5);
      break;
    }
    case 7: {
      const c0 = b[p], c1 = b[p + 1], c2 = b[p + 2], c3 = b[p + 3], c4 = b[p + 4], c5 = b[p + 5], c6 = b[p + 6];
      if ((c0 | c1 | c2 | c3 | c4 | c5 | c6) < 0x80) return String.fromCharCode(c0, c1, c2, c3, c4, c5, c6);
      break;
    }
    case 8: {
      const c0 = b[p], c1 = b[p + 1], c2 = b[p + 2], c3 = b[p + 3], c4 = b[p + 4], c5 = b[p + 5], c6 = b[p + 6], c7 = b[p + 7];
      if ((c0 | c1 | c2 | c3 | c4 | c5 | c6 | c7) < 0x80) return String.fromCharCode(c0, c1, c2, c3, c4, c5, c6, c7);
      break;
    }
    default:
      break;
  }
  try {
    return utf8Decoder.decode(b.subarray(p, p + n));
  } catch (e) {
    if (e instanceof TypeError) throw new EncodingError(`a string at offset ${p} is not valid UTF-8`);
    throw e;
  }
}

// ---- Encoding -------------------------------------------------------------

// The current writer's buffer, its DataView, the write position and the
// capacity (the buffer's length, cached). Every entry point loads them from
// its Writer and puts back the previous ones when it returns or throws, so
// a nested encode (a function that calls encodeBatch itself, a Proxy's trap)
// finds its own and leaves the outer one as it was.
let wb = EMPTY;
let wdv = EMPTY_DV;
let wp = 0;
let wcap = 0;

/** A growing output buffer (one batch). */
class Writer {
  constructor() {
    this.b = new Uint8Array(4096);
    this.dv = new DataView(this.b.buffer);
    this.p = 0;
  }
  /** Appends one value (the count is the caller's, `finish(n)`). */
  value(v, depth) {
    const saved = enter(this);
    try {
      writeValue(v, depth);
    } finally {
      leave(this, saved);
    }
  }
  /** The batch of the `n` values written, as a Uint8Array of its own. */
  finish(n) {
    this.dv.setUint32(0, n, true);
    return this.b.slice(0, this.p);
  }
}

// Makes `w` the current writer; returns the previous one's state.
function enter(w) {
  const saved = [wb, wdv, wp, wcap];
  wb = w.b;
  wdv = w.dv;
  wp = w.p;
  wcap = wb.length;
  return saved;
}

// Puts the current state back into `w` and makes `saved` current again.
function leave(w, saved) {
  w.b = wb;
  w.dv = wdv;
  w.p = wp;
  wb = saved[0];
  wdv = saved[1];
  wp = saved[2];
  wcap = saved[3];
}

// Makes room for n more bytes at wp: doubles the buffer until they fit.
function room(n) {
  const need = wp + n;
  if (need <= wcap) return;
  let cap = wcap * 2;
  while (cap < need) cap *= 2;
  const b = new Uint8Array(cap);
  b.set(wb.subarray(0, wp));
  wb = b;
  wdv = new DataView(b.buffer);
  wcap = cap;
}

function writeI64Big(big) {
  if (big < I64_MIN || big > I64_MAX) throw new EncodingError(`integer ${big} is outside the i64 range`);
  if (wp + 9 > wcap) room(9);
  wb[wp] = TAG_I64;
  wdv.setBigInt64(wp + 1, big, true);
  wp += 9;
}

function writeF64(x) {
  if (wp + 9 > wcap) room(9);
  wb[wp] = TAG_F64;
  wdv.setFloat64(wp + 1, x, true);
  wp += 9;
}

// One value at wp. The usual ones (strings, int32 Numbers, arrays) are
// written here without a further call; the rest by writeOther.
function writeValue(v, depth) {
  const t = typeof v;
  if (t === "string") {
    const n = v.length;
    // At most 3 bytes of UTF-8 per UTF-16 unit: room for the worst case.
    if (wp + 5 + n * 3 > wcap) room(5 + n * 3);
    const b = wb;
    const start = wp + 5;
    b[wp] = TAG_STR;
    let q = -1;
    if (n <= SHORT_STR) {
      q = start;
      for (let i = 0; i < n; i++) {
        const c = v.charCodeAt(i);
        if (c >= 0x80) {
          q = -1;
          break;
        }
        b[q++] = c;
      }
    }
    if (q < 0) q = start + utf8Encoder.encodeInto(v, b.subarray(start)).written;
    wdv.setUint32(wp + 1, q - start, true);
    wp = q;
  } else if (t === "number" && (v | 0) === v) {
    // An int32, the usual number, without Number.isInteger's call.
    if (wp + 9 > wcap) room(9);
    wb[wp] = TAG_I64;
    wdv.setInt32(wp + 1, v, true);
    wdv.setInt32(wp + 5, v >> 31, true);
    wp += 9;
  } else if (t === "object" && v !== null && Array.isArray(v)) {
    if (depth >= MAX_DEPTH) throw new EncodingError("nesting deeper than 64 levels");
    const n = v.length;
    if (wp + 5 > wcap) room(5);
    wb[wp] = v instanceof Tuple ? TAG_TUPLE : TAG_LIST;
    wdv.setUint32(wp + 1, n, true);
    wp += 5;
    const d = depth + 1;
    for (let i = 0; i < n; i++) writeValue(v[i], d);
  } else {
    writeOther(v, t);
  }
}

function writeOther(v, t) {
  switch (t) {
    case "number":
      if (!Number.isInteger(v)) {
        writeF64(v);
      } else if (!Number.isSafeInteger(v)) {
        throw new EncodingError(`integer ${v} is beyond 2^53 (use a BigInt, or float(x) for an f64)`);
      } else {
        // lo is v mod 2^32; v - lo is a multiple of 2^32, exact in a double.
        const lo = v >>> 0;
        if (wp + 9 > wcap) room(9);
        wb[wp] = TAG_I64;
        wdv.setUint32(wp + 1, lo, true);
        wdv.setInt32(wp + 5, (v - lo) / TWO_32, true);
        wp += 9;
      }
      return;
    case "boolean":
      if (wp + 1 > wcap) room(1);
      wb[wp++] = v ? TAG_TRUE : TAG_FALSE;
      return;
    case "bigint":
      writeI64Big(v);
      return;
    case "object":
      if (v === null) break;
      if (v instanceof Uint8Array) {
        const n = v.length;
        if (wp + 5 + n > wcap) room(5 + n);
        wb[wp] = TAG_BYTES;
        wdv.setUint32(wp + 1, n, true);
        wb.set(v, wp + 5);
        wp += 5 + n;
        return;
      }
      if (v instanceof Float) {
        writeF64(v.value);
        return;
      }
      return unencodable(v);
    case "undefined":
      break;
    default:
      return unencodable(v);
  }
  // null and undefined.
  if (wp + 1 > wcap) room(1);
  wb[wp++] = TAG_NULL;
}

function unencodable(v) {
  const what = v === null || typeof v !== "object" ? typeof v : v.constructor?.name ?? "object";
  throw new EncodingError(
    `a ${what} has no Weir encoding (use null, a boolean, a number, a BigInt, a string, a Uint8Array, tuple(...) or an Array)`,
  );
}

// A batch written by `write` (which writes its values with writeValue
// and returns how many), in a fresh writer made current meanwhile.
function encodeWith(write) {
  const w = writer();
  const saved = enter(w);
  let n = 0;
  try {
    n = write();
  } finally {
    leave(w, saved);
  }
  return w.finish(n);
}

/** Encodes the values of an iterable as one batch (a Uint8Array). */
export function encodeBatch(values) {
  return encodeWith(() => {
    if (Array.isArray(values)) {
      const n = values.length;
      for (let i = 0; i < n; i++) writeValue(values[i], 0);
      return n;
    }
    let n = 0;
    for (const v of values) {
      writeValue(v, 0);
      n++;
    }
    return n;
  });
}

/** The batch of `f(x)` for each x of the Array `records`. */
export function encodeMapped(f, records) {
  return encodeWith(() => {
    const n = records.length;
    for (let i = 0; i < n; i++) writeValue(f(records[i]), 0);
    return n;
  });
}

/** The batch of the values of every `f(x)` (an iterable) for each x of the Array `records`. */
export function encodeFlat(f, records) {
  return encodeWith(() => {
    const len = records.length;
    let n = 0;
    for (let i = 0; i < len; i++) {
      const out = f(records[i]);
      if (Array.isArray(out)) {
        const m = out.length;
        for (let j = 0; j < m; j++) writeValue(out[j], 0);
        n += m;
      } else {
        for (const o of out) {
          writeValue(o, 0);
          n++;
        }
      }
    }
    return n;
  });
}

/** The writer, for the kinds that write a batch as they go. */
export function writer() {
  const w = new Writer();
  w.p = 4;
  return w;
}
