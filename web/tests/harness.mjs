// Test harness: a real sequencer process per test file, tokens minted with the test's secret,
// and the client built from web/client (with its WebAssembly) loaded in Node.
//
// SEQUENCER_BIN names the binary (default: target/release/sequencer of this repository, or
// $CARGO_TARGET_DIR/release/sequencer). Every server binds 127.0.0.1 on a free port and keeps
// its SQLite files in a fresh temporary directory, removed at the end.

import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WS from "ws";

export const webDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const repoDir = resolve(webDir, "..");

/** The sequencer binary the tests run. */
export function sequencerBin() {
  if (process.env.SEQUENCER_BIN) return process.env.SEQUENCER_BIN;
  const target = process.env.CARGO_TARGET_DIR ? resolve(repoDir, process.env.CARGO_TARGET_DIR) : join(repoDir, "target");
  const bin = join(target, "release", "sequencer");
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build --release -p sequencer\` (or set SEQUENCER_BIN)`);
  return bin;
}

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** An HS256 room token (PROTOCOL §2) for `room`, signed with `secret`. */
export function mintToken(secret, { room, sub, name, role = "editor", ttl = 3600, exp }) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, name, room, role, iat: now, exp: exp ?? now + ttl };
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const body = b64url(claims);
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/**
 * A sequencer process on SQLite in a temporary directory. `restart()` starts it again on the
 * same port and data (after `kill()`); `stop()` ends it and removes the directory.
 */
export class Server {
  constructor({ args = [], webDir: pages = join(webDir, "dist") } = {}) {
    this.secret = randomBytes(32).toString("hex");
    this.dataDir = mkdtempSync(join(tmpdir(), "studio-web-test-"));
    this.args = args;
    this.pages = pages;
    this.port = 0;
    this.proc = null;
    this.log = "";
  }

  /** Starts the process and waits for its `listening on` line. */
  async start() {
    const listen = `127.0.0.1:${this.port}`;
    const args = ["--listen", listen, "--data-dir", this.dataDir, "--secret", this.secret, ...this.args];
    if (this.pages && existsSync(join(this.pages, "index.html"))) args.push("--web-dir", this.pages);
    const proc = spawn(sequencerBin(), args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn" } });
    this.proc = proc;
    const addr = await new Promise((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`no "listening on" line in 20 s:\n${this.log}`)), 20_000);
      let out = "";
      proc.stdout.on("data", (d) => {
        out += d;
        this.log += d;
        const m = out.match(/listening on (\S+)/);
        if (m) {
          clearTimeout(timer);
          ok(m[1]);
        }
      });
      proc.stderr.on("data", (d) => (this.log += d));
      proc.on("exit", (code) => {
        clearTimeout(timer);
        fail(new Error(`sequencer exited with ${code}:\n${this.log}`));
      });
    });
    this.host = addr;
    this.port = Number(addr.split(":").pop());
    return this;
  }

  /** SIGKILL: no goodbye, no flush beyond what was already durable. */
  async kill() {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise((ok) => p.once("exit", ok));
    p.kill("SIGKILL");
    await gone;
    this.proc = null;
  }

  /** Starts again on the same port and data directory. */
  async restart() {
    await this.kill();
    return this.start();
  }

  /** Ends the process and removes its data. */
  async stop() {
    const p = this.proc;
    if (p && p.exitCode === null) {
      const gone = new Promise((ok) => p.once("exit", ok));
      p.kill("SIGTERM");
      await Promise.race([gone, new Promise((ok) => setTimeout(ok, 5000))]);
      if (p.exitCode === null) p.kill("SIGKILL");
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  token(room, sub, name = sub, extra = {}) {
    return mintToken(this.secret, { room, sub, name, ...extra });
  }

  /** `GET /api/projects/{room}/state` with an editor token. */
  async state(room) {
    const r = await fetch(`http://${this.host}/api/projects/${room}/state`, {
      headers: { authorization: `Bearer ${this.token(room, "auditor")}` },
    });
    if (!r.ok) throw new Error(`GET state: ${r.status} ${await r.text()}`);
    return r.json();
  }

  /** The page URL for `room` with a fresh token for `sub`. */
  pageUrl(room, sub, name = sub, extra = {}) {
    return `http://${this.host}/?room=${room}&token=${this.token(room, sub, name, extra)}`;
  }
}

let clientModule = null;

/** The built client (web/client/dist) with its WebAssembly loaded. */
export async function loadClient() {
  if (!clientModule) {
    const wasm = join(webDir, "client", "wasm", "ot_wasm_bg.wasm");
    if (!existsSync(wasm)) throw new Error(`${wasm} is missing: run scripts/build-web.sh`);
    clientModule = await import(join(webDir, "client", "dist", "index.js"));
    await clientModule.loadWasm(readFileSync(wasm));
  }
  return clientModule;
}

/** A Node client of `room` on `server`; options as StudioClient's. */
export async function connect(server, room, sub, options = {}) {
  const { StudioClient } = await loadClient();
  return new StudioClient({
    host: server.host,
    room,
    token: server.token(room, sub),
    WebSocket: WS,
    minReconnectionDelay: 100,
    maxReconnectionDelay: 400,
    ...options,
  });
}

/** Waits until `predicate()` is truthy, polling every 10 ms, or fails after `ms` with `what`. */
export async function until(predicate, what, ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The document without its version, for comparing replicas with the server. */
export function canon(state) {
  const { version: _v, ...rest } = JSON.parse(JSON.stringify(state));
  return rest;
}

/**
 * A `ws` WebSocket whose traffic a test can cut one way: `faults.dropSends` swallows what the
 * client sends (an op lost on the way), `faults.dropReceives` what it receives (a lost ack).
 */
export const faults = { dropSends: false, dropReceives: false };

export class FaultyWS extends WS {
  send(data, ...rest) {
    if (faults.dropSends) return;
    super.send(data, ...rest);
  }

  addEventListener(type, listener, options) {
    if (type !== "message") return super.addEventListener(type, listener, options);
    return super.addEventListener(type, (ev) => faults.dropReceives || listener(ev), options);
  }
}
