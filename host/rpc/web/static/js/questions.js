// The questions a run's input steps wait for (the run's `questions`, from runs/get): a form per
// question the web view may answer (its `answerers` include "web"), generated from the answer's
// JSON Schema, sent with runs/respond. The host checks the answer against the schema; what it
// refuses is shown next to the form, which stays as typed.
//
// An object schema whose properties are strings, numbers, integers, booleans or enums becomes
// one field per property; any other schema becomes a JSON text area.

import { errorText, fmtTime, h, jsonText, replace } from "./dom.js";

const SIMPLE = new Set(["string", "number", "integer", "boolean"]);

/** Whether a property schema becomes one field (else the whole answer is JSON text). */
function simpleProperty(prop) {
  if (!prop || typeof prop !== "object") return false;
  if (Array.isArray(prop.enum) && prop.enum.length) return true;
  return SIMPLE.has(prop.type);
}

/** Whether a schema is an object of simple properties (a form of fields). */
export function fieldsOf(schema) {
  if (!schema || schema.type !== "object" || !schema.properties) return null;
  const props = Object.entries(schema.properties);
  if (!props.length || !props.every(([, prop]) => simpleProperty(prop))) return null;
  return props;
}

export class Questions {
  constructor(rpc, runId) {
    this.rpc = rpc;
    this.runId = runId;
    this.key = "";
    this.el = h("div", { class: "questions" });
  }

  /** Show the questions answerable here; forms are built again only when they change. */
  update(questions) {
    const mine = (questions || []).filter((q) => (q.answerers || ["web"]).includes("web"));
    const key = JSON.stringify(mine);
    if (key === this.key) return;
    this.key = key;
    replace(this.el, mine.map((q) => this.form(q)));
  }

  form(q) {
    const problems = h("div", { class: "question-error", role: "alert", dataset: { role: "question-error" } });
    const fields = fieldsOf(q.schema);
    const required = new Set(Array.isArray(q.schema?.required) ? q.schema.required : []);
    const inputs = [];
    let body;
    if (fields) {
      body = fields.map(([name, prop]) => {
        const input = this.field(name, prop, required.has(name));
        inputs.push([name, prop, input]);
        return h("label", { class: "question-field" },
          h("span", { class: "question-label", text: `${prop.title || name}${required.has(name) ? " *" : ""}` }),
          input,
          prop.description ? h("span", { class: "muted", text: prop.description }) : null);
      });
    } else {
      const area = h("textarea", { name: "answer", rows: "4", cols: "48", "aria-label": "answer (JSON)", placeholder: "the answer, as JSON" });
      inputs.push([null, q.schema, area]);
      body = [h("label", { class: "question-field" }, h("span", { class: "question-label", text: "answer (JSON)" }), area),
        q.schema && Object.keys(q.schema).length ? h("details", {}, h("summary", { text: "schema" }), h("pre", { class: "json", text: jsonText(q.schema) })) : null];
    }
    const by = h("input", { type: "text", name: "by", placeholder: "your name (optional)", "aria-label": "answered by", size: "18" });
    const submit = h("button", { type: "submit", dataset: { action: "respond" }, text: "Answer" });
    const form = h("form", {
      class: "question",
      dataset: { step: q.step },
      onsubmit: async (ev) => {
        ev.preventDefault();
        let answer;
        try {
          answer = this.answer(inputs);
        } catch (err) {
          replace(problems, err.message);
          return;
        }
        submit.disabled = true;
        replace(problems);
        try {
          const params = { runId: this.runId, step: q.step, answer };
          if (by.value.trim()) params.by = by.value.trim();
          await this.rpc.call("runs/respond", params);
          replace(problems, h("span", { class: "muted", text: "answered" }));
        } catch (err) {
          const list = err?.data?.problems;
          replace(problems, errorText(err),
            Array.isArray(list) && list.length ? h("ul", {}, list.map((p) => h("li", { text: p }))) : null);
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("p", { class: "question-head" }, h("strong", { text: "Input needed" }), ` · step ${q.step}`,
      q.deadline ? h("span", { class: "muted", text: ` · until ${fmtTime(q.deadline)}` }) : null),
    h("p", { class: "question-message", text: q.message }),
    body,
    h("div", { class: "question-actions" }, by, submit),
    problems);
    return form;
  }

  field(name, prop, required) {
    if (Array.isArray(prop.enum) && prop.enum.length) {
      const options = prop.enum.map((v, i) => h("option", { value: String(i), text: typeof v === "string" ? v : JSON.stringify(v) }));
      return h("select", { name, required }, required ? null : h("option", { value: "", text: "—" }), options);
    }
    if (prop.type === "boolean") return h("input", { type: "checkbox", name });
    if (prop.type === "number" || prop.type === "integer") {
      return h("input", { type: "number", name, step: prop.type === "integer" ? "1" : "any", required });
    }
    return h("input", { type: "text", name, required, size: "32" });
  }

  /** The answer from the form's fields (the host checks it against the schema). */
  answer(inputs) {
    if (inputs.length === 1 && inputs[0][0] === null) {
      const text = inputs[0][2].value.trim();
      try {
        return JSON.parse(text);
      } catch (err) {
        throw new Error(`the answer is not JSON: ${err.message}`);
      }
    }
    const out = {};
    for (const [name, prop, input] of inputs) {
      if (Array.isArray(prop.enum) && prop.enum.length) {
        if (input.value !== "") out[name] = prop.enum[Number(input.value)];
      } else if (prop.type === "boolean") {
        out[name] = input.checked;
      } else if (prop.type === "number" || prop.type === "integer") {
        if (input.value !== "") out[name] = Number(input.value);
      } else if (input.value !== "") {
        out[name] = input.value;
      }
    }
    return out;
  }
}
