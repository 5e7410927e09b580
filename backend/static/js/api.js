// The HTTP API of copilot-chat, and where the bearer token comes from.
//
// Token: with development auth the panel sends none. Embedded in a host app (an iframe), the host hands the token
// over with postMessage: the panel posts {type: "copilot:ready"} to its parent when it starts and
// {type: "copilot:token-request"} when a request was refused with 401; the parent answers (or pushes at any time,
// e.g. after a refresh) {type: "copilot:token", token: "<JWT>"}. Only messages from the parent window are read.

const TOKEN_WAIT_MS = 10000;

export class ApiError extends Error {
  constructor(status, code, message, details, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
    this.retryAfter = retryAfter; // seconds the server asked to wait (`Retry-After`), or null
  }
}

/** Whether `error` is a refusal over one of the user's limits (429 `rate_limited`, with `retryAfter`). */
export function isRateLimited(error) {
  return error instanceof ApiError && error.code === "rate_limited";
}

export class HostToken {
  constructor(win = window) {
    this.win = win;
    this.token = null;
    this.embedded = win.parent !== win;
    this.waiters = [];
    if (this.embedded) {
      win.addEventListener("message", (event) => this.onMessage(event));
      this.post({ type: "copilot:ready" });
    }
  }

  onMessage(event) {
    const data = event.data;
    if (event.source !== this.win.parent || !data || data.type !== "copilot:token") return;
    if (typeof data.token !== "string" || !data.token) return;
    this.token = data.token;
    for (const resolve of this.waiters.splice(0)) resolve(true);
  }

  post(message) {
    // The messages carry no secret, so any parent origin may read them.
    this.win.parent.postMessage(message, "*");
  }

  /** Ask the host for a fresh token; resolves to true if one arrived in time. */
  refresh() {
    if (!this.embedded) return Promise.resolve(false);
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.post({ type: "copilot:token-request" });
      setTimeout(() => {
        const i = this.waiters.indexOf(resolve);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve(false);
      }, TOKEN_WAIT_MS);
    });
  }
}

export class Api {
  constructor({ base = new URL(".", document.baseURI), token = new HostToken() } = {}) {
    this.base = base;
    this.auth = token;
    this.hostTools = null; // the HostTools whose registered frontend tools go with every message
  }

  url(path, query = {}) {
    const url = new URL(path, this.base);
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    return url;
  }

  headers(extra = {}) {
    const headers = { ...extra };
    if (this.auth.token) headers.authorization = `Bearer ${this.auth.token}`;
    return headers;
  }

  /** fetch with the token; one retry with a fresh token from the host after a 401. Non-2xx → ApiError. */
  async fetch(path, { method = "GET", query, body, signal, accept = "application/json" } = {}) {
    const init = () => ({
      method,
      signal,
      headers: this.headers({ accept, ...(body === undefined ? {} : { "content-type": "application/json" }) }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let response = await fetch(this.url(path, query), init());
    if (response.status === 401 && (await this.auth.refresh())) {
      response = await fetch(this.url(path, query), init());
    }
    if (!response.ok) throw await toError(response);
    return response;
  }

  async json(path, options) {
    const response = await this.fetch(path, options);
    return response.status === 204 ? null : response.json();
  }

  listSessions() {
    return this.json("api/chat/sessions", { query: { limit: 100 } });
  }

  createSession() {
    return this.json("api/chat/sessions", { method: "POST", body: {} });
  }

  renameSession(id, title) {
    return this.json(`api/chat/sessions/${id}`, { method: "PATCH", body: { title } });
  }

  deleteSession(id) {
    return this.json(`api/chat/sessions/${id}`, { method: "DELETE" });
  }

  /** The session with its messages after `after` (every page of them). */
  async getSession(id, after = 0) {
    const session = await this.json(`api/chat/sessions/${id}`, { query: { after, limit: 500 } });
    while (session.next_after !== null) {
      const page = await this.json(`api/chat/sessions/${id}`, { query: { after: session.next_after, limit: 500 } });
      session.messages.push(...page.messages);
      session.next_after = page.next_after;
    }
    return session;
  }

  /** The session and at most one message after `after`: enough to tell whether anything changed. */
  peekSession(id, after) {
    return this.json(`api/chat/sessions/${id}`, { query: { after, limit: 1 } });
  }

  cancel(id) {
    return this.json(`api/chat/sessions/${id}/cancel`, { method: "POST" });
  }

  /** Start a turn; the answer is its UI message stream (task id in `x-copilot-task-id`). */
  sendMessage(id, message, clientMessageId, signal) {
    const body = { message, client_message_id: clientMessageId };
    if (this.hostTools?.tools) body.tools = this.hostTools.tools;
    return this.fetch(`api/chat/sessions/${id}/stream`, {
      method: "POST",
      body,
      signal,
      accept: "text/event-stream",
    });
  }

  /** Answer a frontend tool's call or an `ask_user` question: `{output}` or `{error}`; → {task_id, awaiting}. */
  sendToolOutput(id, toolCallId, body) {
    return this.json(`api/chat/sessions/${id}/tool-calls/${encodeURIComponent(toolCallId)}/output`, {
      method: "POST",
      body,
    });
  }

  /** Approve or deny a call: `{approved, reason?}`; → {task_id, awaiting}. */
  approveToolCall(id, toolCallId, body) {
    return this.json(`api/chat/sessions/${id}/tool-calls/${encodeURIComponent(toolCallId)}/approval`, {
      method: "POST",
      body,
    });
  }

  /** A turn's stream: replayed from its `start` (or after the cursor `after`), then live. */
  taskStream(taskId, after, signal) {
    return this.fetch(`api/chat/tasks/${encodeURIComponent(taskId)}/stream`, {
      query: { after },
      signal,
      accept: "text/event-stream",
    });
  }
}

async function toError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: keep the status line
  }
  const error = body && body.error ? body.error : {};
  return new ApiError(
    response.status,
    error.code || "http_error",
    error.message || `${response.status} ${response.statusText}`,
    error.details,
    retryAfterOf(response, error.details),
  );
}

function retryAfterOf(response, details) {
  const header = response.headers.get("retry-after");
  if (header !== null && /^\d+$/.test(header.trim())) return Number(header.trim());
  const detail = details ? Number(details.retry_after) : NaN;
  return Number.isFinite(detail) ? detail : null;
}
