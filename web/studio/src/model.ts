// Pure helpers of the studio page: geometry constants, reading entity properties (values are
// arbitrary JSON, PROTOCOL §5.1), colours, time formatting and the token's claims.

import type { Clip, Json, Marker, StudioState, Track } from "@studio-sync/client";

/** Width of the track header column, px. */
export const HEADER_W = 216;
/** Height of the time ruler (bar numbers on top, markers below), px. */
export const RULER_H = 52;
/** Height of one track row, px. */
export const TRACK_H = 76;
/** Default zoom, px per second. */
export const DEFAULT_ZOOM = 48;
export const MIN_ZOOM = 6;
export const MAX_ZOOM = 240;

/** Distinct track colours; a new track takes the first one no other track uses. */
export const PALETTE = ["#7c5cff", "#22c1a4", "#ff8a3d", "#e9508e", "#3aa0ff", "#c6d93a", "#b36bff", "#ff5f57", "#2fd06b", "#ffc23d"];

export function num(v: Json | undefined | readonly unknown[], fallback: number): number {
  return typeof v === "number" && Number.isFinite(v) ? v : fallback;
}

export function str(v: Json | undefined | readonly unknown[], fallback: string): string {
  return typeof v === "string" ? v : fallback;
}

export function tempoOf(state: StudioState): number {
  const t = num(state.tempo as Json | undefined, 120);
  return t >= 20 && t <= 400 ? t : 120;
}

/** Beats per bar: the numerator of a `timeSignature` project property, else 4. */
export function beatsPerBarOf(state: StudioState): number {
  const ts = state.timeSignature as Json | undefined;
  if (ts && typeof ts === "object" && !Array.isArray(ts)) {
    const n = num(ts.numerator, 4);
    if (n >= 1 && n <= 32) return Math.round(n);
  }
  return 4;
}

export function trackColor(track: Track, index: number): string {
  const c = track.color;
  return typeof c === "string" && /^#[0-9a-fA-F]{3,8}$/.test(c) ? c : PALETTE[index % PALETTE.length];
}

export function freeColor(tracks: readonly Track[]): string {
  const used = new Set(tracks.map((t, i) => trackColor(t, i)));
  return PALETTE.find((c) => !used.has(c)) ?? PALETTE[tracks.length % PALETTE.length];
}

export const clipStart = (c: Clip): number => Math.max(0, num(c.start, 0));
export const clipDuration = (c: Clip): number => Math.max(0.05, num(c.duration, 1));
export const markerTime = (m: Marker): number => Math.max(0, num(m.time, 0));

/** The end of the last clip or marker, seconds. */
export function contentEnd(state: StudioState): number {
  let end = 0;
  for (const t of state.tracks) for (const c of t.clips) end = Math.max(end, clipStart(c) + clipDuration(c));
  for (const m of state.markers) end = Math.max(end, markerTime(m));
  return end;
}

/** `m:ss.mmm` */
export function formatTime(seconds: number): string {
  const s = Math.max(0, seconds);
  const m = Math.floor(s / 60);
  const rest = s - m * 60;
  return `${m}:${rest.toFixed(3).padStart(6, "0")}`;
}

/** `bar.beat`, both from 1. */
export function formatBars(seconds: number, tempo: number, beatsPerBar: number): string {
  const beat = 60 / tempo;
  const beats = Math.floor(Math.max(0, seconds) / beat + 1e-9);
  return `${Math.floor(beats / beatsPerBar) + 1}.${(beats % beatsPerBar) + 1}`;
}

export function initials(name: string): string {
  const parts = name.trim().split(/\s+/).filter(Boolean);
  if (parts.length === 0) return "?";
  const letters = parts.length === 1 ? [...parts[0]].slice(0, 2) : [[...parts[0]][0], [...parts[parts.length - 1]][0]];
  return letters.join("").toUpperCase();
}

/** The claims of a JWT, read without checking the signature (the server checks it). */
export function tokenClaims(token: string): Record<string, unknown> {
  try {
    const body = token.split(".")[1] ?? "";
    const b64 = body.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(body.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
    const v = JSON.parse(new TextDecoder().decode(bytes)) as unknown;
    return v && typeof v === "object" ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

export const newId = (): string =>
  typeof crypto !== "undefined" && "randomUUID" in crypto ? crypto.randomUUID() : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;

/** The next free "Base N" name among `names`. */
export function nextName(base: string, names: readonly string[]): string {
  let n = names.length + 1;
  const taken = new Set(names);
  while (taken.has(`${base} ${n}`)) n++;
  return `${base} ${n}`;
}
