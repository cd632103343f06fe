// @studio-sync/client: the studio's browser client.
//
// Every conflict rule runs in ot-core, compiled to WebAssembly (web/ot-wasm): this file only
// moves frames between a PartySocket and ot-core's client session, keeps timers (cursor
// throttle, heartbeat and clock pings), and turns the session's events into snapshots and
// callbacks for the application. Nothing here transforms, composes or validates an op.

import PartySocket from "partysocket";
import initWasm, { initSync, StudioSession } from "../wasm/ot_wasm.js";
import type {
  Connection,
  CursorPos,
  EditError,
  Effect,
  Json,
  Lock,
  Op,
  Presence,
  SessionEvent,
  Status,
  StudioState,
  Transport,
} from "./types.js";

export type * from "./types.js";

let wasmReady: Promise<void> | null = null;

/**
 * Loads ot-core's WebAssembly build. In a browser, with no argument, it fetches
 * `ot_wasm_bg.wasm` next to the module; in Node, pass the file's bytes. Idempotent.
 */
export function loadWasm(source?: BufferSource | URL | string | Response): Promise<void> {
  if (!wasmReady) {
    if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
      initSync({ module: source });
      wasmReady = Promise.resolve();
    } else {
      wasmReady = initWasm(source === undefined ? undefined : { module_or_path: source }).then(() => undefined);
    }
  }
  return wasmReady;
}

/** Options of {@link StudioClient.connect}. */
export interface StudioOptions {
  /** The server, as `host:port` (PartySocket's `host`). */
  host: string;
  /** The room (project) id. */
  room: string;
  /** A room token (PROTOCOL §2). */
  token: string;
  /** Called after the server refused the token (close 4001): resolve to a fresh one and the client reconnects with it; without it, a 4001 stops the client. */
  refreshToken?: () => Promise<string>;
  /** The connection id (`_pk`), kept across reconnects; a random UUID by default. */
  id?: string;
  /** `ws` or `wss`; by default `wss` unless the host is local (PartySocket's rule) or the page is served over plain http. */
  protocol?: "ws" | "wss";
  /** A WebSocket implementation, for Node (`ws`). */
  WebSocket?: unknown;
  /** The fewest milliseconds between two cursor messages (default 40). */
  cursorIntervalMs?: number;
  /** Milliseconds between heartbeat pings, which also sample the server clock (default 5000). */
  pingIntervalMs?: number;
  /** PartySocket's reconnect delays in milliseconds (defaults 500 and 5000). */
  minReconnectionDelay?: number;
  maxReconnectionDelay?: number;
}

/** The events an application can listen to. */
export interface StudioEvents {
  /** Anything an application draws from changed: state, presence, cursors, transport or status. */
  change: () => void;
  /** The document changed (a local edit, someone else's, or a reload). */
  state: (state: StudioState) => void;
  /** Someone else's edit was applied; `ops` as applied locally. */
  remote: (ops: readonly Op[], userId: string) => void;
  /** An edit of this client was acknowledged with `version`. */
  ack: (opId: string, version: number) => void;
  /** The server refused an edit, or a reload dropped unacknowledged edits: they are rolled back. */
  error: (error: EditError) => void;
  /** Presence changed (join, leave, cursor). */
  presence: (users: readonly Presence[]) => void;
  /** The transport changed. */
  transport: (transport: Transport) => void;
  /** The connection status or the pending count changed. */
  status: (status: Status) => void;
  /** The room's lock table changed. */
  locks: (locks: readonly Lock[]) => void;
  /** Every session event, raw, for debugging and tests. */
  event: (event: SessionEvent) => void;
}

type Listeners = { [K in keyof StudioEvents]: Set<StudioEvents[K]> };

function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as Record<string, unknown>)) deepFreeze(v);
  }
  return value;
}

function uuid(): string {
  const c = globalThis.crypto;
  if (c && "randomUUID" in c) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

const EMPTY_STATE: StudioState = deepFreeze({ version: 0, playhead: 0, isPlaying: false, tracks: [], markers: [] });

/** What {@link StudioClient.undo} and {@link StudioClient.redo} did. */
export interface UndoResult {
  /** Whether a step was applied (false: nothing left to undo or redo). */
  readonly applied: boolean;
  /** Steps passed over because they no longer meant anything. */
  readonly skipped: number;
}

/** Thrown by {@link StudioClient.edit} when an edit does not apply to the local document (nothing changes). */
export class InvalidEdit extends Error {
  override name = "InvalidEdit";
}

/**
 * A connection to one room: the document with optimistic local edits, presence, cursors, the
 * transport and the connection status. Create it with {@link StudioClient.connect}.
 */
export class StudioClient {
  private readonly session: StudioSession;
  private readonly socket: PartySocket;
  private readonly opts: Required<Pick<StudioOptions, "cursorIntervalMs" | "pingIntervalMs">> & StudioOptions;
  private token: string;
  private listeners: Listeners = {
    change: new Set(),
    state: new Set(),
    remote: new Set(),
    ack: new Set(),
    error: new Set(),
    presence: new Set(),
    transport: new Set(),
    status: new Set(),
    locks: new Set(),
    event: new Set(),
  };
  private stateCache: StudioState | null = null;
  private usersCache: readonly Presence[] | null = null;
  private locksCache: readonly Lock[] | null = null;
  private transportCache: Transport | null | undefined = undefined;
  private statusCache: Status | null = null;
  private connection: Connection = "connecting";
  private stopped: string | undefined;
  private closed = false;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private cursorTimer: ReturnType<typeof setTimeout> | null = null;
  private cursorPending: CursorPos | null = null;
  private cursorLastSent = 0;
  private notifyQueued = false;

  /** Loads the WebAssembly build when needed and connects. */
  static async connect(options: StudioOptions): Promise<StudioClient> {
    await loadWasm();
    return new StudioClient(options);
  }

  /** Connects; the WebAssembly build must be loaded ({@link loadWasm}). Prefer {@link StudioClient.connect}. */
  constructor(options: StudioOptions) {
    this.opts = { cursorIntervalMs: 40, pingIntervalMs: 5000, ...options };
    this.token = options.token;
    const id = options.id ?? uuid();
    this.session = new StudioSession(id);
    // Op ids must never repeat for this account in this room, even when `id` is a saved one:
    // the server answers a repeated op id with the op stored under it (PROTOCOL §4).
    this.session.setOpIdPrefix(`${id}.${uuid().slice(0, 8)}`);
    const pageIsHttp = typeof location !== "undefined" && location.protocol === "http:";
    this.socket = new PartySocket({
      host: options.host,
      room: options.room,
      id,
      protocol: options.protocol ?? (pageIsHttp ? "ws" : undefined),
      WebSocket: options.WebSocket,
      // The session decides what to send once `init` arrived; nothing is queued while offline.
      maxEnqueuedMessages: 0,
      minReconnectionDelay: options.minReconnectionDelay ?? 500,
      maxReconnectionDelay: options.maxReconnectionDelay ?? 5000,
      query: () => {
        const q: Record<string, string> = { token: this.token };
        const since = this.session.since;
        if (since !== undefined) q.since = String(since);
        return q;
      },
      shouldReconnectOnClose: (ev) => this.onClose(ev.code, ev.reason),
    });
    this.socket.addEventListener("open", () => {
      this.session.onOpen();
    });
    this.socket.addEventListener("message", (ev: MessageEvent) => {
      if (typeof ev.data === "string") this.run(this.session.receive(ev.data, performance.now(), Date.now()));
    });
  }

  /** This client's connection id (`_pk`). */
  get id(): string {
    return this.session.pk;
  }

  /** This connection's id as the server named it, once live. */
  get yourId(): string | undefined {
    return this.session.yourId;
  }

  /** The document (local edits included) as an immutable snapshot: the same object until something changes. */
  state(): StudioState {
    if (!this.stateCache) {
      const json = this.session.stateJson();
      this.stateCache = json === undefined ? EMPTY_STATE : deepFreeze(JSON.parse(json) as StudioState);
    }
    return this.stateCache;
  }

  /** Everyone in the room, this connection included, as an immutable snapshot. */
  presence(): readonly Presence[] {
    if (!this.usersCache) this.usersCache = deepFreeze(JSON.parse(this.session.usersJson()) as Presence[]);
    return this.usersCache;
  }

  /** `connecting` | `live` | `offline`, with the count of edits not yet acknowledged. */
  status(): Status {
    if (!this.statusCache) {
      const s: Status = {
        connection: this.connection,
        pending: this.session.pendingEdits,
        version: this.session.version ?? null,
        canUndo: this.session.canUndo,
        canRedo: this.session.canRedo,
        ...(this.stopped ? { stopped: this.stopped } : {}),
      };
      this.statusCache = Object.freeze(s);
    }
    return this.statusCache;
  }

  /**
   * Applies an edit (one op or several, atomically) at once and sends it when nothing else is
   * in flight. Throws {@link InvalidEdit}, changing nothing, when it does not apply to the
   * local document. Works offline: the edit waits and is sent after the reconnect.
   */
  edit(opOrOps: Op | readonly Op[]): void {
    let effects: string;
    try {
      effects = this.session.edit(JSON.stringify(opOrOps), performance.now(), Date.now());
    } catch (e) {
      throw new InvalidEdit(e instanceof Error ? e.message : String(e));
    }
    this.stateCache = null;
    this.statusCache = null;
    this.run(effects);
    this.emit("state", this.state());
    this.emit("status", this.status());
    this.changed();
  }

  /**
   * Takes back this client's latest edit, never anyone else's: the step was kept transformed
   * over everything since, and goes out as an ordinary edit. Steps that no longer mean anything
   * (their entity was deleted, their value overwritten by someone) are skipped and counted.
   * Edits closer together than the capture window (500 ms) are one step; so are the edits of a
   * {@link StudioClient.group}.
   */
  undo(): UndoResult {
    return this.undoOrRedo(false);
  }

  /** Puts back what the latest {@link StudioClient.undo} took back (until a new edit is made). */
  redo(): UndoResult {
    return this.undoOrRedo(true);
  }

  /** Whether {@link StudioClient.undo} has a step to take back. */
  canUndo(): boolean {
    return this.session.canUndo;
  }

  /** Whether {@link StudioClient.redo} has a step to put back. */
  canRedo(): boolean {
    return this.session.canRedo;
  }

  /** Runs `gesture` (which makes edits) as one undo step, however long it takes; returns its result. */
  group<T>(gesture: () => T): T {
    this.session.beginGroup();
    try {
      return gesture();
    } finally {
      this.session.endGroup();
    }
  }

  /** Starts a gesture spread over events (a drag): every edit until {@link StudioClient.endGroup} is one undo step. */
  beginGroup(): void {
    this.session.beginGroup();
  }

  /** Ends the gesture {@link StudioClient.beginGroup} started. */
  endGroup(): void {
    this.session.endGroup();
  }

  /** Sets the capture window in milliseconds (default 500; 0 merges nothing by time) and the most undo steps kept (default 100). */
  setUndoConfig(captureMs: number, maxSteps: number): void {
    this.session.setUndoConfig(captureMs, maxSteps);
  }

  /** The room's soft locks (PROTOCOL §7) as an immutable snapshot: who is working on what. */
  locks(): readonly Lock[] {
    if (!this.locksCache) this.locksCache = deepFreeze(JSON.parse(this.session.locksJson()) as Lock[]);
    return this.locksCache;
  }

  /** The lock someone holds on an entity, if any (this client's own included). */
  lockOn(target: Lock["target"], id: string): Lock | undefined {
    return this.locks().find((l) => l.target === target && l.id === id);
  }

  /**
   * Tells everyone this client is working on an entity for `ttlMs` (default 10 s, at most 60 s),
   * or refreshes its own lock. Advisory: nobody's edit is refused because of it. If someone
   * else holds it, an `error` event with code `locked` and `lockedBy` follows.
   */
  lock(target: Lock["target"], id: string, ttlMs?: number): void {
    this.send(this.session.lock(target, id, ttlMs));
  }

  /** Releases this client's lock on an entity. */
  unlock(target: Lock["target"], id: string): void {
    this.send(this.session.unlock(target, id));
  }

  /**
   * Holds a lock for a gesture of unknown length (a drag, a rename): takes it now and
   * refreshes it every half `ttlMs` until the returned function is called, which releases it.
   */
  holdLock(target: Lock["target"], id: string, ttlMs = 10_000): () => void {
    this.lock(target, id, ttlMs);
    const timer = setInterval(() => this.lock(target, id, ttlMs), Math.max(50, ttlMs / 2));
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      clearInterval(timer);
      this.unlock(target, id);
    };
  }

  /** Moves this client's cursor; sent at most every `cursorIntervalMs` (the latest position wins). */
  cursor(x: number, y: number, selection?: readonly string[]): void {
    this.cursorPending = selection ? { x, y, selection } : { x, y };
    if (this.cursorTimer) return;
    const wait = Math.max(0, this.cursorLastSent + this.opts.cursorIntervalMs - performance.now());
    this.cursorTimer = setTimeout(() => this.flushCursor(), wait);
  }

  /** The transport as last heard or set, or `null` before the first `init`: the same object until it changes. */
  transport(): Transport | null {
    if (this.transportCache === undefined) {
      const json = this.session.transportJson();
      this.transportCache = json === undefined ? null : Object.freeze(JSON.parse(json) as Transport);
    }
    return this.transportCache;
  }

  /** Where the playhead is now, in seconds, by the server's clock (estimated with ping/pong). */
  playhead(): number {
    return this.session.playhead(performance.now(), Date.now());
  }

  /** The server's clock now, in milliseconds since the epoch (estimated). */
  serverNow(): number {
    return this.session.serverTime(performance.now(), Date.now());
  }

  /** Server time minus local time, in milliseconds, by the best ping/pong sample. */
  clockOffset(): number {
    return this.session.clockOffset();
  }

  /** Starts playback for everyone from the playhead's current position (or `position`). */
  play(position?: number): void {
    this.setTransport(true, position ?? this.playhead());
  }

  /** Pauses playback for everyone where the playhead is now. */
  pause(): void {
    this.setTransport(false, this.playhead());
  }

  /** Moves the playhead for everyone, keeping playback running or paused. */
  seek(position: number): void {
    this.setTransport(this.transport()?.playing ?? false, position);
  }

  /** Listens to an event; returns the function that stops listening. */
  on<K extends keyof StudioEvents>(event: K, listener: StudioEvents[K]): () => void {
    this.listeners[event].add(listener);
    return () => {
      this.listeners[event].delete(listener);
    };
  }

  /** `useSyncExternalStore`'s subscribe: `listener` runs after any change. */
  subscribe = (listener: () => void): (() => void) => this.on("change", listener);

  /** Closes the connection for good (pending edits are not sent). */
  close(): void {
    this.closed = true;
    this.stopTimers();
    this.socket.close();
    this.setConnection("offline");
  }

  /** Closes the socket and reconnects (for tests and a "reconnect now" button). */
  reconnect(): void {
    if (!this.closed) this.socket.reconnect();
  }

  /** Sends the op in flight a second time on the live socket (tests of exactly-once). */
  sendDuplicate(): boolean {
    const frame = this.session.duplicate();
    if (frame === undefined || this.socket.readyState !== this.socket.OPEN) return false;
    this.socket.send(frame);
    return true;
  }

  // --- internals -------------------------------------------------------------------------

  private undoOrRedo(redo: boolean): UndoResult {
    const now = performance.now();
    const raw = redo ? this.session.redo(now, Date.now()) : this.session.undo(now, Date.now());
    const out = JSON.parse(raw) as { applied: boolean; skipped: number; effects: Effect[] };
    this.stateCache = null;
    this.statusCache = null;
    this.runEffects(out.effects);
    if (out.applied) this.emit("state", this.state());
    this.emit("status", this.status());
    this.changed();
    return { applied: out.applied, skipped: out.skipped };
  }

  private setTransport(playing: boolean, position: number): void {
    const frame = this.session.setTransport(playing, Math.max(0, position), performance.now(), Date.now());
    this.send(frame);
    this.stateCache = null;
    this.transportCache = undefined;
    this.emit("transport", this.transport() as Transport);
    this.changed();
  }

  private flushCursor(): void {
    this.cursorTimer = null;
    const c = this.cursorPending;
    if (!c || !this.session.live) return;
    this.cursorPending = null;
    this.cursorLastSent = performance.now();
    try {
      this.send(this.session.cursor(c.x, c.y, c.selection ? JSON.stringify(c.selection) : ""));
    } catch {
      // Not finite, or a selection over the limit: nothing to send.
    }
  }

  private send(frame: string): void {
    if (this.socket.readyState === this.socket.OPEN) this.socket.send(frame);
  }

  /** Runs the effects the session returned (JSON text), in order. */
  private run(effectsJson: string): void {
    this.runEffects(JSON.parse(effectsJson) as Effect[]);
  }

  private runEffects(effects: readonly Effect[]): void {
    for (const e of effects) {
      if ("send" in e) this.send(e.send);
      else if ("event" in e) this.handle(e.event);
      else if ("reconnect" in e) this.socket.reconnect();
    }
  }

  private handle(ev: SessionEvent): void {
    this.emit("event", ev);
    switch (ev.type) {
      case "ready":
        this.stateCache = null;
        this.statusCache = null;
        this.locksCache = null;
        this.transportCache = undefined;
        this.usersCache = null;
        this.setConnection("live");
        this.startTimers();
        this.emit("state", this.state());
        this.emit("presence", this.presence());
        break;
      case "sent":
        break;
      case "acked":
        // The snapshot carries the version: an ack of this client's own edit moves it.
        this.stateCache = null;
        this.statusCache = null;
        this.emit("ack", ev.opId, ev.version);
        this.emit("status", this.status());
        break;
      case "remote":
        this.stateCache = null;
        this.statusCache = null;
        this.emit("remote", ev.ops, ev.userId);
        this.emit("state", this.state());
        break;
      case "dropped":
        this.stateCache = null;
        this.statusCache = null;
        this.emit("error", {
          code: ev.reason,
          message: `${ev.ops.length} unacknowledged op(s) rolled back: the document reloads (${ev.reason})`,
          ops: ev.ops,
        });
        break;
      case "serverError":
        // A `locked` refusal is reported once, by the `locked` event that follows with its holder.
        if (ev.code !== "locked") this.emit("error", { code: ev.code, message: ev.message, opId: ev.opId });
        break;
      case "userJoined":
      case "userLeft":
      case "cursor":
        this.usersCache = null;
        this.emit("presence", this.presence());
        break;
      case "transport":
        // The document's `isPlaying` and `playhead` follow the transport, as on the server.
        this.stateCache = null;
        this.transportCache = undefined;
        this.emit("transport", this.transport() as Transport);
        break;
      case "locks":
        this.locksCache = null;
        this.emit("locks", this.locks());
        break;
      case "locked":
        this.emit("error", { code: "locked", message: ev.message, lockedBy: ev.lockedBy });
        break;
      case "clock":
      case "protocolError":
      case "disconnected":
        break;
    }
    this.changed();
  }

  /** The socket closed: ot-core decides whether to come back (PROTOCOL's close codes). */
  private onClose(code: number | undefined, reason: string | undefined): boolean {
    this.stopTimers();
    // Before the first `init` the client is still connecting; after it, a close is offline.
    if (this.closed || this.connection !== "connecting") this.setConnection("offline");
    if (this.closed) return false;
    if (code === undefined || code === 1005 || code === 1006) {
      this.session.onClose();
      return true;
    }
    const verdict = JSON.parse(this.session.onServerClose(code, reason ?? "")) as {
      action: "retry" | "stop";
      event: SessionEvent;
    };
    this.emit("event", verdict.event);
    if (verdict.action === "retry") return true;
    if (code === 4001 && this.opts.refreshToken) {
      const refresh = this.opts.refreshToken;
      refresh().then(
        (token) => {
          this.token = token;
          if (!this.closed) this.socket.reconnect();
        },
        (e: unknown) => this.stop(`the token was refused and could not be refreshed: ${String(e)}`),
      );
      return false;
    }
    this.stop(verdict.event.type === "disconnected" ? verdict.event.reason : `closed with ${code}`);
    return false;
  }

  private stop(reason: string): void {
    this.stopped = reason;
    this.statusCache = null;
    this.setConnection("offline");
    this.emit("status", this.status());
    this.changed();
  }

  private setConnection(c: Connection): void {
    if (this.connection === c) return;
    this.connection = c;
    this.statusCache = null;
    this.emit("status", this.status());
    this.changed();
  }

  private startTimers(): void {
    this.stopTimers();
    // A few quick pings give a good clock estimate at once; then one per interval.
    let quick = 3;
    const ping = () => this.send(this.session.ping(performance.now(), Date.now()));
    ping();
    const burst = setInterval(() => {
      if (--quick <= 0 || !this.session.live) clearInterval(burst);
      else ping();
    }, 150);
    this.pingTimer = setInterval(ping, this.opts.pingIntervalMs);
  }

  private stopTimers(): void {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  private emit<K extends keyof StudioEvents>(event: K, ...args: Parameters<StudioEvents[K]>): void {
    for (const l of this.listeners[event]) {
      try {
        (l as (...a: Parameters<StudioEvents[K]>) => void)(...args);
      } catch (e) {
        console.error(`studio: a "${event}" listener threw`, e);
      }
    }
  }

  /** Coalesces change notifications into one per microtask. */
  private changed(): void {
    if (this.notifyQueued) return;
    this.notifyQueued = true;
    queueMicrotask(() => {
      this.notifyQueued = false;
      this.emit("change");
    });
  }
}

/** Builds ops with fresh ids, for applications that do not want to write op JSON by hand. */
export const ops = {
  /** A random id for a new entity. */
  newId: (prefix = ""): string => `${prefix}${uuid()}`,
  addTrack: (id: string, index: number, value: Record<string, Json>): Op => ({ type: "insert", target: "track", id, index, value }),
  addClip: (id: string, track: string, index: number, value: Record<string, Json>): Op => ({
    type: "insert",
    target: "clip",
    id,
    parent: track,
    index,
    value,
  }),
  addMarker: (id: string, index: number, value: Record<string, Json>): Op => ({ type: "insert", target: "marker", id, index, value }),
  remove: (target: "track" | "clip" | "marker", id: string): Op => ({ type: "delete", target, id }),
  moveClip: (id: string, track: string, index: number): Op => ({ type: "move", target: "clip", id, parent: track, index }),
  moveTrack: (id: string, index: number): Op => ({ type: "move", target: "track", id, index }),
  set: (target: "track" | "clip" | "marker", id: string, path: string[], value: Json): Op => ({ type: "update", target, id, path, value }),
  setProject: (path: string[], value: Json): Op => ({ type: "update", target: "project", path, value }),
};

/** ot-core's functions, for tests and tools (JSON text in, JSON text out). */
export { apply, compose, invert, transform } from "../wasm/ot_wasm.js";
