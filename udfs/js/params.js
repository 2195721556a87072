// Functions that take parameters from the job file and read the batch time,
// in JavaScript: the same functions and outputs as udfs/testops's `plus`,
// `level_is`, `scaled_at`, `lookup` and `double` (tests/udf_params.rs checks
// them against each other). The module exports `params` too, the interface
// weir:udf/params, so `js.plus(4)` / `js.plus(n = 4)` reach `plus` as
// `{ n: 4 }`; build.mjs then builds it for the world guest-with-params.
// Built into udfs/params_js.wasm by udfs/build.sh (componentize-js).

import * as weir from "weir-udf";
export { udf, params } from "weir-udf"; // the component's exports

// Rust's split_ascii_whitespace (testops's level_is takes the first word).
const WS = /[ \t\n\f\r]+/;

// `js.plus(4)`: adds n.
weir.map(
  function plus(x, { n }) {
    return x + n;
  },
  { params: ["n"] },
);

// `js.level_is("ERROR")`: keeps log lines whose first word is the level.
weir.filter(
  function level_is(line, { level }) {
    return line.split(WS).find((w) => w !== "") === level;
  },
  { params: ["level"] },
);

// `js.scaled_at(factor = 10)`: (x * factor, the batch time). Date.now()
// reads the batch time (ms since the epoch), the same on every read and on
// a recomputation.
weir.map(
  function scaled_at(x, { factor }) {
    return weir.tuple(x * factor, Date.now());
  },
  { params: ["factor"] },
);

// `js.lookup(users)`: a static dataset as a parameter, a list of
// (key, name) tuples; gives (key, name or null).
weir.map(
  function lookup(key, { table }) {
    const hit = table.find(([k]) => k === key);
    return weir.tuple(key, hit === undefined ? null : hit[1]);
  },
  { params: ["table"] },
);

// No parameters: giving it some refuses the job when it loads.
weir.map(function double(x) {
  return 2 * x;
});
