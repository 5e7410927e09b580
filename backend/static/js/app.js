// The panel: sessions, the transcript, sending, stopping, following replies that run (also after a reload or in
// another tab) and long-running operations until their result arrives.

import { Api, ApiError, isRateLimited } from "./api.js";
import { HostTools } from "./host_tools.js";
import { HumanLoop, isContinuation, joinContinuations } from "./human.js";
import { applyChunk, emptyReply, fromStored, pendingTask } from "./messages.js";
import { emptyState, errorBox, renderSessions, renderTranscript } from "./render.js";
import { readChunks } from "./stream.js";
import { turnIdFor } from "./turn_id.js";

const POLL_MS = 2000;
const SESSIONS_EVERY_POLLS = 3;
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 4000];
const RATE_LIMIT_WAIT_S = 5; // when a 429 does not say how long to wait

/** One task stream being read: a reply, or the continuation of a long-running operation. */
class Follow {
  constructor(taskId, { visible = false } = {}) {
    this.taskId = taskId;
    this.message = emptyReply(`t${taskId}`);
    this.visible = visible; // shown before its `start` arrives (a reply the user just asked for)
    this.started = false;
    this.ended = false;
    this.cursor = undefined;
    this.clientMessageId = null; // of the message whose turn this is, when this panel sent it
    this.answered = []; // tool call ids answered in this panel whose continuation this is (human.js)
    this.abort = new AbortController();
  }
}

class Panel {
  constructor(api, dom) {
    this.api = api;
    this.dom = dom;
    this.sessions = [];
    this.sessionId = null;
    this.title = null;
    this.stored = [];
    this.follows = new Map();
    this.finishedTasks = new Set(); // task ids whose stream ended or is gone: never followed again
    this.pendingUser = null;
    this.problem = null;
    this.sending = false;
    this.polls = 0;
    this.polling = false;
    this.loads = 0;
    this.renderQueued = false;
    this.quietUntil = 0; // no polling before this time (ms): the server said the user's requests are used up
    this.runningReply = null; // {taskId, userSequence}: the session's running turn, when it answers a user message
    this.human = new HumanLoop(api, api.hostTools || new HostTools(), {
      sessionId: () => this.sessionId,
      render: () => this.scheduleRender(),
      fail: (error, retry) => this.fail(error, retry),
      reload: () => this.load(),
      followContinuation: (taskId, answered) => this.followContinuation(taskId, answered),
    });
  }

  async start() {
    const { dom } = this;
    dom.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send(dom.input.value);
    });
    dom.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send(dom.input.value);
      }
    });
    dom.stop.addEventListener("click", () => this.stop());
    dom.newSession.addEventListener("click", () => this.newSession());
    dom.toggleSidebar.addEventListener("click", () => dom.panel.classList.toggle("sidebar-open"));
    window.addEventListener("hashchange", () => {
      const id = sessionFromHash();
      if (id && id !== this.sessionId) this.open(id);
    });
    document.addEventListener("visibilitychange", () => this.poll());
    setInterval(() => this.poll(), POLL_MS);
    await this.boot();
  }

  async boot() {
    this.problem = null;
    try {
      await this.refreshSessions();
    } catch (error) {
      this.fail(error, () => this.boot());
      return;
    }
    const id = sessionFromHash() || this.sessions[0]?.id;
    if (id) await this.open(id);
    else this.render();
  }

  // --- sessions ------------------------------------------------------------------------------------------------
  async refreshSessions() {
    const page = await this.api.listSessions();
    this.sessions = page.sessions;
    const current = this.sessions.find((s) => s.id === this.sessionId);
    if (current) this.title = current.title;
    this.renderSessions();
  }

  renderSessions() {
    // Do not redraw under a title being edited or a delete waiting for its confirmation.
    if (this.dom.sessions.querySelector(".rename-input, .confirm")) return;
    renderSessions(this.dom.sessions, this.sessions, this.sessionId, {
      select: (id) => {
        this.dom.panel.classList.remove("sidebar-open");
        this.open(id);
      },
      rename: (id, title) => this.act(() => this.api.renameSession(id, title || null)),
      remove: (id) => this.act(() => this.removeSession(id)),
      refresh: () => this.renderSessions(),
    });
    this.dom.title.textContent = this.sessionId ? this.title || "New chat" : "Copilot";
  }

  async act(action) {
    try {
      await action();
      await this.refreshSessions();
    } catch (error) {
      this.fail(error);
    }
  }

  async newSession() {
    await this.act(async () => {
      const session = await this.api.createSession();
      this.sessions.unshift(session);
      await this.open(session.id);
    });
  }

  async removeSession(id) {
    await this.api.deleteSession(id);
    this.sessions = this.sessions.filter((s) => s.id !== id);
    if (id === this.sessionId) {
      const next = this.sessions[0]?.id;
      if (next) await this.open(next);
      else this.close();
    }
  }

  close() {
    for (const follow of this.follows.values()) follow.abort.abort();
    this.follows.clear();
    this.human.clear();
    Object.assign(this, { sessionId: null, title: null, stored: [], pendingUser: null, problem: null });
    this.runningReply = null;
    history.replaceState(null, "", location.pathname + location.search);
    this.renderSessions();
    this.render();
  }

  async open(id) {
    this.close();
    this.sessionId = id;
    history.replaceState(null, "", `${location.pathname}${location.search}#s=${id}`);
    this.renderSessions();
    this.render();
    await this.load();
  }

  // --- messages ------------------------------------------------------------------------------------------------
  /** Read the session's stored messages, then follow its running reply and its unfinished operations. */
  async load() {
    const id = this.sessionId;
    const ticket = ++this.loads; // loads may overlap (a poll, a reply that ended): only the latest one counts
    let session;
    try {
      session = await this.api.getSession(id);
    } catch (error) {
      if (id !== this.sessionId || ticket !== this.loads) return;
      if (error instanceof ApiError && error.status === 404) {
        this.sessions = this.sessions.filter((s) => s.id !== id);
        this.close();
        return;
      }
      this.fail(error, () => this.load());
      return;
    }
    if (id !== this.sessionId || ticket !== this.loads) return;
    this.stored = session.messages;
    this.human.update(session.awaiting);
    this.title = session.title;
    const listed = this.sessions.find((s) => s.id === id);
    if (listed) listed.title = session.title;
    for (const [taskId, follow] of this.follows) if (follow.ended) this.follows.delete(taskId);
    const active = session.active_task;
    if (active && active.status === "running") {
      this.follow(active.task_id);
      this.runningReply = replyOf(active.task_id, id, this.stored);
    } else {
      this.runningReply = null;
    }
    for (const m of this.stored) {
      if (m.role !== "tool") continue;
      const taskId = pendingTask(parseJson(m.content));
      if (taskId) this.follow(taskId);
    }
    this.renderSessions();
    this.render();
  }

  follow(taskId, { response = null, visible = false } = {}) {
    if (this.follows.has(taskId) || this.finishedTasks.has(taskId)) return;
    const follow = new Follow(taskId, { visible });
    this.follows.set(taskId, follow);
    this.read(follow, response);
  }

  /** Read a task stream to its end, resuming after the last cursor when the connection drops. */
  async read(follow, response) {
    const sessionId = this.sessionId;
    let attempt = 0;
    while (!follow.ended) {
      try {
        const stream = response || (await this.api.taskStream(follow.taskId, follow.cursor, follow.abort.signal));
        response = null;
        for await (const { id, chunk } of readChunks(stream)) {
          attempt = 0;
          if (id) follow.cursor = id;
          if (chunk.type === "start") follow.started = true;
          applyChunk(follow.message, chunk);
          this.scheduleRender();
        }
        follow.ended = true;
      } catch (error) {
        if (follow.abort.signal.aborted) return;
        if (isRateLimited(error)) {
          // Over the user's request limit: the reply goes on on the server; read it once the wait is over.
          this.quiet(error);
          await sleep(waitOf(error) * 1000);
          continue;
        }
        if (error instanceof ApiError || error instanceof SyntaxError || attempt >= RECONNECT_DELAYS_MS.length) {
          // 404/410: the stream is gone (expired, or the session was deleted); the stored messages tell the rest.
          follow.ended = true;
          this.finishedTasks.add(follow.taskId);
          if (!(error instanceof ApiError)) {
            follow.message.error = `Lost the reply: ${error.message}`;
          }
          break;
        }
        await sleep(RECONNECT_DELAYS_MS[attempt++]);
      }
    }
    this.finishedTasks.add(follow.taskId);
    if (sessionId !== this.sessionId) return;
    if (follow.message.error) {
      this.problem = { message: follow.message.error, retry: () => this.retry() };
    }
    if (follow.started || follow.visible) {
      await this.load(); // the stored messages now hold the reply (and a finished operation's result)
      this.refreshSessions().catch(() => {}); // the first reply gives the session its title
    } else {
      this.follows.delete(follow.taskId);
    }
  }

  /**
   * Send `text` as a new message, or, with the `clientMessageId` it was sent with before, send that message again:
   * the server then joins (or replays) the turn it started instead of storing the message a second time.
   */
  async send(text, clientMessageId = newId()) {
    text = text.trim();
    if (!text || this.busy()) return "busy";
    this.problem = null;
    this.sending = true;
    this.dom.input.value = "";
    try {
      if (!this.sessionId) {
        const session = await this.api.createSession();
        this.sessions.unshift(session);
        await this.open(session.id);
      }
      this.pendingUser = { text, clientMessageId };
      this.render();
      const response = await this.api.sendMessage(this.sessionId, text, clientMessageId);
      this.followSent(response.headers.get("x-copilot-task-id"), response, clientMessageId);
    } catch (error) {
      this.pendingUser = null; // a refused message is not stored
      if (error instanceof ApiError && error.code === "conflict" && error.details.active_task_id) {
        this.follow(error.details.active_task_id, { visible: true });
      }
      if (error instanceof ApiError && error.code === "conflict" && error.details.message_id) {
        return "answered"; // a resend of a message whose failed turn had already stored part of a reply
      }
      // The request may have reached the server (a connection lost after it stored the message): Retry resends the
      // same message, which the server recognises by its id.
      this.fail(error, () => this.send(text, clientMessageId));
      if (!this.dom.input.value) this.dom.input.value = text;
    } finally {
      this.sending = false;
      this.render();
    }
  }

  /** The continuation a person's answers started: the same assistant message goes on (joined in `render`). */
  followContinuation(taskId, answered) {
    this.follow(taskId, { visible: true });
    const follow = this.follows.get(taskId);
    if (follow) Object.assign(follow, { visible: true, answered });
  }

  /** The reply to a message just sent (or sent again): a resend's task may have been followed and ended before. */
  followSent(taskId, response, clientMessageId) {
    const running = this.follows.get(taskId);
    if (running && !running.ended) {
      running.visible = true;
      response.body?.cancel().catch(() => {}); // already being read: this second copy of the stream is not needed
      return;
    }
    this.follows.delete(taskId);
    this.finishedTasks.delete(taskId);
    this.follow(taskId, { response, visible: true });
    const follow = this.follows.get(taskId);
    if (follow) follow.clientMessageId = clientMessageId;
  }

  /**
   * Ask again after a reply went wrong: the last user message is sent again with its own client message id. The
   * server joins or replays a turn the panel only lost sight of, and tries a failed one again, storing nothing
   * twice. Only when the failed turn had already stored part of a reply (the server answers 409 `message_id`) does
   * the text go as a new message.
   */
  async retry() {
    const last = [...this.stored].reverse().find((m) => m.role === "user");
    if (!last) return;
    const text = last.content || "";
    if ((await this.send(text, last.client_message_id || newId())) === "answered") await this.send(text, newId());
  }

  async stop() {
    if (!this.sessionId) return;
    try {
      await this.api.cancel(this.sessionId);
    } catch (error) {
      this.fail(error);
    }
  }

  async poll() {
    if (document.hidden || !this.sessionId || this.sending || this.polling || Date.now() < this.quietUntil) return;
    this.polling = true;
    try {
      await this.check();
    } finally {
      this.polling = false;
    }
  }

  /** Notice what another tab (or a finished operation) changed: new messages, or a reply that started. */
  async check() {
    this.polls += 1;
    if (this.polls % SESSIONS_EVERY_POLLS === 0) this.refreshSessions().catch(() => {});
    const id = this.sessionId;
    const last = this.stored.length ? this.stored[this.stored.length - 1].sequence : 0;
    let session;
    try {
      session = await this.api.peekSession(id, last);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404 && id === this.sessionId) await this.load();
      if (isRateLimited(error)) this.quiet(error);
      return;
    }
    if (id !== this.sessionId) return;
    const active = session.active_task?.status === "running" ? session.active_task.task_id : null;
    const unfollowed = active && !this.follows.has(active) && !this.finishedTasks.has(active);
    if (session.messages.length || unfollowed || session.title !== this.title) await this.load();
  }

  fail(error, retry) {
    const message =
      error instanceof ApiError && error.status === 401
        ? "Not signed in: this panel needs a token from the app that embeds it."
        : error.message || String(error);
    // Over a limit the server's message says which one; Retry waits (counting down) until the server accepts again.
    const retryAt = isRateLimited(error) ? this.quiet(error) : null;
    this.problem = { message, retry: retry || null, retryAt };
    this.render();
  }

  /** Stop polling until the wait a 429 asked for is over; returns the time (ms) it ends. */
  quiet(error) {
    const until = Date.now() + waitOf(error) * 1000;
    this.quietUntil = Math.max(this.quietUntil, until);
    return until;
  }

  busy() {
    return this.sending || [...this.follows.values()].some((f) => (f.started || f.visible) && !f.ended);
  }

  // --- rendering -----------------------------------------------------------------------------------------------
  scheduleRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  render() {
    const { transcript } = this.dom;
    const atBottom = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 48;
    const live = [...this.follows.values()].filter((f) => f.started || f.visible);
    const views = fromStored(this.visibleStored(live));
    const pending = this.pendingUser;
    if (pending && !this.stored.some((m) => m.client_message_id === pending.clientMessageId)) {
      views.push({ key: `u${pending.clientMessageId}`, role: "user", text: pending.text, sending: true });
    }
    views.push(...live.map((f) => f.message));
    const extra = [];
    if (!views.length && !this.problem) extra.push(emptyState());
    if (this.problem) {
      const { message, retry, retryAt } = this.problem;
      const onRetry = () => {
        this.problem = null;
        retry();
      };
      extra.push(errorBox(message, retry ? onRetry : null, retryAt));
    }
    renderTranscript(transcript, this.human.decorate(joinContinuations(views, live)), extra);
    if (atBottom) transcript.scrollTop = transcript.scrollHeight;
    const busy = this.busy();
    this.dom.stop.hidden = !busy || this.sending;
    this.dom.send.disabled = busy;
  }

  /**
   * Stored messages minus those a followed reply is replaying: a reply's steps are stored while it runs (its last
   * one too, before the end of its stream), and its stream (replayed from `start`) carries them
   * too. For the session's running reply and for a message this panel sent (a resend, Retry, replays a turn that may
   * have ended and been stored already), that is everything stored after the reply's user message (user messages
   * stay). A continuation of a long-running operation has no user message of its own: its stored steps are the
   * messages from the first one that holds a tool call of the turn, or (after the last user message) the text of one
   * of its finished steps, on.
   */
  visibleStored(live) {
    const calls = new Set();
    const texts = new Set();
    let stored = this.stored;
    const after = (sequence) => (stored = stored.filter((m) => m.role === "user" || m.sequence <= sequence));
    for (const follow of live) {
      for (const part of follow.message.parts) {
        if (part.type === "tool") calls.add(part.toolCallId);
        if (part.type === "text" && !part.streaming && part.text.trim()) texts.add(part.text.trim());
      }
      const sent = follow.clientMessageId && stored.find((m) => m.client_message_id === follow.clientMessageId);
      if (sent) after(sent.sequence);
      // A continuation of answered tool calls answers no user message (human.js joins it to the reply it continues).
      if (this.runningReply?.taskId === follow.taskId && !isContinuation(follow)) after(this.runningReply.userSequence);
    }
    if (!calls.size && !texts.size) return stored;
    const lastUser = stored.findLast((m) => m.role === "user")?.sequence ?? 0;
    const replayed = (m) =>
      toolCallIds(m).some((id) => calls.has(id)) ||
      (m.role === "assistant" && m.sequence > lastUser && texts.has((m.content || "").trim()));
    const first = stored.find(replayed);
    return first ? stored.filter((m) => m.role === "user" || m.sequence < first.sequence) : stored;
  }
}

/**
 * The running turn `taskId` as the reply to the last stored user message ({taskId, userSequence}), or null when it
 * is another turn (the continuation of a long-running operation) or nothing was asked yet: the rule of the
 * `ui-messages` endpoint. A turn that answers a user message is admitted in the transaction that stores the
 * message, so its message is stored when the session reports it running, and its id derives from the message's
 * client id (a message sent without one cannot be checked, and is taken to be the turn's).
 */
function replyOf(taskId, sessionId, stored) {
  const user = stored.findLast((m) => m.role === "user");
  if (!user) return null;
  if (user.client_message_id && turnIdFor(sessionId, user.client_message_id) !== taskId) return null;
  return { taskId, userSequence: user.sequence };
}

function toolCallIds(message) {
  if (message.role === "assistant") return (message.tool_calls || []).map((c) => c.id);
  if (message.role === "tool") return [message.tool_call_id];
  return [];
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function sessionFromHash() {
  const match = location.hash.match(/^#s=([0-9a-f-]{36})$/i);
  return match ? match[1] : null;
}

function newId() {
  // crypto.randomUUID exists only in secure contexts; getRandomValues everywhere.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function waitOf(error) {
  return error.retryAfter ?? RATE_LIMIT_WAIT_S;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const byId = (id) => document.getElementById(id);
const api = new Api();
api.hostTools = new HostTools();
const panel = new Panel(api, {
  panel: byId("panel"),
  sessions: byId("session-list"),
  newSession: byId("new-session"),
  toggleSidebar: byId("toggle-sidebar"),
  title: byId("session-title"),
  transcript: byId("transcript"),
  composer: byId("composer"),
  input: byId("input"),
  send: byId("send"),
  stop: byId("stop"),
});
window.copilotPanel = panel; // for debugging from the console
panel.start();
