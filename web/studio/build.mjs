// Builds the studio page into web/dist: esbuild bundles src/main.tsx (with the client, React
// and the WebAssembly glue) into one ES module, `studio.js`; the page, its stylesheet and
// ot-core's WebAssembly are copied beside it. The format stays ESM so that the glue's
// `new URL("ot_wasm_bg.wasm", import.meta.url)` finds the .wasm next to studio.js.
// Every asset gets a `.gz` twin (gzip level 9): the sequencer serves it when the browser
// accepts gzip.

import { build } from "esbuild";
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { constants, gzipSync } from "node:zlib";

const studioDir = dirname(fileURLToPath(import.meta.url));
const webDir = resolve(studioDir, "..");
const dist = join(webDir, "dist");
const wasm = join(webDir, "client", "wasm", "ot_wasm_bg.wasm");

if (!existsSync(wasm)) {
  console.error(`${wasm} is missing: run scripts/build-web.sh (it builds ot-core for wasm32)`);
  process.exit(1);
}
mkdirSync(dist, { recursive: true });

const started = performance.now();
await build({
  entryPoints: [join(studioDir, "src", "main.tsx")],
  outfile: join(dist, "studio.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022", "chrome110", "firefox110", "safari16"],
  // STUDIO_DEV=1: readable output (for profiling); the default is the minified release build.
  minify: !process.env.STUDIO_DEV,
  sourcemap: "linked",
  jsx: "automatic",
  define: { "process.env.NODE_ENV": process.env.STUDIO_DEV ? '"development"' : '"production"' },
  legalComments: "none",
  logLevel: "warning",
});

copyFileSync(join(studioDir, "index.html"), join(dist, "index.html"));
copyFileSync(join(studioDir, "studio.css"), join(dist, "studio.css"));
copyFileSync(wasm, join(dist, "ot_wasm_bg.wasm"));

const kib = (n) => `${(n / 1024).toFixed(1).padStart(7)} KiB`;
console.log(`studio page built in ${(performance.now() - started).toFixed(0)} ms into ${dist}`);
for (const name of ["index.html", "studio.css", "studio.js", "ot_wasm_bg.wasm"]) {
  const file = join(dist, name);
  const gz = gzipSync(readFileSync(file), { level: constants.Z_BEST_COMPRESSION });
  writeFileSync(`${file}.gz`, gz);
  console.log(`  ${name.padEnd(16)} ${kib(statSync(file).size)}  gzip ${kib(gz.length)}`);
}
