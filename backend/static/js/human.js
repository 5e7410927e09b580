// Human in the loop in the panel: tool calls that wait for a person (approvals, `ask_user` questions, frontend tools
// the host app runs), their answers, and the continuation that answering starts.
//
// What waits comes from the session (`awaiting` of GET /api/chat/sessions/{id}), so a reload, a second tab or
// another pod shows the same buttons and forms. An answer goes to the REST endpoints; when nothing of the message
// waits any more the server continues the same assistant message in a new turn, which the panel follows and shows
// joined to the reply that asked (one message, one card per call).

import { ApiError } from "./api.js";

// Answers refused because the call no longer waits (unknown here, closed by a newer message, expired).
const GONE_STATUSES = new Set([404, 409, 410]);

/** A tool call a person answers: `kind` is "approval", "ask_user" or "frontend" (as in the session's `awaiting`). */
export class HumanLoop {
  /**
   * @param api the Api (answers go to its session routes)
   * @param hostTools the HostTools bridge: runs frontend tools in the host page
   * @param panel {sessionId(), render(), fail(error, retry), reload(), followContinuation(taskId, answeredToolCallIds)}
   */
  constructor(api, hostTools, panel) {
    this.api = api;
    this.hostTools = hostTools;
    this.panel = panel;
    this.awaiting = new Map(); // tool call id → the session's `awaiting` entry
    this.answered = new Set(); // tool call ids answered from this page: their buttons never come back
    this.pending = new Set(); // answered, but no continuation followed yet (other calls of the message still wait)
    this.sentToHost = new Map(); // frontend tool call id → its session id: handed to the host page (once per page)
    this.drafts = new Map(); // tool call id → what the user typed (answer or reason): kept until the answer is taken
    hostTools.onRegister = () => this.runFrontendTools();
    hostTools.onResult = (toolCallId, result) => this.hostAnswered(toolCallId, result);
  }

  /** The calls that wait now (from a session read, or an answer's reply); hands new frontend calls to the host. */
  update(awaiting) {
    // A session read that began before an answer still lists its call: the answer stands (a resend is a no-op).
    const waiting = (awaiting || []).filter((call) => !this.answered.has(call.tool_call_id));
    this.awaiting = new Map(waiting.map((call) => [call.tool_call_id, call]));
    this.runFrontendTools();
  }

  /** Forget the session's calls (another session was opened). */
  clear() {
    this.awaiting.clear();
    this.answered.clear();
    this.pending.clear();
    this.drafts.clear();
  }

  runFrontendTools() {
    for (const call of this.awaiting.values()) {
      if (call.kind !== "frontend" || this.sentToHost.has(call.tool_call_id)) continue;
      if (this.hostTools.run(call)) this.sentToHost.set(call.tool_call_id, this.panel.sessionId());
    }
    this.panel.render();
  }

  /**
   * The views as shown: a tool part of a call that waits gets state "waiting" and `human` (what to ask and the
   * actions that answer); one answered here shows as "answered", then running until its continuation tells the
   * outcome. Views are copied, never changed: a live reply's message outlives this render.
   */
  decorate(views) {
    return views.map((view) => {
      if (view.role !== "assistant") return view;
      return { ...view, parts: view.parts.map((part) => this.decoratePart(part)) };
    });
  }

  decoratePart(part) {
    if (part.type !== "tool") return part;
    const id = part.toolCallId;
    // Answered; the continuation starts once no other call of the message waits.
    if (this.pending.has(id)) return { ...part, state: "answered", output: undefined, errorText: null };
    const call = this.awaiting.get(id);
    if (!call) return part;
    const human = {
      kind: call.kind,
      input: call.input || {},
      hostRuns: call.kind === "frontend" && this.sentToHost.has(id),
      draft: this.drafts.get(id) ?? "",
      keepDraft: (text) => this.drafts.set(id, text),
      approve: () => this.approve(id, true),
      deny: (reason) => this.approve(id, false, reason),
      reply: (text) => this.answer(id, { output: text }),
      dismiss: () => this.answer(id, { error: "The user dismissed this call; the app did not run it." }),
    };
    return { ...part, state: "waiting", output: undefined, errorText: null, human };
  }

  approve(toolCallId, approved, reason) {
    const body = { approved };
    if (!approved && reason) body.reason = reason;
    return this.send(toolCallId, (sid) => this.api.approveToolCall(sid, toolCallId, body));
  }

  /** `result`: {output} or {error}. Sent with the host's tools, so the continuation offers them too. */
  answer(toolCallId, result) {
    return this.send(toolCallId, (sid) => this.api.sendToolOutput(sid, toolCallId, this.outputBody(result)));
  }

  outputBody(result) {
    const body = "error" in result ? { error: String(result.error || "the tool failed") } : { output: result.output };
    if (this.hostTools.tools) body.tools = this.hostTools.tools;
    return body;
  }

  /** The host page ran a call; one of a session the user has left meanwhile is answered all the same. */
  hostAnswered(toolCallId, result) {
    const sid = this.sentToHost.get(toolCallId);
    if (!sid) return; // never handed to the host by this page
    if (sid === this.panel.sessionId()) return this.answer(toolCallId, result);
    this.api.sendToolOutput(sid, toolCallId, this.outputBody(result)).catch(() => {}); // shown when reopened
  }

  async send(toolCallId, post) {
    const sid = this.panel.sessionId();
    const call = this.awaiting.get(toolCallId);
    if (!sid || !call || this.answered.has(toolCallId)) return;
    this.answered.add(toolCallId);
    this.pending.add(toolCallId);
    this.awaiting.delete(toolCallId);
    this.panel.render();
    try {
      const reply = await post(sid);
      this.drafts.delete(toolCallId);
      if (sid !== this.panel.sessionId()) return;
      this.update(reply.awaiting);
      if (reply.task_id) {
        this.panel.followContinuation(reply.task_id, [...this.pending]);
        this.pending.clear();
      }
    } catch (error) {
      if (sid !== this.panel.sessionId()) return;
      this.pending.delete(toolCallId);
      if (error instanceof ApiError && GONE_STATUSES.has(error.status)) {
        this.drafts.delete(toolCallId);
        this.panel.fail(error);
        this.panel.reload(); // the session tells what became of the call
      } else {
        // Not taken (offline, a limit, the server busy): the controls come back with what was typed, and Retry sends
        // the same answer again (the server takes an answer once, so a resend of one that did land changes nothing).
        this.answered.delete(toolCallId);
        this.awaiting.set(toolCallId, call);
        this.panel.fail(error, () => this.send(toolCallId, post));
      }
    } finally {
      this.panel.render();
    }
  }
}

/**
 * Join each continuation to the reply it continues: its stream (same `messageId`, a new turn) carries only what
 * happened after the answers, so the view of the reply before it (stored, or still live) lends its parts, with the
 * answered calls' outcomes from the continuation's start. `live`: the followed replies whose messages are in `views`.
 */
export function joinContinuations(views, live) {
  const continuations = new Map(live.filter(isContinuation).map((follow) => [follow.message, follow]));
  const joined = [];
  for (const view of views) {
    const before = joined[joined.length - 1];
    const follow = continuations.get(view);
    if (!follow || !before || before.role !== "assistant") {
      joined.push(view);
      continue;
    }
    const parts = before.parts.map((part) => {
      if (part.type !== "tool") return part;
      // Until the continuation's stream tells the outcome, a call answered here runs.
      const running = follow.answered.includes(part.toolCallId) && { state: "running" };
      const outcome = view.earlier[part.toolCallId] || running;
      return outcome ? { ...part, output: undefined, errorText: null, ...outcome } : part;
    });
    joined[joined.length - 1] = { ...view, key: before.key, parts: [...parts, ...view.parts] };
  }
  return joined;
}

/** A followed turn that continues the message of an earlier turn (answered calls), not one of its own. */
export function isContinuation(follow) {
  const id = follow.message.messageId;
  return follow.answered.length > 0 || Boolean(id && id !== `msg-${follow.taskId}`);
}
