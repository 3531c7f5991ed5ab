// The step inspector: what one step received (its rendered configuration from the
// `step.started` event), what it gave (output, error), each attempt, the agent conversation
// with its tool calls and token usage, its events; and at a pause, the debugger's view of it.

import { errorText, fmtClock, fmtDuration, h, jsonBlock, jsonLine, jsonText, notify, replace } from "./dom.js";

function hasTruncated(value) {
  if (!value || typeof value !== "object") return false;
  if (value.$truncated === true) return true;
  return Object.values(value).some(hasTruncated);
}

export class Inspector {
  /** @param run the RunView: rpc, model, runId, debug flags, and actions */
  constructor(run) {
    this.run = run;
    this.path = null;
    this.body = h("div", { class: "insp-body" });
    this.tools = h("div", { class: "insp-tools" });
    this.el = h("div", { class: "inspector", "aria-label": "step inspector" },
      h("p", { class: "muted", text: "Click a step in the graph or the timeline to inspect it." }));
    this.fullConfig = new Map(); // "path#attempt" -> the whole configuration (runs/stepConfig)
    this.inspected = null; // debug/inspect's step view of the selected held step
    this.evalResult = null;
    this.editing = false;
  }

  select(path) {
    if (path === this.path) return;
    this.path = path;
    this.inspected = null;
    this.editing = false;
    this.evalResult = null;
    replace(this.el, this.body, this.tools);
    this.renderTools();
    this.render();
    if (this.run.isHeld(path)) this.inspect();
  }

  /** The step changed, or the run's state did. */
  render() {
    if (!this.path) return;
    const run = this.run;
    const model = run.model;
    const path = this.path;
    const s = model.steps.get(path);
    const def = run.definitionOf(path);
    const status = s ? s.status : "pending";
    const top = !path.includes(".") && !path.includes("[");
    const paused = model.run.status === "paused";
    const hit = model.breakpointHit && model.breakpointHit.step === path ? model.breakpointHit : null;

    const actions = h("div", { class: "actions" });
    if (run.debug) {
      for (const at of ["before", "after", "failure"]) {
        const existing = run.breakpointsAt(path).filter((b) => b.at === at);
        actions.append(
          h("button", {
            type: "button",
            class: existing.length ? "on" : "",
            "aria-pressed": String(existing.length > 0),
            dataset: { action: `break-${at}` },
            title: existing.length ? `clear the breakpoint (${at})` : `stop the run ${at === "failure" ? "when this step fails for good" : `${at} this step`}`,
            text: existing.length ? `✕ ${at}` : `break ${at}`,
            onclick: () => run.toggleBreakpoint(path, at),
          }),
        );
      }
      if (top) {
        actions.append(h("button", {
          type: "button", dataset: { action: "rerun" },
          title: "a new run: the steps before this one keep their outputs, this one and what follows run again",
          text: "re-run from here", onclick: () => run.rerun(path),
        }));
      }
      if (paused && run.isHeld(path)) {
        actions.append(h("button", {
          type: "button", class: "primary", dataset: { action: "step-this" },
          text: "step this", title: "run exactly this step, then pause again",
          onclick: () => run.step(path),
        }));
      }
      if (paused && s && (["succeeded", "failed"].includes(status) || run.isHeld(path))) {
        actions.append(h("button", {
          type: "button", dataset: { action: "edit-output" }, text: "edit output",
          onclick: () => {
            this.editing = true;
            this.renderTools();
          },
        }));
      }
    }

    const facts = h("dl", { class: "facts" });
    const fact = (k, v) => v !== null && v !== undefined && v !== "" && facts.append(h("dt", { text: k }), h("dd", {}, v));
    fact("status", h("span", { class: `badge st-${status}`, text: status }));
    fact("type", def ? def.type : null);
    if (s) {
      fact("attempts", String(s.attempts.length));
      const a0 = s.attempts[0];
      const last = s.lastAttempt;
      if (a0) fact("duration", fmtDuration(((last && last.end) || model.lastTs || a0.start) - a0.start));
      if (s.cached) fact("cache", "hit: the tool's result came from the cache");
      if (s.reused) fact("reused", "the output of the run this one re-ran");
      if (s.reason) fact("reason", s.reason);
      if (s.childRun) fact("child run", h("a", { href: `#/runs/${encodeURIComponent(s.childRun)}`, text: s.childRun }));
      if (s.edited) fact("edited", `output replaced at ${fmtClock(s.edited.ts)} (was ${jsonLine(s.edited.previous, 80)})`);
    }
    if (hit) fact("breakpoint", `stopped ${hit.at} this step`);
    if (def && def.def.description) fact("description", def.def.description);

    const sections = [];
    const config = s && s.config;
    if (config !== null && config !== undefined) {
      const key = `${path}#${s.configAttempt}`;
      const full = this.fullConfig.get(key);
      sections.push(section(`Configuration (attempt ${s.configAttempt}, as rendered)`,
        jsonBlock(full ?? config),
        hasTruncated(config) && !full
          ? h("button", {
              type: "button", class: "link", text: "load the whole configuration",
              onclick: () => this.loadConfig(path, s.configAttempt),
            })
          : null));
    } else if (def) {
      sections.push(section("Definition", jsonBlock(def.def)));
    }
    if (this.inspected) {
      sections.push(section("At the pause: the configuration it would run with", jsonBlock(this.inspected.config)));
      sections.push(section("At the pause: its template context", jsonBlock(this.inspected.context)));
    }
    if (s && s.output !== undefined) sections.push(section("Output", jsonBlock(s.output, "json output")));
    if (s && s.error) sections.push(section("Error", h("pre", { class: "json error", text: `${s.error.type || "error"}: ${s.error.message || jsonText(s.error)}` })));
    if (s && s.attempts.length) sections.push(section("Attempts", attemptsTable(s)));
    if (s && (s.conversation.length || s.toolCalls.length || s.turns.length || s.streaming)) {
      sections.push(section("Agent", agentView(s)));
    }
    if (s && s.eventSeqs.length) {
      const events = s.eventSeqs.slice(-30).map((seq) => model.eventAt(seq)).filter(Boolean);
      sections.push(section(`Events (${s.eventSeqs.length}${s.eventSeqs.length > 30 ? ", the last 30" : ""})`,
        h("ul", { class: "mini-log" }, events.map((e) => h("li", {},
          h("span", { class: "seq", text: `#${e.seq}` }), " ", h("span", { class: "etype", text: e.type }), " ",
          h("span", { class: "muted", text: jsonLine(e.data, 120) }))))));
    }

    replace(this.body,
      h("h2", { class: "insp-title" }, h("span", { class: "insp-path", text: path })),
      actions, facts, sections);
  }

  /** The parts that keep what the user typed: the output editor and the eval box. */
  renderTools() {
    const run = this.run;
    const path = this.path;
    const parts = [];
    if (this.editing) {
      const s = run.model.steps.get(path);
      const area = h("textarea", { class: "editor", rows: "8", spellcheck: "false", "aria-label": "new output (JSON)" });
      area.value = jsonText(s ? s.output ?? null : null);
      parts.push(section("Edit the output (JSON)", area,
        h("div", { class: "actions" },
          h("button", {
            type: "button", class: "primary", dataset: { action: "save-output" }, text: "save output",
            onclick: async () => {
              let value;
              try {
                value = JSON.parse(area.value);
              } catch (err) {
                notify(`not JSON: ${err.message}`, "error");
                return;
              }
              if (await run.setOutput(path, value)) {
                this.editing = false;
                this.renderTools();
              }
            },
          }),
          h("button", { type: "button", text: "cancel", onclick: () => { this.editing = false; this.renderTools(); } }))));
    }
    if (run.debug) {
      const input = h("input", { type: "text", class: "expr", placeholder: "steps.fetch.output.title | upper", "aria-label": "expression to evaluate" });
      const out = h("div", { class: "eval-out" });
      if (this.evalResult) out.append(this.evalResult);
      const go = async () => {
        try {
          const result = await run.rpc.call("debug/eval", { runId: run.runId, expression: input.value, ...(run.isHeld(path) ? { step: path } : {}) });
          this.evalResult = jsonBlock(result.value);
        } catch (err) {
          this.evalResult = h("pre", { class: "json error", text: errorText(err) });
        }
        replace(out, this.evalResult);
      };
      parts.push(section("Evaluate an expression (at a pause)",
        h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault(); go(); } },
          input, h("button", { type: "submit", text: "eval" })), out));
    }
    replace(this.tools, parts);
  }

  async inspect() {
    const run = this.run;
    const path = this.path;
    if (!run.debug) return;
    try {
      const result = await run.rpc.call("debug/inspect", { runId: run.runId, step: path });
      if (path !== this.path) return;
      this.inspected = result.step || null;
      this.render();
    } catch (err) {
      notify(`debug/inspect: ${errorText(err)}`, "error");
    }
  }

  async loadConfig(path, attempt) {
    try {
      const result = await this.run.rpc.call("runs/stepConfig", { runId: this.run.runId, step: path, attempt });
      this.fullConfig.set(`${path}#${attempt}`, result.config);
      this.render();
    } catch (err) {
      notify(`runs/stepConfig: ${errorText(err)}`, "error");
    }
  }
}

function section(title, ...children) {
  return h("section", { class: "insp-section" }, h("h3", { text: title }), children);
}

function attemptsTable(s) {
  return h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, ["#", "started", "took", "outcome", "waited", "note"].map((t) => h("th", { text: t })))),
    h("tbody", {}, s.attempts.map((a) => {
      const took = a.end !== null ? fmtDuration(a.end - a.start) : "…";
      const waited = a.waits.reduce((t, w) => t + ((w[1] ?? a.end ?? w[0]) - w[0]), 0);
      const notes = [];
      if (a.cached) notes.push("cache hit");
      if (a.error) notes.push(a.error.message || a.error.type || "");
      if (a.delay !== null && a.delay !== undefined) notes.push(`retry after ${fmtDuration(a.delay)}`);
      return h("tr", {},
        h("td", { text: String(a.n) }), h("td", { text: fmtClock(a.start) }), h("td", { text: took }),
        h("td", {}, h("span", { class: `badge st-${a.outcome}`, text: a.outcome })),
        h("td", { text: waited ? fmtDuration(waited) : "" }), h("td", { text: notes.join("; ") }));
    })));
}

function agentView(s) {
  const parts = [];
  const total = s.usage || s.turns.reduce((acc, t) => {
    for (const [k, v] of Object.entries(t.usage || {})) if (typeof v === "number") acc[k] = (acc[k] || 0) + v;
    return acc;
  }, {});
  const usage = Object.entries(total || {}).map(([k, v]) => `${k.replace(/_/g, " ")}: ${v}`).join(" · ");
  parts.push(h("p", { class: "usage" }, h("strong", { text: "tokens " }), usage || "not reported",
    s.turns.length ? ` · ${s.turns.length} turn${s.turns.length === 1 ? "" : "s"}` : ""));
  const results = new Map(s.toolCalls.map((c) => [c.id, c]));
  const messages = h("ol", { class: "conversation" });
  for (const m of s.conversation) {
    const item = h("li", { class: `msg role-${m.role || "unknown"}` },
      h("div", { class: "role", text: m.role === "tool" ? `tool ${m.name || ""}` : m.role || "?" }));
    if (m.content) item.append(h("div", { class: "content", text: typeof m.content === "string" ? m.content : jsonText(m.content) }));
    for (const call of m.tool_calls || []) {
      const done = results.get(call.id);
      item.append(h("div", { class: "tool-call" },
        h("span", { class: "tool-name", text: `→ ${call.name}` }), " ",
        h("code", { text: jsonLine(call.arguments, 200) }),
        done ? h("div", { class: done.error ? "tool-result error" : "tool-result" },
          done.error ? `error: ${done.error}` : `= ${jsonLine(done.result, 300)}`) : null));
    }
    messages.append(item);
  }
  if (s.conversation.length) parts.push(messages);
  else if (s.toolCalls.length) {
    parts.push(h("ul", { class: "conversation" }, s.toolCalls.map((c) => h("li", { class: "tool-call" },
      h("span", { class: "tool-name", text: `→ ${c.tool}` }), " ", h("code", { text: jsonLine(c.arguments, 200) }),
      h("div", { class: c.error ? "tool-result error" : "tool-result" }, c.error ? `error: ${c.error}` : `= ${jsonLine(c.result, 300)}`)))));
  }
  if (s.streaming) parts.push(h("div", { class: "msg streaming" }, h("div", { class: "role", text: "assistant (streaming)" }), h("div", { class: "content", text: s.streaming })));
  return parts;
}

