// The React binding: `useStudio` keeps a component in step with a room through
// `useSyncExternalStore`, and `<LiveCursors>` draws the others' cursors.

import { useEffect, useState, useSyncExternalStore, type CSSProperties, type ReactElement } from "react";
import { StudioClient, type StudioOptions } from "./index.js";
import type { Lock, Presence, Status, StudioState, Transport } from "./types.js";

/** What {@link useStudio} returns. */
export interface Studio {
  /** The client, once connected (`null` while the WebAssembly build loads). */
  client: StudioClient | null;
  /** The document, local edits included (an empty project until the first `init`). */
  state: StudioState;
  /** Everyone in the room. */
  presence: readonly Presence[];
  /** The connection status and the count of edits not yet acknowledged. */
  status: Status;
  /** The transport as last heard or set. */
  transport: Transport | null;
  /** The room's soft locks: who is working on what. */
  locks: readonly Lock[];
  /** This connection's id, to tell oneself apart in `presence`. */
  selfId: string | undefined;
  /** A load or connect failure. */
  error: Error | null;
}

const noClient = {
  subscribe: () => () => {},
  state: { version: 0, playhead: 0, isPlaying: false, tracks: [], markers: [] } as StudioState,
  presence: [] as readonly Presence[],
  locks: [] as readonly Lock[],
  status: { connection: "connecting", pending: 0, version: null, canUndo: false, canRedo: false } as Status,
};

/**
 * Connects to `room` on `host` with `token` while the component is mounted, and re-renders
 * it whenever the document, presence, the transport or the status changes. Changing `host`,
 * `room` or `token` connects anew. The other options are read at connect time.
 */
export function useStudio(options: StudioOptions): Studio {
  const { host, room, token } = options;
  const [client, setClient] = useState<StudioClient | null>(null);
  const [error, setError] = useState<Error | null>(null);
  useEffect(() => {
    let live = true;
    let made: StudioClient | null = null;
    StudioClient.connect(options).then(
      (c) => {
        if (live) {
          made = c;
          setClient(c);
        } else c.close();
      },
      (e: unknown) => live && setError(e instanceof Error ? e : new Error(String(e))),
    );
    return () => {
      live = false;
      made?.close();
      setClient(null);
    };
    // The connection depends on these three; the rest of the options are read once.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [host, room, token]);

  const subscribe = client ? client.subscribe : noClient.subscribe;
  const state = useSyncExternalStore(subscribe, () => (client ? client.state() : noClient.state));
  const presence = useSyncExternalStore(subscribe, () => (client ? client.presence() : noClient.presence));
  const status = useSyncExternalStore(subscribe, () => (client ? client.status() : noClient.status));
  const locks = useSyncExternalStore(subscribe, () => (client ? client.locks() : noClient.locks));
  const transport = useSyncExternalStore(subscribe, () => (client ? client.transport() : null));
  return { client, state, presence, status, transport, locks, selfId: client?.yourId, error };
}

/** Props of {@link LiveCursors}. */
export interface LiveCursorsProps {
  /** Everyone in the room (from {@link useStudio}). */
  presence: readonly Presence[];
  /** This connection's id: its own cursor is not drawn. */
  selfId?: string;
  /** Maps a cursor's room coordinates to pixels in the container (default: as they are). */
  toPixels?: (x: number, y: number) => { left: number; top: number };
}

const cursorStyle: CSSProperties = {
  position: "absolute",
  pointerEvents: "none",
  transition: "left 60ms linear, top 60ms linear",
  zIndex: 50,
};

/**
 * The others' live cursors as coloured arrows with names, absolutely positioned: put it inside
 * the element whose coordinates the cursors are in (with `position: relative`).
 */
export function LiveCursors({ presence, selfId, toPixels }: LiveCursorsProps): ReactElement {
  return (
    <>
      {presence
        .filter((p) => p.id !== selfId && p.cursor)
        .map((p) => {
          const c = p.cursor!;
          const at = toPixels ? toPixels(c.x, c.y) : { left: c.x, top: c.y };
          return (
            <div key={p.id} className="live-cursor" data-user={p.id} style={{ ...cursorStyle, left: at.left, top: at.top }}>
              <svg width="18" height="22" viewBox="0 0 18 22" aria-hidden="true">
                <path d="M1 1 L1 17 L5.5 13 L8.5 20.5 L11.5 19 L8.5 12 L14.5 12 Z" fill={p.color} stroke="white" strokeWidth="1.2" />
              </svg>
              <span
                style={{
                  background: p.color,
                  color: "white",
                  font: "600 11px/1.6 system-ui, sans-serif",
                  padding: "0 6px",
                  borderRadius: 4,
                  marginLeft: 10,
                  whiteSpace: "nowrap",
                }}
              >
                {p.name}
              </span>
            </div>
          );
        })}
    </>
  );
}
