"use strict";
// The upload panel: files picked or dropped go to a routed path with tus-js-client (window.tus, vendored).
// The relay takes tus creation at the routed URL itself; tus-js-client keeps each upload's URL in
// localStorage (its URL storage), so after a page reload the same file picked again resumes where it was.

import { formatBytes, formatRate, setText } from "./format.js";

// Back-off between retries, ms: covers a relay restart of a few seconds before giving up.
const RETRY_DELAYS = [0, 500, 1000, 2000, 3000, 5000, 5000, 10000, 10000, 20000];

const $ = (selector) => document.querySelector(selector);

export function setUpPanel() {
  const picker = $("#upload-files");
  const zone = $("#drop-zone");
  const pathInput = $("#upload-path");
  loadRoutes(pathInput).catch(() => {});
  // The drop zone is a real button: Enter/Space or a click opens the picker; dropping works too.
  zone.addEventListener("click", () => picker.click());
  picker.addEventListener("change", () => {
    startAll(picker.files);
    picker.value = ""; // the same file may be picked again (to resume it after a reload)
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    startAll(event.dataTransfer.files);
  });
}

/** Fill the path's suggestions from /_relay/health (public) and prefill it with the first route. */
async function loadRoutes(pathInput) {
  const response = await fetch("../health");
  if (!response.ok) return;
  const { routes } = await response.json();
  const list = $("#route-list");
  list.replaceChildren(...routes.map((route) => new Option(route.prefix)));
  if (routes.length && !pathInput.dataset.touched) pathInput.value = routes[0].prefix;
  pathInput.addEventListener("input", () => (pathInput.dataset.touched = "1"), { once: true });
}

function startAll(files) {
  const path = $("#upload-path").value.trim() || "/upload/";
  const token = $("#upload-token").value.trim();
  for (const file of files) startUpload(file, path, token);
}

/** One list item per file: name, bar, status line and a pause/resume button. */
function fileItem(file) {
  const item = document.createElement("li");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = `${file.name} (${formatBytes(file.size)})`;
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-label", `upload of ${file.name}`);
  bar.append(document.createElement("div"));
  const status = document.createElement("span");
  status.className = "status";
  status.setAttribute("aria-live", "polite");
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Pause";
  item.append(name, bar, status, button);
  $("#panel-files").append(item);
  return { item, bar, status, button };
}

function startUpload(file, path, token) {
  const view = fileItem(file);
  const started = { at: performance.now(), bytes: 0 };
  let paused = false;
  let pending = null; // the newest progress, written at the next animation frame

  const show = () => {
    if (pending === null) return; // finished, failed or paused since: that status stays
    const { sent, total } = pending;
    pending = null;
    const fraction = total ? sent / total : 0;
    view.bar.firstChild.style.width = `${(fraction * 100).toFixed(1)}%`;
    view.bar.setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
    const rate = ((sent - started.bytes) * 1000) / Math.max(1, performance.now() - started.at);
    setText(view.status, `${(fraction * 100).toFixed(1)} % · ${formatBytes(sent)} · ${formatRate(rate)}`);
  };

  const upload = new window.tus.Upload(file, {
    endpoint: new URL(path, window.location.href).href,
    retryDelays: RETRY_DELAYS,
    metadata: { filename: file.name, filetype: file.type || "application/octet-stream" },
    headers: token ? { Authorization: `Bearer ${token}` } : {},
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    onProgress(sent, total) {
      if (pending === null) requestAnimationFrame(show);
      pending = { sent, total };
    },
    onSuccess({ lastResponse }) {
      pending = null;
      view.item.dataset.state = "done";
      view.bar.firstChild.style.width = "100%";
      const sha256 = lastResponse?.getHeader("X-Upload-Sha256");
      const upstream = lastResponse?.getHeader("X-Upstream-Status");
      view.status.textContent = `done${upstream ? ` · upstream ${upstream}` : ""}${sha256 ? ` · sha256 ${sha256}` : ""}`;
      view.button.remove();
    },
    onError(error) {
      pending = null;
      view.item.dataset.state = "error";
      view.status.textContent = `failed: ${error.message.split("\n")[0]}`;
      view.button.textContent = "Retry";
      paused = true;
    },
  });

  view.button.addEventListener("click", () => {
    if (paused) {
      paused = false;
      view.item.dataset.state = "uploading";
      view.button.textContent = "Pause";
      upload.start(); // asks the relay for the offset, then goes on from there
    } else {
      paused = true;
      view.item.dataset.state = "paused";
      view.button.textContent = "Resume";
      pending = null;
      upload.abort(); // keeps the upload's URL: Resume continues it
      setText(view.status, `paused · ${view.status.textContent}`);
    }
  });

  view.item.dataset.state = "uploading";
  // A file uploaded part-way before (this page or an earlier one) resumes instead of starting over.
  upload.findPreviousUploads().then((previous) => {
    if (previous.length) {
      upload.resumeFromPreviousUpload(previous[0]);
      setText(view.status, "resuming…");
    }
    upload.start();
  });
}
