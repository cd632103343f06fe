// The TypeScript client in Node against a real sequencer process: optimistic edits and acks,
// a pending edit rebased over concurrent ones, reconnect and resend exactly once, token refresh
// after 4001, and a rejected edit reported and rolled back.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FaultyWS, Server, canon, connect, faults, loadClient, until } from "./harness.mjs";

let server;
before(async () => {
  server = await new Server({ webDir: null }).start();
});
after(async () => {
  await server?.stop();
});

const live = (c) => until(() => c.status().connection === "live", `${c.id} live`);
const settled = (...cs) => until(() => cs.every((c) => c.status().connection === "live" && c.status().pending === 0), "acks");

test("an edit applies at once, is acknowledged, and reaches the others", async () => {
  const a = await connect(server, "optimistic", "ana");
  const b = await connect(server, "optimistic", "ben");
  await Promise.all([live(a), live(b)]);
  const acks = [];
  a.on("ack", (opId, version) => acks.push([opId, version]));
  a.edit({ type: "insert", target: "track", id: "t1", index: 0, value: { name: "Drums", clips: [] } });
  // Optimistic: in the local document before any answer, and counted as pending.
  assert.equal(a.state().tracks[0].name, "Drums");
  assert.equal(a.status().pending, 1);
  assert.ok(Object.isFrozen(a.state().tracks[0]), "snapshots are immutable");
  await settled(a);
  assert.equal(acks.length, 1);
  assert.match(acks[0][0], new RegExp(`^${a.id}\\.[0-9a-f]{8}:1$`), "op ids: the connection id, a random part, a count");
  assert.equal(acks[0][1], 1);
  await until(() => b.state().tracks.length === 1, "b sees the track");
  assert.deepEqual(canon(b.state()), canon(a.state()));
  assert.deepEqual(canon(await server.state("optimistic")), canon(a.state()));
  assert.throws(() => a.edit({ type: "delete", target: "track", id: "nope" }), /nope/, "an invalid edit throws");
  assert.equal(a.status().pending, 0, "and changes nothing");
  a.close();
  b.close();
});

test("a pending edit is rebased over concurrent ones and every replica converges", async () => {
  const room = "rebase";
  const a = await connect(server, room, "ana");
  const b = await connect(server, room, "ben");
  await Promise.all([live(a), live(b)]);
  a.edit({ type: "insert", target: "track", id: "t1", index: 0, value: { name: "Drums", clips: [] } });
  a.edit({ type: "insert", target: "track", id: "t2", index: 1, value: { name: "Bass", clips: [] } });
  a.edit({ type: "insert", target: "clip", id: "c1", parent: "t1", index: 0, value: { start: 0, duration: 4 } });
  await settled(a);
  await until(() => b.state().tracks.length === 2, "b has both tracks");
  // Concurrently: a moves c1 onto t2 while b deletes t2 (the move into a deleted track is
  // cancelled: the clip stays on t1), and both insert markers at index 0.
  for (let i = 0; i < 20; i++) {
    a.edit({ type: "insert", target: "marker", id: `ma${i}`, index: 0, value: { time: i } });
    b.edit({ type: "insert", target: "marker", id: `mb${i}`, index: 0, value: { time: i } });
  }
  a.edit([
    { type: "move", target: "clip", id: "c1", parent: "t2", index: 0 },
    { type: "update", target: "clip", id: "c1", path: ["start"], value: 8 },
  ]);
  b.edit({ type: "delete", target: "track", id: "t2" });
  b.edit({ type: "update", target: "project", path: ["tempo"], value: 128 });
  await settled(a, b);
  const s = await server.state(room);
  await until(() => a.status().version === s.version && b.status().version === s.version, "both at the server's version");
  assert.deepEqual(canon(a.state()), canon(s));
  assert.deepEqual(canon(b.state()), canon(s));
  assert.equal(s.markers.length, 40);
  assert.deepEqual(s.tracks.map((t) => t.id), ["t1"]);
  assert.deepEqual(s.tracks[0].clips.map((c) => c.id), ["c1"], "the clip moved into a deleted track stays where it was");
  assert.equal(s.tempo, 128);
  a.close();
  b.close();
});

test("after a reconnect the op in flight is resent with its op id and applied exactly once", async () => {
  const room = "resend";
  const a = await connect(server, room, "ana", { WebSocket: FaultyWS });
  await live(a);
  const log = (a.log = []);
  a.on("event", (e) => (e.type === "sent" || e.type === "acked") && log.push(e));
  const ops = async () =>
    (
      await fetch(`http://${server.host}/api/projects/${room}/ops?from=0`, {
        headers: { authorization: `Bearer ${server.token(room, "auditor")}` },
      }).then((r) => r.json())
    ).ops;
  try {
    // 1. The op is lost on its way: after the reconnect it goes again, with the same op id.
    faults.dropSends = true;
    a.edit({ type: "insert", target: "marker", id: "m1", index: 0, value: { time: 1 } });
    await new Promise((r) => setTimeout(r, 100));
    faults.dropSends = false;
    a.reconnect();
    await settled(a);
    const sent = log.filter((e) => e.type === "sent").map((e) => [e.opId, e.resend]);
    assert.deepEqual(sent.map(([, resend]) => resend), [false, true]);
    assert.equal(sent[1][0], sent[0][0], "resent with its op id");
    assert.match(sent[0][0], /:1$/);
    assert.equal((await ops()).length, 1);

    // 2. The ack is lost: the rejoin's catch-up acknowledges it, and nothing applies twice.
    faults.dropReceives = true;
    a.edit({ type: "insert", target: "marker", id: "m2", index: 0, value: { time: 2 } });
    await until(async () => (await ops()).length === 2, "the server sequenced m2");
    faults.dropReceives = false;
    a.reconnect();
    await settled(a);

    // 3. The same op twice on a live socket: the server answers the copy with the original ack.
    a.edit({ type: "insert", target: "marker", id: "m3", index: 0, value: { time: 3 } });
    assert.ok(a.sendDuplicate(), "m3 is in flight");
    await settled(a);
  } finally {
    faults.dropSends = false;
    faults.dropReceives = false;
  }
  const s = await server.state(room);
  assert.deepEqual(s.markers.map((m) => m.id), ["m3", "m2", "m1"]);
  assert.equal(s.version, 3, "each applied once");
  assert.equal((await ops()).length, 3);
  assert.equal(a.status().version, 3);
  assert.deepEqual(canon(a.state()), canon(s));
  a.close();
});

test("a refused token is refreshed through the callback after 4001", async () => {
  const room = "refresh";
  const expired = server.token(room, "ana", "Ana", { exp: Math.floor(Date.now() / 1000) - 60 });
  let refreshed = 0;
  const a = await connect(server, room, "ana", {
    token: expired,
    refreshToken: async () => {
      refreshed += 1;
      return server.token(room, "ana");
    },
  });
  const closes = [];
  a.on("event", (e) => e.type === "disconnected" && closes.push(e));
  await live(a);
  assert.equal(refreshed, 1);
  assert.equal(closes[0]?.close, 4001, "the first socket was closed with 4001");
  a.edit({ type: "update", target: "project", path: ["tempo"], value: 90 });
  await settled(a);
  assert.equal((await server.state(room)).tempo, 90);
  a.close();

  // Without a callback, a 4001 stops the client, which says why.
  const b = await connect(server, room, "ben", { token: expired });
  await until(() => b.status().stopped, "b stops");
  assert.equal(b.status().connection, "offline");
  assert.match(b.status().stopped, /4001/);
  b.close();
});

test("an edit the server refuses is reported and rolled back", async () => {
  const room = "refused";
  const editor = await connect(server, room, "ana");
  await live(editor);
  editor.edit({ type: "insert", target: "track", id: "t1", index: 0, value: { name: "Keys", clips: [] } });
  await settled(editor);
  const viewer = await connect(server, room, "vic", { token: server.token(room, "vic", "Vic", { role: "viewer" }) });
  await until(() => viewer.state().tracks.length === 1, "the viewer loads the project");
  const errors = [];
  viewer.on("error", (e) => errors.push(e));
  viewer.edit({ type: "update", target: "track", id: "t1", path: ["name"], value: "Mine" });
  assert.equal(viewer.state().tracks[0].name, "Mine", "optimistic until the answer");
  await until(() => errors.some((e) => e.code === "forbidden"), "forbidden");
  await until(() => viewer.status().connection === "live" && viewer.status().pending === 0, "reloaded");
  assert.equal(viewer.state().tracks[0].name, "Keys", "rolled back");
  assert.ok(errors.some((e) => e.ops?.length === 1), "the dropped edit is reported with its ops");
  assert.deepEqual(canon(await server.state(room)), canon(viewer.state()));
  viewer.close();
  editor.close();
});

test("ot-core's functions are exposed for tests and tools", async () => {
  const { apply, invert, transform } = await loadClient();
  const state = JSON.stringify({ version: 0, playhead: 0, isPlaying: false, tracks: [{ id: "t1", name: "A", clips: [] }], markers: [] });
  const out = JSON.parse(apply(state, JSON.stringify({ type: "delete", target: "track", id: "t1" })));
  assert.deepEqual(out.state.tracks, []);
  const back = JSON.parse(apply(JSON.stringify(out.state), invert(JSON.stringify(out.applied))));
  assert.deepEqual(back.state, JSON.parse(state));
  assert.throws(() => apply(state, "{}"));
  assert.equal(transform('[{"type":"delete","target":"track","id":"t1"}]', '[{"type":"delete","target":"track","id":"t1"}]', "later"), "[]");
});

test("undo takes back this client's own edit and never another's; redo puts it back", async () => {
  const room = "undo";
  const a = await connect(server, room, "ana");
  const b = await connect(server, room, "ben");
  await Promise.all([live(a), live(b)]);
  a.setUndoConfig(0, 100); // every edit its own step, whatever the timing
  a.edit({ type: "insert", target: "track", id: "t1", index: 0, value: { name: "Drums", clips: [] } });
  a.edit({ type: "update", target: "track", id: "t1", path: ["volume"], value: 0.5 });
  await settled(a);
  await until(() => b.state().tracks.length === 1, "b sees the track");
  // Ben renames the track after Ana's edits; Ana undoes her volume change.
  b.edit({ type: "update", target: "track", id: "t1", path: ["name"], value: "Ben's drums" });
  await settled(b);
  await until(() => a.state().tracks[0].name === "Ben's drums", "a sees the rename");
  assert.equal(a.status().canUndo, true);
  assert.deepEqual(a.undo(), { applied: true, skipped: 0 });
  assert.equal(a.state().tracks[0].volume, undefined, "her volume change is taken back");
  assert.equal(a.state().tracks[0].name, "Ben's drums", "his rename stays");
  assert.equal(a.status().canRedo, true);
  await settled(a, b);
  assert.deepEqual(a.redo(), { applied: true, skipped: 0 });
  await settled(a, b);
  const s = await server.state(room);
  assert.equal(s.tracks[0].volume, 0.5);
  assert.equal(s.tracks[0].name, "Ben's drums");
  // A step someone else made moot is skipped: Ben deletes the track Ana inserted.
  b.edit({ type: "delete", target: "track", id: "t1" });
  await settled(b);
  await until(() => a.state().tracks.length === 0, "a sees the delete");
  const r = a.undo();
  assert.equal(r.applied, false);
  assert.ok(r.skipped >= 1, `skipped ${r.skipped}`);
  await settled(a, b);
  assert.deepEqual(canon(a.state()), canon(await server.state(room)));
  assert.deepEqual((await server.state(room)).tracks, [], "nothing of Ben's was reverted");
  a.close();
  b.close();
});

test("soft locks: the table reaches everyone, a taken lock is refused with its holder, release empties it", async () => {
  const room = "locks";
  const a = await connect(server, room, "ana");
  const b = await connect(server, room, "ben");
  await Promise.all([live(a), live(b)]);
  a.edit({ type: "insert", target: "track", id: "t1", index: 0, value: { name: "Drums", clips: [] } });
  await settled(a);
  const release = a.holdLock("track", "t1", 400);
  await until(() => b.lockOn("track", "t1")?.userId === a.yourId, "b sees a's lock");
  assert.equal(Object.isFrozen(b.locks()), true);
  const errors = [];
  b.on("error", (e) => errors.push(e));
  b.lock("track", "t1");
  await until(() => errors.length > 0, "b's lock is refused");
  assert.equal(errors[0].code, "locked");
  assert.equal(errors[0].lockedBy?.id, a.yourId, "the refusal names the holder");
  // Held past its ttl by the refresh, then released.
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(b.lockOn("track", "t1")?.userId, a.yourId, "refreshed while held");
  // Advisory: b's edit of the locked track applies.
  b.edit({ type: "update", target: "track", id: "t1", path: ["name"], value: "Ben's" });
  await settled(b);
  release();
  await until(() => b.locks().length === 0, "released");
  assert.equal((await server.state(room)).tracks[0].name, "Ben's");
  a.close();
  b.close();
});
