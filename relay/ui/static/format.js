"use strict";
// Small formatting helpers shared by the dashboard and the upload panel.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 1536 -> "1.5 KiB". */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)} ${UNITS[unit]}`;
}

/** Bytes per second -> "12.3 MB/s" (decimal megabytes, as network speeds are quoted). */
export function formatRate(bytesPerSecond) {
  if (!Number.isFinite(bytesPerSecond) || bytesPerSecond < 0) return "–";
  return `${(bytesPerSecond / 1e6).toFixed(bytesPerSecond < 1e7 ? 2 : 1)} MB/s`;
}

/** Seconds -> "1:05" or "1:02:03"; "–" when unknown. */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.round(seconds);
  const two = (n) => String(n).padStart(2, "0");
  if (s >= 3600) return `${Math.floor(s / 3600)}:${two(Math.floor(s / 60) % 60)}:${two(s % 60)}`;
  return `${Math.floor(s / 60)}:${two(s % 60)}`;
}

/** Unix seconds -> local "14:05:09". */
export function formatTime(ts) {
  if (!ts) return "–";
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

/** Set a node's text only when it changed: a DOM write costs a style recalculation, a compare does not. */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}
