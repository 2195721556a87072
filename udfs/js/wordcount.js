// WordCount in JavaScript: the same functions as udfs/wordcount/src/lib.rs.
// Built into udfs/wordcount_js.wasm by udfs/build.sh (componentize-js).

import * as weir from "weir-udf";
export { udf } from "weir-udf"; // the component's export

// Rust's split_ascii_whitespace: only these five separate words (\s would
// also split at Unicode spaces and give other words).
const WS = /[ \t\n\f\r]+/;

weir.flatMap(function split(line) {
  return line.split(WS).filter((w) => w !== "");
});

weir.map(function pair(word) {
  return weir.tuple(word, 1);
});

weir.reduce(function sum(a, b) {
  return a + b;
});

weir.reduce(function subtract(a, b) {
  return a - b;
});

weir.update(function running_total(values, state) {
  return (state ?? 0) + values.reduce((a, b) => a + b, 0);
});
