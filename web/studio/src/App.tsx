// The studio: a header (project name, tempo, transport, who is here, connection) over the
// timeline. The document, presence, the transport and the status come from `useStudio`; every
// change is a `client.edit(...)` of PROTOCOL §5.2 ops.

import { InvalidEdit, type EditError, type Op, type Presence, type Status, type StudioClient } from "@studio-sync/client";
import { useStudio } from "@studio-sync/client/react";
import { useCallback, useEffect, useRef, useState, type ReactElement } from "react";
import { Icon } from "./icons.js";
import {
  DEFAULT_ZOOM,
  MAX_ZOOM,
  MIN_ZOOM,
  beatsPerBarOf,
  formatBars,
  formatTime,
  freeColor,
  initials,
  markerTime,
  newId,
  nextName,
  str,
  tempoOf,
} from "./model.js";
import { Timeline, type Selection } from "./Timeline.js";

declare global {
  interface Window {
    /** The page's client once connected, for debugging and automation. */
    studio?: StudioClient;
  }
}

export interface AppProps {
  host: string;
  room: string;
  token: string;
  /** The token's `role` claim: a `viewer` cannot edit (the server refuses it anyway). */
  viewer: boolean;
  /** The token's `name` claim, until the server's presence says who we are. */
  userName: string;
}

interface Toast {
  id: number;
  kind: "error" | "info";
  text: string;
  /** Toasts with the same key in quick succession replace each other. */
  key?: string;
  at: number;
}

const ERROR_TEXT: Record<string, string> = {
  forbidden: "You are a viewer here: edits are not allowed",
  invalid_op: "That edit no longer applies",
  rate_limited: "Slow down: too many messages",
  too_large: "That is too large for the project",
  version_too_old: "Your copy was too old: the project reloaded",
};

export function App({ host, room, token, viewer, userName }: AppProps): ReactElement {
  const { client, state, presence, status, transport, locks, selfId, error } = useStudio({ host, room, token, maxReconnectionDelay: 2500 });
  const canEdit = !viewer;
  const [zoom, setZoom] = useState(DEFAULT_ZOOM);
  const [selected, setSelected] = useState<Selection | null>(null);
  const [toasts, setToasts] = useState<Toast[]>([]);

  const toast = useCallback((text: string, kind: Toast["kind"] = "info", key?: string) => {
    const id = Math.random();
    const at = Date.now();
    // A refusal and the rollback it causes arrive as two errors: one toast, the later text.
    setToasts((ts) => {
      const last = ts[ts.length - 1];
      const keep = last && key && last.key === key && at - last.at < 2000 ? ts.slice(0, -1) : ts;
      return [...keep.slice(-3), { id, kind, text, key, at }];
    });
    setTimeout(() => setToasts((ts) => ts.filter((t) => t.id !== id)), kind === "error" ? 6000 : 3500);
  }, []);

  // window.studio, and the server's refusals as toasts.
  useEffect(() => {
    if (!client) return;
    window.studio = client;
    const off = client.on("error", (e: EditError) => {
      const what = ERROR_TEXT[e.code] ?? e.message;
      toast(`${what}${e.ops?.length ? ` (${e.ops.length} change${e.ops.length === 1 ? "" : "s"} rolled back)` : ""}`, "error", `error:${e.code}`);
    });
    return () => {
      off();
      if (window.studio === client) delete window.studio;
    };
  }, [client, toast]);

  const edit = useCallback(
    (ops: Op | Op[]): boolean => {
      if (!client) return false;
      if (!canEdit) {
        toast("View only: you cannot edit this project", "error");
        return false;
      }
      try {
        client.edit(ops);
        return true;
      } catch (e) {
        toast(e instanceof InvalidEdit ? `That no longer applies: ${e.message}` : String(e), "error");
        return false;
      }
    },
    [client, canEdit, toast],
  );

  // Forget a selection whose entity is gone.
  useEffect(() => {
    if (!selected) return;
    const exists =
      selected.kind === "marker"
        ? state.markers.some((m) => m.id === selected.id)
        : state.tracks.some((t) => t.clips.some((c) => c.id === selected.id));
    if (!exists) setSelected(null);
  }, [state, selected]);

  const addTrack = useCallback(() => {
    const id = newId();
    edit({
      type: "insert",
      target: "track",
      id,
      index: state.tracks.length,
      value: { name: nextName("Track", state.tracks.map((t) => str(t.name, ""))), clips: [], volume: 0.8, muted: false, color: freeColor(state.tracks) },
    });
  }, [edit, state]);

  const addMarker = useCallback(() => {
    if (!client) return;
    const time = Math.round(client.playhead() * 1000) / 1000;
    const index = state.markers.filter((m) => markerTime(m) <= time).length;
    const id = newId();
    if (edit({ type: "insert", target: "marker", id, index, value: { time, label: nextName("Marker", state.markers.map((m) => str(m.label, ""))) } }))
      setSelected({ kind: "marker", id });
  }, [client, edit, state]);

  const playing = transport?.playing ?? false;
  const togglePlay = useCallback(() => {
    if (!client) return;
    if (!canEdit) return toast("View only: the transport follows the editors.", "info");
    if (client.transport()?.playing) client.pause();
    else client.play();
  }, [client, canEdit, toast]);

  // Undo and redo take back this person's own edits only (ot-core keeps each step transformed
  // over everyone's later edits); a step someone else made moot is skipped and said so.
  const undoRedo = useCallback(
    (redo: boolean) => {
      if (!client || !canEdit) return;
      const r = redo ? client.redo() : client.undo();
      if (r.skipped > 0)
        toast(`${r.skipped} step${r.skipped === 1 ? "" : "s"} skipped: someone else changed ${r.skipped === 1 ? "it" : "them"} since`, "info", "undo-skip");
      else if (!r.applied) toast(redo ? "Nothing to redo" : "Nothing to undo", "info", "undo-none");
    },
    [client, canEdit, toast],
  );

  // Keyboard: space plays/pauses, Delete removes the selection, Escape deselects,
  // Ctrl/Cmd+Z undoes, Shift+Ctrl/Cmd+Z (or Ctrl+Y) redoes.
  const keys = useRef({ togglePlay, selected, edit, undoRedo });
  keys.current = { togglePlay, selected, edit, undoRedo };
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const t = e.target as HTMLElement | null;
      if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
      const { togglePlay: toggle, selected: sel, edit: send, undoRedo: undo } = keys.current;
      const mod = e.ctrlKey || e.metaKey;
      if (mod && !e.altKey && (e.key === "z" || e.key === "Z")) {
        e.preventDefault();
        undo(e.shiftKey);
      } else if (mod && !e.altKey && (e.key === "y" || e.key === "Y")) {
        e.preventDefault();
        undo(true);
      } else if (e.code === "Space") {
        e.preventDefault();
        toggle();
      } else if ((e.key === "Delete" || e.key === "Backspace") && sel) {
        e.preventDefault();
        if (send({ type: "delete", target: sel.kind, id: sel.id })) setSelected(null);
      } else if (e.key === "Escape") setSelected(null);
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);

  const tempo = tempoOf(state);
  const bpb = beatsPerBarOf(state);

  return (
    <div className={`app${canEdit ? "" : " viewer"}`}>
      <header className="topbar">
        <div className="brand" title="Studio">
          <span className="logo">
            <Icon name="logo" size={18} />
          </span>
        </div>
        <div className="project">
          <DraftInput
            className="project-name"
            testid="project-name"
            value={str(state.name as string | undefined, "")}
            placeholder="Untitled project"
            disabled={!canEdit || !client}
            onCommit={(v) => edit({ type: "update", target: "project", path: ["name"], value: v })}
          />
          <div className="project-sub">
            room <b>{room}</b>
          </div>
        </div>

        <div className="transport">
          <button className="icon-btn" title="Back to start" disabled={!canEdit || !client} data-testid="to-start" onClick={() => client?.seek(0)}>
            <Icon name="start" />
          </button>
          <button
            className={`play-btn${playing ? " playing" : ""}`}
            title={playing ? "Pause (space)" : "Play (space)"}
            disabled={!canEdit || !client}
            data-testid="play"
            aria-pressed={playing}
            onClick={togglePlay}
          >
            <Icon name={playing ? "pause" : "play"} size={18} />
          </button>
          <Clock client={client} tempo={tempo} beatsPerBar={bpb} />
          <label className="tempo" title="Tempo (beats per minute)">
            <DraftInput
              className="tempo-input"
              testid="tempo"
              value={String(tempo)}
              inputMode="decimal"
              disabled={!canEdit || !client}
              onCommit={(v) => {
                const n = Number(v);
                if (!Number.isFinite(n) || n < 20 || n > 400) toast("Tempo must be between 20 and 400 BPM", "error");
                else edit({ type: "update", target: "project", path: ["tempo"], value: Math.round(n * 100) / 100 });
              }}
            />
            <span>BPM</span>
          </label>
        </div>

        <div className="tools">
          <div className="zoom">
            <button className="icon-btn" title="Undo your last edit (Ctrl/Cmd+Z)" data-testid="undo" disabled={!canEdit || !status.canUndo} onClick={() => undoRedo(false)}>
              <Icon name="undo" />
            </button>
            <button className="icon-btn" title="Redo (Shift+Ctrl/Cmd+Z)" data-testid="redo" disabled={!canEdit || !status.canRedo} onClick={() => undoRedo(true)}>
              <Icon name="redo" />
            </button>
          </div>
          <button className="btn" disabled={!canEdit || !client} data-testid="add-track" onClick={addTrack}>
            <Icon name="plus" /> Track
          </button>
          <button className="btn" disabled={!canEdit || !client} data-testid="add-marker" title="Add a marker at the playhead" onClick={addMarker}>
            <Icon name="marker" /> Marker
          </button>
          <div className="zoom">
            <button className="icon-btn" title="Zoom out" data-testid="zoom-out" onClick={() => setZoom((z) => Math.max(MIN_ZOOM, z / 1.25))}>
              <Icon name="zoomOut" />
            </button>
            <button className="icon-btn" title="Zoom in" data-testid="zoom-in" onClick={() => setZoom((z) => Math.min(MAX_ZOOM, z * 1.25))}>
              <Icon name="zoomIn" />
            </button>
          </div>
        </div>

        <div className="right">
          <Avatars presence={presence} selfId={selfId} fallbackName={userName} />
          {!canEdit && (
            <span className="badge view-only" data-testid="view-only" title="Your token has the viewer role: you see everything live but cannot change it">
              <Icon name="eye" size={14} /> view only
            </span>
          )}
          <StatusBadge status={status} />
        </div>
      </header>

      {status.stopped && (
        <div className="banner" data-testid="stopped">
          Disconnected: {status.stopped}. Reload the page with a fresh token to reconnect.
        </div>
      )}
      {error && (
        <div className="banner" data-testid="load-error">
          Could not start the studio: {error.message}
        </div>
      )}

      <Timeline
        state={state}
        presence={presence}
        selfId={selfId}
        client={client}
        canEdit={canEdit && !!client}
        zoom={zoom}
        selected={selected}
        onSelect={setSelected}
        edit={edit}
        onAddTrack={addTrack}
        toast={(t) => toast(t, "info")}
        locks={locks}
      />

      <footer className="statusbar">
        <span>
          {state.tracks.length} track{state.tracks.length === 1 ? "" : "s"} · {state.tracks.reduce((n, t) => n + t.clips.length, 0)} clips ·{" "}
          {state.markers.length} marker{state.markers.length === 1 ? "" : "s"}
        </span>
        <span className="hint">
          {canEdit
            ? "Double-click a lane to add a clip · drag clips between tracks · Delete removes the selection · Space plays · Ctrl+Z undoes your own edits"
            : "You are viewing: changes by the editors appear live"}
        </span>
        <span data-testid="version">v{status.version ?? "–"}</span>
      </footer>

      <div className="toasts" aria-live="polite">
        {toasts.map((t) => (
          <div key={t.id} className={`toast ${t.kind}`} data-testid="toast" role={t.kind === "error" ? "alert" : "status"}>
            {t.text}
          </div>
        ))}
      </div>
    </div>
  );
}

/** The playhead's time, updated every animation frame from the shared transport. */
function Clock({ client, tempo, beatsPerBar }: { client: StudioClient | null; tempo: number; beatsPerBar: number }): ReactElement {
  const timeRef = useRef<HTMLSpanElement>(null);
  const barsRef = useRef<HTMLSpanElement>(null);
  const live = useRef({ client, tempo, beatsPerBar });
  live.current = { client, tempo, beatsPerBar };
  useEffect(() => {
    let raf = 0;
    let last = "";
    const frame = () => {
      raf = requestAnimationFrame(frame);
      const { client: c, tempo: t, beatsPerBar: b } = live.current;
      const pos = c ? c.playhead() : 0;
      const time = formatTime(pos);
      const bars = formatBars(pos, t, b);
      if (time + bars === last) return;
      last = time + bars;
      if (timeRef.current) timeRef.current.textContent = time;
      if (barsRef.current) barsRef.current.textContent = bars;
    };
    raf = requestAnimationFrame(frame);
    return () => cancelAnimationFrame(raf);
  }, []);
  return (
    <div className="clock" title="Playhead: minutes:seconds and bar.beat">
      <span className="clock-time" ref={timeRef} data-testid="time">
        0:00.000
      </span>
      <span className="clock-bars" ref={barsRef}>
        1.1
      </span>
    </div>
  );
}

function Avatars({ presence, selfId, fallbackName }: { presence: readonly Presence[]; selfId: string | undefined; fallbackName: string }): ReactElement {
  const sorted = [...presence].sort((a, b) => (a.id === selfId ? -1 : b.id === selfId ? 1 : a.name.localeCompare(b.name)));
  const shown = sorted.slice(0, 6);
  if (shown.length === 0)
    return (
      <div className="avatars">
        <span className="avatar pending" title={`${fallbackName} (you)`}>
          {initials(fallbackName)}
        </span>
      </div>
    );
  return (
    <div className="avatars" data-testid="avatars">
      {shown.map((p) => {
        const self = p.id === selfId;
        return (
          <span
            key={p.id}
            className={`avatar${self ? " self" : ""}`}
            data-testid="avatar"
            data-user={p.id}
            style={{ background: p.color }}
            title={self ? `${p.name} (you)` : p.name}
          >
            {p.avatar ? <img src={p.avatar} alt="" onError={(e) => (e.currentTarget.style.display = "none")} /> : null}
            {initials(p.name)}
            {self && <span className="you">you</span>}
          </span>
        );
      })}
      {sorted.length > shown.length && (
        <span className="avatar more" title={sorted.slice(6).map((p) => p.name).join(", ")}>
          +{sorted.length - shown.length}
        </span>
      )}
    </div>
  );
}

function StatusBadge({ status }: { status: Status }): ReactElement {
  const { connection, pending } = status;
  const text = connection === "offline" ? `offline · ${pending} pending` : connection === "live" ? "live" : "connecting";
  const title =
    connection === "offline"
      ? `Not connected: ${pending} change${pending === 1 ? "" : "s"} wait${pending === 1 ? "s" : ""} to be sent; they go out when the connection is back`
      : connection === "live"
        ? pending
          ? `Connected; ${pending} change${pending === 1 ? "" : "s"} not yet confirmed`
          : "Connected: everything is saved"
        : "Connecting to the server…";
  return (
    <span className={`badge status ${connection}${pending ? " has-pending" : ""}`} data-testid="status" data-connection={connection} data-pending={pending} title={title}>
      <span className="dot" />
      {text}
    </span>
  );
}

/** An input that keeps a draft while focused and commits on Enter or blur (Escape cancels). */
function DraftInput({
  value,
  onCommit,
  disabled,
  className,
  testid,
  placeholder,
  inputMode,
}: {
  value: string;
  onCommit: (v: string) => void;
  disabled?: boolean;
  className: string;
  testid: string;
  placeholder?: string;
  inputMode?: "decimal" | "text";
}): ReactElement {
  const [draft, setDraft] = useState<string | null>(null);
  const cancelled = useRef(false);
  return (
    <input
      className={className}
      data-testid={testid}
      value={draft ?? value}
      placeholder={placeholder}
      inputMode={inputMode}
      readOnly={disabled}
      aria-readonly={disabled}
      spellCheck={false}
      maxLength={120}
      onFocus={() => {
        if (disabled) return;
        cancelled.current = false;
        setDraft(value);
      }}
      onChange={(e) => !disabled && setDraft(e.target.value)}
      onKeyDown={(e) => {
        if (e.key === "Enter") e.currentTarget.blur();
        if (e.key === "Escape") {
          cancelled.current = true;
          e.currentTarget.blur();
        }
      }}
      onBlur={() => {
        const v = (draft ?? "").trim();
        setDraft(null);
        if (!disabled && !cancelled.current && draft !== null && v && v !== value) onCommit(v);
      }}
    />
  );
}
