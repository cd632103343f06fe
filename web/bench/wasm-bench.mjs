// Measures ot-core's WebAssembly build in headless Chromium (BENCHMARKS.md has the figures):
// its size, raw and gzipped; on a 1,000-clip project, the time to apply one remote op, to
// rebase the pending edit over it, to make a local edit and to take a state snapshot; and the
// two ways effects can cross the boundary (JSON text and JSON.parse, or serde-wasm-bindgen
// objects). Run after scripts/build-web.sh:
//
//   node web/bench/wasm-bench.mjs [--ops N] [--rounds R]      (CHROMIUM=/path overrides /usr/bin/chromium)

import { createServer } from "node:http";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { chromium } from "playwright-core";
import { webDir } from "../tests/harness.mjs";

const opsArg = process.argv.indexOf("--ops");
const N = opsArg > 0 ? Number(process.argv[opsArg + 1]) : 2000;
const roundsArg = process.argv.indexOf("--rounds");
const ROUNDS = roundsArg > 0 ? Number(process.argv[roundsArg + 1]) : 7;
const wasmDir = join(webDir, "client", "wasm");
const wasmBytes = readFileSync(join(wasmDir, "ot_wasm_bg.wasm"));

const page = `<!doctype html><meta charset=utf-8><script type=module>
import init, { StudioSession } from "/ot_wasm.js";
await init();
const N = ${N};
const ROUNDS = ${ROUNDS};
const TRACKS = 20, PER = 50;
const tracks = [];
for (let t = 0; t < TRACKS; t++) {
  const clips = [];
  for (let c = 0; c < PER; c++) clips.push({ id: "c" + t + "-" + c, start: c * 2, duration: 2, gain: 1, name: "Clip " + c });
  tracks.push({ id: "t" + t, name: "Track " + t, volume: 0.8, clips });
}
const init0 = JSON.stringify({ type: "init", users: [], yourId: "me", version: 0, serverTime: Date.now(),
  state: { version: 0, tempo: 120, tracks, markers: [] } });
function remoteFrames(from) {
  const out = [];
  for (let i = 0; i < N; i++) {
    const t = i % TRACKS, c = (i * 7) % PER;
    out.push(JSON.stringify({ type: "operation", version: from + i + 1, userId: "ben", opId: "ben:" + (i + 1),
      operation: [{ type: "update", target: "clip", id: "c" + t + "-" + c, path: ["gain"], value: (i % 100) / 100 }] }));
  }
  return out;
}
function session(pending) {
  const s = new StudioSession("me");
  s.onOpen();
  s.receive(init0, performance.now(), Date.now());
  if (pending) {
    // One edit in flight (never acknowledged here) and one buffered behind it: every remote op
    // is transformed over both.
    s.edit(JSON.stringify([{ type: "move", target: "clip", id: "c3-3", parent: "t4", index: 0 },
      { type: "update", target: "clip", id: "c3-3", path: ["start"], value: 9 }]), performance.now(), Date.now());
    s.edit(JSON.stringify({ type: "update", target: "clip", id: "c5-5", path: ["gain"], value: 0.5 }), performance.now(), Date.now());
  }
  return s;
}
function time(frames, s, each) {
  const t0 = performance.now();
  for (const f of frames) each(s, f);
  return ((performance.now() - t0) * 1000) / frames.length;
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const frames = remoteFrames(0);
const edits = [];
for (let i = 0; i < N; i++) edits.push(JSON.stringify({ type: "update", target: "clip", id: "c" + (i % TRACKS) + "-" + (i % PER), path: ["start"], value: i % 64 }));
const rows = [
  ["remote op, effects as JSON text + JSON.parse", () => time(frames, session(false), (s, f) => JSON.parse(s.receive(f, 0, 0)))],
  ["remote op, effects as serde-wasm-bindgen objects", () => time(frames, session(false), (s, f) => s.receiveJs(f, 0, 0))],
  ["remote op rebasing the pending edit (in flight + buffered), JSON", () => time(frames, session(true), (s, f) => JSON.parse(s.receive(f, 0, 0)))],
  ["remote op rebasing the pending edit, serde-wasm-bindgen", () => time(frames, session(true), (s, f) => s.receiveJs(f, 0, 0))],
  ["local edit (apply, compose into the buffer)", () => time(edits, session(false), (s, e) => JSON.parse(s.edit(e, 0, 0)))],
  ["state snapshot: stateJson + JSON.parse", () => time(Array(20).fill(0), session(false), (s) => JSON.parse(s.stateJson()))],
];
// Warm up every path, then interleave the rows over several rounds and keep each one's median,
// so that a busy moment of the machine does not land on one row only.
for (const [, run] of rows) run();
const samples = rows.map(() => []);
for (let round = 0; round < ROUNDS; round++) rows.forEach(([, run], i) => samples[i].push(run()));
const results = rows.map(([label], i) => [label, median(samples[i]), Math.min(...samples[i])]);
window.__results = results;
</script>`;

const server = createServer((req, res) => {
  const send = (type, body) => {
    res.writeHead(200, { "content-type": type });
    res.end(body);
  };
  if (req.url === "/") return send("text/html", page);
  if (req.url === "/ot_wasm.js") return send("text/javascript", readFileSync(join(wasmDir, "ot_wasm.js")));
  if (req.url === "/ot_wasm_bg.wasm") return send("application/wasm", wasmBytes);
  res.writeHead(404).end();
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const tab = await browser.newPage();
  tab.on("pageerror", (e) => console.error("page error:", e));
  await tab.goto(`http://127.0.0.1:${server.address().port}/`);
  const results = await tab.waitForFunction(() => window.__results, null, { timeout: 120_000 }).then((h) => h.jsonValue());
  const gz = gzipSync(wasmBytes, { level: 9 }).length;
  console.log(`ot_wasm_bg.wasm: ${(statSync(join(wasmDir, "ot_wasm_bg.wasm")).size / 1024).toFixed(1)} KiB raw, ${(gz / 1024).toFixed(1)} KiB gzipped`);
  console.log(`Chromium ${browser.version()}, 1,000-clip project (20 tracks x 50 clips), ${N} ops per round, median (min) of ${ROUNDS} rounds:`);
  for (const [label, med, min] of results) console.log(`  ${label.padEnd(66)} ${med.toFixed(1).padStart(8)} us (${min.toFixed(1)})`);
} finally {
  await browser.close();
  server.close();
}
