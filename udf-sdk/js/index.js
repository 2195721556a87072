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
// and a function: `weir.reduce("sum", (a, b) => a + b)`, and options last:
// `{ name, params }`.
//
// Parameters from the job file (`js.plus(4)`, `js.plus(n = 4)`,
// docs/udf-abi.md §3a): a function declares their names,
// `weir.map(function plus(x, { n }) { ... }, { params: ["n"] })`, and gets
// them as one object after its usual arguments. Such a module also exports
// `params` (`export { udf, params } from "weir-udf"`), the interface
// `weir:udf/params`; build.mjs then builds it for the world
// `guest-with-params`.

import { decodeBatch, decodeValue, encodeBatch, encodeFlat, encodeMapped, tuple } from "./codec.js";

export { decodeBatch, decodeValue, encodeBatch, EncodingError, Tuple, tuple, Float, float } from "./codec.js";

// The WIT enum `kind`, as componentize-js spells its cases.
const KINDS = ["map", "flat-map", "filter", "key-by", "map-partitions", "reduce", "update", "map-with-state"];

// "name\0kind" -> { f: the user's function, params: the names of the
// parameters it declares (or undefined) }, in definition order.
const FUNCTIONS = new Map();
// "name\0kind" -> the parameters this instance was given for it (an object
// of the declared names), set by `setParams`.
const BOUND = new Map();

// The kind as ABI v1 and the job's messages spell it: "flat_map", not the
// WIT enum's "flat-map".
const abiKind = (kind) => kind.replaceAll("-", "_");

function register(kind, args) {
  const [a, b, c] = args;
  const named = typeof a === "string";
  const f = named ? b : a;
  const opts = (named ? c : b) ?? {};
  if (typeof f !== "function") throw new TypeError(`weir: a ${kind} needs a function`);
  if (typeof opts !== "object") throw new TypeError(`weir: a ${kind}'s options are an object ({ name, params })`);
  const name = named ? a : (opts.name ?? f.name);
  if (!name) throw new TypeError(`weir: a ${kind} function needs a name (a named function, or a name first)`);
  let params;
  if (opts.params !== undefined && opts.params !== null) {
    params = [...opts.params];
    for (const p of params) {
      if (typeof p !== "string" || p === "") throw new TypeError(`weir: ${kind} ${name}: a parameter name is a non-empty string`);
    }
    if (new Set(params).size !== params.length) throw new TypeError(`weir: ${kind} ${name}: a parameter is declared twice`);
  }
  const key = `${name}\0${kind}`;
  if (FUNCTIONS.has(key)) throw new Error(`weir: two ${kind} functions named ${JSON.stringify(name)}`);
  FUNCTIONS.set(key, { f, params });
  return f;
}

/** Declares a map function: f(value) -> value. */
export const map = (...args) => register("map", args);
/** Declares a flat-map function: f(value) -> iterable of values. */
export const flatMap = (...args) => register("flat-map", args);
/** Declares a filter: f(value) -> keep it (truthy) or not. */
export const filter = (...args) => register("filter", args);
/** Declares a key-by function: f(value) -> key. */
export const keyBy = (...args) => register("key-by", args);
/** Declares a map-partitions function: f(array of values) -> iterable. */
export const mapPartitions = (...args) => register("map-partitions", args);
/** Declares a reduce function: f(a, b) -> value. */
export const reduce = (...args) => register("reduce", args);
/** Declares an update function: f(key, newValues, state) -> state. */
export const update = (...args) => register("update", args);
/** Declares a map-with-state function: f(key, value, state) -> output. */
export const mapWithState = (...args) => register("map-with-state", args);

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

// The runners hand the function to encodeMapped/encodeFlat, which call it
// per record in a plain indexed loop: a generator's yield or an iterator's
// step (array destructuring is one) costs as much as encoding a value in
// SpiderMonkey's interpreter (codec.js).
const RUNNERS = {
  map: (f, batch) => encodeMapped(f, decodeBatch(batch)),
  "flat-map": (f, batch) => encodeFlat(f, decodeBatch(batch)),
  filter: (f, batch) => encodeMapped((v) => Boolean(f(v)), decodeBatch(batch)),
  "key-by": (f, batch) => encodeMapped(f, decodeBatch(batch)),
  "map-partitions": (f, batch) => encodeBatch(f(decodeBatch(batch))),
  reduce: (f, batch) => encodeMapped((group) => fold(f, group), decodeBatch(batch)),
  // `arity`: the user's function's, without its parameters object.
  update: (f, batch, arity) =>
    encodeMapped(
      arity === 2 ? (r) => f(r[1], r[2]) : (r) => f(r[0], r[1], r[2]),
      decodeBatch(batch),
    ),
  "map-with-state": (f, batch) => encodeMapped((r) => mapWithState1(f, r), decodeBatch(batch)),
};

// A left fold over one group, as Array.prototype.reduce without an initial
// value (a decoded group has no holes).
function fold(f, group) {
  const n = group.length;
  if (n === 0) throw new Error("reduce: an empty group");
  let acc = group[0];
  for (let i = 1; i < n; i++) acc = f(acc, group[i]);
  return acc;
}

// One key of mapWithState: the record is (key, values, state, timingOut).
function mapWithState1(f, r) {
  const key = r[0];
  const values = r[1];
  const timingOut = r[3];
  const state = new State(r[2], timingOut);
  let outputs;
  if (timingOut) {
    outputs = [f(key, null, state)];
  } else {
    const n = values.length;
    outputs = new Array(n);
    for (let i = 0; i < n; i++) outputs[i] = f(key, values[i], state);
  }
  return tuple(outputs, state.exists() ? state.get() : null);
}

/** Runs function `name` of `kind` (a WIT kind, "flat-map", ...) on one batch. */
export function call(name, kind, batch) {
  const key = `${name}\0${kind}`;
  const entry = FUNCTIONS.get(key);
  if (entry === undefined) {
    const have = [...FUNCTIONS.keys()].map((k) => k.replace("\0", " (") + ")").join(", ") || "none";
    throw new Error(`no ${kind} function named ${JSON.stringify(name)} (have: ${have})`);
  }
  let f = entry.f;
  let arity = f.length;
  if (entry.params !== undefined) {
    const p = BOUND.get(key);
    if (p === undefined) throw new Error(`${abiKind(kind)}:${name} needs parameters (${entry.params.join(", ")})`);
    const g = entry.f;
    f = (...a) => g(...a, p);
    arity -= 1;
  }
  return RUNNERS[kind](f, batch, arity);
}

/**
 * Binds the job file's parameters (docs/udf-abi.md §3a: the encoded
 * `(function, positional, named)`, e.g. `("map:plus", [4], [])`) to the
 * function they are for, checked against the names it declares
 * (`{ params: ["n"] }`): positional values take the names in order, named
 * ones their own; an unknown, repeated or missing name, too many values or
 * a function that declares none throw (the job is refused). The function
 * then gets them as one object, `{ n: 4 }`, after its usual arguments.
 */
export function setParams(encoded) {
  const v = decodeValue(encoded);
  if (!Array.isArray(v) || v.length !== 3 || typeof v[0] !== "string" || !Array.isArray(v[1]) || !Array.isArray(v[2])) {
    throw new Error("parameters are not (function, positional, named)");
  }
  const [fn, positional, named] = v;
  const colon = fn.indexOf(":");
  const kind = fn.slice(0, colon).replaceAll("_", "-");
  const name = fn.slice(colon + 1);
  const key = `${name}\0${kind}`;
  const entry = colon < 0 ? undefined : FUNCTIONS.get(key);
  if (entry === undefined) throw new Error(`no ${fn.slice(0, colon)} function named ${JSON.stringify(name)}`);
  const declared = entry.params;
  if (declared === undefined) throw new Error(`${fn} takes no parameters`);
  if (positional.length > declared.length) {
    throw new Error(
      `${fn} takes ${declared.length} parameter(s) (${declared.join(", ")}), given ${positional.length} by position`,
    );
  }
  // A prototype-free object: a parameter named "constructor" or
  // "__proto__" is a plain own property like any other.
  const values = Object.create(null);
  positional.forEach((x, i) => {
    values[declared[i]] = x;
  });
  for (const pair of named) {
    const [k, x] = pair;
    if (!declared.includes(k)) throw new Error(`${fn}: unknown parameter '${k}' (it takes: ${declared.join(", ")})`);
    if (Object.hasOwn(values, k)) throw new Error(`${fn}: parameter '${k}' is given twice`);
    values[k] = x;
  }
  const missing = declared.filter((d) => !Object.hasOwn(values, d));
  if (missing.length > 0) throw new Error(`${fn}: missing parameter(s) ${missing.join(", ")}`);
  BOUND.set(key, Object.freeze(values));
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

/**
 * The optional export `weir:udf/params@2.0.0` (the WIT world
 * `guest-with-params`): the job file's parameters. A module whose functions
 * take parameters re-exports it (`export { udf, params } from "weir-udf"`),
 * and build.mjs builds it for that world. A refusal becomes `set-params`'s
 * `err`: its message only, which the host shows with the job file's line.
 */
export const params = {
  setParams(encoded) {
    try {
      setParams(encoded);
    } catch (e) {
      throw e instanceof Error ? e.message : String(e);
    }
  },
};
