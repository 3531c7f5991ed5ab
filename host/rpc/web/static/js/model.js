// A run as its events tell it: step states, attempts, waits, cache hits, agent conversations.
// Events are the source of truth (the host keeps nothing else), so the page folds them the way
// the host does and needs no second API.

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const RUN_STATUS = {
  "run.created": "pending",
  "run.started": "running",
  "run.resumed": "running",
  "run.waiting": "waiting",
  "run.paused": "paused",
  "run.breakpoint": "paused",
  "run.succeeded": "succeeded",
  "run.failed": "failed",
  "run.cancelled": "cancelled",
};
const STEP_STATUS = {
  "step.started": "running",
  "step.waiting": "waiting",
  "step.retrying": "retrying",
  "step.succeeded": "succeeded",
  "step.failed": "failed",
  "step.skipped": "skipped",
  "step.cancelled": "cancelled",
  "step.interrupted": "interrupted",
  "step.reused": "reused",
};
const SETTLED = new Set(["succeeded", "failed", "skipped", "cancelled", "interrupted", "reused"]);

/** "each[2].fetch" -> [{id: "each", key: "2"}, {id: "fetch", key: null}] */
export function parsePath(path) {
  const parts = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    const c = path[i];
    if (c === "[") depth++;
    else if (c === "]") depth--;
    else if ((c === "." && depth === 0) || i === path.length) {
      const seg = path.slice(start, i);
      const open = seg.indexOf("[");
      parts.push(
        open < 0 ? { id: seg, key: null } : { id: seg.slice(0, open), key: seg.slice(open + 1, -1) },
      );
      start = i + 1;
    }
  }
  return parts;
}

/** "each[2].fetch" -> "each.fetch": how a breakpoint names a step in every iteration. */
export function unindexed(path) {
  return parsePath(path)
    .map((p) => p.id)
    .join(".");
}

/** The last id of a path: "each[2].fetch" -> "fetch". */
export function stepId(path) {
  const parts = parsePath(path);
  return parts[parts.length - 1].id;
}

export class StepInfo {
  constructor(path) {
    this.path = path;
    this.status = "pending";
    this.attempts = [];
    this.output = undefined;
    this.error = null;
    this.reason = null;
    this.cached = false;
    this.reused = false;
    this.config = null;
    this.configAttempt = 0;
    this.childRun = null;
    this.conversation = [];
    this.toolCalls = [];
    this.turns = [];
    this.usage = null;
    this.streaming = "";
    this.eventSeqs = [];
    this.firstTs = null;
    this.edited = null;
  }

  get lastAttempt() {
    return this.attempts[this.attempts.length - 1] || null;
  }

  get settled() {
    return SETTLED.has(this.status);
  }
}

export class RunModel {
  constructor(run) {
    this.run = { ...run };
    this.steps = new Map();
    this.order = []; // step paths in the order they first appeared
    this.events = [];
    this.lastSeq = 0;
    this.firstTs = null;
    this.lastTs = null;
    this.breakpointHit = null;
    // what changed since the last render
    this.dirtySteps = new Set();
    this.runDirty = true;
    this.newEvents = [];
    this.structureChanged = false;
  }

  step(path) {
    let info = this.steps.get(path);
    if (!info) {
      info = new StepInfo(path);
      this.steps.set(path, info);
      this.order.push(path);
      this.structureChanged = true;
    }
    return info;
  }

  /** Fold one event in; false when it was seen already (a replay after reconnecting). */
  apply(e) {
    if (e.seq <= this.lastSeq) return false;
    this.lastSeq = e.seq;
    this.events.push(e);
    this.newEvents.push(e);
    if (this.firstTs === null) this.firstTs = e.ts;
    this.lastTs = e.ts;
    const data = e.data || {};
    const runStatus = RUN_STATUS[e.type];
    if (runStatus) {
      this.run.status = runStatus;
      this.runDirty = true;
      if (e.type === "run.started" && !this.run.started_at) this.run.started_at = e.ts;
      if (TERMINAL.has(runStatus)) {
        this.run.finished_at = e.ts;
        if (data.outputs !== undefined) this.run.outputs = data.outputs;
        if (data.error !== undefined) this.run.error = data.error;
        this.breakpointHit = null;
      }
      if (e.type === "run.paused") this.run.reason = data.reason || this.run.reason || null;
      if (e.type === "run.breakpoint") {
        this.breakpointHit = { step: e.step || data.step, at: data.at, breakpoint: data.breakpoint };
        this.run.reason = data.breakpoint ? `breakpoint ${data.breakpoint.id || ""}` : "breakpoint";
      }
      if (e.type === "run.resumed" || e.type === "run.waiting") {
        this.breakpointHit = null;
        this.run.reason = data.reason || null;
      }
    }
    if (!e.step) return true;
    const s = this.step(e.step);
    s.eventSeqs.push(e.seq);
    if (s.firstTs === null) s.firstTs = e.ts;
    this.dirtySteps.add(e.step);
    // an open wait ends with whatever the step does next
    const last = s.lastAttempt;
    if (last && e.type !== "step.waiting") {
      const wait = last.waits[last.waits.length - 1];
      if (wait && wait[1] === null) wait[1] = e.ts;
    }
    const status = STEP_STATUS[e.type];
    if (status) {
      s.status = status;
      this.runDirty = true;
    }
    switch (e.type) {
      case "step.started":
        s.attempts.push({
          n: data.attempt || s.attempts.length + 1,
          start: e.ts,
          end: null,
          outcome: "running",
          waits: [],
          cached: false,
          error: null,
          delay: null,
        });
        if (data.config !== undefined) {
          s.config = data.config;
          s.configAttempt = data.attempt || s.attempts.length;
        }
        s.reason = null;
        s.streaming = "";
        break;
      case "step.waiting":
        s.reason = data.reason || (data.event ? `waiting for the signal '${data.event}'` : null);
        if (last) last.waits.push([e.ts, null]);
        break;
      case "step.retrying":
        if (last) {
          last.end = e.ts;
          last.outcome = "failed";
          last.error = data.error || null;
          last.delay = data.delay ?? null;
        }
        s.error = data.error || null;
        break;
      case "step.cached":
        s.cached = true;
        if (last) last.cached = true;
        break;
      case "step.succeeded":
      case "step.reused":
        s.output = data.output;
        s.error = null;
        s.reused = e.type === "step.reused";
        this.closeAttempt(s, e, "succeeded");
        break;
      case "step.failed":
        s.error = data.error || null;
        this.closeAttempt(s, e, "failed");
        break;
      case "step.skipped":
        s.reason = data.reason || null;
        break;
      case "step.cancelled":
      case "step.interrupted":
        this.closeAttempt(s, e, s.status);
        break;
      case "run.child":
        s.childRun = data.child || null;
        break;
      case "agent.message":
        s.turns.push({ turn: data.turn, usage: data.usage || null, ts: e.ts });
        s.streaming = "";
        break;
      case "agent.delta":
        s.streaming += data.text || "";
        break;
      case "agent.tool_call":
        s.toolCalls.push(data);
        break;
      case "conversation.appended":
        for (const m of data.messages || []) s.conversation.push(m);
        break;
      case "agent.usage":
        s.usage = data.usage || null;
        break;
      case "debug.output":
        if ("output" in data) s.output = data.output;
        s.edited = { previous: data.previous, ts: e.ts };
        if (s.status === "failed") s.status = "succeeded";
        s.error = null;
        break;
      default:
        break;
    }
    return true;
  }

  closeAttempt(s, e, outcome) {
    const last = s.lastAttempt;
    if (last && last.end === null) {
      last.end = e.ts;
      last.outcome = outcome;
    }
  }

  /** The event of sequence number ``seq`` (events are kept in order, without gaps). */
  eventAt(seq) {
    const first = this.events.length ? this.events[0].seq : 0;
    const e = this.events[seq - first];
    return e && e.seq === seq ? e : this.events.find((x) => x.seq === seq);
  }

  /** Take what changed since the last call (the renderers' work for one frame). */
  takeChanges() {
    const changes = {
      steps: this.dirtySteps,
      run: this.runDirty,
      events: this.newEvents,
      structure: this.structureChanged,
    };
    this.dirtySteps = new Set();
    this.runDirty = false;
    this.newEvents = [];
    this.structureChanged = false;
    return changes;
  }

  /** Top-level steps settled / all of them (the run's progress). */
  progress(topIds) {
    let done = 0;
    for (const id of topIds) {
      const s = this.steps.get(id);
      if (s && s.settled) done++;
    }
    return { done, total: topIds.length };
  }

  /** Aggregate status of one body instance (an iteration, a branch): of the paths
   * ``prefix + id`` for the body's step ids. */
  instanceStatus(prefix, ids) {
    let seen = 0;
    let settled = 0;
    let status = "pending";
    const rank = { failed: 6, running: 5, retrying: 5, waiting: 4, cancelled: 3, interrupted: 3 };
    for (const id of ids) {
      const s = this.steps.get(prefix + id);
      if (!s) continue;
      seen++;
      if (s.settled) settled++;
      if ((rank[s.status] || 0) > (rank[status] || 0)) status = s.status;
    }
    if (!seen) return "pending";
    if (status !== "pending") return status;
    return settled === seen ? "succeeded" : "running";
  }
}
