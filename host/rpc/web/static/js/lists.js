// The list of runs (live: one subscription to every run's events) and the list of workflows
// with their versions and step graphs.

import { debounce, errorText, fmtDuration, fmtTime, h, jsonBlock, notify, replace, requestRender } from "./dom.js";
import { GraphView } from "./graph.js";
import { RUN_STATUS } from "./model.js";

const STATUSES = ["pending", "running", "waiting", "paused", "succeeded", "failed", "cancelled"];

export class RunsView {
  constructor(rpc, query) {
    this.rpc = rpc;
    this.filter = { workflow: query.get("workflow") || "", status: query.get("status") || "" };
    this.rows = new Map(); // run id -> {run, tr}
    this.changed = new Set();
    this.cursor = null;
    this.destroyed = false;
    this.refresh = debounce(() => this.load(), 300);
    this.workflowSelect = h("select", { name: "workflow", "aria-label": "workflow", onchange: (ev) => this.setFilter("workflow", ev.target.value) },
      h("option", { value: "", text: "every workflow" }));
    this.statusSelect = h("select", { name: "status", "aria-label": "status", onchange: (ev) => this.setFilter("status", ev.target.value) },
      h("option", { value: "", text: "any status" }), STATUSES.map((s) => h("option", { value: s, text: s })));
    this.statusSelect.value = this.filter.status;
    this.body = h("tbody", {});
    this.more = h("button", { type: "button", class: "link", text: "older runs…", hidden: true, onclick: () => this.load(true) });
    this.count = h("span", { class: "muted" });
    this.el = h("section", { class: "runs" },
      h("div", { class: "list-head" }, h("h1", { text: "Runs" }),
        h("div", { class: "filters" }, this.workflowSelect, this.statusSelect), this.count),
      h("table", { class: "grid runs-table" },
        h("thead", {}, h("tr", {}, ["run", "workflow", "version", "status", "created", "took"].map((t) => h("th", { text: t })))),
        this.body),
      this.more);
    this.start();
  }

  async start() {
    try {
      const { workflows } = await this.rpc.call("workflows/list");
      for (const w of workflows) this.workflowSelect.append(h("option", { value: w.name, text: w.name }));
      this.workflowSelect.value = this.filter.workflow;
    } catch (err) {
      notify(`workflows/list: ${errorText(err)}`, "error");
    }
    await this.load();
    await this.follow();
    this.offOpen = this.rpc.onOpen(async () => {
      await this.load();
      await this.follow();
    });
  }

  destroy() {
    this.destroyed = true;
    this.refresh.cancel();
    this.offOpen?.();
    this.rpc.unsubscribe(this.subscription);
  }

  setFilter(key, value) {
    this.filter[key] = value;
    const params = new URLSearchParams();
    if (this.filter.workflow) params.set("workflow", this.filter.workflow);
    if (this.filter.status) params.set("status", this.filter.status);
    const hash = `#/runs${params.toString() ? `?${params}` : ""}`;
    history.replaceState(null, "", hash);
    this.load();
  }

  async load(older = false) {
    const params = { limit: 50 };
    if (this.filter.workflow) params.workflow = this.filter.workflow;
    if (this.filter.status) params.status = this.filter.status;
    if (older && this.cursor) params.cursor = this.cursor;
    let page;
    try {
      page = await this.rpc.call("runs/list", params);
    } catch (err) {
      notify(`runs/list: ${errorText(err)}`, "error");
      return;
    }
    if (this.destroyed) return;
    if (!older) {
      this.rows.clear();
      this.body.replaceChildren();
    }
    for (const run of page.runs) {
      const tr = this.row(run);
      this.rows.set(run.id, { run, tr });
      this.body.append(tr);
    }
    this.cursor = page.nextCursor;
    this.more.hidden = !page.nextCursor;
    this.count.textContent = `${this.rows.size} shown`;
    if (!this.rows.size) {
      this.body.append(h("tr", {}, h("td", { colspan: "6", class: "muted", text: "No runs yet. Start one: plait call runs/start '{\"workflow\": \"…\"}'" })));
    }
  }

  async follow() {
    try {
      this.subscription = await this.rpc.subscribe({}, (e) => this.onEvent(e));
      if (this.destroyed) this.rpc.unsubscribe(this.subscription);
    } catch (err) {
      /* reconnecting: follow() runs again then */
    }
  }

  onEvent(e) {
    const status = RUN_STATUS[e.type];
    if (!status) return; // step events: the list shows runs only
    const entry = this.rows.get(e.runId);
    if (!entry) {
      if (e.type === "run.created") this.refresh(); // a new run (its list filter is the host's)
      return;
    }
    entry.run.status = status;
    if (["succeeded", "failed", "cancelled"].includes(status)) entry.run.finished_at = e.ts;
    this.changed.add(e.runId);
    if (this.filter.status) this.refresh();
    requestRender(this);
  }

  render() {
    for (const id of this.changed) {
      const entry = this.rows.get(id);
      if (!entry) continue;
      const tr = this.row(entry.run);
      entry.tr.replaceWith(tr);
      entry.tr = tr;
    }
    this.changed.clear();
  }

  row(run) {
    const took = run.finished_at && run.created_at ? fmtDuration(run.finished_at - run.created_at) : "";
    return h("tr", { dataset: { run: run.id, status: run.status } },
      h("td", {}, h("a", { class: "run-id", href: `#/runs/${encodeURIComponent(run.id)}`, text: run.id })),
      h("td", {}, h("a", { href: `#/workflows/${encodeURIComponent(run.workflow)}`, text: run.workflow })),
      h("td", { text: `v${run.version}` }),
      h("td", {}, h("span", { class: `badge st-${run.status}`, text: run.status })),
      h("td", { text: fmtTime(run.created_at) }),
      h("td", { text: took }));
  }
}

export class WorkflowsView {
  constructor(rpc, name) {
    this.rpc = rpc;
    this.open = name || null;
    this.list = h("div", { class: "wf-list" });
    this.detail = h("div", { class: "wf-detail" });
    this.el = h("section", { class: "workflows" }, h("h1", { text: "Workflows" }), h("div", { class: "wf-cols" }, this.list, this.detail));
    this.graph = null;
    this.load();
  }

  destroy() {
    this.graph?.destroy();
  }

  async load() {
    let workflows;
    try {
      ({ workflows } = await this.rpc.call("workflows/list"));
    } catch (err) {
      replace(this.list, h("p", { class: "error", text: `workflows/list: ${errorText(err)}` }));
      return;
    }
    replace(this.list,
      workflows.length
        ? h("table", { class: "grid" },
            h("thead", {}, h("tr", {}, ["workflow", "version", "description"].map((t) => h("th", { text: t })))),
            h("tbody", {}, workflows.map((w) => h("tr", { dataset: { workflow: w.name }, class: w.name === this.open ? "selected" : "" },
              h("td", {}, h("a", { href: `#/workflows/${encodeURIComponent(w.name)}`, text: w.name })),
              h("td", { text: `v${w.version}` }),
              h("td", { class: "description", text: w.description || "" })))))
        : h("p", { class: "muted", text: "No workflows registered (plait serve --workflows DIR, or workflows/put)." }));
    if (this.open) this.show(this.open);
  }

  async show(name, version = null) {
    replace(this.detail, h("p", { class: "muted", text: `Loading ${name}…` }));
    try {
      const [{ versions }, { workflow }] = await Promise.all([
        this.rpc.call("workflows/versions", { name }),
        this.rpc.call("workflows/get", version ? { name, version } : { name }),
      ]);
      this.graph?.destroy();
      this.graph = new GraphView(workflow, null, {});
      replace(this.detail,
        h("h2", {}, h("span", { text: workflow.name }), h("span", { class: "muted", text: ` v${workflow.version}` })),
        workflow.description ? h("p", { class: "description", text: workflow.description }) : null,
        h("p", {}, h("a", { href: `#/runs?workflow=${encodeURIComponent(name)}`, text: "its runs →" })),
        h("h3", { text: "Versions" }),
        h("ul", { class: "versions" }, versions.map((v) => h("li", {},
          h("button", { type: "button", class: `link${v.version === workflow.version ? " on" : ""}`, text: `v${v.version}`, onclick: () => this.show(name, v.version) }),
          ` ${fmtTime(v.created_at)}`, v.current ? h("span", { class: "badge st-succeeded", text: "current" }) : null))),
        h("h3", { text: "Steps" }),
        this.graph.el,
        h("details", {}, h("summary", { text: "Definition (JSON)" }), jsonBlock(workflow)));
    } catch (err) {
      replace(this.detail, h("p", { class: "error", text: `${name}: ${errorText(err)}` }));
    }
  }
}

