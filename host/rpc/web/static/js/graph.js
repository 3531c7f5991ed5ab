// The step graph of a workflow definition, coloured by the live state of a run.
//
// Steps are laid out in layers (a step sits one layer below the last of its dependencies);
// dependencies come from `needs`, `needs_any`, `then`/`else`, `on_error` fallbacks and the
// `steps.<id>` references in a step's templates, as the compiler finds them. Loop, parallel and
// sub-workflow steps open to show their bodies: a loop's iterations (`each[2].fetch`), a
// parallel step's branches (`fetch[primary].a`), a sub-workflow's child run.
//
// A render builds the DOM once; afterwards only the nodes of the steps that changed are touched
// (one pass per animation frame), so a run of thousands of steps stays cheap.

import { h, replace } from "./dom.js";
import { parsePath, unindexed } from "./model.js";

const TYPES = ["tool", "agent", "if", "transform", "validate", "loop", "delay", "parallel", "workflow", "wait"];
const COMMON = new Set([
  "id", "needs", "needs_any", "when", "retry", "timeout", "on_error", "cache", "description", "type",
]);
const REF = /steps\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)|steps\s*\[\s*['"]([A-Za-z_][A-Za-z0-9_]*)['"]\s*\]/g;
const EDGE_LIMIT = 150;
const SVG = "http://www.w3.org/2000/svg";

export function stepType(def) {
  if (typeof def.type === "string") return def.type;
  for (const t of TYPES) if (t in def) return t;
  for (const key of Object.keys(def)) if (!COMMON.has(key)) return key;
  return "step";
}

function references(value, out) {
  if (typeof value === "string") {
    for (const m of value.matchAll(REF)) out.add(m[1] || m[2]);
  } else if (Array.isArray(value)) {
    for (const v of value) references(v, out);
  } else if (value && typeof value === "object") {
    for (const v of Object.values(value)) references(v, out);
  }
}

/** A scope of a definition: its steps with dependencies, layers and nested bodies. */
export function buildScope(defs) {
  const steps = (Array.isArray(defs) ? defs : [])
    .filter((d) => d && typeof d === "object" && typeof d.id === "string")
    .map((def) => ({ id: def.id, def, type: stepType(def), deps: new Set(), labels: new Map(), bodies: [] }));
  const byId = new Map(steps.map((s) => [s.id, s]));
  for (const s of steps) {
    const found = new Set();
    for (const [key, value] of Object.entries(s.def)) {
      if (["id", "description", "then", "else", "on_error"].includes(key)) continue;
      if (key === "needs" || key === "needs_any") {
        for (const d of [value].flat()) found.add(d);
        if (key === "needs_any") for (const d of [value].flat()) s.labels.set(d, "any");
      } else references(value, found);
    }
    for (const d of found) if (byId.has(d) && d !== s.id) s.deps.add(d);
  }
  for (const s of steps) {
    for (const branch of ["then", "else"]) {
      for (const target of [s.def[branch] || []].flat()) {
        const t = byId.get(target);
        if (t && t !== s) {
          t.deps.add(s.id);
          t.labels.set(s.id, branch);
        }
      }
    }
    const fallback = byId.get(s.def.on_error);
    if (fallback && fallback !== s) {
      fallback.deps.add(s.id);
      fallback.labels.set(s.id, "on failure");
    }
    const par = s.def.parallel;
    const states = s.def.states;
    if (s.type === "machine" && states && typeof states === "object" && !Array.isArray(states)) {
      const scopes = new Map(Object.entries(states).map(([name, st]) => [name, buildScope(st && st.steps)]));
      s.bodies.push({ label: "states", kind: "machine", scopes });
    } else if (s.type === "parallel" && par && typeof par === "object" && !Array.isArray(par)) {
      for (const [label, body] of Object.entries(par)) {
        s.bodies.push({ label, kind: "branch", scope: buildScope(body) });
      }
    } else if (Array.isArray(s.def.steps)) {
      s.bodies.push({ label: "steps", kind: "loop", scope: buildScope(s.def.steps) });
    }
  }
  // layers by Kahn's algorithm (a cycle cannot pass validation; its steps go last anyway)
  const indegree = new Map(steps.map((s) => [s.id, s.deps.size]));
  const dependents = new Map(steps.map((s) => [s.id, []]));
  for (const s of steps) for (const d of s.deps) dependents.get(d).push(s);
  const layerOf = new Map();
  let ready = steps.filter((s) => s.deps.size === 0);
  let depth = 0;
  while (ready.length) {
    const next = [];
    for (const s of ready) {
      layerOf.set(s.id, depth);
      for (const t of dependents.get(s.id)) {
        indegree.set(t.id, indegree.get(t.id) - 1);
        if (indegree.get(t.id) === 0) next.push(t);
      }
    }
    ready = next;
    depth++;
  }
  const layers = [];
  for (const s of steps) {
    const l = layerOf.has(s.id) ? layerOf.get(s.id) : depth;
    (layers[l] = layers[l] || []).push(s);
  }
  return { steps, byId, layers: layers.filter(Boolean) };
}

/**
 * The top-level steps of a definition. A workflow written as states (`states:`) runs as one
 * step, `machine`, whose visits of a state are its instances: `machine[2:review].check`.
 */
export function rootSteps(definition) {
  if (Array.isArray(definition.steps)) return definition.steps;
  if (definition.states && typeof definition.states === "object") {
    return [{ id: "machine", type: "machine", states: definition.states }];
  }
  return [];
}

/** The body of one instance of a container: a loop's one body, or a visited state's steps. */
function scopeOf(body, key) {
  if (body.kind !== "machine") return body.scope;
  const state = String(key).split(":").slice(1).join(":");
  return body.scopes.get(state) || buildScope([]);
}

export class GraphView {
  /**
   * @param definition the workflow definition (workflows/get)
   * @param model a RunModel, or null to draw the definition alone
   * @param options {onSelect(path), onBreakpoint(path), onChild(stepPath, expanded, holder)}
   */
  constructor(definition, model, options = {}) {
    this.definition = definition || {};
    this.model = model;
    this.options = options;
    this.root = buildScope(rootSteps(this.definition));
    this.el = h("div", { class: "graph" });
    this.nodes = new Map(); // concrete path -> node element
    this.containers = new Map(); // container path -> {kind, strip, chips, bodyHolder, step, prefix}
    this.instances = new Map(); // container path -> ordered instance keys seen
    this.pinned = new Map(); // container path -> the instance the user picked
    this.expanded = new Set();
    this.selected = null;
    this.breakpoints = [];
    this.held = new Set();
    this.seenPaths = 0;
    this.edgesQueued = false;
    this.render();
    this.resizeObserver = new ResizeObserver(() => this.queueEdges());
    this.resizeObserver.observe(this.el);
  }

  get topIds() {
    return this.root.steps.map((s) => s.id);
  }

  destroy() {
    this.resizeObserver.disconnect();
  }

  /** Build the whole DOM (at start, and when a body opens or closes). */
  render() {
    this.nodes.clear();
    this.containers.clear();
    this.learnPaths();
    replace(this.el, this.renderScope(this.root, ""));
    this.refreshMarks();
    this.queueEdges();
  }

  renderScope(scope, prefix) {
    const block = h("div", { class: "scope" });
    if (!scope.steps.length) {
      block.append(h("p", { class: "muted", text: "no steps" }));
      return block;
    }
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "edges");
    svg.setAttribute("aria-hidden", "true");
    block.append(svg);
    block.scopeInfo = { scope, prefix, svg };
    for (const layer of scope.layers) {
      const row = h("div", { class: "layer" });
      for (const step of layer) row.append(this.renderCell(step, prefix));
      block.append(row);
    }
    return block;
  }

  renderCell(step, prefix) {
    const path = prefix + step.id;
    const container = step.bodies.length > 0 || step.type === "workflow";
    const node = h(
      "div",
      {
        class: "node st-pending",
        role: "button",
        tabindex: "0",
        dataset: { path, step: step.id },
        title: step.def.description ? `${path} (${step.type}): ${step.def.description}` : `${path} (${step.type})`,
        onclick: (ev) => {
          if (ev.target.closest("button")) return;
          this.options.onSelect?.(path);
        },
        onkeydown: (ev) => {
          if (ev.key === "Enter" && ev.target === node) this.options.onSelect?.(path);
        },
      },
      this.model && this.options.onBreakpoint
        ? h("button", {
            class: "bp",
            type: "button",
            title: "breakpoint: stop before this step (click again to clear)",
            "aria-label": `breakpoint before ${path}`,
            "aria-pressed": "false",
            onclick: () => this.options.onBreakpoint(path),
          })
        : null,
      h("span", { class: "nid", text: step.id }),
      h("span", { class: "ntype", text: step.type }),
      h("span", { class: "nbadge" }),
      container
        ? h("button", {
            class: "toggle",
            type: "button",
            title: this.expanded.has(path) ? "close the body" : "open the body",
            "aria-expanded": String(this.expanded.has(path)),
            text: this.expanded.has(path) ? "▾" : "▸",
            onclick: () => this.toggle(path),
          })
        : null,
    );
    this.nodes.set(path, node);
    this.updateNode(path);
    const cell = h("div", { class: "cell" }, node);
    if (container && this.expanded.has(path)) cell.append(this.renderBody(step, path));
    return cell;
  }

  renderBody(step, path) {
    const nested = h("div", { class: "nested" });
    if (step.type === "workflow") {
      const holder = h("div", { class: "child" }, h("p", { class: "muted", text: "child run: not started yet" }));
      nested.append(holder);
      this.containers.set(path, { kind: "workflow", step, holder });
      this.options.onChild?.(path, holder);
      return nested;
    }
    for (const body of step.bodies) {
      if (body.kind === "branch") {
        nested.append(
          h("div", { class: "branch" }, h("div", { class: "branch-label", text: body.label }),
            this.renderScope(body.scope, `${path}[${body.label}].`)),
        );
        this.containers.set(`${path}#${body.label}`, { kind: "branch", step, body });
      } else {
        const what = body.kind === "machine" ? "visits of states" : "iterations";
        const strip = h("div", { class: "strip", role: "listbox", "aria-label": `${what} of ${path}` });
        const holder = h("div", { class: "iteration" });
        const info = { kind: "loop", step, body, strip, holder, chips: new Map(), shown: null };
        this.containers.set(path, info);
        nested.append(h("div", { class: "strip-label", text: what }), strip, holder);
        for (const key of this.instances.get(path) || []) this.addChip(path, info, key);
        this.showInstance(path, info);
      }
    }
    return nested;
  }

  addChip(path, info, key) {
    const chip = h("button", {
      class: "chip st-pending",
      type: "button",
      title: `${path}[${key}]`,
      text: key,
      dataset: { key },
      onclick: () => {
        this.pinned.set(path, key);
        this.showInstance(path, info);
      },
    });
    info.chips.set(key, chip);
    info.strip.append(chip);
    this.updateChip(path, info, key);
  }

  updateChip(path, info, key) {
    const chip = info.chips.get(key);
    if (!chip || !this.model) return;
    const ids = scopeOf(info.body, key).steps.map((s) => s.id);
    setStatus(chip, this.model.instanceStatus(`${path}[${key}].`, ids));
  }

  /** Show one iteration's body: the one picked, else the latest to start. */
  showInstance(path, info) {
    const keys = this.instances.get(path) || [];
    const key = this.pinned.get(path) ?? keys[keys.length - 1] ?? null;
    if (key === info.shown && info.holder.firstChild) return;
    // forget the nodes of the iteration shown before
    if (info.shown !== null) {
      const old = `${path}[${info.shown}].`;
      for (const p of [...this.nodes.keys()]) if (p.startsWith(old)) this.nodes.delete(p);
    }
    info.shown = key;
    for (const [k, chip] of info.chips) chip.classList.toggle("shown", k === key);
    if (key === null) {
      const none = info.body.kind === "machine" ? "no state entered yet" : "no iteration started yet";
      replace(info.holder, h("p", { class: "muted", text: none }));
      return;
    }
    replace(info.holder, h("div", { class: "iteration-label", text: `${path}[${key}]` }),
      this.renderScope(scopeOf(info.body, key), `${path}[${key}].`));
    this.refreshMarks();
    this.queueEdges();
  }

  toggle(path) {
    if (this.expanded.has(path)) this.expanded.delete(path);
    else this.expanded.add(path);
    this.render();
  }

  /** Learn the body instances (iterations, branches) of the paths the run has shown. */
  learnPaths() {
    if (!this.model) return [];
    const fresh = [];
    const order = this.model.order;
    for (; this.seenPaths < order.length; this.seenPaths++) {
      const parts = parsePath(order[this.seenPaths]);
      let prefix = "";
      for (let i = 0; i < parts.length - 1; i++) {
        const container = prefix + parts[i].id;
        const key = parts[i].key;
        if (key !== null) {
          let keys = this.instances.get(container);
          if (!keys) this.instances.set(container, (keys = []));
          if (!keys.includes(key)) {
            keys.push(key);
            fresh.push([container, key]);
          }
        }
        prefix = `${container}${key !== null ? `[${key}]` : ""}.`;
      }
    }
    return fresh;
  }

  /** Apply one frame's changes: touched nodes, new iterations, chips. */
  update(changes) {
    if (!this.model) return;
    for (const [container, key] of this.learnPaths()) {
      const info = this.containers.get(container);
      if (info && info.kind === "loop") {
        this.addChip(container, info, key);
        if (!this.pinned.has(container)) this.showInstance(container, info);
      }
    }
    for (const path of changes.steps) {
      if (this.nodes.has(path)) this.updateNode(path);
      // the chip of every iteration this path is inside
      const parts = parsePath(path);
      let prefix = "";
      for (let i = 0; i < parts.length - 1; i++) {
        const container = prefix + parts[i].id;
        const info = this.containers.get(container);
        if (info && info.kind === "loop" && parts[i].key !== null) this.updateChip(container, info, parts[i].key);
        if (info && info.kind === "workflow") this.options.onChild?.(container, info.holder);
        prefix = `${container}${parts[i].key !== null ? `[${parts[i].key}]` : ""}.`;
      }
      const child = this.containers.get(path);
      if (child && child.kind === "workflow") this.options.onChild?.(path, child.holder);
    }
  }

  updateNode(path) {
    const node = this.nodes.get(path);
    if (!node) return;
    const s = this.model ? this.model.steps.get(path) : null;
    setStatus(node, s ? s.status : "pending");
    const badge = node.querySelector(".nbadge");
    const bits = [];
    if (s) {
      if (s.attempts.length > 1) bits.push(`×${s.attempts.length}`);
      if (s.cached) bits.push("cached");
      if (s.reused) bits.push("reused");
      if (s.edited) bits.push("edited");
    }
    const keys = this.instances.get(path);
    if (keys && keys.length) bits.push(`${keys.length} ${keys.length === 1 ? "instance" : "instances"}`);
    badge.textContent = bits.join(" · ");
  }

  select(path) {
    if (this.selected) this.nodes.get(this.selected)?.classList.remove("selected");
    this.selected = path;
    this.nodes.get(path)?.classList.add("selected");
  }

  setBreakpoints(list) {
    this.breakpoints = list || [];
    this.refreshMarks();
  }

  setHeld(paths) {
    this.held = new Set(paths || []);
    this.refreshMarks();
  }

  /** The breakpoints that stop at ``path`` (by id, whole path or path without indexes). */
  breakpointsAt(path) {
    const id = parsePath(path).pop().id;
    const bare = unindexed(path);
    return this.breakpoints.filter((b) => b.step === id || b.step === path || b.step === bare);
  }

  refreshMarks() {
    for (const [path, node] of this.nodes) {
      const bps = this.breakpointsAt(path);
      node.classList.toggle("has-bp", bps.length > 0);
      node.querySelector(".bp")?.setAttribute("aria-pressed", String(bps.length > 0));
      node.classList.toggle("held", this.held.has(path));
      node.classList.toggle("selected", path === this.selected);
      const hit = this.model?.breakpointHit;
      node.classList.toggle("hit", Boolean(hit && hit.step === path));
    }
  }

  // -- edges ------------------------------------------------------------------------------------

  queueEdges() {
    if (this.edgesQueued) return;
    this.edgesQueued = true;
    requestAnimationFrame(() => {
      this.edgesQueued = false;
      this.drawEdges();
    });
  }

  drawEdges() {
    for (const block of this.el.querySelectorAll(".scope")) {
      const info = block.scopeInfo;
      if (!info) continue;
      const { scope, prefix, svg } = info;
      svg.replaceChildren();
      if (scope.steps.length > EDGE_LIMIT) continue;
      svg.setAttribute("width", String(block.scrollWidth));
      svg.setAttribute("height", String(block.scrollHeight));
      for (const step of scope.steps) {
        const to = this.nodes.get(prefix + step.id);
        if (!to || to.offsetParent !== block) continue;
        for (const dep of step.deps) {
          const from = this.nodes.get(prefix + dep);
          if (!from || from.offsetParent !== block) continue;
          // from below the step's whole cell: an open body hangs under its node
          const cell = from.parentElement;
          const x1 = from.offsetLeft + from.offsetWidth / 2;
          const y1 = cell.offsetParent === block ? cell.offsetTop + cell.offsetHeight : from.offsetTop + from.offsetHeight;
          const x2 = to.offsetLeft + to.offsetWidth / 2;
          const y2 = to.offsetTop;
          const dy = Math.max(12, (y2 - y1) / 2);
          const edge = document.createElementNS(SVG, "path");
          edge.setAttribute("d", `M${x1},${y1} C${x1},${y1 + dy} ${x2},${y2 - dy} ${x2},${y2}`);
          const label = step.labels.get(dep);
          edge.setAttribute("class", label ? `edge edge-${label.replace(/\s+/g, "-")}` : "edge");
          svg.append(edge);
        }
      }
    }
  }
}

const STATUS_CLASSES = [
  "st-pending", "st-running", "st-waiting", "st-retrying", "st-succeeded", "st-failed",
  "st-skipped", "st-cancelled", "st-interrupted", "st-reused",
];

export function setStatus(el, status) {
  const cls = `st-${status}`;
  if (el.classList.contains(cls)) return;
  el.classList.remove(...STATUS_CLASSES);
  el.classList.add(cls);
  el.dataset.status = status;
}
