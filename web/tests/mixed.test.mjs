// A mixed room: Rust clients (the client-sim binary, ot-core natively) and WebAssembly clients
// (the TypeScript client in Node, ot-core compiled to wasm32) edit the same project at once,
// and everyone ends with the server's document.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Server, canon, connect, repoDir, until } from "./harness.mjs";

function clientSimBin() {
  if (process.env.CLIENT_SIM_BIN) return process.env.CLIENT_SIM_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? join(repoDir, "target");
  const bin = join(target, "release", "client-sim");
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build --release -p client-sim\` (or set CLIENT_SIM_BIN)`);
  return bin;
}

let server;
before(async () => {
  server = await new Server({ webDir: null, args: ["--rate-limit", "0"] }).start();
});
after(async () => {
  await server?.stop();
});

/** A small deterministic generator, so a failure can be replayed with its seed. */
function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

/** One random edit that is valid against `state` (the client's current document). */
function randomEdit(state, rand, tag, n) {
  const pick = (xs) => xs[Math.floor(rand() * xs.length)];
  const tracks = state.tracks;
  const clips = tracks.flatMap((t) => t.clips.map((c) => ({ ...c, track: t.id })));
  const r = rand();
  if (tracks.length < 2 || r < 0.15) {
    return { type: "insert", target: "track", id: `${tag}-t${n}`, index: Math.floor(rand() * (tracks.length + 1)), value: { name: `T${n}`, clips: [] } };
  }
  if (r < 0.4) {
    const t = pick(tracks);
    return { type: "insert", target: "clip", id: `${tag}-c${n}`, parent: t.id, index: Math.floor(rand() * (t.clips.length + 1)), value: { start: Math.floor(rand() * 32), duration: 2 } };
  }
  if (r < 0.6 && clips.length) {
    const c = pick(clips);
    const t = pick(tracks);
    const len = t.clips.length - (c.track === t.id ? 1 : 0);
    return [
      { type: "move", target: "clip", id: c.id, parent: t.id, index: Math.floor(rand() * (len + 1)) },
      { type: "update", target: "clip", id: c.id, path: ["start"], value: Math.floor(rand() * 32) },
    ];
  }
  if (r < 0.75 && clips.length) return { type: "update", target: "clip", id: pick(clips).id, path: ["gain"], value: Math.round(rand() * 100) / 100 };
  if (r < 0.82 && tracks.length > 3) return { type: "delete", target: "track", id: pick(tracks).id };
  if (r < 0.9 && clips.length) return { type: "delete", target: "clip", id: pick(clips).id };
  return { type: "update", target: "project", path: ["tempo"], value: 60 + Math.floor(rand() * 120) };
}

test("Rust and WebAssembly clients edit one room together and converge", async () => {
  const seed = Number(process.env.MIXED_SEED ?? 7);
  const room = `sim${seed.toString(16)}-0`; // client-sim's first room for this seed
  const sim = spawn(
    clientSimBin(),
    ["--url", `ws://${server.host}`, "--secret", server.secret, "--seed", String(seed), "--rooms", "1", "--clients", "3",
      "--ops", "150", "--rate", "25", "--duration", "30", "--json", "--quiet"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let out = "";
  let err = "";
  sim.stdout.on("data", (d) => (out += d));
  sim.stderr.on("data", (d) => (err += d));
  const simDone = new Promise((ok) => sim.on("exit", (code) => ok(code)));

  const webs = await Promise.all([0, 1, 2].map((i) => connect(server, room, `web${i}`)));
  await until(() => webs.every((c) => c.status().connection === "live"), "web clients live");
  // Edit while the Rust clients edit; stop well before they do, so their verdict sees a quiet room.
  const rand = rng(seed);
  const end = Date.now() + 2500;
  let n = 0;
  while (Date.now() < end) {
    for (const [i, c] of webs.entries()) {
      const edit = randomEdit(c.state(), rand, `w${i}`, n++);
      try {
        c.edit(edit);
      } catch (e) {
        assert.fail(`seed ${seed}: a valid edit was refused locally: ${e.message}\n${JSON.stringify(edit)}`);
      }
    }
    await new Promise((r) => setTimeout(r, 40));
  }
  await until(() => webs.every((c) => c.status().pending === 0), `seed ${seed}: web clients acknowledged`, 20_000);

  let timer;
  const code = await Promise.race([simDone, new Promise((ok) => (timer = setTimeout(() => ok("timeout"), 60_000)))]);
  clearTimeout(timer);
  if (code === "timeout") sim.kill("SIGKILL");
  assert.equal(code, 0, `seed ${seed}: client-sim failed:\n${err}\n${out}`);
  const report = JSON.parse(out);
  assert.equal(report.sequencer.roomsConverged, 1, `seed ${seed}: the Rust clients converged: ${out}`);
  assert.deepEqual(report.sequencer.divergences, []);

  const s = await server.state(room);
  await until(() => webs.every((c) => c.status().version === s.version), `seed ${seed}: web clients at version ${s.version}`);
  for (const c of webs) assert.deepEqual(canon(c.state()), canon(s), `seed ${seed}: ${c.id} equals the server`);
  assert.ok(s.version > 200, `seed ${seed}: both kinds of client edited (version ${s.version})`);
  for (const c of webs) c.close();
});
