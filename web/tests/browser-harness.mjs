// Browser test harness: headless Chromium (the system's, never a downloaded one) driven by
// playwright-core, and helpers for studio pages served by a real sequencer (harness.mjs).
//
// CHROMIUM names the browser binary (default /usr/bin/chromium). Every page gets its own
// browser context (its own storage, like a separate person); playwright gives the browser a
// fresh profile directory.

import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { webDir } from "./harness.mjs";

export const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

export const chromiumArgs = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // Pages in background windows must keep their timers and animation frames running.
  "--disable-background-timer-throttling",
  "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
];

/** Where screenshots go (test artifacts). */
export const resultsDir = join(webDir, "test-results");

/**
 * Why the browser tests cannot run here, or `null` when they can. Chromium missing skips them
 * only outside CI: with `CI` set, a missing browser is a failure, not a skip.
 */
export function skipReason() {
  if (existsSync(chromiumPath)) return null;
  if (process.env.CI) throw new Error(`Chromium is missing at ${chromiumPath} (set CHROMIUM); browser tests cannot be skipped in CI`);
  return `Chromium not found at ${chromiumPath}: browser tests skipped (install chromium or set CHROMIUM=/path/to/chrome)`;
}

/** The built page must exist, or the server would serve its "not built" notice. */
export function assertPageBuilt() {
  for (const f of ["index.html", "studio.js", "studio.css", "ot_wasm_bg.wasm"])
    if (!existsSync(join(webDir, "dist", f))) throw new Error(`web/dist/${f} is missing: run \`cd web && npm run build\` first`);
}

export async function launch() {
  return chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs, timeout: 30_000 });
}

/**
 * Opens the studio at `url` in a fresh context and waits until it is live. Records page errors
 * and console errors in `page.studioErrors`.
 */
export async function openStudio(browser, url, { width = 1400, height = 760, live = true } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.studioErrors = [];
  page.on("pageerror", (e) => page.studioErrors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") page.studioErrors.push(`console: ${m.text()}`);
  });
  page.setDefaultTimeout(10_000);
  await page.goto(url);
  if (live) await waitLive(page);
  return page;
}

/** Waits until `window.studio` is connected and has its first state. */
export async function waitLive(page, ms = 10_000) {
  await page.waitForFunction(() => window.studio?.status().connection === "live", null, { timeout: ms, polling: 20 });
}

/** Waits until the page is live with no edit pending. */
export async function waitSettled(page, ms = 10_000) {
  await page.waitForFunction(
    () => {
      const s = window.studio?.status();
      return s && s.connection === "live" && s.pending === 0;
    },
    null,
    { timeout: ms, polling: 20 },
  );
}

/** `{ state, status }` of the page's client. */
export function snapshot(page) {
  return page.evaluate(() => ({ state: window.studio.state(), status: window.studio.status() }));
}

export function closeAll(pages) {
  return Promise.all(pages.map((p) => p.context().close().catch(() => {})));
}

/** Saves a screenshot under web/test-results and returns its path. */
export async function screenshot(page, name) {
  mkdirSync(resultsDir, { recursive: true });
  const path = join(resultsDir, name);
  await page.screenshot({ path });
  return path;
}

/** A seeded PRNG (mulberry32): random tests print their seed. */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The centre of the element matching `selector` in viewport coordinates. */
export async function centre(page, selector) {
  const box = await page.locator(selector).first().boundingBox();
  if (!box) throw new Error(`${selector} is not visible`);
  return { x: box.x + box.width / 2, y: box.y + box.height / 2, box };
}

/** Drags with the real mouse from `from` to `to` in `steps` moves. */
export async function drag(page, from, to, steps = 12) {
  await page.mouse.move(from.x, from.y);
  await page.mouse.down();
  for (let i = 1; i <= steps; i++) await page.mouse.move(from.x + ((to.x - from.x) * i) / steps, from.y + ((to.y - from.y) * i) / steps);
  await page.mouse.up();
}
