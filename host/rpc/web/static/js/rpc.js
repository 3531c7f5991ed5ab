// JSON-RPC 2.0 over the host's WebSocket (/rpc), the same API every client uses. The browser
// authenticates the socket with the session cookie it got from the one-time link; nothing
// secret is visible to this script (the cookie is HttpOnly).

export class RpcError extends Error {
  constructor(error) {
    super(error && error.message ? error.message : "error");
    this.code = error ? error.code : undefined;
    this.data = error ? error.data : undefined;
  }
}

export const METHOD_NOT_FOUND = -32601;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000];

export class Rpc {
  constructor(url) {
    this.url = url;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, onResult}
    this.subscriptions = new Map(); // subscription id -> handler(params)
    this.state = "connecting";
    this.failures = 0;
    this.everOpened = false;
    this.stateListeners = new Set();
    this.openListeners = new Set();
    this.queue = []; // messages sent before the socket opened
  }

  connect() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.setState("connecting");
    ws.addEventListener("open", () => {
      this.failures = 0;
      this.everOpened = true;
      this.setState("open");
      for (const text of this.queue.splice(0)) ws.send(text);
      for (const listener of this.openListeners) listener();
    });
    ws.addEventListener("message", (event) => this.receive(event.data));
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.failures += 1;
      const gone = new RpcError({ code: -32000, message: "the connection to the host closed" });
      for (const waiter of this.pending.values()) waiter.reject(gone);
      this.pending.clear();
      this.subscriptions.clear();
      this.setState(this.failures > 3 ? "lost" : "reconnecting");
      const delay = BACKOFF_MS[Math.min(this.failures - 1, BACKOFF_MS.length - 1)];
      setTimeout(() => this.connect(), delay);
    });
  }

  setState(state) {
    this.state = state;
    for (const listener of this.stateListeners) listener(state, this);
  }

  /** Call ``listener`` each time the socket (re)opens: views sync again then. */
  onOpen(listener) {
    this.openListeners.add(listener);
    return () => this.openListeners.delete(listener);
  }

  onState(listener) {
    this.stateListeners.add(listener);
    listener(this.state, this);
    return () => this.stateListeners.delete(listener);
  }

  send(message) {
    const text = JSON.stringify(message);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
    else this.queue.push(text);
  }

  /** A request; resolves with the result, rejects with an RpcError. */
  call(method, params = {}, onResult = null) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onResult });
      this.send({ jsonrpc: "2.0", id, method, params });
    });
  }

  /** runs/subscribe: ``handler(event)`` gets every runs/event notification of it. The handler
   * is in place before the first notification is read (they follow the reply). */
  async subscribe(params, handler) {
    const result = await this.call("runs/subscribe", params, (res) => {
      this.subscriptions.set(res.subscription, handler);
    });
    return result.subscription;
  }

  async unsubscribe(subscription) {
    if (!subscription || !this.subscriptions.has(subscription)) return;
    this.subscriptions.delete(subscription);
    try {
      await this.call("runs/unsubscribe", { subscription });
    } catch (err) {
      // the connection closed meanwhile: the subscription went with it
    }
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (err) {
      console.error("not JSON from the host", err);
      return;
    }
    for (const item of Array.isArray(message) ? message : [message]) {
      if (item.method === "runs/event" && item.params) {
        const handler = this.subscriptions.get(item.params.subscription);
        if (handler) handler(item.params);
        continue;
      }
      if (item.id === undefined || item.id === null) continue;
      const waiter = this.pending.get(item.id);
      if (!waiter) continue;
      this.pending.delete(item.id);
      if (item.error) waiter.reject(new RpcError(item.error));
      else {
        if (waiter.onResult) waiter.onResult(item.result);
        waiter.resolve(item.result);
      }
    }
  }
}
