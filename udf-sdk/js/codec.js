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
  const t = new Tuple(items.length);
  for (let i = 0; i < items.length; i++) t[i] = items[i];
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

/** Decodes the values of a batch (a Uint8Array), as an Array. */
export function decodeBatch(buf) {
  const bytes = buf instanceof Uint8Array ? buf : Uint8Array.from(buf);
  const r = new Reader(bytes);
  const n = r.u32();
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = r.value(0);
  if (r.p !== bytes.length) {
    throw new EncodingError(`${bytes.length - r.p} trailing bytes after ${n} values`);
  }
  return out;
}

/**
 * Decodes one value that fills `buf` (a Uint8Array): the job file's
 * parameters (docs/udf-abi.md §3a) are one such value, not a batch.
 */
export function decodeValue(buf) {
  const bytes = buf instanceof Uint8Array ? buf : Uint8Array.from(buf);
  const r = new Reader(bytes);
  const v = r.value(0);
  if (r.p !== bytes.length) {
    throw new EncodingError(`${bytes.length - r.p} trailing bytes after a value`);
  }
  return v;
}

/** Encodes the values of an iterable as one batch (a Uint8Array). */
export function encodeBatch(values) {
  const w = new Writer();
  w.u32(0);
  let n = 0;
  for (const v of values) {
    w.value(v, 0);
    n++;
  }
  return w.finish(n);
}

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.p = 0;
  }
  need(n) {
    if (this.p + n > this.b.length) {
      throw new EncodingError(`batch ends at offset ${this.b.length}, ${n} more bytes wanted at ${this.p}`);
    }
  }
  u32() {
    this.need(4);
    const x = this.v.getUint32(this.p, true);
    this.p += 4;
    return x;
  }
  value(depth) {
    this.need(1);
    const tag = this.b[this.p++];
    switch (tag) {
      case TAG_STR: {
        const n = this.u32();
        this.need(n);
        const s = utf8Decoder.decode(this.b.subarray(this.p, this.p + n));
        this.p += n;
        return s;
      }
      case TAG_I64: {
        this.need(8);
        const x = this.v.getBigInt64(this.p, true);
        this.p += 8;
        return x >= -9007199254740991n && x <= 9007199254740991n ? Number(x) : x;
      }
      case TAG_TUPLE:
      case TAG_LIST: {
        if (depth >= MAX_DEPTH) throw new EncodingError("nesting deeper than 64 levels");
        const n = this.u32();
        // Every value takes at least one byte: a count beyond the rest of
        // the batch is malformed, and never allocated.
        this.need(n);
        const items = tag === TAG_TUPLE ? new Tuple(n) : new Array(n);
        for (let i = 0; i < n; i++) items[i] = this.value(depth + 1);
        return items;
      }
      case TAG_F64: {
        this.need(8);
        const x = this.v.getFloat64(this.p, true);
        this.p += 8;
        return x;
      }
      case TAG_NULL:
        return null;
      case TAG_FALSE:
        return false;
      case TAG_TRUE:
        return true;
      case TAG_BYTES: {
        const n = this.u32();
        this.need(n);
        const b = this.b.slice(this.p, this.p + n);
        this.p += n;
        return b;
      }
      default:
        throw new EncodingError(`unknown tag 0x${tag.toString(16).padStart(2, "0")} at offset ${this.p - 1}`);
    }
  }
}

class Writer {
  constructor() {
    this.b = new Uint8Array(256);
    this.v = new DataView(this.b.buffer);
    this.p = 0;
  }
  room(n) {
    if (this.p + n <= this.b.length) return;
    let cap = this.b.length * 2;
    while (cap < this.p + n) cap *= 2;
    const b = new Uint8Array(cap);
    b.set(this.b.subarray(0, this.p));
    this.b = b;
    this.v = new DataView(b.buffer);
  }
  u8(x) {
    this.room(1);
    this.b[this.p++] = x;
  }
  u32(x) {
    this.room(4);
    this.v.setUint32(this.p, x, true);
    this.p += 4;
  }
  i64(x) {
    const big = BigInt(x);
    if (big < I64_MIN || big > I64_MAX) throw new EncodingError(`integer ${x} is outside the i64 range`);
    this.u8(TAG_I64);
    this.room(8);
    this.v.setBigInt64(this.p, big, true);
    this.p += 8;
  }
  f64(x) {
    this.u8(TAG_F64);
    this.room(8);
    this.v.setFloat64(this.p, x, true);
    this.p += 8;
  }
  bytes(tag, b) {
    this.u8(tag);
    this.u32(b.length);
    this.room(b.length);
    this.b.set(b, this.p);
    this.p += b.length;
  }
  value(v, depth) {
    switch (typeof v) {
      case "string": {
        // At most 3 bytes of UTF-8 per UTF-16 unit: encode in place.
        this.u8(TAG_STR);
        this.room(4 + v.length * 3);
        const { written } = utf8Encoder.encodeInto(v, this.b.subarray(this.p + 4));
        this.v.setUint32(this.p, written, true);
        this.p += 4 + written;
        return;
      }
      case "number":
        if (Number.isInteger(v)) {
          if (!Number.isSafeInteger(v)) {
            throw new EncodingError(`integer ${v} is beyond 2^53 (use a BigInt, or float(x) for an f64)`);
          }
          this.i64(v);
        } else {
          this.f64(v);
        }
        return;
      case "bigint":
        this.i64(v);
        return;
      case "boolean":
        this.u8(v ? TAG_TRUE : TAG_FALSE);
        return;
      case "undefined":
        this.u8(TAG_NULL);
        return;
      case "object":
        if (v === null) {
          this.u8(TAG_NULL);
          return;
        }
        if (Array.isArray(v)) {
          if (depth >= MAX_DEPTH) throw new EncodingError("nesting deeper than 64 levels");
          this.u8(v instanceof Tuple ? TAG_TUPLE : TAG_LIST);
          this.u32(v.length);
          for (let i = 0; i < v.length; i++) this.value(v[i], depth + 1);
          return;
        }
        if (v instanceof Uint8Array) {
          this.bytes(TAG_BYTES, v);
          return;
        }
        if (v instanceof Float) {
          this.f64(v.value);
          return;
        }
        break;
      default:
        break;
    }
    const what = v === null || typeof v !== "object" ? typeof v : v.constructor?.name ?? "object";
    throw new EncodingError(
      `a ${what} has no Weir encoding (use null, a boolean, a number, a BigInt, a string, a Uint8Array, tuple(...) or an Array)`,
    );
  }
  finish(n) {
    this.v.setUint32(0, n, true);
    return this.b.slice(0, this.p);
  }
}

/** The writer, for the kinds that write a batch as they go (flatMap). */
export function writer() {
  const w = new Writer();
  w.u32(0);
  return w;
}
