#!/usr/bin/env node
// Appends a `weir:exports` custom section (docs/udf-abi.md, section 1) to a
// WebAssembly module, for toolchains that cannot name an export
// "<kind>:<name>" (AssemblyScript among them):
//
//   node declare.cjs MODULE.wasm DECLARATIONS_FILE
//
// DECLARATIONS_FILE holds lines like `split = flat_map`; the engine parses
// and checks them when it loads the module (`weir udf check` shows them).
// A custom section may follow the last section, so appending keeps the
// module valid; the module is rewritten in place.
"use strict";
const fs = require("fs");

function leb128(n) {
  const out = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return Buffer.from(out);
}

const [file, decls] = process.argv.slice(2);
if (!file || !decls) {
  console.error("usage: node declare.cjs MODULE.wasm DECLARATIONS_FILE");
  process.exit(2);
}
const wasm = fs.readFileSync(file);
if (wasm.length < 8 || wasm.readUInt32LE(0) !== 0x6d736100 || wasm.readUInt32LE(4) !== 1) {
  console.error(`${file}: not a WebAssembly core module`);
  process.exit(1);
}
const name = Buffer.from("weir:exports");
const body = Buffer.concat([leb128(name.length), name, fs.readFileSync(decls)]);
const section = Buffer.concat([Buffer.from([0]), leb128(body.length), body]);
fs.writeFileSync(file, Buffer.concat([wasm, section]));
