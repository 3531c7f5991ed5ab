// The web view's entry point: the connection, the routes, the views.
//
//   #/runs[?workflow=W&status=S]   the runs, live
//   #/runs/<id>                    one run: graph, timeline, inspector, events, debugger
//   #/workflows[/<name>]           the workflows, their versions and graphs

import { h, notify, replace } from "./dom.js";
import { RunsView, WorkflowsView } from "./lists.js";
import { RunView } from "./run.js";
import { Rpc } from "./rpc.js";

const scheme = location.protocol === "https:" ? "wss" : "ws";
const rpc = new Rpc(`${scheme}://${location.host}/rpc`);
const main = document.getElementById("view");
const connection = document.getElementById("connection");
let current = null;

const STATE_TEXT = {
  connecting: "connecting…",
  open: "live",
  reconnecting: "reconnecting…",
  lost: "disconnected",
};

rpc.onState((state) => {
  connection.textContent = STATE_TEXT[state] || state;
  connection.className = `connection ${state}`;
  if (state === "lost" && !rpc.everOpened) {
    replace(main,
      h("h1", { text: "Cannot connect to the host" }),
      h("p", { text: "The page could not open its connection. Its session may belong to an earlier start of the host: open a new link (`plait debug RUN`, or the one `plait serve` printed)." }));
  } else if (state === "lost") {
    connection.title = "the host does not answer; if it restarted, open a new link (plait debug RUN)";
  }
});

function route() {
  const hash = location.hash || "#/runs";
  const [path, queryText] = hash.slice(1).split("?");
  const query = new URLSearchParams(queryText || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (current) {
    current.destroy();
    current = null;
  }
  if (parts[0] === "runs" && parts[1]) current = new RunView(rpc, parts[1]);
  else if (parts[0] === "workflows") current = new WorkflowsView(rpc, parts[1] || null);
  else if (parts[0] === "runs" || parts.length === 0) current = new RunsView(rpc, query);
  else {
    notify(`no page ${hash}`, "error");
    current = new RunsView(rpc, new URLSearchParams());
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("on", a.dataset.nav === (parts[0] || "runs"));
  }
  replace(main, current.el);
  window.scrollTo(0, 0);
}

window.addEventListener("hashchange", route);
window.plait = { rpc }; // for the curious, in the console
rpc.connect();
route();
