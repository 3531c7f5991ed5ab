// The waterfall of a run: one row per step path (in the order they started), one bar per
// attempt, its waits (a signal, an agent's budget) drawn inside it, the backoff before a retry
// between attempts, cache hits marked. Rows are virtual: only those in view are in the DOM, so
// a run of thousands of steps costs what a screenful costs.

import { fmtDuration, h, replace } from "./dom.js";

const ROW = 22;
const OVERSCAN = 6;

export class Timeline {
  constructor(model, options = {}) {
    this.model = model;
    this.options = options;
    this.topOnly = false;
    this.axis = h("div", { class: "tl-axis" });
    this.rows = h("div", { class: "tl-rows" });
    this.spacer = h("div", { class: "tl-spacer" }, this.rows);
    this.viewport = h("div", { class: "tl-viewport", onscroll: () => this.render() }, this.spacer);
    this.summary = h("span", { class: "muted" });
    this.el = h(
      "div",
      { class: "timeline" },
      h(
        "div",
        { class: "tl-head" },
        h(
          "label",
          { class: "check" },
          h("input", {
            type: "checkbox",
            onchange: (ev) => {
              this.topOnly = ev.target.checked;
              this.render();
            },
          }),
          " top-level steps only",
        ),
        h("span", { class: "legend" },
          legend("running", "bar-running"), legend("waiting", "bar-wait"),
          legend("succeeded", "bar-succeeded"), legend("failed attempt", "bar-failed"),
          legend("retry backoff", "bar-backoff"), legend("cache hit", "bar-cached")),
        this.summary,
      ),
      this.axis,
      this.viewport,
    );
    this.selected = null;
  }

  paths() {
    const all = this.model.order;
    return this.topOnly ? all.filter((p) => !p.includes(".") && !p.includes("[")) : all;
  }

  span() {
    const m = this.model;
    const start = m.firstTs ?? m.run.created_at ?? Date.now() / 1000;
    const live = !["succeeded", "failed", "cancelled"].includes(m.run.status);
    const end = Math.max(m.lastTs ?? start, live ? Date.now() / 1000 : 0, start + 0.001);
    return { start, end, live };
  }

  render() {
    if (!this.el.isConnected) return;
    const paths = this.paths();
    this.spacer.style.height = `${paths.length * ROW}px`;
    this.viewport.style.height = `${Math.min(360, Math.max(3, paths.length) * ROW + 4)}px`;
    const { start, end } = this.span();
    const total = end - start;
    const pct = (t) => `${(((t - start) / total) * 100).toFixed(3)}%`;
    const width = (a, b) => `${Math.max(((b - a) / total) * 100, 0.15).toFixed(3)}%`;
    replace(
      this.axis,
      [0, 0.25, 0.5, 0.75, 1].map((f) =>
        h("span", { class: "tick", dataset: { f: String(f) }, text: `+${fmtDuration(total * f)}` }),
      ),
    );
    this.summary.textContent = `${paths.length} steps · ${fmtDuration(total)}`;
    const top = this.viewport.scrollTop;
    const height = this.viewport.clientHeight || 360;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(paths.length, Math.ceil((top + height) / ROW) + OVERSCAN);
    this.rows.style.top = `${first * ROW}px`;
    const rows = [];
    for (let i = first; i < last; i++) {
      const path = paths[i];
      const s = this.model.steps.get(path);
      const track = h("div", { class: "tl-track" });
      const now = Date.now() / 1000;
      s.attempts.forEach((a, n) => {
        const stop = a.end ?? (a.outcome === "running" ? Math.max(this.model.lastTs ?? now, now) : a.start);
        const bar = h("div", {
          class: `bar bar-${a.outcome}${a.cached ? " bar-cached" : ""}`,
          title: `attempt ${a.n}: ${a.outcome}, ${fmtDuration(stop - a.start)}${a.cached ? ", cache hit" : ""}${a.waits.length ? `, waited ${fmtDuration(a.waits.reduce((t, w) => t + ((w[1] ?? stop) - w[0]), 0))}` : ""}${a.error ? ` — ${a.error.message || ""}` : ""}`,
        });
        bar.style.left = pct(a.start);
        bar.style.width = width(a.start, stop);
        track.append(bar);
        for (const [w0, w1] of a.waits) {
          const wait = h("div", { class: "bar bar-wait", title: `waiting ${fmtDuration((w1 ?? stop) - w0)}` });
          wait.style.left = pct(w0);
          wait.style.width = width(w0, w1 ?? stop);
          track.append(wait);
        }
        const next = s.attempts[n + 1];
        if (a.end !== null && next) {
          const gap = h("div", { class: "bar bar-backoff", title: `backoff before attempt ${next.n}: ${fmtDuration(next.start - a.end)}` });
          gap.style.left = pct(a.end);
          gap.style.width = width(a.end, next.start);
          track.append(gap);
        }
      });
      if (!s.attempts.length && s.firstTs) {
        const mark = h("div", { class: `bar bar-${s.status}`, title: `${s.status}` });
        mark.style.left = pct(s.firstTs);
        mark.style.width = width(s.firstTs, s.firstTs);
        track.append(mark);
      }
      const row = h(
        "div",
        {
          class: `tl-row${path === this.selected ? " selected" : ""}`,
          dataset: { path },
          onclick: () => this.options.onSelect?.(path),
        },
        h("span", { class: "tl-label", title: path, text: path }),
        track,
      );
      rows.push(row);
    }
    replace(this.rows, rows);
  }

  select(path) {
    this.selected = path;
  }
}

function legend(text, cls) {
  return h("span", { class: "legend-item" }, h("span", { class: `swatch bar ${cls}` }), text);
}
