// The timeline: a time ruler with markers, one row per track with its clips, the playhead
// and everyone else's live cursors.
//
// Cursor coordinates (what `client.cursor(x, y)` sends and `<LiveCursors>` draws): `x` is
// **seconds on the timeline** (negative over the track headers) and `y` is **pixels from the
// top of the timeline content** (the ruler's top edge). Seconds keep a cursor on the same
// beat whatever each person's zoom or horizontal scroll; rows have a fixed height, so pixels
// are fine vertically.
//
// Every change goes through `edit` (the page's wrapper of `client.edit`): nothing here mutates
// the document. A drag moves the clip's DOM element with a CSS transform while the pointer is
// down and sends one edit on release: an `update` of `start` along its track, or a `move` to
// the other track plus the `update`, as one atomic edit.

import { LiveCursors } from "@studio-sync/client/react";
import type { Clip, Lock, Marker, Op, Presence, StudioClient, StudioState, Track } from "@studio-sync/client";
import { memo, useCallback, useEffect, useMemo, useRef, useState, type CSSProperties, type ReactElement, type RefObject } from "react";
import { Icon } from "./icons.js";
import {
  HEADER_W,
  RULER_H,
  TRACK_H,
  beatsPerBarOf,
  clipDuration,
  clipStart,
  contentEnd,
  markerTime,
  nextName,
  newId,
  str,
  tempoOf,
  trackColor,
} from "./model.js";

export type Selection = { kind: "clip" | "marker"; id: string };

/** Someone else's selection of an entity, drawn as an outline in their colour. */
type RemoteSel = ReadonlyMap<string, { color: string; name: string }>;

export interface TimelineProps {
  state: StudioState;
  presence: readonly Presence[];
  selfId: string | undefined;
  client: StudioClient | null;
  canEdit: boolean;
  zoom: number;
  selected: Selection | null;
  onSelect: (sel: Selection | null) => void;
  /** Sends an edit; false (with a toast) when it does not apply. */
  edit: (ops: Op | Op[]) => boolean;
  onAddTrack: () => void;
  toast: (text: string) => void;
  /** The room's soft locks: others' are drawn on their entity in their colour. */
  locks: readonly Lock[];
}

/** Others' locks by `target:id`. */
type LockMap = Map<string, Lock>;

/** What the memoised rows call back into; kept in a ref so the rows need not re-render. */
interface Api {
  canEdit: boolean;
  zoom: number;
  state: StudioState;
  edit: (ops: Op | Op[]) => boolean;
  select: (sel: Selection | null) => void;
  clipPointerDown: (e: React.PointerEvent<HTMLElement>, clip: Clip) => void;
  laneDoubleClick: (e: React.MouseEvent<HTMLElement>, track: Track) => void;
  addClipAfterLast: (track: Track) => void;
  /** Holds a soft lock for a gesture (a drag, a rename); returns its release. */
  holdLock: (target: Lock["target"], id: string) => () => void;
}

interface Drag {
  id: string;
  mode: "move" | "resize";
  x0: number;
  y0: number;
  start0: number;
  dur0: number;
  start: number;
  dur: number;
  fromRow: number;
  row: number;
  moved: boolean;
  /** Releases the soft lock the drag holds on its clip (taken at the first move). */
  release?: () => void;
  /** The inline width React rendered, restored after a resize. */
  width0: string;
}

const snapTo = (v: number, step: number) => Math.round(v / step) * step;
const round3 = (v: number) => Math.round(v * 1000) / 1000;

// A few pseudo-waveforms (seeded), drawn white over the clip colour.
const WAVES = [11, 23, 37, 59].map((seed) => {
  let s = seed;
  const rnd = () => ((s = (s * 16807) % 2147483647) / 2147483647);
  const bars: string[] = [];
  for (let i = 0; i < 48; i++) {
    const env = 0.35 + 0.65 * Math.abs(Math.sin(i / 7 + seed));
    const h = Math.max(1.5, env * (4 + rnd() * 16));
    bars.push(`M${i * 3 + 1.5} ${12 - h / 2}v${h}`);
  }
  const svg = `<svg xmlns='http://www.w3.org/2000/svg' width='144' height='24'><path d='${bars.join("")}' stroke='white' stroke-opacity='.55' stroke-width='1.6' stroke-linecap='round'/></svg>`;
  return `url("data:image/svg+xml,${encodeURIComponent(svg)}")`;
});

function hash(s: string): number {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
  return Math.abs(h);
}

export function Timeline(props: TimelineProps): ReactElement {
  const { state, presence, selfId, client, canEdit, zoom, selected, onSelect, edit, onAddTrack, toast, locks } = props;
  const lockMap: LockMap = useMemo(
    () => new Map(locks.filter((l) => l.userId !== selfId).map((l) => [`${l.target}:${l.id}`, l])),
    [locks, selfId],
  );
  const tempo = tempoOf(state);
  const bpb = beatsPerBarOf(state);
  const beatSec = 60 / tempo;
  const barSec = beatSec * bpb;
  const totalSec = Math.max(90, Math.ceil((contentEnd(state) + barSec * 8) / barSec) * barSec);
  const laneW = Math.ceil(totalSec * zoom);

  // Each snapshot is a fresh object tree: keep the previous object of every track whose
  // content did not change, so the memoised rows of untouched tracks skip rendering.
  const shared = useRef(new Map<string, { json: string; track: Track }>());
  const tracks = useMemo(() => {
    const next = new Map<string, { json: string; track: Track }>();
    const out = state.tracks.map((t) => {
      const json = JSON.stringify(t);
      const prev = shared.current.get(t.id);
      const track = prev && prev.json === json ? prev.track : t;
      next.set(t.id, { json, track });
      return track;
    });
    shared.current = next;
    return out;
  }, [state.tracks]);

  const scrollerRef = useRef<HTMLDivElement>(null);
  const contentRef = useRef<HTMLDivElement>(null);
  const rowsRef = useRef<HTMLDivElement>(null);
  const lineRef = useRef<HTMLDivElement>(null);
  const capRef = useRef<HTMLDivElement>(null);
  const dragRef = useRef<Drag | null>(null);
  const lastCursor = useRef<{ x: number; y: number } | null>(null);

  // The latest props for event handlers and the animation frame.
  const live = useRef({ state, zoom, client, canEdit, edit, beatSec, barSec, selected, toast });
  live.current = { state, zoom, client, canEdit, edit, beatSec, barSec, selected, toast };

  // --- the playhead, moved every frame without re-rendering React -------------------------
  useEffect(() => {
    let raf = 0;
    let lastPx = NaN;
    const frame = () => {
      raf = requestAnimationFrame(frame);
      const { client: c, zoom: z } = live.current;
      const pos = c ? c.playhead() : 0;
      const px = Math.round(pos * z * 10) / 10;
      if (px === lastPx) return;
      lastPx = px;
      const t = `translateX(${HEADER_W + px}px)`;
      if (lineRef.current) lineRef.current.style.transform = t;
      if (capRef.current) capRef.current.style.transform = t;
      // Follow the playhead while playing, a page at a time.
      const sc = scrollerRef.current;
      if (sc && c?.transport()?.playing && !dragRef.current) {
        const visible = sc.clientWidth - HEADER_W;
        if (px > sc.scrollLeft + visible - 24 || px < sc.scrollLeft) sc.scrollLeft = Math.max(0, px - 48);
      }
    };
    raf = requestAnimationFrame(frame);
    return () => cancelAnimationFrame(raf);
  }, []);

  // --- live cursor --------------------------------------------------------------------------
  const sendCursor = useCallback((x: number, y: number) => {
    const { client: c, selected: sel } = live.current;
    lastCursor.current = { x, y };
    c?.cursor(x, y, sel ? [sel.id] : undefined);
  }, []);
  const onPointerMove = (e: React.PointerEvent<HTMLDivElement>) => {
    const rect = contentRef.current?.getBoundingClientRect();
    if (!rect) return;
    sendCursor(round3((e.clientX - rect.left - HEADER_W) / zoom), Math.round(e.clientY - rect.top));
  };
  // A new selection is shown to the others at once, with the last cursor position.
  useEffect(() => {
    if (lastCursor.current) sendCursor(lastCursor.current.x, lastCursor.current.y);
  }, [selected, sendCursor]);
  const toPixels = useCallback((x: number, y: number) => ({ left: HEADER_W + x * zoom, top: y }), [zoom]);

  // --- others' selections ---------------------------------------------------------------------
  const remoteKey = JSON.stringify(
    presence.filter((p) => p.id !== selfId && p.cursor?.selection?.length).map((p) => [p.color, p.name, p.cursor!.selection]),
  );
  const remoteSel: RemoteSel = useMemo(() => {
    const m = new Map<string, { color: string; name: string }>();
    for (const [color, name, ids] of JSON.parse(remoteKey) as [string, string, string[]][]) for (const id of ids) m.set(id, { color, name });
    return m;
  }, [remoteKey]);

  // --- clip drag ------------------------------------------------------------------------------
  const clipEl = (id: string) => rowsRef.current?.querySelector<HTMLElement>(`.clip[data-id="${CSS.escape(id)}"]`) ?? null;
  const rowOf = (st: StudioState, id: string) => st.tracks.findIndex((t) => t.clips.some((c) => c.id === id));

  // The drag handlers read only refs, so one set made at mount serves every render (and
  // removeEventListener gets the very functions addEventListener got).
  const drag = useMemo(() => {
    const end = (commit: boolean) => {
      const d = dragRef.current;
      dragRef.current = null;
      window.removeEventListener("pointermove", move);
      window.removeEventListener("pointerup", up);
      window.removeEventListener("pointercancel", cancel);
      if (!d) return;
      d.release?.();
      const el = clipEl(d.id);
      if (el) {
        el.style.transform = "";
        // React owns `width`: put back what it rendered (a resize's edit renders anew).
        if (d.mode === "resize") el.style.width = d.width0;
        el.classList.remove("dragging");
      }
      rowsRef.current?.querySelectorAll(".drop-target").forEach((r) => r.classList.remove("drop-target"));
      if (!commit || !d.moved) return;
      const { state: st, edit: send, toast: say } = live.current;
      const from = rowOf(st, d.id);
      if (from < 0) {
        say("That clip was deleted by someone else meanwhile.");
        return;
      }
      if (d.mode === "resize") {
        if (d.dur !== d.dur0) send({ type: "update", target: "clip", id: d.id, path: ["duration"], value: round3(d.dur) });
        return;
      }
      const target = st.tracks[d.row];
      if (target && d.row !== from) {
        send([
          { type: "move", target: "clip", id: d.id, parent: target.id, index: target.clips.length },
          { type: "update", target: "clip", id: d.id, path: ["start"], value: round3(d.start) },
        ]);
      } else if (d.start !== d.start0) {
        send({ type: "update", target: "clip", id: d.id, path: ["start"], value: round3(d.start) });
      }
    };
    const move = (e: PointerEvent) => {
      const d = dragRef.current;
      if (!d) return;
      const dx = e.clientX - d.x0;
      const dy = e.clientY - d.y0;
      if (!d.moved && Math.hypot(dx, dy) < 3) return;
      // Tell the others while the clip is in hand (advisory: nobody is stopped by it).
      if (!d.moved) d.release = live.current.client?.holdLock("clip", d.id);
      d.moved = true;
      const { state: st, zoom: z, beatSec: beat } = live.current;
      const from = rowOf(st, d.id);
      const el = clipEl(d.id);
      if (from < 0 || !el || !rowsRef.current) {
        end(false);
        return;
      }
      const step = e.altKey ? 0.001 : beat / 4;
      el.classList.add("dragging");
      if (d.mode === "resize") {
        d.dur = Math.max(step, snapTo(d.dur0 + dx / z, step));
        el.style.width = `${Math.max(6, d.dur * z)}px`;
        return;
      }
      d.start = Math.max(0, snapTo(d.start0 + dx / z, step));
      const rows = rowsRef.current.getBoundingClientRect();
      d.fromRow = from;
      d.row = Math.min(st.tracks.length - 1, Math.max(0, Math.floor((e.clientY - rows.top) / TRACK_H)));
      el.style.transform = `translate(${(d.start - d.start0) * z}px, ${(d.row - from) * TRACK_H}px)`;
      rowsRef.current
        .querySelectorAll<HTMLElement>(".track")
        .forEach((r, i) => r.classList.toggle("drop-target", i === d.row && i !== from));
    };
    const up = () => end(true);
    const cancel = () => end(false);
    const begin = (d: Drag) => {
      end(false);
      dragRef.current = d;
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
      window.addEventListener("pointercancel", cancel);
    };
    return { begin, end };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);
  useEffect(() => () => drag.end(false), [drag]);

  // --- the api the memoised rows use ------------------------------------------------------------
  const api = useRef<Api>(null as unknown as Api);
  api.current = {
    canEdit,
    zoom,
    state,
    edit,
    select: onSelect,
    holdLock: (target, id) => (client ? client.holdLock(target, id) : () => {}),
    clipPointerDown: (e, clip) => {
      if (e.button !== 0) return;
      e.stopPropagation();
      onSelect({ kind: "clip", id: clip.id });
      if (!canEdit || (e.target as HTMLElement).closest("button")) return;
      e.preventDefault();
      drag.begin({
        id: clip.id,
        mode: (e.target as HTMLElement).closest(".clip-resize") ? "resize" : "move",
        x0: e.clientX,
        y0: e.clientY,
        start0: clipStart(clip),
        dur0: clipDuration(clip),
        start: clipStart(clip),
        dur: clipDuration(clip),
        fromRow: rowOf(state, clip.id),
        row: rowOf(state, clip.id),
        moved: false,
        width0: e.currentTarget.style.width,
      });
    },
    laneDoubleClick: (e, track) => {
      if (!canEdit || (e.target as HTMLElement).closest(".clip")) return;
      const rect = e.currentTarget.getBoundingClientRect();
      const start = Math.max(0, Math.floor((e.clientX - rect.left) / zoom / beatSec) * beatSec);
      const id = newId();
      const names = state.tracks.flatMap((t) => t.clips.map((c) => str(c.name, "")));
      if (edit({ type: "insert", target: "clip", id, parent: track.id, index: track.clips.length, value: { name: nextName("Clip", names), start: round3(start), duration: round3(barSec), gain: 1 } }))
        onSelect({ kind: "clip", id });
    },
    addClipAfterLast: (track) => {
      const end = track.clips.reduce((m, c) => Math.max(m, clipStart(c) + clipDuration(c)), 0);
      const start = Math.ceil(end / beatSec - 1e-9) * beatSec;
      const id = newId();
      const names = state.tracks.flatMap((t) => t.clips.map((c) => str(c.name, "")));
      if (edit({ type: "insert", target: "clip", id, parent: track.id, index: track.clips.length, value: { name: nextName("Clip", names), start: round3(start), duration: round3(barSec), gain: 1 } }))
        onSelect({ kind: "clip", id });
    },
  };

  // --- ruler ------------------------------------------------------------------------------------
  const barPx = barSec * zoom;
  const labelEvery = [1, 2, 4, 8, 16, 32, 64, 128].find((n) => n * barPx >= 44) ?? 256;
  const bars: ReactElement[] = [];
  for (let b = 0; b * barSec < totalSec; b += labelEvery)
    bars.push(
      <div key={b} className="bar-label" style={{ left: b * barPx }}>
        {b + 1}
      </div>,
    );

  const onRulerClick = (e: React.MouseEvent<HTMLDivElement>) => {
    if ((e.target as HTMLElement).closest(".marker")) return;
    if (!client) return;
    if (!canEdit) {
      toast("View only: the transport follows the editors.");
      return;
    }
    const rect = e.currentTarget.getBoundingClientRect();
    client.seek(Math.max(0, snapTo((e.clientX - rect.left) / zoom, beatSec / 4)));
  };

  const gridStyle = {
    width: HEADER_W + laneW,
    "--bar-px": `${barPx}px`,
    "--beat-px": `${beatSec * zoom}px`,
  } as CSSProperties;

  return (
    <div className="timeline" ref={scrollerRef} data-testid="timeline" onPointerDown={(e) => e.target === e.currentTarget && onSelect(null)}>
      <div className="timeline-content" ref={contentRef} style={gridStyle} onPointerMove={onPointerMove}>
        <div className="ruler" style={{ height: RULER_H }}>
          <div className="ruler-corner">
            <span>Tracks</span>
            <span className="ruler-corner-sub">{state.tracks.length}</span>
          </div>
          <div className="ruler-lane" style={{ width: laneW }} onClick={onRulerClick} data-testid="ruler">
            {bars}
            <div className="marker-lane">
              {state.markers.map((m) => (
                <MarkerFlag key={m.id} marker={m} zoom={zoom} canEdit={canEdit} selected={selected?.kind === "marker" && selected.id === m.id} api={api} client={client} />
              ))}
            </div>
          </div>
          <div className="playhead-cap" ref={capRef} data-testid="playhead-cap" />
        </div>
        <div className="rows" ref={rowsRef}>
          {tracks.map((t, i) => (
            <TrackRow
              key={t.id}
              track={t}
              color={trackColor(t, i)}
              zoom={zoom}
              canEdit={canEdit}
              selectedId={selected?.kind === "clip" && t.clips.some((c) => c.id === selected.id) ? selected.id : null}
              remoteSel={remoteSel}
              locks={lockMap}
              api={api}
            />
          ))}
          {state.tracks.length === 0 && (
            <div className="empty">
              <div className="empty-title">An empty project</div>
              <div className="empty-sub">{canEdit ? "Add a track, then double-click its lane to add clips." : "Nothing here yet. The editors' changes appear live."}</div>
              {canEdit && (
                <button className="btn primary" onClick={onAddTrack}>
                  <Icon name="plus" /> Add track
                </button>
              )}
            </div>
          )}
          {state.tracks.length > 0 && canEdit && (
            <div className="add-row">
              <button className="add-track" data-testid="add-track-row" onClick={onAddTrack}>
                <Icon name="plus" /> Add track
              </button>
            </div>
          )}
        </div>
        <div className="playhead" ref={lineRef} data-testid="playhead" />
        <LiveCursors presence={presence} selfId={selfId} toPixels={toPixels} />
      </div>
    </div>
  );
}

// --- rows ---------------------------------------------------------------------------------------

interface TrackRowProps {
  track: Track;
  color: string;
  zoom: number;
  canEdit: boolean;
  selectedId: string | null;
  remoteSel: RemoteSel;
  locks: LockMap;
  api: RefObject<Api>;
}

const TrackRow = memo(function TrackRow({ track, color, zoom, canEdit, selectedId, remoteSel, locks, api }: TrackRowProps): ReactElement {
  const name = str(track.name, "Untitled");
  const muted = track.muted === true;
  const trackLock = locks.get(`track:${track.id}`);
  const renaming = useRef<(() => void) | null>(null);
  return (
    <div className={`track${muted ? " muted" : ""}`} data-testid="track" data-id={track.id} style={{ height: TRACK_H, "--track": color } as CSSProperties}>
      <div className="track-head">
        <div className="track-swatch" />
        <div className="track-main">
          <InlineName
            value={name}
            canEdit={canEdit}
            className="track-name"
            testid="track-name"
            onEditing={(on) => {
              renaming.current?.();
              renaming.current = on ? api.current!.holdLock("track", track.id) : null;
            }}
            onCommit={(v) => api.current!.edit({ type: "update", target: "track", id: track.id, path: ["name"], value: v })}
          />
          {trackLock ? (
            <span className="lock-tag" data-testid="lock" data-user={trackLock.userId} style={{ background: trackLock.color }} title={`${trackLock.name} is editing this track`}>
              {trackLock.name} is editing
            </span>
          ) : (
          <div className="track-sub">
            {track.clips.length} clip{track.clips.length === 1 ? "" : "s"}
            {muted ? " · muted" : ""}
          </div>
          )}
        </div>
        <div className="track-tools">
          <button
            className={`tool mute${muted ? " on" : ""}`}
            title={muted ? "Unmute" : "Mute"}
            aria-pressed={muted}
            disabled={!canEdit}
            data-testid="mute"
            onClick={() => api.current!.edit({ type: "update", target: "track", id: track.id, path: ["muted"], value: !muted })}
          >
            M
          </button>
          <button className="tool" title="Add a clip after the last one" disabled={!canEdit} data-testid="add-clip" onClick={() => api.current!.addClipAfterLast(track)}>
            <Icon name="plus" size={15} />
          </button>
          <button
            className="tool danger"
            title="Delete track"
            disabled={!canEdit}
            data-testid="delete-track"
            onClick={() => api.current!.edit({ type: "delete", target: "track", id: track.id })}
          >
            <Icon name="trash" size={15} />
          </button>
        </div>
      </div>
      <div className="lane" data-testid="lane" onDoubleClick={(e) => api.current!.laneDoubleClick(e, track)}>
        {track.clips.map((c) => (
          <ClipView
            key={c.id}
            clip={c}
            zoom={zoom}
            canEdit={canEdit}
            selected={selectedId === c.id}
            remote={remoteSel.get(c.id)}
            lock={locks.get(`clip:${c.id}`)}
            api={api}
          />
        ))}
      </div>
    </div>
  );
});

function ClipView({
  clip,
  zoom,
  canEdit,
  selected,
  remote,
  lock,
  api,
}: {
  clip: Clip;
  zoom: number;
  canEdit: boolean;
  selected: boolean;
  remote: { color: string; name: string } | undefined;
  lock: Lock | undefined;
  api: RefObject<Api>;
}): ReactElement {
  const start = clipStart(clip);
  const dur = clipDuration(clip);
  const name = str(clip.name, "Clip");
  const style = {
    left: start * zoom,
    width: Math.max(6, dur * zoom),
    backgroundImage: WAVES[hash(clip.id) % WAVES.length],
    ...(remote ? { "--remote": remote.color } : {}),
    ...(lock ? { "--lock": lock.color } : {}),
  } as CSSProperties;
  return (
    <div
      className={`clip${selected ? " selected" : ""}${remote ? " remote-selected" : ""}${lock ? " locked" : ""}`}
      data-testid="clip"
      data-id={clip.id}
      style={style}
      title={`${name} · ${start.toFixed(2)} s → ${(start + dur).toFixed(2)} s`}
      onPointerDown={(e) => api.current!.clipPointerDown(e, clip)}
    >
      <div className="clip-name">{name}</div>
      {lock ? (
        <div className="clip-who" data-testid="lock" data-user={lock.userId} style={{ background: lock.color }} title={`${lock.name} is working on this clip`}>
          <Icon name="lock" size={9} /> {lock.name}
        </div>
      ) : (
        remote && <div className="clip-who" style={{ background: remote.color }}>{remote.name}</div>
      )}
      {canEdit && (
        <button
          className="clip-x"
          title="Delete clip"
          data-testid="delete-clip"
          onPointerDown={(e) => e.stopPropagation()}
          onClick={(e) => {
            e.stopPropagation();
            api.current!.edit({ type: "delete", target: "clip", id: clip.id });
          }}
        >
          <Icon name="close" size={11} />
        </button>
      )}
      {canEdit && <div className="clip-resize" />}
    </div>
  );
}

function MarkerFlag({
  marker,
  zoom,
  canEdit,
  selected,
  api,
  client,
}: {
  marker: Marker;
  zoom: number;
  canEdit: boolean;
  selected: boolean;
  api: RefObject<Api>;
  client: StudioClient | null;
}): ReactElement {
  const t = markerTime(marker);
  const label = str(marker.label, "Marker");
  return (
    <div
      className={`marker${selected ? " selected" : ""}`}
      data-testid="marker"
      data-id={marker.id}
      style={{ left: t * zoom }}
      title={`${label} · ${t.toFixed(2)} s (click to jump, double-click to rename)`}
      onClick={(e) => {
        e.stopPropagation();
        api.current!.select({ kind: "marker", id: marker.id });
        if (canEdit) client?.seek(t);
      }}
    >
      <div className="marker-flag">
        <InlineName
          value={label}
          canEdit={canEdit}
          className="marker-label"
          testid="marker-label"
          onCommit={(v) => api.current!.edit({ type: "update", target: "marker", id: marker.id, path: ["label"], value: v })}
        />
        {canEdit && (
          <button
            className="marker-x"
            title="Delete marker"
            data-testid="delete-marker"
            onClick={(e) => {
              e.stopPropagation();
              api.current!.edit({ type: "delete", target: "marker", id: marker.id });
            }}
          >
            <Icon name="close" size={10} />
          </button>
        )}
      </div>
    </div>
  );
}

/** A name shown as text; double-click to edit (Enter or leaving commits, Escape cancels). */
export function InlineName({
  value,
  canEdit,
  className,
  testid,
  onCommit,
  onEditing,
}: {
  value: string;
  canEdit: boolean;
  className: string;
  testid: string;
  onCommit: (v: string) => void;
  /** Told when editing starts and ends (to hold a soft lock meanwhile). */
  onEditing?: (editing: boolean) => void;
}): ReactElement {
  const [draft, setDraft] = useState<string | null>(null);
  const cancelled = useRef(false);
  if (draft === null)
    return (
      <span
        className={`${className}${canEdit ? " editable" : ""}`}
        data-testid={testid}
        title={canEdit ? "Double-click to rename" : value}
        onDoubleClick={(e) => {
          e.stopPropagation();
          if (!canEdit) return;
          cancelled.current = false;
          setDraft(value);
          onEditing?.(true);
        }}
      >
        {value}
      </span>
    );
  return (
    <input
      className={`${className} inline-input`}
      data-testid={`${testid}-input`}
      autoFocus
      value={draft}
      maxLength={80}
      onChange={(e) => setDraft(e.target.value)}
      onFocus={(e) => e.currentTarget.select()}
      onPointerDown={(e) => e.stopPropagation()}
      onClick={(e) => e.stopPropagation()}
      onDoubleClick={(e) => e.stopPropagation()}
      onKeyDown={(e) => {
        e.stopPropagation();
        if (e.key === "Enter") e.currentTarget.blur();
        if (e.key === "Escape") {
          cancelled.current = true;
          e.currentTarget.blur();
        }
      }}
      onBlur={() => {
        const v = draft.trim();
        setDraft(null);
        onEditing?.(false);
        if (!cancelled.current && v && v !== value) onCommit(v);
      }}
    />
  );
}
