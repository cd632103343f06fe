// The shapes the client hands to applications: the document of PROTOCOL §5.1, presence,
// the transport, and the effects and events that ot-core's WebAssembly session returns
// (web/ot-wasm/src/effects.rs declares the same shape on the Rust side).

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A clip inside a track. */
export interface Clip {
  readonly id: string;
  readonly [key: string]: Json | undefined;
}

/** A track with its clips. */
export interface Track {
  readonly id: string;
  readonly clips: readonly Clip[];
  readonly [key: string]: Json | undefined | readonly Clip[];
}

/** A marker on the timeline. */
export interface Marker {
  readonly id: string;
  readonly [key: string]: Json | undefined;
}

/** The project as PROTOCOL §5.1 gives it: structure plus project properties (tempo, name, …). */
export interface StudioState {
  readonly version: number;
  readonly playhead: number;
  readonly isPlaying: boolean;
  readonly tracks: readonly Track[];
  readonly markers: readonly Marker[];
  readonly [key: string]: Json | undefined | readonly Track[] | readonly Marker[];
}

/** One operation of PROTOCOL §5.2. */
export type Op =
  | { type: "insert"; target: "track" | "clip" | "marker"; id: string; index: number; parent?: string; value: Record<string, Json> }
  | { type: "delete"; target: "track" | "clip" | "marker"; id: string }
  | { type: "move"; target: "track" | "clip" | "marker"; id: string; index: number; parent?: string }
  | { type: "update"; target: "track" | "clip" | "marker" | "project"; id?: string; path: string[]; value: Json; remove?: boolean };

/** A cursor position with an optional selection of entity ids. */
export interface CursorPos {
  readonly x: number;
  readonly y: number;
  readonly selection?: readonly string[];
}

/** Someone connected to the room (one per connection: two tabs are two presences). */
export interface Presence {
  /** The connection id. */
  readonly id: string;
  /** The account id from the token. */
  readonly userId: string;
  readonly name: string;
  readonly avatar?: string | null;
  /** A CSS colour, distinct in the room while the palette allows. */
  readonly color: string;
  readonly cursor?: CursorPos;
  readonly lastSeen: number;
}

/** A soft lock (PROTOCOL §7): someone is working on an entity. Advisory: edits still apply. */
export interface Lock {
  readonly target: "track" | "clip" | "marker";
  readonly id: string;
  /** The holder's connection id. */
  readonly userId: string;
  readonly name: string;
  readonly color: string;
  /** When it ends unless refreshed, in server-clock milliseconds since the epoch. */
  readonly expiresAt: number;
}

/** The shared transport: where the playhead was at `serverTime` (server clock, ms since the epoch). */
export interface Transport {
  readonly playing: boolean;
  readonly position: number;
  readonly serverTime: number;
  /** The connection that last changed it, once someone has. */
  readonly userId?: string;
}

/** `connecting` until the first `init`; `live` while in sync; `offline` when the socket is down. */
export type Connection = "connecting" | "live" | "offline";

/** The client's status. */
export interface Status {
  readonly connection: Connection;
  /** Local edits the server has not acknowledged yet. */
  readonly pending: number;
  /** The version the server last confirmed. */
  readonly version: number | null;
  /** Whether this client has an edit of its own to undo, or an undo to redo. */
  readonly canUndo: boolean;
  readonly canRedo: boolean;
  /** Set when the client gave up and will not reconnect (a refused token, a bad room id, or another tab took over its connection id). */
  readonly stopped?: string;
}

/** An edit the server refused, or that a reload had to drop. */
export interface EditError {
  /** The server's error code (`invalid_op`, `forbidden`, …) or the reload reason. */
  readonly code: string;
  readonly message: string;
  readonly opId?: string | null;
  /** The local ops rolled back, when the error dropped them. */
  readonly ops?: readonly Op[];
  /** Who holds the lock, for a `locked` refusal. */
  readonly lockedBy?: Presence;
}

/** The events of ot-core's session, as the WebAssembly build reports them. */
export type SessionEvent =
  | { type: "ready"; version: number; yourId: string; reloaded: boolean; caughtUp: number }
  | { type: "sent"; opId: string; resend: boolean }
  | { type: "acked"; opId: string; version: number; latencyMs: number }
  | { type: "remote"; userId: string; opId: string | null; version: number; ops: Op[] }
  | { type: "dropped"; reason: string; ops: Op[] }
  | { type: "serverError"; code: string; message: string; opId: string | null }
  | { type: "userJoined"; user: Presence }
  | { type: "userLeft"; userId: string }
  | { type: "cursor"; userId: string; x: number; y: number }
  | { type: "transport"; playing: boolean; position: number; serverTime: number }
  | { type: "locks"; locks: Lock[] }
  | { type: "locked"; message: string; lockedBy: Presence }
  | { type: "clock"; offsetMs: number; rttMs: number }
  | { type: "disconnected"; reason: string; fatal: boolean; close: number | null }
  | { type: "protocolError"; message: string };

/** One effect of the session. */
export type Effect = { send: string } | { event: SessionEvent } | { reconnect: { reload: boolean } };
