#!/usr/bin/env node
// Builds a JavaScript or TypeScript UDF into a Weir UDF component (ABI v2):
//
//     node udf-sdk/js/build.mjs SOURCE.js|.ts -o OUT.wasm [--toolchain DIR] [--world W]
//
// Two steps: rolldown bundles the source and `weir-udf` (this package) into
// one ES module, stripping TypeScript types on the way, because
// componentize-js evaluates a single script at build time and resolves no
// package imports; then componentize-js (SpiderMonkey, pre-initialised by
// wizer) makes the component of the WIT world `weir:udf/guest` (../wit), or
// of `weir:udf/guest-with-params` when the module also exports `params` (the
// job file's parameters, `export { udf, params } from "weir-udf"`). The
// `http` and `fetch-event` features are left out: Weir serves no wasi:http,
// and a UDF has no network. stdio, random and clocks stay (Weir's
// deterministic stand-ins serve them).
//
// The toolchain (npm's @bytecodealliance/componentize-js and rolldown, the
// versions of package.json's devDependencies) is looked up in DIR/node_modules:
// DIR is --toolchain, else $WEIR_JS_TOOLCHAIN, else the current directory.

import { mkdtemp, readFile, rm, writeFile, rename } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

function usage(msg) {
  console.error(`weir-udf build: ${msg}\nusage: node build.mjs SOURCE.js|.ts -o OUT.wasm [--toolchain DIR] [--wit DIR] [--world W]`);
  process.exit(2);
}

let source, out, world, wit = join(here, "..", "wit");
let toolchain = process.env.WEIR_JS_TOOLCHAIN || process.cwd();
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "-o" || a === "--out") out = args[++i];
  else if (a === "--toolchain") toolchain = args[++i];
  else if (a === "--wit") wit = args[++i];
  else if (a === "--world") world = args[++i];
  else if (a.startsWith("-")) usage(`unknown option ${a}`);
  else if (source === undefined) source = a;
  else usage(`a second source ${a}`);
}
if (!source || !out) usage("a source and -o OUT are needed");

// The module a package exports for `import`, from its package.json.
async function importFrom(dir, name) {
  const pkgDir = join(resolve(dir), "node_modules", name);
  let pkg;
  try {
    pkg = JSON.parse(await readFile(join(pkgDir, "package.json"), "utf8"));
  } catch {
    console.error(
      `weir-udf build: ${name} is not installed in ${resolve(dir)}/node_modules ` +
        `(npm install in the directory of udf-sdk/js/package.json's devDependencies, and pass it as --toolchain)`,
    );
    process.exit(1);
  }
  const e = pkg.exports?.["."] ?? pkg.exports;
  const entry = (typeof e === "string" ? e : e?.import?.default ?? e?.import ?? e?.default) ?? pkg.module ?? pkg.main;
  return import(pathToFileURL(join(pkgDir, entry)).href);
}

const { rolldown } = await importFrom(toolchain, "rolldown");
const { componentize } = await importFrom(toolchain, "@bytecodealliance/componentize-js");

const work = await mkdtemp(join(tmpdir(), "weir-udf-js-"));
try {
  const bundle = await rolldown({
    input: resolve(source),
    platform: "neutral",
    resolve: { alias: { "weir-udf": join(here, "index.js") } },
    logLevel: "warn",
  });
  const { output } = await bundle.generate({ format: "esm" });
  await bundle.close();
  const bundled = join(work, "udf.js");
  await writeFile(bundled, output[0].code);
  // The world follows the module's exports: `params` is the optional
  // interface weir:udf/params, and a component without it takes no
  // parameters (the host refuses them when the job loads).
  const exported = output[0].exports;
  if (!Array.isArray(exported)) throw new Error("rolldown gave no list of the bundle's exports");
  if (!exported.includes("udf")) throw new Error(`${source} does not export udf (export { udf } from "weir-udf")`);
  world ??= exported.includes("params") ? "guest-with-params" : "guest";
  const { component } = await componentize({
    sourcePath: bundled,
    witPath: resolve(wit),
    worldName: world,
    disableFeatures: ["http", "fetch-event"],
  });
  // Written under a temporary name and renamed: never a half-written module.
  await writeFile(`${out}.tmp`, component);
  await rename(`${out}.tmp`, out);
} finally {
  await rm(work, { recursive: true, force: true });
}
