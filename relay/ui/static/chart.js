"use strict";
// The throughput chart: bytes received per second over the last 5 minutes, drawn on a canvas.
// Fed with byte deltas stamped with the relay's clock (event `ts`), so the browser's clock does not matter.

const SECONDS = 300;

export class ThroughputChart {
  constructor(canvas, label) {
    this.canvas = canvas;
    this.label = label; // text node showing the current rate
    this.buckets = new Map(); // whole second (relay clock) -> bytes received in it
    this.skew = 0; // relay clock minus browser clock, from the latest event
  }

  /** `bytes` more were received at relay time `ts`. */
  add(ts, bytes) {
    this.skew = ts - Date.now() / 1000;
    const second = Math.floor(ts);
    this.buckets.set(second, (this.buckets.get(second) || 0) + bytes);
  }

  /** Redraw (called once a second); forgets buckets older than the window. */
  draw(formatRate) {
    const now = Math.floor(Date.now() / 1000 + this.skew);
    const first = now - SECONDS + 1;
    for (const second of this.buckets.keys()) if (second < first) this.buckets.delete(second);
    const values = [];
    for (let second = first; second <= now; second += 1) values.push(this.buckets.get(second) || 0);
    // "now": the mean of the last 3 full seconds (the current second is still filling).
    const recent = values.slice(-4, -1);
    this.label.textContent = `· now ${formatRate(recent.reduce((a, b) => a + b, 0) / recent.length)}`;

    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    // Colours come from CSS custom properties, so dark mode needs nothing here.
    const style = getComputedStyle(canvas);
    const ink = style.getPropertyValue("--chart-line").trim() || "#2563eb";
    const grid = style.getPropertyValue("--chart-grid").trim() || "#8884";
    const fill = style.getPropertyValue("--chart-fill").trim() || "#2563eb33";
    const text = style.getPropertyValue("--muted").trim() || "#666";
    const top = Math.max(1e6, ...values) * 1.1;
    const pad = { left: 4, right: 4, top: 16, bottom: 16 };
    const x = (i) => pad.left + (i / (SECONDS - 1)) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);

    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(pad.left, y(0));
    ctx.lineTo(width - pad.right, y(0));
    ctx.stroke();

    ctx.fillStyle = text;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "top";
    ctx.fillText(`max ${formatRate(top / 1.1)}`, pad.left, 2);
    ctx.textBaseline = "bottom";
    ctx.fillText("−5 min", pad.left, height);
    ctx.textAlign = "right";
    ctx.fillText("now", width - pad.right, height);
    ctx.textAlign = "left";

    ctx.strokeStyle = ink;
    ctx.fillStyle = fill;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    values.forEach((v, i) => (i === 0 ? ctx.moveTo(x(i), y(v)) : ctx.lineTo(x(i), y(v))));
    ctx.stroke();
    ctx.lineTo(x(values.length - 1), y(0));
    ctx.lineTo(x(0), y(0));
    ctx.fill();
  }
}
