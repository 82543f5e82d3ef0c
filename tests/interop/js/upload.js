// Upload one file through the relay with tus-js-client (Node.js), as the interop tests drive it.
// usage: node upload.js ENDPOINT FILE PROTOCOL CHUNK_SIZE [PAUSE_AT GO_FILE]
// (TUS_DATA_DURING_CREATION=1: the first chunk goes with the creation request; TUS_DEFER_LENGTH=1: the
// length is told with the last chunk; TUS_PARALLEL=N: parallelUploads N, tus concatenation)
// Prints one JSON line per event: {"event": "chunk", "offset": N} ..., then {"event": "success", "url": ...}
// or {"event": "error", "message": ...} (exit 1). With PAUSE_AT, the PATCH that starts at or after that offset
// waits until GO_FILE exists (the test restarts the relay meanwhile); retryDelays carry it over the restart.
"use strict";
const fs = require("fs");
const path = require("path");
const tus = require("tus-js-client");

const [endpoint, file, protocol, chunkSize, pauseAt, goFile] = process.argv.slice(2);
const data = fs.readFileSync(file);
let paused = false;

function say(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

function waitFor(name) {
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      if (fs.existsSync(name)) {
        clearInterval(timer);
        resolve();
      }
    }, 20);
  });
}

const upload = new tus.Upload(data, {
  endpoint,
  protocol,
  chunkSize: Number(chunkSize),
  retryDelays: [0, 300, 600, 1000, 1500, 2000, 3000, 3000, 3000],
  metadata: { filename: path.basename(file), filetype: "application/x-interop", via: protocol },
  storeFingerprintForResuming: false,
  uploadDataDuringCreation: process.env.TUS_DATA_DURING_CREATION === "1",
  uploadLengthDeferred: process.env.TUS_DEFER_LENGTH === "1",
  parallelUploads: Number(process.env.TUS_PARALLEL || "1"),
  onBeforeRequest(req) {
    const offset = Number(req.getHeader("Upload-Offset"));
    if (pauseAt !== undefined && !paused && req.getMethod() === "PATCH" && offset >= Number(pauseAt)) {
      paused = true;
      say({ event: "paused", offset, url: upload.url });
      return waitFor(goFile);
    }
    return undefined;
  },
  onChunkComplete(chunk, accepted) {
    say({ event: "chunk", offset: accepted });
  },
  onError(error) {
    say({ event: "error", message: String(error) });
    process.exit(1);
  },
  onSuccess() {
    say({ event: "success", url: upload.url });
  },
});
upload.start();
