// Weir UDFs in JavaScript: helpers per function kind and the canonical
// encoding. A module of plain functions over strings, numbers, arrays and
// tuples becomes a Weir UDF component (ABI v2, the WIT world
// `weir:udf/guest` of udf-sdk/wit) when built with componentize-js:
//
//     import * as weir from "weir-udf";
//     export { udf } from "weir-udf"; // the component's export: keep this line
//
//     weir.flatMap(function split(line) {
//       return line.split(" ");
//     });
//
// The host calls `call(name, kind, batch)` once per batch (never per
// record); this package decodes the batch, calls the function once per
// record (or group) and encodes the results. A thrown error fails the call:
// its message and stack reach the user with the module, function, batch time
// and partition. The function shapes (as the Rust SDK's, docs/udfs.md):
//
//     map             f(value) -> value
//     flatMap         f(value) -> iterable of values
//     filter          f(value) -> truthy or falsy
//     keyBy           f(value) -> key
//     mapPartitions   f(array of values) -> iterable of values
//     reduce          f(a, b) -> value (a left fold over each group)
//     update          f(key, newValues, state or null) -> state or null
//                     (or f(newValues, state), by the function's arity)
//     mapWithState    f(key, value or null, state: State) -> output
//
// Each helper takes the function (named by its JavaScript name) or a name
// and a function: `weir.reduce("sum", (a, b) => a + b)`.

import { decodeBatch, encodeBatch, writer, tuple } from "./codec.js";

export { decodeBatch, encodeBatch, EncodingError, Tuple, tuple, Float, float } from "./codec.js";

// The WIT enum `kind`, as componentize-js spells its cases.
const KINDS = ["map", "flat-map", "filter", "key-by", "map-partitions", "reduce", "update", "map-with-state"];

// "name\0kind" -> the user's function, in definition order.
const FUNCTIONS = new Map();

function register(kind, nameOrFn, maybeFn) {
  const f = typeof nameOrFn === "function" ? nameOrFn : maybeFn;
  const name = typeof nameOrFn === "string" ? nameOrFn : f?.name;
  if (typeof f !== "function") throw new TypeError(`weir: a ${kind} needs a function`);
  if (!name) throw new TypeError(`weir: a ${kind} function needs a name (a named function, or a name first)`);
  const key = `${name}\0${kind}`;
  if (FUNCTIONS.has(key)) throw new Error(`weir: two ${kind} functions named ${JSON.stringify(name)}`);
  FUNCTIONS.set(key, f);
  return f;
}

/** Declares a map function: f(value) -> value. */
export const map = (a, b) => register("map", a, b);
/** Declares a flat-map function: f(value) -> iterable of values. */
export const flatMap = (a, b) => register("flat-map", a, b);
/** Declares a filter: f(value) -> keep it (truthy) or not. */
export const filter = (a, b) => register("filter", a, b);
/** Declares a key-by function: f(value) -> key. */
export const keyBy = (a, b) => register("key-by", a, b);
/** Declares a map-partitions function: f(array of values) -> iterable. */
export const mapPartitions = (a, b) => register("map-partitions", a, b);
/** Declares a reduce function: f(a, b) -> value. */
export const reduce = (a, b) => register("reduce", a, b);
/** Declares an update function: f(key, newValues, state) -> state. */
export const update = (a, b) => register("update", a, b);
/** Declares a map-with-state function: f(key, value, state) -> output. */
export const mapWithState = (a, b) => register("map-with-state", a, b);

/** The state of one key in mapWithState (Spark's State). */
export class State {
  #value;
  #timingOut;
  constructor(value, timingOut) {
    this.#value = value;
    this.#timingOut = timingOut;
  }
  exists() {
    return this.#value !== null && this.#value !== undefined;
  }
  get() {
    return this.#value;
  }
  update(value) {
    if (value === null || value === undefined) throw new Error("a state cannot be null (use remove())");
    this.#value = value;
  }
  remove() {
    this.#value = null;
  }
  isTimingOut() {
    return this.#timingOut;
  }
}

function* mapped(f, recs) {
  for (const v of recs) yield f(v);
}

const RUNNERS = {
  map: (f, batch) => encodeBatch(mapped(f, decodeBatch(batch))),
  "flat-map": (f, batch) => {
    const w = writer();
    let n = 0;
    for (const v of decodeBatch(batch)) {
      for (const o of f(v)) {
        w.value(o, 0);
        n++;
      }
    }
    return w.finish(n);
  },
  filter: (f, batch) => encodeBatch(mapped((v) => Boolean(f(v)), decodeBatch(batch))),
  "key-by": (f, batch) => encodeBatch(mapped(f, decodeBatch(batch))),
  "map-partitions": (f, batch) => encodeBatch(f(decodeBatch(batch))),
  reduce: (f, batch) =>
    encodeBatch(
      mapped((group) => {
        if (group.length === 0) throw new Error("reduce: an empty group");
        return group.reduce((a, b) => f(a, b));
      }, decodeBatch(batch)),
    ),
  update: (f, batch) => {
    const two = f.length === 2;
    return encodeBatch(mapped(([key, values, state]) => (two ? f(values, state) : f(key, values, state)), decodeBatch(batch)));
  },
  "map-with-state": (f, batch) =>
    encodeBatch(
      mapped(([key, values, value, timingOut]) => {
        const state = new State(value, timingOut);
        const outputs = timingOut ? [f(key, null, state)] : values.map((v) => f(key, v, state));
        return tuple(outputs, state.exists() ? state.get() : null);
      }, decodeBatch(batch)),
    ),
};

/** Runs function `name` of `kind` (a WIT kind, "flat-map", ...) on one batch. */
export function call(name, kind, batch) {
  const f = FUNCTIONS.get(`${name}\0${kind}`);
  if (f === undefined) {
    const have = [...FUNCTIONS.keys()].map((k) => k.replace("\0", " (") + ")").join(", ") || "none";
    throw new Error(`no ${kind} function named ${JSON.stringify(name)} (have: ${have})`);
  }
  return RUNNERS[kind](f, batch);
}

/** The declared functions, as {name, kind} records. */
export function functions() {
  return [...FUNCTIONS.keys()].map((k) => {
    const [name, kind] = k.split("\0");
    return { name, kind };
  });
}

function describe(e) {
  if (e instanceof Error) {
    const stack = typeof e.stack === "string" && e.stack ? `\n${e.stack}` : "";
    return `${e.name}: ${e.message}${stack}`;
  }
  return `thrown: ${String(e)}`;
}

/**
 * The component's export `weir:udf/udf@2.0.0`: re-export it from the UDF
 * module (`export { udf } from "weir-udf"`). A thrown error becomes the
 * call's `err`, with its message and stack.
 */
export const udf = {
  functions,
  call(name, kind, input) {
    if (!KINDS.includes(kind)) throw describe(new Error(`unknown kind ${JSON.stringify(kind)}`));
    try {
      return call(name, kind, input);
    } catch (e) {
      // componentize-js lowers a thrown value of an export returning
      // `result` into its `err`: a string here.
      throw describe(e);
    }
  },
};
