// The studio page in headless Chromium against a real sequencer: concurrent editing through
// the UI and through `window.studio`, live cursors, the shared transport, an outage with
// pending edits, a viewer, screenshots, and a 1,000-clip load.
//
//   cd web && npm run build && SEQUENCER_BIN=/work/target/release/sequencer \
//     node --test --test-concurrency=1 tests/browser.test.mjs
//
// Skipped (with a message) only when Chromium is missing and CI is not set. Random edits use
// seeded generators; the seed is printed and given in failure messages (SEED=… replays).

import assert from "node:assert/strict";
import { existsSync, statSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { Server, canon, connect, until } from "./harness.mjs";
import {
  assertPageBuilt,
  centre,
  closeAll,
  drag,
  launch,
  openStudio,
  screenshot,
  skipReason,
  snapshot,
  waitLive,
  waitSettled,
} from "./browser-harness.mjs";

const skip = skipReason();
if (skip) console.log(`# ${skip}`);

const SEED = Number(process.env.SEED ?? Date.now() % 1_000_000);

/** Runs `n` random edits in the page through `window.studio.edit`, a few ms apart (seeded). */
async function randomEdits({ seed, n, tag }) {
  let a = seed >>> 0;
  const rnd = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pick = (xs) => xs[Math.floor(rnd() * xs.length)];
  const tenth = (max) => Math.round(rnd() * max * 10) / 10;
  const s = window.studio;
  let made = 0;
  const refused = [];
  for (let i = 0; i < n; i++) {
    const st = s.state();
    const tracks = st.tracks;
    const clips = tracks.flatMap((t) => t.clips.map((c) => ({ c, t })));
    const id = `${tag}-${i}`;
    const r = rnd();
    let op;
    if (tracks.length < 2 || r < 0.08)
      op = { type: "insert", target: "track", id, index: Math.floor(rnd() * (tracks.length + 1)), value: { name: `T ${id}`, clips: [] } };
    else if (r < 0.12 && tracks.length > 3) op = { type: "delete", target: "track", id: pick(tracks).id };
    else if (r < 0.4 || clips.length === 0) {
      const t = pick(tracks);
      op = { type: "insert", target: "clip", id, parent: t.id, index: Math.floor(rnd() * (t.clips.length + 1)), value: { name: `C ${id}`, start: tenth(60), duration: 1 + tenth(4) } };
    } else if (r < 0.5) op = { type: "delete", target: "clip", id: pick(clips).c.id };
    else if (r < 0.65) {
      const { c, t: from } = pick(clips);
      const t = pick(tracks);
      const len = t.id === from.id ? t.clips.length - 1 : t.clips.length;
      op = [
        { type: "move", target: "clip", id: c.id, parent: t.id, index: Math.floor(rnd() * (len + 1)) },
        { type: "update", target: "clip", id: c.id, path: ["start"], value: tenth(60) },
      ];
    } else if (r < 0.8) op = { type: "update", target: "clip", id: pick(clips).c.id, path: [pick(["start", "gain", "duration"])], value: tenth(10) };
    else if (r < 0.87) op = { type: "update", target: "track", id: pick(tracks).id, path: ["name"], value: `name ${id}` };
    else if (r < 0.92) op = { type: "update", target: "project", path: ["tempo"], value: 60 + Math.floor(rnd() * 120) };
    else if (r < 0.96) op = { type: "move", target: "track", id: pick(tracks).id, index: Math.floor(rnd() * tracks.length) };
    else op = { type: "insert", target: "marker", id, index: st.markers.length, value: { time: tenth(30), label: `M ${id}` } };
    try {
      s.edit(op);
      made++;
    } catch (e) {
      refused.push(String(e));
    }
    await new Promise((res) => setTimeout(res, Math.floor(rnd() * 12)));
  }
  return { made, refused };
}

/** Waits until every page is live with nothing pending and at the server's version; returns the server's state. */
async function converge(server, room, pages, what) {
  let serverState;
  await until(
    async () => {
      serverState = await server.state(room);
      const snaps = await Promise.all(pages.map(snapshot));
      return snaps.every((s) => s.status.connection === "live" && s.status.pending === 0 && s.status.version === serverState.version);
    },
    `${what}: every page live, settled and at the server's version`,
    15_000,
  );
  const snaps = await Promise.all(pages.map(snapshot));
  const want = canon(serverState);
  snaps.forEach((s, i) => {
    assert.deepEqual(canon(s.state), want, `${what}: page ${i} differs from the server (seed ${SEED})`);
    assert.equal(s.status.version, serverState.version, `${what}: page ${i} status version`);
    assert.equal(s.state.version, serverState.version, `${what}: page ${i} state().version`);
  });
  // The DOM shows the document: one row per track, one rectangle per clip.
  for (const [i, p] of pages.entries()) {
    const dom = await p.evaluate(() => ({
      tracks: [...document.querySelectorAll('[data-testid="track"]')].map((e) => e.dataset.id),
      clips: document.querySelectorAll('[data-testid="clip"]').length,
    }));
    assert.deepEqual(dom.tracks, want.tracks.map((t) => t.id), `${what}: page ${i} track rows`);
    assert.equal(dom.clips, want.tracks.reduce((n, t) => n + t.clips.length, 0), `${what}: page ${i} clip rectangles`);
  }
  return serverState;
}


const trackIds = (state) => state.tracks.map((t) => t.id);
const findClip = (state, id) => {
  for (const t of state.tracks) for (const c of t.clips) if (c.id === id) return { clip: c, track: t.id };
  return null;
};
// A refused reconnect while the server is down is logged by Chromium itself, not by the page.
const noPageErrors = (pages) =>
  pages.forEach((p, i) =>
    assert.deepEqual(
      p.studioErrors.filter((e) => !/WebSocket connection to .* failed/.test(e)),
      [],
      `page ${i} reported errors`,
    ),
  );

/** Holds what the page sends on its socket while `gate.closed`; `gate.open()` flushes in order. */
async function gateSocket(page) {
  const gate = { closed: false, held: [], server: null };
  await page.routeWebSocket(/\/parties\/main\//, (ws) => {
    const server = ws.connectToServer();
    gate.server = server;
    ws.onMessage((m) => (gate.closed ? gate.held.push(m) : server.send(m)));
  });
  gate.open = () => {
    gate.closed = false;
    for (const m of gate.held.splice(0)) gate.server.send(m);
  };
  return gate;
}

describe("studio page in Chromium", { skip: skip ?? false }, () => {
  let server;
  let browser;

  before(async () => {
    assertPageBuilt();
    server = await new Server().start();
    browser = await launch();
    console.log(`# seed ${SEED} (SEED=${SEED} replays the random edits)`);
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test("two pages, then five, edit concurrently (UI and bulk) and converge with the server", { timeout: 90_000 }, async () => {
    const room = "converge";
    // Page A's socket can be held, to make its edits concurrent with B's for certain.
    const aContext = await browser.newContext({ viewport: { width: 1400, height: 760 } });
    const a = await aContext.newPage();
    a.studioErrors = [];
    a.on("pageerror", (e) => a.studioErrors.push(`pageerror: ${e.message}`));
    const gate = await gateSocket(a);
    await a.goto(server.pageUrl(room, "ana", "Ana"));
    await waitLive(a);
    const b = await openStudio(browser, server.pageUrl(room, "bo", "Bo"));
    const pages = [a, b];
    try {
      // Tracks through the UI, from both pages.
      await a.click('[data-testid="add-track"]');
      await b.click('[data-testid="add-track"]');
      await a.click('[data-testid="add-track"]');
      await until(async () => (await Promise.all(pages.map((p) => p.locator('[data-testid="track"]').count()))).every((n) => n === 3), "3 track rows in both pages");
      await converge(server, room, pages, "after adding tracks");
      const tracks = trackIds(await server.state(room));

      // Clips by double-clicking lanes.
      const lane = (p, i) => p.locator('[data-testid="track"]').nth(i).locator('[data-testid="lane"]');
      await lane(a, 0).dblclick({ position: { x: 60, y: 30 } });
      await lane(b, 1).dblclick({ position: { x: 300, y: 30 } });
      await lane(a, 0).dblclick({ position: { x: 420, y: 30 } });
      let st = await converge(server, room, pages, "after adding clips");
      assert.equal(st.tracks[0].clips.length, 2);
      assert.equal(st.tracks[1].clips.length, 1);

      // Rename a track (double-click its name), add a marker at the playhead, add a clip with a
      // track's + button and delete it with the keyboard.
      await a.locator('[data-testid="track-name"]').first().dblclick();
      await a.locator('[data-testid="track-name-input"]').fill("Drums");
      await a.keyboard.press("Enter");
      await b.click('[data-testid="add-marker"]');
      await b.locator('[data-testid="track"]').nth(1).locator('[data-testid="add-clip"]').click();
      const extra = (await snapshot(b)).state.tracks[1].clips.at(-1).id;
      await b.click(`[data-testid="clip"][data-id="${extra}"]`);
      await b.keyboard.press("Delete");
      st = await converge(server, room, pages, "after rename, marker, add and delete");
      assert.equal(st.tracks[0].name, "Drums");
      assert.equal(st.markers.length, 1);
      assert.equal(findClip(st, extra), null, "the clip deleted with the Delete key is gone");
      assert.equal(await a.locator('[data-testid="marker"]').count(), 1, "A draws B's marker");

      // Drag a clip along its track with the mouse: its start changes, it stays on its track.
      const c0 = st.tracks[0].clips[0];
      const from = await centre(a, `[data-testid="clip"][data-id="${c0.id}"]`);
      await drag(a, from, { x: from.x + 96, y: from.y });
      st = await converge(server, room, pages, "after a drag along the track");
      const moved = findClip(st, c0.id);
      assert.equal(moved.track, tracks[0]);
      assert.ok(moved.clip.start > c0.start + 1, `start ${c0.start} → ${moved.clip.start}`);

      // Drag the same clip onto track 2 while B deletes track 2: the edits are concurrent (A's
      // socket is held until B's delete is sequenced). The move is cancelled: the clip stays
      // on track 0, track 2 is gone (PROTOCOL §5.3).
      gate.closed = true;
      const f2 = await centre(a, `[data-testid="clip"][data-id="${c0.id}"]`);
      const row2 = await centre(a, `[data-testid="track"][data-id="${tracks[2]}"] [data-testid="lane"]`);
      await drag(a, f2, { x: f2.x + 48, y: row2.y });
      const local = await a.evaluate(() => window.studio.state());
      assert.equal(findClip(local, c0.id)?.track, tracks[2], "A shows the clip on track 2 at once");
      assert.ok((await a.evaluate(() => window.studio.status().pending)) > 0, "A's drop is pending");
      await b.click(`[data-testid="track"][data-id="${tracks[2]}"] [data-testid="delete-track"]`);
      await waitSettled(b);
      gate.open();
      st = await converge(server, room, pages, "after a drop onto a concurrently deleted track");
      assert.deepEqual(trackIds(st), tracks.slice(0, 2), "track 2 is deleted");
      assert.equal(findClip(st, c0.id)?.track, tracks[0], "the clip stays where it was before the cancelled move");

      // Five pages: bulk random edits through window.studio.edit, with UI actions meanwhile.
      // (Smaller windows: with software rendering on a small machine, painting five pages is
      // most of this test's time.)
      pages.push(
        ...(await Promise.all(
          ["Cy", "Di", "Ed"].map((name) => openStudio(browser, server.pageUrl(room, name.toLowerCase(), name), { width: 1100, height: 560 })),
        )),
      );
      await until(async () => (await a.evaluate(() => window.studio.presence().length)) === 5, "five presences");
      await converge(server, room, pages, "five pages joined");
      const runs = pages.map((p, i) => p.evaluate(randomEdits, { seed: SEED * 7 + i, n: 24, tag: `p${i}` }));
      // UI actions meanwhile (long timeouts: five pages repainting share two cores here).
      const ui = (async () => {
        await pages[2].click('[data-testid="add-track"]', { timeout: 30_000 });
        const box = await pages[3].locator('[data-testid="clip"]').first().boundingBox({ timeout: 5_000 }).catch(() => null);
        if (box) await drag(pages[3], { x: box.x + 10, y: box.y + box.height / 2 }, { x: box.x + 70, y: box.y + box.height / 2 + 80 }, 8);
        await pages[4].locator('[data-testid="lane"]').first().dblclick({ position: { x: 200, y: 30 }, timeout: 30_000 });
      })();
      ui.catch(() => {}); // awaited below, after the bulk edits
      const results = await Promise.all(runs);
      await ui;
      const made = results.reduce((n, r) => n + r.made, 0);
      console.log(`# five pages made ${made} random edits (seed ${SEED}); refused locally: ${results.flatMap((r) => r.refused).length}`);
      assert.ok(made >= 100, `most random edits apply locally (seed ${SEED}): ${JSON.stringify(results.map((r) => r.refused))}`);
      st = await converge(server, room, pages, "after five pages of random edits");
      console.log(`# converged at version ${st.version} with ${st.tracks.length} tracks, ${st.tracks.reduce((n, t) => n + t.clips.length, 0)} clips`);
      noPageErrors(pages);
    } finally {
      await closeAll(pages);
    }
  });

  test("a cursor moved in one page is drawn in the other within 200 ms", { timeout: 45_000 }, async () => {
    const room = "cursors";
    const a = await openStudio(browser, server.pageUrl(room, "ana", "Ana"));
    const b = await openStudio(browser, server.pageUrl(room, "bo", "Bo"));
    try {
      const aId = await a.evaluate(() => window.studio.yourId);
      const timeline = await a.locator('[data-testid="timeline"]').boundingBox();
      // B records every change of A's cursor element's position, with its time.
      await b.evaluate((id) => {
        window.__moves = [];
        let last = "";
        const root = document.querySelector(".timeline-content");
        const look = () => {
          const el = document.querySelector(`.live-cursor[data-user="${id}"]`);
          const at = el ? `${el.style.left},${el.style.top}` : "";
          if (el && at !== last) {
            last = at;
            window.__moves.push({ t: performance.timeOrigin + performance.now(), at });
          }
        };
        new MutationObserver(look).observe(root, { subtree: true, childList: true, attributes: true, attributeFilter: ["style"] });
      }, aId);
      const latencies = [];
      for (let i = 0; i < 9; i++) {
        const x = timeline.x + 300 + ((i * 97) % 600);
        const y = timeline.y + 80 + ((i * 53) % 200);
        await new Promise((r) => setTimeout(r, 120)); // past the client's cursor throttle
        const seen = await b.evaluate(() => window.__moves.length);
        const t0 = performance.timeOrigin + performance.now();
        await a.mouse.move(x, y);
        const move = await until(async () => (await b.evaluate((n) => window.__moves[n], seen)) ?? null, `cursor move ${i} drawn in B`, 3000);
        latencies.push(move.t - t0);
      }
      await b.locator(`.live-cursor[data-user="${aId}"]`).waitFor();
      const sorted = [...latencies].sort((p, q) => p - q);
      const median = sorted[Math.floor(sorted.length / 2)];
      console.log(`# cursor latency page→page: median ${median.toFixed(1)} ms, min ${sorted[0].toFixed(1)}, max ${sorted.at(-1).toFixed(1)} (n=${sorted.length})`);
      assert.ok(median < 200, `median cursor latency ${median.toFixed(1)} ms ≥ 200 ms: ${sorted.map((l) => l.toFixed(0)).join(", ")}`);
      // The cursor is where A's pointer is, in timeline coordinates (the pages have the same layout).
      const aBox = await a.evaluate(() => document.querySelector(".timeline-content").getBoundingClientRect().toJSON());
      const bCur = await b.locator(`.live-cursor[data-user="${aId}"]`).evaluate((el) => ({ left: parseFloat(el.style.left), top: parseFloat(el.style.top) }));
      const last = { x: timeline.x + 300 + ((8 * 97) % 600), y: timeline.y + 80 + ((8 * 53) % 200) };
      assert.ok(Math.abs(bCur.left - (last.x - aBox.x)) < 2 && Math.abs(bCur.top - (last.y - aBox.y)) < 2, `cursor at ${JSON.stringify(bCur)}`);
      noPageErrors([a, b]);
    } finally {
      await closeAll([a, b]);
    }
  });

  test("play in one page starts the playhead in the others, in step within 50 ms", { timeout: 45_000 }, async () => {
    const room = "transport";
    const pages = [];
    try {
      for (const n of ["ana", "bo", "cy"]) pages.push(await openStudio(browser, server.pageUrl(room, n)));
      // Each client estimates the server's clock from ping/pong, keeping its best sample. The
      // burst right after init runs while the page is busiest (first render); wait for one
      // heartbeat ping (every 5 s) taken at rest, as a page open for a while has.
      await new Promise((r) => setTimeout(r, 5_300));
      const offsets = await Promise.all(pages.map((p) => p.evaluate(() => window.studio.clockOffset())));
      console.log(`# clock offsets (server − page, same machine: truly 0): ${offsets.join(", ")} ms`);
      const [a, b, c] = pages;
      const lineX = (p) => p.locator('[data-testid="playhead"]').evaluate((el) => new DOMMatrixReadOnly(getComputedStyle(el).transform).m41);
      const x0 = await lineX(b);
      await a.click('[data-testid="play"]');
      await until(async () => (await Promise.all(pages.map((p) => p.evaluate(() => window.studio.transport()?.playing)))).every(Boolean), "all pages playing", 3000);
      await new Promise((r) => setTimeout(r, 400));
      assert.ok((await lineX(b)) > x0 + 5, "B's playhead line moves");
      assert.ok((await lineX(c)) > x0 + 5, "C's playhead line moves");
      assert.equal(await b.getAttribute('[data-testid="play"]', "aria-pressed"), "true");

      const sample = () =>
        Promise.all(pages.map((p) => p.evaluate(() => ({ pos: window.studio.playhead(), t: Date.now() }))));
      const spreads = [];
      const leads = [];
      for (let i = 0; i < 5; i++) {
        const s = await sample();
        const ref = s[0].t;
        // Bring every sample to the same instant: the playhead moves 1 s per s while playing.
        const adjusted = s.map((x) => x.pos + (ref - x.t) / 1000);
        spreads.push((Math.max(...adjusted) - Math.min(...adjusted)) * 1000);
        leads.push(adjusted.map((x) => ((x - adjusted[1]) * 1000).toFixed(1)));
        await new Promise((r) => setTimeout(r, 100));
      }
      // The sender (A) stamps the start with its estimate of the server clock when it sends;
      // the server stamps what it broadcasts when it receives: A leads the others by its uplink
      // latency (a millisecond or two on an idle machine).
      console.log(`# playhead spread across 3 pages: ${spreads.map((s) => s.toFixed(1)).join(", ")} ms; A, B, C relative to B: ${leads[0].join(", ")} ms`);
      assert.ok(Math.max(...spreads) < 50, `playheads within 50 ms: ${spreads.join(", ")}`);

      // Pause from another page: everyone stops at the same place.
      await b.click('[data-testid="play"]');
      await until(async () => (await Promise.all(pages.map((p) => p.evaluate(() => window.studio.transport()?.playing)))).every((v) => v === false), "all paused", 3000);
      const stopped = await Promise.all(pages.map((p) => p.evaluate(() => window.studio.playhead())));
      assert.ok(Math.max(...stopped) - Math.min(...stopped) < 0.05, `paused positions ${stopped}`);
      await new Promise((r) => setTimeout(r, 150));
      assert.equal(await c.evaluate(() => window.studio.playhead()), stopped[2], "paused playhead stays");
      noPageErrors(pages);
    } finally {
      await closeAll(pages);
    }
  });

  test("server killed with edits pending: offline badge with the count, then back live and nothing lost", { timeout: 45_000 }, async () => {
    const room = "outage";
    const a = await openStudio(browser, server.pageUrl(room, "ana", "Ana"));
    try {
      await a.click('[data-testid="add-track"]');
      await waitSettled(a);
      const before = await server.state(room);
      const track = before.tracks[0].id;

      await server.kill();
      const status = a.locator('[data-testid="status"]');
      await until(async () => (await a.evaluate(() => window.studio.status().connection)) === "offline", "the page sees the outage", 10_000);
      // Edits while the server is down: through the UI and through window.studio.
      await a.click('[data-testid="add-track"]');
      await a.locator('[data-testid="track"]').first().locator('[data-testid="lane"]').dblclick({ position: { x: 150, y: 30 } });
      await a.evaluate((t) => {
        for (let i = 0; i < 5; i++)
          window.studio.edit({ type: "insert", target: "clip", id: `offline-${i}`, parent: t, index: 0, value: { name: `Offline ${i}`, start: i * 2, duration: 1.5 } });
        window.studio.edit({ type: "update", target: "project", path: ["name"], value: "Written offline" });
      }, track);
      const pending = await a.evaluate(() => window.studio.status().pending);
      assert.ok(pending > 0, "edits are pending");
      await until(async () => /offline · [1-9]\d* pending/.test(await status.textContent()), "the badge shows offline with the pending count", 3000);
      const badge = await status.textContent();
      assert.match(badge, new RegExp(`offline · ${pending} pending`));
      assert.ok(await status.isVisible());
      await screenshot(a, "offline-pending.png");
      const local = await a.evaluate(() => window.studio.state());

      await server.restart();
      await until(async () => /^live/.test(await status.textContent()), "the badge shows live again", 15_000);
      await waitSettled(a, 15_000);
      const st = await converge(server, room, [a], "after the restart");
      assert.deepEqual(canon(st), canon(local), "the server holds exactly what the page showed offline");
      for (let i = 0; i < 5; i++) assert.ok(findClip(st, `offline-${i}`), `offline-${i} reached the server`);
      assert.equal(st.name, "Written offline");
      assert.equal(st.tracks.length, 2);
      noPageErrors([a]);
    } finally {
      await closeAll([a]);
    }
  });

  test("a viewer's page cannot edit: view-only badge, disabled controls, forced edits refused and rolled back", { timeout: 30_000 }, async () => {
    const room = "viewers";
    const ed = await openStudio(browser, server.pageUrl(room, "ed", "Editor"));
    const v = await openStudio(browser, server.pageUrl(room, "vi", "Viewer", { role: "viewer" }));
    try {
      await ed.click('[data-testid="add-track"]');
      await ed.locator('[data-testid="lane"]').first().dblclick({ position: { x: 100, y: 30 } });
      await converge(server, room, [ed, v], "viewer sees the editor's work");

      await v.locator('[data-testid="view-only"]').waitFor();
      assert.equal(await ed.locator('[data-testid="view-only"]').count(), 0, "an editor has no view-only badge");
      for (const id of ["add-track", "add-marker", "play", "delete-track", "add-clip"])
        assert.ok(await v.locator(`[data-testid="${id}"]`).first().isDisabled(), `${id} is disabled for a viewer`);
      assert.equal(await v.locator('[data-testid="project-name"]').getAttribute("readonly"), "");
      assert.equal(await v.locator('[data-testid="delete-clip"]').count(), 0, "no clip delete buttons");
      // Double-clicking a lane adds nothing.
      await v.locator('[data-testid="lane"]').first().dblclick({ position: { x: 400, y: 30 } });

      const before = await server.state(room);
      const err = await v.evaluate(
        () =>
          new Promise((resolve) => {
            const off = window.studio.on("error", (e) => {
              off();
              resolve({ code: e.code, opId: e.opId ?? null });
            });
            window.studio.edit({ type: "insert", target: "track", id: "forced", index: 0, value: { name: "Forced", clips: [] } });
            window.__optimistic = window.studio.state().tracks.some((t) => t.id === "forced");
          }),
      );
      assert.equal(err.code, "forbidden");
      assert.equal(await v.evaluate(() => window.__optimistic), true, "the edit showed at once, optimistically");
      await v.locator('[data-testid="toast"]').filter({ hasText: /viewer/i }).waitFor();
      const st = await converge(server, room, [ed, v], "after the refused edit");
      assert.deepEqual(canon(st), canon(before), "nothing changed on the server");
      assert.ok(!st.tracks.some((t) => t.id === "forced"));
      noPageErrors([ed]);
    } finally {
      await closeAll([ed, v]);
    }
  });

  test("Ctrl+Z undoes this page's own edit, never the other page's; Shift+Ctrl+Z redoes", { timeout: 30_000 }, async () => {
    const room = "undo";
    const a = await openStudio(browser, server.pageUrl(room, "ana", "Ana"));
    const b = await openStudio(browser, server.pageUrl(room, "ben", "Ben"));
    try {
      // Each click its own undo step, whatever the timing.
      await a.evaluate(() => window.studio.setUndoConfig(0, 100));
      await a.click('[data-testid="add-track"]');
      await a.click('[data-testid="add-track"]');
      let st = await converge(server, room, [a, b], "two tracks from page A");
      assert.equal(st.tracks.length, 2);
      // B renames A's first track; then A presses Ctrl+Z: its second track goes, B's rename stays.
      const first = st.tracks[0].id;
      await b.evaluate((id) => window.studio.edit({ type: "update", target: "track", id, path: ["name"], value: "Ben's" }), first);
      await converge(server, room, [a, b], "B's rename");
      assert.ok(await a.locator('[data-testid="undo"]').isEnabled());
      await a.locator('[data-testid="lane"]').first().hover();
      await a.keyboard.press("Control+z");
      st = await converge(server, room, [a, b], "after A's undo");
      assert.deepEqual(st.tracks.map((t) => t.id), [first], "A's latest track is taken back");
      assert.equal(st.tracks[0].name, "Ben's", "B's rename is untouched");
      await a.keyboard.press("Control+Shift+z");
      st = await converge(server, room, [a, b], "after A's redo");
      assert.equal(st.tracks.length, 2, "the redo puts it back");
      assert.equal(st.tracks[0].name, "Ben's");
      // B's Ctrl+Z takes back B's rename only.
      await b.locator('[data-testid="lane"]').first().hover();
      await b.keyboard.press("Control+z");
      st = await converge(server, room, [a, b], "after B's undo");
      assert.equal(st.tracks.length, 2, "A's tracks stay");
      assert.notEqual(st.tracks[0].name, "Ben's");
      noPageErrors([a, b]);
    } finally {
      await closeAll([a, b]);
    }
  });

  test("a clip in one page's hands and a track being renamed show as locked, in the holder's colour and name, in the other", { timeout: 30_000 }, async () => {
    const room = "locks";
    const a = await openStudio(browser, server.pageUrl(room, "ana", "Ana"));
    const b = await openStudio(browser, server.pageUrl(room, "ben", "Ben"));
    try {
      await a.click('[data-testid="add-track"]');
      await a.locator('[data-testid="lane"]').first().dblclick({ position: { x: 100, y: 30 } });
      const st = await converge(server, room, [a, b], "a track with a clip");
      const clip = st.tracks[0].clips[0].id;
      const aId = await a.evaluate(() => window.studio.yourId);
      // A picks the clip up and holds it mid-drag: B draws A's lock on it.
      const box = await a.locator(`[data-testid="clip"][data-id="${clip}"]`).boundingBox();
      await a.mouse.move(box.x + 20, box.y + box.height / 2);
      await a.mouse.down();
      await a.mouse.move(box.x + 60, box.y + box.height / 2, { steps: 5 });
      const tag = b.locator(`[data-testid="clip"][data-id="${clip}"] [data-testid="lock"][data-user="${aId}"]`);
      await tag.waitFor({ timeout: 5000 });
      assert.match(await tag.textContent(), /Ana/);
      const colour = await a.evaluate((id) => window.studio.presence().find((p) => p.id === id).color, aId);
      assert.equal(await tag.evaluate((e) => getComputedStyle(e).backgroundColor), await b.evaluate((c) => {
        const d = document.createElement("div");
        d.style.color = c;
        document.body.append(d);
        const rgb = getComputedStyle(d).color;
        d.remove();
        return rgb;
      }, colour), "drawn in the holder's colour");
      // B's edit of the locked clip still applies (locks are advisory).
      await b.evaluate((id) => window.studio.edit({ type: "update", target: "clip", id, path: ["gain"], value: 0.25 }), clip);
      await a.mouse.up();
      await tag.waitFor({ state: "detached", timeout: 5000 });
      const after = await converge(server, room, [a, b], "after the drop");
      assert.equal(after.tracks[0].clips[0].gain, 0.25, "the advisory lock refused nothing");
      // Renaming a track holds its lock until the name is committed.
      await a.locator('[data-testid="track-name"]').first().dblclick();
      const trackTag = b.locator(`[data-testid="track"] [data-testid="lock"][data-user="${aId}"]`);
      await trackTag.waitFor({ timeout: 5000 });
      await screenshot(b, "lock-seen-by-other.png");
      await a.keyboard.type("Lead");
      await a.keyboard.press("Enter");
      await trackTag.waitFor({ state: "detached", timeout: 5000 });
      assert.deepEqual(await b.evaluate(() => window.studio.locks()), [], "every lock released");
      noPageErrors([a, b]);
    } finally {
      await closeAll([a, b]);
    }
  });

  test("screenshots of a two-page session", { timeout: 30_000 }, async () => {
    const room = "showcase";
    const a = await openStudio(browser, server.pageUrl(room, "ana", "Ana Lima"));
    const b = await openStudio(browser, server.pageUrl(room, "bo", "Bo Chen"));
    try {
      await a.evaluate(() => {
        const names = ["Drums", "Bass", "Keys"];
        const colors = ["#7c5cff", "#22c1a4", "#ff8a3d"];
        const ops = [
          { type: "update", target: "project", path: ["name"], value: "Night Drive" },
          { type: "update", target: "project", path: ["tempo"], value: 124 },
        ];
        names.forEach((name, i) => ops.push({ type: "insert", target: "track", id: `t${i}`, index: i, value: { name, clips: [], volume: 0.8, muted: false, color: colors[i] } }));
        const bar = (60 / 124) * 4;
        const clips = [
          [0, 0, 4, "Kick loop"],
          [0, 4, 4, "Kick loop 2"],
          [0, 8, 2, "Fill"],
          [1, 1, 3, "Bassline"],
          [1, 5, 3, "Bassline B"],
          [2, 2, 6, "Pad"],
          [2, 10, 2, "Stab"],
        ];
        const count = [0, 0, 0];
        clips.forEach(([t, s, d, name], i) =>
          ops.push({ type: "insert", target: "clip", id: `c${i}`, parent: `t${t}`, index: count[t]++, value: { name, start: s * bar, duration: d * bar, gain: 1 } }),
        );
        ops.push({ type: "insert", target: "marker", id: "m0", index: 0, value: { time: 0, label: "Intro" } });
        ops.push({ type: "insert", target: "marker", id: "m1", index: 1, value: { time: 8 * bar, label: "Chorus" } });
        window.studio.edit(ops);
      });
      await converge(server, room, [a, b], "showcase seeded");
      await a.evaluate(() => window.studio.seek(3.1));
      const tl = await a.locator('[data-testid="timeline"]').boundingBox();
      await a.mouse.move(tl.x + 520, tl.y + 190);
      await b.click('[data-testid="clip"][data-id="c4"]');
      await b.mouse.move(tl.x + 760, tl.y + 260);
      const bId = await b.evaluate(() => window.studio.yourId);
      const aId = await a.evaluate(() => window.studio.yourId);
      await a.locator(`.live-cursor[data-user="${bId}"]`).waitFor();
      await b.locator(`.live-cursor[data-user="${aId}"]`).waitFor();
      await a.locator('[data-testid="clip"][data-id="c4"].remote-selected').waitFor();
      await new Promise((r) => setTimeout(r, 200)); // the cursors' 60 ms glide
      const shots = [await screenshot(a, "two-pages-a.png"), await screenshot(b, "two-pages-b.png")];
      for (const s of shots) assert.ok(existsSync(s) && statSync(s).size > 10_000, `${s} written`);
      console.log(`# screenshots: ${shots.join(", ")}`);
      noPageErrors([a, b]);
    } finally {
      await closeAll([a, b]);
    }
  });

  test("the page loads a 1,000-clip project", { timeout: 60_000 }, async () => {
    const room = "big";
    const seed = await connect(server, room, "seeder");
    try {
      await until(() => seed.status().connection === "live", "seeder live");
      for (let t = 0; t < 10; t++) {
        const ops = [{ type: "insert", target: "track", id: `bt${t}`, index: t, value: { name: `Track ${t + 1}`, clips: [] } }];
        for (let c = 0; c < 100; c++)
          ops.push({ type: "insert", target: "clip", id: `bt${t}-c${c}`, parent: `bt${t}`, index: c, value: { name: `Clip ${c + 1}`, start: c * 2.5, duration: 2, gain: 1 } });
        seed.edit(ops);
      }
      await until(() => seed.status().pending === 0, "seeded", 20_000);
    } finally {
      seed.close();
    }
    const context = await browser.newContext({ viewport: { width: 1400, height: 760 } });
    const page = await context.newPage();
    try {
      const t0 = performance.now();
      await page.goto(server.pageUrl(room, "reader", "Reader"));
      await waitLive(page, 30_000);
      const live = performance.now() - t0;
      await page.waitForFunction(() => document.querySelectorAll('[data-testid="clip"]').length === 1000, null, { timeout: 30_000 });
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
      const drawn = performance.now() - t0;
      const nav = await page.evaluate(() => performance.getEntriesByType("navigation")[0]?.domContentLoadedEventEnd ?? 0);
      console.log(
        `# 1,000-clip page load: live (init received) ${live.toFixed(0)} ms, 1,000 clips drawn ${drawn.toFixed(0)} ms after navigation (DOMContentLoaded ${nav.toFixed(0)} ms)`,
      );
      assert.ok(drawn < 30_000);
      // Still responsive: an edit shows at once.
      await page.locator('[data-testid="add-track"]').click();
      await until(async () => (await page.locator('[data-testid="track"]').count()) === 11, "11 tracks", 5000);
      await waitSettled(page);
    } finally {
      await context.close();
    }
  });
});
