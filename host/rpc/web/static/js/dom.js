// Building the page from data with DOM APIs only: text always goes in as text (textContent,
// Text nodes), never through innerHTML, so a step output or a description holding markup shows
// as the characters it is.

const MAX_JSON_CHARS = 200_000;

/** An element: h("div", {class: "x", onclick: f, title: "..."}, child, "text", [more]). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = String(value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "style" || key.startsWith("on")) {
        throw new Error(`h(): no ${key} attribute (the CSP forbids inline style and script)`);
      } else el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  add(el, children);
  return el;
}

/** Append children (nodes, strings, arrays of them; null and false are skipped). */
export function add(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replace every child of ``el``. */
export function replace(el, ...children) {
  el.replaceChildren();
  return add(el, children);
}

/** JSON text of a value, pretty, cut past a size a browser shows comfortably. */
export function jsonText(value, indent = 2) {
  let text;
  try {
    text = value === undefined ? "undefined" : JSON.stringify(value, null, indent);
  } catch (err) {
    text = String(value);
  }
  if (text.length > MAX_JSON_CHARS) {
    text = `${text.slice(0, MAX_JSON_CHARS)}\n… (${text.length - MAX_JSON_CHARS} more characters)`;
  }
  return text;
}

/** A <pre> showing a value as JSON. */
export function jsonBlock(value, cls = "json") {
  return h("pre", { class: cls, text: jsonText(value) });
}

/** One short line of JSON for tables. */
export function jsonLine(value, max = 160) {
  const text = jsonText(value, 0);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "";
}

export function fmtTime(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtClock(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  if (seconds < 0.001) return "<1 ms";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  if (m < 60) return `${m} min ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Calls ``fn`` at most once per ``ms``, the last call winning. */
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

// -- one render per frame ---------------------------------------------------------------------

const dirty = new Set();
let scheduled = false;

/** Ask for ``view.render()`` at the next animation frame; many asks, one render. */
export function requestRender(view) {
  dirty.add(view);
  if (!scheduled) {
    scheduled = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  scheduled = false;
  const views = [...dirty];
  dirty.clear();
  for (const view of views) {
    if (view.destroyed) continue;
    try {
      view.render();
    } catch (err) {
      console.error("render failed", err);
    }
  }
}

// -- notices ------------------------------------------------------------------------------------

/** Show a short message at the top of the page (errors stay until dismissed). */
export function notify(message, kind = "info") {
  const box = document.getElementById("notices");
  if (!box) return;
  const item = h(
    "div",
    { class: `notice ${kind}` },
    h("span", { text: message }),
    h("button", { class: "link", type: "button", text: "dismiss", onclick: () => item.remove() }),
  );
  box.append(item);
  while (box.children.length > 3) box.firstElementChild.remove();
  if (kind !== "error") setTimeout(() => item.remove(), 4000);
}

/** The message of an RPC or other error. */
export function errorText(err) {
  if (!err) return "unknown error";
  if (err.code !== undefined) return `${err.message} (${err.code})`;
  return err.message || String(err);
}
