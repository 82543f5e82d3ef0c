"use strict";
// The dashboard: one EventSource on /_relay/events plus a snapshot from /_relay/uploads, kept in a Map of
// uploads, each owning its table row. Events only mark an upload dirty; rows are written once per animation
// frame, and only the cells whose text changed. Nothing re-renders a whole table, so 200 uploads in flight
// cost 200 small updates a frame at most, whatever the event rate.

import { ThroughputChart } from "./chart.js";
import { formatBytes, formatDuration, formatRate, formatTime, setText } from "./format.js";
import { setUpPanel } from "./panel.js";

const EVENTS = ["started", "progress", "part", "completed", "failed", "interrupted", "resumed"];
const IN_FLIGHT = new Set(["receiving", "forwarding"]);
const RECENT_LIMIT = 100; // finished rows kept on the page (the registry's snapshot has 100 too)
const RATE_WINDOW = 3; // seconds of progress behind a row's MB/s and ETA
const STALLED_AFTER = 3000; // ms without an event before a row's rate shows as stalled
const RECONNECT_DELAY = 3000; // ms; EventSource retries network errors itself, not an HTTP error

const uploads = new Map(); // upload id -> upload (its state and its row)
const dirty = new Set();
let frameRequested = false;

const $ = (selector) => document.querySelector(selector);
const inflightBody = $("#inflight tbody");
const recentBody = $("#recent tbody");
const chart = new ThroughputChart($("#chart"), $("#chart-now"));

// ---- state --------------------------------------------------------------------------------------------

function uploadFor(id) {
  let upload = uploads.get(id);
  if (!upload) {
    upload = {
      id, state: "receiving", path: "", route: "", bytes: 0, total: null, startedAt: null, finishedAt: null,
      upstreamStatus: null, error: null, parts: [], resumable: false, offset: null, note: "",
      samples: [], seenAt: Date.now(), row: null, cells: null, known: false,
    };
    uploads.set(id, upload);
  }
  return upload;
}

/** Count new bytes into the chart and the row's rate samples. */
function advance(upload, bytes, ts) {
  // An upload first met mid-way (e.g. a reconnect) has no baseline: its bytes so far are not this second's.
  if (upload.known && bytes > upload.bytes) chart.add(ts, bytes - upload.bytes);
  upload.known = true;
  upload.bytes = Math.max(upload.bytes, bytes);
  upload.samples.push([ts, upload.bytes]);
  while (upload.samples.length > 2 && ts - upload.samples[0][0] > RATE_WINDOW) upload.samples.shift();
}

/** True when `started` begins another run of an id this page already shows (an id may be used again once its
 * upload ended): the known run began at another time, or (start unknown) has finished. The same start time is
 * the same run told twice (a snapshot, then a replayed event after a reconnect). */
function isNewRun(upload, event) {
  if (upload.startedAt !== null) return upload.startedAt !== event.ts;
  return !IN_FLIGHT.has(upload.state);
}

function applyEvent(name, event) {
  let upload = uploadFor(event.upload_id);
  if (name === "started" && isNewRun(upload, event)) {
    // A fresh upload with a row of its own; the last run's row stays in the recent table as its history. A last
    // run still shown in flight had its end missed (e.g. while reconnecting): the new run replaces its row.
    if (IN_FLIGHT.has(upload.state)) {
      upload.row?.remove();
      dirty.delete(upload);
    }
    uploads.delete(event.upload_id);
    upload = uploadFor(event.upload_id);
  }
  upload.seenAt = Date.now();
  if (event.total !== undefined && event.total !== null) upload.total = event.total;
  if (name === "started") {
    upload.known = true;
    upload.path = event.path || event.route || upload.path;
    upload.route = event.route || upload.route;
    upload.startedAt = event.ts;
  } else if (name === "part") {
    upload.parts[event.index] = { filename: event.filename, field: event.field, sha256: event.sha256 };
  } else if (name === "completed") {
    finish(upload, "completed", event);
  } else if (name === "failed") {
    finish(upload, event.rejected ? "rejected" : "failed", event);
    upload.error = event.error;
  } else if (name === "interrupted" || name === "resumed") {
    upload.resumable = true;
    upload.offset = event.offset ?? event.bytes;
    upload.note = name;
  }
  advance(upload, event.bytes, event.ts);
  markDirty(upload);
}

function finish(upload, state, event) {
  upload.state = state;
  upload.finishedAt = event.ts;
  upload.upstreamStatus = event.upstream_status ?? null;
}

/** A record from GET /_relay/uploads: fills in what the events have not told yet. */
function applyRecord(record) {
  const upload = uploadFor(record.id);
  if (!IN_FLIGHT.has(upload.state) && upload.row) return; // the events already finished it
  Object.assign(upload, {
    state: record.state, route: record.route, total: record.total, startedAt: record.started_at,
    finishedAt: record.finished_at, upstreamStatus: record.upstream_status, error: record.error,
    resumable: Boolean(record.resumable), offset: record.offset ?? upload.offset,
  });
  upload.path ||= record.path || record.route;
  upload.parts = record.parts.map((part) => ({ filename: part.filename, field: part.field, sha256: part.sha256 }));
  if (record.bytes > upload.bytes) upload.bytes = record.bytes;
  upload.known = true;
  markDirty(upload);
}

async function loadSnapshot(openedAt = Date.now()) {
  const response = await fetch("../uploads", { headers: { Accept: "application/json" } });
  if (!response.ok) return response.status;
  const { uploads: records } = await response.json();
  const listed = new Set(records.map((record) => record.id));
  // Oldest first, so each finished one lands on top of the recent table and newest ends first.
  for (const record of records.reverse()) applyRecord(record);
  // A short list is the whole registry: an upload in flight that it does not list, and that has had no event
  // since the stream (re)opened, is gone (the relay restarted). A full list may just have pushed older uploads
  // out; an upload with a fresh event started after the list was made.
  if (records.length < RECENT_LIMIT) {
    for (const upload of uploads.values()) {
      if (IN_FLIGHT.has(upload.state) && !listed.has(upload.id) && upload.seenAt < openedAt) {
        upload.state = "lost";
        markDirty(upload);
      }
    }
  }
  return response.status;
}

// ---- rendering ----------------------------------------------------------------------------------------

function markDirty(upload) {
  dirty.add(upload);
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(render);
  }
}

function render() {
  frameRequested = false;
  for (const upload of dirty) {
    if (IN_FLIGHT.has(upload.state)) renderInFlight(upload);
    else renderFinished(upload);
  }
  dirty.clear();
  const count = inflightBody.rows.length;
  setText($("#inflight-count"), count ? `· ${count}` : "");
  setText($("#total-inflight"), String(count));
  $("#inflight-empty").hidden = count > 0;
  $("#inflight").parentElement.hidden = count === 0; // no empty header row on a quiet relay
}

function newRow(upload, names, body, atTop) {
  const row = document.createElement("tr");
  row.dataset.id = upload.id;
  const cells = {};
  for (const name of names) {
    const cell = row.insertCell();
    cell.className = name;
    cells[name] = cell;
  }
  if (atTop) body.prepend(row);
  else body.append(row);
  upload.row = row;
  upload.cells = cells;
  setText(cells.id, upload.id.slice(0, 8));
  cells.id.title = upload.id;
  return cells;
}

function renderInFlight(upload) {
  let { cells } = upload;
  if (!upload.row || upload.row.parentNode !== inflightBody) {
    cells = newRow(upload, ["id", "path", "progress", "bytes", "rate", "eta", "state"], inflightBody, false);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-label", `upload ${upload.id}`);
    bar.append(document.createElement("div"));
    cells.progress.append(bar, document.createElement("span"));
  }
  setText(cells.path, upload.path || upload.route);
  const bar = cells.progress.firstChild;
  const fraction = upload.total ? Math.min(1, upload.bytes / upload.total) : null;
  // Setting style properties from script is allowed under the CSP (only inline style attributes are not).
  bar.firstChild.style.width = fraction === null ? "100%" : `${(fraction * 100).toFixed(1)}%`;
  bar.classList.toggle("unknown", fraction === null);
  if (fraction !== null) bar.setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
  setText(cells.progress.lastChild, fraction === null ? "" : `${(fraction * 100).toFixed(1)} %`);
  setText(cells.bytes, `${formatBytes(upload.bytes)} / ${formatBytes(upload.total)}`);
  const rate = rateOf(upload);
  setText(cells.rate, Date.now() - upload.seenAt > STALLED_AFTER ? "stalled" : formatRate(rate));
  setText(cells.eta, upload.total && rate > 0 ? formatDuration((upload.total - upload.bytes) / rate) : "–");
  let state = upload.state;
  // A resumable upload's bytes are its offset; the note says where its last append began or broke off.
  if (upload.resumable) state += ` · offset ${formatBytes(upload.bytes)}`;
  if (upload.note) state += ` · ${upload.note} at ${formatBytes(upload.offset)}`;
  setText(cells.state, state);
}

function rateOf(upload) {
  const { samples } = upload;
  if (samples.length < 2) return NaN;
  const [t0, b0] = samples[0];
  const [t1, b1] = samples[samples.length - 1];
  return t1 > t0 ? (b1 - b0) / (t1 - t0) : NaN;
}

function renderFinished(upload) {
  let { cells } = upload;
  if (!upload.row || upload.row.parentNode !== recentBody) {
    upload.row?.remove();
    const names = ["id", "path", "outcome", "upstream", "error", "size", "time", "sha256"];
    cells = newRow(upload, names, recentBody, true);
    trimRecent();
  }
  setText(cells.path, upload.path || upload.route);
  setText(cells.outcome, upload.state);
  cells.outcome.dataset.outcome = upload.state;
  setText(cells.upstream, upload.upstreamStatus === null ? "–" : String(upload.upstreamStatus));
  setText(cells.error, upload.error ? upload.error.code : "");
  if (upload.error) cells.error.title = upload.error.message;
  setText(cells.size, formatBytes(upload.bytes));
  const took = upload.finishedAt && upload.startedAt ? upload.finishedAt - upload.startedAt : NaN;
  setText(cells.time, `${formatTime(upload.finishedAt)} (${formatDuration(took)})`);
  const digests = upload.parts.filter(Boolean).map((part) => `${part.filename || part.field || "body"}\n${part.sha256 || "–"}`);
  setText(cells.sha256, digests.join("\n"));
}

function trimRecent() {
  while (recentBody.rows.length > RECENT_LIMIT) {
    const row = recentBody.lastElementChild;
    // An earlier run of a reused id leaves a row that is no longer its upload's: keep the newer run's entry.
    if (uploads.get(row.dataset.id)?.row === row) uploads.delete(row.dataset.id);
    row.remove();
  }
}

// ---- totals, from the relay's own counters ------------------------------------------------------------

/** Prometheus text -> [{name, labels, value}] for the few lines the totals need. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const match = /^(relay_[a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)$/.exec(line);
    if (!match) continue;
    const labels = Object.fromEntries([...(match[2] || "").matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

async function refreshTotals() {
  try {
    const response = await fetch("../metrics");
    if (!response.ok) return;
    const samples = parseMetrics(await response.text());
    const sum = (name) => samples.filter((s) => s.name === name).reduce((total, s) => total + s.value, 0);
    setText($("#total-uploads"), String(sum("relay_uploads_total")));
    setText($("#total-bytes"), formatBytes(sum("relay_bytes_received_total")));
    const rejections = samples.filter((s) => s.name === "relay_rejections_total" && s.value > 0);
    const list = rejections.map((s) => `${s.labels.code} ${s.value}`).join(", ");
    setText($("#total-rejections"), `${sum("relay_rejections_total")}${list ? ` (${list})` : ""}`);
  } catch {
    // The relay is restarting; the next tick tries again.
  }
}

// ---- the event stream ---------------------------------------------------------------------------------

function setLive(state, text) {
  const live = $("#live");
  live.dataset.state = state;
  setText(live, text);
}

function connect() {
  const source = new EventSource("../events");
  source.addEventListener("open", () => {
    setLive("live", "live");
    // After a reconnect the relay may have restarted: catch up on what the stream did not say.
    loadSnapshot(Date.now()).catch(() => {});
  });
  for (const name of EVENTS) {
    source.addEventListener(name, (message) => applyEvent(name, JSON.parse(message.data)));
  }
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) {
      setLive("reconnecting", "reconnecting…");
      return;
    }
    // Closed for good (an HTTP error, e.g. 401 once the session is gone): find out why, then retry.
    source.close();
    setLive("reconnecting", "reconnecting…");
    setTimeout(retry, RECONNECT_DELAY);
  });
}

async function retry() {
  try {
    const status = await loadSnapshot();
    if (status === 401) {
      setLive("signed-out", "signed out: reload to log in");
      return;
    }
  } catch {
    // Relay still down: EventSource below will keep trying.
  }
  connect();
}

function tick() {
  // Rates and "stalled" depend on time passing, not only on events.
  for (const upload of uploads.values()) if (IN_FLIGHT.has(upload.state)) markDirty(upload);
  chart.draw(formatRate);
}

connect();
refreshTotals();
setInterval(refreshTotals, 2000);
setInterval(tick, 1000);
chart.draw(formatRate);
setUpPanel();
