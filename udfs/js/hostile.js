// A hostile JavaScript UDF: what a sandbox must contain (udfs/python/hostile.py
// is the same in Python). Built into udfs/hostile_js.wasm by udfs/build.sh; the
// runtime's tests (engine/runtime/tests/engine/components.rs) call each
// function and expect a typed error or a deterministic answer.

import * as weir from "weir-udf";
export { udf } from "weir-udf"; // the component's export

// An endless loop: stopped by fuel.
weir.map(function spin(x) {
  for (;;) {}
});

// Memory growth without end: stopped at the memory limit.
weir.map(function grow(x) {
  const chunks = [];
  for (;;) chunks.push(new Uint8Array(1 << 20).fill(1));
});

// The network: fetch is left out of the component (no wasi:http), and a
// file URL has nothing to read either.
weir.map(async function read_file(path) {
  const r = await fetch(`file://${path}`);
  return await r.text();
});

// Reads the clock twice and branches on it: with the batch time as the
// clock, both reads agree and the answer is the same on recompute.
weir.map(function clock(x) {
  const t1 = Date.now();
  let spun = 0;
  while (Date.now() === t1 && spun < 1000) spun++;
  const t2 = Date.now();
  return weir.tuple(x, t1 === t2 ? "still" : "moved", t1, Math.round(performance.now() * 1000));
});

// Random numbers: seeded with (module, batch time, partition).
weir.map(function entropy(x) {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return weir.tuple(x, b, weir.float(Math.random()));
});

weir.map(function shout(x) {
  console.log("about to fail on", x);
  throw new TypeError(`bad record ${JSON.stringify(x)}`);
});

// A pair whose value depends on the clock and on random numbers: the
// recomputation tests drop its shuffle output and expect the same bytes.
weir.map(function stamp(word) {
  const t1 = Date.now();
  const t2 = Date.now();
  const r = Math.floor(Math.random() * 0x100000000).toString(16);
  return weir.tuple(word, `${word}@${t1}${t1 === t2 ? "" : "!"}:${r};`);
});

weir.reduce(function concat(a, b) {
  return a + b;
});
