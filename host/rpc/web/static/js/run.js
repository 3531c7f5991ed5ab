// A run's page: header and controls, the step graph, the step inspector, and tabs for the
// timeline, the event log, breakpoints, a diff with another run, and the run's inputs/outputs.
//
// Loading: runs/get (the header), workflows/get (the graph), then the history a page at a time
// with runs/events, then runs/subscribe from the last event seen (a subscription replays its
// backlog at once, and a long run's whole history could overflow the connection). Live events
// only fold into the model; the DOM is updated once per animation frame with what changed.

import {
  debounce, errorText, fmtClock, fmtDuration, fmtTime, h, jsonBlock, jsonLine, notify, replace, requestRender,
} from "./dom.js";
import { GraphView, buildScope, rootSteps } from "./graph.js";
import { Inspector } from "./inspector.js";
import { RunModel, TERMINAL, parsePath } from "./model.js";
import { Questions } from "./questions.js";
import { METHOD_NOT_FOUND } from "./rpc.js";
import { Timeline } from "./timeline.js";

const LOG_ROWS = 1000;

export class RunView {
  constructor(rpc, runId) {
    this.rpc = rpc;
    this.runId = runId;
    this.destroyed = false;
    this.subscription = null;
    this.debug = false;
    this.breakpoints = [];
    this.held = new Set();
    this.model = null;
    this.graph = null;
    this.el = h("section", { class: "run" }, h("p", { class: "muted", text: `Loading run ${runId}…` }));
    this.refreshHeader = debounce(() => this.fetchHeader(), 250);
    this.refreshPause = debounce(() => this.fetchPause(), 100);
    this.children = new Map(); // sub-workflow step path -> last fetch time
    this.liveTimer = null;
    this.load();
  }

  destroy() {
    this.destroyed = true;
    this.refreshHeader.cancel();
    this.refreshPause.cancel();
    clearInterval(this.liveTimer);
    this.offOpen?.();
    this.graph?.destroy();
    if (this.subscription) this.rpc.unsubscribe(this.subscription);
  }

  // -- loading -----------------------------------------------------------------------------------

  async load() {
    let run;
    try {
      run = (await this.rpc.call("runs/get", { runId: this.runId, steps: false })).run;
    } catch (err) {
      replace(this.el, h("p", { class: "error", text: `Run ${this.runId}: ${errorText(err)}` }),
        h("p", {}, h("a", { href: "#/runs", text: "back to the runs" })));
      return;
    }
    this.runId = run.id;
    this.model = new RunModel(run);
    let definition = null;
    try {
      definition = (await this.rpc.call("workflows/get", { name: run.workflow, version: run.version })).workflow;
    } catch (err) {
      notify(`the definition of ${run.workflow} v${run.version}: ${errorText(err)}`, "error");
    }
    this.definition = definition || { steps: [] };
    this.scope = buildScope(rootSteps(this.definition));
    try {
      this.breakpoints = (await this.rpc.call("debug/breakpoints", { runId: this.runId })).breakpoints || [];
      this.debug = true;
    } catch (err) {
      this.debug = false; // a host without the debugger: the page shows no debug controls
      if (err.code !== METHOD_NOT_FOUND) notify(`debug/breakpoints: ${errorText(err)}`, "error");
    }
    if (this.destroyed) return;
    this.build();
    await this.sync();
    this.offOpen = this.rpc.onOpen(() => this.sync());
  }

  /** Catch up with runs/events pages, then follow with runs/subscribe. */
  async sync() {
    if (this.destroyed) return;
    try {
      for (;;) {
        const page = await this.rpc.call("runs/events", { runId: this.runId, since: this.model.lastSeq, limit: 5000 });
        if (!page.events.length) break;
        for (const e of page.events) this.model.apply(e);
        requestRender(this);
      }
      if (this.destroyed) return;
      if (TERMINAL.has(this.model.run.status)) {
        requestRender(this);
        return; // nothing more will come
      }
      this.subscription = await this.rpc.subscribe({ runId: this.runId, since: this.model.lastSeq }, (e) => this.onEvent(e));
      if (this.destroyed) this.rpc.unsubscribe(this.subscription);
    } catch (err) {
      if (this.rpc.state === "open") notify(`following the run: ${errorText(err)}`, "error");
    }
    if (this.model.run.status === "paused") this.refreshPause();
  }

  onEvent(e) {
    if (!this.model.apply(e)) return;
    if (e.type.startsWith("input.")) this.refreshHeader(); // the run's questions changed
    if (e.type.startsWith("run.")) {
      this.refreshHeader();
      if (e.type === "run.paused" || e.type === "run.breakpoint") this.refreshPause();
      if (e.type === "run.resumed" || e.type === "run.waiting" || TERMINAL.has(this.model.run.status)) {
        this.setHeld([]);
      }
    }
    requestRender(this);
  }

  async fetchHeader() {
    if (this.destroyed) return;
    try {
      const run = (await this.rpc.call("runs/get", { runId: this.runId, steps: false })).run;
      // the status is the events' (they come in order; a reply may be older than the last)
      const status = this.model.run.status;
      Object.assign(this.model.run, run);
      this.model.run.status = status;
      this.model.run.questions = run.questions || []; // absent when none are left
      this.model.runDirty = true;
      requestRender(this);
    } catch (err) {
      /* the next event asks again */
    }
  }

  async fetchPause() {
    if (!this.debug || this.destroyed || this.model.run.status !== "paused") return;
    try {
      const info = await this.rpc.call("debug/inspect", { runId: this.runId });
      this.pauseInfo = info;
      // held steps: paths, or {step, at, error} (a failure held before its on_error acts)
      this.heldAt = new Map((info.held || []).map((x) => (typeof x === "string" ? [x, null] : [x.step, x])));
      this.setHeld([...this.heldAt.keys()]);
      const hit = this.model.breakpointHit;
      if (hit && hit.step && this.inspector.path !== hit.step) this.select(hit.step);
      else if (this.inspector.path && this.isHeld(this.inspector.path)) this.inspector.inspect();
      this.model.runDirty = true;
      requestRender(this);
    } catch (err) {
      console.debug("debug/inspect", err); // not paused any more
    }
  }

  setHeld(paths) {
    this.held = new Set(paths);
    this.graph?.setHeld(paths);
    if (!paths.length) this.pauseInfo = null;
    this.model.runDirty = true;
    requestRender(this);
  }

  isHeld(path) {
    return this.held.has(path);
  }

  /** The definition of the step at ``path`` ({id, type, def}), through the bodies. */
  definitionOf(path) {
    let scope = this.scope;
    let step = null;
    const parts = parsePath(path);
    for (let i = 0; i < parts.length; i++) {
      step = scope && scope.byId.get(parts[i].id);
      if (!step) return null;
      if (i < parts.length - 1) {
        const body = step.bodies.find((b) => (b.kind === "branch" ? b.label === parts[i].key : true));
        scope = body ? body.scope : null;
      }
    }
    return step;
  }

  // -- the page ----------------------------------------------------------------------------------

  build() {
    const m = this.model;
    this.titleEl = h("h1", { class: "run-title" });
    this.statusEl = h("span", { class: "badge big st-pending", dataset: { role: "run-status" } });
    this.metaEl = h("div", { class: "meta" });
    this.bannerEl = h("div", { class: "banner" });
    this.questions = new Questions(this.rpc, this.runId);
    this.controls = this.buildControls();
    this.graph = new GraphView(this.definition, m, {
      onSelect: (path) => this.select(path),
      onBreakpoint: this.debug ? (path) => this.toggleBreakpoint(path, "before") : null,
      onChild: (path, holder) => this.showChild(path, holder),
    });
    this.graph.setBreakpoints(this.breakpoints);
    this.inspector = new Inspector(this);
    this.timeline = new Timeline(m, { onSelect: (path) => this.select(path) });
    this.logBody = h("tbody", {});
    this.logCount = h("span", { class: "muted" });
    this.logFilter = { selectedOnly: false, text: "" };
    this.log = h("div", { class: "log" },
      h("div", { class: "log-head" },
        h("label", { class: "check" }, h("input", { type: "checkbox", onchange: (ev) => { this.logFilter.selectedOnly = ev.target.checked; this.rebuildLog(); } }), " selected step only"),
        h("input", { type: "search", placeholder: "filter by type or step", "aria-label": "filter events", oninput: (ev) => { this.logFilter.text = ev.target.value.trim(); this.rebuildLog(); } }),
        this.logCount),
      h("div", { class: "log-scroll" }, h("table", { class: "grid events" },
        h("thead", {}, h("tr", {}, ["seq", "time", "type", "step", "data"].map((t) => h("th", { text: t })))),
        this.logBody)));
    this.bpList = h("div", { class: "bp-list" });
    this.diffBox = h("div", { class: "diff" }, h("p", { class: "muted", text: "Compare this run with another: give its id above (Diff)." }));
    this.ioBox = h("div", { class: "io" });
    this.tabs = {
      timeline: { label: "Timeline", el: this.timeline.el },
      events: { label: "Events", el: this.log },
      breakpoints: { label: "Breakpoints", el: this.bpList, hidden: !this.debug },
      diff: { label: "Diff", el: this.diffBox, hidden: !this.debug },
      io: { label: "Inputs & outputs", el: this.ioBox },
    };
    this.tabBar = h("div", { class: "tabs", role: "tablist" });
    this.tabBody = h("div", { class: "tab-body" });
    for (const [key, tab] of Object.entries(this.tabs)) {
      if (tab.hidden) continue;
      tab.button = h("button", { type: "button", role: "tab", dataset: { tab: key }, text: tab.label, onclick: () => this.showTab(key) });
      this.tabBar.append(tab.button);
    }
    replace(this.el,
      h("div", { class: "run-head" }, this.titleEl, this.statusEl, this.metaEl),
      this.bannerEl,
      this.questions.el,
      this.controls,
      h("div", { class: "run-main" },
        h("div", { class: "panel graph-panel" }, h("h2", { text: "Steps" }), this.graph.el),
        h("div", { class: "panel inspector-panel" }, this.inspector.el)),
      this.tabBar,
      this.tabBody);
    this.showTab("timeline");
    this.renderBreakpoints();
    this.liveTimer = setInterval(() => {
      if (!TERMINAL.has(this.model.run.status) && this.tab === "timeline") requestRender(this);
    }, 500);
  }

  buildControls() {
    const act = (label, action, fn, title) => h("button", { type: "button", dataset: { action }, text: label, title, onclick: fn });
    this.buttons = {
      pause: act("Pause", "pause", () => this.control("runs/pause"), "start no new step; running ones finish"),
      resume: act("Resume", "resume", () => this.control("runs/resume"), "continue the paused run"),
      cancel: act("Cancel", "cancel", () => this.control("runs/cancel"), "cancel the run"),
      step: act("Step", "step", () => this.step(), "let one held step run, then pause again"),
      continue: act("Continue", "continue", () => this.control("debug/continue"), "continue to the next breakpoint"),
    };
    const event = h("input", { type: "text", name: "event", placeholder: "event", "aria-label": "signal event", size: "12" });
    const data = h("input", { type: "text", name: "data", placeholder: "data (JSON)", "aria-label": "signal data (JSON)", size: "22" });
    this.signalForm = h("form", { class: "inline signal", onsubmit: (ev) => { ev.preventDefault(); this.signal(event.value.trim(), data.value.trim()); } },
      event, data, h("button", { type: "submit", dataset: { action: "signal" }, text: "Signal" }));
    const other = h("input", { type: "text", name: "other", placeholder: "another run id", "aria-label": "run to compare with", size: "14" });
    this.diffForm = h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault(); this.diff(other.value.trim()); } },
      other, h("button", { type: "submit", dataset: { action: "diff" }, text: "Diff" }));
    return h("div", { class: "controls" },
      h("div", { class: "group" }, this.buttons.pause, this.buttons.resume, this.buttons.cancel),
      this.debug ? h("div", { class: "group" }, this.buttons.step, this.buttons.continue) : null,
      h("div", { class: "group" }, this.signalForm),
      this.debug ? h("div", { class: "group" }, this.diffForm) : null);
  }

  showTab(key) {
    this.tab = key;
    for (const [k, tab] of Object.entries(this.tabs)) {
      if (tab.button) tab.button.setAttribute("aria-selected", String(k === key));
    }
    replace(this.tabBody, this.tabs[key].el);
    if (key === "events") this.rebuildLog();
    if (key === "io") this.renderIo();
    if (key === "breakpoints") this.refreshBreakpoints();
    requestRender(this);
  }

  select(path) {
    this.selected = path;
    this.graph.select(path);
    this.timeline.select(path);
    this.inspector.select(path);
    if (this.tab === "events" && this.logFilter.selectedOnly) this.rebuildLog();
    requestRender(this);
  }

  /** One frame: apply what changed since the last one. */
  render() {
    const m = this.model;
    if (!m || !this.graph) return;
    const changes = m.takeChanges();
    this.graph.update(changes);
    if (changes.run) this.renderHeader();
    // the inspector again when its step changed, or the run's state (not its progress) did
    const state = `${m.run.status}|${m.run.reason || ""}|${this.held.size}`;
    const stateChanged = state !== this.inspectedState;
    this.inspectedState = state;
    if (this.inspector.path && (changes.steps.has(this.inspector.path) || stateChanged) && !this.inspector.editing) {
      this.inspector.render();
    }
    if (this.tab === "timeline") this.timeline.render();
    if (this.tab === "events") this.appendLog(changes.events);
    if (this.tab === "io" && changes.run) this.renderIo();
  }

  renderHeader() {
    const m = this.model;
    const run = m.run;
    replace(this.titleEl, h("span", { class: "muted", text: "run " }), h("span", { class: "run-id", text: run.id }));
    this.statusEl.className = `badge big st-${run.status}`;
    this.statusEl.textContent = run.status;
    const p = m.progress(this.graph.topIds);
    const end = run.finished_at || (TERMINAL.has(run.status) ? m.lastTs : Date.now() / 1000);
    replace(this.metaEl,
      h("a", { href: `#/workflows/${encodeURIComponent(run.workflow)}`, text: `${run.workflow} v${run.version}` }),
      h("span", { text: `created ${fmtTime(run.created_at)}` }),
      run.started_at ? h("span", { text: `took ${fmtDuration(end - run.started_at)}` }) : null,
      h("span", { class: "progress", dataset: { role: "progress" }, text: `${p.done}/${p.total} steps` }),
      run.parent_id ? h("a", { href: `#/runs/${encodeURIComponent(run.parent_id)}`, text: "parent run" }) : null,
      run.origin ? h("span", {}, "re-run of ", h("a", { href: `#/runs/${encodeURIComponent(run.origin.runId)}`, text: run.origin.runId.slice(0, 8) }), ` from ${run.origin.step}`) : null);
    const live = !TERMINAL.has(run.status);
    const banner = [];
    if (run.status === "paused") {
      const hit = m.breakpointHit;
      banner.push(h("strong", { text: "Paused" }),
        hit ? ` at a breakpoint ${hit.at} ${hit.step}` : run.reason ? ` (${run.reason})` : "",
        this.held.size ? h("span", {}, " · held: ", [...this.held].map((p2, i) => [i ? ", " : "", h("a", { href: "#", class: "held-link", text: p2, onclick: (ev) => { ev.preventDefault(); this.select(p2); } })])) : null);
    } else if (run.status === "waiting") {
      const asking = (run.questions || []).map((q) => q.step);
      banner.push(h("strong", { text: "Waiting" }), run.reason ? ` (${run.reason})`
        : asking.length ? ` for input: ${asking.join(", ")}` : " for an outside event (a signal, an agent's budget)");
    }
    if (run.status === "failed" && run.error) {
      banner.push(h("strong", { text: "Failed: " }), `${run.error.type ? `${run.error.type}: ` : ""}${run.error.message || jsonLine(run.error)}`);
    }
    replace(this.bannerEl, banner);
    this.questions.update(live ? run.questions : []);
    this.bannerEl.className = `banner${banner.length ? ` show st-${run.status}` : ""}`;
    this.buttons.pause.disabled = !["running", "waiting", "pending"].includes(run.status);
    this.buttons.resume.disabled = run.status !== "paused";
    this.buttons.cancel.disabled = !live;
    this.buttons.step.disabled = run.status !== "paused" || this.held.size === 0;
    this.buttons.continue.disabled = run.status !== "paused";
    for (const el of this.signalForm.elements) el.disabled = !live;
  }

  // -- the event log -----------------------------------------------------------------------------

  logMatches(e) {
    const f = this.logFilter;
    if (f.selectedOnly && e.step !== this.selected) return false;
    if (f.text && !e.type.includes(f.text) && !(e.step || "").includes(f.text)) return false;
    return true;
  }

  logRow(e) {
    return h("tr", { dataset: { seq: String(e.seq) }, class: e.type.replace(/\./g, "-") },
      h("td", { class: "num", text: String(e.seq) }),
      h("td", { text: fmtClock(e.ts) }),
      h("td", { text: e.type }),
      h("td", {}, e.step ? h("a", { href: "#", text: e.step, onclick: (ev) => { ev.preventDefault(); this.select(e.step); } }) : ""),
      h("td", { class: "data", text: jsonLine(e.data, 240) }));
  }

  rebuildLog() {
    const matching = this.model.events.filter((e) => this.logMatches(e));
    replace(this.logBody, matching.slice(-LOG_ROWS).map((e) => this.logRow(e)));
    this.logCount.textContent = `${matching.length} events${matching.length > LOG_ROWS ? ` (the last ${LOG_ROWS} shown)` : ""}`;
    this.logShown = matching.length;
  }

  appendLog(events) {
    const rows = events.filter((e) => this.logMatches(e));
    if (!rows.length) return;
    const scroller = this.logBody.closest(".log-scroll");
    const atEnd = scroller && scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 4;
    this.logBody.append(...rows.slice(-LOG_ROWS).map((e) => this.logRow(e)));
    while (this.logBody.childElementCount > LOG_ROWS) this.logBody.firstElementChild.remove();
    this.logShown = (this.logShown || 0) + rows.length;
    this.logCount.textContent = `${this.logShown} events${this.logShown > LOG_ROWS ? ` (the last ${LOG_ROWS} shown)` : ""}`;
    if (atEnd) scroller.scrollTop = scroller.scrollHeight;
  }

  renderIo() {
    const run = this.model.run;
    replace(this.ioBox,
      h("div", { class: "cols" },
        h("section", {}, h("h3", { text: "Inputs" }), jsonBlock(run.inputs ?? {})),
        h("section", {}, h("h3", { text: "Outputs" }), jsonBlock(run.outputs ?? null)),
        run.error ? h("section", {}, h("h3", { text: "Error" }), jsonBlock(run.error)) : null));
  }

  // -- sub-workflows -----------------------------------------------------------------------------

  async showChild(path, holder) {
    const s = this.model.steps.get(path);
    if (!s || !s.childRun) return;
    const last = this.children.get(path) || 0;
    if (Date.now() - last < 1000 && holder.dataset.loaded) return;
    this.children.set(path, Date.now());
    try {
      const child = (await this.rpc.call("runs/get", { runId: s.childRun })).run;
      holder.dataset.loaded = "1";
      replace(holder,
        h("p", {}, "child run ", h("a", { href: `#/runs/${encodeURIComponent(child.id)}`, text: child.id }), ` · ${child.workflow} v${child.version} · `,
          h("span", { class: `badge st-${child.status}`, text: child.status })),
        h("ul", { class: "child-steps" }, Object.entries(child.steps || {}).slice(0, 200).map(([p, st]) =>
          h("li", {}, h("span", { class: `dot st-${st.status}` }), ` ${p} `, h("span", { class: "muted", text: st.status })))));
    } catch (err) {
      replace(holder, h("p", { class: "error", text: `child run: ${errorText(err)}` }));
    }
  }

  // -- actions -----------------------------------------------------------------------------------

  async control(method) {
    try {
      const result = await this.rpc.call(method, { runId: this.runId });
      if (result && result.run) {
        const status = this.model.run.status; // the events say it, in order
        Object.assign(this.model.run, result.run);
        this.model.run.status = status;
        this.model.runDirty = true;
        requestRender(this);
      }
      notify(`${method}: done`);
    } catch (err) {
      notify(`${method}: ${errorText(err)}`, "error");
    }
  }

  async signal(event, dataText) {
    if (!event) {
      notify("a signal needs an event name", "error");
      return;
    }
    let data = null;
    if (dataText) {
      try {
        data = JSON.parse(dataText);
      } catch (err) {
        notify(`the signal's data is not JSON: ${err.message}`, "error");
        return;
      }
    }
    try {
      await this.rpc.call("runs/signal", { runId: this.runId, event, data });
      notify(`signal ${event} sent`);
    } catch (err) {
      notify(`runs/signal: ${errorText(err)}`, "error");
    }
  }

  async step(path = null) {
    try {
      const params = { runId: this.runId };
      if (path) params.step = path;
      const result = await this.rpc.call("debug/step", params);
      notify(`stepped ${result.step || ""}`);
    } catch (err) {
      notify(`debug/step: ${errorText(err)}`, "error");
    }
  }

  async setOutput(path, output) {
    try {
      await this.rpc.call("debug/setOutput", { runId: this.runId, step: path, output });
      notify(`output of ${path} replaced`);
      return true;
    } catch (err) {
      notify(`debug/setOutput: ${errorText(err)}`, "error");
      return false;
    }
  }

  async rerun(path) {
    try {
      const result = await this.rpc.call("runs/rerun", { runId: this.runId, step: path });
      location.hash = `#/runs/${encodeURIComponent(result.runId)}`;
    } catch (err) {
      notify(`runs/rerun: ${errorText(err)}`, "error");
    }
  }

  async diff(other) {
    if (!other) {
      notify("give the id of the run to compare with", "error");
      return;
    }
    this.showTab("diff");
    replace(this.diffBox, h("p", { class: "muted", text: "comparing…" }));
    try {
      const result = await this.rpc.call("runs/diff", { runId: this.runId, otherRunId: other });
      const rows = result.steps || [];
      replace(this.diffBox,
        h("p", {}, rows.length ? `${rows.length} difference${rows.length === 1 ? "" : "s"}` : "no difference",
          result.first ? [" · first: ", h("a", { href: "#", text: result.first, onclick: (ev) => { ev.preventDefault(); this.select(result.first); } })] : ""),
        rows.length ? h("table", { class: "grid diff-table" },
          h("thead", {}, h("tr", {}, ["step", "field", "this run", "the other"].map((t) => h("th", { text: t })))),
          h("tbody", {}, rows.map((r) => h("tr", { class: r.path === result.first ? "first" : "" },
            h("td", {}, h("a", { href: "#", text: r.path, onclick: (ev) => { ev.preventDefault(); this.select(r.path); } })),
            h("td", { text: r.field }), h("td", {}, jsonBlock(r.a, "json small")), h("td", {}, jsonBlock(r.b, "json small")))))) : null);
    } catch (err) {
      replace(this.diffBox, h("p", { class: "error", text: `runs/diff: ${errorText(err)}` }));
    }
  }

  // -- breakpoints -------------------------------------------------------------------------------

  breakpointsAt(path) {
    return this.graph ? this.graph.breakpointsAt(path) : [];
  }

  /** Set a breakpoint on ``path`` (at ``at``), or clear the run's breakpoints there. */
  async toggleBreakpoint(path, at) {
    const existing = this.breakpointsAt(path).filter((b) => b.at === at);
    try {
      if (existing.length) {
        for (const b of existing) {
          const scope = b.runId ? { runId: this.runId } : { workflow: b.workflow };
          await this.rpc.call("debug/clear", { ...scope, id: b.id });
        }
        notify(`breakpoint ${at} ${path} cleared`);
      } else {
        // a step in a body names every instance of it: `each.fetch`, not `each[3].fetch`
        const parts = parsePath(path);
        const step = parts.length > 1 ? parts.map((p) => p.id).join(".") : path;
        await this.rpc.call("debug/break", { runId: this.runId, at, step });
        notify(`breakpoint set: ${at} ${step}`);
      }
    } catch (err) {
      notify(`breakpoint: ${errorText(err)}`, "error");
    }
    await this.refreshBreakpoints();
  }

  async refreshBreakpoints() {
    if (!this.debug) return;
    try {
      this.breakpoints = (await this.rpc.call("debug/breakpoints", { runId: this.runId })).breakpoints || [];
    } catch (err) {
      return;
    }
    this.graph.setBreakpoints(this.breakpoints);
    this.renderBreakpoints();
    if (this.inspector.path) this.inspector.render();
  }

  renderBreakpoints() {
    if (!this.debug) return;
    replace(this.bpList,
      this.breakpoints.length
        ? h("table", { class: "grid" },
            h("thead", {}, h("tr", {}, ["id", "of", "at", "step", "condition", ""].map((t) => h("th", { text: t })))),
            h("tbody", {}, this.breakpoints.map((b) => h("tr", {},
              h("td", { text: String(b.id) }), h("td", { text: b.runId ? "this run" : `workflow ${b.workflow}` }),
              h("td", { text: b.at }), h("td", { text: b.step || "any step" }), h("td", { text: b.condition || "" }),
              h("td", {}, h("button", { type: "button", class: "link", text: "clear", onclick: async () => {
                try {
                  await this.rpc.call("debug/clear", { ...(b.runId ? { runId: this.runId } : { workflow: b.workflow }), id: b.id });
                } catch (err) {
                  notify(`debug/clear: ${errorText(err)}`, "error");
                }
                this.refreshBreakpoints();
              } }))))))
        : h("p", { class: "muted", text: "No breakpoints. Click the dot of a step in the graph to stop before it, or use the inspector's buttons." }));
  }
}

